//! `cord report`: one self-contained HTML file (inline CSS, JS and SVG; nothing fetched) from
//! records written with `--save-tree`: per problem the beam tree step by step, the final
//! trajectory and its correctness; across problems which teacher's steps are selected at which
//! stage of the trajectory (the paper's collaboration plot), and run totals.
//!
//! The Rust side lays the data out (tree rows, the trajectory's node ids, the plot's shares) and
//! embeds it as JSON in a `<script type="application/json">` element; the page's script draws it
//! with DOM calls only (`textContent`, never `innerHTML`), so record text cannot inject markup.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use cord_decode::io::{Record, StepRecord, TreeEntry};
use serde::Serialize;

#[derive(Args)]
pub struct ReportArgs {
    /// Records (JSONL) written by `cord synth --save-tree` / `cord demo --save-tree`.
    records: PathBuf,
    /// HTML file to write (default: the records path with `.html`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Bins of relative trajectory position in the collaboration plot.
    #[arg(long, default_value_t = 5)]
    bins: usize,
}

/// Colours for teachers, in order of first appearance.
const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
];

#[derive(Debug, Serialize)]
pub struct ReportData {
    pub source: String,
    pub totals: Totals,
    pub teachers: Vec<TeacherInfo>,
    pub collab: Collab,
    pub problems: Vec<ProblemView>,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub problems: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub steps: usize,
    pub candidates: usize,
    /// Sum of per-problem wall-clock seconds (absent when the records have no timing).
    pub seconds: Option<f64>,
    pub methods: Vec<String>,
    pub pools: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TeacherInfo {
    pub name: String,
    pub color: String,
    /// Selected steps written by this teacher, and their share of all selected steps.
    pub steps: usize,
    pub share: f64,
    /// Candidates proposed (every tree node).
    pub candidates: usize,
    /// Final answers written.
    pub answers: usize,
    /// Candidates rejected by the filter (or dropped as empty), per reason.
    pub rejected: BTreeMap<String, u64>,
}

/// Share of selected steps per teacher by relative position in the trajectory.
#[derive(Debug, Serialize)]
pub struct Collab {
    /// Bin labels, e.g. `0–20%`.
    pub labels: Vec<String>,
    /// `counts[bin][teacher]`, teachers in `ReportData::teachers` order.
    pub counts: Vec<Vec<usize>>,
    /// `shares[bin][teacher]` (each bin sums to 1, or is all 0 when empty).
    pub shares: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
pub struct ProblemView {
    pub id: String,
    pub question: String,
    pub answer: String,
    pub predicted: Option<String>,
    pub correct: bool,
    pub score: f64,
    pub seconds: Option<f64>,
    pub final_answer: String,
    pub answer_teacher: String,
    pub forced_close: bool,
    pub natural_end: bool,
    /// Why the problem has no trajectory (every beam's candidates were rejected).
    pub failed: Option<String>,
    pub steps: Vec<StepView>,
    pub nodes: Vec<NodeView>,
    /// Tree node ids of the final trajectory, step 1 first (empty when not found in the tree).
    pub path: Vec<u64>,
    /// Rows of the tallest column.
    pub rows: usize,
    /// Highest step in the tree.
    pub max_step: usize,
}

#[derive(Debug, Serialize)]
pub struct StepView {
    pub index: usize,
    pub teacher: String,
    pub score: f64,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub step: usize,
    pub parent: Option<u64>,
    pub teacher: String,
    pub text: String,
    pub score: Option<f64>,
    pub kept: bool,
    pub finished: bool,
    pub note: Option<String>,
    /// Row within its step's column (0 = top).
    pub row: usize,
}

/// Reads records JSONL; a torn last line is skipped with a warning.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(l) {
            Ok(r) => out.push(r),
            Err(e) if Some(i) == last => eprintln!(
                "warning: {}:{}: skipped a torn last line ({e})",
                path.display(),
                i + 1
            ),
            Err(e) => bail!("{}:{}: not a cord record: {e}", path.display(), i + 1),
        }
    }
    if out.is_empty() {
        bail!("{} holds no records", path.display());
    }
    Ok(out)
}

