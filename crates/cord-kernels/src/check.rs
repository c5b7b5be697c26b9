//! Random cases and parity checks for the ops: each op on a device against its CPU reference,
//! and on the CPU the paged-attention reference against naive dense code. Used by the tests and
//! by `cord bench kernels` (which runs them on a GPU from the shipped binary).

use candle_core::{DType, Device, Result, Tensor};
use serde::Serialize;

use crate::{AttentionParams, AttentionPlan, PlanSeq, block_copy, kv_write, paged_attention};

/// Deterministic values in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// A random case: a cache of `nb` blocks and sequences (q_len, ctx_len) with block tables;
/// sequence 1 shares its first blocks with sequence 0 (as a fork does).
pub struct Case {
    pub p: AttentionParams,
    pub bs: usize,
    pub nb: usize,
    pub seqs: Vec<(usize, usize, Vec<u32>)>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

pub fn case(p: AttentionParams, bs: usize, shapes: &[(usize, usize)], seed: u64) -> Case {
    let nb = 64;
    // Blocks handed out in a scrambled order; sequence 1 reuses sequence 0's full blocks.
    let mut next = 0u32;
    let mut take = || {
        next += 1;
        (next * 37) % nb as u32
    };
    let mut seqs: Vec<(usize, usize, Vec<u32>)> = vec![];
    for (i, &(q_len, ctx)) in shapes.iter().enumerate() {
        let n = ctx.div_ceil(bs);
        let mut blocks: Vec<u32> = vec![];
        if i == 1 && !seqs.is_empty() {
            let shared = (seqs[0].1 / bs).min(n.saturating_sub(1));
            blocks.extend_from_slice(&seqs[0].2[..shared]);
        }
        while blocks.len() < n {
            blocks.push(take());
        }
        seqs.push((q_len, ctx, blocks));
    }
    let t: usize = shapes.iter().map(|s| s.0).sum();
    let row = p.num_kv_heads * p.head_dim;
    Case {
        q: noise(t * p.num_heads * p.head_dim, seed),
        k: noise(nb * bs * row, seed + 1),
        v: noise(nb * bs * row, seed + 2),
        p,
        bs,
        nb,
        seqs,
    }
}

/// The attention plan of sequences given as (q_len, ctx_len, block table).
pub fn plan_of(
    seqs: &[(usize, usize, Vec<u32>)],
    bs: usize,
    dev: &Device,
) -> Result<AttentionPlan> {
    let seqs: Vec<PlanSeq> = seqs
        .iter()
        .map(|(q_len, ctx, b)| PlanSeq {
            q_len: *q_len,
            ctx_len: *ctx,
            blocks: b,
        })
        .collect();
    AttentionPlan::new(&seqs, bs, dev)
}

impl Case {
    pub fn tensors(&self, dt: DType, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, nkv, hd) = (self.p.num_heads, self.p.num_kv_heads, self.p.head_dim);
        let t = self.q.len() / (nh * hd);
        let q = Tensor::from_slice(&self.q, (t, nh, hd), dev)?.to_dtype(dt)?;
        let shape = (self.nb, self.bs, nkv, hd);
        let k = Tensor::from_slice(&self.k, shape, dev)?.to_dtype(dt)?;
        let v = Tensor::from_slice(&self.v, shape, dev)?.to_dtype(dt)?;
        Ok((q, k, v))
    }

    pub fn plan(&self, dev: &Device) -> Result<AttentionPlan> {
        plan_of(&self.seqs, self.bs, dev)
    }

    pub fn run(&self, dt: DType, dev: &Device) -> Result<Vec<f32>> {
        let (q, k, v) = self.tensors(dt, dev)?;
        let o = paged_attention(&q, &k, &v, &self.plan(dev)?, &self.p)?;
        o.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    }

