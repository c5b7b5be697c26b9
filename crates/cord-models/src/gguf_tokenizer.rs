//! Build a `tokenizers::Tokenizer` from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! Some registry-distributed GGUF models (SmolLM2-135M, see `docs/test-models.md` §5) ship no
//! `tokenizer.json`; this module reconstructs an equivalent one from the vocabulary embedded
//! in the GGUF, following llama.cpp's interpretation of the metadata:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` + `merges`. The
//!   pre-tokenizer follows `tokenizer.ggml.pre`:
//!   - `smollm`: `Sequence[Digits(individual), ByteLevel(add_prefix_space=false, use_regex=true)]`;
//!   - `qwen2`: NFC normalizer, the Qwen2 split regex, then `ByteLevel(use_regex=false)`;
//!   - anything else: `ByteLevel(add_prefix_space=false, use_regex=true)` (the GPT-2 regex).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE with byte fallback (Gemma 3).
//!   Merges are derived from the token scores: for every normal token, every split into two
//!   vocabulary pieces, ordered by the merged token's score (descending). Normalizer
//!   `Replace(" ", "▁")`, decoder `Replace("▁", " ") + ByteFallback + Fuse`.
//!
//! In both cases control tokens (type 3) become special added tokens and user-defined tokens
//! (type 4) normal added tokens; a BOS post-processor is added when
//! `tokenizer.ggml.add_bos_token` is true (the default for `llama`, not for `gpt2`).

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The pre-tokenizer regex of Qwen2 (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`), as in the
/// model's own `tokenizer.json`.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Errors from [`tokenizer_from_gguf`].
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// A required metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(&'static str),
    /// A metadata value has an unexpected type.
    #[error("GGUF metadata key `{key}` is not {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    /// `tokenizer.ggml.model` names a model this module cannot build.
    #[error("unsupported tokenizer.ggml.model `{0}` (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// Two parallel metadata arrays differ in length.
    #[error("GGUF metadata `{key}` has {got} entries, expected {expected}")]
    LengthMismatch {
        key: &'static str,
        got: usize,
        expected: usize,
    },
    /// A merge rule is not of the form `"left right"`.
    #[error("GGUF merge #{index} `{merge}` is not two space-separated pieces")]
    InvalidMerge { index: usize, merge: String },
    /// A token id named by the metadata (e.g. BOS) is out of range.
    #[error("GGUF metadata `{key}` = {id} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange {
        key: &'static str,
        id: u32,
        vocab: usize,
    },
    /// The vocabulary is empty.
    #[error("GGUF tokenizer vocabulary is empty")]
    EmptyVocab,
    /// The `tokenizers` crate rejected the construction.
    #[error("building the tokenizer failed: {0}")]
    Tokenizers(String),
}

fn tk_err(e: impl std::fmt::Display) -> GgufTokenizerError {
    GgufTokenizerError::Tokenizers(e.to_string())
}

fn get<'a>(content: &'a Content, key: &'static str) -> Result<&'a Value, GgufTokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(GgufTokenizerError::MissingKey(key))
}

fn get_str<'a>(content: &'a Content, key: &'static str) -> Result<&'a str, GgufTokenizerError> {
    match get(content, key)? {
        Value::String(s) => Ok(s),
        _ => Err(GgufTokenizerError::WrongType {
            key,
            expected: "a string",
        }),
    }
}

fn get_str_array<'a>(
    content: &'a Content,
    key: &'static str,
) -> Result<Vec<&'a str>, GgufTokenizerError> {
    let wrong = GgufTokenizerError::WrongType {
        key,
        expected: "an array of strings",
    };
    let Value::Array(items) = get(content, key)? else {
        return Err(wrong);
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(GgufTokenizerError::WrongType {
                key,
                expected: "an array of strings",
            }),
        })
        .collect()
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn get_int_array(content: &Content, key: &'static str) -> Result<Vec<i64>, GgufTokenizerError> {
    let wrong = || GgufTokenizerError::WrongType {
        key,
        expected: "an array of integers",
    };
    let Value::Array(items) = get(content, key)? else {
        return Err(wrong());
    };
    items.iter().map(|v| as_i64(v).ok_or_else(wrong)).collect()
}

fn get_f32_array(content: &Content, key: &'static str) -> Result<Vec<f32>, GgufTokenizerError> {
    let wrong = || GgufTokenizerError::WrongType {
        key,
        expected: "an array of floats",
    };
    let Value::Array(items) = get(content, key)? else {
        return Err(wrong());
    };
    items
        .iter()
        .map(|v| match v {
            Value::F32(x) => Ok(*x),
            // Scores are f32 in practice; f64 is accepted and narrowed.
            Value::F64(x) => Ok(*x as f32),
            _ => Err(wrong()),
        })
        .collect()
}

fn get_opt_bool(content: &Content, key: &'static str) -> Result<Option<bool>, GgufTokenizerError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(GgufTokenizerError::WrongType {
            key,
            expected: "a bool",
        }),
    }
}

fn get_opt_token_id(
    content: &Content,
    key: &'static str,
    vocab: usize,
) -> Result<Option<u32>, GgufTokenizerError> {
    let Some(v) = content.metadata.get(key) else {
        return Ok(None);
    };
    let id =
        as_i64(v)
            .and_then(|x| u32::try_from(x).ok())
            .ok_or(GgufTokenizerError::WrongType {
                key,
                expected: "a token id",
            })?;
    if id as usize >= vocab {
        return Err(GgufTokenizerError::TokenOutOfRange { key, id, vocab });
    }
    Ok(Some(id))
}

/// Token string → id, keeping the first id of a duplicated string (as llama.cpp does).
fn vocab_map(tokens: &[&str]) -> Result<Vocab, GgufTokenizerError> {
    let mut vocab = Vocab::default();
    vocab.reserve(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let id = u32::try_from(i).map_err(|_| tk_err("vocabulary larger than u32::MAX"))?;
        vocab.entry((*t).to_string()).or_insert(id);
    }
    Ok(vocab)
}

/// Build a tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file (see the module
/// documentation for the supported models and pre-tokenizers).
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, GgufTokenizerError> {
    let model = get_str(content, "tokenizer.ggml.model")?;
    let tokens = get_str_array(content, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(GgufTokenizerError::EmptyVocab);
    }
    let types = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(_) => get_int_array(content, "tokenizer.ggml.token_type")?,
        None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(GgufTokenizerError::LengthMismatch {
            key: "tokenizer.ggml.token_type",
            got: types.len(),
            expected: tokens.len(),
        });
    }

    let (mut tokenizer, default_add_bos) = match model {
        "gpt2" => (build_gpt2(content, &tokens)?, false),
        "llama" => (build_llama(content, &tokens, &types)?, true),
        other => return Err(GgufTokenizerError::UnsupportedModel(other.to_string())),
    };

    // Control tokens are special; user-defined ones are matched verbatim but not special.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(t, ty)| {
            AddedToken::from(*t, *ty == TOKEN_TYPE_CONTROL)
                .normalized(false)
                .special(*ty == TOKEN_TYPE_CONTROL)
        })
        .collect();
    tokenizer.add_tokens(added).map_err(tk_err)?;

    let add_bos = get_opt_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    if add_bos {
        let bos_id = get_opt_token_id(content, "tokenizer.ggml.bos_token_id", tokens.len())?
            .ok_or(GgufTokenizerError::MissingKey(
                "tokenizer.ggml.bos_token_id",
            ))?;
        let bos = tokens[bos_id as usize];
        let processor = TemplateProcessing::builder()
            .try_single(format!("{bos}:0 $A:0"))
            .map_err(tk_err)?
            .try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1"))
            .map_err(tk_err)?
            .special_tokens(vec![(bos.to_string(), bos_id)])
            .build()
            .map_err(tk_err)?;
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(tokenizer)
}

/// Byte-level BPE (GPT-2 style) with the pre-tokenizer named by `tokenizer.ggml.pre`.
fn build_gpt2(content: &Content, tokens: &[&str]) -> Result<Tokenizer, GgufTokenizerError> {
    let merges = get_str_array(content, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(index, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| GgufTokenizerError::InvalidMerge {
                    index,
                    merge: m.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens)?, merges)
        .build()
        .map_err(tk_err)?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = match content.metadata.get("tokenizer.ggml.pre") {
        Some(_) => get_str(content, "tokenizer.ggml.pre")?,
        None => "default",
    };
    let byte_level_regex = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => {
            PreSequence::new(vec![Digits::new(true).into(), byte_level_regex.into()]).into()
        }
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC)).map_err(tk_err)?;
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT_REGEX.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?;
            PreSequence::new(vec![
                split.into(),
                ByteLevel::new(false, false, false).into(),
            ])
            .into()
        }
        _ => byte_level_regex.into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// SentencePiece-style BPE with byte fallback, merges derived from the token scores.
fn build_llama(
    content: &Content,
    tokens: &[&str],
    types: &[i64],
) -> Result<Tokenizer, GgufTokenizerError> {
    let scores = get_f32_array(content, "tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(GgufTokenizerError::LengthMismatch {
            key: "tokenizer.ggml.scores",
            got: scores.len(),
            expected: tokens.len(),
        });
    }
    let vocab = vocab_map(tokens)?;

    // For every normal token, each split into two vocabulary pieces is a merge rule; rank the
    // rules by the merged token's score (higher first), then by merged id, then by piece ids.
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(types).enumerate() {
        if *ty != TOKEN_TYPE_NORMAL || vocab.get(*tok) != Some(&(id as u32)) {
            continue;
        }
        for (split, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(split);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                ranked.push((scores[id], id as u32, ia, ib));
            }
        }
    }
    ranked.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
            .then(x.3.cmp(&y.3))
    });
    let merges = ranked
        .into_iter()
        .map(|(_, _, a, b)| {
            (
                tokens[a as usize].to_string(),
                tokens[b as usize].to_string(),
            )
        })
        .collect();

    let unk_id = get_opt_token_id(content, "tokenizer.ggml.unknown_token_id", tokens.len())?;
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk_id {
        builder = builder.unk_token(tokens[unk as usize].to_string());
    }
    let mut tokenizer = Tokenizer::new(builder.build().map_err(tk_err)?);
    tokenizer
        .with_normalizer(Some(Replace::new(" ", "▁").map_err(tk_err)?))
        .map_err(tk_err)?;
    let decoder: DecoderWrapper = DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tk_err)?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])
    .into();
    tokenizer.with_decoder(Some(decoder));
    Ok(tokenizer)
}
