//! What all searches share: the state-machine protocol, resolved settings, step finishing,
//! scoring requests and record building.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::answer::{Verdict, extract_answer, verify};
use crate::backend::{
    AnswerRequest, Backend, Finish, Proposal, ProposeRequest, Score, ScoreRequest,
};
use crate::config::{Method, PoolConfig, ScorerKind, StepUnit};
use crate::error::{Error, Result};
use crate::hygiene::{FilterConfig, Reject, check_step, states_answer, step_body};
use crate::io::{
    Message, Problem, Record, RecordConfig, RecordStats, ScorerValue, StepRecord, TreeEntry,
};

/// What a search needs next.
#[derive(Debug)]
pub enum Need {
    Propose(Vec<ProposeRequest>),
    Score(Vec<ScoreRequest>),
    Answer(Vec<AnswerRequest>),
    /// The search is over.
    Done(Box<Record>),
}

/// Results for the last [`Need`], in request order.
#[derive(Debug)]
pub enum Reply {
    Proposals(Vec<Proposal>),
    Scores(Vec<Score>),
    Answers(Vec<Proposal>),
}

/// A search over one problem, driven from outside: `poll` → requests → backend → `feed` → ...
/// until `poll` returns [`Need::Done`]. `poll` may call `backend.count_tokens` only.
pub trait Search {
    fn poll(&mut self, backend: &mut dyn Backend) -> Result<Need>;
    fn feed(&mut self, reply: Reply) -> Result<()>;
    fn problem(&self) -> &Problem;
    /// The steps the search kept since the last call, for a live view of a run (`cord serve`
    /// streams them). Beam searches report every kept candidate of a round; searches that only
    /// know their trajectory at the end report nothing here.
    fn take_selected(&mut self) -> Vec<SelectedStep> {
        Vec::new()
    }
}

/// A candidate step a search kept: the beam's rank among the kept candidates of its round (0 =
/// best score), whether it ended its beam, and the step as it will appear in the record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SelectedStep {
    pub beam: usize,
    pub done: bool,
    pub step: StepRecord,
}

/// Makes the search of the configured method for one problem.
pub fn new_search(settings: Arc<Settings>, problem: Problem) -> Box<dyn Search> {
    match settings.method {
        Method::Cord | Method::Greedy => Box::new(crate::cord::CordSearch::new(settings, problem)),
        Method::Curation => Box::new(crate::curation::CurationSearch::new(settings, problem)),
        Method::Mcts => Box::new(crate::mcts::MctsSearch::new(settings, problem)),
    }
}

/// Reflection cue phrases of the prefix unit (section 3).
pub const CUE_PHRASES: &[&str] = &[
    "let me check",
    "let me verify",
    "double-check",
    "going back to",
    "wait",
    "alternatively",
    "another way",
    "let's try a different approach",
    "using another method",
    "we can also verify",
    "this is wrong",
    "the mistake was",
    "that's impossible",
    "this contradicts",
    "the error is",
];

/// The end-of-thinking tag.
pub const THINK_CLOSE: &str = "</think>";

/// Everything a search needs, resolved from the pool once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Method,
    /// Beam width in use (1 for greedy).
    pub width: usize,
    pub think_budget: usize,
    pub answer_budget: usize,
    /// Step cap per teacher.
    pub step_caps: Vec<usize>,
    pub default_step_cap: usize,
    pub step_unit: StepUnit,
    pub max_steps: usize,
    pub seed: u64,
    pub curation_samples: usize,
    pub curation_step_prefill: bool,
    pub mcts_simulations: usize,
    pub mcts_c: f64,
    pub dedupe: bool,
    pub resample_empty: bool,
    pub score_period: bool,
    pub drop_incorrect: bool,
    /// Attempts per problem (rejection sampling; 1 = no retry).
    pub attempts: usize,
    pub save_tree: bool,
    pub record_timing: bool,
    pub answer_prefix: String,
    pub answer_stop: Vec<String>,
    pub problems_in_flight: usize,
    pub teacher_names: Vec<String>,
    pub scorer_names: Vec<String>,
    /// For each scorer, the teacher it is (cross-teacher `exclude_proposer`).
    pub scorer_teacher: Vec<Option<usize>>,
    pub scorer_kind: ScorerKind,
    pub exclude_proposer: bool,
    pub suffix: String,
    pub fingerprint: String,
    /// Candidate hygiene.
    pub filter: FilterConfig,
    /// End a trajectory at a step that states the final answer.
    pub end_on_answer: bool,
    /// CoRD: each live beam also competes as itself closed (`search.close_candidate`).
    pub close_candidate: bool,
    pub close_min_score: f64,
    /// CoRD: answer the next finished trajectory when the best's answer does not verify.
    pub verify_beams: bool,
}

