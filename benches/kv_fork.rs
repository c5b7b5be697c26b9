//! Fork + one append of B = 4 beams on a long prefix (paged KV, copy-on-write of the shared
//! partial last block) against a full copy of the prefix's K/V for every beam.
//!
//! Shape of a small model: 24 layers, 2 KV heads, head_dim 64, f16, CPU, block size 16.
//! Prefix lengths are 8 tokens short of 1k / 8k / 32k so that the last block is partially
//! filled and every beam's append copies it.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use cord_kv::{KvCache, KvConfig, SeqId};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

const LAYERS: usize = 24;
const N_KV: usize = 2;
const HEAD_DIM: usize = 64;
const DTYPE: DType = DType::F16;
const BEAMS: usize = 4;
const PREFIXES: [usize; 3] = [1024 - 8, 8 * 1024 - 8, 32 * 1024 - 8];

fn config() -> KvConfig {
    KvConfig::new(LAYERS, N_KV, HEAD_DIM, DTYPE, Device::Cpu)
}

/// A cache holding one sequence of `prefix` tokens (K/V written for every layer).
fn setup(prefix: usize) -> (KvCache, SeqId) {
    let cfg = config().with_num_blocks(prefix.div_ceil(16) + 2 * BEAMS);
    let mut kv = KvCache::new(cfg).expect("cache");
    let seq = kv.new_sequence();
    let tokens: Vec<u32> = (0..prefix as u32).collect();
    let slots = kv.append_slots(seq, &tokens).expect("slots");
    let slots = Tensor::new(slots.as_slice(), &Device::Cpu).expect("slots tensor");
    let k = Tensor::ones((prefix, N_KV, HEAD_DIM), DTYPE, &Device::Cpu).expect("k");
    for layer in 0..LAYERS {
        kv.write(layer, &slots, &k, &k).expect("write");
    }
    (kv, seq)
}

/// Fork `BEAMS` beams, append one token to each (COW of the partial last block, all layers,
/// K and V), write that token's K/V in every layer, then free the beams.
fn fork_and_append(kv: &mut KvCache, parent: SeqId, new_kv: &Tensor) {
    let beams: Vec<SeqId> = (0..BEAMS).map(|_| kv.fork(parent).expect("fork")).collect();
    let mut slots = Vec::with_capacity(BEAMS);
    for (i, &b) in beams.iter().enumerate() {
        slots.extend(kv.append_slots(b, &[i as u32]).expect("append"));
    }
    let slots = Tensor::new(slots.as_slice(), &Device::Cpu).expect("slots");
    for layer in 0..LAYERS {
        kv.write(layer, &slots, new_kv, new_kv).expect("write");
    }
    for b in beams {
        kv.free(b).expect("free");
    }
}

/// The non-paged alternative: copy the whole K/V of the prefix for every beam and layer.
fn full_copy(kv: &KvCache, parent: SeqId) -> Vec<(Tensor, Tensor)> {
    let mut out = Vec::with_capacity(BEAMS * LAYERS);
    for _ in 0..BEAMS {
        for layer in 0..LAYERS {
            out.push(kv.gather(layer, parent).expect("gather"));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let per_token = cfg.bytes_per_token();
    let per_block = cfg.bytes_per_block();
    println!(
        "kv_fork: {LAYERS} layers, {N_KV} kv heads, head_dim {HEAD_DIM}, {DTYPE:?}, block 16, {BEAMS} beams"
    );
    println!(
        "kv_fork: bytes moved per fork+append: {} (COW {} = {BEAMS} blocks x {per_block} B, token writes {} = {BEAMS} x {per_token} B)",
        BEAMS * (per_block + per_token),
        BEAMS * per_block,
        BEAMS * per_token
    );
    for p in PREFIXES {
        println!(
            "kv_fork: bytes moved per full copy, prefix {p}: {} ({BEAMS} x {p} tokens x {per_token} B)",
            BEAMS * p * per_token
        );
    }
    let new_kv = Tensor::ones((BEAMS, N_KV, HEAD_DIM), DTYPE, &Device::Cpu).expect("kv");
    let mut group = c.benchmark_group("kv_fork");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for p in PREFIXES {
        let (mut kv, parent) = setup(p);
        group.bench_with_input(BenchmarkId::new("fork_append_cow", p), &p, |b, _| {
            b.iter(|| fork_and_append(&mut kv, parent, &new_kv))
        });
        group.bench_with_input(BenchmarkId::new("full_copy", p), &p, |b, _| {
            b.iter(|| black_box(full_copy(&kv, parent)))
        });
        assert_eq!(kv.free_blocks(), kv.num_blocks() - p.div_ceil(16));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
