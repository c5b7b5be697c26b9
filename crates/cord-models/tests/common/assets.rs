//! Discovery of the real-model assets fetched by `scripts/fetch-models.sh`.
//!
//! Include from an integration test with
//! `#[path = "common/assets.rs"] mod assets;`.
//! Tests that need the assets call [`require`] and return early (passing, with a visible
//! `SKIPPED:` line on stderr) when the files are absent.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const SMOLLM2: &str = "smollm2-135m";
pub const GEMMA3: &str = "gemma3-270m";
pub const QWEN05: &str = "qwen2.5-coder-0.5b";
pub const QWEN15: &str = "qwen2.5-coder-1.5b";

/// The asset cache: `$CORD_MODELS`, else `~/.cache/cord/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORD_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/cord/models")
}

/// The asset directory if every `files` entry (relative to it) exists; otherwise prints a
/// `SKIPPED:` line naming `test` and the first missing file, and returns `None`.
pub fn require(test: &str, files: &[&str]) -> Option<PathBuf> {
    let dir = models_dir();
    match files.iter().find(|f| !dir.join(f).is_file()) {
        None => Some(dir),
        Some(missing) => {
            eprintln!(
                "SKIPPED: real models not found at {} ({test} needs {missing}); \
                 run scripts/fetch-models.sh",
                dir.display()
            );
            None
        }
    }
}

/// The committed GSM8K questions (`data/gsm8k.jsonl`, in the repository).
pub fn gsm8k_jsonl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/gsm8k.jsonl")
}
