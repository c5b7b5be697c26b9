//! `cord`: multi-teacher inference engine command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cord_runtime::engine::{
    DeviceSpec, Engine, GenRequest, ModelOptions, TokenScoreRequest, parse_dtype,
};
use cord_runtime::memory::{DEFAULT_GPU_MEMORY_FRACTION, DEFAULT_KV_MIB};
use cord_runtime::sampling::SamplingParams;

mod bench;
mod eval;
mod export;
mod hint;
mod interrupt;
mod merge;
mod report;
mod serve;
mod shard;
mod synth;

#[derive(Parser)]
#[command(
    name = "cord",
    version,
    about = "Collaborative step-wise multi-teacher decoding engine"
)]
struct Cli {
    /// Debug logging (as `CORD_LOG=debug`), and errors keep the backtraces that libraries
    /// captured (`RUST_BACKTRACE=1`).
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text with one model.
    Generate(GenerateArgs),
    /// Teacher-forced log-probs of a continuation after a context.
    Score(ScoreArgs),
    /// Synthesize reasoning trajectories for a problems file with a teacher pool.
    Synth(synth::SynthArgs),
    /// Compare the pool's method, curation and each teacher alone on the same problems: one
    /// table of verified accuracy, junk left in the traces, natural ends, time and tokens.
    Eval(eval::EvalArgs),
    /// Fetch the small demo models if missing and run CoRD on a few GSM8K problems.
    Demo(synth::DemoArgs),
    /// Throughput and memory benchmarks (decode, beam, score, synth).
    Bench(bench::BenchArgs),
    /// Join the outputs of `synth --shard I/N` runs into one records file.
    Merge(merge::MergeArgs),
    /// Render records written with `--save-tree` as one self-contained HTML beam-tree report.
    Report(report::ReportArgs),
    /// Print a pool file's teachers, devices and fingerprint (`--gpus`: GPUs it needs).
    PoolInfo(shard::PoolInfoArgs),
    /// Check a predicted answer against the reference answer; exit 0 when they match, 1 when not.
    Verify(VerifyArgs),
    /// Export records as a dataset directory (parquet + a README.md dataset card).
    Export(export::ExportArgs),
    /// Serve the models over an OpenAI-compatible HTTP API, with scoring and CoRD endpoints.
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// The reference answer (`1/2`, `\frac{1}{2}`, `[0, 1)`, `Yes`, ...).
    gold: String,
    /// The predicted answer.
    prediction: String,
    /// Take the prediction as a model's whole text and extract its final answer first.
    #[arg(long)]
    extract: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a local directory (config.json + safetensors), a .gguf file, or an HF hub id
    /// (`org/name`, `org/name:file.gguf`, `...@revision`; cache first, HF_HUB_OFFLINE honoured).
    #[arg(long)]
    model: String,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dtype for unquantized weights: f32, f16, bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Dequantize GGUF weights at load time.
    #[arg(long)]
    dequantize: bool,
    /// KV cache memory for the model, in MiB.
    #[arg(long, default_value_t = DEFAULT_KV_MIB)]
    kv_mib: u64,
    /// Share of a GPU's memory that weights + KV may take.
    #[arg(long, default_value_t = DEFAULT_GPU_MEMORY_FRACTION)]
    gpu_memory_fraction: f64,
}

impl ModelArgs {
    fn engine(&self) -> Result<Engine> {
        let mut e = Engine::new();
        e.set_gpu_memory_fraction(self.gpu_memory_fraction)?;
        Ok(e)
    }

    fn options(&self) -> Result<ModelOptions> {
        Ok(ModelOptions {
            device: DeviceSpec::parse(&self.device)?,
            dtype: self
                .dtype
                .as_deref()
                .map(parse_dtype)
                .transpose()?
                .flatten(),
            dequantize: self.dequantize,
            kv_memory: self.kv_mib << 20,
            attention: attention_from_env(),
            allow_download: downloads_allowed(),
            ..ModelOptions::default()
        })
    }
}

