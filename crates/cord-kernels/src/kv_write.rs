//! KV write: `cache[slots[i]] = src[i]` for every new token row, in place.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Tensor, bail};

/// Writes the rows of `src` (`[n, ...]`) into rows `slots` (u32 `[n]`) of `cache`
/// (`[n_slots, ...]`, same trailing dims and dtype), in place. Slots must be in range; a slot
/// that appears twice leaves one of its rows (which one is unspecified on CUDA).
///
/// CPU: a row copy per token (the reference). CUDA: `kernels/kv_write.cu`, one thread per
/// element.
pub fn kv_write(cache: &Tensor, src: &Tensor, slots: &Tensor) -> Result<()> {
    let n = slots.dims1()?;
    if slots.dtype() != DType::U32 {
        bail!("kv-write: slots must be u32, got {:?}", slots.dtype())
    }
    if cache.rank() < 1 || src.rank() != cache.rank() || src.dims()[1..] != cache.dims()[1..] {
        bail!(
            "kv-write: src {:?} does not fit cache rows {:?}",
            src.shape(),
            cache.shape()
        )
    }
    if src.dim(0)? != n {
        bail!("kv-write: {} rows but {n} slots", src.dim(0)?)
    }
    if src.dtype() != cache.dtype() {
        bail!(
            "kv-write: src is {:?}, the cache {:?}",
            src.dtype(),
            cache.dtype()
        )
    }
    if !cache.is_contiguous() {
        bail!("kv-write: the cache view must be contiguous")
    }
    if n == 0 {
        return Ok(());
    }
    cache.inplace_op3(&src.contiguous()?, &slots.contiguous()?, &KvWrite)
}

struct KvWrite;

/// `(rows, row length)` of a contiguous `[rows, ...]` layout and its element range.
fn rows_of(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("kv-write: operands must be contiguous")
    };
    let dims = l.dims();
    let rows = dims[0];
    let row = dims[1..].iter().product::<usize>();
    Ok((rows, row, start, end))
}

/// The CPU reference: checks every slot, then copies the rows.
fn write_rows<T: Copy>(
    dst: &mut [T],
    n_slots: usize,
    row: usize,
    src: &[T],
    slots: &[u32],
) -> Result<()> {
    if let Some((i, &s)) = slots
        .iter()
        .enumerate()
        .find(|&(_, &s)| s as usize >= n_slots)
    {
        bail!("kv-write: slot {s} of row {i} is outside the cache ({n_slots} slots)")
    }
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        dst[s * row..(s + 1) * row].copy_from_slice(&src[i * row..(i + 1) * row]);
    }
    Ok(())
}