impl Settings {
    /// Resolves a validated pool.
    pub fn new(pool: &PoolConfig) -> Result<Self> {
        pool.validate()?;
        let s = &pool.search;
        let scorers = pool.scorers();
        Ok(Settings {
            method: s.method,
            width: s.effective_beam(),
            think_budget: s.think_budget,
            answer_budget: s.answer_budget,
            step_caps: (0..pool.teachers.len()).map(|k| pool.step_cap(k)).collect(),
            default_step_cap: s.max_step_tokens,
            step_unit: s.step_unit,
            max_steps: s.max_steps,
            seed: s.seed,
            curation_samples: s.effective_curation_samples(),
            curation_step_prefill: s.curation_step_prefill,
            mcts_simulations: s.mcts_simulations,
            mcts_c: s.mcts_c,
            dedupe: s.dedupe,
            resample_empty: s.resample_empty,
            score_period: s.score_period,
            drop_incorrect: s.drop_incorrect,
            attempts: s.attempts,
            save_tree: s.save_tree,
            record_timing: s.record_timing,
            answer_prefix: s.answer_prefix.clone(),
            answer_stop: s.answer_stop.clone(),
            problems_in_flight: s.problems_in_flight,
            teacher_names: pool.teachers.iter().map(|t| t.name.clone()).collect(),
            scorer_names: scorers.iter().map(|x| x.name.clone()).collect(),
            scorer_teacher: scorers
                .iter()
                .map(|x| match x.model {
                    crate::config::ScorerModel::Teacher(k) => Some(k),
                    crate::config::ScorerModel::Model(_) => None,
                })
                .collect(),
            scorer_kind: pool.scorer.kind,
            exclude_proposer: pool.scorer.exclude_proposer,
            suffix: pool.scorer.suffix.clone(),
            fingerprint: pool.fingerprint(),
            filter: pool.filter.clone(),
            end_on_answer: s.end_on_answer,
            close_candidate: s.close_candidate,
            close_min_score: s.close_min_score,
            verify_beams: s.verify_beams,
        })
    }

    /// Shared handle.
    pub fn shared(pool: &PoolConfig) -> Result<Arc<Self>> {
        Self::new(pool).map(Arc::new)
    }

    pub fn num_teachers(&self) -> usize {
        self.teacher_names.len()
    }

    /// Stop strings of a step for the configured unit (O-1).
    pub fn step_stops(&self) -> Vec<String> {
        match self.step_unit {
            StepUnit::PromptGuided => vec!["### Step".to_string(), THINK_CLOSE.to_string()],
            StepUnit::LineBreak => vec!["\n\n".to_string(), THINK_CLOSE.to_string()],
            StepUnit::CuePhrase => {
                let mut v = vec![THINK_CLOSE.to_string()];
                for p in CUE_PHRASES {
                    let cap = capitalize(p);
                    for lead in [" ", "\n"] {
                        v.push(format!("{lead}{p}"));
                        v.push(format!("{lead}{cap}"));
                    }
                }
                v
            }
        }
    }

    /// The header the orchestrator writes before step `t` (O-2); `pending` is the cue that
    /// ended the previous step (cue-phrase unit).
    pub fn header(&self, t: usize, pending: &str) -> String {
        match self.step_unit {
            StepUnit::PromptGuided => format!("### Step {t}."),
            StepUnit::LineBreak => String::new(),
            StepUnit::CuePhrase => pending.to_string(),
        }
    }

    /// The scoring target (O-15).
    pub fn target(&self, gt: &str) -> String {
        if self.score_period && !gt.ends_with('.') {
            format!("{gt}.")
        } else {
            gt.to_string()
        }
    }

