//! The pool file: search settings, the scorer and the teachers (TOML).
//!
//! Every choice the code makes in reading the method (O-1..O-26, listed in docs/method.md) is the
//! default of a key here, so that other readings can be tried. Unknown keys are errors (the TOML error names them), and
//! values out of range are reported with the key that holds them.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hygiene::FilterConfig;
use crate::seed::fnv1a64;

/// Default scoring suffix (paper, section 5).
pub const DEFAULT_SUFFIX: &str = " </think> The final answer is ";

/// The search algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Collaborative step-wise beam search (the paper's method).
    #[default]
    Cord,
    /// CoRD with beam width 1.
    Greedy,
    /// Best-of-N whole trajectories per teacher (S1 / LIMO recipe).
    Curation,
    /// Monte-Carlo tree search baseline (O-22).
    Mcts,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Cord => "cord",
            Method::Greedy => "greedy",
            Method::Curation => "curation",
            Method::Mcts => "mcts",
        }
    }
}

/// How the reasoning is split into steps (section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum StepUnit {
    /// `### Step {t}.` headers written by the orchestrator (the paper's choice).
    #[default]
    PromptGuided,
    /// A new step at every blank line (`\n\n`).
    LineBreak,
    /// A new step at a reflection cue phrase; the cue starts the next step.
    CuePhrase,
}

impl StepUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            StepUnit::PromptGuided => "prompt-guided",
            StepUnit::LineBreak => "line-break",
            StepUnit::CuePhrase => "cue-phrase",
        }
    }
}

/// Who scores candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ScorerKind {
    /// One meta-prover scores every candidate (the paper).
    #[default]
    MetaProver,
    /// Every teacher scores (section 13); aggregate exp(mean of per-scorer mean log-probs).
    CrossTeacher,
}

