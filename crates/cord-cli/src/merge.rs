//! `cord merge`: joins the outputs of `cord synth --shard I/N` runs into one records file.
//!
//! - every record must carry the same `config.pool` fingerprint (the one `--resume` checks):
//!   files from different pools or methods are refused;
//! - each id is written once; a duplicate that equals the first copy apart from `stats` (timing
//!   and prefix-cache reuse depend on what else was in flight) is dropped, any other duplicate is
//!   an error that names both places;
//! - a last line that does not parse (a shard killed mid-write) is skipped and reported; a bad
//!   line anywhere else is an error;
//! - with `--input`, records come out in input order, ids not in the input are an error, and
//!   missing ids are listed (an error unless `--allow-missing`). Without it, the order is the
//!   order of first appearance. Records are copied byte for byte.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use cord_decode::io::{parse_record_line, read_problems};
use serde_json::Value;

#[derive(Args)]
pub struct MergeArgs {
    /// Shard outputs (records JSONL), e.g. out.shard-*.jsonl.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Merged records.
    #[arg(long)]
    output: PathBuf,
    /// The problems file the shards were run on: output in its order, missing ids reported.
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: write the merge even when some ids have no record (still reported).
    #[arg(long, requires = "input")]
    allow_missing: bool,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
}

/// One source file's contents.
pub struct Source {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What a merge produced.
#[derive(Debug, Default)]
pub struct Merged {
    /// Record lines (no newline), in output order.
    pub lines: Vec<String>,
    /// Ids, parallel to `lines`.
    pub ids: Vec<String>,
    /// The common fingerprint (None when there were no records).
    pub fingerprint: Option<String>,
    /// Torn last lines that were skipped: `file:line (N bytes): parse error`.
    pub torn: Vec<String>,
    /// Identical duplicates dropped.
    pub duplicates: usize,
    /// Input ids without a record, in input order (only with an input order).
    pub missing: Vec<String>,
    /// Records with `correct: true`.
    pub correct: usize,
}

struct Seen {
    at: String,
    value: Value,
    line: String,
}

fn without_stats(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("stats");
    }
    v
}

/// Merges the record lines of `sources`; with `order` (input ids), in that order.
pub fn merge(sources: &[Source], order: Option<&[String]>) -> Result<Merged> {
    let mut out = Merged::default();
    let mut fp_at = String::new();
    let mut first: Vec<String> = Vec::new();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut conflicts: Vec<String> = Vec::new();
    for src in sources {
        let text = String::from_utf8_lossy(&src.bytes);
        let segs: Vec<&str> = text.split('\n').collect();
        // Index of the last segment with content: only that one may be torn.
        let last = segs.iter().rposition(|s| !s.trim().is_empty());
        for (i, raw) in segs.iter().enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", src.name, i + 1);
            let parsed = parse_record_line(raw);
            let (id, pool, value) = match parsed {
                Ok(x) => x,
                Err(e) if Some(i) == last => {
                    out.torn.push(format!("{at} ({} bytes): {e}", raw.len()));
                    continue;
                }
                Err(e) => bail!("{at}: not a cord record: {e}"),
            };
            match &out.fingerprint {
                None => {
                    out.fingerprint = Some(pool);
                    fp_at = at.clone();
                }
                Some(fp) if *fp != pool => bail!(
                    "{at}: record of another run (pool fingerprint {pool}, but {fp_at} has {fp}); \
                     merge only the shards of one `cord synth` run"
                ),
                Some(_) => {}
            }
            if let Some(prev) = seen.get(&id) {
                if without_stats(&prev.value) == without_stats(&value) {
                    out.duplicates += 1;
                } else {
                    conflicts.push(format!("`{id}` at {} and {at}", prev.at));
                }
                continue;
            }
            first.push(id.clone());
            seen.insert(
                id,
                Seen {
                    at,
                    value,
                    line: raw.to_string(),
                },
            );
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "{} id(s) have different records in different places: {}",
            conflicts.len(),
            list(&conflicts)
        );
    }
    let ids: Vec<String> = match order {
        None => first,
        Some(order) => {
            let index: HashMap<&str, usize> = order
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            let extra: Vec<String> = first
                .iter()
                .filter(|id| !index.contains_key(id.as_str()))
                .map(|id| format!("`{id}` ({})", seen[id.as_str()].at))
                .collect();
            if !extra.is_empty() {
                bail!(
                    "{} record(s) have ids that are not in the input file: {}",
                    extra.len(),
                    list(&extra)
                );
            }
            out.missing = order
                .iter()
                .filter(|id| !seen.contains_key(id.as_str()))
                .cloned()
                .collect();
            order
                .iter()
                .filter(|id| seen.contains_key(id.as_str()))
                .cloned()
                .collect()
        }
    };
    for id in ids {
        let s = seen.remove(&id).expect("id seen");
        if s.value.get("correct").and_then(Value::as_bool) == Some(true) {
            out.correct += 1;
        }
        out.lines.push(s.line);
        out.ids.push(id);
    }
    Ok(out)
}