    /// Scorers used for a candidate proposed by `proposer`.
    pub fn scorers_for(&self, proposer: Option<usize>) -> Vec<usize> {
        let all: Vec<usize> = (0..self.scorer_names.len()).collect();
        if self.scorer_kind == ScorerKind::CrossTeacher && self.exclude_proposer {
            let v: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&j| proposer.is_none() || self.scorer_teacher[j] != proposer)
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
        all
    }

    /// Score requests for `reasoning` (O-14): one per scorer used.
    pub fn score_requests(
        &self,
        p: &Problem,
        reasoning: &str,
        proposer: Option<usize>,
    ) -> (Vec<usize>, Vec<ScoreRequest>) {
        let context = format!("{}{}", score_context(reasoning), self.suffix);
        let target = self.target(&p.answer);
        let js = self.scorers_for(proposer);
        let reqs = js
            .iter()
            .map(|&j| ScoreRequest {
                scorer: j,
                question: p.question.clone(),
                context: context.clone(),
                target: target.clone(),
            })
            .collect();
        (js, reqs)
    }

    /// Aggregates the scores of one candidate (meta-prover: the one value; cross-teacher:
    /// exp of the mean of per-scorer mean log-probs).
    pub fn aggregate(&self, js: &[usize], scores: &[Score]) -> ScoreDetail {
        let mean = |s: &Score| {
            if s.mean_logprob.is_nan() {
                f64::NEG_INFINITY
            } else {
                s.mean_logprob
            }
        };
        if js.len() == 1 && self.scorer_kind == ScorerKind::MetaProver {
            let lp = mean(&scores[0]);
            return ScoreDetail {
                score: lp.exp(),
                mean_logprob: lp,
                m: Some(scores[0].m),
                per_scorer: Vec::new(),
            };
        }
        let lp = scores.iter().map(mean).sum::<f64>() / scores.len().max(1) as f64;
        ScoreDetail {
            score: lp.exp(),
            mean_logprob: lp,
            m: None,
            per_scorer: js
                .iter()
                .zip(scores)
                .map(|(&j, s)| ScorerValue {
                    scorer: self.scorer_names[j].clone(),
                    mean_logprob: mean(s),
                    m: s.m,
                })
                .collect(),
        }
    }

    /// Think-budget room of teacher `k` after `text` (O-5), or `None` when the budget is far
    /// away (room > the step cap; `count_tokens` is then not needed).
    pub fn room(
        &self,
        backend: &mut dyn Backend,
        k: usize,
        text: &str,
        cap: usize,
    ) -> Result<usize> {
        if text.len() + 1 + cap < self.think_budget {
            return Ok(self.think_budget - text.len() - 1);
        }
        let used = backend.count_tokens(k, text)?;
        Ok(self.think_budget.saturating_sub(used))
    }

    /// [`finish_step`], then (with `end_on_answer`) a step that states the final answer ends
    /// the reasoning: it is cut after that line and closed (finish `answer`).
    pub fn step_outcome(&self, p: &Proposal, budget_limited: bool) -> StepOutcome {
        let out = finish_step(p, budget_limited);
        if self.end_on_answer {
            end_at_answer(out)
        } else {
            out
        }
    }

    /// The rule a candidate step breaks (`None` when it is fine or the filter is off).
    /// `text` is the step (header and body) of outcome `out`; `earlier` are the texts of the
    /// beam's earlier steps.
    pub fn reject(&self, out: &StepOutcome, text: &str, earlier: &[&str]) -> Option<Reject> {
        if !self.filter.enabled {
            return None;
        }
        let cut = matches!(out, StepOutcome::Step { reason, .. } if *reason == STEP_CAP_MID);
        if cut && self.filter.reject_cut {
            return Some(Reject::CutByCap);
        }
        check_step(text, earlier, &self.filter)
    }

