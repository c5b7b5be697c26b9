//! Fixtures of the `cord` binary tests: two tiny generated models (see `cord_testkit`), a pool
//! file over them, problems files, and a runner for the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cord_testkit::tiny;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const TEACHERS: [&str; 2] = tiny::POOL_TEACHERS;

pub struct Fixture {
    pub dir: TempDir,
    pub llama: PathBuf,
    pub qwen2: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (llama, qwen2) = tiny::write_pool_models(dir.path());
        Fixture { dir, llama, qwen2 }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A pool of both tiny teachers on the CPU with small budgets; `search` adds `[search]`
    /// lines, `scorer` is the `[scorer]` body.
    pub fn pool_text(&self, search: &str, scorer: &str) -> String {
        pool_text(&self.llama, &self.qwen2, search, scorer)
    }

    /// Writes [`Fixture::pool_text`] to `name` and returns its path.
    pub fn pool(&self, name: &str, search: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, self.pool_text(search, META)).unwrap();
        p
    }

    /// Writes `n` arithmetic problems to `name` and returns its path.
    pub fn problems(&self, name: &str, n: usize) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, problems_text(n)).unwrap();
        p
    }
}

pub const META: &str = "kind = \"meta-prover\"\nmodel = \"byte-llama\"";

pub fn pool_text(llama: &Path, qwen2: &Path, search: &str, scorer: &str) -> String {
    format!(
        r#"[search]
method = "cord"
beam_width = 2
think_budget = 48
max_step_tokens = 16
answer_budget = 8
max_steps = 6
seed = 3
problems_in_flight = 4
{search}

"#,
    ) + &tiny::pool_tables(llama, qwen2, scorer)
}

/// `n` problems `p0..p{n-1}`, one JSON object per line.
pub fn problems_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            let v = json!({
                "id": format!("p{i}"),
                "question": format!("What is {i} + {}?", i % 7),
                "answer": format!("{}", i + i % 7),
            });
            format!("{v}\n")
        })
        .collect()
}

/// The real binary, with a clean environment for logs and `RUST_BACKTRACE=1` set, as many Rust
/// users (and CI) have it: errors must still be one line without a captured backtrace.
pub fn cord() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cord"));
    c.env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("CORD_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null());
    c
}

/// `cord synth --pool P --input I --output O --quiet --no-timing ARGS...`, waited for.
pub fn synth(pool: &Path, input: &Path, output: &Path, args: &[&str]) -> Output {
    synth_cmd(pool, input, output, args).output().unwrap()
}

pub fn synth_cmd(pool: &Path, input: &Path, output: &Path, args: &[&str]) -> Command {
    let mut c = cord();
    c.arg("synth")
        .arg("--pool")
        .arg(pool)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--quiet", "--no-timing"])
        .args(args);
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every line of an output file parsed, with its raw bytes (the file must end with `\n`).
pub fn records(path: &Path) -> Vec<(Vec<u8>, Value)> {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "{}: ends in a torn line",
        path.display()
    );
    bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), i + 1));
            (l.to_vec(), v)
        })
        .collect()
}

/// The complete lines (ending in `\n`) at the start of a file that may end in a torn one.
pub fn complete_lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(<[u8]>::to_vec)
        .collect()
}

/// How two output files differ in their floats.
#[derive(Debug, Default)]
pub struct FloatDiff {
    pub count: usize,
    pub max_rel: f64,
    /// Where (the first few).
    pub paths: Vec<String>,
}

/// How two output files differ: `Err` for any difference in text, ids, choices, token counts or
/// structure; otherwise which floats differ and by how much.
pub fn compare_records(a: &Path, b: &Path) -> Result<FloatDiff, String> {
    fn walk(x: &Value, y: &Value, path: &str, diff: &mut FloatDiff) -> Result<(), String> {
        match (x, y) {
            (Value::Number(p), Value::Number(q)) if !(p.is_u64() && q.is_u64()) => {
                let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                if p != q {
                    let rel = (p - q).abs() / p.abs().max(q.abs()).max(1e-12);
                    diff.count += 1;
                    diff.max_rel = diff.max_rel.max(rel);
                    if diff.paths.len() < 6 {
                        diff.paths.push(format!("{path}: {p} vs {q}"));
                    }
                }
                Ok(())
            }
            (Value::Array(p), Value::Array(q)) if p.len() == q.len() => {
                for (i, (p, q)) in p.iter().zip(q).enumerate() {
                    walk(p, q, &format!("{path}[{i}]"), diff)?;
                }
                Ok(())
            }
            (Value::Object(p), Value::Object(q))
                if p.keys().collect::<Vec<_>>() == q.keys().collect::<Vec<_>>() =>
            {
                for (k, v) in p {
                    walk(v, &q[k], &format!("{path}.{k}"), diff)?;
                }
                Ok(())
            }
            _ if x == y => Ok(()),
            _ => Err(format!("{path}: {x} vs {y}")),
        }
    }
    let (ra, rb) = (records(a), records(b));
    if ra.len() != rb.len() {
        return Err(format!("{} vs {} records", ra.len(), rb.len()));
    }
    let mut diff = FloatDiff::default();
    for ((_, x), (_, y)) in ra.iter().zip(&rb) {
        walk(x, y, x["id"].as_str().unwrap_or("?"), &mut diff)?;
    }
    Ok(diff)
}
