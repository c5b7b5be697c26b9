//! Fixtures of the server tests: two tiny generated models (see `cord_testkit`) served as a
//! pool, an in-process server on an ephemeral port, and small HTTP helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use cord_decode::PoolConfig;
use cord_serve::{BackendOptions, EngineState, KvMemory, Models, ServeConfig, Server};
use cord_testkit::tiny;
use serde_json::Value;
use tempfile::TempDir;

pub const LLAMA: &str = tiny::POOL_TEACHERS[0];
pub const QWEN: &str = tiny::POOL_TEACHERS[1];

pub struct Fixture {
    pub dir: TempDir,
    pub llama: PathBuf,
    pub qwen2: PathBuf,
}

/// 1 MiB of KV per tiny model: 128 blocks of 16 tokens.
pub const KV_BYTES: u64 = 1 << 20;

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (llama, qwen2) = tiny::write_pool_models(dir.path());
        Fixture { dir, llama, qwen2 }
    }

    /// Both tiny teachers, byte-llama as meta-prover, small budgets.
    pub fn pool(&self) -> PoolConfig {
        let text = r#"
[search]
method = "cord"
beam_width = 2
think_budget = 48
max_step_tokens = 12
answer_budget = 8
max_steps = 4
seed = 3
record_timing = false
"#
        .to_string()
            + &tiny::pool_tables(
                &self.llama,
                &self.qwen2,
                "kind = \"meta-prover\"\nmodel = \"byte-llama\"",
            );
        let pool = PoolConfig::from_toml_str(&text, "tiny-pool").unwrap();
        pool.validate().unwrap();
        pool
    }

    pub fn backend_options() -> BackendOptions {
        BackendOptions {
            kv_memory: KvMemory::Fixed(KV_BYTES),
            ..BackendOptions::default()
        }
    }

    pub fn models(&self) -> Models {
        Models::from_pool(self.pool(), &Self::backend_options()).unwrap()
    }

    /// A server over the pool on an ephemeral port.
    pub fn serve(&self, config: ServeConfig) -> Running {
        Running::start(self.models(), config)
    }
}

pub fn config() -> ServeConfig {
    ServeConfig {
        port: 0,
        max_tokens: 64,
        default_max_tokens: 16,
        ..ServeConfig::default()
    }
}

pub struct Running {
    pub server: Option<Server>,
    pub base: String,
    pub http: reqwest::Client,
}

impl Running {
    pub fn start(models: Models, config: ServeConfig) -> Running {
        let server = Server::start(models, config).unwrap();
        let base = format!("http://{}", server.local_addr());
        Running {
            server: Some(server),
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST JSON; (status, body as JSON — or as a string when it is not JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST and read a server-sent event stream to its end: (status, events as (name, data)).
    pub async fn stream(&self, path: &str, body: &Value) -> (u16, Vec<(String, String)>) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, parse_sse(&text))
    }

    pub async fn engine(&self) -> EngineState {
        let (s, v) = self.get("/v1/engine").await;
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    pub fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Events of an SSE body: (event name or "message", data).
pub fn parse_sse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = "message".to_string();
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push((name, data.join("\n")));
        }
    }
    out
}

/// Asserts an OpenAI-style error object with `status`.
pub fn assert_error(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no error message in {body}"
    );
    assert!(e["type"].is_string(), "{what}: no error type in {body}");
}