/// The first 10 items, comma-separated, then how many more.
fn list(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > 10 {
        s.push_str(&format!(" ... and {} more", items.len() - 10));
    }
    s
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub fn merge_cmd(a: MergeArgs) -> Result<ExitCode> {
    for f in &a.files {
        if same_file(f, &a.output) {
            bail!(
                "--output {} is also one of the files to merge",
                a.output.display()
            );
        }
    }
    let exists = std::fs::metadata(&a.output)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if exists && !a.overwrite {
        bail!(
            "{} exists; pass --overwrite to replace it",
            a.output.display()
        );
    }
    let mut sources = Vec::new();
    for f in &a.files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        sources.push(Source {
            name: f.display().to_string(),
            bytes,
        });
    }
    let order: Option<Vec<String>> = match &a.input {
        Some(p) => Some(read_problems(p)?.into_iter().map(|p| p.id).collect()),
        None => None,
    };
    let m = merge(&sources, order.as_deref())?;
    for t in &m.torn {
        eprintln!("warning: skipped a torn last line: {t}");
    }
    if m.duplicates > 0 {
        eprintln!("{} identical duplicate record(s) dropped", m.duplicates);
    }
    if !m.missing.is_empty() {
        let total = order.as_ref().map_or(0, Vec::len);
        let msg = format!(
            "{} of {total} problems in {} have no record: {}",
            m.missing.len(),
            a.input.as_deref().unwrap_or(Path::new("?")).display(),
            list(&m.missing)
        );
        if !a.allow_missing {
            bail!(
                "{msg}\nrerun the shards that hold them (`cord synth --shard I/N --resume`), \
                 or pass --allow-missing to merge what is there"
            );
        }
        eprintln!("warning: {msg}");
    }
    if m.lines.is_empty() {
        bail!("no records found in the {} file(s)", a.files.len());
    }
    let tmp = a.output.with_extension("merge-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for l in &m.lines {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, &a.output)
    };
    write().with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "merged {} records from {} file(s) into {} ({} correct, {:.1}%; pool {})",
        m.lines.len(),
        a.files.len(),
        a.output.display(),
        m.correct,
        100.0 * m.correct as f64 / m.lines.len() as f64,
        m.fingerprint.as_deref().unwrap_or("-")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, pool: &str, correct: bool, secs: f64) -> String {
        serde_json::json!({
            "id": id, "correct": correct, "steps": [{"text": format!("step of {id}")}],
            "config": {"pool": pool}, "stats": {"seconds": secs}
        })
        .to_string()
    }

    fn src(name: &str, lines: &[String], tail: &str) -> Source {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(tail);
        Source {
            name: name.into(),
            bytes: s.into_bytes(),
        }
    }

    #[test]
    fn joins_in_input_order_and_reports_missing() {
        let a = src(
            "a",
            &[rec("p3", "fp", true, 1.0), rec("p1", "fp", false, 1.0)],
            "",
        );
        let b = src("b", &[rec("p2", "fp", true, 2.0)], "");
        let order: Vec<String> = ["p1", "p2", "p3", "p4"].map(String::from).to_vec();
        let m = merge(&[a, b], Some(&order)).unwrap();
        assert_eq!(m.ids, ["p1", "p2", "p3"]);
        assert_eq!(m.missing, ["p4"]);
        assert_eq!(m.correct, 2);
        assert_eq!(m.lines[0], rec("p1", "fp", false, 1.0));
        assert_eq!(m.fingerprint.as_deref(), Some("fp"));
    }

    #[test]
    fn first_appearance_order_without_input() {
        let a = src("a", &[rec("z", "fp", true, 1.0)], "");
        let b = src("b", &[rec("a", "fp", true, 1.0)], "");
        assert_eq!(merge(&[a, b], None).unwrap().ids, ["z", "a"]);
    }

    #[test]
    fn duplicates() {
        // Same record apart from timing: dropped.
        let a = src("a", &[rec("p1", "fp", true, 1.0)], "");
        let b = src("b", &[rec("p1", "fp", true, 9.0)], "");
        let m = merge(&[a, b], None).unwrap();
        assert_eq!((m.ids.len(), m.duplicates), (1, 1));
        // Different content: an error naming both places.
        let a = src("a", &[rec("p1", "fp", true, 1.0)], "");
        let b = src(
            "b",
            &[rec("p0", "fp", true, 1.0), rec("p1", "fp", false, 1.0)],
            "",
        );
        let e = merge(&[a, b], None).unwrap_err().to_string();
        assert!(e.contains("`p1` at a:1 and b:2"), "{e}");
    }

    #[test]
    fn refuses_other_runs() {
        let a = src("a", &[rec("p1", "fp1", true, 1.0)], "");
        let b = src("b", &[rec("p2", "fp2", true, 1.0)], "");
        let e = merge(&[a, b], None).unwrap_err().to_string();
        assert!(
            e.contains("b:1") && e.contains("fp2") && e.contains("fp1"),
            "{e}"
        );
    }

    #[test]
    fn torn_last_line_is_skipped_but_not_a_torn_middle() {
        let full = rec("p2", "fp", true, 1.0);
        let torn = &full[..full.len() / 2];
        let a = src("a", &[rec("p1", "fp", true, 1.0)], torn);
        let m = merge(&[a], None).unwrap();
        assert_eq!(m.ids, ["p1"]);
        assert_eq!(m.torn.len(), 1);
        assert!(m.torn[0].starts_with("a:2 ("), "{:?}", m.torn);
        // A complete last record without its newline counts.
        let a = src("a", &[rec("p1", "fp", true, 1.0)], &full);
        assert_eq!(merge(&[a], None).unwrap().ids, ["p1", "p2"]);
        // Garbage before the last line is an error.
        let a = src("a", &[torn.to_string(), rec("p1", "fp", true, 1.0)], "");
        let e = merge(&[a], None).unwrap_err().to_string();
        assert!(e.starts_with("a:1: not a cord record"), "{e}");
    }

    #[test]
    fn ids_outside_the_input_are_an_error() {
        let a = src("a", &[rec("p9", "fp", true, 1.0)], "");
        let order = vec!["p1".to_string()];
        let e = merge(&[a], Some(&order)).unwrap_err().to_string();
        assert!(e.contains("`p9` (a:1)"), "{e}");
    }
}