    pub(crate) fn record_config(&self) -> RecordConfig {
        RecordConfig {
            beam: self.width,
            think_budget: self.think_budget,
            answer_budget: self.answer_budget,
            step_cap: self.default_step_cap,
            max_steps: self.max_steps,
            seed: self.seed,
            method: self.method,
            step_unit: self.step_unit.as_str().to_string(),
            scorer: self.scorer_kind.as_str().to_string(),
            pool: self.fingerprint.clone(),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// A candidate's score, with what it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreDetail {
    /// exp(mean_logprob), in [0, 1].
    pub score: f64,
    pub mean_logprob: f64,
    pub m: Option<usize>,
    pub per_scorer: Vec<ScorerValue>,
}

/// The reasoning as scored: a trailing `</think>` removed, right-stripped (O-14).
pub fn score_context(reasoning: &str) -> &str {
    let r = reasoning.trim_end();
    r.strip_suffix(THINK_CLOSE).unwrap_or(r).trim_end()
}

/// `r` closed by `</think>` (O-19): unchanged if it already ends with it.
pub fn closed(r: &str) -> String {
    let t = r.trim_end();
    if t.ends_with(THINK_CLOSE) {
        t.to_string()
    } else {
        format!("{t}\n{THINK_CLOSE}")
    }
}

/// Finish of a step the step cap cut in the middle of a paragraph (no `\n\n` to cut back to).
pub const STEP_CAP_MID: &str = "step-cap-mid";

/// A finished step body, or nothing usable.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The generated text was empty or whitespace (O-11).
    Blank,
    Step {
        /// Text to append after the header.
        body: String,
        /// The step ends the reasoning.
        done: bool,
        /// `</think>` was added by force.
        forced: bool,
        /// step | think | eos | step-cap | step-cap-mid | budget | answer
        reason: &'static str,
        /// Cue phrase that starts the next step (cue-phrase unit).
        next_header: String,
    },
}

/// Turns a step proposal into a step body (O-1, O-4, O-19, O-25), to be appended after the
/// prefilled header; `budget_limited` says that `max_new_tokens` was the think budget's room, not the cap.
pub fn finish_step(p: &Proposal, budget_limited: bool) -> StepOutcome {
    let text = text_before_stop(p);
    if text.trim().is_empty() {
        return StepOutcome::Blank;
    }
    let forced_close = |reason| StepOutcome::Step {
        body: format!("{}\n{THINK_CLOSE}", text.trim_end()),
        done: true,
        forced: true,
        reason,
        next_header: String::new(),
    };
    match &p.finish {
        Finish::Stop(s) if s == THINK_CLOSE => StepOutcome::Step {
            body: format!("{text}{THINK_CLOSE}"),
            done: true,
            forced: false,
            reason: "think",
            next_header: String::new(),
        },
        Finish::Stop(s) => {
            let sep = if s.starts_with(' ') { " " } else { "\n\n" };
            let next = if s == "### Step" || s == "\n\n" {
                String::new()
            } else {
                s.trim_start().to_string()
            };
            StepOutcome::Step {
                body: format!("{}{sep}", text.trim_end()),
                done: false,
                forced: false,
                reason: "step",
                next_header: next,
            }
        }
        Finish::Eos => forced_close("eos"),
        Finish::Length if budget_limited => forced_close("budget"),
        Finish::Length => {
            let (cut, reason) = match text.rfind("\n\n") {
                Some(i) if !text[..i].trim().is_empty() => (&text[..i], "step-cap"),
                _ => (text, STEP_CAP_MID),
            };
            StepOutcome::Step {
                body: format!("{}\n\n", cut.trim_end()),
                done: false,
                forced: false,
                reason,
                next_header: String::new(),
            }
        }
    }
}

/// A step that states the final answer ends the reasoning there (finish `answer`).
pub fn end_at_answer(out: StepOutcome) -> StepOutcome {
    match out {
        StepOutcome::Step {
            body,
            done: false,
            next_header,
            reason,
            forced,
        } => match states_answer(&body) {
            Some(cut) => StepOutcome::Step {
                body: format!("{}\n{THINK_CLOSE}", body[..cut].trim_end()),
                done: true,
                forced: false,
                reason: "answer",
                next_header: String::new(),
            },
            None => StepOutcome::Step {
                body,
                done: false,
                forced,
                reason,
                next_header,
            },
        },
        other => other,
    }
}

/// Finish reasons of a step that ended the reasoning by itself (not closed by the orchestrator).
pub const NATURAL_ENDS: &[&str] = &["think", "eos", "answer"];

/// Per-problem counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatsAcc {
    pub tokens: BTreeMap<String, u64>,
    pub scored: u64,
    pub score_requests: u64,
    pub propose_requests: u64,
    pub reused: u64,
    /// Rejected candidates per teacher and reason.
    pub rejected: BTreeMap<String, BTreeMap<String, u64>>,
    /// Beams whose every candidate was rejected and that were proposed for again.
    pub beams_resampled: u64,
    /// Beams dropped because their candidates were rejected again after the resample.
    pub beams_dropped: u64,
    /// Answers written after lower-ranked finished trajectories (`verify_beams`).
    pub extra_answers: u64,
}

