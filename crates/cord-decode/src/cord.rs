//! CoRD: collaborative step-wise multi-teacher beam search (sections 6-7), as a state machine.
//! Greedy decoding is the same search with width 1.
//!
//! The algorithm, with the [`State`] each part runs in:
//!
//! ```text
//! live = [the prompt alone]; finished = []                      (O-7)
//! for t in 1.. {                                                 Expand
//!     for each live beam b, each teacher k with think-budget room:
//!         propose b + header(t) with k, stopping at the step's end   Proposing
//!     an empty proposal is asked for once more                   Resample   (O-11)
//!     candidates = usable proposals, identical texts merged,     Candidates (O-10)
//!                  junk rejected by the filter
//!     if none: every live beam closed (ForceAll, filter.close_stalled), or, with no step
//!              to close or close_stalled off, dropped -> Failed (none finished) or Answer
//!     score each candidate with the scorer(s)                    Scoring    (O-14)
//!     live = top B - |finished| candidates; finished += done ones   (O-8, O-12)
//!     if live is empty: break; if t = max_steps: ForceAll (close every live beam, score)
//! }
//! answer after the best finished trajectory                      Answer, Answering (O-18)
//! if it does not verify: answer the next finished one (verify_beams)  Answer
//! record it                                                      Finished
//! ```

use std::sync::Arc;

use crate::backend::{Backend, Proposal, ProposeRequest};
use crate::error::{Error, Result};
use crate::expand::{Expansion, also_proposed, expansions, same_reasoning};
use crate::hygiene::{Reject, makes_progress};
use crate::io::{Problem, Record, StepRecord, TreeEntry};
use crate::search::{
    Need, Outcome, Reply, Run, ScoreDetail, Search, SelectedStep, Settings, StepOutcome,
    THINK_CLOSE, answer_verifies, closed, expect_len, step_texts, wrong_reply,
};
use crate::seed::Purpose;

#[derive(Debug, Clone)]
struct Beam {
    id: u64,
    reasoning: String,
    steps: Vec<StepRecord>,
    score: f64,
    /// Header of the next step (cue-phrase unit).
    pending: String,
    forced: bool,
    /// Proposer of the last step.
    teacher: usize,
}

/// One expansion of the current step ([`crate::expand`]): live beam `rank` continued by one
/// teacher.
#[derive(Debug, Clone)]
struct BeamExpansion {
    rank: usize,
    exp: Expansion,
    /// The step was rejected by the filter.
    rejected: Option<Reject>,
}

impl BeamExpansion {
    /// The expansion gives no candidate: its step is empty or was rejected.
    fn unusable(&self) -> bool {
        !self.exp.no_room
            && (self.rejected.is_some() || self.exp.outcome == Some(StepOutcome::Blank))
    }
}

#[derive(Debug, Clone)]
struct Cand {
    id: u64,
    rank: usize,
    teacher: usize,
    reasoning: String,
    text: String,
    tokens: usize,
    done: bool,
    forced: bool,
    reason: &'static str,
    pending: String,
    also: Vec<usize>,
    score: Option<ScoreDetail>,
}

#[derive(Debug)]
enum State {
    Expand,
    Proposing {
        slots: Vec<BeamExpansion>,
        pending: Vec<usize>,
        resample: bool,
    },
    Resample {
        slots: Vec<BeamExpansion>,
        pending: Vec<usize>,
    },
    Candidates {
        slots: Vec<BeamExpansion>,
    },
    /// Force-close every live beam (max steps reached, or every candidate was dropped).
    ForceAll {
        reason: &'static str,
    },
    /// Every beam was dropped and none had finished: the problem is recorded as failed.
    Failed(String),
    Scoring {
        cands: Vec<Cand>,
        groups: Vec<(usize, Vec<usize>)>,
    },
    Answer,
    Answering,
    Finished(Box<Record>),
    Over,
}

/// First tree id of rejected candidates.
const REJECTED_IDS: u64 = 1 << 40;

