//! Tokenizers of the real test models (fetched by `scripts/fetch-models.sh`), checked against
//! the exact token ids of docs/test-models.md §6.1.
//!
//! Assets are looked up in `$CORD_MODELS`, else `~/.cache/cord/models`; when they are absent
//! each test prints a `SKIPPED:` line on stderr and passes.
//!
//! Run: `cargo test -p cord-models --test real_tokenizers -- --nocapture`

#[path = "common/assets.rs"]
mod assets;

use std::collections::HashMap;
use std::path::Path;

use assets::{GEMMA3, QWEN05, QWEN15, SMOLLM2, require};
use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use cord_models::gguf_tokenizer::{GgufTokenizerError, tokenizer_from_gguf};
use tokenizers::Tokenizer;

fn read_gguf(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn from_gguf(path: &Path) -> Tokenizer {
    tokenizer_from_gguf(&read_gguf(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn from_json(path: &Path) -> Tokenizer {
    Tokenizer::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(tok: &Tokenizer, text: &str, specials: bool) -> Vec<u32> {
    tok.encode(text, specials)
        .unwrap_or_else(|e| panic!("encode {text:?}: {e}"))
        .get_ids()
        .to_vec()
}

fn decode(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false)
        .unwrap_or_else(|e| panic!("decode {ids:?}: {e}"))
}

/// Encodes every `(text, ids)` pair without special tokens, checks the ids and that
/// decoding gives the text back.
fn check_table(name: &str, tok: &Tokenizer, table: &[(&str, &[u32])]) {
    for (text, want) in table {
        let got = ids(tok, text, false);
        assert_eq!(&got, want, "{name}: ids of {text:?}");
        assert_eq!(&decode(tok, &got), text, "{name}: round trip of {text:?}");
    }
}

/// The texts of §6.1 plus GSM8K questions, chat markers, digits, code, and non-ASCII text.
fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "The capital of France is",
        " Paris",
        " Berlin",
        "### Step",
        "</think>",
        " </think> The final answer is ",
        "18.",
        "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "Digits: 0 1 22 333 4444 55555 3.14159 1,234,567 -42 1e-9",
        "fn main() {\n\tlet x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
        "Café naïve résumé — “quotes” … 東京は日本の首都です。 😀👍🏽",
        "Cafe\u{301} (decomposed e + combining acute)",
        "  leading and trailing spaces   \n\n\nand newlines\r\n",
        "\\boxed{42} and $\\frac{1}{2}$ and x^2 + y^2 = z^2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let jsonl = std::fs::read_to_string(assets::gsm8k_jsonl()).expect("data/gsm8k.jsonl");
    for line in jsonl.lines().take(5) {
        let v: serde_json::Value = serde_json::from_str(line).expect("gsm8k.jsonl line");
        let q = v["question"].as_str().expect("question");
        let a = v["answer"].as_str().expect("answer");
        texts.push(format!("{q}\nThe answer is {a}."));
    }
    texts
}

fn assert_same_ids(name: &str, a: &Tokenizer, b: &Tokenizer, texts: &[String]) {
    for text in texts {
        for specials in [false, true] {
            assert_eq!(
                ids(a, text, specials),
                ids(b, text, specials),
                "{name}: ids differ on {text:?} (add_special_tokens = {specials})"
            );
        }
    }
}

// ---- SmolLM2-135M: tokenizer built from its GGUF -----------------------------------------

#[test]
fn smollm2_gguf_tokenizer_matches_reference_ids() {
    let Some(dir) = require("smollm2", &[&format!("{SMOLLM2}/model.gguf")]) else {
        return;
    };
    let tok = from_gguf(&dir.join(SMOLLM2).join("model.gguf"));
    check_table(
        "smollm2",
        &tok,
        &[
            ("The capital of France is", &[504, 3575, 282, 4649, 314]),
            (" Paris", &[7042]),
            (" Berlin", &[11452]),
            ("### Step", &[3757, 5970]),
            ("</think>", &[9617, 17400, 46]),
            (
                " </think> The final answer is ",
                &[22577, 17400, 46, 378, 3403, 2988, 314, 216],
            ),
            ("18.", &[33, 40, 30]),
            (
                "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n",
                &[
                    1, 4093, 198, 1780, 314, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 47, 2,
                    198,
                ],
            ),
        ],
    );
    // add_bos_token = false: no BOS even with special tokens on.
    assert_eq!(
        ids(&tok, "The capital of France is", true),
        [504, 3575, 282, 4649, 314]
    );
    assert_eq!(tok.get_vocab_size(true), 49_152);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<empty_output>"), Some(16));
    for text in sample_texts() {
        assert_eq!(
            decode(&tok, &ids(&tok, &text, false)),
            text,
            "round trip {text:?}"
        );
    }
}

#[test]
fn smollm2_fetched_tokenizer_json_matches_gguf_build() {
    let gguf = format!("{SMOLLM2}/model.gguf");
    let json = format!("{SMOLLM2}/tokenizer.json");
    let Some(dir) = require("smollm2 tokenizer.json", &[&gguf, &json]) else {
        return;
    };
    let built = from_gguf(&dir.join(&gguf));
    let saved = from_json(&dir.join(&json));
    assert_same_ids("smollm2 json vs gguf", &saved, &built, &sample_texts());
}

// ---- Qwen2.5-Coder: npm Qwen3 tokenizer.json minus the Qwen3-only added tokens -----------

/// §6.1 Qwen column, for the rows that do not involve `<think>` tokens.
const QWEN_TABLE: &[(&str, &[u32])] = &[
    ("The capital of France is", &[785, 6722, 315, 9625, 374]),
    (" Paris", &[12095]),
    (" Berlin", &[19846]),
    ("### Step", &[14374, 14822]),
    ("18.", &[16, 23, 13]),
];

#[test]
fn qwen_tokenizer_json_matches_reference_ids() {
    let Some(dir) = require(
        "qwen 0.5b tokenizer",
        &[&format!("{QWEN05}/tokenizer.json")],
    ) else {
        return;
    };
    let tok = from_json(&dir.join(QWEN05).join("tokenizer.json"));
    check_table("qwen", &tok, QWEN_TABLE);
    // The four Qwen3-only added tokens were stripped: `</think>` is ordinary text for
    // Qwen2.5 (with the unstripped npm file it would be the single untrained id 151668).
    check_table(
        "qwen stripped",
        &tok,
        &[
            ("</think>", &[522, 26865, 29]),
            (
                " </think> The final answer is ",
                &[690, 26865, 29, 576, 1590, 4226, 374, 220],
            ),
        ],
    );
    for t in ["<tool_response>", "</tool_response>", "<think>", "</think>"] {
        assert_eq!(
            tok.token_to_id(t),
            None,
            "{t} must not be a token for Qwen2.5"
        );
    }
    assert_eq!(tok.get_vocab_size(true), 151_665);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151_643));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151_645));
    // add_bos_token = false.
    assert_eq!(
        ids(&tok, "The capital of France is", true),
        [785, 6722, 315, 9625, 374]
    );
    for text in sample_texts() {
        let got = ids(&tok, &text, false);
        assert!(got.iter().all(|&i| i < 151_665), "{text:?} gave {got:?}");
        // The NFC normaliser composes decomposed input, so that one text cannot round-trip.
        if !text.contains('\u{301}') {
            assert_eq!(decode(&tok, &got), text, "round trip {text:?}");
        }
    }
}

