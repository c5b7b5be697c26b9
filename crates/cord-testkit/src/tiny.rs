//! Tiny generated model directories for end-to-end tests of the real engine backend.
//!
//! [`write_model`] writes a complete local checkpoint — `config.json` (real HF keys),
//! `model.safetensors` (random weights under HF names), `tokenizer.json`, `tokenizer_config.json`
//! (chat template, BOS/EOS strings) and `generation_config.json` — that `cord_models::load`
//! reads like a downloaded model. Two flavours differ in architecture, vocabulary, special
//! tokens and chat template, so that a pool of both exercises text as the currency between
//! models with different tokenizers:
//!
//! - [`Tiny::ByteLlama`]: llama, untied `lm_head`, a byte-level BPE with **no merges** (one token
//!   per byte), the special tokens first (`<s>` = 0, `</s>` = 1, `<|im_start|>` = 2,
//!   `<|im_end|>` = 3), `add_bos_token = true`, a plain ChatML template.
//! - [`Tiny::BpeQwen2`]: qwen2 (q/k/v bias), tied embeddings, a byte-level BPE **with merges**
//!   (word-ish tokens such as `ĠStep`, `###`, `Ġanswer`), special tokens after the merges,
//!   `<think>` / `</think>` as non-special added tokens (so the model can emit `</think>` as one
//!   token, as Qwen-family reasoners do), `vocab_size` padded above the tokenizer's size, and a
//!   QwQ-style template that supplies a default system prompt and opens `<think>\n` itself.
//!
//! Random weights produce gibberish; the tests that use these models check mechanics only.
//! Everything here is deterministic in `seed`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use cord_models::{ModelConfig, random_weights};
use serde_json::{Value, json};
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Which tiny model to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiny {
    /// llama + one token per byte.
    ByteLlama,
    /// qwen2 + byte-level BPE with merges and `<think>` tokens.
    BpeQwen2,
}

/// ChatML; the model's own default system prompt is none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// QwQ-like: a default system prompt when the conversation has none, and the generation prompt
/// already opens the reasoning with `<think>\n`.
pub const QWQ_TEMPLATE: &str = "{% if messages[0].role != 'system' %}<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

/// Words that get merged into single tokens in the [`Tiny::BpeQwen2`] vocabulary (in byte-level
/// form a leading space is `Ġ`, a newline `Ċ`).
const MERGED_WORDS: &[&str] = &[
    "###",
    " Step",
    " step",
    " the",
    " The",
    " final",
    " answer",
    " is",
    " and",
    " of",
    " to",
    " we",
    " So",
    " Wait",
    " think",
    "think",
    "ĊĊ",
    " +",
    " =",
    " 12",
    " 42",
    "00",
    " What",
    " Question",
];

/// GPT-2's byte → printable char map (the byte-level alphabet), in byte order.
pub fn byte_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut n = 0u32;
    (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                n += 1;
                255 + n
            };
            char::from_u32(c).expect("valid char")
        })
        .collect()
}

fn to_byte_level(word: &str) -> String {
    let alpha = byte_alphabet();
    word.bytes().map(|b| alpha[b as usize]).collect()
}

/// Builds the tokenizer of a flavour.
pub fn tokenizer(kind: Tiny) -> Tokenizer {
    let alpha = byte_alphabet();
    let mut vocab = Vocab::new();
    let mut merges: Merges = Vec::new();
    let (specials, plain_added): (Vec<&str>, Vec<&str>) = match kind {
        Tiny::ByteLlama => {
            // Special tokens first, then the 256 bytes; no merges.
            let specials = vec!["<s>", "</s>", "<|im_start|>", "<|im_end|>"];
            for s in &specials {
                let id = vocab.len() as u32;
                vocab.insert(s.to_string(), id);
            }
            for c in &alpha {
                let id = vocab.len() as u32;
                vocab.insert(c.to_string(), id);
            }
            (specials, vec![])
        }
        Tiny::BpeQwen2 => {
            // The bytes first, then merged words (left-to-right merges), then added tokens.
            for c in &alpha {
                let id = vocab.len() as u32;
                vocab.insert(c.to_string(), id);
            }
            for w in MERGED_WORDS {
                let chars: Vec<char> = if w.contains('Ċ') {
                    w.chars().collect()
                } else {
                    to_byte_level(w).chars().collect()
                };
                let mut left = chars[0].to_string();
                for c in &chars[1..] {
                    let right = c.to_string();
                    let merged = format!("{left}{right}");
                    if !vocab.contains_key(&merged) {
                        merges.push((left.clone(), right));
                        let id = vocab.len() as u32;
                        vocab.insert(merged.clone(), id);
                    }
                    left = merged;
                }
            }
            (
                vec!["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                vec!["<think>", "</think>"],
            )
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .expect("valid BPE");
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true)))
        .expect("special tokens");
    if !plain_added.is_empty() {
        tok.add_tokens(plain_added.iter().map(|s| AddedToken::from(*s, false)))
            .expect("added tokens");
    }
    tok
}

/// Token id of `s` in `tok` (panics if absent).
pub fn id(tok: &Tokenizer, s: &str) -> u32 {
    tok.token_to_id(s)
        .unwrap_or_else(|| panic!("token {s:?} missing"))
}

