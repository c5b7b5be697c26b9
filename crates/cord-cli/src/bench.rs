//! `cord bench`: throughput and memory of the model + KV path, of scoring over a cached prefix and
//! of synthesis end to end. Performance is measured here, never by timed unit tests.
//!
//! Every measured case runs `--repeat N` times and is reported as mean and min/max. Results go to
//! a readable table on stdout and, with `--json FILE` (`-` = stdout, the table then goes to
//! stderr), to one JSON object.
//!
//! - `decode`: B sequences with distinct random-token prompts, prefilled (chunked like the engine)
//!   and then decoded greedily for exactly `--gen-len` steps by driving `Model::forward` over the
//!   paged `KvCache` directly: no tokenizer, no EOS, so nothing stops early.
//! - `beam`: B beams from one shared prompt, with KV sharing (`KvCache::fork`) vs each beam
//!   prefilled separately: time, tokens/s and peak KV bytes (blocks used × bytes per block).
//! - `score`: `Engine::score` of C candidates (shared context + own step + answer) with the
//!   context in the prefix cache vs each candidate against an empty prefix cache. The model gets
//!   a word-level tokenizer over its vocabulary (`t0 t1 ...`) so that token counts are exact,
//!   for random and real weights alike.
//! - `synth`: a pool over a problems file through `EngineBackend` + `cord_decode::run`.
//!
//! `decode` also measures the machine's copy bandwidth once and reports, for batch 1, the
//! bandwidth bound on tokens/s (weight bytes read per token / bandwidth) and the achieved share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, Tensor};
use clap::{Args, Subcommand};
use cord_backend::{BackendOptions, EngineBackend, KvMemory};
use cord_decode::config::{Method, PoolConfig, SearchOverrides};
use cord_decode::{Record, Settings, read_problems};
use cord_kernels::cpu::Tier;
use cord_kv::{KvCache, SeqId};
use cord_models::{
    Attention, CpuGemm, LoadOptions, LoadedModel, LogitsMode, Model, ModelConfig, SeqInput,
};
use cord_runtime::engine::{DeviceSpec, Engine, ModelOptions, TokenScoreRequest, parse_dtype};
use cord_runtime::memory::DEFAULT_KV_MIB;
use serde::Serialize;
use serde_json::{Value, json};

/// Tokens per KV block (the engine's default).
const BLOCK_SIZE: usize = 16;
/// Most new tokens per forward call during prefill (the engine's default).
const MAX_BATCH_TOKENS: usize = 1024;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Prefill and decode tokens/s at several batch sizes, with the memory-bandwidth bound.
    Decode(DecodeArgs),
    /// B beams from one shared prefix: KV sharing (fork) vs separate prefills.
    Beam(BeamArgs),
    /// Candidates scored per second over a cached prefix vs without prefix reuse.
    Score(ScoreArgs),
    /// End-to-end synthesis over a pool and a problems file.
    Synth(SynthArgs),
    /// The custom ops (fused log-prob, paged attention, KV write, block copy) on a device
    /// against their references; exits non-zero on a mismatch.
    Kernels(KernelsArgs),
}

#[derive(Args)]
struct KernelsArgs {
    /// `cuda:N` compares each kernel with its CPU reference; `cpu` compares the CPU references
    /// with naive code.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    common: Common,
}

/// Flags every subcommand has.
#[derive(Args, Clone)]
struct Common {
    /// Times each measured case is run.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also write the results as JSON to this file (`-` = stdout; the table then goes to stderr).
    #[arg(long)]
    json: Option<String>,
}

/// The model under test.
#[derive(Args, Clone)]
struct Target {
    /// A real model: local directory, .gguf file or hub id.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    model: Option<String>,
    /// Random weights of a real shape: qwen2.5-0.5b, qwen2.5-7b, llama-3-8b, smollm2-135m, or the
    /// path of an HF config.json.
    #[arg(long)]
    config: Option<String>,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, bf16 on CUDA; quantized GGUF computes in f32).
    #[arg(long)]
    dtype: Option<String>,
    /// Dequantize GGUF weights at load time.
    #[arg(long)]
    dequantize: bool,
    /// Seed of the random weights and the random prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attention path: `paged` (the paged-attention op) or `gather` (per-sequence gather +
    /// matmuls); default: paged (row-independent results; see docs/testing.md).
    #[arg(long, value_parser = ["paged", "gather"])]
    attention: Option<String>,
    /// CPU kernels of the quantized matmuls of GGUF models: `cord` (cord's repacked int8 GEMM
    /// for Q8_0 shapes candle has no repacked kernel for, and cord's k-quant GEMV for Q4_K / Q6_K
    /// at 1-2 rows) or `candle` (candle's QMatMul everywhere).
    #[arg(long, default_value = "cord", value_parser = ["cord", "candle"])]
    cpu_gemm: String,
}