impl ScorerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScorerKind::MetaProver => "meta-prover",
            ScorerKind::CrossTeacher => "cross-teacher",
        }
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `[search]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    pub method: Method,
    /// B (paper: 4). Greedy always uses 1.
    pub beam_width: usize,
    /// Reasoning tokens inside `<think>`, in the proposer's tokenizer (paper: 16384, O-5).
    pub think_budget: usize,
    /// Tokens of the final answer after `</think>` (paper: 4096).
    pub answer_budget: usize,
    /// Per-step cap of new tokens (O-4: 1024).
    pub max_step_tokens: usize,
    pub step_unit: StepUnit,
    /// Searches run at once by the driver (does not change the output).
    pub problems_in_flight: usize,
    /// Run seed, mixed into every request seed (O-6).
    pub seed: u64,
    /// Safety cap on steps (O-13: 512).
    pub max_steps: usize,
    /// Curation: trajectories per teacher (N); default = beam_width.
    pub curation_samples: Option<usize>,
    /// Curation: prefill `### Step 1.` like CoRD (O-23) or use the plain prompt.
    pub curation_step_prefill: bool,
    /// MCTS: simulations per decision (O-22: 4).
    pub mcts_simulations: usize,
    /// MCTS: UCB1 exploration constant (O-22: 1.0).
    pub mcts_c: f64,
    /// Merge candidates with identical reasoning text (O-10).
    pub dedupe: bool,
    /// Resample an empty step once before dropping it (O-11).
    pub resample_empty: bool,
    /// Append "." to the ground truth when scoring (O-15).
    pub score_period: bool,
    /// Do not write records whose answer is wrong (O-20: off).
    pub drop_incorrect: bool,
    /// Rejection sampling: a problem whose answer does not verify runs again from scratch with
    /// the next run seed, up to this many attempts in all (default 1: no retry). Left out of
    /// the fingerprint when 1, so pools without it keep their fingerprint.
    #[serde(skip_serializing_if = "is_one")]
    pub attempts: usize,
    /// Default for teachers' `prefill_think`: the assistant prefill starts with `<think>\n`.
    pub prefill_think: bool,
    /// Write the whole candidate tree into each record.
    pub save_tree: bool,
    /// Write wall-clock seconds into records (the only field that varies between equal runs).
    pub record_timing: bool,
    /// Text the orchestrator writes after `</think>` before the answering teacher continues
    /// (default empty: the teacher writes the whole answer, as in the paper). Small
    /// non-reasoning models tend to comment on their solution instead of stating the result;
    /// `"The final answer is "` (the scoring template's wording) makes them state it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub answer_prefix: String,
    /// Stop strings of the final answer (default none: the answering teacher writes until its
    /// end of turn or `answer_budget`, O-18). A non-reasoning teacher started with
    /// `answer_prefix` may state the answer and run on into a new `### Step`; `["### Step"]`
    /// ends the answer there. The stop string is not kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answer_stop: Vec<String>,
    /// End a trajectory when a step states the final answer ("the final answer is ..." or a
    /// `\boxed{}`): the step is cut after that line and the reasoning is closed there, instead
    /// of the search asking for more steps up to `max_steps`.
    pub end_on_answer: bool,
    /// CoRD: from step 2 on, every live beam also competes as itself closed (`</think>` after
    /// its steps), with the score it already has, so a trajectory ends when every continuation
    /// would make the answer less predictable than stopping (finish `score-close`). Teachers
    /// that never write `</think>` (non-reasoning models) otherwise run to `max_steps`.
    pub close_candidate: bool,
    /// With `close_candidate`: only a beam scoring at least this much may close itself. The
    /// score keeps a step that says nothing at the answer's question-only prior and lowers it
    /// after an intermediate result, so without a floor a beam would close after its first
    /// real step; 0.5 means the meta-prover finds the answer more likely than not.
    pub close_min_score: f64,
    /// CoRD: when the answer after the best finished trajectory does not verify against the
    /// problem's known answer, the next finished trajectory (by score) is answered, and so on;
    /// the record keeps the first whose answer verifies, else the best's. Each trajectory is
    /// answered by its own last-selected teacher, so the answer always follows the reasoning
    /// it is written after. Costs one answer per extra trajectory, only for problems whose
    /// best answer is wrong.
    pub verify_beams: bool,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            method: Method::Cord,
            beam_width: 4,
            think_budget: 16384,
            answer_budget: 4096,
            max_step_tokens: 1024,
            step_unit: StepUnit::PromptGuided,
            problems_in_flight: 16,
            seed: 0,
            max_steps: 512,
            curation_samples: None,
            curation_step_prefill: true,
            mcts_simulations: 4,
            mcts_c: 1.0,
            dedupe: true,
            resample_empty: true,
            score_period: true,
            drop_incorrect: false,
            attempts: 1,
            prefill_think: true,
            save_tree: false,
            record_timing: true,
            answer_prefix: String::new(),
            answer_stop: Vec::new(),
            end_on_answer: true,
            close_candidate: true,
            close_min_score: 0.5,
            verify_beams: true,
        }
    }
}

impl SearchConfig {
    /// The beam width actually used (1 for greedy).
    pub fn effective_beam(&self) -> usize {
        if self.method == Method::Greedy {
            1
        } else {
            self.beam_width
        }
    }

    /// N of curation.
    pub fn effective_curation_samples(&self) -> usize {
        self.curation_samples.unwrap_or(self.beam_width)
    }
}

/// `[scorer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    pub kind: ScorerKind,
    /// A teacher's name (its weights and KV are shared, O-26) or a model spec (HF id, local
    /// directory, .gguf path) of a separate scoring model. Required for the meta-prover.
    pub model: Option<String>,
    /// Cross-teacher: leave out the proposer of the candidate.
    pub exclude_proposer: bool,
    /// Cross-teacher: also score with `model` when it is not one of the teachers.
    pub include_model: bool,
    /// Text between the reasoning and the ground truth.
    pub suffix: String,
    /// System prompt of a separate scoring model (a teacher scorer uses the teacher's own).
    pub system_prompt: Option<String>,
    /// Device of a separate scoring model.
    pub device: Option<String>,
    /// Dtype of a separate scoring model.
    pub dtype: Option<String>,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        ScorerConfig {
            kind: ScorerKind::MetaProver,
            model: None,
            exclude_proposer: false,
            include_model: false,
            suffix: DEFAULT_SUFFIX.to_string(),
            system_prompt: None,
            device: None,
            dtype: None,
        }
    }
}

