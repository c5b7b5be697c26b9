//! `cord synth` and `cord demo`: a pool of teachers over a problems file, records as JSONL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use cord_backend::{BackendOptions, EngineBackend, KvMemory};
use cord_decode::config::{Method, PoolConfig, SearchOverrides};
use cord_decode::io::{
    OutputMode, Problem, RecordWriter, list_bad_lines, parse_problems, scan_problems_file,
};
use cord_decode::{Progress, RecordSink, Settings, Summary};
use cord_runtime::memory::DEFAULT_GPU_MEMORY_FRACTION;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct SynthArgs {
    /// Pool file (TOML): teachers, scorer, search settings.
    #[arg(long)]
    pool: PathBuf,
    /// Problems, one JSON object per line (`id`, `question`, `answer`).
    #[arg(long)]
    input: PathBuf,
    /// Records, one JSON object per line.
    #[arg(long)]
    output: PathBuf,
    /// Run only shard I of N (0-based): the problems whose id hashes to I (see shard.rs);
    /// with --limit L, the N shards together cover the first L problems.
    #[arg(long, value_name = "I/N")]
    shard: Option<crate::shard::Shard>,
    /// Leave out bad lines of the input (listed on stderr) instead of refusing to start.
    #[arg(long)]
    skip_bad_lines: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Flags shared by `synth` and `demo`; each overrides the pool file.
#[derive(Args, Clone, Default)]
pub struct RunArgs {
    /// cord | greedy | curation | mcts
    #[arg(long, value_parser = |s: &str| choice::<Method>(s, "method"))]
    pub(crate) method: Option<Method>,
    #[arg(long)]
    pub(crate) beam_width: Option<usize>,
    #[arg(long)]
    pub(crate) think_budget: Option<usize>,
    #[arg(long)]
    pub(crate) answer_budget: Option<usize>,
    #[arg(long)]
    pub(crate) max_step_tokens: Option<usize>,
    #[arg(long)]
    pub(crate) problems_in_flight: Option<usize>,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Only the first N problems of the input.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Attempts per problem (rejection sampling): a problem whose verified answer is wrong runs
    /// again from scratch with the next seed, up to N attempts in all (default: the pool's, 1).
    #[arg(long, value_name = "N")]
    attempts: Option<usize>,
    /// Which records go to the output: `all`, or `correct` (records whose answer is still wrong
    /// go to OUT.rejected.jsonl instead).
    #[arg(long, value_enum, default_value_t = Keep::All)]
    keep: Keep,
    /// Skip ids already complete in the output (a torn last line is dropped).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Replace an existing output file.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) overwrite: bool,
    /// Resume into an output written with another pool or method.
    #[arg(long)]
    pub(crate) force: bool,
    /// Record every candidate of every step (for `cord report`).
    #[arg(long)]
    pub(crate) save_tree: bool,
    /// Leave wall-clock seconds out of the records (byte-identical reruns).
    #[arg(long)]
    pub(crate) no_timing: bool,
    /// Score every non-empty candidate, junk included (the paper's raw behaviour; the pool's
    /// `[filter]` is turned off).
    #[arg(long)]
    pub(crate) no_filter: bool,
    /// Run every model on this device instead of the pool's (`cpu`, `cuda:N`).
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// KV cache memory per model, MiB, or `auto`: on a GPU, what the device's budget leaves after
    /// the weights of its models (and an activation reserve), split evenly; 2048 MiB on the CPU.
    #[arg(long, default_value_t = KvMemory::default(), value_parser = parse_kv_mib)]
    pub(crate) kv_mib: KvMemory,
    /// Share of each GPU's memory that the weights + KV pools placed on it may take.
    #[arg(long, default_value_t = DEFAULT_GPU_MEMORY_FRACTION)]
    pub(crate) gpu_memory_fraction: f64,
    /// Write the run summary (and per-model engine counters) as JSON here.
    #[arg(long)]
    pub(crate) stats: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// `--keep`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Keep {
    #[default]
    All,
    Correct,
}

/// Where `--keep correct` puts the records whose answer is wrong: `OUT.rejected.jsonl` for
/// `OUT.jsonl` (else the output name + `.rejected.jsonl`).
pub fn rejected_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    output.with_file_name(format!("{stem}.rejected.jsonl"))
}