#[test]
fn qwen_gguf_tokenizer_matches_tokenizer_json() {
    let gguf = format!("{QWEN05}/model.gguf");
    let json = format!("{QWEN05}/tokenizer.json");
    let Some(dir) = require("qwen gguf vs json", &[&gguf, &json]) else {
        return;
    };
    let built = from_gguf(&dir.join(&gguf));
    let npm = from_json(&dir.join(&json));
    assert_same_ids("qwen gguf vs npm", &built, &npm, &sample_texts());
    check_table("qwen gguf", &built, QWEN_TABLE);
}

#[test]
fn qwen_05b_and_15b_tokenize_identically() {
    let files = [
        format!("{QWEN05}/model.gguf"),
        format!("{QWEN05}/tokenizer.json"),
        format!("{QWEN15}/model.gguf"),
        format!("{QWEN15}/tokenizer.json"),
    ];
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let Some(dir) = require("qwen 0.5b vs 1.5b", &refs) else {
        return;
    };
    let (small, large) = (
        read_gguf(&dir.join(&files[0])),
        read_gguf(&dir.join(&files[2])),
    );
    // The vocabulary metadata is identical, not merely equivalent.
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        let (a, b) = (&small.metadata[key], &large.metadata[key]);
        assert!(
            same_value(a, b),
            "{key} differs between Qwen2.5 0.5B and 1.5B"
        );
    }
    let texts = sample_texts();
    let built_small = tokenizer_from_gguf(&small).expect("0.5B tokenizer");
    let built_large = tokenizer_from_gguf(&large).expect("1.5B tokenizer");
    assert_same_ids(
        "qwen 0.5b vs 1.5b (gguf)",
        &built_small,
        &built_large,
        &texts,
    );
    let json_small = from_json(&dir.join(&files[1]));
    let json_large = from_json(&dir.join(&files[3]));
    assert_same_ids("qwen 0.5b vs 1.5b (json)", &json_small, &json_large, &texts);
    assert_same_ids("qwen 1.5b gguf vs json", &built_large, &json_large, &texts);
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => match (a.to_u64(), b.to_u64()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a.value_type() == b.value_type() && format!("{a:?}") == format!("{b:?}"),
        },
    }
}

