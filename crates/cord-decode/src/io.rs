//! Problems in (JSONL) and records out (JSONL, one whole record per line, resumable).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
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

/// One line of a problems file that could not be read as a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// A problems file read leniently: the good problems and the bad lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProblemsScan {
    pub problems: Vec<Problem>,
    pub bad: Vec<BadLine>,
}

impl ProblemsScan {
    /// The strict reading: every bad line is an error (all of them are listed), and a file
    /// without any problem is an error.
    pub fn into_strict(self, origin: &str) -> Result<Vec<Problem>> {
        let mut bad = self.bad;
        match bad.len() {
            0 => {}
            1 => {
                let b = bad.remove(0);
                return Err(Error::Input {
                    path: origin.to_string(),
                    line: b.line,
                    message: b.message,
                });
            }
            n => {
                return Err(Error::BadLines {
                    path: origin.to_string(),
                    count: n,
                    listing: list_bad_lines(&bad),
                });
            }
        }
        if self.problems.is_empty() {
            return Err(Error::EmptyInput {
                path: origin.to_string(),
            });
        }
        Ok(self.problems)
    }
}

/// `line 3: invalid JSON ...; line 9: ...`, at most 20 lines then a count.
pub fn list_bad_lines(bad: &[BadLine]) -> String {
    const SHOWN: usize = 20;
    let mut parts: Vec<String> = bad
        .iter()
        .take(SHOWN)
        .map(|b| format!("line {}: {}", b.line, b.message))
        .collect();
    if bad.len() > SHOWN {
        parts.push(format!("and {} more", bad.len() - SHOWN));
    }
    parts.join("; ")
}

/// Reads a problems file (JSONL). Any bad line is an error that lists every bad line.
pub fn read_problems(path: impl AsRef<Path>) -> Result<Vec<Problem>> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    scan_problems_file(path)?.into_strict(&origin)
}

/// Reads a problems file leniently: good problems and bad lines (invalid UTF-8 is a bad line).
pub fn scan_problems_file(path: impl AsRef<Path>) -> Result<ProblemsScan> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(scan_problems(&bytes))
}

/// Parses problems JSONL; `origin` names the source in errors. Blank lines are skipped; a bad
/// line (invalid JSON, missing or mistyped field, duplicate id) is an error, and with several
/// bad lines the error lists them all.
pub fn parse_problems(text: &str, origin: &str) -> Result<Vec<Problem>> {
    scan_problems(text.as_bytes()).into_strict(origin)
}

/// Reads every line of problems JSONL, never failing: each line is a problem, blank, or a
/// [`BadLine`]. A later line that repeats an id is a bad line naming the first one.
pub fn scan_problems(bytes: &[u8]) -> ProblemsScan {
    let mut scan = ProblemsScan::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match std::str::from_utf8(raw) {
            Ok(text) => parse_problem_line(text, line),
            Err(e) => Err(format!(
                "not valid UTF-8 (byte {} of the line)",
                e.valid_up_to() + 1
            )),
        };
        let problem = parsed.and_then(|p| match seen.get(&p.id) {
            Some(&first) => Err(format!("duplicate id {:?} (first on line {first})", p.id)),
            None => Ok(p),
        });
        match problem {
            Ok(p) => {
                seen.insert(p.id.clone(), line);
                scan.problems.push(p);
            }
            Err(message) => scan.bad.push(BadLine { line, message }),
        }
    }
    scan
}

