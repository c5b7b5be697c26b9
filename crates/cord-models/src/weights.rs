//! Where weights come from: mmapped safetensors, a GGUF file, or an in-memory map (random
//! weights). The model asks for HF names; the GGUF source translates them.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use cord_kernels::cpu::{KQuantGemv, PackedQ8_0, Tier, candle_repacks_q8_0};

use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::layers::{CpuGemm, Linear};

/// What a weight is, for random initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    Matrix,
    Bias,
    Norm,
    Embedding,
}

/// One named weight of a model, in HF naming.
#[derive(Debug, Clone)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: WeightKind,
}

/// All weights a model with this config reads (HF names, `[out, in]` shapes).
pub fn weight_specs(cfg: &ModelConfig) -> Vec<WeightSpec> {
    let mut v = vec![];
    let mut push = |name: String, shape: Vec<usize>, kind: WeightKind| {
        v.push(WeightSpec { name, shape, kind })
    };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    push(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        WeightKind::Embedding,
    );
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let mut lin = |name: &str, out: usize, inp: usize, bias: bool| {
            push(
                format!("{p}.{name}.weight"),
                vec![out, inp],
                WeightKind::Matrix,
            );
            if bias {
                push(format!("{p}.{name}.bias"), vec![out], WeightKind::Bias);
            }
        };
        if cfg.fused_qkv {
            lin("self_attn.qkv_proj", q + 2 * kv, h, cfg.qkv_bias);
        } else {
            lin("self_attn.q_proj", q, h, cfg.qkv_bias);
            lin("self_attn.k_proj", kv, h, cfg.qkv_bias);
            lin("self_attn.v_proj", kv, h, cfg.qkv_bias);
        }
        lin("self_attn.o_proj", h, q, cfg.o_bias);
        if cfg.fused_gate_up {
            lin("mlp.gate_up_proj", 2 * i, h, cfg.mlp_bias);
        } else {
            lin("mlp.gate_proj", i, h, cfg.mlp_bias);
            lin("mlp.up_proj", i, h, cfg.mlp_bias);
        }
        lin("mlp.down_proj", h, i, cfg.mlp_bias);
        let mut norm =
            |name: &str, n: usize| push(format!("{p}.{name}.weight"), vec![n], WeightKind::Norm);
        norm("input_layernorm", h);
        norm("post_attention_layernorm", h);
        if cfg.sandwich_norms {
            norm("pre_feedforward_layernorm", h);
            norm("post_feedforward_layernorm", h);
        }
        if cfg.qk_norm {
            norm("self_attn.q_norm", cfg.head_dim);
            norm("self_attn.k_norm", cfg.head_dim);
        }
    }
    push("model.norm.weight".into(), vec![h], WeightKind::Norm);
    if !cfg.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![cfg.vocab_size, h],
            WeightKind::Matrix,
        );
    }
    v
}

/// Small deterministic generator (splitmix64 + Box-Muller) for random weights on the CPU.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// Random weights (HF names) for `cfg`: matrices ~ N(0, 0.02²)·scaled, biases small, norms
/// around 1 (around 0 when the architecture adds the 1 itself).
pub fn random_weights(
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut rng = Rng(seed);
    if !device.is_cpu() {
        device.set_seed(seed)?;
    }
    for spec in weight_specs(cfg) {
        let (mean, std) = match spec.kind {
            WeightKind::Matrix | WeightKind::Embedding => (0.0, 0.02),
            WeightKind::Bias => (0.0, 0.02),
            WeightKind::Norm => ((1.0 - cfg.norm_weight_offset) as f32, 0.1),
        };
        let n: usize = spec.shape.iter().product();
        let t = if device.is_cpu() {
            let data: Vec<f32> = (0..n).map(|_| mean + std * rng.normal()).collect();
            Tensor::from_vec(data, spec.shape.clone(), device)?
        } else {
            Tensor::randn(mean, std, spec.shape.clone(), device)?
        };
        out.insert(spec.name, t.to_dtype(dtype)?);
    }
    Ok(out)
}

/// Maps an HF weight name to llama.cpp's GGUF name.
pub fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let (base, kind) = rest.rsplit_once('.')?;
    let g = match base {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if arch == Arch::Gemma3 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{kind}"))
}

/// A source of weights by HF name.
pub enum WeightSource {
    Safetensors {
        st: MmapedSafetensors,
        origin: String,
    },
    Gguf {
        content: Arc<gguf_file::Content>,
        file: Mutex<File>,
        origin: String,
        arch: Arch,
        /// Dequantize matmul weights at load instead of running quantized matmuls.
        dequantize: bool,
        /// Which kernel runs Q8_0 matmuls on the CPU.
        cpu_gemm: CpuGemm,
    },
    Map {
        map: HashMap<String, Tensor>,
        origin: String,
    },
}

