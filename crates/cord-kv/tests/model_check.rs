//! Property test: random fork / append / truncate / free / prefix-insert / prefix-match / evict
//! sequences on a tiny pool, checked against a naive model after every operation.
//!
//! K of position `p` encodes a hash of the token prefix `tokens[..=p]` (so a prefix-cache hit
//! can be checked for content), V encodes a unique write stamp (so every sequence must read
//! back exactly what it, or the cached sequence it was attached to, wrote).

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use cord_kv::{KvCache, KvConfig, KvError, SeqId};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const LAYERS: usize = 2;
const BS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    New,
    Fork(usize),
    Append(usize, Vec<u32>),
    Truncate(usize, usize),
    Free(usize),
    Insert(usize),
    Match {
        base: usize,
        keep: usize,
        suffix: Vec<u32>,
    },
    Evict(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::New),
        2 => any::<usize>().prop_map(Op::Fork),
        7 => (any::<usize>(), vec(0u32..3, 1..8)).prop_map(|(i, t)| Op::Append(i, t)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(i, c)| Op::Truncate(i, c)),
        5 => any::<usize>().prop_map(Op::Free),
        3 => any::<usize>().prop_map(Op::Insert),
        3 => (any::<usize>(), any::<usize>(), vec(0u32..3, 0..6))
            .prop_map(|(base, keep, suffix)| Op::Match { base, keep, suffix }),
        1 => (0usize..8).prop_map(Op::Evict),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    n_kv: usize,
    head_dim: usize,
    num_blocks: usize,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=2, 2usize..=4, 12usize..40, vec(op(), 100..160)).prop_map(
        |(n_kv, head_dim, num_blocks, ops)| Case {
            n_kv,
            head_dim,
            num_blocks,
            ops,
        },
    )
}

/// 16-bit hash of a token prefix.
fn prefix_hash(tokens: &[u32]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &t in tokens {
        h ^= t + 1;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h ^ (h >> 16)) & 0xffff
}

fn elem(base: u32, layer: usize, h: usize, d: usize) -> f32 {
    (base as usize * 64 + layer * 16 + h * 4 + d) as f32
}

#[derive(Debug, Clone)]
struct ModelSeq {
    tokens: Vec<u32>,
    stamps: Vec<u32>,
}

#[derive(Default)]
struct Coverage {
    ops: u64,
    cow: u64,
    evicted: u64,
    out_of_blocks: u64,
    partial_hits: u64,
    hits: u64,
}

struct Harness {
    kv: KvCache,
    n_kv: usize,
    hd: usize,
    seqs: HashMap<SeqId, ModelSeq>,
    order: Vec<SeqId>,
    /// Every inserted (tokens, stamps), never pruned: legit sources of matched data.
    inserted: Vec<ModelSeq>,
    /// Inserted token sequences still fully cached.
    cached: Vec<Vec<u32>>,
    next_stamp: u32,
    matched: u64,
    appended: u64,
    lookups: u64,
}

type TR = Result<(), TestCaseError>;

impl Harness {
    fn pick(&self, i: usize) -> Option<SeqId> {
        (!self.order.is_empty()).then(|| self.order[i % self.order.len()])
    }

    fn add(&mut self, id: SeqId, m: ModelSeq) {
        self.seqs.insert(id, m);
        self.order.push(id);
    }

    fn remove(&mut self, id: SeqId) {
        self.seqs.remove(&id);
        self.order.retain(|&s| s != id);
    }

    fn expected(&self, m: &ModelSeq, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for p in 0..m.tokens.len() {
            let kh = prefix_hash(&m.tokens[..=p]);
            for h in 0..self.n_kv {
                for d in 0..self.hd {
                    k.push(elem(kh, layer, h, d));
                    v.push(elem(m.stamps[p], layer, h, d));
                }
            }
        }
        (k, v)
    }

