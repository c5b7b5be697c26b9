//! Loader errors name what is wrong and where; loader metadata (tokenizer config,
//! generation config, sharded checkpoints) is read.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use common::*;
use cord_models::{LoadOptions, LogitsMode, ModelError, SeqInput, load};
use serde_json::json;

fn load_err(dir: &std::path::Path) -> (ModelError, String) {
    let e = load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = llama_config();
    write_model_dir(dir.path(), &config, &test_weights(&config, 1));
    config["model_type"] = json!("gpt_neox");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (e, s) = load_err(dir.path());
    assert!(matches!(e, ModelError::UnknownArchitecture { .. }), "{s}");
    assert!(s.contains("gpt_neox") && s.contains("config.json"), "{s}");
}

#[test]
fn missing_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = qwen2_config();
    write_model_dir(dir.path(), &config, &test_weights(&config, 1));
    config.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (e, s) = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingKey { .. }), "{s}");
    assert!(
        s.contains("intermediate_size") && s.contains("config.json"),
        "{s}"
    );
}

#[test]
fn bad_config_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = llama_config();
    write_model_dir(dir.path(), &config, &test_weights(&config, 1));
    config["num_key_value_heads"] = json!(3);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (_, s) = load_err(dir.path());
    assert!(s.contains("num_key_value_heads"), "{s}");
    config["num_key_value_heads"] = json!("two");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (_, s) = load_err(dir.path());
    assert!(
        s.contains("num_key_value_heads") && s.contains("unsigned integer"),
        "{s}"
    );
}

#[test]
fn missing_weight_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = phi3_config();
    let mut w = test_weights(&config, 1);
    w.remove("model.layers.1.mlp.gate_up_proj.weight").unwrap();
    write_model_dir(dir.path(), &config, &w);
    let (e, s) = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingWeight { .. }), "{s}");
    assert!(
        s.contains("model.layers.1.mlp.gate_up_proj.weight") && s.contains("model.safetensors"),
        "{s}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = gemma3_config();
    let mut w = test_weights(&config, 1);
    w.insert(
        "model.layers.0.self_attn.k_norm.weight".into(),
        Tensor::ones(16, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    write_model_dir(dir.path(), &config, &w);
    let (e, s) = load_err(dir.path());
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{s}");
    assert!(
        s.contains("model.layers.0.self_attn.k_norm.weight")
            && s.contains("[16]")
            && s.contains("[32]"),
        "{s}"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (e, s) = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingFile { .. }), "{s}");
    assert!(s.contains("config.json"), "{s}");

    let config = llama_config();
    write_model_dir(dir.path(), &config, &test_weights(&config, 1));
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let (_, s) = load_err(dir.path());
    assert!(s.contains("tokenizer.json"), "{s}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (_, s) = load_err(dir.path());
    assert!(s.contains("safetensors"), "{s}");

    let e = load("/nonexistent/dir/model", &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/dir/model"), "{e}");
}

/// Sharded weights through `model.safetensors.index.json`, tokenizer_config.json and
/// generation_config.json metadata, and the bf16 dtype option.
#[test]
fn sharded_checkpoint_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let config = llama31_config();
    let w = test_weights(&config, 4);
    write_model_dir(dir.path(), &config, &w);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, v) in &w {
        let shard = if k.contains("layers.1") {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        map.insert(k.clone(), json!(shard));
        if shard.starts_with("model-00001") {
            a.insert(k.clone(), v.clone())
        } else {
            b.insert(k.clone(), v.clone())
        };
    }
    candle_core::safetensors::save(&a, dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "w5",
            "add_bos_token": true,
            "chat_template": [{"name": "default", "template": "T{{ messages }}"}, {"name": "tool_use", "template": "X"}]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        json!({"eos_token_id": [4, 2]}).to_string(),
    )
    .unwrap();
    let lm = load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(lm.eos_token_ids, vec![4, 2, 3, 5]);
    assert_eq!(lm.bos_token.as_deref(), Some("<s>"));
    assert_eq!(lm.eos_token.as_deref(), Some("w5"));
    assert!(lm.add_bos);
    assert_eq!(lm.chat_template.as_deref(), Some("T{{ messages }}"));
    assert_eq!(lm.tokenizer.token_to_id("w7"), Some(7));

    // The same checkpoint in one file gives the same logits; bf16 is close.
    let single = tempfile::tempdir().unwrap();
    write_model_dir(single.path(), &config, &w);
    let one = load(single.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let bf = load(
        single.path().to_str().unwrap(),
        &LoadOptions {
            dtype: candle_core::DType::BF16,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let toks = tokens(3, 6);
    let mut out = vec![];
    for m in [&lm.model, &one.model, &bf.model] {
        let mut kv = kv_for(m, 16, 4);
        assert_eq!(kv.config().dtype, m.dtype());
        let s = kv.new_sequence();
        out.push(
            rows(
                &m.forward(&[SeqInput::new(s, &toks, LogitsMode::Last)], &mut kv)
                    .unwrap(),
            )
            .remove(0),
        );
    }
    assert_close(&out[0], &out[1], 1e-6, "sharded vs single");
    let scale = out[0].iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        max_abs_diff(&out[0], &out[2]) < 0.1 * scale,
        "bf16 far from f32"
    );
    assert_eq!(
        bf.model.kv_bytes_per_token(),
        2 * 2 * 2 * 16 * 2,
        "2 (K,V) x layers x kv heads x head_dim x 2 bytes"
    );
}

/// The runtime shares one `Arc<LoadedModel>` across roles and threads.
#[test]
fn loaded_model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<cord_models::LoadedModel>();
    check::<cord_models::Model>();
}
