//! The real test models (fetched by `scripts/fetch-models.sh`) through `cord_models::load` and
//! `Model::forward`: exact token ids and greedy continuations with the KV cache (log-probs and
//! perplexities against an f32 oracle are in real_reference.rs).
//!
//! Assets are looked up in `$CORD_MODELS`, else `~/.cache/cord/models`; when they are absent each
//! test prints a `SKIPPED:` line on stderr and passes.
//!
//! Run: `cargo test -p cord-models --test real_models -- --nocapture`

#[path = "common/assets.rs"]
mod assets;

use std::path::Path;

use assets::{GEMMA3, QWEN05, SMOLLM2, require};
use cord_kv::KvCache;
use cord_models::{LoadOptions, LoadedModel, LogitsMode, SeqInput};

const FRANCE: &str = "The capital of France is";
const GERMANY: &str = "The capital of France is Paris. The capital of Germany is";
const BLOCK: usize = 16;

fn files(model: &str) -> [String; 2] {
    [
        format!("{model}/model.gguf"),
        format!("{model}/tokenizer.json"),
    ]
}

fn need(test: &str, model: &str, extra: &[&str]) -> Option<std::path::PathBuf> {
    let f = files(model);
    let mut all: Vec<&str> = f.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    require(test, &all)
}

fn load(dir: &Path, model: &str) -> LoadedModel {
    let path = dir.join(model).join("model.gguf");
    cord_models::load(path.to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn encode(m: &LoadedModel, text: &str, bos: Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(m.tokenizer.encode(text, false).unwrap().get_ids());
    ids
}

fn fresh_kv(m: &LoadedModel, tokens: usize) -> KvCache {
    KvCache::new(m.model.kv_config(tokens.div_ceil(BLOCK) + 1, BLOCK)).unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap() as u32
}

fn log_softmax_row(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + row
            .iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Greedy decoding with the KV cache: `n` new tokens, and the log-prob of the first one.
fn greedy(m: &LoadedModel, prompt: &[u32], n: usize) -> (Vec<u32>, f32) {
    let mut kv = fresh_kv(m, prompt.len() + n);
    let seq = kv.new_sequence();
    let mut out = Vec::new();
    let mut first_lp = 0.0;
    let mut feed = prompt.to_vec();
    for step in 0..n {
        let logits = m
            .model
            .forward(&[SeqInput::new(seq, &feed, LogitsMode::Last)], &mut kv)
            .unwrap();
        let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let tok = argmax(&row);
        if step == 0 {
            first_lp = log_softmax_row(&row)[tok as usize];
        }
        out.push(tok);
        feed = vec![tok];
    }
    (out, first_lp)
}

fn decode(m: &LoadedModel, ids: &[u32]) -> String {
    m.tokenizer.decode(ids, false).unwrap()
}

/// Checks the greedy continuation of `prompt`: first token id, and the text's start.
fn check_continuation(
    m: &LoadedModel,
    name: &str,
    prompt: &[u32],
    n: usize,
    first_id: u32,
    starts: &str,
) -> f32 {
    let (ids, lp) = greedy(m, prompt, n);
    let text = decode(m, &ids);
    eprintln!("{name}: greedy {text:?} (ids {ids:?}), first-token log-prob {lp:.4}");
    assert_eq!(ids[0], first_id, "{name}: first greedy token of {text:?}");
    assert!(
        text.starts_with(starts),
        "{name}: greedy continuation {text:?} does not start with {starts:?}"
    );
    lp
}

#[test]
fn smollm2_135m_continuations() {
    let Some(dir) = need("smollm2_135m_continuations", SMOLLM2, &[]) else {
        return;
    };
    let m = load(&dir, SMOLLM2);
    let france = encode(&m, FRANCE, None);
    assert_eq!(france, [504, 3575, 282, 4649, 314]);
    check_continuation(&m, "SmolLM2", &france, 1, 7042, " Paris");
    check_continuation(
        &m,
        "SmolLM2",
        &encode(&m, GERMANY, None),
        5,
        11452,
        " Berlin. The capital of",
    );
}

#[test]
fn qwen25_coder_05b_continuations() {
    let Some(dir) = need("qwen25_coder_05b_continuations", QWEN05, &[]) else {
        return;
    };
    let m = load(&dir, QWEN05);
    let france = encode(&m, FRANCE, None);
    assert_eq!(france, [785, 6722, 315, 9625, 374]);
    check_continuation(&m, "Qwen2.5-Coder-0.5B", &france, 1, 12095, " Paris");
    check_continuation(
        &m,
        "Qwen2.5-Coder-0.5B",
        &encode(&m, GERMANY, None),
        5,
        19846,
        " Berlin. The capital of",
    );
}

#[test]
fn gemma3_270m_continues_with_berlin() {
    let Some(dir) = need("gemma3_270m_continues_with_berlin", GEMMA3, &[]) else {
        return;
    };
    let m = load(&dir, GEMMA3);
    assert_eq!(m.bos_token.as_deref(), Some("<bos>"));
    assert_eq!(m.tokenizer.token_to_id("<bos>"), Some(2));
    let prompt = encode(&m, GERMANY, Some(2));
    assert_eq!(prompt[..6], [2, 818, 5279, 529, 7001, 563]);
    check_continuation(
        &m,
        "Gemma-3-270M",
        &prompt,
        5,
        15687,
        " Berlin. The capital of",
    );
}
