//! Errors of model loading and the forward pass.

use std::path::PathBuf;

/// Every failure of this crate: each names the thing that is wrong and where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unknown architecture `{arch}` in {origin} (supported: llama, mistral, qwen2, qwen3, phi3, gemma3)"
    )]
    UnknownArchitecture { arch: String, origin: String },
    #[error("missing key `{key}` in {origin}")]
    MissingKey { key: String, origin: String },
    #[error("invalid value for `{key}` in {origin}: {msg}")]
    InvalidConfig {
        key: String,
        origin: String,
        msg: String,
    },
    #[error("missing weight `{name}` in {origin}")]
    MissingWeight { name: String, origin: String },
    #[error("weight `{name}` in {origin} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        origin: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{what} not found: {}", path.display())]
    MissingFile { what: String, path: PathBuf },
    #[error("model `{spec}` not found; looked in: {}", looked.join("; "))]
    ModelNotFound { spec: String, looked: Vec<String> },
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("hub download of `{file}` from `{repo}` failed: {msg}")]
    Hub {
        repo: String,
        file: String,
        msg: String,
    },
    #[error("bad forward input: {0}")]
    BadInput(String),
    #[error(transparent)]
    Kv(#[from] cord_kv::KvError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
