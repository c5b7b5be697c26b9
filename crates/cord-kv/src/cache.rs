//! The paged KV cache of one model: block pool tensors, sequences (block tables), fork with
//! copy-on-write, truncation, the radix prefix cache, and slot write / gather helpers.

use std::collections::HashMap;
use std::fmt;

use candle_core::{DType, Tensor};

use crate::config::KvConfig;
use crate::error::{KvError, Result};
use crate::pool::BlockPool;
use crate::radix::RadixTree;

/// Id of a sequence in a [`KvCache`]. Ids are never reused within one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq#{}", self.0)
    }
}

/// Prefix-cache and allocation counters since the cache was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Calls to `match_prefix`.
    pub lookups: u64,
    /// Lookups that matched at least one token.
    pub hits: u64,
    /// Tokens attached from the prefix cache (reused, not recomputed).
    pub tokens_matched: u64,
    /// Tokens appended with `append_slots` (to be computed).
    pub tokens_appended: u64,
    /// Calls to `insert_prefix`.
    pub inserts: u64,
    /// Blocks returned to the pool by prefix-cache eviction.
    pub blocks_evicted: u64,
    /// Blocks copied by copy-on-write.
    pub cow_copies: u64,
}

impl PrefixStats {
    /// Fraction of tokens reused: matched / (matched + appended); 0 when nothing happened.
    pub fn reuse_ratio(&self) -> f64 {
        let total = self.tokens_matched + self.tokens_appended;
        if total == 0 {
            0.0
        } else {
            self.tokens_matched as f64 / total as f64
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Sequence {
    tokens: Vec<u32>,
    /// `tokens.len().div_ceil(block_size)` blocks, in position order.
    blocks: Vec<u32>,
}

/// A model's paged KV cache, shared by many sequences.
pub struct KvCache {
    cfg: KvConfig,
    /// All layers: `[num_layers, num_blocks, block_size, n_kv, head_dim]`.
    k_all: Tensor,
    v_all: Tensor,
    /// Per-layer views `[num_blocks, block_size, n_kv, head_dim]` (same storage).
    layers: Vec<(Tensor, Tensor)>,
    /// Per-layer views `[num_blocks * block_size, n_kv, head_dim]` (same storage).
    flat: Vec<(Tensor, Tensor)>,
    pool: BlockPool,
    seqs: HashMap<SeqId, Sequence>,
    next_seq: u64,
    radix: RadixTree,
    stats: PrefixStats,
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache")
            .field("cfg", &self.cfg)
            .field("free_blocks", &self.pool.free_count())
            .field("sequences", &self.seqs.len())
            .field("prefix_nodes", &self.radix.num_nodes())
            .field("stats", &self.stats)
            .finish()
    }
}

impl KvCache {
    /// Allocates K and V for every layer (zeros) on the config's device and dtype.
    pub fn new(cfg: KvConfig) -> Result<Self> {
        cfg.validate()?;
        let shape = (
            cfg.num_layers,
            cfg.num_blocks,
            cfg.block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        let k_all = Tensor::zeros(shape, cfg.dtype, &cfg.device)?;
        let v_all = Tensor::zeros(shape, cfg.dtype, &cfg.device)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let mut flat = Vec::with_capacity(cfg.num_layers);
        let flat_shape = (
            cfg.num_blocks * cfg.block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        for l in 0..cfg.num_layers {
            let k = k_all.narrow(0, l, 1)?.squeeze(0)?;
            let v = v_all.narrow(0, l, 1)?.squeeze(0)?;
            flat.push((k.reshape(flat_shape)?, v.reshape(flat_shape)?));
            layers.push((k, v));
        }
        Ok(Self {
            pool: BlockPool::new(cfg.num_blocks),
            radix: RadixTree::new(cfg.block_size),
            cfg,
            k_all,
            v_all,
            layers,
            flat,
            seqs: HashMap::new(),
            next_seq: 0,
            stats: PrefixStats::default(),
        })
    }

    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn free_blocks(&self) -> usize {
        self.pool.free_count()
    }

    pub fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// Number of live sequences.
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Live sequence ids, sorted.
    pub fn sequences(&self) -> Vec<SeqId> {
        let mut ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        ids.sort();
        ids
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    /// Holders of `block` (sequences' tables + prefix-cache nodes); `None` past the pool.
    pub fn refcount(&self, block: u32) -> Option<u32> {
        ((block as usize) < self.pool.num_blocks()).then(|| self.pool.refcount(block))
    }

    /// Every block reference held by the prefix cache, with multiplicity (for inspection).
    pub fn prefix_cache_block_refs(&self) -> Vec<u32> {
        self.radix.block_refs()
    }

    /// Token sequences of all root-to-leaf paths of the prefix cache, sorted (for inspection:
    /// every cached token sequence is a prefix of one of them).
    pub fn cached_prefixes(&self) -> Vec<Vec<u32>> {
        self.radix.leaf_paths()
    }

    /// Number of nodes in the radix tree (root excluded).
    pub fn prefix_cache_nodes(&self) -> usize {
        self.radix.num_nodes()
    }

    fn seq(&self, seq: SeqId) -> Result<&Sequence> {
        self.seqs.get(&seq).ok_or(KvError::UnknownSequence(seq))
    }

    fn add_seq(&mut self, s: Sequence) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(id, s);
        id
    }

    /// A new empty sequence (holds no block).
    pub fn new_sequence(&mut self) -> SeqId {
        self.add_seq(Sequence::default())
    }

    /// A new sequence sharing all blocks of `seq` (refcounts only, no tensor copy).
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId> {
        let s = self.seq(seq)?.clone();
        for &b in &s.blocks {
            self.pool.incref(b);
        }
        Ok(self.add_seq(s))
    }

    /// Drops the sequence; blocks nobody else holds return to the pool.
    pub fn free(&mut self, seq: SeqId) -> Result<()> {
        let s = self
            .seqs
            .remove(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        for b in s.blocks {
            self.pool.decref(b);
        }
        Ok(())
    }

    pub fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seq(seq)?.tokens.len())
    }

    /// Token ids held by the sequence, in order.
    pub fn tokens(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(seq)?.tokens)
    }

    /// Blocks holding the sequence, in position order (`seq_len.div_ceil(block_size)` of them).
    pub fn block_table(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(seq)?.blocks)
    }

    /// Whether appending to `s` must first copy its last block (shared and partially filled).
    fn needs_cow(&self, s: &Sequence) -> bool {
        !s.tokens.len().is_multiple_of(self.cfg.block_size)
            && s.blocks.last().is_some_and(|&b| self.pool.refcount(b) > 1)
    }

    fn blocks_needed_for(&self, s: &Sequence, n_new: usize) -> usize {
        if n_new == 0 {
            return 0;
        }
        let bs = self.cfg.block_size;
        let fresh = (s.tokens.len() + n_new).div_ceil(bs) - s.blocks.len();
        fresh + usize::from(self.needs_cow(s))
    }

    /// Free blocks that appending `n_new` tokens to `seq` takes, including the copy of a shared,
    /// partially filled last block.
    pub fn blocks_needed(&self, seq: SeqId, n_new: usize) -> Result<usize> {
        Ok(self.blocks_needed_for(self.seq(seq)?, n_new))
    }

    /// Makes sure `needed` blocks are free, evicting LRU prefix-cache blocks if that is enough;
    /// changes nothing and fails when it is not.
    fn ensure_free(&mut self, needed: usize) -> Result<()> {
        let free = self.pool.free_count();
        if free >= needed {
            return Ok(());
        }
        let plan = self.radix.plan_evict(needed - free, &self.pool);
        if free + plan.freed < needed {
            return Err(KvError::OutOfBlocks { needed, free });
        }
        let freed = self.radix.apply_evict(plan, &mut self.pool);
        self.stats.blocks_evicted += freed as u64;
        Ok(())
    }

    /// Reserves slots for `tokens` at the end of `seq` and returns them (flat slot ids
    /// `block * block_size + offset`, one per token). A shared, partially filled last block is
    /// first copied (copy-on-write, all layers, K and V). When the pool is low, unused
    /// prefix-cache blocks are evicted (LRU); if that is still not enough, returns
    /// [`KvError::OutOfBlocks`] and nothing changed. The caller then writes the K/V of these
    /// slots with [`KvCache::write`].
    pub fn append_slots(&mut self, seq: SeqId, tokens: &[u32]) -> Result<Vec<u32>> {
        let s = self.seq(seq)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let needed = self.blocks_needed_for(s, tokens.len());
        self.ensure_free(needed)?;
        let bs = self.cfg.block_size;
        // Evicting a prefix-cache node may have left the sequence alone on its last block.
        if self.needs_cow(&self.seqs[&seq]) {
            let old = *self.seqs[&seq].blocks.last().expect("cow implies a block");
            let new = self.pool.alloc().expect("ensured free blocks");
            if let Err(e) = self.copy_block(old, new) {
                self.pool.decref(new);
                return Err(e);
            }
            self.pool.decref(old);
            *self
                .seqs
                .get_mut(&seq)
                .expect("checked")
                .blocks
                .last_mut()
                .expect("cow implies a block") = new;
            self.stats.cow_copies += 1;
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        let len = s.tokens.len();
        let total_blocks = (len + tokens.len()).div_ceil(bs);
        while s.blocks.len() < total_blocks {
            s.blocks
                .push(self.pool.alloc().expect("ensured free blocks"));
        }
        s.tokens.extend_from_slice(tokens);
        let slots = (len..len + tokens.len())
            .map(|p| s.blocks[p / bs] * bs as u32 + (p % bs) as u32)
            .collect();
        self.stats.tokens_appended += tokens.len() as u64;
        Ok(slots)
    }

    /// Copies block `src` into block `dst` for all layers, K and V (in place; `cord_kernels::block_copy`).
    fn copy_block(&self, src: u32, dst: u32) -> Result<()> {
        for all in [&self.k_all, &self.v_all] {
            cord_kernels::block_copy(all, &[(src, dst)])?;
        }
        Ok(())
    }

    /// Shortens `seq` to `len` tokens, dropping blocks no longer needed.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let bs = self.cfg.block_size;
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        if len > s.tokens.len() {
            return Err(KvError::InvalidLength {
                seq,
                len: s.tokens.len(),
                requested: len,
            });
        }
        s.tokens.truncate(len);
        for b in s.blocks.drain(len.div_ceil(bs)..) {
            self.pool.decref(b);
        }
        Ok(())
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.cfg.num_layers {
            return Err(KvError::LayerOutOfRange {
                layer,
                num_layers: self.cfg.num_layers,
            });
        }
        Ok(())
    }

    /// Writes K and V (`[n, n_kv, head_dim]`, cache dtype) of `layer` into `slots` (u32 `[n]`),
    /// in place (`cord_kernels::kv_write`: the CUDA kernel on GPUs, its CPU reference elsewhere).
    /// Slots come from [`KvCache::append_slots`]; the caller must only write slots of blocks its
    /// sequence owns.
    pub fn write(&self, layer: usize, slots: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
        self.check_layer(layer)?;
        let (nkv, hd) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        if slots.dtype() != DType::U32 || slots.rank() != 1 {
            return Err(KvError::BadTensor(format!(
                "slots must be u32 [n], got {:?} {:?}",
                slots.dtype(),
                slots.shape()
            )));
        }
        let n = slots.dim(0)?;
        for (name, t) in [("k", k), ("v", v)] {
            if t.dims() != [n, nkv, hd] || t.dtype() != self.cfg.dtype {
                return Err(KvError::BadTensor(format!(
                    "{name} must be {:?} [{n}, {nkv}, {hd}], got {:?} {:?}",
                    self.cfg.dtype,
                    t.dtype(),
                    t.shape()
                )));
            }
            if !t.device().same_device(&self.cfg.device) {
                return Err(KvError::BadTensor(format!(
                    "{name} is on {:?}, the cache on {:?}",
                    t.device(),
                    self.cfg.device
                )));
            }
        }
        if n == 0 {
            return Ok(());
        }
        // Slot ranges: the CPU op checks them; the CUDA kernel skips out-of-range slots (no
        // device-to-host copy per layer). Slots from `append_slots` are always in range.
        let slots = slots.to_device(&self.cfg.device)?;
        let (kc, vc) = &self.flat[layer];
        cord_kernels::kv_write(kc, k, &slots)?;
        cord_kernels::kv_write(vc, v, &slots)?;
        Ok(())
    }

    /// Slots of a sequence's positions, in order, as a u32 `[len]` tensor on the cache's device.
    pub fn slots_tensor(&self, seq: SeqId) -> Result<Tensor> {
        let slots = self.slots(seq)?;
        Ok(Tensor::from_vec(
            slots.clone(),
            slots.len(),
            &self.cfg.device,
        )?)
    }

    /// Slots of a sequence's positions, in order (host copy).
    pub fn slots(&self, seq: SeqId) -> Result<Vec<u32>> {
        let s = self.seq(seq)?;
        let bs = self.cfg.block_size;
        Ok((0..s.tokens.len())
            .map(|p| s.blocks[p / bs] * bs as u32 + (p % bs) as u32)
            .collect())
    }

    /// K and V of `layer` for all positions of `seq`, in order: `[len, n_kv, head_dim]` each.
    pub fn gather(&self, layer: usize, seq: SeqId) -> Result<(Tensor, Tensor)> {
        self.check_layer(layer)?;
        let slots = self.slots_tensor(seq)?;
        let (kc, vc) = &self.flat[layer];
        Ok((kc.index_select(&slots, 0)?, vc.index_select(&slots, 0)?))
    }

    /// Raw paged K and V of `layer`: `[num_blocks, block_size, n_kv, head_dim]` views sharing
    /// the pool's storage, for kernels that read blocks through the block table.
    ///
    /// # Panics
    /// If `layer >= num_layers` (use [`KvCache::try_layer_cache`] for an error instead).
    pub fn layer_cache(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// [`KvCache::layer_cache`] with an error for a bad layer index.
    pub fn try_layer_cache(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        self.check_layer(layer)?;
        Ok(self.layer_cache(layer))
    }

    /// A new sequence holding the longest prefix of `tokens` in the prefix cache, and that
    /// length. A match ending inside a block shares that partial block; the sequence's first
    /// append then copies it. The caller computes `tokens[len..]` (it may `truncate` first if it
    /// needs to recompute at least one token for logits).
    pub fn match_prefix(&mut self, tokens: &[u32]) -> Result<(SeqId, usize)> {
        let (m, blocks) = self.radix.match_prefix(tokens);
        for &b in &blocks {
            self.pool.incref(b);
        }
        self.stats.lookups += 1;
        if m > 0 {
            self.stats.hits += 1;
        }
        self.stats.tokens_matched += m as u64;
        let id = self.add_seq(Sequence {
            tokens: tokens[..m].to_vec(),
            blocks,
        });
        Ok((id, m))
    }

    /// Records the sequence's tokens and blocks in the prefix cache (the cache takes its own
    /// references). Call it once the K/V of all its tokens have been written.
    pub fn insert_prefix(&mut self, seq: SeqId) -> Result<()> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSequence(seq))?;
        self.radix.insert(&s.tokens, &s.blocks, &mut self.pool);
        self.stats.inserts += 1;
        Ok(())
    }

    /// Evicts least-recently-used prefix-cache entries until at least `n_blocks` blocks went
    /// back to the pool (or nothing more can be freed). Only blocks no sequence holds are freed.
    /// Returns the number of blocks freed.
    pub fn evict(&mut self, n_blocks: usize) -> usize {
        let plan = self.radix.plan_evict(n_blocks, &self.pool);
        let freed = self.radix.apply_evict(plan, &mut self.pool);
        self.stats.blocks_evicted += freed as u64;
        freed
    }

    /// Drops the whole prefix cache (blocks held by sequences stay); returns blocks freed.
    pub fn clear_prefix_cache(&mut self) -> usize {
        self.evict(usize::MAX)
    }
}
