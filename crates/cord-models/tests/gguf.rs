//! GGUF loading: a tiny quantized model written with candle runs through our decoder and
//! matches candle-transformers' quantized reference models on the same file.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{gemma3, quantized_llama, quantized_phi3, quantized_qwen2};
use common::*;
use cord_models::{CpuGemm, LoadOptions, LogitsMode, ModelConfig, SeqInput, gguf_name, load};
use serde_json::Value;

/// HF → llama.cpp row permutation of Q/K for interleaved RoPE.
fn permute(w: &Tensor, n_head: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((n_head, 2, out / n_head / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

fn write_gguf(path: &Path, config: &Value, weights: &HashMap<String, Tensor>, qtype: GgmlDType) {
    write_gguf_extra(path, config, weights, qtype, vec![]);
}

fn write_gguf_extra(
    path: &Path,
    config: &Value,
    weights: &HashMap<String, Tensor>,
    qtype: GgmlDType,
    extra: Vec<(String, QTensor)>,
) {
    let cfg = ModelConfig::from_hf_json(config, "test").unwrap();
    let arch = cfg.arch.name();
    let mut tensors = vec![];
    let mut names: Vec<_> = weights.keys().cloned().collect();
    names.sort();
    for name in names {
        let t = &weights[&name];
        let g = gguf_name(&name, cfg.arch).unwrap();
        let t = if arch == "llama" && g.ends_with("attn_q.weight") {
            permute(t, cfg.num_heads)
        } else if arch == "llama" && g.ends_with("attn_k.weight") {
            permute(t, cfg.num_kv_heads)
        } else {
            t.clone()
        };
        // llama.cpp stores gemma's RMS norm weights with the 1 added.
        let t = if g.ends_with("norm.weight") && cfg.norm_weight_offset != 0.0 {
            (t + cfg.norm_weight_offset).unwrap()
        } else {
            t
        };
        let q = if t.rank() == 2 {
            QTensor::quantize(&t, qtype).unwrap()
        } else {
            QTensor::quantize(&t, GgmlDType::F32).unwrap()
        };
        tensors.push((g, q));
    }
    tensors.extend(extra);
    let u = |x: usize| gguf_file::Value::U32(x as u32);
    let vocab: Vec<gguf_file::Value> = (0..VOCAB)
        .map(|i| {
            gguf_file::Value::String(match i {
                0 => "<unk>".into(),
                1 => "<s>".into(),
                2 => "</s>".into(),
                i => format!("w{i}"),
            })
        })
        .collect();
    let md: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (format!("{arch}.block_count"), u(cfg.num_layers)),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u(cfg.intermediate_size),
        ),
        (format!("{arch}.attention.head_count"), u(cfg.num_heads)),
        (
            format!("{arch}.attention.head_count_kv"),
            u(cfg.num_kv_heads),
        ),
        (format!("{arch}.rope.dimension_count"), u(cfg.rotary_dim)),
        (
            format!("{arch}.rope.freq_base"),
            gguf_file::Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.context_length"),
            u(cfg.max_position_embeddings),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            gguf_file::Value::Array(vocab),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
        ("tokenizer.ggml.eos_token_id".into(), u(2)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            gguf_file::Value::Bool(true),
        ),
        (
            "tokenizer.chat_template".into(),
            gguf_file::Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        ),
    ];
    let mut md = md;
    if arch == "gemma3" {
        md.push((format!("{arch}.attention.key_length"), u(cfg.head_dim)));
        md.push((format!("{arch}.attention.value_length"), u(cfg.head_dim)));
        md.push((
            format!("{arch}.attention.sliding_window"),
            u(cfg.sliding_window.unwrap()),
        ));
        let pattern = config["sliding_window_pattern"].as_u64().unwrap() as usize;
        md.push((format!("{arch}.attention.sliding_window_type"), u(pattern)));
        if let Some(sc) = cfg.final_logit_softcapping {
            md.push((
                format!("{arch}.final_logit_softcapping"),
                gguf_file::Value::F32(sc as f32),
            ));
        }
    }
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

enum QRef {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
}

impl QRef {
    fn load(path: &Path, arch: &str) -> QRef {
        let mut f = std::fs::File::open(path).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        match arch {
            "llama" => QRef::Llama(
                quantized_llama::ModelWeights::from_gguf(c, &mut f, &Device::Cpu).unwrap(),
            ),
            "qwen2" => QRef::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(c, &mut f, &Device::Cpu).unwrap(),
            ),
            "phi3" => QRef::Phi3(
                quantized_phi3::ModelWeights::from_gguf(false, c, &mut f, &Device::Cpu).unwrap(),
            ),
            a => panic!("no reference for {a}"),
        }
    }
    /// Feeds `toks` at `index_pos` (its internal cache) and returns the last logits.
    fn forward(&mut self, toks: &[u32], index_pos: usize) -> Vec<f32> {
        let x = Tensor::new(toks, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = match self {
            QRef::Llama(m) => m.forward(&x, index_pos),
            QRef::Qwen2(m) => m.forward(&x, index_pos),
            QRef::Phi3(m) => m.forward(&x, index_pos),
        };
        out.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

const QTOL: f32 = 1e-3;

fn check_gguf(config: Value, tied: bool) {
    let arch = config["model_type"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut weights = test_weights(&config, 21);
    if tied {
        weights.remove("lm_head.weight");
    }
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &config, &weights, GgmlDType::Q8_0);
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();

    // candle's kernel on both sides, so that QTOL measures the model code alone: cord's own
    // Q8_0 GEMM keeps the activation scales in f32 where candle rounds them to f16, which moves
    // these logits by a few 1e-2. That kernel is checked in cord-kernels' tests and, end to end,
    // by real_reference.rs against the f32 oracle.
    let opts = LoadOptions {
        cpu_gemm: CpuGemm::Candle,
        ..LoadOptions::default()
    };
    let lm = load(path.to_str().unwrap(), &opts).unwrap();
    assert_eq!(lm.name, "tiny");
    assert_eq!(lm.eos_token_ids, vec![2]);
    assert_eq!(lm.bos_token.as_deref(), Some("<s>"));
    assert_eq!(lm.eos_token.as_deref(), Some("</s>"));
    assert!(lm.add_bos);
    assert!(lm.chat_template.as_deref().unwrap().contains("messages"));
    assert_eq!(lm.model.config().tie_word_embeddings, tied);
    assert_eq!(lm.model.config().rope_interleaved, arch == "llama");
    let model = &lm.model;
    let mut r = QRef::load(&path, &arch);
    let mut kv = kv_for(model, 32, 4);

    // Prefill then incremental decoding, against the reference's own cache.
    let prompt = tokens(5, 9);
    let s = kv.new_sequence();
    let out = rows(
        &model
            .forward(&[SeqInput::new(s, &prompt, LogitsMode::All)], &mut kv)
            .unwrap(),
    );
    let want = r.forward(&prompt, 0);
    assert_close(&out[8], &want, QTOL, &format!("{arch} gguf prefill"));
    assert!(want.iter().any(|x| x.abs() > 0.5), "logits too small");
    for step in 0..4 {
        let pos = prompt.len() + step;
        let t = tokens(60 + step as u64, 1)[0];
        let o = rows(
            &model
                .forward(&[SeqInput::new(s, &[t], LogitsMode::Last)], &mut kv)
                .unwrap(),
        );
        let want = r.forward(&[t], pos);
        assert_close(&o[0], &want, QTOL, &format!("{arch} gguf decode {step}"));
    }
    // Every prefill position equals the reference run on that prefix.
    for p in [0, 3, 7] {
        let want = r.forward(&prompt[..=p], 0);
        assert_close(&out[p], &want, QTOL, &format!("{arch} gguf position {p}"));
    }

    // The same weights unquantized (HF layout, rotate-half RoPE) give nearly the same logits:
    // the permutation and interleaved RoPE of the GGUF path undo each other.
    let dense = test_model_from(&config, &weights);
    let mut kv2 = kv_for(&dense, 32, 4);
    let s2 = kv2.new_sequence();
    let dout = rows(
        &dense
            .forward(&[SeqInput::new(s2, &prompt, LogitsMode::All)], &mut kv2)
            .unwrap(),
    );
    let scale = dout[8].iter().fold(0f32, |m, x| m.max(x.abs()));
    for p in 0..prompt.len() {
        let d = max_abs_diff(&out[p], &dout[p]);
        assert!(
            d < 0.05 * scale,
            "{arch} gguf vs f32 position {p}: diff {d} (scale {scale})"
        );
    }

    // cord's own CPU GEMM (the default) is as close to the f32 model as candle's kernel: both
    // quantize weights and activations to 8 bits. Compared as root-mean-square errors over
    // every position and vocabulary entry, not the largest one: a single logit moves by a
    // quantization step whenever an activation upstream crosses a rounding boundary (a change
    // in the last bits of attention moves the largest error of this model by ~1e-2, 10 % of
    // it), while the mean over all 9 × vocabulary logits is stable. cord keeps the activation
    // scales in f32 where candle rounds them to f16, so it must not be worse beyond sampling
    // noise (25 %); per position (fewer values, noisier) within twice candle's.
    let lmc = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut kvc = kv_for(&lmc.model, 32, 4);
    let sc = kvc.new_sequence();
    let cout = rows(
        &lmc.model
            .forward(&[SeqInput::new(sc, &prompt, LogitsMode::All)], &mut kvc)
            .unwrap(),
    );
    let sq = |a: &[f32], b: &[f32]| -> (f64, usize) {
        let s = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        (s, a.len())
    };
    let rms = |v: &[(f64, usize)]| {
        let (s, n) = v.iter().fold((0.0, 0), |(s, n), (a, b)| (s + a, n + b));
        (s / n as f64).sqrt()
    };
    let (mut ec, mut eq) = (vec![], vec![]);
    for p in 0..prompt.len() {
        let (c, q) = (sq(&cout[p], &dout[p]), sq(&out[p], &dout[p]));
        assert!(
            rms(&[c]) <= 2.0 * rms(&[q]),
            "{arch} position {p}: rms error of cord's GEMM {} vs candle's {}",
            rms(&[c]),
            rms(&[q])
        );
        ec.push(c);
        eq.push(q);
    }
    let (c, q) = (rms(&ec), rms(&eq));
    assert!(
        c <= 1.25 * q,
        "{arch}: rms error against the f32 model, cord's GEMM {c} vs candle's {q}"
    );
    eprintln!("{arch}: rms error against the f32 model, cord's GEMM {c:.5}, candle's {q:.5}");

    // Dequantized at load: same model in f32 matmuls, close to the quantized run.
    let opts = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    let lm2 = load(path.to_str().unwrap(), &opts).unwrap();
    let mut kv3 = kv_for(&lm2.model, 32, 4);
    let s3 = kv3.new_sequence();
    let qout = rows(
        &lm2.model
            .forward(&[SeqInput::new(s3, &prompt, LogitsMode::Last)], &mut kv3)
            .unwrap(),
    );
    let d = max_abs_diff(&qout[0], &out[8]);
    assert!(d < 0.05 * scale, "{arch} dequantized vs quantized: {d}");
}

fn test_model_from(config: &Value, weights: &HashMap<String, Tensor>) -> cord_models::Model {
    let cfg = ModelConfig::from_hf_json(config, "test").unwrap();
    let src = cord_models::WeightSource::Map {
        map: weights.clone(),
        origin: "test".into(),
    };
    cord_models::Model::from_source(&cfg, &src, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn llama_gguf_matches_quantized_llama() {
    check_gguf(llama_config(), false);
}

#[test]
fn llama_gguf_tied_matches_quantized_llama() {
    check_gguf(llama_config(), true);
}

#[test]
fn qwen2_gguf_matches_quantized_qwen2() {
    // qwen2 ties through the config; the GGUF has no output.weight.
    check_gguf(qwen2_config(), true);
}

/// Gemma 3 from GGUF (norms stored as w+1, q/k norms, local RoPE base, sliding pattern and
/// softcapping from metadata). candle's `quantized_gemma3` uses SiLU instead of Gemma's GELU,
/// so the oracle is candle's f32 `gemma3::Model` on the dequantized weights, compared with our
/// GGUF model dequantized at load.
#[test]
fn gemma3_gguf_matches_reference_on_dequantized_weights() {
    let config = gemma3_config();
    let weights = test_weights(&config, 31);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma.gguf");
    write_gguf(&path, &config, &weights, GgmlDType::Q8_0);
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();

    // The reference on the quantize→dequantize round trip of the same weights.
    let roundtrip: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, t)| {
            let t = if t.rank() == 2 {
                QTensor::quantize(t, GgmlDType::Q8_0)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect();
    let hf = tempfile::tempdir().unwrap();
    write_model_dir(hf.path(), &config, &roundtrip);
    let files = [hf.path().join("model.safetensors")];
    let vb =
        unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }
            .unwrap();
    let rc: gemma3::Config = serde_json::from_value(config.clone()).unwrap();
    let mut reference = gemma3::Model::new(false, &rc, vb).unwrap();

    let opts = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    let lm = load(path.to_str().unwrap(), &opts).unwrap();
    let cfg = lm.model.config();
    assert_eq!(cfg.sliding_layers, vec![true, false]);
    assert_eq!(cfg.rope_local_theta, 10_000.0);
    assert_eq!(cfg.query_pre_attn_scalar, Some(32.0));
    assert_eq!(cfg.final_logit_softcapping, Some(30.0));
    assert!(!cfg.rope_interleaved);
    let prompt = tokens(8, 9);
    let mut kv = kv_for(&lm.model, 32, 4);
    let s = kv.new_sequence();
    let out = rows(
        &lm.model
            .forward(&[SeqInput::new(s, &prompt, LogitsMode::All)], &mut kv)
            .unwrap(),
    );
    // candle's gemma3 only decodes one token at a time on the CPU.
    for (p, &t) in prompt.iter().enumerate() {
        let x = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = reference
            .forward(&x, p)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_close(&out[p], &want, 1e-4, &format!("gemma3 gguf position {p}"));
        assert!(
            p < 3 || want.iter().any(|x| x.abs() > 0.5),
            "logits too small"
        );
    }

    // The quantized path (q8 activations) stays close.
    let q = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut kv = kv_for(&q.model, 32, 4);
    let s = kv.new_sequence();
    let qout = rows(
        &q.model
            .forward(&[SeqInput::new(s, &prompt, LogitsMode::Last)], &mut kv)
            .unwrap(),
    );
    let scale = out[8].iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(max_abs_diff(&qout[0], &out[8]) < 0.05 * scale);
}

#[test]
fn phi3_gguf_fused_matches_quantized_phi3() {
    // candle's quantized phi3 rotates the whole head with base 10000 and needs output.weight.
    let mut config = phi3_config();
    config["partial_rotary_factor"] = Value::Null;
    check_gguf(config, false);
}

/// Llama 3.1 GGUFs carry llama.cpp's `rope_freqs.weight` (per-frequency divisors) instead of
/// rope_scaling metadata: the GGUF model equals the HF-config model with llama3 scaling.
#[test]
fn llama31_gguf_rope_freqs_match_llama3_scaling() {
    let config = llama31_config();
    let weights = test_weights(&config, 41);
    let (theta, d) = (500000f32, 16usize);
    let (factor, lo, hi, omax) = (8f32, 1f32, 4f32, 16f32);
    let ff: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| {
            let freq = 1f32 / theta.powf(i as f32 / d as f32);
            let wavelen = 2. * std::f32::consts::PI / freq;
            let scaled = if wavelen < omax / hi {
                freq
            } else if wavelen > omax / lo {
                freq / factor
            } else {
                let smooth = (omax / wavelen - lo) / (hi - lo);
                (1. - smooth) * freq / factor + smooth * freq
            };
            freq / scaled
        })
        .collect();
    assert!(
        ff.iter().any(|&f| f > 1.5),
        "scaling must bite in this test"
    );
    let rope_freqs = Tensor::new(ff.as_slice(), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama31.gguf");
    write_gguf_extra(
        &path,
        &config,
        &weights,
        GgmlDType::F32,
        vec![(
            "rope_freqs.weight".into(),
            QTensor::quantize(&rope_freqs, GgmlDType::F32).unwrap(),
        )],
    );
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();
    let lm = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(matches!(
        lm.model.config().rope_scaling,
        Some(cord_models::RopeScaling::FreqFactors(_))
    ));
    let dense = test_model_from(&config, &weights);
    let prompt = tokens(12, 20);
    let mut outs = vec![];
    for m in [&lm.model, &dense] {
        let mut kv = kv_for(m, 32, 4);
        let s = kv.new_sequence();
        outs.push(rows(
            &m.forward(&[SeqInput::new(s, &prompt, LogitsMode::All)], &mut kv)
                .unwrap(),
        ));
    }
    for (p, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert_close(a, b, 1e-4, &format!("llama3.1 gguf position {p}"));
    }
}

#[test]
fn gguf_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = llama_config();
    let mut weights = test_weights(&config, 1);
    weights.remove("model.layers.1.mlp.down_proj.weight");
    let path = dir.path().join("broken.gguf");
    write_gguf(&path, &config, &weights, GgmlDType::Q8_0);
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();
    let err = load(path.to_str().unwrap(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("blk.1.ffn_down.weight"), "{err}");
    assert!(err.contains("broken.gguf"), "{err}");
}

/// cord's k-quant GEMV (decode steps of Q4_K / Q6_K weights, `CpuGemm::Cord`) is as close to
/// the same weights dequantized to f32 as candle's kernels are: both quantize the activations
/// to 8 bits in blocks of 256. Compared as root-mean-square errors of the decode-step logits
/// (one row per forward, the rows the GEMV takes), over 6 steps × vocabulary; the prefill (9
/// rows) runs candle's kernels on both sides. Bound: 25 % above candle's (sampling noise, see
/// `check_gguf`), and every step within twice candle's.
#[test]
fn kquant_gemv_decodes_as_close_to_f32_as_candle() {
    let mut config = qwen2_config();
    config["hidden_size"] = 256.into();
    config["intermediate_size"] = 512.into();
    for qtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
        let dir = tempfile::tempdir().unwrap();
        let weights = test_weights(&config, 31);
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &config, &weights, qtype);
        std::fs::write(
            dir.path().join("tokenizer.json"),
            tokenizer_json().to_string(),
        )
        .unwrap();
        let decode = |opts: &LoadOptions| -> Vec<Vec<f32>> {
            let lm = load(path.to_str().unwrap(), opts).unwrap();
            let mut kv = kv_for(&lm.model, 32, 4);
            let s = kv.new_sequence();
            let prompt = tokens(5, 9);
            lm.model
                .forward(&[SeqInput::new(s, &prompt, LogitsMode::Last)], &mut kv)
                .unwrap();
            (0..6)
                .map(|step| {
                    let t = tokens(60 + step, 1)[0];
                    let out = lm
                        .model
                        .forward(&[SeqInput::new(s, &[t], LogitsMode::Last)], &mut kv)
                        .unwrap();
                    rows(&out).remove(0)
                })
                .collect()
        };
        let exact = decode(&LoadOptions {
            dequantize: true,
            ..LoadOptions::default()
        });
        let cord = decode(&LoadOptions::default());
        let candle = decode(&LoadOptions {
            cpu_gemm: CpuGemm::Candle,
            ..LoadOptions::default()
        });
        let scale = exact[0].iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.5, "logits too small: {scale}");
        let sq = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
        };
        // The two kernels sum in different orders: equal bits would mean the GEMV never ran.
        // Without a SIMD tier (e.g. aarch64) the loader leaves these weights to candle.
        if cord_kernels::cpu::Tier::detect() == cord_kernels::cpu::Tier::Scalar {
            assert!(
                cord == candle,
                "{qtype:?}: no SIMD tier, yet not candle's logits"
            );
            continue;
        }
        assert!(cord != candle, "{qtype:?}: cord's logits are candle's");
        let (mut ec, mut eq) = (0.0, 0.0);
        for ((e, c), q) in exact.iter().zip(&cord).zip(&candle) {
            let (c, q) = (sq(c, e), sq(q, e));
            assert!(
                c.sqrt() <= 2.0 * q.sqrt(),
                "{qtype:?} step: {c} vs candle's {q}"
            );
            ec += c;
            eq += q;
        }
        let n = (exact.len() * exact[0].len()) as f64;
        let (c, q) = ((ec / n).sqrt(), (eq / n).sqrt());
        eprintln!("{qtype:?}: rms error against f32, cord's GEMV {c:.5}, candle's {q:.5}");
        assert!(
            c <= 1.25 * q,
            "{qtype:?}: rms error cord's GEMV {c} vs candle's {q}"
        );
    }
}