impl StatsAcc {
    pub fn proposals(&mut self, s: &Settings, reqs: &[usize], ps: &[Proposal]) {
        for (&k, p) in reqs.iter().zip(ps) {
            *self.tokens.entry(s.teacher_names[k].clone()).or_default() += p.tokens as u64;
            self.reused += p.reused_tokens as u64;
            self.propose_requests += 1;
        }
    }
    pub fn reject(&mut self, s: &Settings, teacher: usize, why: Reject) {
        *self
            .rejected
            .entry(s.teacher_names[teacher].clone())
            .or_default()
            .entry(why.as_str().to_string())
            .or_default() += 1;
    }
    pub fn scores(&mut self, ss: &[Score]) {
        for s in ss {
            self.scored += s.m as u64;
            self.reused += s.reused_tokens as u64;
            self.score_requests += 1;
        }
    }
}

/// The chosen trajectory, ready to be turned into a record once its answer is written.
pub(crate) struct Outcome {
    pub steps: Vec<StepRecord>,
    pub reasoning: String,
    pub forced: bool,
    pub score: f64,
    pub answer_teacher: usize,
}

/// Checks that a reply has the expected kind and length.
pub(crate) fn expect_len<T>(v: Vec<T>, n: usize, what: &str) -> Result<Vec<T>> {
    if v.len() != n {
        return Err(Error::Protocol(format!(
            "expected {n} {what}, the backend returned {}",
            v.len()
        )));
    }
    Ok(v)
}

pub(crate) fn answer_request(s: &Settings, p: &Problem, o: &Outcome) -> AnswerRequest {
    AnswerRequest {
        teacher: o.answer_teacher,
        question: p.question.clone(),
        reasoning: closed(&o.reasoning),
        prefix: s.answer_prefix.clone(),
        stop: s.answer_stop.clone(),
        max_new_tokens: s.answer_budget,
        seed: crate::seed::request_seed(&p.id, crate::seed::Purpose::Answer, &[], s.seed),
    }
}

/// What every search keeps about its run of one problem: statistics, when it started, and the
/// outcome whose answer is awaited.
pub(crate) struct Run {
    pub stats: StatsAcc,
    pub started: Instant,
    pub outcome: Option<Outcome>,
}

impl Run {
    pub fn new() -> Self {
        Run {
            stats: StatsAcc::default(),
            started: Instant::now(),
            outcome: None,
        }
    }

    /// The answer request for the search's `outcome` (O-18), kept until the answer comes back.
    pub fn answer(&mut self, s: &Settings, p: &Problem, outcome: Outcome) -> Need {
        let req = answer_request(s, p, &outcome);
        self.outcome = Some(outcome);
        Need::Answer(vec![req])
    }

    /// The record of a problem the search gave up on ([`failed_record`]); the statistics are
    /// taken.
    pub fn failed(
        &mut self,
        s: &Settings,
        p: &Problem,
        reason: String,
        tree: Option<Vec<TreeEntry>>,
    ) -> Record {
        let stats = std::mem::take(&mut self.stats);
        failed_record(s, p, reason, stats, tree, self.started)
    }

    /// The record once the answer came back: `a` must hold the one answer to the request made
    /// by [`Run::answer`]; the statistics are taken.
    pub fn record(
        &mut self,
        s: &Settings,
        p: &Problem,
        a: Vec<Proposal>,
        tree: Option<Vec<TreeEntry>>,
    ) -> Result<Record> {
        let a = expect_len(a, 1, "answers")?;
        let outcome = self
            .outcome
            .take()
            .ok_or_else(|| Error::Protocol("no outcome".into()))?;
        let stats = std::mem::take(&mut self.stats);
        Ok(build_record(
            s,
            p,
            outcome,
            &a[0],
            stats,
            tree,
            self.started,
        ))
    }
}