    /// Naive: gather each sequence's K/V into dense rows, a full mask matrix, f64 math.
    pub fn naive(&self, round: impl Fn(f32) -> f32) -> Vec<f64> {
        let (nh, nkv, hd, bs) = (
            self.p.num_heads,
            self.p.num_kv_heads,
            self.p.head_dim,
            self.bs,
        );
        let q: Vec<f32> = self.q.iter().map(|&x| round(x)).collect();
        let k: Vec<f32> = self.k.iter().map(|&x| round(x)).collect();
        let v: Vec<f32> = self.v.iter().map(|&x| round(x)).collect();
        let mut out = vec![];
        for (q_len, ctx, blocks) in &self.seqs {
            let t0 = out.len() / (nh * hd);
            let slots: Vec<usize> = (0..*ctx)
                .map(|j| blocks[j / bs] as usize * bs + j % bs)
                .collect();
            let dense = |src: &[f32]| -> Vec<Vec<f64>> {
                slots
                    .iter()
                    .flat_map(|&s| {
                        (0..nkv).map(move |h| {
                            src[(s * nkv + h) * hd..(s * nkv + h + 1) * hd]
                                .iter()
                                .map(|&x| x as f64)
                                .collect::<Vec<f64>>()
                        })
                    })
                    .collect()
            };
            let (kd, vd) = (dense(&k), dense(&v));
            for i in 0..*q_len {
                let pos = ctx - q_len + i;
                for h in 0..nh {
                    let kvh = h / (nh / nkv);
                    let qr = &q[((t0 + i) * nh + h) * hd..((t0 + i) * nh + h + 1) * hd];
                    let mask: Vec<bool> = (0..*ctx)
                        .map(|j| j <= pos && self.p.window.is_none_or(|w| pos - j < w))
                        .collect();
                    let sc: Vec<f64> = (0..*ctx)
                        .map(|j| {
                            if !mask[j] {
                                return f64::NEG_INFINITY;
                            }
                            let kr = &kd[j * nkv + kvh];
                            let d: f64 = qr.iter().zip(kr).map(|(&a, b)| a as f64 * b).sum();
                            let x = d * self.p.scale as f64;
                            match self.p.softcap {
                                Some(c) => (x / c as f64).tanh() * c as f64,
                                None => x,
                            }
                        })
                        .collect();
                    let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|&x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    out.extend((0..hd).map(|d| {
                        e.iter()
                            .enumerate()
                            .map(|(j, w)| w * vd[j * nkv + kvh][d])
                            .sum::<f64>()
                            / z
                    }));
                }
            }
        }
        out
    }
}

pub fn params(nh: usize, nkv: usize, hd: usize) -> AttentionParams {
    AttentionParams {
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        softcap: None,
        window: None,
    }
}

/// Shapes: decode rows, a prefill from empty, appends after a cached prefix (partial last
/// blocks), a fork sharing blocks.
pub const SHAPES: &[&[(usize, usize)]] = &[
    &[(1, 1)],
    &[(1, 37), (1, 40), (1, 5)],
    &[(9, 9)],
    &[(3, 21), (5, 30)],
    &[(7, 16), (1, 17), (16, 48)],
];

/// One compared case.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    pub op: &'static str,
    pub case: String,
    pub dtype: String,
    /// Largest `|got - want| / max(|want|, 1)`.
    pub max_err: f64,
    pub tol: f64,
    pub ok: bool,
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let e = (g as f64 - w).abs() / w.abs().max(1.0);
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}

/// A copy op (`run` builds the inputs on a device, applies the op and reads the result back):
/// the device result must equal the CPU one exactly.
fn exact(
    op: &'static str,
    case: String,
    dt: DType,
    dev: &Device,
    run: impl Fn(&Device) -> Result<Vec<f32>>,
) -> Result<Parity> {
    let want: Vec<f64> = run(&Device::Cpu)?.into_iter().map(f64::from).collect();
    let err = max_err(&run(dev)?, &want);
    Ok(Parity {
        op,
        case,
        dtype: format!("{dt:?}"),
        max_err: err,
        tol: 0.0,
        ok: err == 0.0,
    })
}

