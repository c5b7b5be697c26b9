//! A backend whose answers are fixed by a test script: proposals by (teacher, reasoning so far),
//! scores by scored reasoning, answers by (teacher, closed reasoning). Optional closures cover
//! what the tables do not; anything else is an error, so unexpected requests fail a test.

use std::collections::{HashMap, VecDeque};

use crate::backend::{
    AnswerRequest, Backend, Finish, Proposal, ProposeRequest, Score, ScoreRequest,
};
use crate::error::{Error, Result};

type ProposeFn = Box<dyn FnMut(&ProposeRequest) -> Option<Proposal>>;
type ScoreFn = Box<dyn FnMut(&ScoreRequest) -> Option<f64>>;
type AnswerFn = Box<dyn FnMut(&AnswerRequest) -> Option<Proposal>>;
type CountFn = Box<dyn FnMut(usize, &str) -> usize>;

/// One backend call, as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Propose(Vec<ProposeRequest>),
    Score(Vec<ScoreRequest>),
    Answer(Vec<AnswerRequest>),
}

/// The scripted backend.
pub struct ScriptedBackend {
    names: Vec<String>,
    suffix: String,
    proposals: HashMap<(usize, String), VecDeque<Proposal>>,
    scores: HashMap<String, f64>,
    scorer_scores: HashMap<(usize, String), f64>,
    answers: HashMap<(usize, String), Proposal>,
    propose_fn: Option<ProposeFn>,
    score_fn: Option<ScoreFn>,
    answer_fn: Option<AnswerFn>,
    count_fn: Option<CountFn>,
    /// Every call, in order.
    pub calls: Vec<Call>,
}

impl ScriptedBackend {
    /// Teachers by name; `suffix` is the scorer suffix (stripped from score contexts for lookup).
    pub fn new(names: &[&str], suffix: &str) -> Self {
        ScriptedBackend {
            names: names.iter().map(|s| s.to_string()).collect(),
            suffix: suffix.to_string(),
            proposals: HashMap::new(),
            scores: HashMap::new(),
            scorer_scores: HashMap::new(),
            answers: HashMap::new(),
            propose_fn: None,
            score_fn: None,
            answer_fn: None,
            count_fn: None,
            calls: Vec::new(),
        }
    }

    /// Teacher `k` continuing `reasoning` (exactly as in the request) gives `text` / `finish`.
    /// Several entries for the same key are used in turn; the last one repeats.
    pub fn propose(&mut self, k: usize, reasoning: &str, text: &str, finish: Finish) -> &mut Self {
        let tokens = text.split_whitespace().count();
        self.proposals
            .entry((k, reasoning.to_string()))
            .or_default()
            .push_back(Proposal::new(text, finish, tokens));
        self
    }

    /// The scored reasoning (with `</think>` removed and right-stripped) has score `s`.
    pub fn score(&mut self, reasoning: &str, s: f64) -> &mut Self {
        self.scores.insert(reasoning.to_string(), s);
        self
    }

    /// Scorer `j` gives `s` to `reasoning` (takes precedence over [`Self::score`]).
    pub fn scorer_score(&mut self, j: usize, reasoning: &str, s: f64) -> &mut Self {
        self.scorer_scores.insert((j, reasoning.to_string()), s);
        self
    }

    /// Teacher `k` answers `text` after the closed `reasoning`.
    pub fn answer(&mut self, k: usize, reasoning: &str, text: &str, finish: Finish) -> &mut Self {
        let tokens = text.split_whitespace().count();
        self.answers.insert(
            (k, reasoning.to_string()),
            Proposal::new(text, finish, tokens),
        );
        self
    }

    pub fn with_propose_fn(
        mut self,
        f: impl FnMut(&ProposeRequest) -> Option<Proposal> + 'static,
    ) -> Self {
        self.propose_fn = Some(Box::new(f));
        self
    }
    pub fn with_score_fn(mut self, f: impl FnMut(&ScoreRequest) -> Option<f64> + 'static) -> Self {
        self.score_fn = Some(Box::new(f));
        self
    }
    pub fn with_answer_fn(
        mut self,
        f: impl FnMut(&AnswerRequest) -> Option<Proposal> + 'static,
    ) -> Self {
        self.answer_fn = Some(Box::new(f));
        self
    }
    /// Token counting; the default counts whitespace-separated words.
    pub fn with_count_fn(mut self, f: impl FnMut(usize, &str) -> usize + 'static) -> Self {
        self.count_fn = Some(Box::new(f));
        self
    }