/// One `[[teacher]]`: a model plus its sampling settings. Several teachers may share a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    pub name: String,
    /// HF id, local directory or .gguf path.
    pub model: String,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f64>,
    /// Overrides the model's recommended system prompt; `""` means none.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Overrides `search.max_step_tokens` for this teacher.
    #[serde(default)]
    pub max_step_tokens: Option<usize>,
    /// Whether this model's assistant prefill starts with `<think>\n` (default `search.prefill_think`).
    #[serde(default)]
    pub prefill_think: Option<bool>,
}

fn default_dtype() -> String {
    "bf16".to_string()
}
fn default_temperature() -> f64 {
    0.6
}
fn default_top_p() -> f64 {
    0.95
}

/// The whole pool file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub scorer: ScorerConfig,
    #[serde(default, rename = "teacher")]
    pub teachers: Vec<TeacherConfig>,
    /// Candidate hygiene (junk steps rejected before scoring).
    #[serde(default)]
    pub filter: FilterConfig,
}

/// Where a scorer's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ScorerModel {
    /// The model of teacher `k` (weights and KV shared with it, O-26).
    Teacher(usize),
    /// A separate model spec.
    Model(String),
}

/// One scorer, in the order the backend's scorer indices follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScorerSpec {
    pub name: String,
    pub model: ScorerModel,
}

/// `--flags` of the CLI that override the pool file. `None` keeps the file's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchOverrides {
    pub method: Option<Method>,
    pub beam_width: Option<usize>,
    pub think_budget: Option<usize>,
    pub answer_budget: Option<usize>,
    pub max_step_tokens: Option<usize>,
    pub step_unit: Option<StepUnit>,
    pub problems_in_flight: Option<usize>,
    pub seed: Option<u64>,
    pub max_steps: Option<usize>,
    pub curation_samples: Option<usize>,
    pub mcts_simulations: Option<usize>,
    pub mcts_c: Option<f64>,
    pub dedupe: Option<bool>,
    pub drop_incorrect: Option<bool>,
    pub attempts: Option<usize>,
    pub save_tree: Option<bool>,
    pub record_timing: Option<bool>,
    pub scorer_kind: Option<ScorerKind>,
    pub scorer_model: Option<String>,
    /// `Some(false)`: `--no-filter`.
    pub filter: Option<bool>,
}

const KNOWN_DTYPES: &[&str] = &["bf16", "f16", "f32", "auto"];

fn looks_like_name(s: &str) -> bool {
    !s.contains('/')
        && !s.contains('\\')
        && !s.ends_with(".gguf")
        && !s.starts_with('.')
        && !Path::new(s).exists()
}

