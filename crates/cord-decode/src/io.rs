//! Problems in (JSONL) and records out (JSONL, one whole record per line, resumable).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Method;
use crate::error::{Error, Result};

/// One input problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub id: String,
    pub question: String,
    /// Ground-truth answer string (raw, O-15).
    pub answer: String,
    /// 1-based line in the input file.
    pub line: usize,
}

const QUESTION_KEYS: &[&str] = &["question", "problem", "prompt"];
const ANSWER_KEYS: &[&str] = &["answer", "gt", "final_answer", "solution"];

/// Reads a problems file (JSONL).
pub fn read_problems(path: impl AsRef<Path>) -> Result<Vec<Problem>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_problems(&text, &path.display().to_string())
}

/// Parses problems JSONL; `origin` names the source in errors. Blank lines are skipped.
pub fn parse_problems(text: &str, origin: &str) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |message: String| Error::Input {
            path: origin.to_string(),
            line,
            message,
        };
        let v: Value = serde_json::from_str(raw).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("expected a JSON object".to_string()))?;
        let id = match obj.get("id") {
            None | Some(Value::Null) => format!("line-{line}"),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(err(format!(
                    "`id` must be a non-empty string or a number, found {other}"
                )));
            }
        };
        let question = match QUESTION_KEYS
            .iter()
            .find_map(|k| obj.get(*k).map(|v| (*k, v)))
        {
            Some((_, Value::String(s))) if !s.trim().is_empty() => s.clone(),
            Some((k, _)) => return Err(err(format!("`{k}` must be a non-empty string"))),
            None => {
                return Err(err(
                    "missing `question` (or `problem` / `prompt`)".to_string()
                ));
            }
        };
        let answer = match ANSWER_KEYS
            .iter()
            .find_map(|k| obj.get(*k).map(|v| (*k, v)))
        {
            Some(("solution", Value::String(s))) => solution_answer(s).ok_or_else(|| {
                err("`solution` has neither a `#### N` line nor a \\boxed{} answer".to_string())
            })?,
            Some((_, Value::String(s))) if !s.trim().is_empty() => s.trim().to_string(),
            Some((_, Value::Number(n))) => n.to_string(),
            Some((k, _)) => {
                return Err(err(format!("`{k}` must be a non-empty string or a number")));
            }
            None => {
                return Err(err(
                    "missing `answer` (or `gt` / `final_answer` / `solution`)".to_string(),
                ));
            }
        };
        if let Some(&first) = seen.get(&id) {
            return Err(Error::DuplicateId {
                path: origin.to_string(),
                id,
                first,
                second: line,
            });
        }
        seen.insert(id.clone(), line);
        out.push(Problem {
            id,
            question,
            answer,
            line,
        });
    }
    if out.is_empty() {
        return Err(Error::EmptyInput {
            path: origin.to_string(),
        });
    }
    Ok(out)
}

/// The answer of a worked solution: the GSM8K `#### N` tail, else the last `\boxed{}`.
fn solution_answer(s: &str) -> Option<String> {
    if let Some(pos) = s.rfind("####") {
        let tail = s[pos + 4..].trim();
        let tail = tail.lines().next().unwrap_or("").trim();
        if !tail.is_empty() {
            return Some(tail.to_string());
        }
    }
    crate::answer::last_boxed(s)
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
}

/// One step of the chosen trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub index: usize,
    /// Header + body as appended to the reasoning.
    pub text: String,
    /// Proposer.
    pub teacher: String,
    /// Score of the prefix ending with this step (MCTS: mean reward Q of the node).
    pub score: f64,
    /// Mean log-prob of the answer tokens (absent where the step itself was not scored).
    pub mean_logprob: Option<f64>,
    /// Number of answer tokens (absent for cross-teacher scoring and unscored steps).
    pub m: Option<usize>,
    /// Tokens generated for this step.
    pub tokens: usize,
    /// Candidates that competed at this step (after merging duplicates).
    pub candidates: usize,
    /// How the step ended: step, think, eos, step-cap, budget, max-steps, no-candidates, rollout...
    pub finish: String,
    /// Other teachers that proposed the identical text (O-10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_proposed_by: Vec<String>,
    /// Per-scorer values (cross-teacher scoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scorers: Vec<ScorerValue>,
    /// MCTS: visit count of the committed node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits: Option<u32>,
}

/// One scorer's value for a candidate (section 13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerValue {
    pub scorer: String,
    pub mean_logprob: f64,
    pub m: usize,
}

/// A chat message of the SFT record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Settings the record was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordConfig {
    pub beam: usize,
    pub think_budget: usize,
    pub answer_budget: usize,
    pub step_cap: usize,
    pub max_steps: usize,
    pub seed: u64,
    pub method: Method,
    pub step_unit: String,
    pub scorer: String,
    /// Fingerprint of the pool and search settings ([`crate::config::PoolConfig::fingerprint`]).
    pub pool: String,
}

/// Cost of one problem.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RecordStats {
    /// Generated tokens per teacher name (steps, resamples, rollouts and the answer).
    pub tokens_generated: BTreeMap<String, u64>,
    /// Answer tokens scored (sum of M over score requests).
    pub tokens_scored: u64,
    pub score_requests: u64,
    pub propose_requests: u64,
    /// Prompt tokens reused from prefix caches, as reported by the backend. It depends on what
    /// else was in flight, so like `seconds` it is left out with `record_timing = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens_reused: Option<u64>,
    /// Wall-clock seconds from start to finish (absent with `record_timing = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// One candidate in the search tree (`save_tree`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub step: usize,
    /// Candidate id (unique within the problem).
    pub id: u64,
    /// Parent beam / node id (`None` for the root).
    pub parent: Option<u64>,
    /// Rank of the parent beam at this step (CoRD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_rank: Option<usize>,
    pub teacher: String,
    pub text: String,
    pub score: Option<f64>,
    pub kept: bool,
    pub finished: bool,
    /// empty-dropped, duplicate, or why the candidate is not ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scorers: Vec<ScorerValue>,
}

