//! Forking a long sequence into beams costs almost nothing: at most one new block per beam on
//! the beams' next append.

use candle_core::{DType, Device, Tensor};
use cord_kv::{KvCache, KvConfig};

fn check(prefix_len: usize) {
    let cfg = KvConfig::new(2, 2, 4, DType::F32, Device::Cpu).with_num_blocks(8192 / 16 + 16);
    let mut kv = KvCache::new(cfg).unwrap();
    let parent = kv.new_sequence();
    let tokens: Vec<u32> = (0..prefix_len as u32).collect();
    let slots = kv.append_slots(parent, &tokens).unwrap();
    let n = slots.len();
    let vals: Vec<f32> = (0..n * 8).map(|i| (i / 8) as f32).collect();
    let t = Tensor::from_vec(vals, (n, 2, 4), &Device::Cpu).unwrap();
    let s = Tensor::new(slots.as_slice(), &Device::Cpu).unwrap();
    for l in 0..2 {
        kv.write(l, &s, &t, &t).unwrap();
    }
    let before = kv.free_blocks();
    let beams: Vec<_> = (0..4).map(|_| kv.fork(parent).unwrap()).collect();
    assert_eq!(kv.free_blocks(), before, "fork must not allocate");
    kv.free(parent).unwrap();
    assert_eq!(kv.free_blocks(), before, "beams still hold every block");
    for (i, &b) in beams.iter().enumerate() {
        let slot = kv.append_slots(b, &[100 + i as u32]).unwrap();
        let x = Tensor::full(-(i as f32) - 1.0, (1, 2, 4), &Device::Cpu).unwrap();
        let st = Tensor::new(slot.as_slice(), &Device::Cpu).unwrap();
        for l in 0..2 {
            kv.write(l, &st, &x, &x).unwrap();
        }
    }
    let used = before - kv.free_blocks();
    assert!(used <= 4, "{used} blocks allocated for 4 beams");
    for (i, &b) in beams.iter().enumerate() {
        assert_eq!(kv.seq_len(b).unwrap(), prefix_len + 1);
        let (k, _) = kv.gather(1, b).unwrap();
        let k = k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Shared prefix intact, own token last.
        for p in [0, prefix_len / 2, prefix_len - 1] {
            assert_eq!(k[p * 8], p as f32);
        }
        assert_eq!(k[prefix_len * 8], -(i as f32) - 1.0);
    }
}

#[test]
fn fork_8192_into_4_beams_allocates_at_most_4_blocks() {
    check(8192); // full last block: one fresh block per beam
    check(8190); // partial last block: one copy-on-write block per beam
}
