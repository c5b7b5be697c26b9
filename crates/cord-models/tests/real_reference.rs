//! The real test models against an f32 oracle, with tolerances derived from the arithmetic and
//! the quantization rather than read off one machine.
//!
//! **The oracle.** candle-transformers' models, an implementation independent of cord's decoder,
//! its paged KV cache and its attention, run on the file's weights *dequantized to f32*, one token
//! at a time through their own KV cache; every position's next-token distribution is kept.
//! SmolLM2 and Qwen2.5 use candle-transformers' GGUF models (`quantized_llama`,
//! `quantized_qwen2`) on the GGUF rewritten in memory with every tensor stored as F32 (so their
//! `QMatMul`s are plain f32 matmuls). Gemma 3 uses the safetensors-style `gemma3::Model` (the
//! oracle of cord's parity tests) on the dequantized tensors renamed to HF names, with the 1 that
//! llama.cpp's converter folds into Gemma's norm weights taken out again: candle-transformers'
//! `quantized_gemma3` gives this file a perplexity of 30.3 on the fixture where HF-style
//! `gemma3::Model` and cord agree on 9.57, so it is not used.
//!
//! **cord's f32 path** (`LoadOptions::dequantize`: the same dequantized values) scores the whole
//! text in one prefill and must match the oracle within f32 rounding ([`F32_MAX_ABS`]); its
//! perplexity must match the HF-transformers f32 figures of the fetched files ([`HF_F32_PPL`]).
//!
//! **cord's quantized path** (what synthesis runs on CPU: candle's quantized matmuls, whose
//! kernel tier candle picks at run time by CPU feature and shape) is measured against the same
//! oracle with bounds derived from the activation quantization ([`Q_MEAN_ABS`], [`Q_MAX_ABS`],
//! [`Q_SAFE_MARGIN`]). The same bounds hold for every tier (CI runs this file as the machine
//! picks and with `MISTRALRS_FORCE_AVX2=1`).
//!
//! Assets: `$CORD_MODELS` or `~/.cache/cord/models` (scripts/fetch-models.sh); a test whose model
//! is missing prints `SKIPPED:` and passes. Run:
//! `cargo test -p cord-models --test real_reference -- --nocapture`

#[path = "common/assets.rs"]
mod assets;

use std::io::Cursor;
use std::path::Path;

use assets::{GEMMA3, QWEN05, SMOLLM2, require};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma3, quantized_llama, quantized_qwen2};
use cord_kv::KvCache;
use cord_models::{LoadOptions, LoadedModel, LogitsMode, SeqInput};

const GSM8K: &str = "data/gsm8k/0000.toml";
const BLOCK: usize = 16;

/// Largest |Δ log p| allowed between cord's f32 path and the oracle, over every vocabulary entry
/// of every position (not only the target tokens).
///
/// Both sides compute in f32 on identical weight values; they differ only in the order of
/// additions (one prefill vs token-by-token decode, fused vs separate ops, attention by gather
/// vs concatenated cache). A sum of k terms reordered moves by about √k·2⁻²⁴ relative to the
/// sum of magnitudes: k ≤ 5·10³ here gives ~5·10⁻⁶ per matmul; through 24–30 residual layers
/// with norms that rescale, the logits move by ~10⁻⁵–10⁻⁴ absolute, and a log-softmax row
/// by at most twice that. 2·10⁻³ leaves 10–100× room for that (measured: 7–9·10⁻⁵) and is
/// 2000× below the smallest error an injected model bug produced (RoPE base ×2, appended tokens'
/// positions one too low, RMS-norm ε ×1000: 4.9–11.9; docs/testing.md). Model code is guarded
/// here, at float precision, not by the quantized bounds below.
const F32_MAX_ABS: f32 = 2e-3;

/// Perplexities of the canonical GSM8K fixture (GSM8K test item 473: question + "\n" +
/// answer) computed with HF transformers in f32 on the same GGUF files' dequantized weights,
/// exact softmax, no BOS; given to 3 significant digits, so the relative bound is the rounding
/// (±0.005/6.17 ≈ 0.08 %) plus f32 noise: 0.2 %.
const HF_F32_PPL: [(&str, usize, f64); 2] = [(SMOLLM2, 172, 6.17), (QWEN05, 165, 6.30)];
const HF_PPL_REL: f64 = 2e-3;