    fn read(&self, id: SeqId, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let (k, v) = self.kv.gather(layer, id).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(k), flat(v))
    }

    fn write_new(&mut self, id: SeqId, slots: &[u32], from: usize) {
        let m = self.seqs.get_mut(&id).unwrap();
        let n = slots.len();
        let mut stamps = Vec::new();
        for _ in 0..n {
            stamps.push(self.next_stamp);
            self.next_stamp += 1;
        }
        m.stamps.extend_from_slice(&stamps);
        let m = self.seqs[&id].clone();
        let slots_t = Tensor::new(slots, &Device::Cpu).unwrap();
        for layer in 0..LAYERS {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for p in from..from + n {
                let kh = prefix_hash(&m.tokens[..=p]);
                for h in 0..self.n_kv {
                    for d in 0..self.hd {
                        k.push(elem(kh, layer, h, d));
                        v.push(elem(m.stamps[p], layer, h, d));
                    }
                }
            }
            let shape = (n, self.n_kv, self.hd);
            let k = Tensor::from_vec(k, shape, &Device::Cpu).unwrap();
            let v = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
            self.kv.write(layer, &slots_t, &k, &v).unwrap();
        }
    }

    fn lcp(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    fn apply(&mut self, op: &Op, cov: &mut Coverage) -> TR {
        let evicted_before = self.kv.stats().blocks_evicted;
        let cow_before = self.kv.stats().cow_copies;
        match op {
            Op::New => {
                let id = self.kv.new_sequence();
                self.add(
                    id,
                    ModelSeq {
                        tokens: vec![],
                        stamps: vec![],
                    },
                );
            }
            Op::Fork(i) => {
                if let Some(p) = self.pick(*i) {
                    let free = self.kv.free_blocks();
                    let id = self.kv.fork(p).unwrap();
                    prop_assert_eq!(self.kv.free_blocks(), free, "fork allocated");
                    prop_assert_eq!(
                        self.kv.block_table(id).unwrap(),
                        self.kv.block_table(p).unwrap()
                    );
                    let m = self.seqs[&p].clone();
                    self.add(id, m);
                }
            }
            Op::Append(i, toks) => {
                if let Some(id) = self.pick(*i) {
                    let needed = self.kv.blocks_needed(id, toks.len()).unwrap();
                    let free = self.kv.free_blocks();
                    let table = self.kv.block_table(id).unwrap().to_vec();
                    let prefixes = self.kv.cached_prefixes();
                    let len = self.seqs[&id].tokens.len();
                    match self.kv.append_slots(id, toks) {
                        Ok(slots) => {
                            prop_assert_eq!(slots.len(), toks.len());
                            let evicted = self.kv.stats().blocks_evicted - evicted_before;
                            // Exactly `needed` blocks were taken from the pool (one less when an
                            // eviction left the sequence alone on its shared last block).
                            let taken = free + evicted as usize - self.kv.free_blocks();
                            if evicted == 0 {
                                prop_assert_eq!(taken, needed);
                            } else {
                                prop_assert!(taken == needed || taken + 1 == needed);
                            }
                            let new_table = self.kv.block_table(id).unwrap();
                            prop_assert_eq!(new_table.len(), (len + toks.len()).div_ceil(BS));
                            // Every slot lies in a block the sequence holds alone.
                            for &s in &slots {
                                let b = s / BS as u32;
                                prop_assert!(new_table.contains(&b));
                                prop_assert_eq!(self.kv.refcount(b), Some(1));
                            }
                            self.seqs
                                .get_mut(&id)
                                .unwrap()
                                .tokens
                                .extend_from_slice(toks);
                            self.appended += toks.len() as u64;
                            self.write_new(id, &slots, len);
                        }
                        Err(KvError::OutOfBlocks { needed: n, free: f }) => {
                            cov.out_of_blocks += 1;
                            prop_assert_eq!(n, needed);
                            prop_assert_eq!(f, free);
                            prop_assert!(needed > free);
                            // A failed append changes nothing, prefix cache included.
                            prop_assert_eq!(self.kv.free_blocks(), free);
                            prop_assert_eq!(self.kv.block_table(id).unwrap(), &table[..]);
                            prop_assert_eq!(self.kv.seq_len(id).unwrap(), len);
                            prop_assert_eq!(self.kv.cached_prefixes(), prefixes);
                            prop_assert_eq!(self.kv.stats().blocks_evicted, evicted_before);
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                    }
                }
            }
            Op::Truncate(i, c) => {
                if let Some(id) = self.pick(*i) {
                    let len = self.seqs[&id].tokens.len();
                    let new_len = c % (len + 1);
                    self.kv.truncate(id, new_len).unwrap();
                    let m = self.seqs.get_mut(&id).unwrap();
                    m.tokens.truncate(new_len);
                    m.stamps.truncate(new_len);
                    prop_assert_eq!(self.kv.block_table(id).unwrap().len(), new_len.div_ceil(BS));
                    let too_long = self.kv.truncate(id, new_len + 1);
                    let is_invalid = matches!(too_long, Err(KvError::InvalidLength { .. }));
                    prop_assert!(is_invalid, "truncate past the end must fail");
                }
            }
            Op::Free(i) => {
                if let Some(id) = self.pick(*i) {
                    self.kv.free(id).unwrap();
                    self.remove(id);
                    prop_assert!(
                        matches!(self.kv.free(id), Err(KvError::UnknownSequence(s)) if s == id)
                    );
                    prop_assert!(self.kv.seq_len(id).is_err());
                }
            }
            Op::Insert(i) => {
                if let Some(id) = self.pick(*i) {
                    self.kv.insert_prefix(id).unwrap();
                    let m = self.seqs[&id].clone();
                    self.cached.push(m.tokens.clone());
                    self.inserted.push(m);
                }
            }
            Op::Match { base, keep, suffix } => {
                let mut q = Vec::new();
                if !self.inserted.is_empty() {
                    let e = &self.inserted[base % self.inserted.len()].tokens;
                    q.extend_from_slice(&e[..keep % (e.len() + 1)]);
                }
                q.extend_from_slice(suffix);
                // Naive model: longest common prefix with a still fully cached sequence...
                let naive = self
                    .cached
                    .iter()
                    .map(|c| Self::lcp(&q, c))
                    .max()
                    .unwrap_or(0);
                // ... and, as the tree may keep the head of a partly evicted sequence, with its
                // root-to-leaf paths.
                let paths = self
                    .kv
                    .cached_prefixes()
                    .iter()
                    .map(|c| Self::lcp(&q, c))
                    .max()
                    .unwrap_or(0);
                let (id, m) = self.kv.match_prefix(&q).unwrap();
                self.lookups += 1;
                self.matched += m as u64;
                prop_assert!(m >= naive, "match {} shorter than naive {}", m, naive);
                prop_assert_eq!(m, paths);
                prop_assert_eq!(self.kv.tokens(id).unwrap(), &q[..m]);
                if m > 0 {
                    cov.hits += 1;
                    if m % BS != 0 {
                        cov.partial_hits += 1;
                    }
                }
                // Content: K is the prefix hash; V must come from an inserted sequence with the
                // same prefix. Adopt those stamps for later reads.
                let tokens = q[..m].to_vec();
                let mut stamps = Vec::with_capacity(m);
                let (k, v) = self.read(id, 0);
                let per = self.n_kv * self.hd;
                for p in 0..m {
                    prop_assert_eq!(k[p * per], elem(prefix_hash(&tokens[..=p]), 0, 0, 0));
                    let stamp = (v[p * per] as u32) / 64;
                    let legit = self.inserted.iter().any(|e| {
                        e.tokens.len() > p && e.tokens[..=p] == tokens[..=p] && e.stamps[p] == stamp
                    });
                    prop_assert!(legit, "matched V at {} not from a cached sequence", p);
                    stamps.push(stamp);
                }
                self.add(id, ModelSeq { tokens, stamps });
            }
            Op::Evict(n) => {
                let free = self.kv.free_blocks();
                let freed = self.kv.evict(*n);
                prop_assert_eq!(self.kv.free_blocks(), free + freed);
                prop_assert!(freed >= *n || self.kv.evict(1) == 0);
            }
        }
        let stats = self.kv.stats();
        cov.cow += stats.cow_copies - cow_before;
        if stats.blocks_evicted != evicted_before {
            cov.evicted += stats.blocks_evicted - evicted_before;
            let paths = self.kv.cached_prefixes();
            self.cached.retain(|c| {
                paths
                    .iter()
                    .any(|p| p.len() >= c.len() && p[..c.len()] == c[..])
            });
        }
        self.check()
    }

    fn check(&self) -> TR {
        let kv = &self.kv;
        // Live sequences.
        let mut ids = self.order.clone();
        ids.sort();
        prop_assert_eq!(kv.sequences(), ids);
        // Refcounts == holders; no leak.
        let mut holders = vec![0u32; kv.num_blocks()];
        for &id in &self.order {
            let table = kv.block_table(id).unwrap();
            prop_assert_eq!(table.len(), self.seqs[&id].tokens.len().div_ceil(BS));
            let distinct: HashSet<_> = table.iter().collect();
            prop_assert_eq!(distinct.len(), table.len());
            for &b in table {
                holders[b as usize] += 1;
            }
        }
        for b in kv.prefix_cache_block_refs() {
            holders[b as usize] += 1;
        }
        for (b, &h) in holders.iter().enumerate() {
            prop_assert_eq!(kv.refcount(b as u32), Some(h), "refcount of block {}", b);
        }
        let held = holders.iter().filter(|&&h| h > 0).count();
        prop_assert_eq!(kv.free_blocks() + held, kv.num_blocks());
        // Every sequence reads back exactly its values.
        for &id in &self.order {
            let m = &self.seqs[&id];
            prop_assert_eq!(kv.tokens(id).unwrap(), &m.tokens[..]);
            for layer in 0..LAYERS {
                let (ek, ev) = self.expected(m, layer);
                let (k, v) = self.read(id, layer);
                prop_assert_eq!(k, ek, "K of {} layer {}", id, layer);
                prop_assert_eq!(v, ev, "V of {} layer {}", id, layer);
            }
        }
        // Cached sequences stay cached until an eviction; nothing is cached that was not inserted.
        let paths = kv.cached_prefixes();
        for c in self.cached.iter().filter(|c| !c.is_empty()) {
            prop_assert!(
                paths
                    .iter()
                    .any(|p| p.len() >= c.len() && p[..c.len()] == c[..]),
                "inserted {:?} lost without eviction",
                c
            );
        }
        for p in &paths {
            prop_assert!(
                self.inserted
                    .iter()
                    .any(|e| e.tokens.len() >= p.len() && e.tokens[..p.len()] == p[..]),
                "cached path {:?} was never inserted",
                p
            );
        }
        // Stats.
        let s = kv.stats();
        prop_assert_eq!(s.lookups, self.lookups);
        prop_assert_eq!(s.tokens_matched, self.matched);
        prop_assert_eq!(s.tokens_appended, self.appended);
        prop_assert_eq!(s.inserts, self.inserted.len() as u64);
        Ok(())
    }
}

#[test]
fn random_operations_match_naive_model() {
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let cov = std::cell::RefCell::new(Coverage::default());
    runner
        .run(&case(), |c| {
            let cfg = KvConfig::new(LAYERS, c.n_kv, c.head_dim, DType::F32, Device::Cpu)
                .with_block_size(BS)
                .with_num_blocks(c.num_blocks);
            let mut h = Harness {
                kv: KvCache::new(cfg).unwrap(),
                n_kv: c.n_kv,
                hd: c.head_dim,
                seqs: HashMap::new(),
                order: Vec::new(),
                inserted: Vec::new(),
                cached: Vec::new(),
                next_stamp: 0,
                matched: 0,
                appended: 0,
                lookups: 0,
            };
            let mut cov = cov.borrow_mut();
            for op in &c.ops {
                h.apply(op, &mut cov)?;
                cov.ops += 1;
            }
            // Freeing every sequence and clearing the prefix cache returns every block.
            for id in h.order.clone() {
                h.kv.free(id).unwrap();
            }
            h.kv.clear_prefix_cache();
            prop_assert_eq!(h.kv.free_blocks(), h.kv.num_blocks());
            prop_assert_eq!(h.kv.prefix_cache_nodes(), 0);
            Ok(())
        })
        .unwrap();
    let cov = cov.into_inner();
    eprintln!(
        "ops {} cow {} evicted {} out_of_blocks {} hits {} partial_hits {}",
        cov.ops, cov.cow, cov.evicted, cov.out_of_blocks, cov.hits, cov.partial_hits
    );
    // The generator must actually exercise every path.
    assert!(cov.ops >= 10_000, "only {} operations", cov.ops);
    assert!(cov.cow > 100);
    assert!(cov.evicted > 100);
    assert!(cov.out_of_blocks > 10);
    assert!(cov.hits > 100);
    assert!(cov.partial_hits > 10);
}
