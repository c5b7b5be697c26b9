//! Building blocks: a linear layer over dense or quantized weights, RMS norm, RoPE tables.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, Module, Tensor};
use cord_kernels::cpu::{KQuantGemv, PackedQ8_0};

use crate::config::{Activation, RopeScaling};
use crate::error::Result;

/// Which CPU kernels run quantized matmuls: cord's where it has one for the weight type and
/// shape, or candle's `QMatMul` for all (see [`crate::weights::WeightSource::linear`]).
///
/// cord's are the int8 GEMM for Q8_0 weights (stored, or converted at load from Q4_1 / Q5_0 /
/// Q5_1) and the k-quant GEMV for Q4_K / Q6_K weights at up to [`KQUANT_MAX_ROWS`] rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuGemm {
    /// cord's repacked int8 GEMM (`cord_kernels::cpu::PackedQ8_0`) wherever candle has no
    /// repacked kernel for the shape (k not a multiple of 256, n not of 16, or no VNNI), and
    /// cord's k-quant GEMV (`cord_kernels::cpu::KQuantGemv`) for decode-sized batches.
    #[default]
    Cord,
    /// candle's `QMatMul` for every quantized weight.
    Candle,
}

impl std::str::FromStr for CpuGemm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cord" => Ok(CpuGemm::Cord),
            "candle" => Ok(CpuGemm::Candle),
            _ => Err(format!("unknown CPU GEMM `{s}` (cord, candle)")),
        }
    }
}

#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    /// Q8_0 weights repacked for cord's CPU int8 GEMM.
    CordQ8(Arc<PackedQ8_0>),
    /// Q4_K / Q6_K weights: cord's GEMV up to [`KQUANT_MAX_ROWS`] rows, candle's `QMatMul`
    /// (the same tensor) above.
    CordK(KQuantGemv, QMatMul),
}

/// Most activation rows (tokens in one forward) that cord's k-quant GEMV takes; candle's
/// repacked tiles run larger batches (prefill, wider decode) faster. Measured on
/// Qwen2.5-Coder-1.5B (Zen 3, AVX2): the GEMV leads at 1 and 2 rows, candle from 4. The two
/// sum in different orders, so a token's logits and KV differ in the last bits between a forward
/// of at most this many rows and a larger one (docs/testing.md, "Reproducibility").
pub const KQUANT_MAX_ROWS: usize = 2;

/// `y = x W^T (+ b)`, where `W` is a dense tensor or a quantized GGUF tensor.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
}

impl Linear {
    pub fn new(w: QMatMul, b: Option<Tensor>) -> Self {
        Linear {
            w: Weight::Candle(w),
            b,
        }
    }

    /// k-quant weights run by cord's GEMV at decode-sized batches (CPU inputs only); `w` is
    /// the same tensor as a candle `QMatMul`, for larger batches.
    pub fn cpu_kquant(gemv: KQuantGemv, w: QMatMul, b: Option<Tensor>) -> Self {
        Linear {
            w: Weight::CordK(gemv, w),
            b,
        }
    }

    /// Q8_0 weights repacked for cord's CPU GEMM (CPU inputs only).
    pub fn cpu_q8_0(w: PackedQ8_0, b: Option<Tensor>) -> Self {
        Linear {
            w: Weight::CordQ8(Arc::new(w)),
            b,
        }
    }

    pub fn dense(w: Tensor, b: Option<Tensor>) -> Self {
        Linear::new(QMatMul::Tensor(w), b)
    }

    pub fn is_quantized(&self) -> bool {
        matches!(
            self.w,
            Weight::Candle(QMatMul::QTensor(_)) | Weight::CordQ8(_) | Weight::CordK(..)
        )
    }