/// Whether hub ids may be downloaded on a cache miss: not when `HF_HUB_OFFLINE` is set (1/ON/
/// YES/TRUE, any case; the Hugging Face convention), then they resolve from the local cache
/// only. Read here, at the binary's edge, and passed down as `allow_download`.
pub(crate) fn downloads_allowed() -> bool {
    !std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

/// `CORD_ATTENTION=paged|gather`: how every model's attention reads the paged cache (default
/// `paged`; see [`cord_models::Attention`]). Read here, at the binary's edge, and passed down.
pub(crate) fn attention_from_env() -> cord_models::Attention {
    std::env::var("CORD_ATTENTION")
        .ok()
        .and_then(|v| cord_models::Attention::parse(&v))
        .unwrap_or_default()
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Raw prompt text (no chat template).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// System prompt (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// Text the assistant turn starts with (with --chat).
    #[arg(long, default_value = "")]
    prefill: String,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable); matched on decoded text.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep the matched stop string in the output.
    #[arg(long)]
    keep_stop: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    context: String,
    #[arg(long)]
    continuation: String,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // SAFETY: first statement of main; no other thread exists yet.
    unsafe { cord_runtime::threads::init_cpu_threads() };
    let cli = Cli::parse();
    let debug = cli.verbose
        || std::env::var("CORD_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    if !debug && std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // With RUST_BACKTRACE=1 in the environment (common among Rust users, set in CI), candle
        // captures a backtrace into every error it returns and prints it as part of the error's
        // text: a 20-frame dump after a one-line user error. RUST_LIB_BACKTRACE=0 turns off
        // those captures only; panics still print theirs. Read once by std, before any capture.
        // SAFETY: still single-threaded (no thread has been spawned since main started).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let filter = if cli.verbose {
        tracing_subscriber::EnvFilter::new("debug")
    } else {
        tracing_subscriber::EnvFilter::try_from_env("CORD_LOG").unwrap_or_else(|_| "warn".into())
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let res = match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Score(a) => score(a),
        Cmd::Synth(a) => synth::synth(a),
        Cmd::Demo(a) => synth::demo(a),
        Cmd::Eval(a) => eval::eval(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Merge(a) => merge::merge_cmd(a),
        Cmd::Report(a) => report::report(a),
        Cmd::PoolInfo(a) => shard::pool_info(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Export(a) => export::export(a),
        Cmd::Serve(a) => serve::serve(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}{}", hint::flag_hint(&e).unwrap_or(""));
            ExitCode::FAILURE
        }
    }
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let prediction = if a.extract {
        match cord_decode::answer::extract_answer(&a.prediction) {
            Some(p) => p,
            None => {
                println!("no answer found in the prediction");
                return Ok(ExitCode::from(1));
            }
        }
    } else {
        a.prediction.clone()
    };
    let v = cord_decode::answer::verify(&a.gold, &prediction);
    println!("{}", if v.equal { "equal" } else { "not equal" });
    println!("gold:       {}", v.gold);
    println!("prediction: {}", v.prediction);
    Ok(if v.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn generate(a: GenerateArgs) -> Result<ExitCode> {
    let mut engine = a.model.engine()?;
    let id = engine.add_model(&a.model.model, &a.model.options()?)?;
    let prompt = match (&a.prompt, &a.chat) {
        (Some(p), _) => p.clone(),
        (None, Some(user)) => engine
            .model(id)?
            .render(a.system.as_deref(), user, &a.prefill)?,
        (None, None) => bail!("give --prompt or --chat"),
    };
    let req = GenRequest {
        prompt,
        params: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            min_p: a.min_p,
        },
        seed: a.seed,
        max_new_tokens: a.max_tokens,
        stop: a.stop.clone(),
        keep_stop: a.keep_stop,
    };
    let mut stdout = std::io::stdout();
    let json = a.json;
    let outs = engine.generate_streaming(id, std::slice::from_ref(&req), &mut |_, text| {
        if !json {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    let out = outs.into_iter().next().context("no output")?;
    if json {
        let v = serde_json::json!({
            "text": out.text,
            "tokens": out.token_ids,
            "finish_reason": out.finish.as_str(),
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
        });
        println!("{v}");
    } else {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn score(a: ScoreArgs) -> Result<ExitCode> {
    let mut engine = a.model.engine()?;
    let id = engine.add_model(&a.model.model, &a.model.options()?)?;
    let outs = engine.score(
        id,
        &[TokenScoreRequest {
            context: a.context.clone(),
            continuation: a.continuation.clone(),
        }],
    )?;
    let o = outs.into_iter().next().context("no output")?;
    let (sum, mean) = (o.sum(), o.mean());
    let ppl = (-mean).exp();
    if a.json {
        let v = serde_json::json!({
            "tokens": o.tokens,
            "token_ids": o.token_ids,
            "logprobs": o.logprobs,
            "sum": sum,
            "mean": mean,
            "ppl": ppl,
        });
        println!("{v}");
    } else {
        for (t, lp) in o.tokens.iter().zip(&o.logprobs) {
            println!("{lp:>10.4}  {t:?}");
        }
        println!(
            "sum {sum:.4}  mean {mean:.4}  ppl {ppl:.4}  ({} tokens, {} context tokens reused)",
            o.logprobs.len(),
            o.reused_tokens
        );
    }
    Ok(ExitCode::SUCCESS)
}