impl WeightSource {
    pub fn origin(&self) -> &str {
        match self {
            WeightSource::Safetensors { origin, .. }
            | WeightSource::Gguf { origin, .. }
            | WeightSource::Map { origin, .. } => origin,
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingWeight {
            name: name.to_string(),
            origin: self.origin().to_string(),
        }
    }

    fn check_shape(&self, name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
        if actual != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                origin: self.origin().to_string(),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(())
    }

    fn gguf_key(&self, name: &str) -> Result<String> {
        match self {
            WeightSource::Gguf { arch, .. } => {
                gguf_name(name, *arch).ok_or_else(|| self.missing(name))
            }
            _ => Ok(name.to_string()),
        }
    }

    /// Does the source hold this (HF-named) weight?
    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Safetensors { st, .. } => st.get(name).is_ok(),
            WeightSource::Gguf { content, arch, .. } => {
                gguf_name(name, *arch).is_some_and(|g| content.tensor_infos.contains_key(&g))
            }
            WeightSource::Map { map, .. } => map.contains_key(name),
        }
    }

    fn qtensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let WeightSource::Gguf { content, file, .. } = self else {
            return Err(self.missing(name));
        };
        let key = self.gguf_key(name)?;
        let info = content
            .tensor_infos
            .get(&key)
            .ok_or_else(|| self.missing(&key))?;
        self.check_shape(&key, info.shape.dims(), shape)?;
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        Ok(content.tensor(&mut *f, &key, device)?)
    }

    /// A dense tensor of the given shape, converted to `dtype`.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = match self {
            WeightSource::Safetensors { st, .. } => {
                let view = st.get(name).map_err(|_| self.missing(name))?;
                self.check_shape(name, view.shape(), shape)?;
                st.load(name, device)?
            }
            WeightSource::Gguf { .. } => self.qtensor(name, shape, device)?.dequantize(device)?,
            WeightSource::Map { map, .. } => {
                let t = map.get(name).ok_or_else(|| self.missing(name))?;
                self.check_shape(name, t.dims(), shape)?;
                t.to_device(device)?
            }
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// A linear layer `prefix.weight` `[out, in]` (+ `prefix.bias` `[out]`).
    ///
    /// On the CPU, GGUF types without a SIMD kernel in candle (Q4_1, Q5_0, Q5_1) are re-quantized
    /// to Q8_0 at load: about 3× faster matmuls for ~50% more weight memory, and Q8_0 holds the
    /// 4/5-bit values almost exactly. With `dequantize` the stored values are used as they are.
    /// With [`CpuGemm::Cord`], Q8_0 weights (stored or converted) whose shape candle's repacked
    /// kernel does not take are repacked for cord's int8 GEMM instead (when the CPU has a SIMD
    /// tier for it), and Q4_K / Q6_K weights with `k` a multiple of 256 run cord's k-quant GEMV
    /// at decode-sized batches (candle's kernels above [`crate::layers::KQUANT_MAX_ROWS`]
    /// rows).
    pub fn linear(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Linear> {
        let wname = format!("{prefix}.weight");
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out], dtype, device)?)
        } else {
            None
        };
        let w = match self {
            WeightSource::Gguf {
                dequantize,
                cpu_gemm,
                ..
            } => {
                let qt = self.qtensor(&wname, &[out, inp], device)?;
                if *dequantize {
                    // The file's own values: dequantized straight from the stored type, never
                    // through the Q8_0 re-quantization below, so that `--dequantize` is an exact
                    // f32 reference for the quantized paths.
                    QMatMul::Tensor(qt.dequantize(device)?.to_dtype(dtype)?)
                } else {
                    let qt = cpu_fast_qtensor(qt, device)?;
                    if device.is_cpu() && *cpu_gemm == CpuGemm::Cord && cord_q8_0(&qt, out, inp) {
                        let packed = PackedQ8_0::from_q8_0_bytes(&qt.data()?, out, inp)?;
                        return Ok(Linear::cpu_q8_0(packed, b));
                    }
                    let cord_k = device.is_cpu()
                        && *cpu_gemm == CpuGemm::Cord
                        && Tier::detect() != Tier::Scalar;
                    match QMatMul::from_qtensor(qt)? {
                        QMatMul::Tensor(t) => QMatMul::Tensor(t.to_dtype(dtype)?),
                        QMatMul::QTensor(q) => {
                            match KQuantGemv::new(q.clone()).filter(|_| cord_k) {
                                Some(gemv) => {
                                    return Ok(Linear::cpu_kquant(gemv, QMatMul::QTensor(q), b));
                                }
                                None => QMatMul::QTensor(q),
                            }
                        }
                        other => other,
                    }
                }
            }
            _ => QMatMul::Tensor(self.tensor(&wname, &[out, inp], dtype, device)?),
        };
        Ok(Linear::new(w, b))
    }
}

/// Whether cord's int8 GEMM should run this weight `[n, k]`: Q8_0, a SIMD tier on this CPU, and
/// a shape candle's own repacked kernel does not take (where it does, it is the faster one).
fn cord_q8_0(qt: &QTensor, n: usize, k: usize) -> bool {
    qt.dtype() == GgmlDType::Q8_0
        && k.is_multiple_of(GgmlDType::Q8_0.block_size())
        && Tier::detect() != Tier::Scalar
        && !candle_repacks_q8_0(n, k)
}

/// Re-quantizes, on the CPU, weight types whose candle matmul has no SIMD kernel to Q8_0.
fn cpu_fast_qtensor(qt: QTensor, device: &Device) -> Result<QTensor> {
    let slow = matches!(
        qt.dtype(),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    );
    let cols = qt.shape().dims().last().copied().unwrap_or(0);
    if !device.is_cpu() || !slow || cols % GgmlDType::Q8_0.block_size() != 0 {
        return Ok(qt);
    }
    let f = qt.dequantize(device)?;
    Ok(QTensor::quantize(&f, GgmlDType::Q8_0)?)
}
