//! The engine on the real test models (fetched by `scripts/fetch-models.sh`): one text prompt
//! handed to three models with three tokenizers, scoring against HF transformers' f32 log-probs,
//! scores independent of the batch, and a chat-templated prompt with a raw assistant prefill.
//!
//! Assets are looked up in `$CORD_MODELS`, else `~/.cache/cord/models`; when they are absent each
//! test prints a `SKIPPED:` line on stderr and passes.
//!
//! Run: `cargo test -p cord-runtime --test real_engine -- --nocapture`

#[path = "../../cord-models/tests/common/assets.rs"]
mod assets;

use std::path::Path;

use assets::{GEMMA3, QWEN05, SMOLLM2, require};
use cord_runtime::SamplingParams;
use cord_runtime::engine::{Engine, Finish, GenRequest, ModelId, ModelOptions, TokenScoreRequest};

const GERMANY: &str = "The capital of France is Paris. The capital of Germany is";

fn files(models: &[&str]) -> Vec<String> {
    models
        .iter()
        .flat_map(|m| [format!("{m}/model.gguf"), format!("{m}/tokenizer.json")])
        .collect()
}

fn need(test: &str, models: &[&str]) -> Option<std::path::PathBuf> {
    let f = files(models);
    let refs: Vec<&str> = f.iter().map(String::as_str).collect();
    require(test, &refs)
}

/// `CORD_ATTENTION=gather` runs these tests with the gather attention path (as it does the
/// `cord` binary): `scores_do_not_depend_on_the_batch` then fails (docs/testing.md).
fn opts() -> ModelOptions {
    let attention = std::env::var("CORD_ATTENTION")
        .ok()
        .and_then(|v| cord_models::Attention::parse(&v))
        .unwrap_or_default();
    ModelOptions {
        // A few thousand tokens is plenty here; the default (1 GiB) would only cost RAM.
        kv_memory: 64 << 20,
        attention,
        ..ModelOptions::default()
    }
}

