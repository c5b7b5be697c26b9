//! CPU ops. Each op has a portable scalar implementation that is both the fallback and the
//! reference the SIMD tiers are tested against; the tier is picked at run time by CPU feature.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, bail};

pub mod kquant;
pub mod q8_0;

pub use kquant::{KQuant, KQuantGemv};
pub use q8_0::{PackedQ8_0, Tier, candle_repacks_q8_0};

/// Quantizes one block of activations to int8 (ggml's Q8_0 rounding: `round(x / (amax / 127))`,
/// clamped to ±127) and returns the scale `amax / 127`; `NaN` (and `qs` untouched) when the block
/// holds a NaN, which `f32::max` would otherwise skip, so that it stays in the output instead of
/// a finite wrong value.
pub(crate) fn quantize_block(xs: &[f32], qs: &mut [i8]) -> f32 {
    if xs.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// The `cpu_fwd` of a matmul op `[.., k]` → `[.., n]`: checks that the input is contiguous f32
/// ending in `k`, and runs `matmul(x, m, dst)` into a new `[.., n]` buffer.
pub(crate) fn matmul_fwd(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    (k, n): (usize, usize),
    matmul: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<()>,
) -> Result<(CpuStorage, Shape)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: input is not contiguous {layout:?}")
    };
    let x = match storage {
        CpuStorage::F32(v) => &v[start..end],
        other => bail!("{op}: f32 input expected, got {:?}", other.dtype()),
    };
    let mut dims = layout.shape().dims().to_vec();
    if dims.last() != Some(&k) {
        bail!("{op}: input {dims:?} does not end in k = {k}")
    }
    let m = x.len() / k;
    let mut dst = vec![0f32; m * n];
    matmul(x, m, &mut dst)?;
    *dims.last_mut().expect("checked above") = n;
    Ok((CpuStorage::F32(dst), Shape::from(dims)))
}

/// The output pointer shared by a matmul's rayon tasks, each writing its own columns.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every op that shares one lets its tasks write disjoint elements only.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