impl PoolConfig {
    /// Reads and validates a pool file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates pool TOML; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let pool: PoolConfig = toml::from_str(text).map_err(|e| Error::ConfigParse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        pool.validate()?;
        Ok(pool)
    }

    /// Applies command-line overrides, then validates again.
    pub fn apply_overrides(&mut self, o: &SearchOverrides) -> Result<()> {
        let s = &mut self.search;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f.clone() { s.$f = v; } )* };
        }
        set!(
            method,
            beam_width,
            think_budget,
            answer_budget,
            max_step_tokens,
            step_unit,
            problems_in_flight,
            seed,
            max_steps,
            mcts_simulations,
            mcts_c,
            dedupe,
            drop_incorrect,
            attempts,
            save_tree,
            record_timing
        );
        if let Some(n) = o.curation_samples {
            s.curation_samples = Some(n);
        }
        if let Some(k) = o.scorer_kind {
            self.scorer.kind = k;
        }
        if let Some(m) = &o.scorer_model {
            self.scorer.model = Some(m.clone());
        }
        if let Some(f) = o.filter {
            self.filter.enabled = f;
        }
        self.validate()
    }

    /// Index of the teacher called `name`.
    pub fn teacher_index(&self, name: &str) -> Option<usize> {
        self.teachers.iter().position(|t| t.name == name)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let s = &self.search;
        let positive = |key: &str, v: usize| -> Result<()> {
            if v == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("search.beam_width", s.beam_width)?;
        positive("search.think_budget", s.think_budget)?;
        positive("search.answer_budget", s.answer_budget)?;
        positive("search.max_step_tokens", s.max_step_tokens)?;
        positive("search.problems_in_flight", s.problems_in_flight)?;
        positive("search.max_steps", s.max_steps)?;
        positive("search.mcts_simulations", s.mcts_simulations)?;
        positive("search.attempts", s.attempts)?;
        if let Some(n) = s.curation_samples {
            positive("search.curation_samples", n)?;
        }
        self.filter.validate()?;
        if !(0.0..=1.0).contains(&s.close_min_score) {
            return Err(Error::config(
                "search.close_min_score",
                "must be in [0, 1] (a score is exp(mean log-prob))",
            ));
        }
        if s.max_step_tokens > s.think_budget {
            return Err(Error::config(
                "search.max_step_tokens",
                format!(
                    "{} is larger than search.think_budget = {}",
                    s.max_step_tokens, s.think_budget
                ),
            ));
        }
        if !s.mcts_c.is_finite() || s.mcts_c < 0.0 {
            return Err(Error::config(
                "search.mcts_c",
                "must be a finite number >= 0",
            ));
        }
        if self.teachers.is_empty() {
            return Err(Error::config(
                "teacher",
                "the pool needs at least one [[teacher]]",
            ));
        }
        let mut names = HashSet::new();
        for (i, t) in self.teachers.iter().enumerate() {
            let key = |f: &str| format!("teacher[{i}].{f}");
            if t.name.trim().is_empty() {
                return Err(Error::config(key("name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(Error::config(
                    key("name"),
                    format!("teacher name {:?} is used twice", t.name),
                ));
            }
            if t.model.trim().is_empty() {
                return Err(Error::config(key("model"), "must not be empty"));
            }
            if !KNOWN_DTYPES.contains(&t.dtype.as_str()) {
                return Err(Error::config(
                    key("dtype"),
                    format!("{:?} is not one of {}", t.dtype, KNOWN_DTYPES.join(", ")),
                ));
            }
            if !t.temperature.is_finite() || t.temperature < 0.0 {
                return Err(Error::config(
                    key("temperature"),
                    "must be a finite number >= 0",
                ));
            }
            if !(t.top_p > 0.0 && t.top_p <= 1.0) {
                return Err(Error::config(key("top_p"), "must be in (0, 1]"));
            }
            if let Some(0) = t.top_k {
                return Err(Error::config(
                    key("top_k"),
                    "must be at least 1 (omit it to turn top-k off)",
                ));
            }
            if let Some(p) = t.min_p
                && !(0.0..=1.0).contains(&p)
            {
                return Err(Error::config(key("min_p"), "must be in [0, 1]"));
            }
            if let Some(c) = t.max_step_tokens {
                if c == 0 {
                    return Err(Error::config(key("max_step_tokens"), "must be at least 1"));
                }
                if c > s.think_budget {
                    return Err(Error::config(
                        key("max_step_tokens"),
                        format!(
                            "{c} is larger than search.think_budget = {}",
                            s.think_budget
                        ),
                    ));
                }
            }
        }
        if let Some(d) = &self.scorer.dtype
            && !KNOWN_DTYPES.contains(&d.as_str())
        {
            return Err(Error::config(
                "scorer.dtype",
                format!("{d:?} is not one of {}", KNOWN_DTYPES.join(", ")),
            ));
        }
        match (&self.scorer.model, self.scorer.kind) {
            (None, ScorerKind::MetaProver) => {
                return Err(Error::config(
                    "scorer.model",
                    "the meta-prover needs a model: a teacher's name or a model spec",
                ));
            }
            (None, ScorerKind::CrossTeacher) if self.scorer.include_model => {
                return Err(Error::config(
                    "scorer.model",
                    "scorer.include_model = true needs a model",
                ));
            }
            (Some(m), _) => {
                if m.trim().is_empty() {
                    return Err(Error::config("scorer.model", "must not be empty"));
                }
                if self.teacher_index(m).is_none() && looks_like_name(m) {
                    let names: Vec<&str> = self.teachers.iter().map(|t| t.name.as_str()).collect();
                    return Err(Error::config(
                        "scorer.model",
                        format!(
                            "{m:?} names no teacher (teachers: {}); a separate model must be an HF id (org/name), a directory or a .gguf path",
                            names.join(", ")
                        ),
                    ));
                }
            }
            _ => {}
        }
        if self.scorer.kind == ScorerKind::CrossTeacher
            && self.scorer.exclude_proposer
            && self.scorers().len() < 2
        {
            return Err(Error::config(
                "scorer.exclude_proposer",
                "cross-teacher scoring that leaves out the proposer needs at least two scorers",
            ));
        }
        Ok(())
    }

    /// The scorers in backend index order. Meta-prover: one. Cross-teacher: teacher k is scorer
    /// k, then the separate `model` if `include_model` and it is not a teacher.
    pub fn scorers(&self) -> Vec<ScorerSpec> {
        let resolve = |m: &str| match self.teacher_index(m) {
            Some(k) => ScorerSpec {
                name: m.to_string(),
                model: ScorerModel::Teacher(k),
            },
            None => ScorerSpec {
                name: m.to_string(),
                model: ScorerModel::Model(m.to_string()),
            },
        };
        match self.scorer.kind {
            ScorerKind::MetaProver => self
                .scorer
                .model
                .as_deref()
                .map(resolve)
                .into_iter()
                .collect(),
            ScorerKind::CrossTeacher => {
                let mut v: Vec<ScorerSpec> = self
                    .teachers
                    .iter()
                    .enumerate()
                    .map(|(k, t)| ScorerSpec {
                        name: t.name.clone(),
                        model: ScorerModel::Teacher(k),
                    })
                    .collect();
                if self.scorer.include_model
                    && let Some(m) = &self.scorer.model
                    && self.teacher_index(m).is_none()
                {
                    v.push(resolve(m));
                }
                v
            }
        }
    }

    /// Whether teacher `k` gets the `<think>\n` opening in its assistant prefill.
    pub fn prefill_think(&self, k: usize) -> bool {
        self.teachers[k]
            .prefill_think
            .unwrap_or(self.search.prefill_think)
    }

    /// Step cap of teacher `k`.
    pub fn step_cap(&self, k: usize) -> usize {
        self.teachers[k]
            .max_step_tokens
            .unwrap_or(self.search.max_step_tokens)
    }

    /// A stable fingerprint (16 hex digits) of everything that changes what a run writes:
    /// method and search settings, scorer, teachers and their sampling. Devices,
    /// `problems_in_flight`, `save_tree`, `record_timing` and `drop_incorrect` are left out.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        struct Fp<'a> {
            search: SearchConfig,
            kind: ScorerKind,
            model: &'a Option<String>,
            exclude_proposer: bool,
            include_model: bool,
            suffix: &'a str,
            scorer_system_prompt: &'a Option<String>,
            scorer_dtype: &'a Option<String>,
            teachers: Vec<TeacherConfig>,
            filter: &'a FilterConfig,
        }
        let mut search = self.search.clone();
        search.problems_in_flight = 0;
        search.save_tree = false;
        search.record_timing = false;
        search.drop_incorrect = false;
        if search.method == Method::Greedy {
            search.beam_width = 1;
        }
        let teachers = self
            .teachers
            .iter()
            .map(|t| TeacherConfig {
                device: None,
                ..t.clone()
            })
            .collect();
        let fp = Fp {
            search,
            kind: self.scorer.kind,
            model: &self.scorer.model,
            exclude_proposer: self.scorer.exclude_proposer,
            include_model: self.scorer.include_model,
            suffix: &self.scorer.suffix,
            scorer_system_prompt: &self.scorer.system_prompt,
            scorer_dtype: &self.scorer.dtype,
            teachers,
            filter: &self.filter,
        };
        let json = serde_json::to_string(&fp).unwrap_or_default();
        format!("{:016x}", fnv1a64(json.as_bytes()))
    }
}
