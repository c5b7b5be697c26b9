//! Curation baseline (S1 / LIMO recipe, section 9): every teacher writes N whole trajectories,
//! each is scored with the same S, the best one is kept and its teacher writes the answer.

use std::sync::Arc;

use crate::backend::Backend;
use crate::chunked::Chunked;
use crate::error::{Error, Result};
use crate::hygiene::{Reject, degenerate_steps, step_offset};
use crate::io::{Problem, Record, StepRecord, TreeEntry};
use crate::search::{
    Need, Outcome, Reply, Run, ScoreDetail, Search, Settings, expect_len, score_context,
    wrong_reply,
};
use crate::seed::{Purpose, request_seed};

#[derive(Debug)]
enum State {
    Generate,
    Generating { pending: Vec<usize> },
    Scoring { groups: Vec<Vec<usize>> },
    Choose,
    Answering,
    Finished(Box<Record>),
    Over,
}

/// Best-of-N over whole trajectories.
pub struct CurationSearch {
    s: Arc<Settings>,
    p: Problem,
    trajs: Vec<Chunked>,
    scores: Vec<Option<ScoreDetail>>,
    state: State,
    run: Run,
    tree: Option<Vec<TreeEntry>>,
}

impl CurationSearch {
    pub fn new(s: Arc<Settings>, p: Problem) -> Self {
        let start = if s.curation_step_prefill {
            s.header(1, "")
        } else {
            String::new()
        };
        let n = s.curation_samples;
        let trajs = (0..s.num_teachers())
            .flat_map(|k| (0..n).map(move |_| k))
            .map(|k| Chunked::new(k, start.clone()))
            .collect::<Vec<_>>();
        let scores = vec![None; trajs.len()];
        CurationSearch {
            s,
            p,
            trajs,
            scores,
            state: State::Generate,
            run: Run::new(),
            tree: None,
        }
    }

    /// With the filter and `close_stalled`, a `### Step` trajectory whose first degenerate step
    /// is not its first is cut before it and closed there (counted as a rejection now; `choose`
    /// then finds nothing wrong with it); one that starts with a degenerate step is left to
    /// `choose`, which rejects it.
    fn cut_before_junk(&mut self) {
        let f = &self.s.filter;
        if !f.enabled
            || !f.close_stalled
            || self.s.step_unit != crate::config::StepUnit::PromptGuided
        {
            return;
        }
        for t in &mut self.trajs {
            let text = score_context(&t.reasoning);
            let Some(&(i, why)) = degenerate_steps(text, true, f).first() else {
                continue;
            };
            if i > 0 {
                let at = step_offset(text, i);
                t.cut(at, "cut-before-junk");
                self.run.stats.reject(&self.s, t.teacher, why);
            }
        }
    }

    fn choose(&mut self) -> Need {
        // With the filter, a trajectory with a degenerate step is rejected (counted under the
        // first rule it breaks); if every one is, the problem fails.
        let prompt_guided = self.s.step_unit == crate::config::StepUnit::PromptGuided;
        let rejected: Vec<Option<Reject>> = self
            .trajs
            .iter()
            .map(|t| {
                if !self.s.filter.enabled {
                    return None;
                }
                degenerate_steps(score_context(&t.reasoning), prompt_guided, &self.s.filter)
                    .first()
                    .map(|&(_, why)| why)
            })
            .collect();
        for (t, why) in self.trajs.iter().zip(&rejected) {
            if let Some(why) = why {
                self.run.stats.reject(&self.s, t.teacher, *why);
            }
        }
        // Highest score; ties go to the earlier trajectory (teacher order, then sample).
        let Some(mut best) = rejected.iter().position(Option::is_none) else {
            let mut reasons: Vec<String> = Vec::new();
            for (t, why) in self.trajs.iter().zip(&rejected) {
                let r = format!(
                    "{}: {}",
                    self.s.teacher_names[t.teacher],
                    why.map_or("", Reject::as_str)
                );
                if !reasons.contains(&r) {
                    reasons.push(r);
                }
            }
            let reason = format!(
                "every trajectory has a degenerate step ({})",
                reasons.join(", ")
            );
            let tree = self
                .s
                .save_tree
                .then(|| self.tree_entries(usize::MAX, &rejected));
            let rec = self.run.failed(&self.s, &self.p, reason, tree);
            self.state = State::Over;
            return Need::Done(Box::new(rec));
        };
        for (i, why) in rejected.iter().enumerate().skip(best + 1) {
            if why.is_none() && score_of(&self.scores[i]) > score_of(&self.scores[best]) {
                best = i;
            }
        }
        let t = &self.trajs[best];
        let d = self.scores[best].clone().unwrap_or(ScoreDetail {
            score: 0.0,
            mean_logprob: f64::NEG_INFINITY,
            m: None,
            per_scorer: vec![],
        });
        let step = StepRecord {
            index: 1,
            text: t.reasoning.clone(),
            teacher: self.s.teacher_names[t.teacher].clone(),
            score: d.score,
            mean_logprob: Some(d.mean_logprob),
            m: d.m,
            tokens: t.tokens,
            candidates: self.trajs.len(),
            finish: t.reason.to_string(),
            also_proposed_by: vec![],
            scorers: d.per_scorer.clone(),
            visits: None,
        };
        let tree = self.s.save_tree.then(|| self.tree_entries(best, &rejected));
        let outcome = Outcome {
            steps: vec![step],
            reasoning: t.reasoning.clone(),
            forced: t.forced,
            score: d.score,
            answer_teacher: t.teacher,
        };
        let need = self.run.answer(&self.s, &self.p, outcome);
        self.tree = tree;
        self.state = State::Answering;
        need
    }
}