/// The error for results of the wrong kind, or at the wrong time.
pub(crate) fn wrong_reply() -> Error {
    Error::Protocol("results of the wrong kind or at the wrong time".into())
}

pub(crate) fn build_record(
    s: &Settings,
    p: &Problem,
    o: Outcome,
    answer: &Proposal,
    mut stats: StatsAcc,
    tree: Option<Vec<TreeEntry>>,
    started: Instant,
) -> Record {
    *stats
        .tokens
        .entry(s.teacher_names[o.answer_teacher].clone())
        .or_default() += answer.tokens as u64;
    stats.reused += answer.reused_tokens as u64;
    let final_answer = final_answer(s, answer);
    let body = score_context(&o.reasoning);
    let response = format!("<think>\n{body}\n{THINK_CLOSE}\n\n{final_answer}");
    let natural_end = o
        .steps
        .last()
        .is_some_and(|st| NATURAL_ENDS.contains(&st.finish.as_str()));
    let (predicted, verdict) = check_answer(p, &final_answer);
    let correct = verdict.as_ref().is_some_and(|v| v.equal);
    let predicted_normalized = verdict.map(|v| v.prediction);
    Record {
        id: p.id.clone(),
        question: p.question.clone(),
        answer: p.answer.clone(),
        method: s.method,
        steps: o.steps,
        final_answer,
        answer_teacher: s.teacher_names[o.answer_teacher].clone(),
        predicted,
        predicted_normalized,
        correct,
        attempts: Vec::new(),
        score: o.score,
        forced_close: o.forced,
        natural_end,
        failed: None,
        answer_truncated: answer.finish == Finish::Length,
        messages: vec![
            Message {
                role: "user".into(),
                content: p.question.clone(),
            },
            Message {
                role: "assistant".into(),
                content: response.clone(),
            },
        ],
        response,
        config: s.record_config(),
        stats: record_stats(s, stats, started),
        tree,
    }
}

/// The answer section of a record: the answer prefix and the answering teacher's text.
fn final_answer(s: &Settings, answer: &Proposal) -> String {
    format!("{}{}", s.answer_prefix, text_before_stop(answer))
        .trim()
        .to_string()
}

/// A proposal's text (a step or an answer), without a heading cut by its stop string
/// ([`cut_heading`]).
fn text_before_stop(p: &Proposal) -> &str {
    match &p.finish {
        Finish::Stop(stop) => cut_heading(&p.text, stop),
        _ => p.text.as_str(),
    }
}

/// A text that ends before a markdown-heading stop string (`### Step`), without the `#`s the
/// cut left of a deeper heading: `### Step` also matches inside `#### Step`, and the text would
/// end in a lone `#`. Only a run of `#` alone on the last line is removed.
fn cut_heading<'a>(text: &'a str, stop: &str) -> &'a str {
    if !stop.starts_with('#') {
        return text;
    }
    let t = text.trim_end_matches('#');
    if t.len() < text.len() && (t.is_empty() || t.ends_with('\n')) {
        t
    } else {
        text
    }
}

/// The answer extracted from an answer section and its verdict against the known answer.
fn check_answer(p: &Problem, final_answer: &str) -> (Option<String>, Option<Verdict>) {
    let predicted = extract_answer(final_answer);
    let verdict = predicted.as_deref().map(|x| verify(&p.answer, x));
    (predicted, verdict)
}

/// Whether the answer a teacher wrote verifies against the problem's known answer.
pub(crate) fn answer_verifies(s: &Settings, p: &Problem, answer: &Proposal) -> bool {
    check_answer(p, &final_answer(s, answer))
        .1
        .is_some_and(|v| v.equal)
}

fn record_stats(s: &Settings, stats: StatsAcc, started: Instant) -> RecordStats {
    RecordStats {
        tokens_generated: stats.tokens,
        tokens_scored: stats.scored,
        score_requests: stats.score_requests,
        propose_requests: stats.propose_requests,
        rejected: stats.rejected,
        beams_resampled: stats.beams_resampled,
        beams_dropped: stats.beams_dropped,
        extra_answers: stats.extra_answers,
        prefix_tokens_reused: s.record_timing.then_some(stats.reused),
        seconds: s.record_timing.then(|| started.elapsed().as_secs_f64()),
    }
}

