//! `cord serve`: flags → [`cord_serve::Server`]; prints where it listens and when it stops.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use cord_runtime::engine::{DeviceSpec, ModelOptions};
use cord_runtime::memory::{DEFAULT_GPU_MEMORY_FRACTION, DEFAULT_KV_MIB};
use cord_serve::{BackendOptions, KvMemory, Models, ServeConfig, Server};

use crate::synth::{RunArgs, expand_spec, load_pool, short_name};

#[derive(Args)]
pub struct ServeArgs {
    /// Pool file (TOML): every teacher is served under its name, and `/v1/cord` runs the
    /// pool's search.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    pool: Option<PathBuf>,
    /// A model to serve, `NAME=SPEC` or `SPEC` (named after its file or directory); repeatable.
    /// SPEC: a local directory, a .gguf file or an HF hub id.
    #[arg(long)]
    model: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request but `GET /health` (401 otherwise).
    /// Default: the CORD_API_KEY environment variable, when set (keeps the key out of `ps`).
    #[arg(long)]
    api_key: Option<String>,
    /// Largest `max_tokens` (and CoRD budget) a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// `max_tokens` of a request that gives none (less when the context is shorter).
    #[arg(long, default_value_t = 512)]
    default_max_tokens: usize,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Most sequences one request may ask for (`n` × prompts, CoRD's beam width).
    #[arg(long, default_value_t = 16)]
    max_n: usize,
    /// Run every model on this device (`cpu`, `cuda:N`) instead of the pool's.
    #[arg(long)]
    device: Option<String>,
    /// KV cache memory per model, MiB.
    #[arg(long, default_value_t = DEFAULT_KV_MIB)]
    kv_mib: u64,
    /// Share of each GPU's memory that weights + KV pools may take.
    #[arg(long, default_value_t = DEFAULT_GPU_MEMORY_FRACTION)]
    gpu_memory_fraction: f64,
}

/// `NAME=SPEC` or `SPEC`.
fn named_spec(s: &str) -> (String, String) {
    match s.split_once('=') {
        Some((name, spec)) if !name.is_empty() && !name.contains('/') => {
            (name.to_string(), expand_spec(spec))
        }
        _ => {
            let spec = expand_spec(s);
            (short_name(&spec), spec)
        }
    }
}

pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    if a.kv_mib == 0 {
        bail!("--kv-mib 0 leaves no room for the KV cache (give at least 1)");
    }
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("CORD_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let config = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: api_key.clone(),
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens,
        default_max_tokens: a.default_max_tokens.min(a.max_tokens),
        max_n: a.max_n,
        handle_signals: true,
        ..ServeConfig::default()
    };
    let t0 = Instant::now();
    let models = match &a.pool {
        Some(path) => {
            let pool = load_pool(path, &RunArgs::default())?;
            let opts = BackendOptions {
                kv_memory: KvMemory::Fixed(a.kv_mib << 20),
                device_override: a.device.clone(),
                gpu_memory_fraction: a.gpu_memory_fraction,
                attention: crate::attention_from_env(),
                allow_download: crate::downloads_allowed(),
                ..BackendOptions::default()
            };
            Models::from_pool(pool, &opts)?
        }
        None => {
            let specs: Vec<(String, String)> = a.model.iter().map(|s| named_spec(s)).collect();
            let opts = ModelOptions {
                device: DeviceSpec::parse(a.device.as_deref().unwrap_or("cpu"))?,
                kv_memory: a.kv_mib << 20,
                attention: crate::attention_from_env(),
                allow_download: crate::downloads_allowed(),
                ..ModelOptions::default()
            };
            Models::from_specs(&specs, &opts)?
        }
    };
    let names = models.names();
    eprintln!("models loaded in {:.1}s", t0.elapsed().as_secs_f64());
    let server = Server::start(models, config)?;
    eprintln!(
        "serving {} on http://{} (OpenAI API under /v1; Ctrl-C or SIGTERM stops){}",
        names.join(", "),
        server.local_addr(),
        if api_key.is_some() {
            "; API key required"
        } else {
            ""
        }
    );
    server.wait()?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}