/// Node ids of the chosen trajectory: the chain of tree nodes whose texts are the steps'.
pub fn trajectory(steps: &[StepRecord], tree: &[TreeEntry]) -> Vec<u64> {
    let Some(last) = steps.last() else {
        return Vec::new();
    };
    let by_id: HashMap<u64, &TreeEntry> = tree.iter().rev().map(|e| (e.id, e)).collect();
    let same = |e: &TreeEntry, s: &StepRecord| e.text.trim() == s.text.trim();
    let mut ends: Vec<&TreeEntry> = tree
        .iter()
        .filter(|e| e.step == last.index && same(e, last))
        .collect();
    // Ranked and kept candidates first (a duplicate's entry carries the same text).
    ends.sort_by_key(|e| (!e.kept, e.score.is_none()));
    'next: for end in ends {
        let mut path = vec![end.id];
        let mut cur = end;
        for s in steps[..steps.len() - 1].iter().rev() {
            match cur.parent.and_then(|p| by_id.get(&p)) {
                Some(p) if same(p, s) => {
                    path.push(p.id);
                    cur = p;
                }
                _ => continue 'next,
            }
        }
        path.reverse();
        return path;
    }
    Vec::new()
}

/// Rows per step: a step's nodes are grouped under their parent's row, best score first.
fn layout(tree: &[TreeEntry]) -> (Vec<usize>, usize, usize) {
    let mut row_of: HashMap<u64, usize> = HashMap::new();
    let mut rows = vec![0usize; tree.len()];
    let mut by_step: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, e) in tree.iter().enumerate() {
        by_step.entry(e.step).or_default().push(i);
    }
    let mut tallest = 1;
    for idx in by_step.values_mut() {
        idx.sort_by(|&a, &b| {
            let (ea, eb) = (&tree[a], &tree[b]);
            let pa = ea.parent.and_then(|p| row_of.get(&p)).copied().unwrap_or(0);
            let pb = eb.parent.and_then(|p| row_of.get(&p)).copied().unwrap_or(0);
            pa.cmp(&pb)
                .then(eb.kept.cmp(&ea.kept))
                .then(
                    eb.score
                        .unwrap_or(f64::NEG_INFINITY)
                        .total_cmp(&ea.score.unwrap_or(f64::NEG_INFINITY)),
                )
                .then(ea.id.cmp(&eb.id))
        });
        for (row, &i) in idx.iter().enumerate() {
            rows[i] = row;
            row_of.entry(tree[i].id).or_insert(row);
        }
        tallest = tallest.max(idx.len());
    }
    let max_step = tree.iter().map(|e| e.step).max().unwrap_or(0);
    (rows, tallest, max_step)
}

