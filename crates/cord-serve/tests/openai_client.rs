//! The official `openai` Python client (tests/py/openai_client.py) against the server on two
//! tiny generated models: chat, seed reproducibility, streaming, completion log-probs with echo,
//! and errors as the client's exception types.
//!
//! Needs `python3` with the `openai` package (`.ci/run` installs a pinned version and sets
//! `CORD_REQUIRE_OPENAI=1`, which turns a missing client into a failure); elsewhere the test is
//! skipped with the reason printed.

mod common;

use std::process::Command;

use common::{Fixture, LLAMA, QWEN};
use cord_serve::ServeConfig;

fn openai_client() -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", "import openai; print(openai.__version__)"])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the Python package `openai` is missing ({})",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn the_official_openai_client_works_against_the_server() {
    let version = match openai_client() {
        Ok(v) => v,
        Err(why) if std::env::var_os("CORD_REQUIRE_OPENAI").is_none() => {
            eprintln!(
                "SKIPPED: {why}; pip install openai (CI sets CORD_REQUIRE_OPENAI=1 and runs it)"
            );
            return;
        }
        Err(why) => panic!("CORD_REQUIRE_OPENAI is set but {why}"),
    };
    let fx = Fixture::new();
    let srv = fx.serve(ServeConfig {
        api_key: Some("test-key".into()),
        ..common::config()
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args([srv.base.as_str(), "test-key", LLAMA, QWEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai {version} client checks failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{}", stdout.trim());
}
