//! A trajectory written in chunks (curation's whole trajectories, MCTS's rollouts).

use crate::backend::{Backend, Finish, ProposeRequest};
use crate::error::Result;
use crate::hygiene::states_answer;
use crate::io::Problem;
use crate::search::{Settings, THINK_CLOSE, closed};

/// A trajectory generated in chunks of at most the step cap until `</think>`, EOS or the budget.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    pub teacher: usize,
    pub reasoning: String,
    pub done: bool,
    pub forced: bool,
    pub reason: &'static str,
    pub chunks: usize,
    pub tokens: usize,
    /// The last request's max_new_tokens was the budget's room.
    limited: bool,
}

impl Chunked {
    pub fn new(teacher: usize, reasoning: String) -> Self {
        Chunked {
            teacher,
            reasoning,
            done: false,
            forced: false,
            reason: "think",
            chunks: 0,
            tokens: 0,
            limited: false,
        }
    }

    /// Cuts the text at byte `at` (the start of a step) and closes it there, as a forced close.
    pub fn cut(&mut self, at: usize, reason: &'static str) {
        self.reasoning.truncate(at);
        self.force(reason);
    }

    fn force(&mut self, reason: &'static str) {
        self.reasoning = closed(&self.reasoning);
        self.done = true;
        self.forced = true;
        self.reason = reason;
    }

    /// The next chunk's request, or `None` when the trajectory is (now) complete.
    pub fn request(
        &mut self,
        s: &Settings,
        p: &Problem,
        backend: &mut dyn Backend,
        seed: u64,
    ) -> Result<Option<ProposeRequest>> {
        if self.done {
            return Ok(None);
        }
        if self.chunks >= s.max_steps {
            self.force("max-steps");
            return Ok(None);
        }
        let cap = s.step_caps[self.teacher];
        let room = s.room(backend, self.teacher, &self.reasoning, cap)?;
        if room == 0 {
            self.force("budget");
            return Ok(None);
        }
        self.limited = room <= cap;
        Ok(Some(ProposeRequest {
            teacher: self.teacher,
            question: p.question.clone(),
            reasoning: self.reasoning.clone(),
            max_new_tokens: cap.min(room),
            stop: vec![THINK_CLOSE.to_string()],
            seed,
        }))
    }

    /// Appends a generated chunk. With `end_on_answer`, a chunk that states the final answer
    /// ends the trajectory after that line (finish `answer`).
    pub fn absorb(&mut self, text: &str, finish: &Finish, tokens: usize, end_on_answer: bool) {
        self.chunks += 1;
        self.tokens += tokens;
        if end_on_answer && let Some(cut) = states_answer(text) {
            self.reasoning.push_str(text[..cut].trim_end());
            self.reasoning.push('\n');
            self.reasoning.push_str(THINK_CLOSE);
            self.done = true;
            self.reason = "answer";
            return;
        }
        self.reasoning.push_str(text);
        match finish {
            Finish::Stop(_) => {
                self.reasoning.push_str(THINK_CLOSE);
                self.done = true;
                self.reason = "think";
            }
            Finish::Eos => self.force("eos"),
            Finish::Length if self.limited || tokens == 0 => self.force("budget"),
            Finish::Length => {}
        }
    }
}
