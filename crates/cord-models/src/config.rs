//! Model configuration: one struct for every supported architecture, read from an HF
//! `config.json` or from GGUF metadata. The per-architecture differences are plain fields.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Supported decoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, DeepSeek-R1-Distill-Llama, Mistral.
    Llama,
    /// Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (q/k/v bias).
    Qwen2,
    /// Qwen3 (per-head q/k RMS norm, no bias).
    Qwen3,
    /// Phi-3 / Phi-4 (fused qkv_proj and gate_up_proj).
    Phi3,
    /// Gemma 3 text decoder.
    Gemma3,
}

impl Arch {
    /// Parses an HF `model_type` / GGUF `general.architecture` / HF `architectures[0]` value.
    pub fn parse(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
            "qwen2" | "Qwen2ForCausalLM" => Arch::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Arch::Qwen3,
            "phi3" | "Phi3ForCausalLM" => Arch::Phi3,
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Arch::Gemma3,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// exact erf gelu (`gelu`).
    GeluErf,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            _ => return None,
        })
    }
}

/// RoPE frequency scaling (applied to global-attention layers).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 `rope_type: llama3`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// llama.cpp's `rope_freqs.weight`: per-frequency divisors.
    FreqFactors(Vec<f32>),
}

/// Everything the decoder needs: sizes plus the per-architecture switches.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers (gemma3 `rope_local_base_freq`).
    pub rope_local_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Number of leading head dimensions that are rotated (partial rotary).
    pub rotary_dim: usize,
    /// Interleaved (GPT-J, `rope_i`) rather than rotate-half (`rope`): llama-family GGUF.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMS norm on q and k (qwen3, gemma3).
    pub qk_norm: bool,
    /// Added to every RMS norm weight at load: 1.0 for HF gemma3 (`x * (1 + w)`), 0 otherwise.
    pub norm_weight_offset: f64,
    /// Four norms per block (gemma3): post-attention and pre/post-feedforward.
    pub sandwich_norms: bool,
    /// Embeddings multiplied by this (gemma3: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    /// Fused `qkv_proj` (phi3).
    pub fused_qkv: bool,
    /// Fused `gate_up_proj` (phi3).
    pub fused_gate_up: bool,
    /// Width of the sliding window of the layers flagged in `sliding_layers`.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window (and the local RoPE base)?
    pub sliding_layers: Vec<bool>,
    /// Attention scale is `query_pre_attn_scalar^-0.5` when set, else `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    pub activation: Activation,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Typed access to a JSON object, with errors naming the key and the file.
struct Json<'a> {
    v: &'a Value,
    origin: &'a str,
}

impl<'a> Json<'a> {
    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            key: key.to_string(),
            origin: self.origin.to_string(),
        }
    }
    fn invalid(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig {
            key: key.to_string(),
            origin: self.origin.to_string(),
            msg: msg.into(),
        }
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.invalid(key, format!("expected an unsigned integer, got {v}"))),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a number, got {v}"))),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a boolean, got {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a string, got {v}"))),
        }
    }
    /// An int or a list of ints (`eos_token_id`).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as u32)
                        .ok_or_else(|| self.invalid(key, format!("expected token ids, got {x}")))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|x| vec![x as u32])
                .ok_or_else(|| self.invalid(key, format!("expected a token id, got {v}"))),
        }
    }
}

/// Parses `eos_token_id` (int or list) out of a JSON object such as `generation_config.json`.
pub(crate) fn json_token_ids(v: &Value, key: &str, origin: &str) -> Result<Vec<u32>> {
    Json { v, origin }.ids(key)
}

fn parse_hf_rope_scaling(j: &Json) -> Result<Option<RopeScaling>> {
    let Some(rs) = j.get("rope_scaling") else {
        return Ok(None);
    };
    let r = Json {
        v: rs,
        origin: j.origin,
    };
    let ty = r
        .str_opt("rope_type")?
        .or(r.str_opt("type")?)
        .ok_or_else(|| j.missing("rope_scaling.rope_type"))?;
    let factor = |r: &Json| -> Result<f64> {
        r.f64_opt("factor")?
            .ok_or_else(|| j.missing("rope_scaling.factor"))
    };
    Ok(match ty {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: factor(&r)?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: factor(&r)?,
            low_freq_factor: r
                .f64_opt("low_freq_factor")?
                .ok_or_else(|| j.missing("rope_scaling.low_freq_factor"))?,
            high_freq_factor: r
                .f64_opt("high_freq_factor")?
                .ok_or_else(|| j.missing("rope_scaling.high_freq_factor"))?,
            original_max_position_embeddings: r
                .usize_opt("original_max_position_embeddings")?
                .ok_or_else(|| j.missing("rope_scaling.original_max_position_embeddings"))?,
        }),
        other => {
            return Err(j.invalid(
                "rope_scaling",
                format!(
                    "unsupported rope scaling type `{other}` (supported: default, linear, llama3)"
                ),
            ));
        }
    })
}

