//! Paged attention: every new token of a ragged batch attends to its sequence's cached keys,
//! read through the sequence's block table (no gather of the cache into dense tensors).
//!
//! Query `i` of a sequence with `q_len` new tokens and `ctx_len` cached tokens in total (the new
//! ones included, their K/V already written) sits at position `p = ctx_len - q_len + i` and sees
//! keys `0..=p` (causal, bottom-right aligned), or `p - window + 1..=p` with a sliding window.
//! One call covers decode (`q_len = 1`) and append/prefill (`q_len > 1` after a cached prefix).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Head layout and score shaping of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q . k`.
    pub scale: f32,
    /// Gemma-2-style logit soft-capping: `softcap * tanh(score / softcap)`.
    pub softcap: Option<f32>,
    /// Sliding window: a query at position `p` sees keys `p - window + 1..=p`.
    pub window: Option<usize>,
}

/// One sequence of a batch as attention sees it.
#[derive(Debug, Clone, Copy)]
pub struct PlanSeq<'a> {
    /// New tokens (queries) of the sequence in this call; they are packed in batch order.
    pub q_len: usize,
    /// Cached tokens after this call's K/V writes (the new ones included).
    pub ctx_len: usize,
    /// The sequence's block table: at least `ctx_len.div_ceil(block_size)` blocks.
    pub blocks: &'a [u32],
}

/// Where every query token and its keys are: token → sequence, per sequence
/// `(q_start, q_len, ctx_len)`, and the block tables padded to one width. Built once per forward
/// (on the cache's device) and shared by every layer.
///
/// Layout of the u32 buffer (the kernel reads it as is): `tok_seq[T] | meta[S][3] |
/// tables[S][max_blocks]`.
#[derive(Debug, Clone)]
pub struct AttentionPlan {
    n_tokens: usize,
    n_seqs: usize,
    max_blocks: usize,
    block_size: usize,
    /// Largest block id referenced (checked against the cache at call time).
    max_block_id: u32,
    host: Arc<Vec<u32>>,
    /// The same buffer on the cache's device (what the CUDA kernel reads).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device: Tensor,
}

impl AttentionPlan {
    pub fn new(seqs: &[PlanSeq], block_size: usize, device: &Device) -> Result<Self> {
        if block_size == 0 {
            bail!("paged-attention: block size 0")
        }
        let n_tokens: usize = seqs.iter().map(|s| s.q_len).sum();
        let max_blocks = seqs
            .iter()
            .map(|s| s.ctx_len.div_ceil(block_size))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut buf = Vec::with_capacity(n_tokens + seqs.len() * (3 + max_blocks));
        for (i, s) in seqs.iter().enumerate() {
            if s.q_len == 0 || s.q_len > s.ctx_len {
                bail!(
                    "paged-attention: sequence {i} has {} new of {} tokens",
                    s.q_len,
                    s.ctx_len
                )
            }
            let need = s.ctx_len.div_ceil(block_size);
            if s.blocks.len() < need {
                bail!(
                    "paged-attention: sequence {i} holds {} blocks, {need} needed for {} tokens",
                    s.blocks.len(),
                    s.ctx_len
                )
            }
            buf.extend(std::iter::repeat_n(i as u32, s.q_len));
        }
        let mut q_start = 0;
        for s in seqs {
            buf.extend([q_start as u32, s.q_len as u32, s.ctx_len as u32]);
            q_start += s.q_len;
        }
        let mut max_block_id = 0;
        for s in seqs {
            let used = &s.blocks[..s.ctx_len.div_ceil(block_size)];
            max_block_id = used.iter().copied().fold(max_block_id, u32::max);
            buf.extend_from_slice(used);
            buf.extend(std::iter::repeat_n(0, max_blocks - used.len()));
        }
        let device = Tensor::from_slice(&buf, buf.len(), device)?;
        Ok(AttentionPlan {
            n_tokens,
            n_seqs: seqs.len(),
            max_blocks,
            block_size,
            max_block_id,
            host: Arc::new(buf),
            device,
        })
    }
}