/// The output record of one problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub question: String,
    /// Ground truth.
    pub answer: String,
    pub method: Method,
    pub steps: Vec<StepRecord>,
    /// Text generated after `</think>`.
    pub final_answer: String,
    pub answer_teacher: String,
    /// Answer extracted from `final_answer`.
    pub predicted: Option<String>,
    pub correct: bool,
    /// Predictive-perplexity score of the chosen trajectory.
    pub score: f64,
    pub forced_close: bool,
    pub answer_truncated: bool,
    /// `"<think>\n" + reasoning + "\n</think>\n\n" + final_answer`.
    pub response: String,
    pub messages: Vec<Message>,
    pub config: RecordConfig,
    pub stats: RecordStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<TreeEntry>>,
}

/// Where the driver puts finished records.
pub trait RecordSink {
    fn write_record(&mut self, record: &Record) -> Result<()>;
}

impl RecordSink for Vec<Record> {
    fn write_record(&mut self, record: &Record) -> Result<()> {
        self.push(record.clone());
        Ok(())
    }
}

/// How to open an output file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputMode {
    /// Keep complete records and skip their ids.
    pub resume: bool,
    /// Replace an existing file.
    pub overwrite: bool,
    /// Resume even if the records were written with another configuration.
    pub force: bool,
}

/// What resuming found in the existing output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeInfo {
    /// Ids of complete records.
    pub done: HashSet<String>,
    /// Complete records found.
    pub records: usize,
    /// Bytes of a torn last line that were cut away.
    pub truncated_bytes: u64,
}

/// Appends records to a JSONL file, each with one `write_all` + flush.
#[derive(Debug)]
pub struct RecordWriter {
    file: File,
    path: PathBuf,
}

impl RecordWriter {
    /// Opens `path` for output. With `mode.resume` the complete records are kept (a torn last
    /// line is truncated away) and their ids returned; records with another fingerprint are an
    /// error unless `mode.force`.
    pub fn open(
        path: impl AsRef<Path>,
        mode: OutputMode,
        fingerprint: &str,
    ) -> Result<(Self, ResumeInfo)> {
        let path = path.as_ref().to_path_buf();
        let exists_nonempty = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if mode.resume && exists_nonempty {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let info = scan_existing(&mut file, &path, fingerprint, mode.force)?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(&path, e))?;
            return Ok((RecordWriter { file, path }, info));
        }
        if exists_nonempty && !mode.overwrite && !mode.resume {
            return Err(Error::OutputExists {
                path: path.display().to_string(),
            });
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok((RecordWriter { file, path }, ResumeInfo::default()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RecordSink for RecordWriter {
    fn write_record(&mut self, record: &Record) -> Result<()> {
        let mut buf = serde_json::to_vec(record).map_err(|e| Error::io(&self.path, e.into()))?;
        buf.push(b'\n');
        self.file
            .write_all(&buf)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

fn scan_existing(
    file: &mut File,
    path: &Path,
    fingerprint: &str,
    force: bool,
) -> Result<ResumeInfo> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut info = ResumeInfo::default();
    let mut pos = 0usize;
    let mut line = 0usize;
    let mut good_end = 0usize;
    while pos < bytes.len() {
        line += 1;
        let nl = bytes[pos..].iter().position(|&b| b == b'\n');
        let (end, terminated) = match nl {
            Some(i) => (pos + i, true),
            None => (bytes.len(), false),
        };
        let is_last = !terminated || end + 1 == bytes.len();
        let text = &bytes[pos..end];
        let parsed = parse_existing(text);
        match parsed {
            Ok(_) if !terminated => break, // complete JSON but torn before its newline
            Ok(None) => {}                 // blank line
            Ok(Some((id, pool))) => {
                if pool != fingerprint && !force {
                    return Err(Error::ForeignOutput {
                        path: path.display().to_string(),
                        line,
                        found: pool,
                        expected: fingerprint.to_string(),
                    });
                }
                info.done.insert(id);
                info.records += 1;
            }
            Err(message) if is_last => {
                tracing::warn!(
                    "{}:{line}: torn last record ({message}); truncating it",
                    path.display()
                );
                break;
            }
            Err(message) => {
                return Err(Error::CorruptOutput {
                    path: path.display().to_string(),
                    line,
                    message,
                });
            }
        }
        pos = end + 1;
        good_end = pos.min(bytes.len());
    }
    if good_end < bytes.len() {
        info.truncated_bytes = (bytes.len() - good_end) as u64;
        file.set_len(good_end as u64)
            .map_err(|e| Error::io(path, e))?;
        file.sync_data().map_err(|e| Error::io(path, e))?;
    }
    Ok(info)
}

/// `Ok(None)` for a blank line, else (id, config.pool).
fn parse_existing(text: &[u8]) -> std::result::Result<Option<(String, String)>, String> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or("record has no string `id`")?;
    let pool = v
        .get("config")
        .and_then(|c| c.get("pool"))
        .and_then(Value::as_str)
        .ok_or("record has no `config.pool`")?;
    Ok(Some((id.to_string(), pool.to_string())))
}
