//! Unit tests of the public API: budget sizing, errors, fork / copy-on-write, prefix cache,
//! eviction and statistics.

use candle_core::{DType, Device, Tensor};
use cord_kv::{DEFAULT_BLOCK_SIZE, KvCache, KvConfig, KvError, SeqId};

fn cfg(num_blocks: usize) -> KvConfig {
    KvConfig::new(2, 1, 2, DType::F32, Device::Cpu)
        .with_block_size(4)
        .with_num_blocks(num_blocks)
}

/// Appends `tokens` and writes K = V = `tag * 1000 + position` into every layer.
fn append(kv: &mut KvCache, seq: SeqId, tokens: &[u32], tag: f32) -> Vec<u32> {
    let start = kv.seq_len(seq).unwrap();
    let slots = kv.append_slots(seq, tokens).unwrap();
    let n = slots.len();
    let vals: Vec<f32> = (0..n)
        .flat_map(|i| {
            let x = tag * 1000.0 + (start + i) as f32;
            [x, x]
        })
        .collect();
    let t = Tensor::from_vec(vals, (n, 1, 2), &Device::Cpu).unwrap();
    let s = Tensor::new(slots.as_slice(), &Device::Cpu).unwrap();
    for layer in 0..kv.config().num_layers {
        kv.write(layer, &s, &t, &t).unwrap();
    }
    slots
}

/// First K element of every position of `seq` in layer 1.
fn read(kv: &KvCache, seq: SeqId) -> Vec<f32> {
    let (k, v) = kv.gather(1, seq).unwrap();
    let k = k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(k, v);
    k.chunks(2).map(|c| c[0]).collect()
}

fn expect(parts: &[(f32, std::ops::Range<usize>)]) -> Vec<f32> {
    parts
        .iter()
        .flat_map(|(tag, r)| r.clone().map(move |p| tag * 1000.0 + p as f32))
        .collect()
}

#[test]
fn budget_sizing() {
    let c = KvConfig::new(24, 2, 64, DType::F16, Device::Cpu);
    assert_eq!(c.block_size, DEFAULT_BLOCK_SIZE);
    // K + V, 24 layers, 2 heads, 64 dims, 2 bytes.
    assert_eq!(c.bytes_per_token(), 2 * 24 * 2 * 64 * 2);
    assert_eq!(c.bytes_per_block(), 12288 * 16);
    assert_eq!(c.blocks_for_budget(12288 * 16 * 10 + 5), 10);
    assert_eq!(c.blocks_for_budget(12288 * 16 - 1), 0);
    assert_eq!(c.blocks_for_fraction(12288 * 16 * 100, 0.25), 25);
    assert_eq!(c.blocks_for_fraction(12288 * 16 * 100, 2.0), 100);
    assert_eq!(c.blocks_for_fraction(12288 * 16 * 100, -1.0), 0);
    assert_eq!(c.blocks_for_fraction(12288 * 16 * 100, f64::NAN), 0);
    let c = c.with_budget_bytes(1 << 30);
    assert_eq!(c.num_blocks, (1 << 30) / (12288 * 16));
    assert!(c.pool_bytes() <= 1 << 30);
    assert!(c.pool_bytes() + c.bytes_per_block() > 1 << 30);
    assert_eq!(c.token_capacity(), c.num_blocks * 16);
    let c = c.with_budget_fraction(8 << 30, 0.5);
    assert_eq!(c.num_blocks, (4 << 30) / (12288 * 16));
    let f32c = KvConfig::new(24, 2, 64, DType::F32, Device::Cpu);
    assert_eq!(f32c.bytes_per_block(), 2 * 12288 * 16);
}

#[test]
fn pool_tensors_have_the_paged_shape() {
    let kv = KvCache::new(cfg(5)).unwrap();
    let (k, v) = kv.layer_cache(1);
    assert_eq!(k.dims(), &[5, 4, 1, 2]);
    assert_eq!(v.dims(), &[5, 4, 1, 2]);
    assert_eq!(k.dtype(), DType::F32);
    assert!(kv.try_layer_cache(2).is_err());
    assert_eq!(kv.num_blocks(), 5);
    assert_eq!(kv.free_blocks(), 5);
}