/// The record of a problem for which no usable trajectory was found (every beam was dropped):
/// no steps, no answer, no `messages`, and `failed` says why. It is never training data.
pub(crate) fn failed_record(
    s: &Settings,
    p: &Problem,
    reason: String,
    stats: StatsAcc,
    tree: Option<Vec<TreeEntry>>,
    started: Instant,
) -> Record {
    Record {
        id: p.id.clone(),
        question: p.question.clone(),
        answer: p.answer.clone(),
        method: s.method,
        steps: Vec::new(),
        final_answer: String::new(),
        answer_teacher: String::new(),
        predicted: None,
        predicted_normalized: None,
        correct: false,
        attempts: Vec::new(),
        score: 0.0,
        forced_close: false,
        natural_end: false,
        failed: Some(reason),
        answer_truncated: false,
        response: String::new(),
        messages: Vec::new(),
        config: s.record_config(),
        stats: record_stats(s, stats, started),
        tree,
    }
}

/// The bodies of a beam's steps, for the repeated-step rule.
pub(crate) fn step_texts(steps: &[StepRecord]) -> Vec<&str> {
    steps.iter().map(|st| step_body(&st.text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, finish: Finish) -> Proposal {
        Proposal::new(text, finish, 3)
    }

    fn body(o: StepOutcome) -> (String, bool, bool, &'static str) {
        match o {
            StepOutcome::Step {
                body,
                done,
                forced,
                reason,
                ..
            } => (body, done, forced, reason),
            StepOutcome::Blank => panic!("blank"),
        }
    }

    #[test]
    fn a_cut_deeper_heading_leaves_no_hash() {
        let stop = || Finish::Stop("### Step".into());
        assert_eq!(
            body(finish_step(&p(" a = 2\n#", stop()), false)),
            (" a = 2\n\n".into(), false, false, "step")
        );
        // A `#` inside the line is content, and other stop strings cut nothing.
        assert_eq!(cut_heading("x = 2 #", "### Step"), "x = 2 #");
        assert_eq!(cut_heading("x\n##", "### Step"), "x\n");
        assert_eq!(cut_heading("x\n#", "\n\n"), "x\n#");
        assert!(matches!(
            finish_step(&p("#", stop()), false),
            StepOutcome::Blank
        ));
        assert_eq!(text_before_stop(&p(" 35 %.\n#", stop())), " 35 %.\n");
        assert_eq!(text_before_stop(&p(" 35 %.\n#", Finish::Eos)), " 35 %.\n#");
    }

    #[test]
    fn finish_step_cases() {
        assert_eq!(
            body(finish_step(
                &p(" a b \n\n", Finish::Stop("### Step".into())),
                false
            )),
            (" a b\n\n".into(), false, false, "step")
        );
        assert_eq!(
            body(finish_step(
                &p(" a\n", Finish::Stop("</think>".into())),
                false
            )),
            (" a\n</think>".into(), true, false, "think")
        );
        assert_eq!(
            body(finish_step(&p(" a \n", Finish::Eos), false)),
            (" a\n</think>".into(), true, true, "eos")
        );
        assert_eq!(
            body(finish_step(&p(" a\n\nb c", Finish::Length), false)),
            (" a\n\n".into(), false, false, "step-cap")
        );
        assert_eq!(
            body(finish_step(&p(" a b c", Finish::Length), false)),
            (" a b c\n\n".into(), false, false, "step-cap-mid")
        );
        assert_eq!(
            body(finish_step(&p(" a b c ", Finish::Length), true)),
            (" a b c\n</think>".into(), true, true, "budget")
        );
        assert_eq!(
            finish_step(&p(" \n ", Finish::Eos), false),
            StepOutcome::Blank
        );
        match finish_step(&p("x = 2.", Finish::Stop(" Wait".into())), false) {
            StepOutcome::Step {
                body, next_header, ..
            } => {
                assert_eq!(body, "x = 2. ");
                assert_eq!(next_header, "Wait");
            }
            StepOutcome::Blank => panic!(),
        }
    }

    #[test]
    fn closing_and_context() {
        assert_eq!(closed("a\n\n"), "a\n</think>");
        assert_eq!(closed("a</think>\n"), "a</think>");
        assert_eq!(score_context("a \n</think> \n"), "a");
        assert_eq!(score_context("a b\n\n"), "a b");
    }
}