fn parse_problem_line(raw: &str, line: usize) -> std::result::Result<Problem, String> {
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or_else(|| {
        format!(
            "expected a JSON object, found {}",
            match v {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )
    })?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => format!("line-{line}"),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`id` must be a non-empty string or a number, found {other}"
            ));
        }
    };
    let question = match QUESTION_KEYS
        .iter()
        .find_map(|k| obj.get(*k).map(|v| (*k, v)))
    {
        Some((_, Value::String(s))) if !s.trim().is_empty() => s.clone(),
        Some((k, _)) => return Err(format!("`{k}` must be a non-empty string")),
        None => return Err("missing `question` (or `problem` / `prompt`)".to_string()),
    };
    let answer = match ANSWER_KEYS
        .iter()
        .find_map(|k| obj.get(*k).map(|v| (*k, v)))
    {
        Some(("solution", Value::String(s))) => solution_answer(s).ok_or_else(|| {
            "`solution` has neither a `#### N` line nor a \\boxed{} answer".to_string()
        })?,
        Some((_, Value::String(s))) if !s.trim().is_empty() => s.trim().to_string(),
        Some((_, Value::Number(n))) => n.to_string(),
        Some((k, _)) => return Err(format!("`{k}` must be a non-empty string or a number")),
        None => {
            return Err("missing `answer` (or `gt` / `final_answer` / `solution`)".to_string());
        }
    };
    Ok(Problem {
        id,
        question,
        answer,
        line,
    })
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
    /// How the step ended: step, think, eos, step-cap, step-cap-mid (the cap cut mid-paragraph), budget, max-steps, no-candidates, stalled (every candidate rejected: closed as it stood), rollout...
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
    /// Candidate steps rejected by the filter (or dropped as empty), per teacher and reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, BTreeMap<String, u64>>,
    /// Beams whose every candidate was rejected and that were proposed for once more.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beams_resampled: u64,
    /// Beams dropped because every candidate was rejected again after that resample.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beams_dropped: u64,
    /// Answers written after lower-ranked finished trajectories because a higher-ranked one's
    /// answer did not verify (`search.verify_beams`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extra_answers: u64,
    /// Prompt tokens reused from prefix caches, as reported by the backend. It depends on what
    /// else was in flight, so like `seconds` it is left out with `record_timing = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens_reused: Option<u64>,
    /// Wall-clock seconds from start to finish (absent with `record_timing = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Normal form of `predicted` (`cord_verify::normalize`); absent in records written before
    /// it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_normalized: Option<String>,
    /// Whether `predicted` verifies against `answer` (`cord_verify::verify`).
    pub correct: bool,
    /// With `attempts > 1` (rejection sampling): the outcome of every attempt, in order; the
    /// record itself is the last one. Empty (absent) with a single attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptOutcome>,
    /// Predictive-perplexity score of the chosen trajectory.
    pub score: f64,
    pub forced_close: bool,
    /// The reasoning ended by itself: its last step closed it (`</think>`), ended with the
    /// teacher's EOS or stated the final answer; false when the search closed it (max steps,
    /// think budget, no candidates).
    #[serde(default)]
    pub natural_end: bool,
    /// Why no trajectory was written for this problem (every beam's candidates were rejected);
    /// such a record has no steps and no `messages` and must not be trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    pub answer_truncated: bool,
    /// `"<think>\n" + reasoning + "\n</think>\n\n" + final_answer`.
    pub response: String,
    pub messages: Vec<Message>,
    pub config: RecordConfig,
    pub stats: RecordStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<TreeEntry>>,
}

/// One attempt at a problem under rejection sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptOutcome {
    /// 1-based attempt number.
    pub attempt: usize,
    /// Run seed of the attempt (the configured seed + attempt - 1).
    pub seed: u64,
    pub predicted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_normalized: Option<String>,
    pub correct: bool,
    pub score: f64,
    /// Tokens the attempt generated (all teachers).
    pub tokens_generated: u64,
}

impl AttemptOutcome {
    /// The outcome of `record`, attempt number `attempt`.
    pub fn of(record: &Record, attempt: usize) -> Self {
        AttemptOutcome {
            attempt,
            seed: record.config.seed,
            predicted: record.predicted.clone(),
            predicted_normalized: record.predicted_normalized.clone(),
            correct: record.correct,
            score: record.score,
            tokens_generated: record.stats.tokens_generated.values().sum(),
        }
    }
}

/// Where the driver puts finished records.
pub trait RecordSink {
    fn write_record(&mut self, record: &Record) -> Result<()>;

    /// Makes every record written so far durable. The driver calls it after each round that
    /// wrote records, when it stops early, and once at the end of a run (also when nothing was
    /// written, so that a file sink exists afterwards).
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
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
    /// Bytes of a torn last line that will be cut away (when the first record is written).
    pub truncated_bytes: u64,
}

/// Appends records to a JSONL file.
///
/// **Crash safety.** Each record is serialized first and written as one whole line (record +
/// `\n`) with a single `write_all`; the driver calls [`RecordSink::sync`] (`fdatasync`) after
/// every round that wrote records. A process killed at any moment leaves complete lines plus at
/// most one torn last line, which `--resume` cuts away; a line that was complete stays
/// byte-identical. **Nothing is touched before the first write:** [`RecordWriter::open`] only
/// checks and reads, so a run that fails while loading models leaves an existing output (and a
/// missing one) exactly as it was; the file is created, truncated (`--overwrite`) or cut back to
/// its last complete record (`--resume`) when the first record is written or at the end of the
/// run.
#[derive(Debug)]
pub struct RecordWriter {
    file: Option<File>,
    path: PathBuf,
    /// Resume: keep the first `n` bytes and append after them. `None`: start an empty file.
    keep: Option<u64>,
}