// ---- Gemma 3: npm tokenizer.json, and the SentencePiece-BPE rebuild from the GGUF ---------

const GEMMA_TABLE: &[(&str, &[u32])] = &[
    ("The capital of France is", &[818, 5279, 529, 7001, 563]),
    (" Paris", &[9079]),
    (" Berlin", &[15687]),
    ("### Step", &[10354, 14938]),
    ("</think>", &[954, 36345, 236813]),
    (
        " </think> The final answer is ",
        &[1454, 36345, 236813, 669, 1626, 3890, 563, 236743],
    ),
    ("18.", &[236770, 236828, 236761]),
];

#[test]
fn gemma3_tokenizer_json_matches_reference_ids() {
    let Some(dir) = require("gemma3 tokenizer", &[&format!("{GEMMA3}/tokenizer.json")]) else {
        return;
    };
    let tok = from_json(&dir.join(GEMMA3).join("tokenizer.json"));
    check_table("gemma3", &tok, GEMMA_TABLE);
    // Gemma needs <bos> = 2, added by the post-processor.
    assert_eq!(
        ids(&tok, "The capital of France is", true),
        [2, 818, 5279, 529, 7001, 563]
    );
    assert_eq!(tok.token_to_id("<eos>"), Some(1));
    assert_eq!(tok.token_to_id("<start_of_turn>"), Some(105));
    assert_eq!(tok.token_to_id("<end_of_turn>"), Some(106));
    for text in sample_texts() {
        assert_eq!(
            decode(&tok, &ids(&tok, &text, false)),
            text,
            "round trip {text:?}"
        );
    }
}

#[test]
fn gemma3_gguf_tokenizer_matches_tokenizer_json() {
    let gguf = format!("{GEMMA3}/model.gguf");
    let json = format!("{GEMMA3}/tokenizer.json");
    let Some(dir) = require("gemma3 gguf vs json", &[&gguf, &json]) else {
        return;
    };
    let built = from_gguf(&dir.join(&gguf));
    let npm = from_json(&dir.join(&json));
    check_table("gemma3 gguf", &built, GEMMA_TABLE);
    assert_same_ids("gemma3 gguf vs npm", &built, &npm, &sample_texts());
    let mut texts = sample_texts();
    texts.push("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n".into());
    for text in &texts {
        assert_eq!(
            decode(&built, &ids(&built, text, false)),
            *text,
            "round trip {text:?}"
        );
    }
}

// ---- Bad input: errors, not panics (no assets needed) -------------------------------------

fn content(metadata: Vec<(&str, Value)>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn strings(xs: &[&str]) -> Value {
    Value::Array(xs.iter().map(|s| Value::String(s.to_string())).collect())
}

#[test]
fn bad_metadata_gives_errors() {
    let err = tokenizer_from_gguf(&content(vec![])).unwrap_err();
    assert!(
        matches!(err, GgufTokenizerError::MissingKey("tokenizer.ggml.model")),
        "{err}"
    );

    let err = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("rwkv".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ]))
    .unwrap_err();
    assert!(
        matches!(err, GgufTokenizerError::UnsupportedModel(_)),
        "{err}"
    );

    let err = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["ab"])),
    ]))
    .unwrap_err();
    assert!(
        matches!(err, GgufTokenizerError::InvalidMerge { index: 0, .. }),
        "{err}"
    );

    let err = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::U32(3)),
    ]))
    .unwrap_err();
    assert!(matches!(err, GgufTokenizerError::WrongType { .. }), "{err}");

    let err = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&["<unk>", "a"])),
        ("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)])),
    ]))
    .unwrap_err();
    assert!(
        matches!(err, GgufTokenizerError::LengthMismatch { .. }),
        "{err}"
    );

    let err = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.ggml.bos_token_id", Value::U32(7)),
    ]))
    .unwrap_err();
    assert!(
        matches!(err, GgufTokenizerError::TokenOutOfRange { id: 7, .. }),
        "{err}"
    );
}

/// A tiny hand-made byte-level vocabulary exercises the smollm pre-tokenizer (digits split
/// one by one) and control tokens without any download.
#[test]
fn tiny_gpt2_vocab_builds_and_splits_digits() {
    let mut tokens: Vec<String> = ["<|end|>", "Ġ", "ab", "Ġab", "12"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokens.extend(["a", "b", "1", "2", "3"].iter().map(|s| s.to_string()));
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut types = vec![Value::I32(1); tokens.len()];
    types[0] = Value::I32(3);
    let tok = tokenizer_from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&refs)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "1 2"])),
    ]))
    .expect("tiny tokenizer");
    // "12" is a merge, but the Digits pre-tokenizer isolates every digit first.
    assert_eq!(ids(&tok, "ab ab123<|end|>", false), [2, 3, 7, 8, 9, 0]);
    assert_eq!(decode(&tok, &[2, 3, 7, 8, 9, 0]), "ab ab123<|end|>");
}