/// Bounds for the quantized path vs the f32 oracle, on the target-token log-probs.
///
/// The weights are the same dequantized values on both sides (the GGUF's own quantization is in
/// the oracle too), so the only difference is candle quantizing each *activation row* to 8 bits
/// before the integer dot products: per block of 32 (Q8_0) or 256 (Q8_K) values one scale
/// `s = max|x|/127`, each value off by at most s/2, uniformly (rms s/√12). For a dot product
/// with weight row w the error is Σ wᵢεᵢ with rms ‖w‖·s/√12, against a signal ‖w‖·‖x‖·cos θ,
/// i.e. a relative error of (max|x|/rms x)/(127·√12) ≈ c/440 per matmul, with c the crest
/// factor of the block: ≈ 2.5–3 for 32-value blocks, 4–10 for 256-value blocks whose activations
/// carry outlier channels. So each matmul output carries 0.6–2.3 % relative noise, independent
/// between matmuls; the residual stream adds ~2 of them per layer at a fraction of the stream's
/// norm, and the final norm + LM head turn the accumulated relative error ρ of the last hidden
/// state into logit noise σ ≈ ρ·(logit spread): ρ of a few % and spreads of 5–15 logits give
/// σ ≈ 0.1–0.3 on a single logit, hence a log-prob error of about σ·√2·√(1-p) on a target of
/// probability p (the error cancels as p → 1). Averaged over a text (mean |Δ| ≈ 0.8·σ·E[√(1-p)],
/// E[√(1-p)] ≈ 0.5 on these texts) that is 0.04–0.12 nats per token: the bound is the top of that
/// range plus margin, 0.15. A single token can reach ~4σ: 1.2, bound 1.5 for the largest.
///
/// Files with Q4_1 / Q5_0 / Q5_1 tensors (all three fetched files) get those re-quantized to Q8_0
/// at load on the CPU (crates/cord-models/src/weights.rs), a second, independent 8-bit rounding
/// of the same size on every matmul: the noise adds in quadrature, so both bounds scale by √2
/// for them ([`roundings`]).
///
/// These bounds guard the quantized kernels and the loader's re-quantization, not the model code
/// (the f32 check above does that): a scoring off by one row gives ≥ 9 nats per token on average
/// (checked below on every model), but a subtle model bug can move the targets by less than the
/// quantization noise (RoPE base ×2: 0.10 on SmolLM2's targets).
const Q_MEAN_ABS: f64 = 0.15;
const Q_MAX_ABS: f32 = 1.5;

/// Independent 8-bit roundings on each matmul of the quantized CPU path: the activations, plus
/// the weights when the file holds types that the loader re-quantizes to Q8_0.
fn roundings(path: &Path) -> usize {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let requantized = ct.tensor_infos.values().any(|t| {
        matches!(
            t.ggml_dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        )
    });
    1 + usize::from(requantized)
}
/// Where the oracle's top-1 beats its top-2 by more than this many nats, the quantized path
/// must pick the same top-1: the gap moves by at most ~2·(4σ) ≈ 2.4 with σ ≤ 0.3 above, so
/// 3 nats cannot flip.
const Q_SAFE_MARGIN: f32 = 3.0;

/// Per position: the log-softmax row (the next-token distribution after tokens[..=i]).
type Rows = Vec<Vec<f32>>;