    /// The reasoning a score request scores (context without the suffix).
    pub fn scored_reasoning<'a>(&self, r: &'a ScoreRequest) -> &'a str {
        r.context
            .strip_suffix(self.suffix.as_str())
            .unwrap_or(&r.context)
    }

    /// All propose requests so far, call by call.
    pub fn propose_calls(&self) -> Vec<&Vec<ProposeRequest>> {
        self.calls
            .iter()
            .filter_map(|c| {
                if let Call::Propose(v) = c {
                    Some(v)
                } else {
                    None
                }
            })
            .collect()
    }

    /// All score requests so far, call by call.
    pub fn score_calls(&self) -> Vec<&Vec<ScoreRequest>> {
        self.calls
            .iter()
            .filter_map(|c| {
                if let Call::Score(v) = c {
                    Some(v)
                } else {
                    None
                }
            })
            .collect()
    }

    /// All answer requests so far.
    pub fn answer_requests(&self) -> Vec<&AnswerRequest> {
        self.calls
            .iter()
            .filter_map(|c| {
                if let Call::Answer(v) = c {
                    Some(v)
                } else {
                    None
                }
            })
            .flatten()
            .collect()
    }
}

/// `text` up to the end of its `n`-th whitespace-separated word.
fn first_words(text: &str, n: usize) -> &str {
    let mut count = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                count += 1;
                if count == n {
                    return &text[..i];
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    text
}

fn missing(what: String) -> Error {
    Error::backend(what)
}

impl Backend for ScriptedBackend {
    fn propose(&mut self, reqs: &[ProposeRequest]) -> Result<Vec<Proposal>> {
        self.calls.push(Call::Propose(reqs.to_vec()));
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            let key = (r.teacher, r.reasoning.clone());
            let p = match self.proposals.get_mut(&key) {
                Some(q) if q.len() > 1 => q.pop_front(),
                Some(q) => q.front().cloned(),
                None => None,
            };
            let p = match p {
                Some(p) => Some(p),
                None => self.propose_fn.as_mut().and_then(|f| f(r)),
            };
            let mut p = p.ok_or_else(|| {
                missing(format!(
                    "no scripted proposal for teacher {} after {:?}",
                    r.teacher, r.reasoning
                ))
            })?;
            // Respect max_new_tokens like an engine would.
            if p.tokens > r.max_new_tokens {
                p.text = first_words(&p.text, r.max_new_tokens).to_string();
                p.tokens = r.max_new_tokens;
                p.finish = Finish::Length;
            }
            out.push(p);
        }
        Ok(out)
    }

    fn score(&mut self, reqs: &[ScoreRequest]) -> Result<Vec<Score>> {
        self.calls.push(Call::Score(reqs.to_vec()));
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            let key = self.scored_reasoning(r).to_string();
            let s = self
                .scorer_scores
                .get(&(r.scorer, key.clone()))
                .or_else(|| self.scores.get(&key))
                .copied()
                .or_else(|| self.score_fn.as_mut().and_then(|f| f(r)))
                .ok_or_else(|| missing(format!("no scripted score for {key:?}")))?;
            out.push(Score::new(
                s.ln(),
                r.target.split_whitespace().count().max(1),
            ));
        }
        Ok(out)
    }

    fn answer(&mut self, reqs: &[AnswerRequest]) -> Result<Vec<Proposal>> {
        self.calls.push(Call::Answer(reqs.to_vec()));
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            let p = self
                .answers
                .get(&(r.teacher, r.reasoning.clone()))
                .cloned()
                .or_else(|| self.answer_fn.as_mut().and_then(|f| f(r)))
                .ok_or_else(|| {
                    missing(format!(
                        "no scripted answer for teacher {} after {:?}",
                        r.teacher, r.reasoning
                    ))
                })?;
            out.push(p);
        }
        Ok(out)
    }

    fn count_tokens(&mut self, teacher: usize, text: &str) -> Result<usize> {
        Ok(match self.count_fn.as_mut() {
            Some(f) => f(teacher, text),
            None => text.split_whitespace().count(),
        })
    }

    fn num_teachers(&self) -> usize {
        self.names.len()
    }

    fn teacher_name(&self, k: usize) -> &str {
        &self.names[k]
    }
}
