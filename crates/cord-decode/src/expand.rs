//! One expansion, shared by CoRD beam search ([`crate::cord`]) and MCTS ([`crate::mcts`]): a
//! parent's reasoning (a beam, a tree node) continued by every teacher for one step.
//!
//! ```text
//! header   = the next step's header (or the cue phrase the parent's last step ended on)
//! for each teacher k:
//!     room = think budget left after parent + header        (O-5)
//!     room = 0: no request; the child is the parent closed  ("budget")
//!     else:     propose parent + header, at most min(step cap, room) tokens
//! proposal -> step outcome (empty, or a step that may end the reasoning)
//! child    = parent + header + step, unless the step is empty (or rejected by the search)
//! ```
//!
//! What each search does around it differs: CoRD filters and scores every child of every beam
//! and keeps the top B; MCTS adds the children to its tree and rolls one of them out.

use crate::backend::{Backend, Proposal, ProposeRequest};
use crate::error::Result;
use crate::io::Problem;
use crate::search::{Settings, StepOutcome, THINK_CLOSE, closed};
use crate::seed::{Purpose, request_seed};

/// One teacher's continuation of one parent by one step.
#[derive(Debug, Clone)]
pub(crate) struct Expansion {
    pub teacher: usize,
    /// Header of the step (`### Step t.`, or the pending cue phrase).
    pub header: String,
    /// Most new tokens of the proposal: the step cap or the budget's room.
    pub max_new: usize,
    /// The think budget, not the step cap, limits the proposal.
    pub budget_limited: bool,
    /// The think budget is already spent for this teacher: the parent is force-closed.
    pub no_room: bool,
    /// The proposal's outcome once it came back.
    pub outcome: Option<StepOutcome>,
    /// Generated tokens of the proposal.
    pub tokens: usize,
}

/// The expansions of the parent `reasoning` by every teacher (in teacher order) for the step
/// with `header`, each with the room its think budget leaves.
pub(crate) fn expansions(
    s: &Settings,
    backend: &mut dyn Backend,
    reasoning: &str,
    header: &str,
) -> Result<Vec<Expansion>> {
    let prefix = format!("{reasoning}{header}");
    (0..s.num_teachers())
        .map(|k| {
            let cap = s.step_caps[k];
            let room = s.room(backend, k, &prefix, cap)?;
            Ok(Expansion {
                teacher: k,
                header: header.to_string(),
                max_new: cap.min(room),
                budget_limited: room <= cap,
                no_room: room == 0,
                outcome: None,
                tokens: 0,
            })
        })
        .collect()
}

/// A child of an expansion: the parent's reasoning continued by the new step.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    /// The step: header and body, or `</think>` for a parent closed for lack of budget.
    pub text: String,
    /// The parent's reasoning followed by the step (closed for lack of budget).
    pub reasoning: String,
    pub done: bool,
    pub forced: bool,
    /// step | think | eos | step-cap | step-cap-mid | budget | answer
    pub reason: &'static str,
    /// Cue phrase that starts the next step (cue-phrase unit).
    pub pending: String,
    /// Generated tokens.
    pub tokens: usize,
}

impl Expansion {
    /// The proposal request for this expansion of the parent `reasoning`, seeded by the
    /// search's `key` for the parent (step, parent id) and the teacher.
    pub fn request(
        &self,
        s: &Settings,
        p: &Problem,
        reasoning: &str,
        purpose: Purpose,
        key: [u64; 2],
    ) -> ProposeRequest {
        ProposeRequest {
            teacher: self.teacher,
            question: p.question.clone(),
            reasoning: format!("{reasoning}{}", self.header),
            max_new_tokens: self.max_new,
            stop: s.step_stops(),
            seed: request_seed(
                &p.id,
                purpose,
                &[key[0], key[1], self.teacher as u64],
                s.seed,
            ),
        }
    }

    /// The outcome of proposal `p` for this expansion; its token count is kept.
    pub fn receive(&mut self, s: &Settings, p: &Proposal) -> StepOutcome {
        self.tokens = p.tokens;
        s.step_outcome(p, self.budget_limited)
    }

    /// The step text of an outcome (header and body); `None` for an empty step.
    pub fn step_text(&self, out: &StepOutcome) -> Option<String> {
        match out {
            StepOutcome::Blank => None,
            StepOutcome::Step { body, .. } => Some(format!("{}{body}", self.header)),
        }
    }

    /// The child of the parent `reasoning`: closed when there was no room, else the parent
    /// followed by the proposed step; `None` when the step is empty (or was never proposed).
    pub fn child(self, reasoning: &str) -> Option<Child> {
        if self.no_room {
            return Some(Child {
                text: THINK_CLOSE.to_string(),
                reasoning: closed(reasoning),
                done: true,
                forced: true,
                reason: "budget",
                pending: String::new(),
                tokens: 0,
            });
        }
        match self.outcome {
            Some(StepOutcome::Step {
                body,
                done,
                forced,
                reason,
                next_header,
            }) => {
                let text = format!("{}{body}", self.header);
                Some(Child {
                    reasoning: format!("{reasoning}{text}"),
                    text,
                    done,
                    forced,
                    reason,
                    pending: next_header,
                    tokens: self.tokens,
                })
            }
            _ => None,
        }
    }
}

/// Whether two children's reasonings are the same (O-10: identical texts are merged).
pub(crate) fn same_reasoning(a: &str, b: &str) -> bool {
    a.trim_end() == b.trim_end()
}

/// Notes that `teacher` also proposed the step first proposed by `first` (O-10).
pub(crate) fn also_proposed(first: usize, also: &mut Vec<usize>, teacher: usize) {
    if first != teacher && !also.contains(&teacher) {
        also.push(teacher);
    }
}