fn log_softmax_rows(logits: &Tensor) -> Rows {
    candle_nn::ops::log_softmax(logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// The GGUF at `path` with every tensor dequantized and stored as F32, in memory.
fn f32_gguf(path: &Path) -> (gguf_file::Content, Cursor<Vec<u8>>) {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|name| {
            let qt = ct.tensor(&mut f, name, &Device::Cpu).unwrap();
            let dense = qt.dequantize(&Device::Cpu).unwrap();
            (
                name.to_string(),
                QTensor::quantize(&dense, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let metadata: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &refs).unwrap();
    drop(refs);
    drop(tensors);
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf).unwrap();
    (content, buf)
}

enum Oracle {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Gemma3(gemma3::Model),
}

/// HF name of a Gemma 3 GGUF tensor (llama.cpp's converter naming), and whether it is an RMS norm
/// weight (stored as 1 + w in the GGUF, as w in HF).
fn gemma3_hf_name(gguf: &str) -> (String, bool) {
    match gguf {
        "token_embd.weight" => return ("model.embed_tokens.weight".into(), false),
        "output_norm.weight" => return ("model.norm.weight".into(), true),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (base, kind) = rest.rsplit_once('.').unwrap();
    let (hf, norm) = match base {
        "attn_q" => ("self_attn.q_proj", false),
        "attn_k" => ("self_attn.k_proj", false),
        "attn_v" => ("self_attn.v_proj", false),
        "attn_output" => ("self_attn.o_proj", false),
        "attn_q_norm" => ("self_attn.q_norm", true),
        "attn_k_norm" => ("self_attn.k_norm", true),
        "ffn_gate" => ("mlp.gate_proj", false),
        "ffn_up" => ("mlp.up_proj", false),
        "ffn_down" => ("mlp.down_proj", false),
        "attn_norm" => ("input_layernorm", true),
        "post_attention_norm" => ("post_attention_layernorm", true),
        "ffn_norm" => ("pre_feedforward_layernorm", true),
        "post_ffw_norm" => ("post_feedforward_layernorm", true),
        other => panic!("unexpected Gemma 3 tensor {other}"),
    };
    (format!("model.layers.{layer}.{hf}.{kind}"), norm)
}

/// candle-transformers' `gemma3::Model` on the GGUF's dequantized weights, configured from the
/// GGUF's own metadata.
fn gemma3_oracle(path: &Path) -> gemma3::Model {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| ct.metadata.get(&format!("gemma3.{k}"));
    let int = |k: &str| md(k).unwrap().to_u32().unwrap() as usize;
    let float = |k: &str| md(k).unwrap().to_f32().unwrap() as f64;
    let head_dim = int("attention.key_length");
    let mut tensors = std::collections::HashMap::new();
    for name in ct.tensor_infos.keys() {
        let t = ct
            .tensor(&mut f, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let (hf, norm) = gemma3_hf_name(name);
        tensors.insert(hf, if norm { (t - 1.0).unwrap() } else { t });
    }
    let vocab = tensors["model.embed_tokens.weight"].dim(0).unwrap();
    let cfg: gemma3::Config = serde_json::from_value(serde_json::json!({
        "attention_bias": false,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": int("embedding_length"),
        "intermediate_size": int("feed_forward_length"),
        "num_attention_heads": int("attention.head_count"),
        "num_hidden_layers": int("block_count"),
        "num_key_value_heads": int("attention.head_count_kv"),
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon"),
        "rope_theta": float("rope.freq_base"),
        // Gemma 3's published values where the GGUF has no key: local RoPE base 10000, one
        // global layer in 6, attention scale head_dim^-0.5, no final soft-capping.
        "rope_local_base_freq": md("rope.local_freq_base").map_or(10_000.0, |v| v.to_f32().unwrap() as f64),
        "vocab_size": vocab,
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": int("attention.sliding_window"),
        "sliding_window_pattern": 6,
        "max_position_embeddings": int("context_length"),
    }))
    .unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    gemma3::Model::new(false, &cfg, vb).unwrap()
}

impl Oracle {
    fn load(path: &Path, arch: &str) -> Oracle {
        let dev = Device::Cpu;
        let f32_gguf = || f32_gguf(path);
        match arch {
            "llama" => {
                let (ct, mut buf) = f32_gguf();
                Oracle::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut buf, &dev).unwrap())
            }
            "qwen2" => {
                let (ct, mut buf) = f32_gguf();
                Oracle::Qwen2(quantized_qwen2::ModelWeights::from_gguf(ct, &mut buf, &dev).unwrap())
            }
            "gemma3" => Oracle::Gemma3(gemma3_oracle(path)),
            other => panic!("no oracle for architecture {other}"),
        }
    }

    /// Next-token log-softmax rows for every position, feeding one token at a time.
    fn rows(&mut self, ids: &[u32]) -> Rows {
        let mut out = Vec::with_capacity(ids.len());
        for (pos, &id) in ids.iter().enumerate() {
            let x = Tensor::new(&[id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = match self {
                Oracle::Llama(m) => m.forward(&x, pos),
                Oracle::Qwen2(m) => m.forward(&x, pos),
                Oracle::Gemma3(m) => m.forward(&x, pos),
            }
            .unwrap();
            let logits = logits.flatten_all().unwrap().unsqueeze(0).unwrap();
            out.push(log_softmax_rows(&logits).remove(0));
        }
        out
    }
}

/// cord's rows for every position of `ids`, with all-position logits: a prefill of the first
/// `split` tokens, then the rest appended over the cached prefix (positions after a cached
/// prefix are where offset bugs live).
fn cord_rows(m: &LoadedModel, ids: &[u32], split: usize) -> Rows {
    let mut kv = KvCache::new(m.model.kv_config(ids.len().div_ceil(BLOCK) + 1, BLOCK)).unwrap();
    let seq = kv.new_sequence();
    let mut rows = vec![];
    for part in [&ids[..split], &ids[split..]]
        .into_iter()
        .filter(|p| !p.is_empty())
    {
        let logits = m
            .model
            .forward(&[SeqInput::new(seq, part, LogitsMode::All)], &mut kv)
            .unwrap();
        rows.extend(log_softmax_rows(&logits));
    }
    rows
}

fn load(path: &Path, dequantize: bool) -> LoadedModel {
    let opts = LoadOptions {
        dequantize,
        ..LoadOptions::default()
    };
    cord_models::load(path.to_str().unwrap(), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GSM8K test item 473: `question + "\n" + answer.strip()`.
fn gsm8k_text(dir: &Path) -> String {
    let path = dir.join(GSM8K);
    let t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let field = |k: &str| t[k].as_str().unwrap().to_string();
    format!("{}\n{}", field("question"), field("answer").trim())
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

/// (top-1 index, top-1 minus top-2 log-prob).
fn top1_margin(row: &[f32]) -> (usize, f32) {
    let i = argmax(row);
    let second = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    (i, row[i] - second)
}

/// Target-token log-probs: row i scores ids[i + 1].
fn targets(rows: &Rows, ids: &[u32]) -> Vec<f32> {
    (0..ids.len() - 1)
        .map(|i| rows[i][ids[i + 1] as usize])
        .collect()
}

fn ppl(lps: &[f32]) -> f64 {
    (-lps.iter().map(|&x| x as f64).sum::<f64>() / lps.len() as f64).exp()
}

struct Diff {
    mean_abs: f64,
    max_abs: f32,
    max_at: usize,
}

fn diff(a: &[f32], b: &[f32]) -> Diff {
    assert_eq!(a.len(), b.len());
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let max_at = argmax(&d);
    Diff {
        mean_abs: d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64,
        max_abs: d[max_at],
        max_at,
    }
}

fn check_model(test: &str, model: &str, arch: &str, bos: Option<u32>) {
    let Some(dir) = require(
        test,
        &[
            &format!("{model}/model.gguf"),
            &format!("{model}/tokenizer.json"),
            GSM8K,
        ],
    ) else {
        return;
    };
    let path = dir.join(model).join("model.gguf");
    let tier = std::env::var("MISTRALRS_FORCE_AVX2")
        .ok()
        .filter(|v| v == "1")
        .map_or("as the machine picks", |_| "MISTRALRS_FORCE_AVX2=1");

    // cord's quantized path first, then the f32 path, then the oracle (one model in memory at a
    // time keeps the peak at about twice the f32 weights).
    let quant = load(&path, false);
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(
        quant
            .tokenizer
            .encode(gsm8k_text(&dir), false)
            .unwrap()
            .get_ids(),
    );
    // The quantized path as synthesis runs it: a cached prefix, then an append.
    let q_rows = cord_rows(&quant, &ids, ids.len() / 2);
    drop(quant);
    // The f32 path (which checks the model code at float precision) the same way.
    let f_rows = cord_rows(&load(&path, true), &ids, ids.len() / 3);
    let o_rows = Oracle::load(&path, arch).rows(&ids);

    // 1. The f32 path against the oracle, over whole rows.
    let mut f_max = 0f32;
    for (a, b) in f_rows.iter().zip(&o_rows) {
        for (x, y) in a.iter().zip(b) {
            f_max = f_max.max((x - y).abs());
        }
    }
    let (o_t, f_t, q_t) = (
        targets(&o_rows, &ids),
        targets(&f_rows, &ids),
        targets(&q_rows, &ids),
    );
    let fd = diff(&f_t, &o_t);
    eprintln!(
        "{model}: {} tokens; f32 path vs oracle: max |Δ| {f_max:.2e} over all rows, \
         targets mean {:.2e}; PPL oracle {:.4}, f32 path {:.4}, quantized {:.4}",
        ids.len(),
        fd.mean_abs,
        ppl(&o_t),
        ppl(&f_t),
        ppl(&q_t)
    );
    assert!(
        f_max <= F32_MAX_ABS,
        "{model}: cord's f32 path differs from the f32 oracle by {f_max:.3e} > {F32_MAX_ABS:e}"
    );
    if let Some(&(_, n, hf)) = HF_F32_PPL.iter().find(|(m, _, _)| *m == model) {
        assert_eq!(ids.len(), n, "{model}: token count of the GSM8K fixture");
        let p = ppl(&f_t);
        assert!(
            (p / hf - 1.0).abs() <= HF_PPL_REL,
            "{model}: f32 PPL {p:.4} vs HF transformers {hf}"
        );
    }

    // 2. The quantized path against the oracle.
    let scale = (roundings(&path) as f64).sqrt();
    let (mean_bound, max_bound) = (Q_MEAN_ABS * scale, Q_MAX_ABS * scale as f32);
    let qd = diff(&q_t, &o_t);
    let mut checked = 0;
    let mut flipped = vec![];
    for (i, (q, o)) in q_rows.iter().zip(&o_rows).enumerate() {
        let (top, margin) = top1_margin(o);
        if margin > Q_SAFE_MARGIN {
            checked += 1;
            if argmax(q) != top {
                flipped.push(i);
            }
        }
    }
    eprintln!(
        "{model} ({tier}): quantized vs oracle on targets: mean |Δ| {:.4} (bound {mean_bound:.3}), \
         max {:.4} at position {} (bound {max_bound:.2}); top-1 kept at {checked} positions \
         with margin > {Q_SAFE_MARGIN}",
        qd.mean_abs, qd.max_abs, qd.max_at
    );
    assert!(
        qd.mean_abs <= mean_bound,
        "{model} ({tier}): quantized mean |Δ log p| {:.4} > {mean_bound:.3}",
        qd.mean_abs
    );
    assert!(
        qd.max_abs <= max_bound,
        "{model} ({tier}): quantized |Δ log p| {:.4} at position {} > {max_bound:.2}",
        qd.max_abs,
        qd.max_at
    );
    assert!(
        flipped.is_empty(),
        "{model} ({tier}): top-1 differs from the oracle at positions {flipped:?} where its \
         margin exceeds {Q_SAFE_MARGIN} nats"
    );
    assert!(
        checked >= 10,
        "{model}: too few confident positions ({checked})"
    );

    // 3. The bound separates bugs: scoring with rows off by one position (the classic
    //    off-by-one between logits and targets) must be far outside it.
    let shifted: Vec<f32> = (1..ids.len() - 1)
        .map(|i| q_rows[i][ids[i] as usize])
        .collect();
    let sd = diff(&shifted, &o_t[..shifted.len()]);
    eprintln!(
        "{model}: off-by-one rows vs oracle: mean |Δ| {:.3}",
        sd.mean_abs
    );
    assert!(
        sd.mean_abs > 5.0 * mean_bound,
        "{model}: an off-by-one scoring bug ({:.3}) would pass the bound {mean_bound:.3}",
        sd.mean_abs
    );
}

#[test]
fn smollm2_135m_matches_the_f32_oracle() {
    check_model(
        "smollm2_135m_matches_the_f32_oracle",
        SMOLLM2,
        "llama",
        None,
    );
}

#[test]
fn qwen25_coder_05b_matches_the_f32_oracle() {
    check_model(
        "qwen25_coder_05b_matches_the_f32_oracle",
        QWEN05,
        "qwen2",
        None,
    );
}

#[test]
fn gemma3_270m_matches_the_f32_oracle() {
    check_model(
        "gemma3_270m_matches_the_f32_oracle",
        GEMMA3,
        "gemma3",
        Some(2),
    );
}