/// `--kv-mib`: MiB, or `auto`.
fn parse_kv_mib(s: &str) -> std::result::Result<KvMemory, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(KvMemory::Auto);
    }
    s.parse::<u64>()
        .ok()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .map(KvMemory::Fixed)
        .ok_or_else(|| format!("`{s}` is neither a number of MiB nor `auto`"))
}

/// A value of a clap value enum, or an error naming `what` and the values it takes.
pub(crate) fn choice<T: clap::ValueEnum>(s: &str, what: &str) -> std::result::Result<T, String> {
    T::from_str(s, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        let (last, rest) = names.split_last().expect("a value enum has values");
        format!(
            "unknown {what} `{s}` (expected {} or {last})",
            rest.join(", ")
        )
    })
}

impl RunArgs {
    fn overrides(&self) -> Result<SearchOverrides> {
        Ok(SearchOverrides {
            method: self.method,
            beam_width: self.beam_width,
            think_budget: self.think_budget,
            answer_budget: self.answer_budget,
            max_step_tokens: self.max_step_tokens,
            problems_in_flight: self.problems_in_flight,
            seed: self.seed,
            attempts: self.attempts,
            save_tree: self.save_tree.then_some(true),
            record_timing: self.no_timing.then_some(false),
            filter: self.no_filter.then_some(false),
            ..SearchOverrides::default()
        })
    }
}

/// Expands `${CORD_MODELS}` (default `~/.cache/cord/models`), `$HOME` and a leading `~/` in a
/// model spec, so that pool files can name the fetched small models portably.
pub fn expand_spec(spec: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let models = models_dir().to_string_lossy().into_owned();
    let mut s = spec
        .replace("${CORD_MODELS}", &models)
        .replace("$CORD_MODELS", &models);
    s = s.replace("${HOME}", &home).replace("$HOME", &home);
    if let Some(rest) = s.strip_prefix("~/") {
        s = format!("{home}/{rest}");
    }
    s
}

/// Where `scripts/fetch-models.sh` puts the small models.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("CORD_MODELS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/cord/models"),
    }
}

pub(crate) fn load_pool(path: &Path, run: &RunArgs) -> Result<PoolConfig> {
    let mut pool = PoolConfig::from_file(path)?;
    pool.apply_overrides(&run.overrides()?)?;
    for t in &mut pool.teachers {
        t.model = expand_spec(&t.model);
    }
    if let Some(m) = &pool.scorer.model {
        pool.scorer.model = Some(expand_spec(m));
    }
    pool.validate()?;
    Ok(pool)
}

pub fn synth(a: SynthArgs) -> Result<ExitCode> {
    let pool = load_pool(&a.pool, &a.run)?;
    if a.run.limit == Some(0) {
        bail!("--limit 0 leaves nothing to do (give at least 1)");
    }
    let problems = read_input(&a.input, a.skip_bad_lines)?;
    let mut run = a.run.clone();
    let total = problems.len().min(run.limit.unwrap_or(usize::MAX));
    let problems = crate::shard::select(problems, run.limit.take(), a.shard);
    if let Some(s) = a.shard {
        eprintln!("shard {s}: {} of {total} problems", problems.len());
    }
    let summary = run_pool(&pool, problems, &a.output, &run)?;
    Ok(exit_code(&summary))
}

/// Every line of the input is read before anything else happens: a bad line stops the run
/// before any model is loaded, with every bad line listed, unless `skip` leaves them out.
pub(crate) fn read_input(path: &Path, skip: bool) -> Result<Vec<Problem>> {
    let scan = scan_problems_file(path)?;
    if !skip || scan.bad.is_empty() {
        return Ok(scan.into_strict(&path.display().to_string())?);
    }
    eprintln!(
        "warning: {}: leaving out {} bad line(s): {}",
        path.display(),
        scan.bad.len(),
        list_bad_lines(&scan.bad)
    );
    Ok(cord_decode::io::ProblemsScan {
        bad: Vec::new(),
        ..scan
    }
    .into_strict(&path.display().to_string())?)
}

/// 0, or 128 + signal when the run was stopped by Ctrl-C / SIGTERM.
fn exit_code(summary: &Summary) -> ExitCode {
    if summary.interrupted {
        ExitCode::from(crate::interrupt::exit_status())
    } else {
        ExitCode::SUCCESS
    }
}

