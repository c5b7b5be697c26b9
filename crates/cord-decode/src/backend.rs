//! The text-level, batched interface between the searches and an inference engine.
//!
//! # Contract for an implementation (e.g. `EngineBackend` over `cord-runtime::Engine`)
//!
//! Everything here is text; the searches never see token ids. One call carries the requests of
//! many problems and beams; results come back in request order, one per request.
//!
//! **Rendering (O-3).** For teacher `k` (and for a scorer) the model input is
//! `render(system_k, user = question, add_generation_prompt = true) + open + prefill`, where
//! - `system_k` is the teacher's `system_prompt` from the pool (`Some("")` = no system message;
//!   `None` = the model's recommended one, if the backend knows it, else none);
//! - `open` is `"<think>\n"` when the pool says `prefill_think(k)` **and** the rendered text does
//!   not already end with `<think>` plus optional whitespace (detect once per template at load
//!   time), else `""`;
//! - `prefill` is [`ProposeRequest::reasoning`], [`AnswerRequest::prefill`] or
//!   [`ScoreRequest::context`], appended as raw text (never as an assistant message).
//!
//! **Proposals.** Sample with the teacher's temperature / top-p / top-k / min-p and a RNG seeded
//! from `seed` alone, at most `max_new_tokens` tokens. Stop on the teacher's EOS / end-of-turn
//! ids ([`Finish::Eos`]) or on the first occurrence in the *decoded generated text* of any of
//! `stop` ([`Finish::Stop`] with the matched string; the text is cut before the match and the
//! match is not included). Otherwise [`Finish::Length`]. `tokens` = generated tokens kept (up to
//! the cut). Results must depend only on the request, not on what else is in the batch, for
//! runs to be reproducible whatever `problems_in_flight` is.
//!
//! **Scores (O-14..O-17).** Tokenize `rendered + open + context + target` jointly with the
//! scorer's tokenizer; answer tokens are those whose byte span ends after the start of `target`
//! (a token straddling the boundary counts). `mean_logprob` = mean (f64) of the teacher-forced
//! log-softmax (f32) of the answer tokens, `m` = their number.
//!
//! **Answers (O-18).** Like a proposal with no stop strings: EOS or `max_new_tokens`.
//!
//! **count_tokens** counts `text` (reasoning after `<think>\n`) in teacher `k`'s tokenizer
//! without special tokens. The searches assume `count_tokens(k, t) <= t.len() + 1` (true for
//! byte-level BPE and SentencePiece) and skip the call while the budget is far away.

use crate::error::Result;

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Finish {
    /// A stop string matched (the string is given; it is not part of the text).
    Stop(String),
    /// The model emitted an EOS / end-of-turn token.
    Eos,
    /// `max_new_tokens` was reached.
    Length,
}

/// Continue teacher `teacher`'s reasoning.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposeRequest {
    pub teacher: usize,
    pub question: String,
    /// Assistant text after the `<think>\n` opening: previous steps plus the new step header.
    pub reasoning: String,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub seed: u64,
}

/// A generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Generated text, without the matched stop string.
    pub text: String,
    pub finish: Finish,
    /// Generated tokens.
    pub tokens: usize,
    /// Prompt tokens the backend took from its prefix cache (statistics only).
    pub reused_tokens: usize,
}

impl Proposal {
    /// A proposal with no cache statistics.
    pub fn new(text: impl Into<String>, finish: Finish, tokens: usize) -> Self {
        Proposal {
            text: text.into(),
            finish,
            tokens,
            reused_tokens: 0,
        }
    }
}

/// Teacher-forced log-probability of `target` after `context`, by scorer `scorer`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRequest {
    /// Index into the pool's scorers ([`crate::config::PoolConfig::scorers`]).
    pub scorer: usize,
    pub question: String,
    /// Assistant text after `<think>\n`: the reasoning with any `</think>` removed and
    /// right-stripped, followed by the suffix (`" </think> The final answer is "`).
    pub context: String,
    /// The ground truth, with the final "." when configured (O-15).
    pub target: String,
}

/// Result of a [`ScoreRequest`]. The score is `exp(mean_logprob)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub mean_logprob: f64,
    /// Number of answer tokens.
    pub m: usize,
    /// Prompt tokens the backend took from its prefix cache (statistics only).
    pub reused_tokens: usize,
}

impl Score {
    pub fn new(mean_logprob: f64, m: usize) -> Self {
        Score {
            mean_logprob,
            m,
            reused_tokens: 0,
        }
    }
}

/// Write the final answer after the closed reasoning.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRequest {
    pub teacher: usize,
    pub question: String,
    /// The closed reasoning, ending with `</think>`.
    pub reasoning: String,
    /// Start of the answer written by the orchestrator (`answer_prefix`; usually empty).
    pub prefix: String,
    /// Stop strings (`answer_stop`): generation ends before the first one, which is not kept.
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl AnswerRequest {
    /// Raw assistant text after `<think>\n`: closed reasoning + `"\n\n"` (O-18), then the
    /// answer prefix.
    pub fn prefill(&self) -> String {
        format!("{}\n\n{}", self.reasoning, self.prefix)
    }
}

/// A text-level inference engine holding the pool's teachers and scorers.
pub trait Backend {
    /// One proposal per request, in order.
    fn propose(&mut self, reqs: &[ProposeRequest]) -> Result<Vec<Proposal>>;
    /// One score per request, in order.
    fn score(&mut self, reqs: &[ScoreRequest]) -> Result<Vec<Score>>;
    /// One final answer per request, in order.
    fn answer(&mut self, reqs: &[AnswerRequest]) -> Result<Vec<Proposal>>;
    /// Tokens of `text` in teacher `teacher`'s tokenizer (no special tokens).
    fn count_tokens(&mut self, teacher: usize, text: &str) -> Result<usize>;
    /// Number of teachers; must equal the pool's.
    fn num_teachers(&self) -> usize;
    /// Name of teacher `k` (the pool's name).
    fn teacher_name(&self, k: usize) -> &str;
}