/// Attention of `q` (`[T, num_heads, head_dim]`, the batch's new tokens packed in plan order)
/// over one layer of the paged cache, `k` and `v` (`[num_blocks, block_size, num_kv_heads,
/// head_dim]`, the new tokens' K/V already written). Returns `[T, num_heads, head_dim]` in q's
/// dtype; scores, softmax and the weighted sum are computed in f32.
///
/// CPU: the reference implementation (parallel over tokens). CUDA:
/// `kernels/paged_attention.cu` (head_dim <= 256).
pub fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &AttentionPlan,
    p: &AttentionParams,
) -> Result<Tensor> {
    let (t, nh, hd) = q.dims3()?;
    let (nb, bs, nkv, hd_k) = k.dims4()?;
    if v.dims() != k.dims() {
        bail!(
            "paged-attention: k {:?} and v {:?} differ",
            k.shape(),
            v.shape()
        )
    }
    if (nh, nkv, hd) != (p.num_heads, p.num_kv_heads, p.head_dim) || hd_k != hd {
        bail!(
            "paged-attention: q {:?} / cache {:?} do not match {p:?}",
            q.shape(),
            k.shape()
        )
    }
    if nkv == 0 || nh % nkv != 0 {
        bail!("paged-attention: {nh} heads are not a multiple of {nkv} kv heads")
    }
    if t != plan.n_tokens || bs != plan.block_size {
        bail!(
            "paged-attention: {t} queries / block size {bs}, the plan has {} / {}",
            plan.n_tokens,
            plan.block_size
        )
    }
    if plan.max_block_id as usize >= nb {
        bail!(
            "paged-attention: block {} is outside the cache ({nb} blocks)",
            plan.max_block_id
        )
    }
    if q.dtype() != k.dtype() || v.dtype() != k.dtype() {
        bail!(
            "paged-attention: q {:?}, k {:?}, v {:?} must share a dtype",
            q.dtype(),
            k.dtype(),
            v.dtype()
        )
    }
    if !k.is_contiguous() || !v.is_contiguous() {
        bail!("paged-attention: the cache views must be contiguous")
    }
    let op = PagedAttention {
        plan: plan.clone(),
        p: *p,
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op)
}

struct PagedAttention {
    plan: AttentionPlan,
    p: AttentionParams,
}

/// The reference: per token (in parallel) and head, two passes over the visible keys (scores
/// and their max, then exp, sum and the weighted sum of V), f32 throughout.
fn attend_cpu<T: Copy + Sync>(
    q: &[T],
    k: &[T],
    v: &[T],
    plan: &AttentionPlan,
    p: &AttentionParams,
    f: impl Fn(T) -> f32 + Sync,
) -> Vec<f32> {
    let (nh, nkv, hd, bs) = (p.num_heads, p.num_kv_heads, p.head_dim, plan.block_size);
    let groups = nh / nkv;
    let buf = &plan.host;
    let (meta, tables) = buf[plan.n_tokens..].split_at(3 * plan.n_seqs);
    let mut out = vec![0f32; plan.n_tokens * nh * hd];
    out.par_chunks_mut(nh * hd)
        .enumerate()
        .for_each(|(t, row_out)| {
            let s = buf[t] as usize;
            let (q_start, q_len, ctx) = (
                meta[3 * s] as usize,
                meta[3 * s + 1] as usize,
                meta[3 * s + 2] as usize,
            );
            let pos = ctx - q_len + (t - q_start);
            let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let table = &tables[s * plan.max_blocks..(s + 1) * plan.max_blocks];
            let mut scores = vec![0f32; pos + 1 - lo];
            for h in 0..nh {
                let kvh = h / groups;
                let qrow = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                let key = |j: usize| {
                    let slot = table[j / bs] as usize * bs + j % bs;
                    (slot * nkv + kvh) * hd
                };
                let mut mx = f32::NEG_INFINITY;
                for (j, sc) in (lo..=pos).zip(scores.iter_mut()) {
                    let kr = &k[key(j)..key(j) + hd];
                    let dot: f32 = qrow.iter().zip(kr).map(|(&a, &b)| f(a) * f(b)).sum();
                    let mut x = dot * p.scale;
                    if let Some(c) = p.softcap {
                        x = (x / c).tanh() * c;
                    }
                    *sc = x;
                    mx = mx.max(x);
                }
                let o = &mut row_out[h * hd..(h + 1) * hd];
                let mut sum = 0f32;
                for (j, sc) in (lo..=pos).zip(scores.iter()) {
                    let w = (sc - mx).exp();
                    sum += w;
                    let vr = &v[key(j)..key(j) + hd];
                    for (a, &b) in o.iter_mut().zip(vr) {
                        *a += w * f(b);
                    }
                }
                for a in o.iter_mut() {
                    *a /= sum;
                }
            }
        });
    out
}