fn round_fn(dt: DType) -> fn(f32) -> f32 {
    match dt {
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// Runs every op on `dev` against its reference: the fused token log-prob first (see
/// [`crate::token_logprob`]), then paged attention, KV write and block copy. On the CPU the
/// reference of paged attention is the naive dense code (f64); on a GPU it is the CPU
/// implementation on the same inputs. Head shapes include the real ones (Qwen2.5-7B: 28/4/128,
/// Gemma 3: 256-dim heads).
pub fn parity(dev: &Device) -> Result<Vec<Parity>> {
    let mut out = crate::token_logprob::parity(dev)?;
    let mut seed = 0;
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    for (nh, nkv, hd) in [(4, 4, 8), (8, 2, 64), (28, 4, 128), (8, 1, 256)] {
        for (softcap, window) in [(None, None), (Some(30.0), Some(9))] {
            for shapes in SHAPES {
                let mut p = params(nh, nkv, hd);
                p.softcap = softcap;
                p.window = window;
                seed += 1;
                let c = case(p, 16, shapes, seed);
                for dt in dtypes {
                    let got = c.run(dt, dev)?;
                    let want: Vec<f64> = if dev.is_cpu() {
                        c.naive(round_fn(dt))
                    } else {
                        c.run(dt, &Device::Cpu)?
                            .into_iter()
                            .map(f64::from)
                            .collect()
                    };
                    let tol = if dt == DType::F32 { 1e-4 } else { 2e-2 };
                    let err = max_err(&got, &want);
                    out.push(Parity {
                        op: "paged_attention",
                        case: format!(
                            "heads {nh}/{nkv}x{hd} softcap {softcap:?} window {window:?} seqs (q,ctx) {shapes:?}"
                        ),
                        dtype: format!("{dt:?}"),
                        max_err: err,
                        tol,
                        ok: err <= tol,
                    });
                }
            }
        }
    }
    // KV write and block copy are exact copies: the device result must equal the CPU one.
    for dt in dtypes {
        let (n_slots, row) = (96, 2 * 64);
        let base = noise(n_slots * row, 99);
        let src = noise(7 * row, 100);
        let slots = [5u32, 17, 0, 95, 40, 41, 63];
        let run = |d: &Device| -> Result<Vec<f32>> {
            let cache = Tensor::from_slice(&base, (n_slots, 2, 64), d)?.to_dtype(dt)?;
            let s = Tensor::from_slice(&src, (7, 2, 64), d)?.to_dtype(dt)?;
            kv_write(&cache, &s, &Tensor::new(&slots[..], d)?)?;
            cache.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        out.push(exact(
            "kv_write",
            format!("{n_slots} slots x {row}, 7 rows"),
            dt,
            dev,
            run,
        )?);
        let (layers, blocks, elems) = (3, 12, 16 * 2 * 64);
        let base = noise(layers * blocks * elems, 101);
        let pairs = [(1u32, 7u32), (0, 11), (1, 3)];
        let run = |d: &Device| -> Result<Vec<f32>> {
            let cache = Tensor::from_slice(&base, (layers, blocks, elems), d)?.to_dtype(dt)?;
            block_copy(&cache, &pairs)?;
            cache.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        out.push(exact(
            "block_copy",
            format!("{layers} layers x {blocks} blocks x {elems}, 3 pairs"),
            dt,
            dev,
            run,
        )?);
    }
    Ok(out)
}

/// One op timed against the plain-candle way of doing the same thing, on one device.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub op: &'static str,
    pub case: String,
    /// Mean microseconds per call of the op.
    pub ours_us: f64,
    /// What it is compared with, and its mean microseconds per call.
    pub baseline: &'static str,
    pub baseline_us: f64,
    /// Largest |ours - baseline| over the outputs (attention, log-prob; 0 for the copies).
    pub max_abs_diff: f64,
}

/// Mean seconds per call of `f` on `dev` (synchronized): 2 warm-up calls, then calls until
/// 0.3 s or 50 calls, at least 3.
pub fn time_per_call(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let t0 = std::time::Instant::now();
    let mut n = 0u32;
    while n < 3 || (n < 50 && t0.elapsed().as_secs_f64() < 0.3) {
        f()?;
        dev.synchronize()?;
        n += 1;
    }
    Ok(t0.elapsed().as_secs_f64() / n as f64)
}

/// Attention of one layer done the way the model's `Attention::Gather` path does it: per
/// sequence, gather its K/V rows by slot, then masked matmul + softmax (causal mask only).
fn gather_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: &[(usize, usize, Vec<u32>)],
    p: &AttentionParams,
    bs: usize,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (p.num_heads, p.num_kv_heads, p.head_dim);
    let groups = nh / nkv;
    let flat_k = k.reshape(((), nkv, hd))?;
    let flat_v = v.reshape(((), nkv, hd))?;
    let mut outs = Vec::with_capacity(seqs.len());
    let mut off = 0;
    for (t, ctx, blocks) in seqs {
        let slots: Vec<u32> = (0..*ctx)
            .map(|j| blocks[j / bs] * bs as u32 + (j % bs) as u32)
            .collect();
        let slots = Tensor::from_vec(slots, *ctx, q.device())?;
        let kc = flat_k
            .index_select(&slots, 0)?
            .to_dtype(DType::F32)?
            .transpose(0, 1)?
            .contiguous()?;
        let vc = flat_v
            .index_select(&slots, 0)?
            .to_dtype(DType::F32)?
            .transpose(0, 1)?
            .contiguous()?;
        let qs = q
            .narrow(0, off, *t)?
            .transpose(0, 1)?
            .to_dtype(DType::F32)?
            .contiguous()?
            .reshape((nkv, groups * t, hd))?;
        let mut att = (qs.matmul(&kc.t()?)? * p.scale as f64)?;
        if *t > 1 {
            let mask: Vec<f32> = (0..*t)
                .flat_map(|i| {
                    (0..*ctx).map(move |j| {
                        if j <= ctx - t + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (*t, *ctx), q.device())?;
            att = att
                .reshape((nkv, groups, *t, *ctx))?
                .broadcast_add(&mask)?
                .reshape((nkv, groups * t, *ctx))?;
        }
        let m = att.max_keepdim(2)?;
        let e = att.broadcast_sub(&m)?.exp()?;
        let att = e.broadcast_div(&e.sum_keepdim(2)?)?;
        outs.push(att.matmul(&vc)?.reshape((nh, *t, hd))?.transpose(0, 1)?);
        off += t;
    }
    Tensor::cat(&outs, 0)?.to_dtype(q.dtype())
}

/// Times every op on `dev` against plain candle ops doing the same work: the fused token log-prob
/// against `log_softmax` + `gather` (see [`crate::token_logprob`]), then paged attention, KV
/// write and block copy (gather + matmul attention, `scatter_set`, `index_select` +
/// `slice_set`). Shapes of a Qwen2.5-7B layer (28/4 heads of 128, bf16) on a GPU, smaller f32
/// ones on the CPU.
pub fn timings(dev: &Device) -> Result<Vec<Timing>> {
    let gpu = !dev.is_cpu();
    let (dt, (nh, nkv, hd), n_seqs, ctx) = if gpu {
        (DType::BF16, (28, 4, 128), 32, 1024)
    } else {
        (DType::F32, (8, 2, 64), 8, 512)
    };
    let bs = 16;
    let mut out = crate::token_logprob::timings(dev)?;
    for (label, q_len) in [("decode", 1usize), ("append 16", 16)] {
        let p = params(nh, nkv, hd);
        // Enough blocks for every sequence without sharing: a cache of n_seqs * ctx slots.
        let nb = n_seqs * ctx / bs;
        let seqs: Vec<(usize, usize, Vec<u32>)> = (0..n_seqs)
            .map(|i| {
                let per = ctx / bs;
                let blocks = (0..per).map(|b| ((b * n_seqs + i) % nb) as u32).collect();
                (q_len, ctx, blocks)
            })
            .collect();
        let t = n_seqs * q_len;
        let q = Tensor::randn(0f32, 1.0, (t, nh, hd), dev)?.to_dtype(dt)?;
        let k = Tensor::randn(0f32, 1.0, (nb, bs, nkv, hd), dev)?.to_dtype(dt)?;
        let v = Tensor::randn(0f32, 1.0, (nb, bs, nkv, hd), dev)?.to_dtype(dt)?;
        let plan = plan_of(&seqs, bs, dev)?;
        let a = paged_attention(&q, &k, &v, &plan, &p)?.to_dtype(DType::F32)?;
        let b = gather_attention(&q, &k, &v, &seqs, &p, bs)?.to_dtype(DType::F32)?;
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let ours = time_per_call(dev, || paged_attention(&q, &k, &v, &plan, &p).map(drop))?;
        let base = time_per_call(dev, || {
            gather_attention(&q, &k, &v, &seqs, &p, bs).map(drop)
        })?;
        out.push(Timing {
            op: "paged_attention",
            case: format!("{label}: {n_seqs} seqs x {ctx} ctx, heads {nh}/{nkv}x{hd}, {dt:?}"),
            ours_us: ours * 1e6,
            baseline: "gather + matmul + softmax (candle ops)",
            baseline_us: base * 1e6,
            max_abs_diff: diff,
        });
    }
    // KV write of one forward's new tokens into a layer.
    let (n_slots, n_new) = (n_seqs * ctx, if gpu { 512 } else { 128 });
    let cache = Tensor::zeros((n_slots, nkv, hd), dt, dev)?;
    let src = Tensor::randn(0f32, 1.0, (n_new, nkv, hd), dev)?.to_dtype(dt)?;
    let slots: Vec<u32> = (0..n_new).map(|i| ((i * 7919) % n_slots) as u32).collect();
    let slots = Tensor::from_vec(slots, n_new, dev)?;
    let ours = time_per_call(dev, || kv_write(&cache, &src, &slots))?;
    let base = time_per_call(dev, || {
        // As the cache did before: build the broadcast index, then scatter.
        let ids = slots
            .reshape((n_new, 1, 1))?
            .broadcast_as((n_new, nkv, hd))?
            .contiguous()?;
        cache.scatter_set(&ids, &src, 0)
    })?;
    out.push(Timing {
        op: "kv_write",
        case: format!("{n_new} rows into {n_slots} slots, {nkv}x{hd}, {dt:?}"),
        ours_us: ours * 1e6,
        baseline: "broadcast index + scatter_set",
        baseline_us: base * 1e6,
        max_abs_diff: 0.0,
    });
    // Copy-on-write of a few blocks across all layers.
    let (layers, blocks) = if gpu { (28, 256) } else { (8, 64) };
    let elems = bs * nkv * hd;
    let all = Tensor::zeros((layers, blocks, elems), dt, dev)?;
    let pairs: Vec<(u32, u32)> = (0..8)
        .map(|i| (i, 100.min(blocks as u32 - 9) + i))
        .collect();
    let ours = time_per_call(dev, || block_copy(&all, &pairs))?;
    let base = time_per_call(dev, || {
        for &(s, d) in &pairs {
            let tmp = all.index_select(&Tensor::new(&[s], dev)?, 1)?;
            all.slice_set(&tmp, 1, d as usize)?;
        }
        Ok(())
    })?;
    out.push(Timing {
        op: "block_copy",
        case: format!(
            "{} pairs x {layers} layers, block {elems} elems, {dt:?}",
            pairs.len()
        ),
        ours_us: ours * 1e6,
        baseline: "index_select + slice_set per pair",
        baseline_us: base * 1e6,
        max_abs_diff: 0.0,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU: the paged-attention reference against naive code, the copies against
    /// themselves (the same check the binary runs on a GPU).
    #[test]
    fn cpu_parity_holds() -> Result<()> {
        let r = parity(&Device::Cpu)?;
        assert!(r.len() > 100);
        let bad: Vec<_> = r.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        Ok(())
    }

    /// Times one Qwen2.5-0.5B layer's attention (14/2 heads of 64, f32, blocks of 16) through
    /// the paged op and the gather path at batch-1 / batch-16 decode and 128 / 512-token
    /// prefill: `cargo test -p cord-kernels --lib attention_timings -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn attention_timings() -> Result<()> {
        let dev = Device::Cpu;
        let (p, bs) = (params(14, 2, 64), 16);
        for (label, n_seqs, q_len, ctx) in [
            ("decode b1 ctx 512", 1usize, 1usize, 512usize),
            ("decode b16 ctx 512", 16, 1, 512),
            ("prefill 128", 1, 128, 128),
            ("prefill 512", 1, 512, 512),
        ] {
            let per = ctx / bs;
            let nb = n_seqs * per;
            let seqs: Vec<(usize, usize, Vec<u32>)> = (0..n_seqs)
                .map(|i| {
                    (
                        q_len,
                        ctx,
                        (0..per).map(|b| (b * n_seqs + i) as u32).collect(),
                    )
                })
                .collect();
            let t = n_seqs * q_len;
            let q = Tensor::randn(0f32, 1.0, (t, 14, 64), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (nb, bs, 2, 64), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (nb, bs, 2, 64), &dev)?;
            let plan = plan_of(&seqs, bs, &dev)?;
            for round in 0..3 {
                let ours =
                    time_per_call(&dev, || paged_attention(&q, &k, &v, &plan, &p).map(drop))?;
                let base = time_per_call(&dev, || {
                    gather_attention(&q, &k, &v, &seqs, &p, bs).map(drop)
                })?;
                println!(
                    "{label:>20} round {round}: paged {:9.1} us  gather {:9.1} us  gather/paged {:.2}",
                    ours * 1e6,
                    base * 1e6,
                    base / ours
                );
            }
        }
        Ok(())
    }
}
