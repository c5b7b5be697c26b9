//! The fused token log-prob op: `out[i] = log_softmax(logits[i, :])[targets[i]]`.
//!
//! `logits` is `[N, V]` in f32, f16 or bf16, `targets` is `[N]` u32; the result is `[N]` f32. Each
//! row is reduced in one pass over its max and log-sum-exp with f32 accumulation, without
//! materialising the softmax (the unfused `log_softmax` + `gather` path allocates several `N x V`
//! f32 tensors).
//!
//! * CPU (`cpu_fwd`): per row, a max pass then a sum-of-exp pass; 16-bit inputs are widened element
//!   by element, never as a whole `N x V` copy.
//! * CUDA (`cuda_fwd`, feature `cuda`): the kernel in `kernels/token_logprob.cu`, compiled at run time
//!   with NVRTC (once per process), loaded with `get_or_load_custom_func` and launched on candle's
//!   stream: one block of 256 threads per row with an online (max, sum) reduction.
//!
//! Both compute `(x[t] - max) - ln(sum_j exp(x[j] - max))`, the same association as
//! `candle_nn::ops::log_softmax`, so a huge max does not swallow the log term. NaN in a row gives
//! NaN, as does a row that is all `-inf` or contains `+inf` (as in the unfused path). A target id
//! `>= V` is an error on the CPU and NaN on the GPU (the kernel cannot raise errors).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

/// The custom op; apply it with [`token_logprobs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenLogprob;

/// `log_softmax(logits[i, :])[targets[i]]` for every row `i`: logits `[N, V]` (f32/f16/bf16),
/// targets `[N]` u32, result `[N]` f32 on the logits' device.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2_no_bwd(&targets.contiguous()?, &TokenLogprob)
}

/// Lanes of independent partial sums: shorter dependency chains (vectorisable) and a smaller
/// rounding error than one running sum.
const LANES: usize = 8;

/// One row: `(x[t] - m) - ln(sum exp(x - m))`, reading elements through `f`.
fn row_logprob<T: Copy>(row: &[T], target: usize, f: impl Fn(T) -> f32) -> f32 {
    let mut m = f32::NEG_INFINITY;
    let mut nan = false;
    for &e in row {
        let y = f(e);
        if y > m {
            m = y;
        } else if y.is_nan() {
            nan = true;
        }
    }
    if nan {
        return f32::NAN;
    }
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &e) in acc.iter_mut().zip(c) {
            *a += (f(e) - m).exp();
        }
    }
    for (a, &e) in acc.iter_mut().zip(chunks.remainder()) {
        *a += (f(e) - m).exp();
    }
    let sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    (f(row[target]) - m) - sum.ln()
}

fn rows_logprob<T: Copy>(
    x: &[T],
    ids: &[u32],
    v: usize,
    f: impl Fn(T) -> f32 + Copy,
) -> Result<Vec<f32>> {
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            let t = t as usize;
            if t >= v {
                bail!("token-logprob: target id {t} of row {i} is out of range for vocab size {v}")
            }
            Ok(row_logprob(&x[i * v..(i + 1) * v], t, f))
        })
        .collect()
}

fn check_shapes(l1: &Layout, l2: &Layout) -> Result<(usize, usize)> {
    let (n, v) = l1.shape().dims2()?;
    let m = l2.shape().dims1()?;
    if m != n {
        bail!("token-logprob: {n} logits rows but {m} targets")
    }
    if v == 0 && n > 0 {
        bail!("token-logprob: empty vocabulary dimension")
    }
    Ok((n, v))
}