/// Beam search over one problem.
pub struct CordSearch {
    s: Arc<Settings>,
    p: Problem,
    live: Vec<Beam>,
    finished: Vec<Beam>,
    t: usize,
    next_id: u64,
    /// Rejected candidates so far (their tree ids start at [`REJECTED_IDS`]).
    rejected_count: u64,
    state: State,
    tree: Vec<TreeEntry>,
    run: Run,
    /// Finished trajectories still to answer, best first (`verify_beams`); `None` until the
    /// first answer is asked for.
    to_answer: Option<Vec<usize>>,
    /// Each answered trajectory with its answer, in the order answered.
    answered: Vec<(Outcome, Proposal)>,
    /// Steps kept since the last [`Search::take_selected`].
    selected: Vec<SelectedStep>,
}

impl CordSearch {
    pub fn new(s: Arc<Settings>, p: Problem) -> Self {
        // B_0 is the prompt alone (O-7).
        let root = Beam {
            id: 0,
            reasoning: String::new(),
            steps: Vec::new(),
            score: f64::NAN,
            pending: String::new(),
            forced: false,
            teacher: 0,
        };
        CordSearch {
            s,
            p,
            live: vec![root],
            finished: Vec::new(),
            t: 1,
            next_id: 1,
            rejected_count: 0,
            state: State::Expand,
            tree: Vec::new(),
            run: Run::new(),
            to_answer: None,
            answered: Vec::new(),
            selected: Vec::new(),
        }
    }

    fn propose_request(&self, slot: &BeamExpansion, purpose: Purpose) -> ProposeRequest {
        let b = &self.live[slot.rank];
        slot.exp.request(
            &self.s,
            &self.p,
            &b.reasoning,
            purpose,
            [self.t as u64, b.id],
        )
    }