/// The HF `config.json` of a flavour for its tokenizer `tok`.
pub fn config_json(kind: Tiny, tok: &Tokenizer) -> Value {
    let n_tokens = tok.get_vocab_size(true);
    match kind {
        Tiny::ByteLlama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "vocab_size": n_tokens,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": id(tok, "<s>"),
            "eos_token_id": id(tok, "</s>"),
            "torch_dtype": "float32"
        }),
        Tiny::BpeQwen2 => json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": 64,
            "intermediate_size": 128,
            // Padded like real checkpoints: ids past the tokenizer decode to nothing.
            "vocab_size": n_tokens.next_multiple_of(32) + 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 4096,
            "sliding_window": 4096,
            "max_window_layers": 2,
            "use_sliding_window": false,
            "tie_word_embeddings": true,
            "hidden_act": "silu",
            "bos_token_id": id(tok, "<|endoftext|>"),
            "eos_token_id": id(tok, "<|endoftext|>"),
            "torch_dtype": "float32"
        }),
    }
}

/// `tokenizer_config.json` of a flavour.
pub fn tokenizer_config_json(kind: Tiny) -> Value {
    match kind {
        Tiny::ByteLlama => json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "bos_token": "<s>",
            "eos_token": "<|im_end|>",
            "unk_token": null,
            "chat_template": CHATML_TEMPLATE,
            "model_max_length": 4096,
            "tokenizer_class": "PreTrainedTokenizerFast"
        }),
        Tiny::BpeQwen2 => json!({
            "add_bos_token": false,
            "add_prefix_space": false,
            "bos_token": null,
            "eos_token": {"content": "<|im_end|>", "lstrip": false, "normalized": false,
                          "rstrip": false, "single_word": false, "special": true},
            "pad_token": "<|endoftext|>",
            "chat_template": QWQ_TEMPLATE,
            "model_max_length": 4096,
            "tokenizer_class": "Qwen2Tokenizer"
        }),
    }
}

/// `generation_config.json`: every end-of-turn id.
pub fn generation_config_json(kind: Tiny, tok: &Tokenizer) -> Value {
    let eos: Vec<u32> = match kind {
        Tiny::ByteLlama => vec![id(tok, "<|im_end|>"), id(tok, "</s>")],
        Tiny::BpeQwen2 => vec![id(tok, "<|im_end|>"), id(tok, "<|endoftext|>")],
    };
    json!({"eos_token_id": eos, "do_sample": true, "temperature": 0.6, "top_p": 0.95})
}

/// Writes `v` as pretty JSON to `path`.
pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("json")).expect("write json");
}

/// Writes a complete tiny checkpoint of `kind` into `dir` (created if needed) with random
/// weights from `seed`, and returns `dir`.
pub fn write_model(dir: &Path, kind: Tiny, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create model dir");
    let tok = tokenizer(kind);
    tok.save(dir.join("tokenizer.json"), false)
        .expect("save tokenizer");
    let config = config_json(kind, &tok);
    write_json(&dir.join("config.json"), &config);
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(kind),
    );
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(kind, &tok),
    );
    let cfg = ModelConfig::from_hf_json(&config, "tiny config.json").expect("tiny config");
    let weights: HashMap<String, candle_core::Tensor> =
        random_weights(&cfg, DType::F32, &Device::Cpu, seed).expect("random weights");
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))
        .expect("save safetensors");
    dir.to_path_buf()
}

/// Teacher names of the tiny pool written by [`pool_tables`]: [`Tiny::ByteLlama`], [`Tiny::BpeQwen2`].
pub const POOL_TEACHERS: [&str; 2] = ["byte-llama", "bpe-qwen2"];

/// The two tiny pool models (byte-level llama, seed 11; BPE qwen2, seed 22) written under
/// `dir` as `tiny-llama/` and `tiny-qwen2/`: (llama, qwen2). Every test fixture that needs a
/// two-teacher pool uses these.
pub fn write_pool_models(dir: &Path) -> (PathBuf, PathBuf) {
    (
        write_model(&dir.join("tiny-llama"), Tiny::ByteLlama, 11),
        write_model(&dir.join("tiny-qwen2"), Tiny::BpeQwen2, 22),
    )
}

/// The `[scorer]` table (body `scorer`), the two `[[teacher]]` tables and the `[filter]` table
/// of a pool over both tiny models on the CPU; the caller writes the `[search]` table before it.
pub fn pool_tables(llama: &Path, qwen2: &Path, scorer: &str) -> String {
    let q = |p: &Path| json!(p.display().to_string()).to_string();
    format!(
        r#"
[scorer]
{scorer}

[[teacher]]
name = "{t0}"
model = {m0}
device = "cpu"
dtype = "f32"
temperature = 0.8

[[teacher]]
name = "{t1}"
model = {m1}
device = "cpu"
dtype = "f32"
temperature = 0.6
top_k = 64

# The random tiny models never end a step by themselves: every step runs into the small step
# caps of the test pools, mid-paragraph, and `reject_cut` would reject them all.
[filter]
reject_cut = false
"#,
        t0 = POOL_TEACHERS[0],
        t1 = POOL_TEACHERS[1],
        m0 = q(llama),
        m1 = q(qwen2),
    )
}