impl CustomOp2 for TokenLogprob {
    fn name(&self) -> &'static str {
        "token-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = check_shapes(l1, l2)?;
        let (Some((o1, e1)), Some((o2, e2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("token-logprob: inputs must be contiguous")
        };
        if e1 - o1 != n * v || e2 - o2 != n {
            bail!("token-logprob: unexpected storage extent")
        }
        let ids = match s2 {
            CpuStorage::U32(t) => &t[o2..e2],
            other => bail!(
                "token-logprob: targets must be u32, got {:?}",
                other.dtype()
            ),
        };
        let out = match s1 {
            CpuStorage::F32(x) => rows_logprob(&x[o1..e1], ids, v, |y| y)?,
            CpuStorage::BF16(x) => rows_logprob(&x[o1..e1], ids, v, |y| y.to_f32())?,
            CpuStorage::F16(x) => rows_logprob(&x[o1..e1], ids, v, |y| y.to_f32())?,
            other => bail!(
                "token-logprob: unsupported logits dtype {:?}",
                other.dtype()
            ),
        };
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::DType;
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        let (n, v) = check_shapes(l1, l2)?;
        let (Some((o1, _)), Some((o2, _))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("token-logprob: inputs must be contiguous")
        };
        if s2.dtype() != DType::U32 {
            bail!("token-logprob: targets must be u32, got {:?}", s2.dtype())
        }
        let Ok(v_i32) = i32::try_from(v) else {
            bail!("token-logprob: vocab size {v} too large")
        };
        let Ok(n_u32) = u32::try_from(n) else {
            bail!("token-logprob: {n} rows too many")
        };
        let dev = s1.device().clone();
        if n == 0 {
            let out = dev.alloc_zeros::<f32>(0)?;
            return Ok((
                candle_core::CudaStorage::wrap_cuda_slice(out, dev),
                Shape::from(0),
            ));
        }
        let ptx = crate::cuda::compile_ptx("token_logprob", SRC)?;
        let ids = s2.as_cuda_slice::<u32>()?.slice(o2..);
        let out = unsafe { dev.alloc::<f32>(n) }?;
        let cfg = LaunchConfig {
            grid_dim: (n_u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! go {
            ($t:ty, $f:literal) => {{
                let x = s1.as_cuda_slice::<$t>()?.slice(o1..);
                let func = dev.get_or_load_custom_func($f, "token_logprob", ptx)?;
                let mut b = func.builder();
                b.arg(&x);
                b.arg(&ids);
                b.arg(&out);
                b.arg(&v_i32);
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match s1.dtype() {
            DType::F32 => go!(f32, "token_logprob_f32"),
            DType::BF16 => go!(half::bf16, "token_logprob_bf16"),
            DType::F16 => go!(half::f16, "token_logprob_f16"),
            dt => bail!("token-logprob: unsupported logits dtype {dt:?}"),
        }
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(n),
        ))
    }
}

/// The kernel source, compiled by NVRTC on first use.
#[cfg(feature = "cuda")]
const SRC: &str = include_str!("../../../kernels/token_logprob.cu");

/// The op on `dev` against a reference on random rows (vocabularies up to Qwen's 151,936, an
/// extreme max and a `-inf` entry), f32/bf16/f16. On the CPU the reference is the unfused
/// `log_softmax` + gather of candle-nn; on a GPU it is the CPU implementation. Used by the tests
/// and by `cord bench kernels`.
pub(crate) fn parity(dev: &candle_core::Device) -> Result<Vec<crate::check::Parity>> {
    use candle_core::{DType, Device};
    let mut out = vec![];
    for (n, v) in [
        (1usize, 1usize),
        (3, 255),
        (7, 257),
        (5, 32_000),
        (2, 151_936),
    ] {
        let mut x = crate::check::noise(n * v, (n * v) as u64);
        for e in &mut x {
            *e *= 10.0;
        }
        x[0] = 3e4;
        if n * v > 2 {
            x[1] = f32::NEG_INFINITY;
        }
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7919 + 1) % v) as u32).collect();
        let xc = Tensor::from_vec(x, (n, v), &Device::Cpu)?;
        let tc = Tensor::from_vec(ids, n, &Device::Cpu)?;
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let xc = xc.to_dtype(dt)?;
            let want: Vec<f32> = if dev.is_cpu() {
                candle_nn::ops::log_softmax(&xc.to_dtype(DType::F32)?, 1)?
                    .gather(&tc.unsqueeze(1)?, 1)?
                    .squeeze(1)?
                    .to_vec1()?
            } else {
                token_logprobs(&xc, &tc)?.to_vec1()?
            };
            let got: Vec<f32> =
                token_logprobs(&xc.to_device(dev)?, &tc.to_device(dev)?)?.to_vec1()?;
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| {
                    if g == w {
                        0.0
                    } else {
                        ((g - w).abs() / w.abs().max(1.0)) as f64
                    }
                })
                .map(|e| if e.is_nan() { f64::INFINITY } else { e })
                .fold(0.0, f64::max);
            let tol = 1e-4;
            out.push(crate::check::Parity {
                op: "token_logprob",
                case: format!("{n} rows x vocab {v}"),
                dtype: format!("{dt:?}"),
                max_err: err,
                tol,
                ok: err <= tol,
            });
        }
    }
    Ok(out)
}