    fn expand(&mut self, backend: &mut dyn Backend) -> Result<Option<Need>> {
        if self.live.is_empty() {
            self.state = State::Answer;
            return Ok(None);
        }
        let mut slots = Vec::new();
        let mut reqs = Vec::new();
        let mut pending = Vec::new();
        for rank in 0..self.live.len() {
            let header = self.s.header(self.t, &self.live[rank].pending);
            for exp in expansions(&self.s, backend, &self.live[rank].reasoning, &header)? {
                let mut slot = BeamExpansion {
                    rank,
                    exp,
                    rejected: None,
                };
                if !slot.exp.no_room {
                    reqs.push(self.propose_request(&slot, Purpose::Propose));
                    pending.push(slots.len());
                } else {
                    slot.exp.outcome = Some(StepOutcome::Blank);
                }
                slots.push(slot);
            }
        }
        if reqs.is_empty() {
            self.state = State::Candidates { slots };
            return Ok(None);
        }
        self.state = State::Proposing {
            slots,
            pending,
            resample: false,
        };
        Ok(Some(Need::Propose(reqs)))
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Candidates of this step in (parent rank, teacher) order, duplicates merged (O-10).
    fn candidates(&mut self, slots: Vec<BeamExpansion>) -> Vec<Cand> {
        let mut cands: Vec<Cand> = Vec::new();
        for slot in slots {
            if slot.rejected.is_some() {
                // Its tree entry was written when it was rejected.
                continue;
            }
            let parent = &self.live[slot.rank];
            let (parent_id, parent_reasoning) = (parent.id, parent.reasoning.clone());
            let id = self.new_id();
            let (rank, teacher, header) = (slot.rank, slot.exp.teacher, slot.exp.header.clone());
            let Some(child) = slot.exp.child(&parent_reasoning) else {
                self.tree_entry(
                    self.t,
                    id,
                    Some(parent_id),
                    Some(rank),
                    teacher,
                    &header,
                    None,
                    false,
                    false,
                    Some("empty step dropped".into()),
                    Vec::new(),
                );
                continue;
            };
            let cand = Cand {
                id,
                rank,
                teacher,
                reasoning: child.reasoning,
                text: child.text,
                tokens: child.tokens,
                done: child.done,
                forced: child.forced,
                reason: child.reason,
                pending: child.pending,
                also: Vec::new(),
                score: None,
            };
            if self.s.dedupe
                && let Some(first) = cands
                    .iter_mut()
                    .find(|c| same_reasoning(&c.reasoning, &cand.reasoning))
            {
                also_proposed(first.teacher, &mut first.also, cand.teacher);
                let note = format!("duplicate of {}", first.id);
                self.tree_entry(
                    self.t,
                    cand.id,
                    Some(parent_id),
                    Some(cand.rank),
                    cand.teacher,
                    &cand.text,
                    None,
                    false,
                    cand.done,
                    Some(note),
                    Vec::new(),
                );
                continue;
            }
            cands.push(cand);
        }
        cands
    }

    /// Progress first (`[filter] progress_first`): when some candidates of this step make
    /// progress (a new number, a formula or the final answer), the others are rejected before
    /// scoring; when none does, all compete.
    fn progress_first(&mut self, cands: Vec<Cand>) -> Vec<Cand> {
        if !(self.s.filter.enabled && self.s.filter.progress_first) {
            return cands;
        }
        let progress: Vec<bool> = cands
            .iter()
            .map(|c| {
                makes_progress(
                    &c.text,
                    &self.p.question,
                    &step_texts(&self.live[c.rank].steps),
                )
            })
            .collect();
        if progress.iter().all(|&p| p) || !progress.iter().any(|&p| p) {
            return cands;
        }
        let mut kept = Vec::with_capacity(cands.len());
        for (c, p) in cands.into_iter().zip(progress) {
            if p {
                kept.push(c);
                continue;
            }
            self.run
                .stats
                .reject(&self.s, c.teacher, Reject::NoProgress);
            let parent_id = self.live[c.rank].id;
            self.tree_entry(
                self.t,
                c.id,
                Some(parent_id),
                Some(c.rank),
                c.teacher,
                &c.text,
                None,
                false,
                false,
                Some(format!("rejected: {}", Reject::NoProgress)),
                Vec::new(),
            );
        }
        kept
    }

    /// Filters an expansion's new step: a rejection is counted and written to the tree.
    fn check_slot(&mut self, slot: &BeamExpansion, out: &StepOutcome) -> Option<Reject> {
        let parent = &self.live[slot.rank];
        let Some(text) = slot.exp.step_text(out) else {
            self.run
                .stats
                .reject(&self.s, slot.exp.teacher, Reject::Empty);
            return None;
        };
        let why = self.s.reject(out, &text, &step_texts(&parent.steps))?;
        // Rejected candidates get ids of their own, so that beam ids (and the seeds drawn from
        // them) are the same with and without the filter.
        let (parent_id, id) = (parent.id, REJECTED_IDS + self.rejected_count);
        self.rejected_count += 1;
        self.run.stats.reject(&self.s, slot.exp.teacher, why);
        self.tree_entry(
            self.t,
            id,
            Some(parent_id),
            Some(slot.rank),
            slot.exp.teacher,
            &text,
            None,
            false,
            false,
            Some(format!("rejected: {why}")),
            Vec::new(),
        );
        Some(why)
    }

    /// Counts the beams left without a candidate and says why, for a failed record.
    fn dropped_beams(&mut self, slots: &[BeamExpansion]) -> String {
        let mut reasons: Vec<String> = Vec::new();
        for rank in 0..self.live.len() {
            let of_beam: Vec<&BeamExpansion> = slots.iter().filter(|sl| sl.rank == rank).collect();
            if !of_beam.is_empty() && of_beam.iter().all(|sl| sl.unusable()) {
                if self.s.filter.enabled {
                    self.run.stats.beams_dropped += 1;
                }
                for sl in of_beam {
                    let why = sl.rejected.map_or("empty", Reject::as_str);
                    let r = format!("{}: {why}", self.s.teacher_names[sl.exp.teacher]);
                    if !reasons.contains(&r) {
                        reasons.push(r);
                    }
                }
            }
        }
        format!(
            "step {}: every candidate of every beam was rejected, also after a resample ({})",
            self.t,
            reasons.join(", ")
        )
    }

    fn force_all(&mut self, reason: &'static str) -> Vec<Cand> {
        let live = std::mem::take(&mut self.live);
        let cands = live
            .iter()
            .enumerate()
            .map(|(rank, b)| Cand {
                id: self.next_id + rank as u64,
                rank,
                teacher: b.teacher,
                reasoning: closed(&b.reasoning),
                text: THINK_CLOSE.to_string(),
                tokens: 0,
                done: true,
                forced: true,
                reason,
                pending: String::new(),
                also: Vec::new(),
                score: None,
            })
            .collect::<Vec<_>>();
        self.next_id += cands.len() as u64;
        self.live = live;
        cands
    }

    /// `search.close_candidate`: every live beam that has a score (from step 2 on) of at least
    /// `close_min_score`, as itself closed, already scored: its score is the beam's own (the
    /// same context).
    fn close_candidates(&mut self) -> Vec<Cand> {
        if !self.s.close_candidate {
            return Vec::new();
        }
        let mut out = Vec::new();
        for rank in 0..self.live.len() {
            let b = &self.live[rank];
            let Some(last) = b.steps.last() else {
                continue;
            };
            if b.score < self.s.close_min_score {
                continue;
            }
            let score = Some(ScoreDetail {
                score: b.score,
                mean_logprob: last.mean_logprob.unwrap_or(b.score.ln()),
                m: last.m,
                per_scorer: last.scorers.clone(),
            });
            let (teacher, reasoning) = (b.teacher, closed(&b.reasoning));
            out.push(Cand {
                id: self.new_id(),
                rank,
                teacher,
                reasoning,
                text: THINK_CLOSE.to_string(),
                tokens: 0,
                done: true,
                forced: false,
                reason: "score-close",
                pending: String::new(),
                also: Vec::new(),
                score,
            });
        }
        out
    }

    fn score_need(&mut self, cands: Vec<Cand>) -> Need {
        let mut groups = Vec::new();
        let mut reqs = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            if c.score.is_some() {
                continue;
            }
            let (js, rs) = self
                .s
                .score_requests(&self.p, &c.reasoning, Some(c.teacher));
            groups.push((i, js));
            reqs.extend(rs);
        }
        self.state = State::Scoring { cands, groups };
        Need::Score(reqs)
    }

