//! Logit parity of every architecture against candle-transformers' reference models on the
//! same random weights, through prefill, incremental decoding, forks, multi-token appends and
//! ragged batches over the paged KV cache.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma3, llama, phi3, qwen2, qwen3};
use common::*;
use cord_kv::{KvCache, KvError, SeqId};
use cord_models::{Attention, LoadOptions, LogitsMode, Model, ModelError, SeqInput, load};
use serde_json::Value;

const TOL: f32 = 1e-4;

enum Reference {
    Llama(llama::Llama, llama::Config),
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Phi3(phi3::Model),
    Gemma3(gemma3::Model),
}

impl Reference {
    fn load(config: &Value, dir: &Path) -> Reference {
        let files = [dir.join("model.safetensors")];
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }
            .unwrap();
        let parse = |v: &Value| v.clone();
        match config["model_type"].as_str().unwrap() {
            "llama" => {
                let c: llama::LlamaConfig = serde_json::from_value(parse(config)).unwrap();
                let c = c.into_config(false);
                Reference::Llama(llama::Llama::load(vb, &c).unwrap(), c)
            }
            "qwen2" => {
                let c: qwen2::Config = serde_json::from_value(parse(config)).unwrap();
                Reference::Qwen2(qwen2::ModelForCausalLM::new(&c, vb).unwrap())
            }
            "qwen3" => {
                let c: qwen3::Config = serde_json::from_value(parse(config)).unwrap();
                Reference::Qwen3(qwen3::ModelForCausalLM::new(&c, vb).unwrap())
            }
            "phi3" => {
                let c: phi3::Config = serde_json::from_value(parse(config)).unwrap();
                Reference::Phi3(phi3::Model::new(&c, vb).unwrap())
            }
            "gemma3_text" => {
                let c: gemma3::Config = serde_json::from_value(parse(config)).unwrap();
                Reference::Gemma3(gemma3::Model::new(false, &c, vb).unwrap())
            }
            other => panic!("no reference for {other}"),
        }
    }

    /// Logits at the last position of `history`, computed from scratch.
    fn last_logits(&mut self, history: &[u32]) -> Vec<f32> {
        let x = Tensor::new(history, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = match self {
            Reference::Llama(m, c) => {
                let mut cache = llama::Cache::new(true, DType::F32, c, &Device::Cpu).unwrap();
                m.forward(&x, 0, &mut cache)
            }
            Reference::Qwen2(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Reference::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Reference::Phi3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Reference::Gemma3(m) => {
                // candle's gemma3 cannot prefill several tokens on the CPU (its KV cache
                // `slice_set`s a non-contiguous V), so feed the history one token at a time.
                m.clear_kv_cache();
                let mut out = None;
                for (pos, &t) in history.iter().enumerate() {
                    let x = Tensor::new(&[t], &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    out = Some(m.forward(&x, pos));
                }
                out.unwrap()
            }
        };
        out.unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

fn run(model: &Model, kv: &mut KvCache, batch: &[SeqInput]) -> Vec<Vec<f32>> {
    rows(&model.forward(batch, kv).unwrap())
}

fn one(
    model: &Model,
    kv: &mut KvCache,
    seq: SeqId,
    toks: &[u32],
    mode: LogitsMode,
) -> Vec<Vec<f32>> {
    run(model, kv, &[SeqInput::new(seq, toks, mode)])
}

/// Both attention paths: the per-sequence gather (the CPU default) and the paged-attention op
/// (the CUDA default; here its CPU reference), each against the reference model.
fn check_arch(config: Value) {
    check_arch_with(config.clone(), Attention::Gather);
    check_arch_with(config, Attention::Paged);
}

fn check_arch_with(config: Value, attention: Attention) {
    let arch = format!("{} ({attention:?})", config["model_type"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(dir.path(), &config, &test_weights(&config, 7));
    let mut lm = load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    lm.model.set_attention(attention);
    let model = &lm.model;
    let mut r = Reference::load(&config, dir.path());
    let mut kv = kv_for(model, 64, 4);

    // 1. Prefill of a whole prompt, logits at every position.
    let prompt = tokens(1, 11);
    let a = kv.new_sequence();
    let out = one(model, &mut kv, a, &prompt, LogitsMode::All);
    assert_eq!(out.len(), prompt.len());
    for p in 0..prompt.len() {
        let want = r.last_logits(&prompt[..=p]);
        assert_close(&out[p], &want, TOL, &format!("{arch} prefill position {p}"));
    }
    // The comparison is meaningful: logits are not tiny and depend on the context.
    assert!(
        out[10].iter().any(|x| x.abs() > 0.5),
        "{arch}: logits too small"
    );
    assert!(
        max_abs_diff(&out[9], &out[10]) > 0.1,
        "{arch}: logits ignore context"
    );
    assert_eq!(kv.seq_len(a).unwrap(), prompt.len());

    // 2. Incremental decoding.
    let mut hist_a = prompt.clone();
    for step in 0..3 {
        let t = tokens(100 + step, 1)[0];
        hist_a.push(t);
        let out = one(model, &mut kv, a, &[t], LogitsMode::Last);
        assert_eq!(out.len(), 1);
        let want = r.last_logits(&hist_a);
        assert_close(&out[0], &want, TOL, &format!("{arch} decode step {step}"));
    }

    // 3. Fork: both branches decode different tokens in one batch.
    let b = kv.fork(a).unwrap();
    let mut hist_b = hist_a.clone();
    for step in 0..3 {
        let ta = tokens(200 + step, 1)[0];
        let tb = tokens(300 + step, 1)[0];
        hist_a.push(ta);
        hist_b.push(tb);
        let out = run(
            model,
            &mut kv,
            &[
                SeqInput::new(a, &[ta], LogitsMode::Last),
                SeqInput::new(b, &[tb], LogitsMode::Last),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_close(
            &out[0],
            &r.last_logits(&hist_a),
            TOL,
            &format!("{arch} fork parent {step}"),
        );
        assert_close(
            &out[1],
            &r.last_logits(&hist_b),
            TOL,
            &format!("{arch} fork child {step}"),
        );
    }

    // 4. A multi-token append at an offset > 0 equals token-by-token feeding (and the reference).
    let c = kv.new_sequence();
    let d = kv.new_sequence();
    one(model, &mut kv, c, &prompt[..5], LogitsMode::Last);
    one(model, &mut kv, d, &prompt[..5], LogitsMode::Last);
    let ext = tokens(400, 6);
    let multi = one(model, &mut kv, c, &ext, LogitsMode::All);
    assert_eq!(multi.len(), ext.len());
    let mut hist_c = prompt[..5].to_vec();
    for (i, &t) in ext.iter().enumerate() {
        hist_c.push(t);
        let single = one(model, &mut kv, d, &[t], LogitsMode::Last);
        assert_close(
            &multi[i],
            &single[0],
            TOL,
            &format!("{arch} append vs single {i}"),
        );
        assert_close(
            &multi[i],
            &r.last_logits(&hist_c),
            TOL,
            &format!("{arch} append {i}"),
        );
    }

    // 5. Ragged batch: sequences of different lengths (and one with a cached prefix) in one
    // call give the same logits as each alone.
    let (e, f, g) = (kv.new_sequence(), kv.new_sequence(), kv.new_sequence());
    let (te, tf, tg, tc) = (
        tokens(500, 7),
        tokens(501, 1),
        tokens(502, 12),
        tokens(503, 2),
    );
    let out = run(
        model,
        &mut kv,
        &[
            SeqInput::new(e, &te, LogitsMode::All),
            SeqInput::new(f, &tf, LogitsMode::Last),
            SeqInput::new(g, &tg, LogitsMode::Tail(3)),
            SeqInput::new(c, &tc, LogitsMode::All),
        ],
    );
    assert_eq!(out.len(), 7 + 1 + 3 + 2);
    let (e2, f2, g2) = (kv.new_sequence(), kv.new_sequence(), kv.new_sequence());
    let alone_e = one(model, &mut kv, e2, &te, LogitsMode::All);
    let alone_f = one(model, &mut kv, f2, &tf, LogitsMode::Last);
    let alone_g = one(model, &mut kv, g2, &tg, LogitsMode::All);
    for i in 0..7 {
        assert_close(&out[i], &alone_e[i], TOL, &format!("{arch} ragged e{i}"));
    }
    assert_close(&out[7], &alone_f[0], TOL, &format!("{arch} ragged f"));
    // Tail(3): the last three positions of g, in order.
    for i in 0..3 {
        assert_close(
            &out[8 + i],
            &alone_g[9 + i],
            TOL,
            &format!("{arch} ragged g tail {i}"),
        );
    }
    assert_close(
        &out[10],
        &r.last_logits(&tg),
        TOL,
        &format!("{arch} ragged g ref"),
    );
    hist_c.extend_from_slice(&tc);
    assert_close(
        &out[12],
        &r.last_logits(&hist_c),
        TOL,
        &format!("{arch} ragged c ref"),
    );
    hist_c.pop();
    assert_close(
        &out[11],
        &r.last_logits(&hist_c),
        TOL,
        &format!("{arch} ragged c ref 0"),
    );
}

#[test]
fn llama_matches_reference() {
    check_arch(llama_config());
}

#[test]
fn llama31_rope_scaling_tied_matches_reference() {
    check_arch(llama31_config());
}

#[test]
fn qwen2_matches_reference() {
    check_arch(qwen2_config());
}

#[test]
fn qwen3_matches_reference() {
    check_arch(qwen3_config());
}

#[test]
fn phi3_matches_reference() {
    check_arch(phi3_config());
}

#[test]
fn gemma3_matches_reference() {
    check_arch(gemma3_config());
}

#[test]
fn out_of_blocks_rolls_back_the_whole_batch() {
    let config = llama_config();
    let cfg = cord_models::ModelConfig::from_hf_json(&config, "test").unwrap();
    let model = Model::random(&cfg, DType::F32, &Device::Cpu, 3).unwrap();
    // 4 blocks of 4 tokens: the first sequence takes 2 blocks, the second needs 3.
    let mut kv = kv_for(&model, 4, 4);
    let (a, b) = (kv.new_sequence(), kv.new_sequence());
    let ta = tokens(1, 8);
    let tb = tokens(2, 12);
    let err = model
        .forward(
            &[
                SeqInput::new(a, &ta, LogitsMode::Last),
                SeqInput::new(b, &tb, LogitsMode::Last),
            ],
            &mut kv,
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Kv(KvError::OutOfBlocks { .. })),
        "unexpected error {err}"
    );
    assert_eq!(kv.seq_len(a).unwrap(), 0);
    assert_eq!(kv.seq_len(b).unwrap(), 0);
    assert_eq!(kv.free_blocks(), 4);
    // The cache is still usable and the same request fits once alone.
    let out = model
        .forward(&[SeqInput::new(a, &ta, LogitsMode::All)], &mut kv)
        .unwrap();
    assert_eq!(out.dims(), &[8, common::VOCAB]);
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = cord_models::ModelConfig::from_hf_json(&llama_config(), "test").unwrap();
    let model = Model::random(&cfg, DType::F32, &Device::Cpu, 3).unwrap();
    let mut kv = kv_for(&model, 8, 4);
    let a = kv.new_sequence();
    assert!(matches!(
        model.forward(&[], &mut kv),
        Err(ModelError::BadInput(_))
    ));
    assert!(matches!(
        model.forward(&[SeqInput::new(a, &[], LogitsMode::Last)], &mut kv),
        Err(ModelError::BadInput(_))
    ));
    assert!(matches!(
        model.forward(&[SeqInput::new(a, &[500], LogitsMode::Last)], &mut kv),
        Err(ModelError::BadInput(_))
    ));
    assert!(matches!(
        model.forward(
            &[
                SeqInput::new(a, &[5], LogitsMode::Last),
                SeqInput::new(a, &[6], LogitsMode::Last)
            ],
            &mut kv
        ),
        Err(ModelError::BadInput(_))
    ));
    assert_eq!(kv.seq_len(a).unwrap(), 0);
}

/// Gemma 3 sliding layers: with every layer sliding (window 3), the last position cannot see
/// tokens further back than 2 * (3 - 1); the decode path (one query) agrees with prefill.
#[test]
fn gemma3_sliding_window_masks_old_keys() {
    sliding_window_masks_old_keys(Attention::Gather);
    sliding_window_masks_old_keys(Attention::Paged);
}

fn sliding_window_masks_old_keys(attention: Attention) {
    let mut config = gemma3_config();
    config["sliding_window"] = serde_json::json!(3);
    config["sliding_window_pattern"] = serde_json::json!(6);
    let cfg = cord_models::ModelConfig::from_hf_json(&config, "test").unwrap();
    assert_eq!(cfg.sliding_layers, vec![true, true]);
    let mut model = test_model(&config, 11);
    model.set_attention(attention);
    let mut kv = kv_for(&model, 64, 4);
    let base = tokens(9, 12);
    let last = |kv: &mut KvCache, toks: &[u32]| {
        let s = kv.new_sequence();
        one(&model, kv, s, toks, LogitsMode::Last).remove(0)
    };
    let l0 = last(&mut kv, &base);
    let mut early = base.clone();
    early[6] = if early[6] == 5 { 6 } else { 5 };
    assert_close(
        &l0,
        &last(&mut kv, &early),
        1e-6,
        "token outside the window",
    );
    let mut late = base.clone();
    late[8] = if late[8] == 5 { 6 } else { 5 };
    assert!(
        max_abs_diff(&l0, &last(&mut kv, &late)) > 1e-3,
        "token inside the window ignored"
    );
    // Token-by-token decoding across the window boundary equals one prefill.
    let s = kv.new_sequence();
    let all = one(&model, &mut kv, s, &base, LogitsMode::All);
    let s2 = kv.new_sequence();
    for (i, t) in base.iter().enumerate() {
        let o = one(&model, &mut kv, s2, &[*t], LogitsMode::Last);
        assert_close(&all[i], &o[0], TOL, &format!("sliding decode {i}"));
    }
}
