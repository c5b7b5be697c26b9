//! Block copy (copy-on-write): block `dst` of every layer becomes a copy of block `src`.

use std::collections::HashSet;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, bail};

/// Copies, for every `(src, dst)` pair and every layer, block `src` of `cache`
/// (`[num_layers, num_blocks, ...]`, contiguous) into block `dst`, in place. Pairs must be in
/// range, no `dst` may repeat or also be a `src`, and `src != dst` (so the copies are
/// independent of each other).
///
/// CPU: a slice copy per pair and layer (the reference). CUDA: `kernels/block_copy.cu`, one
/// launch for all pairs and layers.
pub fn block_copy(cache: &Tensor, pairs: &[(u32, u32)]) -> Result<()> {
    if cache.rank() < 2 {
        bail!(
            "block-copy: cache must be [layers, blocks, ...], got {:?}",
            cache.shape()
        )
    }
    if !cache.is_contiguous() {
        bail!("block-copy: the cache must be contiguous")
    }
    let n_blocks = cache.dim(1)?;
    let srcs: HashSet<u32> = pairs.iter().map(|p| p.0).collect();
    let mut dsts = HashSet::new();
    for &(s, d) in pairs {
        if s as usize >= n_blocks || d as usize >= n_blocks {
            bail!("block-copy: pair ({s}, {d}) is outside the cache ({n_blocks} blocks)")
        }
        if s == d || srcs.contains(&d) || !dsts.insert(d) {
            bail!("block-copy: block {d} is written twice or is also a source")
        }
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let flat: Vec<u32> = pairs.iter().flat_map(|&(s, d)| [s, d]).collect();
    let pairs_t = Tensor::from_vec(flat, (pairs.len(), 2), cache.device())?;
    cache.inplace_op2(&pairs_t, &BlockCopy)
}

struct BlockCopy;

/// `(layers, blocks, elements per block, start)` of a contiguous cache layout.
fn geometry(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    let Some((start, _)) = l.contiguous_offsets() else {
        bail!("block-copy: the cache must be contiguous")
    };
    let d = l.dims();
    Ok((d[0], d[1], d[2..].iter().product(), start))
}

fn copy_blocks<T: Copy>(
    data: &mut [T],
    layers: usize,
    n_blocks: usize,
    elems: usize,
    pairs: &[u32],
) {
    for l in 0..layers {
        let layer = &mut data[l * n_blocks * elems..(l + 1) * n_blocks * elems];
        for p in pairs.chunks_exact(2) {
            let (s, d) = (p[0] as usize, p[1] as usize);
            layer.copy_within(s * elems..(s + 1) * elems, d * elems);
        }
    }
}

impl InplaceOp2 for BlockCopy {
    fn name(&self) -> &'static str {
        "block-copy"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let (layers, n_blocks, elems, start) = geometry(dl)?;
        let Some((p0, p1)) = pl.contiguous_offsets() else {
            bail!("block-copy: pairs must be contiguous")
        };
        let CpuStorage::U32(pairs) = ps else {
            bail!("block-copy: pairs must be u32")
        };
        let pairs = &pairs[p0..p1];
        let end = start + layers * n_blocks * elems;
        match dst {
            CpuStorage::F32(d) => copy_blocks(&mut d[start..end], layers, n_blocks, elems, pairs),
            CpuStorage::BF16(d) => copy_blocks(&mut d[start..end], layers, n_blocks, elems, pairs),
            CpuStorage::F16(d) => copy_blocks(&mut d[start..end], layers, n_blocks, elems, pairs),
            d => bail!("block-copy: unsupported dtype {:?}", d.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        ps: &candle_core::CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        use candle_core::DType;
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        const SRC: &str = include_str!("../../../kernels/block_copy.cu");
        let (layers, n_blocks, elems, start) = geometry(dl)?;
        let Some((p0, _)) = pl.contiguous_offsets() else {
            bail!("block-copy: pairs must be contiguous")
        };
        let n_pairs = pl.dims()[0];
        let dev = dst.device().clone();
        let pairs = ps.as_cuda_slice::<u32>()?.slice(p0..);
        let cfg = LaunchConfig {
            grid_dim: (
                elems.div_ceil(256).clamp(1, 1024) as u32,
                n_pairs as u32,
                layers as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nb, el) = (n_blocks as i32, elems as i32);
        macro_rules! go {
            ($t:ty, $f:literal) => {{
                let mut d = dst.as_cuda_slice_mut::<$t>()?.slice_mut(start..);
                crate::cuda::launch!(
                    dev,
                    "cord_block_copy",
                    SRC,
                    $f,
                    cfg,
                    [&mut d, &pairs, &nb, &el]
                );
            }};
        }
        match dst.dtype() {
            DType::F32 => go!(f32, "block_copy_u32"),
            DType::BF16 => go!(half::bf16, "block_copy_u16"),
            DType::F16 => go!(half::f16, "block_copy_u16"),
            dt => bail!("block-copy: unsupported dtype {dt:?}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The naive version: `index_select` of the source block + `slice_set` into the target.
    #[test]
    fn matches_index_select_slice_set() -> Result<()> {
        let dev = Device::Cpu;
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let base = Tensor::arange(0f32, (3 * 6 * 4 * 2) as f32, &dev)?
                .reshape((3, 6, 4, 2))?
                .to_dtype(dt)?;
            let ours = base.copy()?;
            let naive = base.copy()?;
            let pairs = [(1u32, 4u32), (0, 5), (1, 2)];
            block_copy(&ours, &pairs)?;
            for &(s, d) in &pairs {
                let tmp = naive.index_select(&Tensor::new(&[s], &dev)?, 1)?;
                naive.slice_set(&tmp, 1, d as usize)?;
            }
            let (a, b): (Vec<f32>, Vec<f32>) = (
                ours.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                naive.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            );
            assert_eq!(a, b, "{dt:?}");
            assert_ne!(
                a,
                base.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }

    #[test]
    fn refuses_overlapping_or_out_of_range_pairs() -> Result<()> {
        let cache = Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu)?;
        for pairs in [
            vec![(0u32, 4u32)],
            vec![(4, 0)],
            vec![(1, 1)],
            vec![(0, 1), (2, 1)],
            vec![(0, 1), (1, 2)],
        ] {
            assert!(block_copy(&cache, &pairs).is_err(), "{pairs:?}");
        }
        block_copy(&cache, &[])?;
        Ok(())
    }
}