impl InplaceOp3 for KvWrite {
    fn name(&self) -> &'static str {
        "kv-write"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
        slots: &CpuStorage,
        ll: &Layout,
    ) -> Result<()> {
        let (n_slots, row, d0, d1) = rows_of(dl)?;
        let (_, _, s0, s1) = rows_of(sl)?;
        let Some((l0, l1)) = ll.contiguous_offsets() else {
            bail!("kv-write: slots must be contiguous")
        };
        let CpuStorage::U32(ids) = slots else {
            bail!("kv-write: slots must be u32")
        };
        let ids = &ids[l0..l1];
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => {
                write_rows(&mut d[d0..d1], n_slots, row, &s[s0..s1], ids)
            }
            (CpuStorage::BF16(d), CpuStorage::BF16(s)) => {
                write_rows(&mut d[d0..d1], n_slots, row, &s[s0..s1], ids)
            }
            (CpuStorage::F16(d), CpuStorage::F16(s)) => {
                write_rows(&mut d[d0..d1], n_slots, row, &s[s0..s1], ids)
            }
            (d, s) => bail!(
                "kv-write: unsupported dtypes {:?} <- {:?}",
                d.dtype(),
                s.dtype()
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        src: &candle_core::CudaStorage,
        sl: &Layout,
        slots: &candle_core::CudaStorage,
        ll: &Layout,
    ) -> Result<()> {
        const SRC: &str = include_str!("../../../kernels/kv_write.cu");
        let (n_slots, row, d0, _) = rows_of(dl)?;
        let (n, _, s0, _) = rows_of(sl)?;
        let Some((l0, _)) = ll.contiguous_offsets() else {
            bail!("kv-write: slots must be contiguous")
        };
        let dev = dst.device().clone();
        let ids = slots.as_cuda_slice::<u32>()?.slice(l0..);
        let cfg = crate::cuda::cfg_1d(n * row);
        let (n_i, row_i, ns_i) = (n as i32, row as i32, n_slots as i32);
        macro_rules! go {
            ($t:ty, $f:literal) => {{
                let s = src.as_cuda_slice::<$t>()?.slice(s0..);
                let mut d = dst.as_cuda_slice_mut::<$t>()?.slice_mut(d0..);
                crate::cuda::launch!(
                    dev,
                    "cord_kv_write",
                    SRC,
                    $f,
                    cfg,
                    [&mut d, &s, &ids, &n_i, &row_i, &ns_i]
                );
            }};
        }
        match dst.dtype() {
            DType::F32 => go!(f32, "kv_write_u32"),
            DType::BF16 => go!(half::bf16, "kv_write_u16"),
            DType::F16 => go!(half::f16, "kv_write_u16"),
            dt => bail!("kv-write: unsupported dtype {dt:?}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The naive version: `scatter_set` of candle.
    #[test]
    fn matches_scatter_set() -> Result<()> {
        let dev = Device::Cpu;
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let base = Tensor::arange(0f32, 10.0 * 6.0, &dev)?
                .reshape((10, 2, 3))?
                .to_dtype(dt)?;
            let ours = base.copy()?;
            let naive = base.copy()?;
            let src = (Tensor::arange(0f32, 3.0 * 6.0, &dev)?.reshape((3, 2, 3))? * -1.0)?
                .to_dtype(dt)?;
            let slots = Tensor::new(&[7u32, 0, 4], &dev)?;
            kv_write(&ours, &src, &slots)?;
            let ids = slots
                .reshape((3, 1, 1))?
                .broadcast_as((3, 2, 3))?
                .contiguous()?;
            naive.scatter_set(&ids, &src, 0)?;
            let (a, b): (Vec<f32>, Vec<f32>) = (
                ours.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                naive.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            );
            assert_eq!(a, b, "{dt:?}");
        }
        Ok(())
    }

    /// A view with an offset (one layer of a multi-layer cache) is written in place.
    #[test]
    fn writes_through_a_layer_view() -> Result<()> {
        let dev = Device::Cpu;
        let all = Tensor::zeros((3, 4, 2), DType::F32, &dev)?;
        let layer = all.narrow(0, 1, 1)?.squeeze(0)?;
        let src = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev)?;
        kv_write(&layer, &src, &Tensor::new(&[3u32, 1], &dev)?)?;
        let got: Vec<Vec<Vec<f32>>> = all.to_vec3()?;
        assert_eq!(
            got[1],
            vec![vec![0., 0.], vec![3., 4.], vec![0., 0.], vec![1., 2.]]
        );
        assert_eq!(got[0], vec![vec![0.; 2]; 4]);
        assert_eq!(got[2], vec![vec![0.; 2]; 4]);
        Ok(())
    }

    #[test]
    fn refuses_bad_input() -> Result<()> {
        let dev = Device::Cpu;
        let cache = Tensor::zeros((4, 2), DType::F32, &dev)?;
        let src = Tensor::zeros((1, 2), DType::F32, &dev)?;
        let err = kv_write(&cache, &src, &Tensor::new(&[4u32], &dev)?).unwrap_err();
        assert!(err.to_string().contains("slot 4"), "{err}");
        // Nothing was written by the refused call.
        assert_eq!(cache.sum_all()?.to_scalar::<f32>()?, 0.0);
        assert!(
            kv_write(
                &cache,
                &src.to_dtype(DType::BF16)?,
                &Tensor::new(&[0u32], &dev)?
            )
            .is_err()
        );
        assert!(
            kv_write(
                &cache,
                &Tensor::zeros((1, 3), DType::F32, &dev)?,
                &Tensor::new(&[0u32], &dev)?
            )
            .is_err()
        );
        assert!(kv_write(&cache, &src, &Tensor::new(&[0u32, 1], &dev)?).is_err());
        assert!(kv_write(&cache.t()?, &src, &Tensor::new(&[0u32], &dev)?).is_err());
        Ok(())
    }
}