/// Loads the pool, runs every (not yet done) problem and prints the summary.
pub(crate) fn run_pool(
    pool: &PoolConfig,
    mut problems: Vec<Problem>,
    output: &Path,
    run: &RunArgs,
) -> Result<Summary> {
    if let Some(n) = run.limit {
        if n == 0 {
            bail!("--limit 0 leaves nothing to do (give at least 1)");
        }
        problems.truncate(n);
    }
    if run.kv_mib == KvMemory::Fixed(0) {
        bail!("--kv-mib 0 leaves no room for the KV cache (give at least 1)");
    }
    let settings = Settings::shared(pool)?;
    let mode = OutputMode {
        resume: run.resume,
        overwrite: run.overwrite,
        force: run.force,
    };
    // Checks only: nothing is written before the first record (see `RecordWriter`).
    let (mut writer, info) = RecordWriter::open(output, mode, &pool.fingerprint())?;
    if info.records > 0 || info.truncated_bytes > 0 {
        eprintln!(
            "resuming {}: {} records complete{}",
            output.display(),
            info.records,
            if info.truncated_bytes > 0 {
                format!(
                    ", a torn last line of {} bytes will be cut away",
                    info.truncated_bytes
                )
            } else {
                String::new()
            }
        );
    }
    // `--keep correct`: the rejected records have their own file, resumed alike; an id is done
    // when it is in either file.
    let mut rejected = match run.keep {
        Keep::All => None,
        Keep::Correct => {
            let path = rejected_path(output);
            let (w, rinfo) = RecordWriter::open(&path, mode, &pool.fingerprint())?;
            if rinfo.records > 0 {
                eprintln!(
                    "resuming {}: {} rejected records complete",
                    path.display(),
                    rinfo.records
                );
            }
            Some((w, rinfo))
        }
    };
    let total_input = problems.len();
    problems.retain(|p| {
        !info.done.contains(&p.id)
            && !rejected
                .as_ref()
                .is_some_and(|(_, r)| r.done.contains(&p.id))
    });
    if problems.is_empty() {
        eprintln!(
            "nothing to do: all {total_input} problems are already in {}",
            output.display()
        );
        // A finished run leaves its output file, even an empty one (an empty shard): `cord
        // merge` and job scripts expect it. No model was loaded, so nothing can fail after this.
        writer.sync()?;
        if let Some((w, _)) = rejected.as_mut() {
            w.sync()?;
        }
        return Ok(Summary::default());
    }

    let opts = BackendOptions {
        kv_memory: run.kv_mib,
        device_override: run.device.clone(),
        gpu_memory_fraction: run.gpu_memory_fraction,
        attention: crate::attention_from_env(),
        allow_download: crate::downloads_allowed(),
        ..BackendOptions::default()
    };
    EngineBackend::check(pool, &opts)?;
    crate::interrupt::install()?;
    let t_load = Instant::now();
    let spinner = (!run.quiet).then(|| {
        let s = ProgressBar::new_spinner();
        s.set_message(format!("loading {} teacher(s)", pool.teachers.len()));
        s.enable_steady_tick(std::time::Duration::from_millis(200));
        s
    });
    let mut backend = EngineBackend::from_pool(pool, &opts)?;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    eprintln!("models loaded in {:.1}s", t_load.elapsed().as_secs_f64());

    let bar = if run.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(problems.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} problems [{elapsed_precise}] {msg}")
            .expect("static template"),
    );
    let started = Instant::now();
    let mut steps = 0usize;
    let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
    let mut on_progress = |p: &Progress<'_>| {
        steps += p.record.steps.len();
        for (k, v) in &p.record.stats.tokens_generated {
            *tokens.entry(k.clone()).or_default() += v;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let per_teacher: Vec<String> = tokens
            .iter()
            .map(|(k, v)| format!("{k} {:.1} tok/s", *v as f64 / secs))
            .collect();
        bar.set_position(p.done as u64);
        bar.set_message(format!(
            "correct {}/{} | {:.2} steps/s | {}",
            p.correct,
            p.done,
            steps as f64 / secs,
            per_teacher.join(", ")
        ));
    };
    bar.tick();
    let summary = cord_decode::run_sinks(
        &mut backend,
        &settings,
        problems,
        &mut writer,
        rejected
            .as_mut()
            .map(|(w, _)| w as &mut dyn cord_decode::RecordSink),
        &mut on_progress,
        &crate::interrupt::requested,
    )?;
    bar.finish_and_clear();
    print_summary(&summary, &backend, output);
    if summary.interrupted {
        eprintln!(
            "interrupted by {}: {} record(s) written and synced; rerun with --resume to continue",
            crate::interrupt::received(),
            summary.written
        );
    }
    if let Some(path) = &run.stats {
        let v = serde_json::json!({ "summary": summary, "models": backend.model_stats() });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

fn print_summary(s: &Summary, backend: &EngineBackend, output: &Path) {
    println!(
        "{} problems, {} correct ({:.1}%), mean score {:.3}, {:.1} steps/problem, {:.1}s ({:.1}s/problem)",
        s.problems,
        s.correct,
        100.0 * s.accuracy,
        s.mean_score,
        s.mean_steps,
        s.seconds,
        s.seconds / s.problems.max(1) as f64
    );
    if s.attempts > s.problems || s.rejected_records > 0 {
        println!(
            "  {} attempts for {} problems; {} rejected (answer still wrong)",
            s.attempts, s.problems, s.rejected_records
        );
    }
    println!(
        "  ends: {} natural (a step closed the reasoning, the teacher's EOS or the answer stated), {} closed by the search; {} failed (no trajectory)",
        s.natural_ends,
        s.written + s.dropped + s.rejected_records - s.natural_ends - s.failed,
        s.failed
    );
    if !s.rejected.is_empty() {
        let parts: Vec<String> = s
            .rejected
            .iter()
            .map(|(t, rs)| {
                let rs: Vec<String> = rs.iter().map(|(r, n)| format!("{r} {n}")).collect();
                format!("{t}: {}", rs.join(", "))
            })
            .collect();
        println!(
            "  rejected candidates: {}; beams resampled {}, dropped {}",
            parts.join("; "),
            s.beams_resampled,
            s.beams_dropped
        );
    }
    if s.extra_answers > 0 {
        println!(
            "  answers after a lower-ranked trajectory (the best's did not verify): {}",
            s.extra_answers
        );
    }
    for (name, toks) in &s.tokens_per_teacher {
        println!(
            "  teacher {name}: {toks} tokens generated ({:.1} tok/s)",
            *toks as f64 / s.seconds.max(1e-9)
        );
    }
    for (name, m) in backend.model_stats() {
        let reuse = if m.prompt_tokens > 0 {
            100.0 * m.reused_tokens as f64 / m.prompt_tokens as f64
        } else {
            0.0
        };
        println!(
            "  model {}: {} prompt tokens ({:.0}% from the prefix cache), {} computed, {} generated, {} scored; generate {:.1}s, score {:.1}s",
            short_name(&name),
            m.prompt_tokens,
            reuse,
            m.computed_tokens,
            m.generated_tokens,
            m.scored_tokens,
            m.generate_seconds,
            m.score_seconds
        );
    }
    println!("records: {}", output.display());
    if s.rejected_records > 0 {
        println!("rejected: {}", rejected_path(output).display());
    }
}

pub(crate) fn short_name(spec: &str) -> String {
    let p = Path::new(spec);
    match (p.file_name(), p.parent().and_then(|d| d.file_name())) {
        (Some(f), Some(d)) if f == "model.gguf" => d.to_string_lossy().into_owned(),
        (Some(f), _) => f.to_string_lossy().into_owned(),
        _ => spec.to_string(),
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// Number of GSM8K problems, taken in file order from the first 20 lines of
    /// data/gsm8k.jsonl that pass `--max-solution-steps`.
    #[arg(long, default_value_t = 5)]
    problems: usize,
    /// Only problems whose GSM8K reference solution has at most this many steps (the file's
    /// `solution_steps`; 2 = the easy ones the small demo models can solve); 0 = no filter.
    #[arg(long, default_value_t = 2)]
    max_solution_steps: usize,
    /// Pool file (default: the repository's models/demo.toml).
    #[arg(long)]
    pool: Option<PathBuf>,
    #[arg(long, default_value = "demo-traces.jsonl")]
    output: PathBuf,
    /// Do not run scripts/fetch-models.sh when models are missing.
    #[arg(long)]
    no_fetch: bool,
    #[command(flatten)]
    run: RunArgs,
}

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const GSM8K: &str = include_str!("../../../data/gsm8k.jsonl");
/// The demo and the tests use only the first lines of data/gsm8k.jsonl.
const DEMO_POOL_LINES: usize = 20;

/// The demo's candidate problems: the first 20 lines of the embedded GSM8K file, without those
/// whose reference solution is longer than `max_steps` lines (0 = keep all).
fn demo_problems(max_steps: usize) -> Result<Vec<Problem>> {
    let all = parse_problems(GSM8K, "data/gsm8k.jsonl")?;
    let mut keep = Vec::new();
    for (p, line) in all.into_iter().zip(GSM8K.lines()).take(DEMO_POOL_LINES) {
        let steps = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["solution_steps"].as_u64())
            .unwrap_or(u64::MAX);
        if max_steps == 0 || steps <= max_steps as u64 {
            keep.push(p);
        }
    }
    if keep.is_empty() {
        bail!("no demo problem has a reference solution of at most {max_steps} steps");
    }
    Ok(keep)
}

pub fn demo(mut a: DemoArgs) -> Result<ExitCode> {
    let pool_path = a
        .pool
        .clone()
        .unwrap_or_else(|| Path::new(REPO).join("models/demo.toml"));
    if a.run.limit.is_none() {
        a.run.limit = Some(a.problems);
    }
    if !a.run.resume {
        a.run.overwrite = true;
    }
    let mut pool = load_pool(&pool_path, &a.run)?;
    let missing: Vec<String> = pool
        .teachers
        .iter()
        .map(|t| t.model.clone())
        .chain(pool.scorer.model.clone())
        .filter(|m| {
            (m.contains('/') || m.ends_with(".gguf"))
                && !Path::new(m).exists()
                && m.starts_with('/')
        })
        .collect();
    if !missing.is_empty() {
        if a.no_fetch {
            bail!(
                "models missing: {} (run scripts/fetch-models.sh)",
                missing.join(", ")
            );
        }
        let script = Path::new(REPO).join("scripts/fetch-models.sh");
        eprintln!(
            "fetching the demo models into {} ...",
            models_dir().display()
        );
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(models_dir())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
        pool = load_pool(&pool_path, &a.run)?;
    }
    let problems = demo_problems(a.max_solution_steps)?;
    let t0 = Instant::now();
    let summary = run_pool(&pool, problems, &a.output, &a.run)?;
    if summary.interrupted {
        return Ok(exit_code(&summary));
    }
    // Per-problem view of what was written.
    let text = std::fs::read_to_string(&a.output)
        .with_context(|| format!("reading {}", a.output.display()))?;
    println!();
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(why) = r["failed"].as_str() {
            println!(
                "✗ {:<12} gt {:>6}  failed: {why}",
                r["id"].as_str().unwrap_or("?"),
                r["answer"].as_str().unwrap_or("?")
            );
            continue;
        }
        let teachers: Vec<&str> = r["steps"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x["teacher"].as_str()).collect())
            .unwrap_or_default();
        println!(
            "{} {:<12} gt {:>6}  predicted {:>8}  score {:.3}  steps by [{}], answer by {}",
            if r["correct"].as_bool() == Some(true) {
                "✓"
            } else {
                "✗"
            },
            r["id"].as_str().unwrap_or("?"),
            r["answer"].as_str().unwrap_or("?"),
            r["predicted"].as_str().unwrap_or("-"),
            r["score"].as_f64().unwrap_or(f64::NAN),
            teachers.join(", "),
            r["answer_teacher"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\ndemo: {}/{} correct in {:.0}s; traces in {}",
        summary.correct,
        summary.problems,
        t0.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod demo_tests {
    use super::*;

    #[test]
    fn demo_problems_are_the_easy_ones_of_the_first_twenty() {
        let ids: Vec<String> = demo_problems(2)
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(
            ids,
            [
                "gsm8k-103",
                "gsm8k-740",
                "gsm8k-116",
                "gsm8k-269",
                "gsm8k-491",
                "gsm8k-684"
            ]
        );
        assert_eq!(demo_problems(0).unwrap().len(), 20);
        assert!(demo_problems(1).is_err());
    }
}
