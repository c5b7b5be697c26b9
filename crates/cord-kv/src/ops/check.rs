//! Random cases and parity checks for the ops: each op on a device against its CPU reference,
//! and on the CPU the paged-attention reference against naive dense code. Used by the tests and
//! by `cord bench kernels` (which runs them on a GPU from the shipped binary).

use candle_core::{DType, Device, Result, Tensor};
use serde::Serialize;

use super::{AttentionParams, AttentionPlan, PlanSeq, block_copy, kv_write, paged_attention};

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
        let seqs: Vec<PlanSeq> = self
            .seqs
            .iter()
            .map(|(q_len, ctx, b)| PlanSeq {
                q_len: *q_len,
                ctx_len: *ctx,
                blocks: b,
            })
            .collect();
        AttentionPlan::new(&seqs, self.bs, dev)
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

fn round_fn(dt: DType) -> fn(f32) -> f32 {
    match dt {
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// Runs every op on `dev` against its reference. On the CPU the reference of paged attention is
/// the naive dense code (f64); on a GPU it is the CPU implementation on the same inputs.
/// Head shapes include the real ones (Qwen2.5-7B: 28/4/128, Gemma 3: 256-dim heads).
pub fn parity(dev: &Device) -> Result<Vec<Parity>> {
    let mut out = vec![];
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
        let want: Vec<f64> = run(&Device::Cpu)?.into_iter().map(f64::from).collect();
        let err = max_err(&run(dev)?, &want);
        out.push(Parity {
            op: "kv_write",
            case: format!("{n_slots} slots x {row}, 7 rows"),
            dtype: format!("{dt:?}"),
            max_err: err,
            tol: 0.0,
            ok: err == 0.0,
        });
        let (layers, blocks, elems) = (3, 12, 16 * 2 * 64);
        let base = noise(layers * blocks * elems, 101);
        let pairs = [(1u32, 7u32), (0, 11), (1, 3)];
        let run = |d: &Device| -> Result<Vec<f32>> {
            let cache = Tensor::from_slice(&base, (layers, blocks, elems), d)?.to_dtype(dt)?;
            block_copy(&cache, &pairs)?;
            cache.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        let want: Vec<f64> = run(&Device::Cpu)?.into_iter().map(f64::from).collect();
        let err = max_err(&run(dev)?, &want);
        out.push(Parity {
            op: "block_copy",
            case: format!("{layers} layers x {blocks} blocks x {elems}, 3 pairs"),
            dtype: format!("{dt:?}"),
            max_err: err,
            tol: 0.0,
            ok: err == 0.0,
        });
    }
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
}