#[derive(Args)]
struct DecodeArgs {
    #[command(flatten)]
    target: Target,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Decode steps per sequence (each feeds one token per sequence).
    #[arg(long, default_value_t = 64)]
    gen_len: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BeamArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 4)]
    beams: usize,
    #[arg(long, default_value_t = 256)]
    prompt_len: usize,
    #[arg(long, default_value_t = 256)]
    gen_len: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 12)]
    candidates: usize,
    /// Tokens of the shared context.
    #[arg(long, default_value_t = 512)]
    context_len: usize,
    /// Tokens of each candidate's own step (part of its scoring context).
    #[arg(long, default_value_t = 64)]
    step_len: usize,
    /// Tokens scored per candidate.
    #[arg(long, default_value_t = 4)]
    answer_len: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SynthArgs {
    /// Pool file (TOML).
    #[arg(long)]
    pool: PathBuf,
    /// Problems, one JSON object per line.
    #[arg(long)]
    input: PathBuf,
    /// Only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// cord | greedy | curation | mcts (overrides the pool).
    #[arg(long, value_parser = |s: &str| crate::synth::choice::<Method>(s, "method"))]
    method: Option<Method>,
    #[arg(long)]
    beam_width: Option<usize>,
    #[arg(long)]
    think_budget: Option<usize>,
    #[arg(long)]
    answer_budget: Option<usize>,
    #[arg(long)]
    max_step_tokens: Option<usize>,
    #[arg(long)]
    problems_in_flight: Option<usize>,
    /// Run every model on this device instead of the pool's.
    #[arg(long)]
    device: Option<String>,
    /// KV cache memory per model, MiB.
    #[arg(long, default_value_t = DEFAULT_KV_MIB)]
    kv_mib: u64,
    /// CPU kernels of the quantized matmuls of GGUF models (see `bench decode --cpu-gemm`).
    #[arg(long, default_value = "cord", value_parser = ["cord", "candle"])]
    cpu_gemm: String,
    #[command(flatten)]
    common: Common,
}

pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    match a.cmd {
        BenchCmd::Decode(a) => decode(a),
        BenchCmd::Beam(a) => beam(a),
        BenchCmd::Score(a) => score(a),
        BenchCmd::Synth(a) => synth(a),
        BenchCmd::Kernels(a) => return kernels(a),
    }
    .map(|_| ExitCode::SUCCESS)
}

/// `cord bench kernels`: every custom op on the device against its reference (see
/// `cord_kernels::check::parity`), then its speed (`cord_kernels::check::timings`).
fn kernels(a: KernelsArgs) -> Result<ExitCode> {
    let spec = DeviceSpec::parse(&a.device)?;
    let dev = Engine::new().device(spec)?;
    let t0 = Instant::now();
    let results = cord_kernels::check::parity(&dev)?;
    let secs = t0.elapsed().as_secs_f64();
    // One row per op and dtype: cases, worst error, tolerance, verdict.
    let mut groups: BTreeMap<(&str, String), (usize, f64, f64, usize)> = BTreeMap::new();
    for r in &results {
        let g = groups
            .entry((r.op, r.dtype.clone()))
            .or_insert((0, 0.0, r.tol, 0));
        g.0 += 1;
        g.1 = g.1.max(r.max_err);
        g.3 += usize::from(!r.ok);
    }
    let reference = if dev.is_cpu() {
        "naive code"
    } else {
        "the CPU reference"
    };
    let mut out = table_out(&a.common);
    let _ = writeln!(out, "kernels on {spec} vs {reference} ({secs:.1} s)");
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|((op, dt), (n, err, tol, bad))| {
            vec![
                op.to_string(),
                dt.to_lowercase(),
                n.to_string(),
                format!("{err:.2e}"),
                format!("{tol:.0e}"),
                if *bad == 0 {
                    "ok".into()
                } else {
                    format!("{bad} FAILED")
                },
            ]
        })
        .collect();
    print_table(
        &mut *out,
        &["op", "dtype", "cases", "max rel err", "tol", "result"],
        &rows,
    );
    let failed: Vec<&cord_kernels::check::Parity> = results.iter().filter(|r| !r.ok).collect();
    // Speed of each op against plain candle ops doing the same work, on the same device.
    let timings = cord_kernels::check::timings(&dev)?;
    let _ = writeln!(out, "\nspeed on {spec} (mean per call)");
    let rows: Vec<Vec<String>> = timings
        .iter()
        .map(|t| {
            vec![
                t.op.to_string(),
                t.case.clone(),
                format!("{:.1}", t.ours_us),
                format!("{:.1}", t.baseline_us),
                format!("{:.2}x", t.baseline_us / t.ours_us),
                format!("{:.1e}", t.max_abs_diff),
                t.baseline.to_string(),
            ]
        })
        .collect();
    print_table(
        &mut *out,
        &[
            "op",
            "case",
            "ours µs",
            "baseline µs",
            "speedup",
            "max |diff|",
            "baseline",
        ],
        &rows,
    );
    for r in failed.iter().take(10) {
        let _ = writeln!(
            out,
            "FAILED {} {} {}: error {:.3e} > {:.0e}",
            r.op, r.dtype, r.case, r.max_err, r.tol
        );
    }
    write_json(
        &a.common,
        "kernels",
        json!({ "device": spec.to_string() }),
        json!({ "reference": reference, "seconds": secs, "cases": results, "timings": timings }),
    )?;
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics, tables, reports

/// Mean and min/max of the repeats of one measurement.
#[derive(Debug, Clone, Copy, Serialize)]
struct Spread {
    mean: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(xs: &[f64]) -> Spread {
        let n = xs.len();
        if n == 0 {
            return Spread {
                mean: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n,
            };
        }
        Spread {
            mean: xs.iter().sum::<f64>() / n as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        }
    }

    /// `mean (min–max)` with `prec` decimals.
    fn show(&self, prec: usize) -> String {
        if self.n <= 1 {
            format!("{:.prec$}", self.mean)
        } else {
            format!(
                "{:.prec$} ({:.prec$}–{:.prec$})",
                self.mean, self.min, self.max
            )
        }
    }
}

fn print_table(out: &mut dyn std::io::Write, headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(
        out,
        "{}",
        line(headers.iter().map(|s| s.to_string()).collect())
    );
    let _ = writeln!(
        out,
        "{}",
        w.iter()
            .map(|&n| "-".repeat(n))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r.clone()));
    }
}

