//! Helpers shared by the integration tests: tiny configs, model directories, KV caches.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cord_kv::KvCache;
use cord_models::{Model, ModelConfig, random_weights, weight_specs};
use serde_json::{Value, json};

pub const VOCAB: usize = 97;

/// A minimal word-level tokenizer.json (the loader requires one).
pub fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(0));
    vocab.insert("<s>".into(), json!(1));
    vocab.insert("</s>".into(), json!(2));
    for i in 3..VOCAB {
        vocab.insert(format!("w{i}"), json!(i));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

pub fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

/// Llama 3.1 style: llama3 rope scaling and tied embeddings.
pub fn llama31_config() -> Value {
    let mut c = llama_config();
    c["rope_theta"] = json!(500000.0);
    c["tie_word_embeddings"] = json!(true);
    c["rope_scaling"] = json!({
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
        "rope_type": "llama3"
    });
    c["eos_token_id"] = json!([2, 3]);
    c
}

pub fn qwen2_config() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128,
        "sliding_window": 128,
        "max_window_layers": 2,
        "use_sliding_window": false,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

pub fn qwen3_config() -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "attention_bias": false,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128,
        "sliding_window": null,
        "max_window_layers": 2,
        "use_sliding_window": false,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

pub fn phi3_config() -> Value {
    json!({
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "partial_rotary_factor": 0.5,
        "max_position_embeddings": 128,
        "original_max_position_embeddings": 128,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

pub fn gemma3_config() -> Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "attention_bias": false,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 32,
        "sliding_window": 64,
        "sliding_window_pattern": 2,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": null,
        "max_position_embeddings": 128,
        "tie_word_embeddings": true,
        "bos_token_id": 2,
        "eos_token_id": 1
    })
}

/// Random weights for `config` with matrices scaled up so that attention is peaked and every
/// component visibly affects the logits.
pub fn test_weights(config: &Value, seed: u64) -> HashMap<String, Tensor> {
    let cfg = ModelConfig::from_hf_json(config, "test config").unwrap();
    let mut w = random_weights(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    for spec in weight_specs(&cfg) {
        if spec.kind != cord_models::weights::WeightKind::Norm {
            let t = w.remove(&spec.name).unwrap();
            w.insert(spec.name, (t * 6.0).unwrap());
        }
    }
    w
}

/// Writes config.json, tokenizer.json and model.safetensors into `dir`.
pub fn write_model_dir(dir: &Path, config: &Value, weights: &HashMap<String, Tensor>) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    candle_core::safetensors::save(weights, dir.join("model.safetensors")).unwrap();
}

pub fn kv_for(model: &Model, num_blocks: usize, block_size: usize) -> KvCache {
    KvCache::new(model.kv_config(num_blocks, block_size)).unwrap()
}

pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// Deterministic pseudo-random token ids in `3..VOCAB`.
pub fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            3 + ((s >> 33) % (VOCAB as u64 - 3)) as u32
        })
        .collect()
}

/// A model built from `test_weights` without going through files.
pub fn test_model(config: &Value, seed: u64) -> Model {
    let cfg = ModelConfig::from_hf_json(config, "test config").unwrap();
    let src = cord_models::WeightSource::Map {
        map: test_weights(config, seed),
        origin: "test weights".into(),
    };
    Model::from_source(&cfg, &src, DType::F32, &Device::Cpu).unwrap()
}