    #[allow(clippy::too_many_arguments)]
    fn tree_entry(
        &mut self,
        step: usize,
        id: u64,
        parent: Option<u64>,
        parent_rank: Option<usize>,
        teacher: usize,
        text: &str,
        score: Option<f64>,
        kept: bool,
        finished: bool,
        note: Option<String>,
        scorers: Vec<crate::io::ScorerValue>,
    ) {
        if self.s.save_tree {
            self.tree.push(TreeEntry {
                step,
                id,
                parent,
                parent_rank,
                teacher: self.s.teacher_names[teacher].clone(),
                text: text.to_string(),
                score,
                kept,
                finished,
                note,
                scorers,
            });
        }
    }

    /// Keeps the top B − |finished| candidates (memoryless, O-8, O-12).
    fn select(&mut self, mut cands: Vec<Cand>) {
        cands.sort_by(|a, b| {
            let (sa, sb) = (
                a.score.as_ref().map_or(0.0, |s| s.score),
                b.score.as_ref().map_or(0.0, |s| s.score),
            );
            sb.total_cmp(&sa)
                .then(a.rank.cmp(&b.rank))
                .then(a.teacher.cmp(&b.teacher))
        });
        let keep = self.s.width.saturating_sub(self.finished.len());
        let n = cands.len();
        let parents = std::mem::take(&mut self.live);
        for (i, c) in cands.into_iter().enumerate() {
            let detail = c.score.clone().unwrap_or(ScoreDetail {
                score: 0.0,
                mean_logprob: f64::NEG_INFINITY,
                m: None,
                per_scorer: Vec::new(),
            });
            let kept = i < keep;
            let parent = &parents[c.rank];
            self.tree_entry(
                self.t,
                c.id,
                Some(parent.id),
                Some(c.rank),
                c.teacher,
                &c.text,
                Some(detail.score),
                kept,
                c.done,
                None,
                detail.per_scorer.clone(),
            );
            if !kept {
                continue;
            }
            let mut steps = parent.steps.clone();
            steps.push(StepRecord {
                index: self.t,
                text: c.text,
                teacher: self.s.teacher_names[c.teacher].clone(),
                score: detail.score,
                mean_logprob: Some(detail.mean_logprob),
                m: detail.m,
                tokens: c.tokens,
                candidates: n,
                finish: c.reason.to_string(),
                also_proposed_by: c
                    .also
                    .iter()
                    .map(|&k| self.s.teacher_names[k].clone())
                    .collect(),
                scorers: detail.per_scorer,
                visits: None,
            });
            self.selected.push(SelectedStep {
                beam: i,
                done: c.done,
                step: steps.last().expect("pushed above").clone(),
            });
            let beam = Beam {
                id: c.id,
                reasoning: c.reasoning,
                steps,
                score: detail.score,
                pending: c.pending,
                forced: c.forced,
                teacher: c.teacher,
            };
            if c.done {
                self.finished.push(beam)
            } else {
                self.live.push(beam)
            }
        }
        self.t += 1;
        if self.live.is_empty() {
            self.state = State::Answer;
        } else if self.t > self.s.max_steps {
            tracing::warn!(id = %self.p.id, "max_steps = {} reached; force-closing {} live beams", self.s.max_steps, self.live.len());
            self.state = State::ForceAll {
                reason: "max-steps",
            };
        } else {
            self.state = State::Expand;
        }
    }
}