/// Where the table goes: stdout, or stderr when the JSON goes to stdout.
fn table_out(c: &Common) -> Box<dyn std::io::Write> {
    if c.json.as_deref() == Some("-") {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

fn write_json(c: &Common, bench: &str, args: Value, results: Value) -> Result<()> {
    let Some(dest) = &c.json else { return Ok(()) };
    let v = json!({
        "bench": bench,
        "cord_version": env!("CARGO_PKG_VERSION"),
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "date": utc_now(),
        "machine": machine(),
        "repeat": c.repeat,
        "args": args,
        "results": results,
    });
    let text = serde_json::to_string_pretty(&v)? + "\n";
    if dest == "-" {
        print!("{text}");
    } else {
        std::fs::write(dest, text).with_context(|| format!("writing {dest}"))?;
    }
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn check_repeat(c: &Common) -> Result<()> {
    if c.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The model under test

/// HF config.json values of the built-in shapes (random weights of real sizes).
fn builtin_config(name: &str) -> Option<Value> {
    Some(match name.to_ascii_lowercase().as_str() {
        "smollm2-135m" => json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2
        }),
        "qwen2.5-0.5b" => json!({
            "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "hidden_act": "silu", "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
            "bos_token_id": 151643, "eos_token_id": 151643
        }),
        "qwen2.5-7b" => json!({
            "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "hidden_act": "silu", "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
            "bos_token_id": 151643, "eos_token_id": 151643
        }),
        "llama-3-8b" => json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_act": "silu", "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false,
            "bos_token_id": 128000, "eos_token_id": 128001
        }),
        _ => return None,
    })
}

const BUILTIN_NAMES: &str = "qwen2.5-0.5b, qwen2.5-7b, llama-3-8b, smollm2-135m";

/// A model ready to run, with what the reports need to know about it.
struct Subject {
    /// Shown in tables and JSON.
    name: String,
    weights: &'static str,
    model: Model,
    device_spec: DeviceSpec,
    device: Device,
    /// Weight bytes read per decoded token (the embedding table only when it is the LM head).
    weight_bytes: u64,
    /// `--cpu-gemm`.
    cpu_gemm: CpuGemm,
}

impl Subject {
    fn describe(&self) -> Value {
        let c = self.model.config();
        json!({
            "name": self.name,
            "weights": self.weights,
            "arch": c.arch.name(),
            "parameters": c.num_parameters(),
            "dtype": format!("{:?}", self.model.dtype()).to_lowercase(),
            "device": self.device_spec.to_string(),
            "weight_bytes_per_token": self.weight_bytes,
            "kv_bytes_per_token": self.model.kv_bytes_per_token(),
            "attention": format!("{:?}", self.model.attention()).to_lowercase(),
            "cpu_gemm": format!("{:?}", self.cpu_gemm).to_lowercase(),
            "cpu_tier": format!("{:?}", Tier::detect()),
        })
    }

    fn header(&self, out: &mut dyn std::io::Write) {
        let c = self.model.config();
        let _ = writeln!(
            out,
            "model {} ({}, {} weights, {:.1}M params, {:?}, {}); weights read per token {:.1} MiB, KV {} B/token; CPU GEMM {:?} (tier {:?})",
            self.name,
            c.arch.name(),
            self.weights,
            c.num_parameters() as f64 / 1e6,
            self.model.dtype(),
            self.device_spec,
            self.weight_bytes as f64 / (1 << 20) as f64,
            self.model.kv_bytes_per_token(),
            self.cpu_gemm,
            Tier::detect()
        );
    }
}

/// Weight bytes a dense model reads per token: every weight except an untied embedding table
/// (of which one row per token is read).
fn dense_weight_bytes(cfg: &ModelConfig, dtype: DType) -> u64 {
    let mut n: u64 = cord_models::weight_specs(cfg)
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum();
    if !cfg.tie_word_embeddings {
        n -= (cfg.vocab_size * cfg.hidden_size) as u64;
    }
    n * dtype.size_in_bytes() as u64
}

/// Bytes of the GGUF tensors read per token (the token embedding only when it is the LM head).
fn gguf_weight_bytes(path: &Path) -> Option<u64> {
    let mut f = std::fs::File::open(path).ok()?;
    let content = gguf_file::Content::read(&mut f).ok()?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    Some(
        content
            .tensor_infos
            .iter()
            .filter(|(name, _)| !(has_output && name.as_str() == "token_embd.weight"))
            .map(|(_, t)| {
                let d = t.ggml_dtype;
                (t.shape.elem_count() / d.block_size() * d.type_size()) as u64
            })
            .sum(),
    )
}

fn load_subject(t: &Target, engine: &mut Engine) -> Result<Subject> {
    let mut s = load_subject_model(t, engine)?;
    let attention = t.attention.as_deref().and_then(Attention::parse);
    s.model
        .set_attention(attention.unwrap_or_else(crate::attention_from_env));
    Ok(s)
}

