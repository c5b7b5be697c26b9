//! `cord eval`: the pool's method, curation over the same teachers, and each teacher alone, on
//! the same problems and seeds, in one table: what a pool is worth before GPU hours are spent
//! on it. Every run goes through the same in-process machinery as `cord synth` and writes its
//! records to `--out-dir`, so that they can be read afterwards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use cord_decode::config::{Method, PoolConfig, ScorerConfig, ScorerKind, StepUnit};
use cord_decode::hygiene::degenerate_steps;
use cord_decode::io::Record;
use serde::Serialize;

use crate::synth::{RunArgs, load_pool, read_input, run_pool};

#[derive(Args)]
pub struct EvalArgs {
    /// Pool file (TOML).
    #[arg(long)]
    pool: PathBuf,
    /// Problems, one JSON object per line.
    #[arg(long)]
    input: PathBuf,
    /// Run seeds, comma-separated (default: the pool's `seed`); every run is repeated per seed.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Which runs, comma-separated: `pool` (the pool's method), `curation` (best-of-N whole
    /// trajectories over the pool's teachers), `alone` (each teacher alone: one trajectory).
    #[arg(long, value_delimiter = ',', default_value = "pool,curation,alone")]
    runs: Vec<String>,
    /// Directory for the records of every run, as RUN-seedS.jsonl (replaced).
    #[arg(long, default_value = "eval-out")]
    out_dir: PathBuf,
    /// Also write the table as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Leave out bad lines of the input instead of refusing to start.
    #[arg(long)]
    skip_bad_lines: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// One row of the table: one run over every seed.
#[derive(Debug, Default, Serialize)]
pub struct Row {
    pub run: String,
    /// File-name stem of the run's records.
    pub slug: String,
    /// Problems × seeds.
    pub problems: usize,
    pub correct: usize,
    /// Problems without a trajectory (every candidate rejected).
    pub failed: usize,
    /// Steps of the written trajectories, and those that break a `[filter]` rule.
    pub steps: usize,
    pub degenerate_steps: usize,
    /// Written trajectories that ended by themselves.
    pub natural_ends: usize,
    /// Candidates rejected during the search.
    pub rejected: u64,
    pub seconds: f64,
    pub tokens_generated: u64,
    pub tokens_scored: u64,
    pub records: Vec<PathBuf>,
}

/// The runs of an eval: (label, slug, pool).
fn variants(base: &PoolConfig, runs: &[String]) -> Result<Vec<(String, String, PoolConfig)>> {
    let mut out = Vec::new();
    for r in runs {
        match r.as_str() {
            "pool" => out.push((
                format!("{} (the pool)", base.search.method.as_str()),
                base.search.method.as_str().to_string(),
                base.clone(),
            )),
            "curation" => {
                let mut p = base.clone();
                p.search.method = Method::Curation;
                let n = p.search.effective_curation_samples();
                out.push((format!("curation ({n} per teacher)"), "curation".into(), p));
            }
            "alone" => {
                for t in &base.teachers {
                    let mut p = base.clone();
                    p.teachers = vec![t.clone()];
                    p.search.method = Method::Curation;
                    p.search.beam_width = 1;
                    p.search.curation_samples = Some(1);
                    // One trajectory: the score does not choose; the teacher scores itself.
                    p.scorer = ScorerConfig {
                        kind: ScorerKind::MetaProver,
                        model: Some(t.name.clone()),
                        suffix: base.scorer.suffix.clone(),
                        ..ScorerConfig::default()
                    };
                    out.push((format!("{} alone", t.name), format!("alone-{}", t.name), p));
                }
            }
            other => bail!("unknown run `{other}` in --runs (expected pool, curation or alone)"),
        }
    }
    if out.is_empty() {
        bail!("--runs names no run");
    }
    for (_, _, p) in &out {
        p.validate()?;
    }
    Ok(out)
}

/// The reasoning of a written record, without the closing `</think>`.
pub fn reasoning(r: &Record) -> String {
    let text: String = r.steps.iter().map(|s| s.text.as_str()).collect();
    cord_decode::search::score_context(&text).to_string()
}

/// Adds the records of one run to its row.
fn tally(row: &mut Row, records: &[Record], pool: &PoolConfig) {
    let mut filter = pool.filter.clone();
    filter.enabled = true;
    let prompt_guided = pool.search.step_unit == StepUnit::PromptGuided;
    for r in records {
        row.problems += 1;
        row.correct += usize::from(r.correct);
        if r.failed.is_some() {
            row.failed += 1;
            continue;
        }
        let text = reasoning(r);
        row.steps += cord_decode::hygiene::split_steps(&text, prompt_guided).len();
        let mut flagged: std::collections::BTreeSet<usize> =
            degenerate_steps(&text, prompt_guided, &filter)
                .into_iter()
                .map(|(i, _)| i)
                .collect();
        // A step the step cap cut mid-paragraph is junk too where the pool's filter says so
        // (`reject_cut`), but only its finish tells: steps are counted in the order of the
        // written ones (the closing `</think>` is none).
        if filter.reject_cut {
            flagged.extend(
                r.steps
                    .iter()
                    .filter(|s| !cord_decode::hygiene::step_body(&s.text).is_empty())
                    .enumerate()
                    .filter(|(_, s)| s.finish == cord_decode::search::STEP_CAP_MID)
                    .map(|(i, _)| i),
            );
        }
        row.degenerate_steps += flagged.len();
        row.natural_ends += usize::from(r.natural_end);
    }
}

pub fn eval(a: EvalArgs) -> Result<ExitCode> {
    if a.run.limit == Some(0) {
        bail!("--limit 0 leaves nothing to do (give at least 1)");
    }
    let base = load_pool(&a.pool, &a.run)?;
    let runs = variants(&base, &a.runs)?;
    let seeds = if a.seeds.is_empty() {
        vec![base.search.seed]
    } else {
        a.seeds.clone()
    };
    let mut problems = read_input(&a.input, a.skip_bad_lines)?;
    if let Some(n) = a.run.limit {
        problems.truncate(n);
    }
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", a.out_dir.display()))?;
    let mut run_args = a.run.clone();
    run_args.resume = false;
    run_args.overwrite = true;
    run_args.stats = None;
    run_args.limit = None;
    let mut rows = Vec::new();
    for (label, slug, pool) in &runs {
        let mut row = Row {
            run: label.clone(),
            slug: slug.clone(),
            ..Row::default()
        };
        for &seed in &seeds {
            let mut pool = pool.clone();
            pool.search.seed = seed;
            let out = a.out_dir.join(format!("{slug}-seed{seed}.jsonl"));
            println!("== {label}, seed {seed}: {}", out.display());
            let summary = run_pool(&pool, problems.clone(), &out, &run_args)?;
            if summary.interrupted {
                bail!(
                    "interrupted; the records written so far are in {}",
                    out.display()
                );
            }
            let records = crate::report::read_records(&out)?;
            tally(&mut row, &records, &pool);
            row.rejected += summary
                .rejected
                .values()
                .flat_map(|m| m.values())
                .sum::<u64>();
            row.seconds += summary.seconds;
            row.tokens_generated += summary.tokens_per_teacher.values().sum::<u64>();
            row.tokens_scored += summary.tokens_scored;
            row.records.push(out);
        }
        rows.push(row);
    }
    println!();
    print!(
        "{}",
        table(&rows, problems.len(), &seeds, base.filter.enabled)
    );
    if let Some(path) = &a.json {
        write_json(path, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(rows)? + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// The table as printed.
pub fn table(rows: &[Row], problems: usize, seeds: &[u64], filter: bool) -> String {
    let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut out = format!(
        "{problems} problems × seed(s) {}; candidate filter {}\n",
        seeds.join(","),
        if filter { "on" } else { "off (--no-filter)" }
    );
    let head = [
        "run",
        "verified correct",
        "failed",
        "degenerate steps left",
        "natural ends",
        "rejected",
        "wall s",
        "tokens gen",
        "tokens scored",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run.clone(),
                format!(
                    "{}/{} ({:.0}%)",
                    r.correct,
                    r.problems,
                    100.0 * r.correct as f64 / r.problems.max(1) as f64
                ),
                r.failed.to_string(),
                format!("{}/{}", r.degenerate_steps, r.steps),
                format!("{}/{}", r.natural_ends, r.problems - r.failed),
                r.rejected.to_string(),
                format!("{:.1}", r.seconds),
                r.tokens_generated.to_string(),
                r.tokens_scored.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: Vec<String>| {
        let parts: Vec<String> = c
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, w))| {
                let pad = w - s.chars().count();
                if i == 0 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |\n", parts.join(" | "))
    };
    out += &line(head.iter().map(|s| s.to_string()).collect());
    out += &format!(
        "|{}|\n",
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in cells {
        out += &line(c);
    }
    out
}