impl Search for CordSearch {
    fn problem(&self) -> &Problem {
        &self.p
    }

    fn take_selected(&mut self) -> Vec<SelectedStep> {
        std::mem::take(&mut self.selected)
    }

    fn poll(&mut self, backend: &mut dyn Backend) -> Result<Need> {
        loop {
            match std::mem::replace(&mut self.state, State::Over) {
                State::Expand => {
                    if let Some(need) = self.expand(backend)? {
                        return Ok(need);
                    }
                }
                State::Resample { slots, pending } => {
                    let reqs = pending
                        .iter()
                        .map(|&i| self.propose_request(&slots[i], Purpose::Resample))
                        .collect();
                    self.state = State::Proposing {
                        slots,
                        pending,
                        resample: true,
                    };
                    return Ok(Need::Propose(reqs));
                }
                State::Candidates { slots } => {
                    let counted = self.run.stats.beams_dropped;
                    let dropped = self.dropped_beams(&slots);
                    let cands = self.candidates(slots);
                    let has_steps = self.live.iter().any(|b| !b.steps.is_empty());
                    if cands.is_empty()
                        && self.s.filter.enabled
                        && self.s.filter.close_stalled
                        && has_steps
                    {
                        // Closed, not dropped (`filter.close_stalled`).
                        self.run.stats.beams_dropped = counted;
                        tracing::debug!(id = %self.p.id, step = self.t, "{dropped}; closing the live beams");
                        self.state = State::ForceAll { reason: "stalled" };
                        continue;
                    }
                    if cands.is_empty() && self.s.filter.enabled {
                        self.live.clear();
                        if self.finished.is_empty() {
                            tracing::warn!(id = %self.p.id, step = self.t, "{dropped}");
                            self.state = State::Failed(dropped);
                        } else {
                            self.state = State::Answer;
                        }
                        continue;
                    }
                    if cands.is_empty() {
                        tracing::warn!(id = %self.p.id, step = self.t, "every candidate was empty; force-closing the live beams");
                        self.state = State::ForceAll {
                            reason: "no-candidates",
                        };
                        continue;
                    }
                    let mut cands = self.progress_first(cands);
                    cands.extend(self.close_candidates());
                    if cands.iter().all(|c| c.score.is_some()) {
                        self.select(cands);
                        continue;
                    }
                    return Ok(self.score_need(cands));
                }
                State::ForceAll { reason } => {
                    let cands = self.force_all(reason);
                    return Ok(self.score_need(cands));
                }
                State::Answer => {
                    let finished = &self.finished;
                    let order = self.to_answer.get_or_insert_with(|| {
                        // Best first; among equal scores the one finished first.
                        let mut order: Vec<usize> = (0..finished.len()).collect();
                        order.sort_by(|&a, &b| finished[b].score.total_cmp(&finished[a].score));
                        order.reverse();
                        order
                    });
                    let best = order.pop().map(|i| &self.finished[i]).ok_or_else(|| {
                        Error::Protocol("search ended without a finished trajectory".into())
                    })?;
                    let outcome = Outcome {
                        steps: best.steps.clone(),
                        reasoning: best.reasoning.clone(),
                        forced: best.forced,
                        score: best.score,
                        answer_teacher: best.teacher,
                    };
                    let need = self.run.answer(&self.s, &self.p, outcome);
                    self.state = State::Answering;
                    return Ok(need);
                }
                State::Failed(reason) => {
                    let tree = self.s.save_tree.then(|| std::mem::take(&mut self.tree));
                    let rec = self.run.failed(&self.s, &self.p, reason, tree);
                    return Ok(Need::Done(Box::new(rec)));
                }
                State::Finished(r) => return Ok(Need::Done(r)),
                s @ (State::Proposing { .. } | State::Scoring { .. } | State::Answering) => {
                    self.state = s;
                    return Err(Error::Protocol("poll while waiting for results".into()));
                }
                State::Over => return Err(Error::Protocol("poll after the search ended".into())),
            }
        }
    }

