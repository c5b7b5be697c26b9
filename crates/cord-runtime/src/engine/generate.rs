//! Generation: requests over fully rendered text, run to completion through the model's
//! [`Scheduler`](super::Scheduler).

use std::collections::HashMap;

use super::scheduler::{Event, RequestId};
use super::{EngineModel, Result};
use crate::sampling::SamplingParams;
use crate::stop::Finish;

/// A generation request over fully rendered text.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: String,
    pub params: SamplingParams,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Keep the matched stop string in the returned text.
    pub keep_stop: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub completion_tokens: usize,
}

impl EngineModel {
    /// [`EngineModel::generate`] with the debug trace line.
    pub(super) fn generate_timed(
        &mut self,
        reqs: &[GenRequest],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<GenOutput>> {
        let secs = self.stats.generate_seconds;
        let out = self.generate(reqs, on_text);
        let secs = self.stats.generate_seconds - secs;
        if let Ok(o) = &out {
            let toks: usize = o.iter().map(|g| g.completion_tokens).sum();
            let reused: usize = o.iter().map(|g| g.reused_tokens).sum();
            let prompt: usize = o.iter().map(|g| g.prompt_tokens).sum();
            tracing::debug!(model = %self.name, requests = reqs.len(), prompt, reused, generated = toks, secs, "generate");
        }
        out
    }

    /// Every request added to the scheduler, then steps until all have finished; outputs in
    /// request order, `on_text(request index, new text)` as text becomes final. Requests others
    /// added stay live; their events wait for the scheduler's next step.
    fn generate(
        &mut self,
        reqs: &[GenRequest],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<GenOutput>> {
        let mut index: HashMap<RequestId, usize> = HashMap::with_capacity(reqs.len());
        let mut sched = self.scheduler();
        for (i, r) in reqs.iter().enumerate() {
            match sched.admit(r, &format!("request {i}")) {
                Ok(id) => index.insert(id, i),
                Err(e) => return Err(sched.abandon(index.into_keys(), e)),
            };
        }
        let mut outs: Vec<Option<GenOutput>> = vec![None; reqs.len()];
        let mut left = reqs.len();
        let mut others = Vec::new();
        while left > 0 {
            let events = match sched.step() {
                Ok(ev) => ev,
                Err(e) => {
                    let live = index
                        .iter()
                        .filter(|(_, i)| outs[**i].is_none())
                        .map(|(id, _)| *id);
                    return Err(sched.abandon(live.collect::<Vec<_>>().into_iter(), e));
                }
            };
            for ev in events {
                match ev {
                    Event::Text { id, text } if index.contains_key(&id) => {
                        on_text(index[&id], &text)
                    }
                    Event::Finished { id, output } if index.contains_key(&id) => {
                        outs[index[&id]] = Some(output);
                        left -= 1;
                    }
                    other => others.push(other),
                }
            }
        }
        sched.defer(others);
        Ok(outs
            .into_iter()
            .map(|o| o.expect("every request finished"))
            .collect())
    }
}