#[test]
fn writes_are_visible_through_layer_cache() {
    let mut kv = KvCache::new(cfg(4)).unwrap();
    let s = kv.new_sequence();
    let slots = append(&mut kv, s, &[1, 2, 3, 4, 5], 7.0);
    assert_eq!(slots, vec![0, 1, 2, 3, 4]);
    let (k, _) = kv.layer_cache(0);
    // Block 1, offset 0, head 0, dim 1 holds position 4.
    let x = k.get(1).unwrap().get(0).unwrap().flatten_all().unwrap();
    assert_eq!(x.to_vec1::<f32>().unwrap(), vec![7004.0, 7004.0]);
    assert_eq!(kv.slots_tensor(s).unwrap().to_vec1::<u32>().unwrap(), slots);
}

#[test]
fn config_and_input_errors() {
    assert!(matches!(
        KvCache::new(cfg(0)),
        Err(KvError::InvalidConfig(_))
    ));
    assert!(matches!(
        KvCache::new(cfg(4).with_block_size(0)),
        Err(KvError::InvalidConfig(_))
    ));
    assert!(matches!(
        KvCache::new(cfg(1 << 31).with_block_size(4)),
        Err(KvError::InvalidConfig(_))
    ));
    let mut kv = KvCache::new(cfg(4)).unwrap();
    let ghost = SeqId(99);
    assert!(matches!(kv.fork(ghost), Err(KvError::UnknownSequence(s)) if s == ghost));
    assert!(matches!(kv.free(ghost), Err(KvError::UnknownSequence(_))));
    assert!(kv.seq_len(ghost).is_err());
    assert!(kv.tokens(ghost).is_err());
    assert!(kv.block_table(ghost).is_err());
    assert!(kv.blocks_needed(ghost, 1).is_err());
    assert!(kv.append_slots(ghost, &[1]).is_err());
    assert!(kv.truncate(ghost, 0).is_err());
    assert!(kv.insert_prefix(ghost).is_err());
    assert!(kv.gather(0, ghost).is_err());
    assert!(kv.slots_tensor(ghost).is_err());
    let s = kv.new_sequence();
    append(&mut kv, s, &[1, 2], 1.0);
    assert!(matches!(
        kv.truncate(s, 3),
        Err(KvError::InvalidLength {
            len: 2,
            requested: 3,
            ..
        })
    ));
    assert!(matches!(
        kv.gather(2, s),
        Err(KvError::LayerOutOfRange {
            layer: 2,
            num_layers: 2
        })
    ));
    let slots = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let good = Tensor::zeros((1, 1, 2), DType::F32, &Device::Cpu).unwrap();
    let wrong_shape = Tensor::zeros((1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let wrong_dtype = Tensor::zeros((1, 1, 2), DType::F16, &Device::Cpu).unwrap();
    let wrong_slots = Tensor::new(&[0f32], &Device::Cpu).unwrap();
    assert!(matches!(
        kv.write(5, &slots, &good, &good),
        Err(KvError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        kv.write(0, &slots, &wrong_shape, &good),
        Err(KvError::BadTensor(_))
    ));
    assert!(matches!(
        kv.write(0, &slots, &good, &wrong_dtype),
        Err(KvError::BadTensor(_))
    ));
    assert!(matches!(
        kv.write(0, &wrong_slots, &good, &good),
        Err(KvError::BadTensor(_))
    ));
    // A slot past the pool is an error, not a panic.
    let far = Tensor::new(&[1000u32], &Device::Cpu).unwrap();
    assert!(kv.write(0, &far, &good, &good).is_err());
    assert_eq!(read(&kv, s), expect(&[(1.0, 0..2)]));
    // Error messages name the problem.
    let msg = kv.fork(ghost).unwrap_err().to_string();
    assert!(msg.contains("seq#99"), "{msg}");
}

#[test]
fn out_of_blocks_changes_nothing() {
    let mut kv = KvCache::new(cfg(3)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[1; 10], 1.0); // 3 blocks, last one half full
    assert_eq!(kv.free_blocks(), 0);
    // Room left in the last block: no allocation.
    assert_eq!(kv.blocks_needed(a, 2).unwrap(), 0);
    let b = kv.fork(a).unwrap();
    // b shares the partial last block: appending needs a copy.
    assert_eq!(kv.blocks_needed(b, 1).unwrap(), 1);
    let err = kv.append_slots(b, &[2]).unwrap_err();
    assert!(
        matches!(err, KvError::OutOfBlocks { needed: 1, free: 0 }),
        "{err}"
    );
    assert!(err.to_string().contains("out of blocks"));
    assert_eq!(kv.seq_len(b).unwrap(), 10);
    assert_eq!(kv.block_table(b).unwrap(), kv.block_table(a).unwrap());
    assert!(kv.append_slots(a, &[2; 3]).is_err());
    assert_eq!(kv.seq_len(a).unwrap(), 10);
    assert_eq!(kv.stats().tokens_appended, 10);
    // Freeing the fork lets the parent append in place.
    kv.free(b).unwrap();
    assert_eq!(kv.blocks_needed(a, 2).unwrap(), 0);
    append(&mut kv, a, &[3, 3], 2.0);
    assert_eq!(read(&kv, a), expect(&[(1.0, 0..10), (2.0, 10..12)]));
}

#[test]
fn fork_shares_and_copy_on_write_isolates() {
    let mut kv = KvCache::new(cfg(16)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[5; 6], 1.0); // blocks: full + 2/4
    let free = kv.free_blocks();
    let b = kv.fork(a).unwrap();
    let c = kv.fork(a).unwrap();
    assert_eq!(kv.free_blocks(), free);
    let table = kv.block_table(a).unwrap().to_vec();
    assert_eq!(kv.refcount(table[0]), Some(3));
    // b appends: copies only the partial last block.
    append(&mut kv, b, &[6], 2.0);
    assert_eq!(kv.free_blocks(), free - 1);
    assert_eq!(kv.stats().cow_copies, 1);
    let tb = kv.block_table(b).unwrap().to_vec();
    assert_eq!(tb[0], table[0]);
    assert_ne!(tb[1], table[1]);
    assert_eq!(kv.refcount(table[1]), Some(2));
    // c appends past the block end: copy + one fresh block.
    assert_eq!(kv.blocks_needed(c, 3).unwrap(), 2);
    append(&mut kv, c, &[7, 7, 7], 3.0);
    // a is now alone on its last block: appends in place.
    assert_eq!(kv.blocks_needed(a, 2).unwrap(), 0);
    append(&mut kv, a, &[8, 8], 4.0);
    assert_eq!(kv.stats().cow_copies, 2);
    assert_eq!(read(&kv, a), expect(&[(1.0, 0..6), (4.0, 6..8)]));
    assert_eq!(read(&kv, b), expect(&[(1.0, 0..6), (2.0, 6..7)]));
    assert_eq!(read(&kv, c), expect(&[(1.0, 0..6), (3.0, 6..9)]));
    // Fork of a full-block sequence: the next append takes a fresh block, no copy.
    kv.truncate(a, 4).unwrap();
    let d = kv.fork(a).unwrap();
    append(&mut kv, d, &[9], 5.0);
    assert_eq!(kv.stats().cow_copies, 2);
    assert_eq!(read(&kv, d), expect(&[(1.0, 0..4), (5.0, 4..5)]));
    for s in [a, b, c, d] {
        kv.free(s).unwrap();
    }
    assert_eq!(kv.free_blocks(), 16);
}

#[test]
fn truncate_frees_blocks_and_rewrites_after_cut() {
    let mut kv = KvCache::new(cfg(8)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[1; 11], 1.0);
    assert_eq!(kv.free_blocks(), 5);
    kv.truncate(a, 5).unwrap();
    assert_eq!(kv.free_blocks(), 6);
    assert_eq!(kv.tokens(a).unwrap(), &[1; 5]);
    append(&mut kv, a, &[2; 2], 2.0);
    assert_eq!(read(&kv, a), expect(&[(1.0, 0..5), (2.0, 5..7)]));
    // Truncating into a shared block: the next append copies it.
    let b = kv.fork(a).unwrap();
    kv.truncate(b, 2).unwrap();
    append(&mut kv, b, &[3], 3.0);
    assert_eq!(read(&kv, a), expect(&[(1.0, 0..5), (2.0, 5..7)]));
    assert_eq!(read(&kv, b), expect(&[(1.0, 0..2), (3.0, 2..3)]));
    kv.truncate(b, 0).unwrap();
    assert!(kv.block_table(b).unwrap().is_empty());
    assert_eq!(kv.gather(0, b).unwrap().0.dims(), &[0, 1, 2]);
}

#[test]
fn prefix_cache_match_insert_and_stats() {
    let mut kv = KvCache::new(cfg(32)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[1, 2, 3, 4, 5, 6], 1.0);
    kv.insert_prefix(a).unwrap();
    kv.free(a).unwrap();
    // The cache keeps the blocks.
    assert_eq!(kv.free_blocks(), 30);
    // Token-granular match ending mid-block.
    let (m, n) = kv.match_prefix(&[1, 2, 3, 4, 5, 9, 9]).unwrap();
    assert_eq!(n, 5);
    assert_eq!(kv.tokens(m).unwrap(), &[1, 2, 3, 4, 5]);
    assert_eq!(read(&kv, m), expect(&[(1.0, 0..5)]));
    // First append copies the shared partial block; the cached data is untouched.
    append(&mut kv, m, &[9, 9], 2.0);
    assert_eq!(kv.stats().cow_copies, 1);
    kv.insert_prefix(m).unwrap();
    let (x, n) = kv.match_prefix(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
    assert_eq!(n, 6);
    assert_eq!(read(&kv, x), expect(&[(1.0, 0..6)]));
    let (y, n) = kv.match_prefix(&[1, 2, 3, 4, 5, 9, 9, 9]).unwrap();
    assert_eq!(n, 7);
    assert_eq!(read(&kv, y), expect(&[(1.0, 0..5), (2.0, 5..7)]));
    let (z, n) = kv.match_prefix(&[7]).unwrap();
    assert_eq!(n, 0);
    assert_eq!(kv.seq_len(z).unwrap(), 0);
    let (e, n) = kv.match_prefix(&[]).unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        kv.cached_prefixes(),
        vec![vec![1, 2, 3, 4, 5, 6], vec![1, 2, 3, 4, 5, 9, 9]]
    );
    let s = kv.stats();
    assert_eq!(s.lookups, 5);
    assert_eq!(s.hits, 3);
    assert_eq!(s.tokens_matched, 5 + 6 + 7);
    assert_eq!(s.tokens_appended, 6 + 2);
    assert_eq!(s.inserts, 2);
    assert_eq!(s.blocks_evicted, 0);
    assert!((s.reuse_ratio() - 18.0 / 26.0).abs() < 1e-12);
    for s in [m, x, y, z, e] {
        kv.free(s).unwrap();
    }
    let held_by_cache = 32 - kv.free_blocks();
    assert_eq!(held_by_cache, 3); // a0, a1 (partial, kept by the cache), m's copy of a1
    assert_eq!(kv.clear_prefix_cache(), held_by_cache);
    assert_eq!(kv.free_blocks(), 32);
    assert_eq!(kv.stats().blocks_evicted, 3);
}

#[test]
fn eviction_is_lru_and_spares_live_blocks() {
    let mut kv = KvCache::new(cfg(6)).unwrap();
    let old = kv.new_sequence();
    append(&mut kv, old, &[1; 8], 1.0);
    kv.insert_prefix(old).unwrap();
    kv.free(old).unwrap();
    let new = kv.new_sequence();
    append(&mut kv, new, &[2; 8], 2.0);
    kv.insert_prefix(new).unwrap();
    kv.free(new).unwrap();
    let live = kv.new_sequence();
    append(&mut kv, live, &[3; 4], 3.0);
    kv.insert_prefix(live).unwrap();
    assert_eq!(kv.free_blocks(), 1);
    // Touch `old`: `new` becomes the least recently used.
    let (t, _) = kv.match_prefix(&[1; 8]).unwrap();
    kv.free(t).unwrap();
    assert_eq!(kv.evict(1), 2);
    assert_eq!(kv.cached_prefixes(), vec![vec![1; 8], vec![3; 4]]);
    // `live`'s block is held by a sequence: never freed.
    assert_eq!(kv.evict(100), 2);
    assert_eq!(kv.cached_prefixes(), vec![vec![3; 4]]);
    assert_eq!(kv.evict(1), 0);
    assert_eq!(kv.stats().blocks_evicted, 4);
    assert_eq!(read(&kv, live), expect(&[(3.0, 0..4)]));
}

#[test]
fn append_evicts_the_prefix_cache_when_the_pool_is_low() {
    let mut kv = KvCache::new(cfg(4)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[1; 12], 1.0);
    kv.insert_prefix(a).unwrap();
    kv.free(a).unwrap();
    assert_eq!(kv.free_blocks(), 1);
    let b = kv.new_sequence();
    assert_eq!(kv.blocks_needed(b, 8).unwrap(), 2);
    append(&mut kv, b, &[2; 8], 2.0);
    assert_eq!(kv.stats().blocks_evicted, 3);
    assert!(kv.cached_prefixes().is_empty());
    assert_eq!(read(&kv, b), expect(&[(2.0, 0..8)]));
    // Not enough even after eviction: error, and the cache is left alone.
    kv.insert_prefix(b).unwrap();
    let c = kv.new_sequence();
    let err = kv.append_slots(c, &[3; 16]).unwrap_err();
    assert!(matches!(err, KvError::OutOfBlocks { needed: 4, free: 2 }));
    assert_eq!(kv.cached_prefixes(), vec![vec![2; 8]]);
    assert_eq!(kv.stats().blocks_evicted, 3);
}

#[test]
fn prefix_match_uses_the_deepest_node_per_block() {
    // Two sequences share 6 tokens then diverge mid-block; the second computed its own copy
    // of the shared head. A match on the second path must use the second sequence's block 1
    // (which holds positions 4..6 as well), and the first path the first's.
    let mut kv = KvCache::new(cfg(16)).unwrap();
    let a = kv.new_sequence();
    append(&mut kv, a, &[1, 1, 1, 1, 1, 1, 2, 2], 1.0);
    kv.insert_prefix(a).unwrap();
    let b = kv.new_sequence();
    append(&mut kv, b, &[1, 1, 1, 1, 1, 1, 3, 3, 3], 2.0);
    kv.insert_prefix(b).unwrap();
    let (m, n) = kv.match_prefix(&[1, 1, 1, 1, 1, 1, 3, 3, 3, 3]).unwrap();
    assert_eq!(n, 9);
    let got = read(&kv, m);
    // Block 0 from the node of [0, 6) (first inserter), block 1 and 2 from b's node.
    assert_eq!(got, expect(&[(1.0, 0..4), (2.0, 4..9)]));
    let (m2, n) = kv.match_prefix(&[1, 1, 1, 1, 1]).unwrap();
    assert_eq!(n, 5);
    assert_eq!(read(&kv, m2), expect(&[(1.0, 0..5)]));
    for s in [a, b, m, m2] {
        kv.free(s).unwrap();
    }
    kv.clear_prefix_cache();
    assert_eq!(kv.free_blocks(), 16);
}

#[test]
fn cache_can_move_between_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let kv = KvCache::new(cfg(2)).unwrap();
    send_sync(&kv);
    let kv = std::thread::spawn(move || {
        let mut kv = kv;
        let s = kv.new_sequence();
        append(&mut kv, s, &[1], 1.0);
        kv
    })
    .join()
    .unwrap();
    assert_eq!(kv.free_blocks(), 1);
}