    fn feed(&mut self, reply: Reply) -> Result<()> {
        match (std::mem::replace(&mut self.state, State::Over), reply) {
            (
                State::Proposing {
                    mut slots,
                    pending,
                    resample,
                },
                Reply::Proposals(ps),
            ) => {
                let ps = expect_len(ps, pending.len(), "proposals")?;
                let teachers: Vec<usize> = pending.iter().map(|&i| slots[i].exp.teacher).collect();
                self.run.stats.proposals(&self.s, &teachers, &ps);
                let mut again = Vec::new();
                for (&i, p) in pending.iter().zip(&ps) {
                    let out = slots[i].exp.receive(&self.s, p);
                    if out == StepOutcome::Blank && !resample && self.s.resample_empty {
                        again.push(i);
                    }
                    slots[i].rejected = self.check_slot(&slots[i], &out);
                    slots[i].exp.outcome = Some(out);
                }
                if self.s.filter.enabled && !resample {
                    // A beam whose every candidate is empty or rejected is proposed for once
                    // more, with new seeds; after that it is dropped.
                    for rank in 0..self.live.len() {
                        let of_beam = || slots.iter().enumerate().filter(|(_, sl)| sl.rank == rank);
                        let any_pending = of_beam().any(|(i, _)| pending.contains(&i));
                        if any_pending && of_beam().all(|(_, sl)| sl.unusable()) {
                            self.run.stats.beams_resampled += 1;
                            for (i, sl) in of_beam() {
                                if !sl.exp.no_room && !again.contains(&i) {
                                    again.push(i);
                                }
                            }
                        }
                    }
                    again.sort_unstable();
                }
                self.state = if again.is_empty() {
                    State::Candidates { slots }
                } else {
                    State::Resample {
                        slots,
                        pending: again,
                    }
                };
                Ok(())
            }
            (State::Scoring { mut cands, groups }, Reply::Scores(ss)) => {
                let total: usize = groups.iter().map(|(_, js)| js.len()).sum();
                let ss = expect_len(ss, total, "scores")?;
                self.run.stats.scores(&ss);
                let mut at = 0;
                for (i, js) in groups {
                    let d = self.s.aggregate(&js, &ss[at..at + js.len()]);
                    at += js.len();
                    cands[i].score = Some(d);
                }
                self.select(cands);
                Ok(())
            }
            (State::Answering, Reply::Answers(a)) => {
                let mut a = expect_len(a, 1, "answers")?;
                let outcome = self
                    .run
                    .outcome
                    .take()
                    .ok_or_else(|| Error::Protocol("no outcome".into()))?;
                let answer = a.remove(0);
                let verified = answer_verifies(&self.s, &self.p, &answer);
                self.answered.push((outcome, answer));
                let more = self.to_answer.as_ref().is_some_and(|o| !o.is_empty());
                if !verified && more && self.s.verify_beams && !self.p.answer.trim().is_empty() {
                    self.state = State::Answer;
                    return Ok(());
                }
                // The first answer that verifies, else the best trajectory's; the other
                // answers' tokens are counted in the record's stats.
                let keep = if verified { self.answered.len() - 1 } else { 0 };
                let mut answered = std::mem::take(&mut self.answered);
                let (outcome, answer) = answered.remove(keep);
                let stats = &mut self.run.stats;
                for (o, extra) in &answered {
                    *stats
                        .tokens
                        .entry(self.s.teacher_names[o.answer_teacher].clone())
                        .or_default() += extra.tokens as u64;
                    stats.reused += extra.reused_tokens as u64;
                    stats.extra_answers += 1;
                }
                self.run.outcome = Some(outcome);
                let tree = self.s.save_tree.then(|| std::mem::take(&mut self.tree));
                let rec = self.run.record(&self.s, &self.p, vec![answer], tree)?;
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