fn add(e: &mut Engine, dir: &Path, model: &str) -> ModelId {
    let path = dir.join(model).join("model.gguf");
    e.add_model(path.to_str().unwrap(), &opts())
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn greedy(prompt: &str, max_new_tokens: usize) -> GenRequest {
    GenRequest {
        prompt: prompt.to_string(),
        params: SamplingParams::greedy(),
        seed: 0,
        max_new_tokens,
        stop: vec![],
        keep_stop: false,
    }
}

#[test]
fn one_text_prompt_continues_with_berlin_on_three_models() {
    let Some(dir) = need(
        "one_text_prompt_continues_with_berlin_on_three_models",
        &[SMOLLM2, QWEN05, GEMMA3],
    ) else {
        return;
    };
    let mut e = Engine::new();
    // (model, first prompt ids, " Berlin" id)
    let cases: [(&str, &[u32], u32); 3] = [
        (SMOLLM2, &[504, 3575, 282, 4649, 314], 11452),
        (QWEN05, &[785, 6722, 315, 9625, 374], 19846),
        (GEMMA3, &[2, 818, 5279, 529, 7001, 563], 15687),
    ];
    let ids: Vec<ModelId> = cases.iter().map(|c| add(&mut e, &dir, c.0)).collect();
    assert_eq!(e.models().len(), 3);
    // Adding the same spec again returns the resident model.
    assert_eq!(add(&mut e, &dir, SMOLLM2), ids[0]);
    for (&(model, prefix, berlin), &id) in cases.iter().zip(&ids) {
        let m = e.model(id).unwrap();
        let tokens = m.encode(GERMANY).unwrap();
        assert_eq!(&tokens[..prefix.len()], prefix, "{model}: prompt tokens");
        let out = e.generate(id, &[greedy(GERMANY, 4)]).unwrap().remove(0);
        eprintln!("{model}: {:?} {:?}", out.text, out.token_ids);
        assert_eq!(out.prompt_tokens, tokens.len(), "{model}");
        assert_eq!(
            out.token_ids[0], berlin,
            "{model}: first token of {:?}",
            out.text
        );
        assert!(
            out.text.starts_with(" Berlin. The"),
            "{model}: greedy continuation {:?}",
            out.text
        );
        assert_eq!(out.finish, Finish::Length);
        assert_eq!(out.completion_tokens, 4);
    }
}

/// HF transformers' f32 log-prob of " Paris" after "The capital of France is" on the fetched
/// GGUFs' dequantized weights (3 significant digits), and the largest difference a single token's
/// log-prob may show between the quantized and the f32 path: the bound derived in
/// crates/cord-models/tests/real_reference.rs (`Q_MAX_ABS`) from 8-bit activation quantization.
const PARIS_F32: [(&str, u32, f32); 2] = [(SMOLLM2, 7042, -0.258), (QWEN05, 12095, -0.098)];
const Q_MAX_ABS: f32 = 1.5;

#[test]
fn score_of_paris_matches_the_f32_reference() {
    let Some(dir) = need(
        "score_of_paris_matches_the_f32_reference",
        &[SMOLLM2, QWEN05],
    ) else {
        return;
    };
    let req = TokenScoreRequest {
        context: "The capital of France is".into(),
        continuation: " Paris".into(),
    };
    for (model, paris, hf) in PARIS_F32 {
        let path = dir.join(model).join("model.gguf");
        let mut lp = vec![];
        for dequantize in [true, false] {
            let mut e = Engine::new();
            let o = ModelOptions {
                dequantize,
                ..opts()
            };
            let id = e.add_model(path.to_str().unwrap(), &o).unwrap();
            let out = e.score(id, std::slice::from_ref(&req)).unwrap().remove(0);
            assert_eq!(out.token_ids, [paris], "{model}");
            assert_eq!(out.context_tokens, 5, "{model}");
            lp.push(out.logprobs[0]);
        }
        eprintln!(
            "{model}: log p(\" Paris\" | \"The capital of France is\"): f32 path {:.4} \
             (HF f32 {hf}), quantized {:.4}",
            lp[0], lp[1]
        );
        // The f32 path: the constant's rounding (5e-4) plus f32 noise.
        assert!(
            (lp[0] - hf).abs() <= 1e-3,
            "{model}: f32 path {} vs {hf}",
            lp[0]
        );
        assert!(
            (lp[1] - lp[0]).abs() <= Q_MAX_ABS,
            "{model}: quantized {} vs f32 {}",
            lp[1],
            lp[0]
        );
    }
}

/// A candidate's log-probs do not depend on what else is scored with it: scored alone, with a
/// longer continuation (more rows in the forward), inside a batch of other candidates, and over
/// a context that the prefix cache already holds, its shared positions get the same values.
///
/// On x86-64 every kernel on the path computes each row on its own (candle's quantized matmuls
/// quantize and dot each activation row separately; cord's CPU attention is the paged op's
/// per-row loop), so the values are bit-identical. Elsewhere (aarch64 tiles 4 rows at a time and
/// runs the tail rows as a different kernel) they may move by up to the quantization bound.
#[test]
fn scores_do_not_depend_on_the_batch() {
    let Some(dir) = need("scores_do_not_depend_on_the_batch", &[SMOLLM2, QWEN05]) else {
        return;
    };
    let ctx = "Question: what is the capital of France?\nAnswer:";
    let req = |c: &str| TokenScoreRequest {
        context: ctx.into(),
        continuation: c.into(),
    };
    let short = req(" The capital of France is Paris.");
    let long = req(
        " The capital of France is Paris. It is also the largest city of the country, on the Seine.",
    );
    let others = [
        req(" Lyon"),
        req(" I do not know, but it might be Marseille or Lyon or Paris."),
        req(" ### Step 1. Recall the capitals of Europe"),
    ];
    let bound = if cfg!(target_arch = "x86_64") {
        0.0
    } else {
        Q_MAX_ABS
    };
    for model in [SMOLLM2, QWEN05] {
        let mut e = Engine::new();
        let id = add(&mut e, &dir, model);
        let alone = e.score(id, std::slice::from_ref(&short)).unwrap().remove(0);
        // The context is now in the prefix cache: this call computes only the continuations.
        let batch = [
            others[0].clone(),
            long.clone(),
            others[1].clone(),
            short.clone(),
            others[2].clone(),
        ];
        let outs = e.score(id, &batch).unwrap();
        assert!(
            outs[3].reused_tokens > 0,
            "{model}: the context was not reused"
        );
        let mut fresh = Engine::new();
        let fid = add(&mut fresh, &dir, model);
        let longer = fresh
            .score(fid, std::slice::from_ref(&long))
            .unwrap()
            .remove(0);
        let n = alone.logprobs.len();
        assert_eq!(
            &longer.token_ids[..n],
            &alone.token_ids[..],
            "{model}: tokens"
        );
        let views = [
            ("longer continuation", &longer.logprobs[..n]),
            ("in a batch, cached context", &outs[3].logprobs[..]),
            ("longer, in a batch, cached context", &outs[1].logprobs[..n]),
        ];
        for (what, lp) in views {
            let d = lp
                .iter()
                .zip(&alone.logprobs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("{model}: {what}: max |Δ log p| {d:.3e} over {n} tokens");
            assert!(
                d <= bound,
                "{model}: {what} moves a log-prob by {d} > {bound}"
            );
        }
    }
}

#[test]
fn chat_template_with_prefill_generates_on_qwen() {
    let Some(dir) = need("chat_template_with_prefill_generates_on_qwen", &[QWEN05]) else {
        return;
    };
    let mut e = Engine::new();
    let id = add(&mut e, &dir, QWEN05);
    let prefill = "The answer is";
    let prompt = e
        .model(id)
        .unwrap()
        .render(None, "What is 2 + 3? Answer with one number.", prefill)
        .unwrap();
    eprintln!("rendered: {prompt:?}");
    assert!(
        prompt.contains("<|im_start|>user\nWhat is 2 + 3?"),
        "{prompt:?}"
    );
    assert!(
        prompt.ends_with(&format!("<|im_start|>assistant\n{prefill}")),
        "{prompt:?}"
    );
    // The template's markers are single special tokens.
    let tokens = e.model(id).unwrap().encode(&prompt).unwrap();
    let im_start = e
        .model(id)
        .unwrap()
        .loaded()
        .tokenizer
        .token_to_id("<|im_start|>");
    assert!(im_start.is_some() && tokens.contains(&im_start.unwrap()));
    let out = e.generate(id, &[greedy(&prompt, 8)]).unwrap().remove(0);
    eprintln!("Qwen chat continuation: {:?} ({:?})", out.text, out.finish);
    assert!(!out.text.trim().is_empty(), "{out:?}");
    assert!(out.completion_tokens > 0);
}