fn load_subject_model(t: &Target, engine: &mut Engine) -> Result<Subject> {
    let device_spec = DeviceSpec::parse(&t.device)?;
    let device = engine.device(device_spec)?;
    let cpu_gemm: CpuGemm = t.cpu_gemm.parse().map_err(anyhow::Error::msg)?;
    let dtype = match &t.dtype {
        Some(s) => parse_dtype(s)?.unwrap_or(device_spec.default_dtype()),
        None => device_spec.default_dtype(),
    };
    match (&t.model, &t.config) {
        (Some(spec), _) => {
            let spec = crate::synth::expand_spec(spec);
            let opts = LoadOptions {
                dtype,
                device: device.clone(),
                dequantize: t.dequantize,
                cpu_gemm,
                allow_download: crate::downloads_allowed(),
                ..LoadOptions::default()
            };
            let loaded = cord_models::load(&spec, &opts)
                .with_context(|| format!("loading model `{spec}`"))?;
            let model = loaded.model;
            let is_gguf = spec.ends_with(".gguf") && Path::new(&spec).is_file();
            let weight_bytes = if is_gguf && !t.dequantize {
                gguf_weight_bytes(Path::new(&spec))
                    .unwrap_or_else(|| dense_weight_bytes(model.config(), model.dtype()))
            } else {
                dense_weight_bytes(model.config(), model.dtype())
            };
            Ok(Subject {
                name: crate::synth::expand_spec(&spec)
                    .rsplit('/')
                    .take(2)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("/"),
                weights: if is_gguf && !t.dequantize {
                    "gguf"
                } else {
                    "real"
                },
                model,
                device_spec,
                device,
                weight_bytes,
                cpu_gemm,
            })
        }
        (None, Some(name)) => {
            let (value, origin) = match builtin_config(name) {
                Some(v) => (v, format!("built-in shape {name}")),
                None => {
                    let p = Path::new(name);
                    if !p.is_file() {
                        bail!(
                            "--config `{name}` is neither a built-in shape ({BUILTIN_NAMES}) nor a config.json file"
                        );
                    }
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let v: Value = serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", p.display()))?;
                    (v, p.display().to_string())
                }
            };
            let cfg = ModelConfig::from_hf_json(&value, &origin)?;
            let weight_bytes = dense_weight_bytes(&cfg, dtype);
            let total = cfg.num_parameters() as u64 * dtype.size_in_bytes() as u64;
            if device_spec == DeviceSpec::Cpu
                && let Some(avail) = cord_runtime::memory::cpu_available()
                && total > avail
            {
                bail!(
                    "random weights of {name} in {dtype:?} need {:.1} GiB, only {:.1} GiB of memory is available",
                    total as f64 / (1u64 << 30) as f64,
                    avail as f64 / (1u64 << 30) as f64
                );
            }
            let model = Model::random(&cfg, dtype, &device, t.seed)?;
            Ok(Subject {
                name: name.clone(),
                weights: "random",
                model,
                device_spec,
                device,
                weight_bytes,
                cpu_gemm,
            })
        }
        (None, None) => bail!("give --model or --config"),
    }
}

/// Deterministic random token ids (splitmix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n)
            .map(|_| (self.next() % vocab as u64) as u32)
            .collect()
    }
}

fn sync(dev: &Device) -> Result<()> {
    dev.synchronize()?;
    Ok(())
}

/// Feeds every sequence its prompt, packing up to `MAX_BATCH_TOKENS` new tokens per forward like
/// the engine's chunked prefill. Returns each sequence's last-position logits `[vocab]`.
fn prefill(
    model: &Model,
    kv: &mut KvCache,
    seqs: &[SeqId],
    prompts: &[&[u32]],
) -> Result<Vec<Tensor>> {
    let n = seqs.len();
    let mut pos = vec![0usize; n];
    let mut last: Vec<Option<Tensor>> = vec![None; n];
    let mut i = 0;
    while i < n {
        let mut batch: Vec<(usize, usize, usize)> = Vec::new();
        let mut room = MAX_BATCH_TOKENS;
        let mut j = i;
        while j < n && room > 0 {
            let from = pos[j];
            let to = (from + room).min(prompts[j].len());
            batch.push((j, from, to));
            room -= to - from;
            pos[j] = to;
            if to == prompts[j].len() {
                j += 1;
            } else {
                break;
            }
        }
        i = j;
        let inputs: Vec<SeqInput> = batch
            .iter()
            .map(|&(j, f, t)| SeqInput::new(seqs[j], &prompts[j][f..t], LogitsMode::Last))
            .collect();
        let logits = model.forward(&inputs, kv)?;
        for (r, &(j, _, t)) in batch.iter().enumerate() {
            if t == prompts[j].len() {
                last[j] = Some(logits.get(r)?);
            }
        }
    }
    last.into_iter()
        .map(|l| l.context("a prompt was not fed completely"))
        .collect()
}

/// Greedy next token of each row of `logits` `[rows, vocab]`.
fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// One decode step: one token per sequence, greedy; returns the next tokens.
fn decode_step(model: &Model, kv: &mut KvCache, seqs: &[SeqId], next: &[u32]) -> Result<Vec<u32>> {
    let inputs: Vec<SeqInput> = seqs
        .iter()
        .zip(next)
        .map(|(&s, t)| SeqInput::new(s, std::slice::from_ref(t), LogitsMode::Last))
        .collect();
    let logits = model.forward(&inputs, kv)?;
    argmax_rows(&logits)
}

fn new_kv(model: &Model, num_blocks: usize) -> Result<KvCache> {
    Ok(KvCache::new(model.kv_config(num_blocks, BLOCK_SIZE))?)
}

fn used_blocks(kv: &KvCache) -> usize {
    kv.num_blocks() - kv.free_blocks()
}

/// A small untimed forward so that one-time costs (allocator, kernels) leave the first repeat.
fn warmup(model: &Model) -> Result<()> {
    let mut kv = new_kv(model, 4)?;
    let s = kv.new_sequence();
    let toks: Vec<u32> = (0..8u32)
        .map(|t| t % model.config().vocab_size as u32)
        .collect();
    let l = model.forward(&[SeqInput::new(s, &toks, LogitsMode::Last)], &mut kv)?;
    argmax_rows(&l)?;
    Ok(())
}