/// The fused op against `log_softmax` + `gather` (candle-nn) on `dev`: rows of a Qwen-size
/// vocabulary (151,936; 64 rows in bf16 on a GPU, 16 in f32 on the CPU). For `cord bench kernels`.
pub(crate) fn timings(dev: &candle_core::Device) -> Result<Vec<crate::check::Timing>> {
    use crate::check::{Timing, time_per_call};
    use candle_core::DType;
    let (n, v, dt) = if dev.is_cpu() {
        (16, 151_936, DType::F32)
    } else {
        (64, 151_936, DType::BF16)
    };
    let x = Tensor::randn(0f32, 3.0, (n, v), dev)?.to_dtype(dt)?;
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
    let t = Tensor::from_vec(ids, n, dev)?;
    let unfused = || -> Result<Tensor> {
        candle_nn::ops::log_softmax(&x.to_dtype(DType::F32)?, 1)?
            .gather(&t.unsqueeze(1)?, 1)?
            .squeeze(1)
    };
    let diff = (token_logprobs(&x, &t)? - unfused()?)?
        .abs()?
        .max(0)?
        .to_scalar::<f32>()? as f64;
    let ours = time_per_call(dev, || token_logprobs(&x, &t).map(drop))?;
    let base = time_per_call(dev, || unfused().map(drop))?;
    Ok(vec![Timing {
        op: "token_logprob",
        case: format!("{n} rows x vocab {v}, {dt:?}"),
        ours_us: ours * 1e6,
        baseline: "log_softmax + gather (candle-nn)",
        baseline_us: base * 1e6,
        max_abs_diff: diff,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_reference_matches_f64() {
        let row: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.0)
            .collect();
        for t in [0usize, 17, 1000] {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            let want = (row[t] as f64 - m) - s.ln();
            let got = row_logprob(&row, t, |y| y);
            assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn cpu_parity_with_unfused_log_softmax() -> Result<()> {
        let r = parity(&candle_core::Device::Cpu)?;
        let bad: Vec<_> = r.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        Ok(())
    }

    #[test]
    fn special_rows() {
        assert!(row_logprob(&[1.0f32, f32::NAN, 2.0], 0, |y| y).is_nan());
        assert!(row_logprob(&[f32::NEG_INFINITY; 3], 1, |y| y).is_nan());
        assert_eq!(
            row_logprob(&[0.0f32, f32::NEG_INFINITY], 1, |y| y),
            f32::NEG_INFINITY
        );
        assert_eq!(row_logprob(&[5.0f32], 0, |y| y), 0.0);
        // A huge max must not swallow the log term: two equal maxima give ln(1/2).
        let v = row_logprob(&[3e38f32, 3e38, -3e38], 0, |y| y);
        assert!((v - 0.5f32.ln()).abs() < 1e-6, "{v}");
    }
}

/// The CUDA kernel against `cpu_fwd` (runs only in a `cuda` build on a host with a GPU; without
/// one it returns early, since `Device::new_cuda` fails).
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn cuda_matches_cpu() -> Result<()> {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no usable CUDA device; skipping");
            return Ok(());
        };
        let r = parity(&gpu)?;
        let bad: Vec<_> = r.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        // Empty input and a strided (non-contiguous) view.
        let e = Tensor::zeros((0, 8), DType::F32, &gpu)?;
        let none = Tensor::zeros(0, DType::U32, &gpu)?;
        assert_eq!(token_logprobs(&e, &none)?.dims(), &[0]);
        let x = Tensor::arange(0f32, 240.0, &Device::Cpu)?.reshape((6, 40))?;
        let t = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6], 6, &Device::Cpu)?;
        let part = x.narrow(1, 3, 30)?;
        let want: Vec<f32> = token_logprobs(&part, &t)?.to_vec1()?;
        let got: Vec<f32> =
            token_logprobs(&part.to_device(&gpu)?, &t.to_device(&gpu)?)?.to_vec1()?;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "strided: gpu {g} vs cpu {w}");
        }
        Ok(())
    }
}