impl RecordWriter {
    /// Checks `path` for output and, with `mode.resume`, reads the complete records there (a
    /// torn last line is noted, and cut away at the first write) and returns their ids;
    /// records with another fingerprint are an error unless `mode.force`. Changes nothing on
    /// disk.
    pub fn open(
        path: impl AsRef<Path>,
        mode: OutputMode,
        fingerprint: &str,
    ) -> Result<(Self, ResumeInfo)> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let bad = |message: String| Error::OutputPath {
            path: shown.clone(),
            message,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        match &meta {
            Some(m) if m.is_dir() => return Err(bad("it is a directory".into())),
            Some(m) if m.permissions().readonly() => {
                return Err(bad("the file is read-only".into()));
            }
            Some(_) => {}
            None => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                match std::fs::metadata(&parent) {
                    Ok(m) if m.is_dir() => {
                        if m.permissions().readonly() {
                            return Err(bad(format!(
                                "directory {} is read-only",
                                parent.display()
                            )));
                        }
                    }
                    Ok(_) => return Err(bad(format!("{} is not a directory", parent.display()))),
                    Err(_) => {
                        return Err(bad(format!(
                            "directory {} does not exist",
                            parent.display()
                        )));
                    }
                }
            }
        }
        let nonempty = meta.as_ref().is_some_and(|m| m.len() > 0);
        if mode.resume && nonempty {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let (info, good_end) = scan_existing(&bytes, &path, fingerprint, mode.force)?;
            let writer = RecordWriter {
                file: None,
                path,
                keep: Some(good_end as u64),
            };
            return Ok((writer, info));
        }
        if nonempty && !mode.overwrite && !mode.resume {
            return Err(Error::OutputExists { path: shown });
        }
        let writer = RecordWriter {
            file: None,
            path,
            keep: None,
        };
        Ok((writer, ResumeInfo::default()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file: created / truncated / cut back to its complete records on first use.
    fn file(&mut self) -> Result<&mut File> {
        if self.file.is_none() {
            let path = &self.path;
            let file = match self.keep {
                Some(keep) => {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| Error::io(path, e))?;
                    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
                    if len > keep {
                        tracing::warn!(
                            "{}: cutting away a torn last record ({} bytes)",
                            path.display(),
                            len - keep
                        );
                        f.set_len(keep).map_err(|e| Error::io(path, e))?;
                        f.sync_data().map_err(|e| Error::io(path, e))?;
                    }
                    f.seek(SeekFrom::Start(keep))
                        .map_err(|e| Error::io(path, e))?;
                    f
                }
                None => {
                    let f = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(path)
                        .map_err(|e| Error::io(path, e))?;
                    sync_parent_dir(path);
                    f
                }
            };
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

/// Makes a newly created file's directory entry durable (best effort: not every platform and
/// file system can sync a directory).
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl RecordSink for RecordWriter {
    fn write_record(&mut self, record: &Record) -> Result<()> {
        let mut buf = serde_json::to_vec(record).map_err(|e| Error::io(&self.path, e.into()))?;
        buf.push(b'\n');
        let path = self.path.clone();
        let file = self.file()?;
        file.write_all(&buf).map_err(|e| Error::io(&path, e))?;
        file.flush().map_err(|e| Error::io(&path, e))
    }

    fn sync(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.file()?.sync_data().map_err(|e| Error::io(&path, e))
    }
}

/// Reads existing output: (what is complete, byte length of the complete lines).
fn scan_existing(
    bytes: &[u8],
    path: &Path,
    fingerprint: &str,
    force: bool,
) -> Result<(ResumeInfo, usize)> {
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
                if !info.done.insert(id.clone()) {
                    return Err(Error::CorruptOutput {
                        path: path.display().to_string(),
                        line,
                        message: format!("a second record for id {id:?}"),
                    });
                }
                info.records += 1;
            }
            Err(message) if is_last => {
                tracing::warn!(
                    "{}:{line}: torn last record ({message}); it will be cut away",
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
    info.truncated_bytes = (bytes.len() - good_end) as u64;
    Ok((info, good_end))
}

/// `Ok(None)` for a blank line, else (id, config.pool).
fn parse_existing(text: &[u8]) -> std::result::Result<Option<(String, String)>, String> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let (id, pool, _) = parse_record_line(text)?;
    Ok(Some((id, pool)))
}

/// One record line as JSON with its `id` and `config.pool` fingerprint (what resuming and
/// merging key records by), or why it is not a record.
pub fn parse_record_line(text: &str) -> std::result::Result<(String, String, Value), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or("record has no string `id`")?
        .to_string();
    let pool = v
        .get("config")
        .and_then(|c| c.get("pool"))
        .and_then(Value::as_str)
        .ok_or("record has no `config.pool`")?
        .to_string();
    Ok((id, pool, v))
}