fn slice<'a, T>(s: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("paged-attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        let (plan, p) = (&self.plan, &self.p);
        // One dtype: the contiguous slices of q, k and v, widened to f32 element by element.
        macro_rules! attend {
            ($q:expr, $k:expr, $v:expr, $f:expr) => {
                attend_cpu(
                    slice($q, l1, "q")?,
                    slice($k, l2, "k")?,
                    slice($v, l3, "v")?,
                    plan,
                    p,
                    $f,
                )
            };
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(attend!(q, k, v, |x| x))
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => CpuStorage::BF16(
                attend!(q, k, v, |x| x.to_f32())
                    .into_iter()
                    .map(half::bf16::from_f32)
                    .collect(),
            ),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => CpuStorage::F16(
                attend!(q, k, v, |x| x.to_f32())
                    .into_iter()
                    .map(half::f16::from_f32)
                    .collect(),
            ),
            (q, _, _) => bail!("paged-attention: unsupported dtype {:?}", q.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::DType;
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        const SRC: &str = include_str!("../../../../kernels/paged_attention.cu");
        const WARPS: u32 = 4;
        let (plan, p) = (&self.plan, &self.p);
        let (t, nh, hd) = l1.shape().dims3()?;
        if hd > 256 {
            bail!("paged-attention: head_dim {hd} > 256 is not supported by the CUDA kernel")
        }
        if t > 65_535 {
            bail!("paged-attention: {t} query tokens in one call (at most 65,535)")
        }
        let off = |l: &Layout, what: &str| match l.contiguous_offsets() {
            Some((a, _)) => Ok(a),
            None => Err(candle_core::Error::Msg(format!(
                "paged-attention: {what} must be contiguous"
            ))),
        };
        let (o1, o2, o3) = (off(l1, "q")?, off(l2, "k")?, off(l3, "v")?);
        let dev = s1.device().clone();
        let (ps, pl) = plan.device.storage_and_layout();
        let candle_core::Storage::Cuda(ps) = &*ps else {
            bail!("paged-attention: the plan is not on the GPU")
        };
        let plan_buf = ps.as_cuda_slice::<u32>()?.slice(pl.start_offset()..);
        let cfg = LaunchConfig {
            grid_dim: (nh as u32, t as u32, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let ints = [
            plan.n_tokens as i32,
            plan.n_seqs as i32,
            plan.max_blocks as i32,
            nh as i32,
            p.num_kv_heads as i32,
            hd as i32,
            plan.block_size as i32,
        ];
        let (scale, softcap, window) = (
            p.scale,
            p.softcap.unwrap_or(0.0),
            p.window.map_or(0, |w| w.min(i32::MAX as usize) as i32),
        );
        macro_rules! go {
            ($t:ty, $f:literal) => {{
                let q = s1.as_cuda_slice::<$t>()?.slice(o1..);
                let k = s2.as_cuda_slice::<$t>()?.slice(o2..);
                let v = s3.as_cuda_slice::<$t>()?.slice(o3..);
                // SAFETY: every element is written by the kernel (one block per token and head).
                let out = unsafe { dev.alloc::<$t>(t * nh * hd) }?;
                super::launch!(
                    dev,
                    "cord_paged_attention",
                    SRC,
                    $f,
                    cfg,
                    [
                        &q, &k, &v, &out, &plan_buf, &ints[0], &ints[1], &ints[2], &ints[3],
                        &ints[4], &ints[5], &ints[6], &scale, &softcap, &window
                    ]
                );
                candle_core::CudaStorage::wrap_cuda_slice(out, dev)
            }};
        }
        let out = match s1.dtype() {
            DType::F32 => go!(f32, "paged_attention_f32"),
            DType::BF16 => go!(half::bf16, "paged_attention_bf16"),
            DType::F16 => go!(half::f16, "paged_attention_f16"),
            dt => bail!("paged-attention: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{SHAPES, case, params};
    use super::*;
    use candle_core::DType;

    #[test]
    fn reference_matches_naive_f32() -> Result<()> {
        let mut n = 0;
        for (nh, nkv, hd) in [(4, 4, 8), (8, 2, 16), (6, 1, 40)] {
            for bs in [1, 4, 16] {
                for (softcap, window) in [(None, None), (Some(5.0), None), (None, Some(6))] {
                    for shapes in SHAPES {
                        let mut p = params(nh, nkv, hd);
                        // Larger scores, so the softmax is far from uniform.
                        p.scale = 3.0 / (hd as f32).sqrt();
                        p.softcap = softcap;
                        p.window = window;
                        n += 1;
                        let c = case(p, bs, shapes, n);
                        let got = c.run(DType::F32, &Device::Cpu)?;
                        let want = c.naive(|x| x);
                        assert_eq!(got.len(), want.len());
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 2e-5,
                                "{p:?} bs={bs} {shapes:?} elem {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn reference_16_bit() -> Result<()> {
        let p = params(8, 2, 64);
        for (dt, round) in [
            (
                DType::BF16,
                (|x| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
            ),
            (DType::F16, |x| half::f16::from_f32(x).to_f32()),
        ] {
            let c = case(p, 16, &[(3, 40), (1, 33)], 7);
            let got = c.run(dt, &Device::Cpu)?;
            let want = c.naive(round);
            for (g, w) in got.iter().zip(&want) {
                // Inputs rounded as the kernel sees them; the output is rounded once more.
                assert!(
                    (*g as f64 - w).abs() < 1e-2 * w.abs().max(0.1),
                    "{dt:?}: {g} vs {w}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_bad_plans_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let blocks = [0u32, 1];
        let bad = |q_len, ctx_len| {
            AttentionPlan::new(
                &[PlanSeq {
                    q_len,
                    ctx_len,
                    blocks: &blocks,
                }],
                4,
                &dev,
            )
        };
        assert!(bad(0, 3).is_err());
        assert!(bad(4, 3).is_err());
        assert!(bad(1, 9).is_err(), "9 tokens need 3 blocks of 4");
        assert!(AttentionPlan::new(&[], 0, &dev).is_err());
        let c = case(params(4, 2, 8), 4, &[(2, 6)], 1);
        let (q, k, v) = c.tensors(DType::F32, &dev)?;
        let plan = c.plan(&dev)?;
        assert!(paged_attention(&q, &k, &v, &plan, &params(4, 4, 8)).is_err());
        assert!(paged_attention(&q.narrow(0, 0, 1)?, &k, &v, &plan, &c.p).is_err());
        assert!(
            paged_attention(&q, &k.narrow(0, 0, 2)?, &v.narrow(0, 0, 2)?, &plan, &c.p).is_err()
        );
        assert!(paged_attention(&q, &k, &v.to_dtype(DType::BF16)?, &plan, &c.p).is_err());
        paged_attention(&q, &k, &v, &plan, &c.p)?;
        Ok(())
    }
}

/// The CUDA kernels against their CPU references (runs only in a `cuda` build on a host with a
/// GPU; `cord bench kernels --device cuda:0` runs the same checks from the binary).
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests {
    use super::super::check::parity;
    use candle_core::{Device, Result};

    #[test]
    fn cuda_matches_cpu() -> Result<()> {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no usable CUDA device; skipping");
            return Ok(());
        };
        let results = parity(&gpu)?;
        let bad: Vec<_> = results.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        Ok(())
    }
}