/// Builds the report's data from records that all carry a tree.
pub fn build(records: &[Record], source: &str, bins: usize) -> Result<ReportData> {
    if bins == 0 {
        bail!("--bins must be at least 1");
    }
    let without: Vec<&str> = records
        .iter()
        .filter(|r| r.tree.is_none())
        .map(|r| r.id.as_str())
        .collect();
    if !without.is_empty() {
        bail!(
            "{} of {} records in {source} have no beam tree (first: `{}`); write them with \
             `cord synth --save-tree` (or `save_tree = true` in the pool's [search])",
            without.len(),
            records.len(),
            without[0]
        );
    }
    // Teachers in order of first appearance, across steps, trees and answers.
    let mut names: Vec<String> = Vec::new();
    let mut note = |n: &str| {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    };
    for r in records {
        r.stats.rejected.keys().for_each(|t| note(t));
        r.steps.iter().for_each(|s| note(&s.teacher));
        r.tree.iter().flatten().for_each(|e| note(&e.teacher));
        if !r.answer_teacher.is_empty() {
            note(&r.answer_teacher);
        }
    }
    let t_index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let k = names.len();
    let mut counts = vec![vec![0usize; k]; bins];
    let mut steps_by = vec![0usize; k];
    let mut cands_by = vec![0usize; k];
    let mut answers_by = vec![0usize; k];
    let mut rejected_by = vec![BTreeMap::<String, u64>::new(); k];
    let mut problems = Vec::new();
    let (mut steps_total, mut cands_total) = (0, 0);
    let mut seconds: Option<f64> = None;
    for r in records {
        let tree = r.tree.as_deref().unwrap_or_default();
        let n = r.steps.len();
        for (i, s) in r.steps.iter().enumerate() {
            let t = t_index[s.teacher.as_str()];
            // Relative position of the step's middle, binned.
            let pos = (i as f64 + 0.5) / n as f64;
            let bin = ((pos * bins as f64) as usize).min(bins - 1);
            counts[bin][t] += 1;
            steps_by[t] += 1;
        }
        for e in tree {
            cands_by[t_index[e.teacher.as_str()]] += 1;
        }
        for (t, reasons) in &r.stats.rejected {
            for (why, n) in reasons {
                *rejected_by[t_index[t.as_str()]]
                    .entry(why.clone())
                    .or_default() += n;
            }
        }
        if let Some(&t) = t_index.get(r.answer_teacher.as_str()) {
            answers_by[t] += 1;
        }
        steps_total += n;
        cands_total += tree.len();
        if let Some(s) = r.stats.seconds {
            *seconds.get_or_insert(0.0) += s;
        }
        let (rows, tallest, max_step) = layout(tree);
        problems.push(ProblemView {
            id: r.id.clone(),
            question: r.question.clone(),
            answer: r.answer.clone(),
            predicted: r.predicted.clone(),
            correct: r.correct,
            score: r.score,
            seconds: r.stats.seconds,
            final_answer: r.final_answer.clone(),
            answer_teacher: r.answer_teacher.clone(),
            forced_close: r.forced_close,
            natural_end: r.natural_end,
            failed: r.failed.clone(),
            steps: r
                .steps
                .iter()
                .map(|s| StepView {
                    index: s.index,
                    teacher: s.teacher.clone(),
                    score: s.score,
                    text: s.text.clone(),
                })
                .collect(),
            nodes: tree
                .iter()
                .zip(rows)
                .map(|(e, row)| NodeView {
                    id: e.id,
                    step: e.step,
                    parent: e.parent,
                    teacher: e.teacher.clone(),
                    text: e.text.clone(),
                    score: e.score.filter(|s| s.is_finite()),
                    kept: e.kept,
                    finished: e.finished,
                    note: e.note.clone(),
                    row,
                })
                .collect(),
            path: trajectory(&r.steps, tree),
            rows: tallest,
            max_step,
        });
    }
    let shares = counts
        .iter()
        .map(|c| {
            let total: usize = c.iter().sum();
            c.iter()
                .map(|&x| {
                    if total == 0 {
                        0.0
                    } else {
                        x as f64 / total as f64
                    }
                })
                .collect()
        })
        .collect();
    let labels = (0..bins)
        .map(|b| {
            format!(
                "{:.0}–{:.0}%",
                100.0 * b as f64 / bins as f64,
                100.0 * (b + 1) as f64 / bins as f64
            )
        })
        .collect();
    let teachers = names
        .iter()
        .enumerate()
        .map(|(i, name)| TeacherInfo {
            name: name.clone(),
            color: PALETTE[i % PALETTE.len()].to_string(),
            steps: steps_by[i],
            share: if steps_total == 0 {
                0.0
            } else {
                steps_by[i] as f64 / steps_total as f64
            },
            candidates: cands_by[i],
            answers: answers_by[i],
            rejected: rejected_by[i].clone(),
        })
        .collect();
    let correct = records.iter().filter(|r| r.correct).count();
    let mut methods: Vec<String> = records
        .iter()
        .map(|r| r.method.as_str().to_string())
        .collect();
    methods.dedup();
    methods.sort();
    methods.dedup();
    let mut pools: Vec<String> = records.iter().map(|r| r.config.pool.clone()).collect();
    pools.sort();
    pools.dedup();
    Ok(ReportData {
        source: source.to_string(),
        totals: Totals {
            problems: records.len(),
            correct,
            accuracy: correct as f64 / records.len().max(1) as f64,
            steps: steps_total,
            candidates: cands_total,
            seconds,
            methods,
            pools,
        },
        teachers,
        collab: Collab {
            labels,
            counts,
            shares,
        },
        problems,
    })
}

/// JSON that is safe inside `<script type="application/json">`: `<`, `>` and `&` (which occur
/// only inside JSON strings) become `\u003c` etc., so neither `</script>` nor `<!--` can appear;
/// U+2028/U+2029 are escaped too.
pub fn script_json<T: Serialize>(v: &T) -> Result<String> {
    let s = serde_json::to_string(v)?;
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

const TEMPLATE: &str = include_str!("report.html");
const DATA_MARK: &str = "/*CORD_DATA*/";

/// The whole HTML page for `data`.
pub fn render(data: &ReportData) -> Result<String> {
    let json = script_json(data)?;
    debug_assert_eq!(TEMPLATE.matches(DATA_MARK).count(), 1);
    Ok(TEMPLATE.replacen(DATA_MARK, &json, 1))
}

pub fn report(a: ReportArgs) -> Result<ExitCode> {
    let records = read_records(&a.records)?;
    let data = build(&records, &a.records.display().to_string(), a.bins)?;
    let html = render(&data)?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| a.records.with_extension("html"));
    if out == a.records {
        bail!("--output {} would replace the records", out.display());
    }
    std::fs::write(&out, html).with_context(|| format!("writing {}", out.display()))?;
    let t = &data.totals;
    println!(
        "{}: {} problems ({} correct), {} steps, {} candidates, {} teachers",
        out.display(),
        t.problems,
        t.correct,
        t.steps,
        t.candidates,
        data.teachers.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_tag() {
        let v = serde_json::json!({"t": "</script><!-- <script>alert(1)</script> & \u{2028}"});
        let s = script_json(&v).unwrap();
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }
}