impl ModelConfig {
    /// Reads an HF `config.json` value; `origin` names the file in errors.
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<ModelConfig> {
        let top = Json { v, origin };
        // Multimodal gemma3 wraps the decoder config in `text_config`.
        let j = match top.get("text_config") {
            Some(tc) if tc.is_object() => Json { v: tc, origin },
            _ => Json { v, origin },
        };
        let arch_name = match top.str_opt("model_type")? {
            Some(m) => m.to_string(),
            None => match top
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
            {
                Some(a) => a.to_string(),
                None => return Err(top.missing("model_type")),
            },
        };
        let arch = Arch::parse(&arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            arch: arch_name.clone(),
            origin: origin.to_string(),
        })?;
        let is_mistral = arch_name == "mistral" || arch_name == "MistralForCausalLM";

        let vocab_size = j.usize("vocab_size")?;
        let hidden_size = j.usize("hidden_size")?;
        let intermediate_size = j.usize("intermediate_size")?;
        let num_layers = j.usize("num_hidden_layers")?;
        let num_heads = j.usize("num_attention_heads")?;
        let num_kv_heads = j.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match j.usize_opt("head_dim")? {
            Some(h) => h,
            None if arch == Arch::Gemma3 => 256,
            None => {
                if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
                    return Err(j.invalid(
                        "num_attention_heads",
                        format!("hidden_size {hidden_size} is not a multiple of {num_heads} heads"),
                    ));
                }
                hidden_size / num_heads
            }
        };
        let default_eps = match arch {
            Arch::Llama if !is_mistral => 1e-6,
            Arch::Gemma3 | Arch::Qwen2 | Arch::Qwen3 => 1e-6,
            _ => 1e-5,
        };
        let rms_norm_eps = j.f64_opt("rms_norm_eps")?.unwrap_or(default_eps);
        let default_theta = match arch {
            Arch::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        };
        let rope_theta = j.f64_opt("rope_theta")?.unwrap_or(default_theta);
        let rope_local_theta = match arch {
            Arch::Gemma3 => j.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0),
            _ => rope_theta,
        };
        let rope_scaling = parse_hf_rope_scaling(&j)?;
        let rotary_dim = match j.f64_opt("partial_rotary_factor")? {
            Some(f) => (f * head_dim as f64) as usize,
            None => head_dim,
        };
        let max_position_embeddings = j.usize_opt("max_position_embeddings")?.unwrap_or(4096);
        let tie_word_embeddings = j
            .bool_opt("tie_word_embeddings")?
            .or(top.bool_opt("tie_word_embeddings")?)
            .unwrap_or(arch == Arch::Gemma3);
        let attention_bias = j.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama | Arch::Gemma3 | Arch::Qwen3 => (attention_bias, attention_bias),
            Arch::Phi3 => (false, false),
        };
        let mlp_bias = j.bool_opt("mlp_bias")?.unwrap_or(false);
        let act_key = if arch == Arch::Gemma3 {
            "hidden_activation"
        } else {
            "hidden_act"
        };
        let act_name =
            j.str_opt(act_key)?
                .or(j.str_opt("hidden_act")?)
                .unwrap_or(if arch == Arch::Gemma3 {
                    "gelu_pytorch_tanh"
                } else {
                    "silu"
                });
        let activation = Activation::parse(act_name)
            .ok_or_else(|| j.invalid(act_key, format!("unsupported activation `{act_name}`")))?;

        // Sliding windows.
        let sliding_window = j.usize_opt("sliding_window")?;
        let sliding_layers: Vec<bool> = match arch {
            Arch::Gemma3 => {
                if let Some(Value::Array(types)) = j.get("layer_types") {
                    if types.len() != num_layers {
                        return Err(j.invalid(
                            "layer_types",
                            format!("{} entries for {num_layers} layers", types.len()),
                        ));
                    }
                    types
                        .iter()
                        .map(|t| t.as_str() == Some("sliding_attention"))
                        .collect()
                } else {
                    let pattern = j.usize_opt("sliding_window_pattern")?.unwrap_or(6);
                    if pattern == 0 {
                        return Err(j.invalid("sliding_window_pattern", "must be > 0"));
                    }
                    (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                let use_sw = j.bool_opt("use_sliding_window")?.unwrap_or(false);
                let max_window_layers = j.usize_opt("max_window_layers")?.unwrap_or(num_layers);
                (0..num_layers)
                    .map(|i| use_sw && sliding_window.is_some() && i >= max_window_layers)
                    .collect()
            }
            Arch::Llama | Arch::Phi3 => vec![sliding_window.is_some(); num_layers],
        };
        let sliding_window = if sliding_layers.iter().any(|&s| s) {
            match sliding_window {
                Some(w) => Some(w),
                None if arch == Arch::Gemma3 => Some(4096),
                None => None,
            }
        } else {
            None
        };
        let sliding_layers = if sliding_window.is_some() {
            sliding_layers
        } else {
            vec![false; num_layers]
        };

        let gemma = arch == Arch::Gemma3;
        let query_pre_attn_scalar = if gemma {
            Some(j.f64_opt("query_pre_attn_scalar")?.unwrap_or(256.0))
        } else {
            None
        };
        let mut eos_token_ids = j.ids("eos_token_id")?;
        if eos_token_ids.is_empty() && !std::ptr::eq(j.v, top.v) {
            eos_token_ids = top.ids("eos_token_id")?;
        }
        let bos_token_id = j.ids("bos_token_id")?.first().copied();

        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_local_theta,
            rope_scaling,
            rotary_dim,
            rope_interleaved: false,
            max_position_embeddings,
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            fused_qkv: arch == Arch::Phi3,
            fused_gate_up: arch == Arch::Phi3,
            sliding_window,
            sliding_layers,
            query_pre_attn_scalar,
            activation,
            final_logit_softcapping: if gemma {
                j.f64_opt("final_logit_softcapping")?
            } else {
                None
            },
            attn_logit_softcapping: if gemma {
                j.f64_opt("attn_logit_softcapping")?
            } else {
                None
            },
            bos_token_id,
            eos_token_ids,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`{arch}.block_count`, ...). Tensor shapes decide vocab size, tied
    /// embeddings and biases.
    pub fn from_gguf(content: &gguf_file::Content, origin: &str) -> Result<ModelConfig> {
        let md = Gguf {
            md: &content.metadata,
            origin,
        };
        let arch_name = md.string("general.architecture")?;
        let arch = Arch::parse(&arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            arch: arch_name.clone(),
            origin: origin.to_string(),
        })?;
        let p = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = md.usize(&p("embedding_length"))?;
        let num_layers = md.usize(&p("block_count"))?;
        let intermediate_size = md.usize(&p("feed_forward_length"))?;
        let num_heads = md.usize(&p("attention.head_count"))?;
        let num_kv_heads = md
            .usize_opt(&p("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        let head_dim = match md.usize_opt(&p("attention.key_length"))? {
            Some(h) => h,
            None => {
                if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
                    return Err(md.invalid(
                        &p("attention.head_count"),
                        format!(
                            "embedding_length {hidden_size} is not a multiple of {num_heads} heads"
                        ),
                    ));
                }
                hidden_size / num_heads
            }
        };
        let rms_norm_eps = md.f64(&p("attention.layer_norm_rms_epsilon"))?;
        let gemma = arch == Arch::Gemma3;
        let rope_theta =
            md.f64_opt(&p("rope.freq_base"))?
                .unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
        let rope_local_theta = if gemma {
            md.f64_opt(&p("rope.local_freq_base"))?.unwrap_or(10_000.0)
        } else {
            rope_theta
        };
        let rotary_dim = md
            .usize_opt(&p("rope.dimension_count"))?
            .unwrap_or(head_dim);
        let max_position_embeddings = md.usize_opt(&p("context_length"))?.unwrap_or(4096);

        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingWeight {
                name: "token_embd.weight".into(),
                origin: origin.to_string(),
            })?;
        let vocab_size = match md.usize_opt(&p("vocab_size"))? {
            Some(v) => v,
            None => embd.shape.dims()[0],
        };
        let has = |n: &str| content.tensor_infos.contains_key(n);
        // A `rope_freqs.weight` tensor (Llama 3.1 GGUF) is read by the loader, which sets
        // `RopeScaling::FreqFactors`; here only the metadata form.
        let rope_scaling = {
            match md.string_opt(&p("rope.scaling.type"))?.as_deref() {
                None | Some("none") => None,
                Some("linear") => Some(RopeScaling::Linear {
                    factor: md.f64(&p("rope.scaling.factor"))?,
                }),
                Some(other) => {
                    return Err(md.invalid(
                        &p("rope.scaling.type"),
                        format!("unsupported rope scaling type `{other}`"),
                    ));
                }
            }
        };
        let sliding_window = if gemma {
            Some(md.usize(&p("attention.sliding_window"))?)
        } else {
            md.usize_opt(&p("attention.sliding_window"))?
        };
        let sliding_layers = match (arch, sliding_window) {
            (_, None) => vec![false; num_layers],
            (Arch::Gemma3, Some(_)) => {
                let pattern = md
                    .usize_opt(&p("attention.sliding_window_type"))?
                    .unwrap_or(6)
                    .max(1);
                (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
            }
            (Arch::Qwen2 | Arch::Qwen3, Some(_)) => vec![false; num_layers],
            (_, Some(_)) => vec![true; num_layers],
        };
        let sliding_window = if sliding_layers.iter().any(|&s| s) {
            sliding_window
        } else {
            None
        };
        let mut eos_token_ids = vec![];
        if let Some(id) = md.usize_opt("tokenizer.ggml.eos_token_id")? {
            eos_token_ids.push(id as u32);
        }
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_local_theta,
            rope_scaling,
            rotary_dim,
            // llama.cpp permutes the Q/K rows of llama-family models for interleaved RoPE.
            rope_interleaved: arch == Arch::Llama,
            max_position_embeddings,
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
            o_bias: has("blk.0.attn_output.bias"),
            mlp_bias: has("blk.0.ffn_down.bias"),
            qk_norm: has("blk.0.attn_q_norm.weight"),
            // llama.cpp stores gemma norms as w + 1 already.
            norm_weight_offset: 0.0,
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            fused_qkv: has("blk.0.attn_qkv.weight"),
            fused_gate_up: arch == Arch::Phi3 && !has("blk.0.ffn_gate.weight"),
            sliding_window,
            sliding_layers,
            query_pre_attn_scalar: if gemma {
                Some(
                    md.f64_opt(&p("attention.query_pre_attn_scalar"))?
                        .unwrap_or(head_dim as f64),
                )
            } else {
                None
            },
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            final_logit_softcapping: md.f64_opt(&p("final_logit_softcapping"))?,
            attn_logit_softcapping: md.f64_opt(&p("attn_logit_softcapping"))?,
            bos_token_id: md
                .usize_opt("tokenizer.ggml.bos_token_id")?
                .map(|x| x as u32),
            eos_token_ids,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |key: &str, msg: String| ModelError::InvalidConfig {
            key: key.into(),
            origin: origin.into(),
            msg,
        };
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(bad(k, "must be > 0".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} kv heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.rotary_dim == 0
            || self.rotary_dim > self.head_dim
            || !self.rotary_dim.is_multiple_of(2)
        {
            return Err(bad(
                "partial_rotary_factor",
                format!(
                    "rotary dim {} must be even and within head_dim {}",
                    self.rotary_dim, self.head_dim
                ),
            ));
        }
        if self.sliding_layers.len() != self.num_layers {
            return Err(bad(
                "layer_types",
                format!(
                    "{} entries for {} layers",
                    self.sliding_layers.len(),
                    self.num_layers
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of K+V per token over all layers in `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: candle_core::DType) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype.size_in_bytes()
    }

    /// Attention softmax scale.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// Number of weights (parameters) of the model.
    pub fn num_parameters(&self) -> usize {
        crate::weights::weight_specs(self)
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

/// Typed access to GGUF metadata with errors naming the key and the file.
struct Gguf<'a> {
    md: &'a HashMap<String, gguf_file::Value>,
    origin: &'a str,
}

impl Gguf<'_> {
    fn invalid(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig {
            key: key.into(),
            origin: self.origin.into(),
            msg: msg.into(),
        }
    }
    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            key: key.into(),
            origin: self.origin.into(),
        }
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        use gguf_file::Value as V;
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let x: i128 = match v {
            V::U8(x) => *x as i128,
            V::I8(x) => *x as i128,
            V::U16(x) => *x as i128,
            V::I16(x) => *x as i128,
            V::U32(x) => *x as i128,
            V::I32(x) => *x as i128,
            V::U64(x) => *x as i128,
            V::I64(x) => *x as i128,
            other => return Err(self.invalid(key, format!("expected an integer, got {other:?}"))),
        };
        usize::try_from(x)
            .map(Some)
            .map_err(|_| self.invalid(key, format!("negative value {x}")))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        use gguf_file::Value as V;
        Ok(match self.md.get(key) {
            None => None,
            Some(V::F32(x)) => Some(*x as f64),
            Some(V::F64(x)) => Some(*x),
            Some(_) => self.usize_opt(key)?.map(|x| x as f64),
        })
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?.ok_or_else(|| self.missing(key))
    }
    fn string_opt(&self, key: &str) -> Result<Option<String>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(gguf_file::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(key, format!("expected a string, got {other:?}"))),
        }
    }
    fn string(&self, key: &str) -> Result<String> {
        self.string_opt(key)?.ok_or_else(|| self.missing(key))
    }
}

/// Reads an optional integer GGUF metadata value (token ids).
pub(crate) fn gguf_usize(
    content: &gguf_file::Content,
    key: &str,
    origin: &str,
) -> Result<Option<usize>> {
    Gguf {
        md: &content.metadata,
        origin,
    }
    .usize_opt(key)
}