    /// `x`: `[.., in]` → `[.., out]`, in the dtype of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.w {
            Weight::CordQ8(p) => {
                let dt = x.dtype();
                let xf = x.to_dtype(DType::F32)?.contiguous()?;
                xf.apply_op1_no_bwd(p.as_ref())?.to_dtype(dt)?
            }
            Weight::CordK(g, w) => {
                let dt = x.dtype();
                let xf = x.to_dtype(DType::F32)?.contiguous()?;
                let rows = xf.elem_count() / xf.dim(D::Minus1)?.max(1);
                if rows <= KQUANT_MAX_ROWS {
                    xf.apply_op1_no_bwd(g)?.to_dtype(dt)?
                } else {
                    w.forward(&xf)?.to_dtype(dt)?
                }
            }
            Weight::Candle(w @ QMatMul::QTensor(_)) => {
                let dt = x.dtype();
                let xf = x.to_dtype(DType::F32)?.contiguous()?;
                w.forward(&xf)?.to_dtype(dt)?
            }
            Weight::Candle(QMatMul::Tensor(w)) if w.dtype() != x.dtype() => {
                QMatMul::Tensor(w.to_dtype(x.dtype())?).forward(x)?
            }
            Weight::Candle(w) => w.forward(x)?,
        };
        Ok(match &self.b {
            None => y,
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
        })
    }
}

/// RMS norm over the last dimension; the stored weight already includes any `1 +` offset.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    w: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(w: Tensor, eps: f64) -> Self {
        RmsNorm { w, eps: eps as f32 }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.w, self.eps)?)
    }
}

pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
    })
}

/// Inverse RoPE frequencies for `rotary_dim` dimensions and base `theta`, with scaling.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    interleaved: bool,
    rotary_dim: usize,
}

impl Rope {
    pub fn new(
        rotary_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        interleaved: bool,
    ) -> Self {
        let base: Vec<f32> = (0..rotary_dim)
            .step_by(2)
            .map(|i| 1f32 / (theta as f32).powf(i as f32 / rotary_dim as f32))
            .collect();
        let inv_freq = match scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => {
                base.into_iter().map(|f| f / *factor as f32).collect()
            }
            Some(RopeScaling::FreqFactors(ff)) => base
                .into_iter()
                .enumerate()
                .map(|(i, f)| f / ff.get(i).copied().unwrap_or(1.0))
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let factor = *factor as f32;
                let (lo, hi) = (*low_freq_factor as f32, *high_freq_factor as f32);
                let omax = *original_max_position_embeddings as f32;
                let low_freq_wavelen = omax / lo;
                let high_freq_wavelen = omax / hi;
                base.into_iter()
                    .map(|freq| {
                        let wavelen = 2. * std::f32::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth = (omax / wavelen - lo) / (hi - lo);
                            (1. - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        };
        Rope {
            inv_freq,
            interleaved,
            rotary_dim,
        }
    }

    /// cos/sin tables `[T, rotary_dim/2]` for the given absolute positions.
    pub fn cos_sin(&self, positions: &[u32], device: &Device, dtype: DType) -> Result<CosSin> {
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f32;
            freqs.extend(self.inv_freq.iter().map(|f| p * f));
        }
        let freqs = Tensor::from_vec(freqs, (positions.len(), half), device)?;
        Ok(CosSin {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            interleaved: self.interleaved,
            rotary_dim: self.rotary_dim,
        })
    }
}

/// Per-token RoPE tables of one forward call.
#[derive(Debug, Clone)]
pub struct CosSin {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
    rotary_dim: usize,
}

impl CosSin {
    /// `x`: `[1, heads, T, head_dim]` contiguous; rotates the first `rotary_dim` dims.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        let rope = |x: &Tensor| -> Result<Tensor> {
            Ok(if self.interleaved {
                candle_nn::rotary_emb::rope_i(x, &self.cos, &self.sin)?
            } else {
                candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)?
            })
        };
        if self.rotary_dim == head_dim {
            rope(&x.contiguous()?)
        } else {
            let rot = x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?;
            let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
            Ok(Tensor::cat(&[&rope(&rot)?, &pass], D::Minus1)?.contiguous()?)
        }
    }
}
