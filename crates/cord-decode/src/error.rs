//! The error type of cord-decode.

use std::path::PathBuf;

/// Errors of configuration, input, output and search. Bad input never panics: it is reported
/// here, with the file and line where that applies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool file is not valid TOML or has a wrong type / unknown key.
    #[error("{path}: {message}")]
    ConfigParse { path: String, message: String },
    /// A configuration value is out of range or inconsistent; `key` names it (e.g. `search.beam_width`).
    #[error("invalid `{key}`: {message}")]
    Config { key: String, message: String },
    /// A bad line in the problems file.
    #[error("{path}:{line}: {message}")]
    Input {
        path: String,
        line: usize,
        message: String,
    },
    /// The problems file holds no problem.
    #[error("{path}: no problems (the file is empty or holds only blank lines)")]
    EmptyInput { path: String },
    /// Several bad lines in the problems file (each is listed), and leaving them out was not
    /// asked for.
    #[error("{path}: {count} bad lines: {listing}")]
    BadLines {
        path: String,
        count: usize,
        listing: String,
    },
    /// The output file exists and neither resume nor overwrite was asked for.
    #[error("{path}: output file exists and is not empty")]
    OutputExists { path: String },
    /// A complete line of an existing output file (not the last one) cannot be read.
    #[error("{path}:{line}: corrupt output record: {message}")]
    CorruptOutput {
        path: String,
        line: usize,
        message: String,
    },
    /// The existing output was written with another pool / method (and appending anyway was not
    /// asked for).
    #[error(
        "{path}:{line}: record was written by another run (config fingerprint {found}, this run {expected})"
    )]
    ForeignOutput {
        path: String,
        line: usize,
        found: String,
        expected: String,
    },
    /// The output path cannot be written (missing directory, a directory, no permission).
    #[error("{path}: cannot write the output here: {message}")]
    OutputPath { path: String, message: String },
    /// A model of the pool failed to load; `role` is e.g. "teacher `qwen`" or "scorer `judge`".
    /// (The cause is part of the message, not a `source()`, so that `{:#}` chains print it once.)
    #[error("{role}: {cause}")]
    Load {
        role: String,
        cause: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// File system error.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Error reported by the backend (engine).
    #[error("backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A backend answered with the wrong number of results, or a search was driven out of order.
    #[error("search protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// Wraps any error of a backend implementation.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error::Backend(e.into())
    }

    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
