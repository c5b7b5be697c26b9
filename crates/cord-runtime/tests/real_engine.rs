//! The engine on the real test models (fetched by `scripts/fetch-models.sh`): one text prompt
//! handed to three models with three tokenizers, scoring against the log-probs of
//! docs/test-models.md §6.2, and a chat-templated prompt with a raw assistant prefill.
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
use cord_runtime::engine::{Engine, Finish, GenRequest, ModelId, ModelOptions, ScoreRequest};

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

fn opts() -> ModelOptions {
    ModelOptions {
        // A few thousand tokens is plenty here; the default (1 GiB) would only cost RAM.
        kv_memory: 64 << 20,
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

#[test]
fn score_of_paris_matches_the_reference_log_probs() {
    let Some(dir) = need(
        "score_of_paris_matches_the_reference_log_probs",
        &[SMOLLM2, QWEN05],
    ) else {
        return;
    };
    let mut e = Engine::new();
    let req = ScoreRequest {
        context: "The capital of France is".into(),
        continuation: " Paris".into(),
    };
    for (model, paris, want) in [(SMOLLM2, 7042u32, -0.26f32), (QWEN05, 12095, -0.10)] {
        let id = add(&mut e, &dir, model);
        let out = e.score(id, std::slice::from_ref(&req)).unwrap().remove(0);
        eprintln!(
            "{model}: log p(\" Paris\" | \"The capital of France is\") = {:.4}",
            out.logprobs[0]
        );
        assert_eq!(out.token_ids, [paris], "{model}");
        assert_eq!(out.context_tokens, 5, "{model}");
        assert!(
            (out.logprobs[0] - want).abs() <= 0.05,
            "{model}: log-prob {} vs {want}",
            out.logprobs[0]
        );
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
        .loaded
        .tokenizer
        .token_to_id("<|im_start|>");
    assert!(im_start.is_some() && tokens.contains(&im_start.unwrap()));
    let out = e.generate(id, &[greedy(&prompt, 8)]).unwrap().remove(0);
    eprintln!("Qwen chat continuation: {:?} ({:?})", out.text, out.finish);
    assert!(!out.text.trim().is_empty(), "{out:?}");
    assert!(out.completion_tokens > 0);
}