impl CurationSearch {
    fn tree_entries(&self, best: usize, rejected: &[Option<Reject>]) -> Vec<TreeEntry> {
        let n = self.s.curation_samples;
        self.trajs
            .iter()
            .enumerate()
            .map(|(i, t)| TreeEntry {
                step: 1,
                id: i as u64 + 1,
                parent: None,
                parent_rank: None,
                teacher: self.s.teacher_names[t.teacher].clone(),
                text: t.reasoning.clone(),
                score: self.scores[i].as_ref().map(|d| d.score),
                kept: i == best,
                finished: true,
                note: Some(match rejected[i] {
                    Some(why) => format!("sample {}, rejected: {why}", i % n),
                    None => format!("sample {}", i % n),
                }),
                scorers: self.scores[i]
                    .as_ref()
                    .map(|d| d.per_scorer.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }
}

fn score_of(d: &Option<ScoreDetail>) -> f64 {
    d.as_ref().map_or(0.0, |d| d.score)
}

impl Search for CurationSearch {
    fn problem(&self) -> &Problem {
        &self.p
    }

    fn poll(&mut self, backend: &mut dyn Backend) -> Result<Need> {
        match std::mem::replace(&mut self.state, State::Over) {
            State::Generate => {
                let n = self.s.curation_samples;
                let mut reqs = Vec::new();
                let mut pending = Vec::new();
                for i in 0..self.trajs.len() {
                    let t = &self.trajs[i];
                    let seed = request_seed(
                        &self.p.id,
                        Purpose::Curation,
                        &[t.teacher as u64, (i % n) as u64, t.chunks as u64],
                        self.s.seed,
                    );
                    if let Some(r) = self.trajs[i].request(&self.s, &self.p, backend, seed)? {
                        reqs.push(r);
                        pending.push(i);
                    }
                }
                if !reqs.is_empty() {
                    self.state = State::Generating { pending };
                    return Ok(Need::Propose(reqs));
                }
                self.cut_before_junk();
                let mut groups = Vec::new();
                let mut reqs = Vec::new();
                for t in &self.trajs {
                    let (js, rs) = self
                        .s
                        .score_requests(&self.p, &t.reasoning, Some(t.teacher));
                    groups.push(js);
                    reqs.extend(rs);
                }
                self.state = State::Scoring { groups };
                Ok(Need::Score(reqs))
            }
            State::Choose => Ok(self.choose()),
            State::Finished(r) => Ok(Need::Done(r)),
            State::Over => Err(Error::Protocol("poll after the search ended".into())),
            s => {
                self.state = s;
                Err(Error::Protocol("poll while waiting for results".into()))
            }
        }
    }

    fn feed(&mut self, reply: Reply) -> Result<()> {
        match (std::mem::replace(&mut self.state, State::Over), reply) {
            (State::Generating { pending }, Reply::Proposals(ps)) => {
                let ps = expect_len(ps, pending.len(), "proposals")?;
                let teachers: Vec<usize> = pending.iter().map(|&i| self.trajs[i].teacher).collect();
                self.run.stats.proposals(&self.s, &teachers, &ps);
                for (&i, p) in pending.iter().zip(&ps) {
                    self.trajs[i].absorb(&p.text, &p.finish, p.tokens, self.s.end_on_answer);
                }
                self.state = State::Generate;
                Ok(())
            }
            (State::Scoring { groups }, Reply::Scores(ss)) => {
                let total: usize = groups.iter().map(Vec::len).sum();
                let ss = expect_len(ss, total, "scores")?;
                self.run.stats.scores(&ss);
                let mut at = 0;
                for (i, js) in groups.iter().enumerate() {
                    self.scores[i] = Some(self.s.aggregate(js, &ss[at..at + js.len()]));
                    at += js.len();
                }
                self.state = State::Choose;
                Ok(())
            }
            (State::Answering, Reply::Answers(a)) => {
                let rec = self.run.record(&self.s, &self.p, a, self.tree.take())?;
                self.state = State::Finished(Box::new(rec));
                Ok(())
            }
            (s, _) => {
                self.state = s;
                Err(wrong_reply())
            }
        }
    }
}