fn check_lengths(model: &Model, prompt_len: usize, gen_len: usize) -> Result<()> {
    if prompt_len == 0 {
        bail!("--prompt-len must be at least 1");
    }
    let max = model.config().max_position_embeddings;
    if prompt_len + gen_len > max {
        bail!(
            "prompt + generated tokens ({}) exceed the model's {max} positions",
            prompt_len + gen_len
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// decode

/// Copy bandwidth of the device in bytes/s (read + write bytes over time), best of 5 copies of
/// 256 MiB.
fn copy_bandwidth(dev: &Device) -> Result<f64> {
    const BYTES: usize = 256 << 20;
    let mut best = f64::INFINITY;
    match dev {
        Device::Cpu => {
            let src = vec![1u8; BYTES];
            let mut dst = vec![0u8; BYTES];
            for _ in 0..5 {
                let t = Instant::now();
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        _ => {
            let src = Tensor::ones(BYTES / 4, DType::F32, dev)?;
            sync(dev)?;
            for _ in 0..5 {
                let t = Instant::now();
                let c = src.copy()?;
                sync(dev)?;
                best = best.min(t.elapsed().as_secs_f64());
                drop(c);
            }
        }
    }
    Ok(2.0 * BYTES as f64 / best)
}

fn decode(a: DecodeArgs) -> Result<()> {
    check_repeat(&a.common)?;
    if a.batch.is_empty() || a.batch.contains(&0) {
        bail!("--batch needs sizes of at least 1");
    }
    let mut engine = Engine::new();
    let s = load_subject(&a.target, &mut engine)?;
    check_lengths(&s.model, a.prompt_len, a.gen_len)?;
    let mut out = table_out(&a.common);
    s.header(&mut *out);
    let bw = copy_bandwidth(&s.device)?;
    let bound = bw / s.weight_bytes.max(1) as f64;
    let _ = writeln!(
        out,
        "copy bandwidth {:.2} GB/s (read+write, best of 5 × 256 MiB) → batch-1 bound {:.1} tokens/s",
        bw / 1e9,
        bound
    );
    warmup(&s.model)?;
    let vocab = s.model.config().vocab_size;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for &b in &a.batch {
        let per_seq = (a.prompt_len + a.gen_len).div_ceil(BLOCK_SIZE) + 1;
        let mut kv = new_kv(&s.model, b * per_seq + 4)?;
        let (mut pre_s, mut dec_s, mut pre_tps, mut dec_tps) = (vec![], vec![], vec![], vec![]);
        for r in 0..a.common.repeat {
            let mut rng = Rng::new(a.target.seed, (b * 1000 + r) as u64);
            let prompts: Vec<Vec<u32>> = (0..b).map(|_| rng.tokens(a.prompt_len, vocab)).collect();
            let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            let seqs: Vec<SeqId> = (0..b).map(|_| kv.new_sequence()).collect();
            let t0 = Instant::now();
            let last = prefill(&s.model, &mut kv, &seqs, &refs)?;
            let mut next = argmax_rows(&Tensor::stack(&last, 0)?)?;
            let tp = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            for _ in 0..a.gen_len {
                next = decode_step(&s.model, &mut kv, &seqs, &next)?;
            }
            sync(&s.device)?;
            let td = t1.elapsed().as_secs_f64();
            for q in seqs {
                kv.free(q)?;
            }
            pre_s.push(tp);
            dec_s.push(td);
            pre_tps.push((b * a.prompt_len) as f64 / tp);
            dec_tps.push((b * a.gen_len) as f64 / td.max(1e-12));
        }
        let (pre_tps, dec_tps) = (Spread::of(&pre_tps), Spread::of(&dec_tps));
        let ms_per_step = Spread::of(
            &dec_s
                .iter()
                .map(|&t| 1e3 * t / a.gen_len.max(1) as f64)
                .collect::<Vec<_>>(),
        );
        let frac = (b == 1).then(|| dec_tps.mean / bound);
        rows.push(vec![
            b.to_string(),
            pre_tps.show(1),
            dec_tps.show(1),
            ms_per_step.show(1),
            frac.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
        ]);
        results.push(json!({
            "batch": b,
            "prefill_tokens_per_s": pre_tps,
            "decode_tokens_per_s": dec_tps,
            "prefill_seconds": Spread::of(&pre_s),
            "decode_seconds": Spread::of(&dec_s),
            "decode_ms_per_step": ms_per_step,
            "bandwidth_bound_fraction": frac,
        }));
    }
    let _ = writeln!(
        out,
        "prompt {} tokens, {} decode steps, greedy, no EOS, {} repeats; mean (min–max)",
        a.prompt_len, a.gen_len, a.common.repeat
    );
    print_table(
        &mut *out,
        &[
            "batch",
            "prefill tok/s",
            "decode tok/s",
            "ms/step",
            "of bw bound",
        ],
        &rows,
    );
    write_json(
        &a.common,
        "decode",
        json!({
            "model": s.describe(),
            "batch": a.batch,
            "prompt_len": a.prompt_len,
            "gen_len": a.gen_len,
        }),
        json!({
            "copy_bandwidth_bytes_per_s": bw,
            "batch1_bound_tokens_per_s": bound,
            "cases": results,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// beam

/// One beam run: (prefill seconds, decode seconds, peak blocks used).
fn beam_once(
    s: &Subject,
    kv: &mut KvCache,
    prompt: &[u32],
    beams: usize,
    gen_len: usize,
    share: bool,
) -> Result<(f64, f64, usize)> {
    let t0 = Instant::now();
    let (seqs, first_logits) = if share {
        let root = kv.new_sequence();
        let last = prefill(&s.model, kv, &[root], &[prompt])?;
        let mut seqs = vec![root];
        for _ in 1..beams {
            seqs.push(kv.fork(root)?);
        }
        (seqs, last.into_iter().next().context("no logits")?)
    } else {
        let seqs: Vec<SeqId> = (0..beams).map(|_| kv.new_sequence()).collect();
        let prompts = vec![prompt; beams];
        let last = prefill(&s.model, kv, &seqs, &prompts)?;
        (seqs, last.into_iter().next().context("no logits")?)
    };
    // Beam i starts from the i-th most likely first token, then continues greedily.
    let row: Vec<f32> = first_logits.to_dtype(DType::F32)?.to_vec1()?;
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&x, &y| row[y as usize].total_cmp(&row[x as usize]));
    let mut next: Vec<u32> = (0..beams).map(|i| order[i % order.len()]).collect();
    let tp = t0.elapsed().as_secs_f64();
    let mut peak = used_blocks(kv);
    let t1 = Instant::now();
    for _ in 0..gen_len {
        next = decode_step(&s.model, kv, &seqs, &next)?;
        peak = peak.max(used_blocks(kv));
    }
    sync(&s.device)?;
    let td = t1.elapsed().as_secs_f64();
    for q in seqs {
        kv.free(q)?;
    }
    Ok((tp, td, peak))
}

fn beam(a: BeamArgs) -> Result<()> {
    check_repeat(&a.common)?;
    if a.beams == 0 {
        bail!("--beams must be at least 1");
    }
    let mut engine = Engine::new();
    let s = load_subject(&a.target, &mut engine)?;
    check_lengths(&s.model, a.prompt_len, a.gen_len)?;
    let mut out = table_out(&a.common);
    s.header(&mut *out);
    warmup(&s.model)?;
    let vocab = s.model.config().vocab_size;
    let per_seq = (a.prompt_len + a.gen_len).div_ceil(BLOCK_SIZE) + 1;
    let mut kv = new_kv(&s.model, a.beams * per_seq + 4)?;
    let bytes_per_block = kv.config().bytes_per_block() as u64;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let mut means = BTreeMap::new();
    for (label, share) in [("fork (shared prefix)", true), ("separate prefills", false)] {
        let (mut pre, mut dec, mut tot, mut tps, mut peak) = (vec![], vec![], vec![], vec![], 0);
        for r in 0..a.common.repeat {
            let prompt = Rng::new(a.target.seed, 7_000 + r as u64).tokens(a.prompt_len, vocab);
            let (tp, td, pk) = beam_once(&s, &mut kv, &prompt, a.beams, a.gen_len, share)?;
            pre.push(tp);
            dec.push(td);
            tot.push(tp + td);
            tps.push((a.beams * a.gen_len) as f64 / (tp + td));
            peak = peak.max(pk);
        }
        let peak_bytes = peak as u64 * bytes_per_block;
        let (tot_s, tps_s) = (Spread::of(&tot), Spread::of(&tps));
        means.insert(share, (tot_s.mean, peak_bytes));
        rows.push(vec![
            label.to_string(),
            Spread::of(&pre).show(2),
            Spread::of(&dec).show(2),
            tot_s.show(2),
            tps_s.show(1),
            peak.to_string(),
            format!("{:.1}", peak_bytes as f64 / (1 << 20) as f64),
        ]);
        results.push(json!({
            "mode": if share { "fork" } else { "separate" },
            "prefill_seconds": Spread::of(&pre),
            "decode_seconds": Spread::of(&dec),
            "total_seconds": tot_s,
            "generated_tokens_per_s": tps_s,
            "peak_kv_blocks": peak,
            "peak_kv_bytes": peak_bytes,
        }));
    }
    let _ = writeln!(
        out,
        "{} beams, prompt {} tokens, {} tokens per beam, block {} tokens = {} B, {} repeats; mean (min–max)",
        a.beams, a.prompt_len, a.gen_len, BLOCK_SIZE, bytes_per_block, a.common.repeat
    );
    print_table(
        &mut *out,
        &[
            "mode",
            "prefill s",
            "decode s",
            "total s",
            "gen tok/s",
            "peak blocks",
            "peak KV MiB",
        ],
        &rows,
    );
    let (f, sep) = (means[&true], means[&false]);
    let speedup = sep.0 / f.0;
    let mem_ratio = f.1 as f64 / sep.1.max(1) as f64;
    let _ = writeln!(
        out,
        "fork: {speedup:.2}× the speed of separate prefills, {:.0}% of their peak KV memory",
        100.0 * mem_ratio
    );
    write_json(
        &a.common,
        "beam",
        json!({
            "model": s.describe(),
            "beams": a.beams,
            "prompt_len": a.prompt_len,
            "gen_len": a.gen_len,
            "block_size": BLOCK_SIZE,
            "bytes_per_block": bytes_per_block,
        }),
        json!({
            "modes": results,
            "fork_speedup": speedup,
            "fork_kv_memory_ratio": mem_ratio,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// score

/// A word-level tokenizer over `vocab` ids: token `i` is the word `t{i}`, words split on
/// whitespace, so a text of N words is exactly N tokens.
fn word_tokenizer(vocab: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    let model = WordLevel::builder()
        .vocab((0..vocab).map(|i| (format!("t{i}"), i as u32)).collect())
        .unk_token("t0".into())
        .build()
        .map_err(|e| anyhow::anyhow!("building the word-level tokenizer: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    Ok(tok)
}

fn words(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn score(a: ScoreArgs) -> Result<()> {
    check_repeat(&a.common)?;
    if a.candidates == 0 || a.context_len == 0 || a.answer_len == 0 {
        bail!("--candidates, --context-len and --answer-len must be at least 1");
    }
    let mut engine = Engine::new();
    let s = load_subject(&a.target, &mut engine)?;
    check_lengths(&s.model, a.context_len + a.step_len, a.answer_len)?;
    let mut out = table_out(&a.common);
    s.header(&mut *out);
    warmup(&s.model)?;
    let vocab = s.model.config().vocab_size;
    let kv_per_token = s.model.kv_bytes_per_token() as u64;
    let describe = s.describe();
    let per_cand = a.context_len + a.step_len + a.answer_len + 2 * BLOCK_SIZE;
    let loaded = LoadedModel {
        model: s.model,
        tokenizer: word_tokenizer(vocab)?,
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: vec![],
        add_bos: false,
        name: s.name.clone(),
    };
    let opts = ModelOptions {
        device: s.device_spec,
        kv_memory: kv_per_token * ((a.candidates + 2) * per_cand) as u64,
        block_size: BLOCK_SIZE,
        ..ModelOptions::default()
    };
    let id = engine.add_loaded(&s.name, Arc::new(loaded), &opts)?;
    let mut rng = Rng::new(a.target.seed, 11);
    let ctx = words(&rng.tokens(a.context_len, vocab));
    let (mut reuse_t, mut fresh_t, mut reused_tokens, mut fresh_reused) = (vec![], vec![], 0, 0);
    for _ in 0..a.common.repeat {
        let cands: Vec<TokenScoreRequest> = (0..a.candidates)
            .map(|_| {
                let step = words(&rng.tokens(a.step_len, vocab));
                let ans = words(&rng.tokens(a.answer_len, vocab));
                TokenScoreRequest {
                    context: if step.is_empty() {
                        ctx.clone()
                    } else {
                        format!("{ctx} {step}")
                    },
                    continuation: format!(" {ans}"),
                }
            })
            .collect();
        // The shared context is in the prefix cache (as after the step's generation): untimed.
        engine.model_mut(id)?.clear_prefix_cache();
        engine.score(
            id,
            &[TokenScoreRequest {
                context: ctx.clone(),
                continuation: " t1".into(),
            }],
        )?;
        let t = Instant::now();
        let outs = engine.score(id, &cands)?;
        sync(&s.device)?;
        reuse_t.push(t.elapsed().as_secs_f64());
        reused_tokens = outs.iter().map(|o| o.reused_tokens).sum::<usize>();
        // Without reuse: every candidate against an empty prefix cache.
        let mut total = 0.0;
        fresh_reused = 0;
        for c in &cands {
            engine.model_mut(id)?.clear_prefix_cache();
            let t = Instant::now();
            let o = engine.score(id, std::slice::from_ref(c))?;
            sync(&s.device)?;
            total += t.elapsed().as_secs_f64();
            fresh_reused += o.iter().map(|o| o.reused_tokens).sum::<usize>();
        }
        fresh_t.push(total);
    }
    let n = a.candidates as f64;
    let rate = |ts: &[f64]| Spread::of(&ts.iter().map(|t| n / t).collect::<Vec<_>>());
    let (reuse_rate, fresh_rate) = (rate(&reuse_t), rate(&fresh_t));
    let computed_reuse = a.candidates * (a.step_len + a.answer_len);
    let computed_fresh = a.candidates * (a.context_len + a.step_len + a.answer_len);
    let rows = vec![
        vec![
            "cached prefix (one batched call)".to_string(),
            Spread::of(&reuse_t).show(3),
            reuse_rate.show(2),
            reused_tokens.to_string(),
        ],
        vec![
            "no reuse (fresh cache per candidate)".to_string(),
            Spread::of(&fresh_t).show(3),
            fresh_rate.show(2),
            fresh_reused.to_string(),
        ],
    ];
    let _ = writeln!(
        out,
        "{} candidates = context {} + step {} + answer {} tokens (answer scored), Engine::score, {} repeats; mean (min–max)",
        a.candidates, a.context_len, a.step_len, a.answer_len, a.common.repeat
    );
    print_table(
        &mut *out,
        &["mode", "seconds", "candidates/s", "tokens reused"],
        &rows,
    );
    let speedup = reuse_rate.mean / fresh_rate.mean;
    let _ = writeln!(
        out,
        "prefix reuse: {speedup:.2}× the candidates/s ({computed_reuse} vs ~{computed_fresh} tokens computed per round)"
    );
    write_json(
        &a.common,
        "score",
        json!({
            "model": describe,
            "candidates": a.candidates,
            "context_len": a.context_len,
            "step_len": a.step_len,
            "answer_len": a.answer_len,
        }),
        json!({
            "cached_prefix": {
                "seconds": Spread::of(&reuse_t),
                "candidates_per_s": reuse_rate,
                "reused_tokens": reused_tokens,
            },
            "no_reuse": {
                "seconds": Spread::of(&fresh_t),
                "candidates_per_s": fresh_rate,
                "reused_tokens": fresh_reused,
            },
            "speedup": speedup,
            "engine_stats": engine.model(id)?.stats(),
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// synth

fn synth(a: SynthArgs) -> Result<()> {
    check_repeat(&a.common)?;
    for (flag, p) in [("--pool", &a.pool), ("--input", &a.input)] {
        if !p.is_file() {
            bail!("{flag} {}: no such file", p.display());
        }
    }
    let mut pool = PoolConfig::from_file(&a.pool)?;
    pool.apply_overrides(&SearchOverrides {
        method: a.method,
        beam_width: a.beam_width,
        think_budget: a.think_budget,
        answer_budget: a.answer_budget,
        max_step_tokens: a.max_step_tokens,
        problems_in_flight: a.problems_in_flight,
        ..SearchOverrides::default()
    })?;
    for t in &mut pool.teachers {
        t.model = crate::synth::expand_spec(&t.model);
    }
    if let Some(m) = &pool.scorer.model {
        pool.scorer.model = Some(crate::synth::expand_spec(m));
    }
    pool.validate()?;
    let mut problems = read_problems(&a.input)?;
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    if problems.is_empty() {
        bail!("no problems to run in {}", a.input.display());
    }
    let settings = Settings::shared(&pool)?;
    let opts = BackendOptions {
        kv_memory: KvMemory::Fixed(a.kv_mib << 20),
        device_override: a.device.clone(),
        attention: crate::attention_from_env(),
        allow_download: crate::downloads_allowed(),
        cpu_gemm: a.cpu_gemm.parse().map_err(anyhow::Error::msg)?,
        ..BackendOptions::default()
    };
    let mut out = table_out(&a.common);
    let n = problems.len();
    let (mut load_s, mut per_problem, mut score_share, mut hit, mut correct) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut teacher_tps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut model_tps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut last_stats = Value::Null;
    for _ in 0..a.common.repeat {
        // A fresh backend each repeat: empty prefix caches, so repeats measure the same work.
        let t = Instant::now();
        let mut backend = EngineBackend::from_pool(&pool, &opts)?;
        load_s.push(t.elapsed().as_secs_f64());
        let mut sink: Vec<Record> = Vec::new();
        let summary = cord_decode::run(
            &mut backend,
            &settings,
            problems.clone(),
            &mut sink,
            &mut |_| {},
        )?;
        let secs = summary.seconds.max(1e-9);
        per_problem.push(secs / n as f64);
        correct.push(summary.correct as f64);
        let stats = backend.model_stats();
        let (gen_s, sc, prompt, reused) = stats.values().fold((0.0, 0.0, 0u64, 0u64), |acc, m| {
            (
                acc.0 + m.generate_seconds,
                acc.1 + m.score_seconds,
                acc.2 + m.prompt_tokens,
                acc.3 + m.reused_tokens,
            )
        });
        score_share.push(sc / (gen_s + sc).max(1e-12));
        hit.push(reused as f64 / prompt.max(1) as f64);
        for (k, v) in &summary.tokens_per_teacher {
            teacher_tps
                .entry(k.clone())
                .or_default()
                .push(*v as f64 / secs);
        }
        for (k, m) in &stats {
            if m.generated_tokens > 0 {
                model_tps
                    .entry(k.clone())
                    .or_default()
                    .push(m.generated_tokens as f64 / m.generate_seconds.max(1e-12));
            }
        }
        last_stats = json!({ "summary": summary, "models": stats });
    }
    let _ = writeln!(
        out,
        "pool {}, {} problems from {}, {} repeats (fresh engine each); mean (min–max)",
        a.pool.display(),
        n,
        a.input.display(),
        a.common.repeat
    );
    let pct =
        |v: &[f64]| Spread::of(&v.iter().map(|x| 100.0 * x).collect::<Vec<_>>()).show(1) + " %";
    let mut rows = vec![
        vec!["model load s".into(), Spread::of(&load_s).show(2)],
        vec!["seconds / problem".into(), Spread::of(&per_problem).show(2)],
        vec!["correct".into(), Spread::of(&correct).show(1)],
        vec!["time in scoring".into(), pct(&score_share)],
        vec!["prefix-cache hit rate".into(), pct(&hit)],
    ];
    for (k, v) in &teacher_tps {
        rows.push(vec![
            format!("teacher {k} tok/s (wall)"),
            Spread::of(v).show(1),
        ]);
    }
    for (k, v) in &model_tps {
        let short = k.rsplit('/').take(2).collect::<Vec<_>>();
        let short = short.into_iter().rev().collect::<Vec<_>>().join("/");
        rows.push(vec![
            format!("model {short} tok/s (in generate)"),
            Spread::of(v).show(1),
        ]);
    }
    print_table(&mut *out, &["metric", "value"], &rows);
    let spread_map = |m: &BTreeMap<String, Vec<f64>>| -> BTreeMap<String, Spread> {
        m.iter().map(|(k, v)| (k.clone(), Spread::of(v))).collect()
    };
    write_json(
        &a.common,
        "synth",
        json!({
            "pool": a.pool.display().to_string(),
            "input": a.input.display().to_string(),
            "problems": n,
            "method": pool.search.method.as_str(),
            "beam_width": pool.search.beam_width,
            "think_budget": pool.search.think_budget,
            "device": a.device,
            "cpu_gemm": a.cpu_gemm,
            "cpu_tier": format!("{:?}", Tier::detect()),
        }),
        json!({
            "load_seconds": Spread::of(&load_s),
            "seconds_per_problem": Spread::of(&per_problem),
            "correct": Spread::of(&correct),
            "score_time_share": Spread::of(&score_share),
            "prefix_hit_rate": Spread::of(&hit),
            "teacher_tokens_per_s_wall": spread_map(&teacher_tps),
            "model_tokens_per_s_in_generate": spread_map(&model_tps),
            "last_run": last_stats,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_date() {
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!((s.mean, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
    }

    #[test]
    fn builtin_shapes_parse() {
        for name in ["qwen2.5-0.5b", "qwen2.5-7b", "llama-3-8b", "smollm2-135m"] {
            let v = builtin_config(name).unwrap();
            let c = ModelConfig::from_hf_json(&v, name).unwrap();
            assert!(c.num_parameters() > 100_000_000, "{name}");
        }
        let c = ModelConfig::from_hf_json(&builtin_config("qwen2.5-7b").unwrap(), "x").unwrap();
        let p = c.num_parameters() as f64 / 1e9;
        assert!((7.0..7.8).contains(&p), "qwen2.5-7b has {p}B parameters");
    }

    #[test]
    fn word_tokenizer_is_one_token_per_word() {
        let t = word_tokenizer(100).unwrap();
        let e = t.encode("t5 t17 t99", false).unwrap();
        assert_eq!(e.get_ids(), &[5, 17, 99]);
    }
}
