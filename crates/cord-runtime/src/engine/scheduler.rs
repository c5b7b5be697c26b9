//! One model's scheduler: continuous batching of generation requests over its paged KV cache.
//!
//! Requests are admitted at any time ([`Scheduler::add`]); each [`Scheduler::step`] runs one
//! forward over the current [`Batch`]: one token for every decoding sequence, then chunks of the
//! prefills, up to the model's `max_batch_tokens`. A sequence attaches the longest prefix of its
//! tokens the prefix cache holds and computes only the rest. When the KV pool cannot hold a step,
//! the newest running sequence is preempted (its computed prefix stays cached) and recomputed
//! later. Finished sequences leave at once and keep what they computed in the prefix cache.
//!
//! [`super::Engine::generate`] is `add` for every request, then `step` until all have finished;
//! a server drives the same scheduler step by step through [`super::Engine::scheduler`].

use std::time::Instant;

use cord_kv::SeqId;
use cord_models::{LogitsMode, SeqInput};

use super::{EngineError, EngineModel, Finish, GenOutput, GenRequest, Result, is_out_of_blocks};
use crate::sampling::Sampler;
use crate::stop::{Finished, StopChecker, StopConfig};

/// Handle of a generation request inside one model's scheduler (increasing in admission order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What one [`Scheduler::step`] produced for a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// New final text of the request (text already reported is never taken back).
    Text { id: RequestId, text: String },
    /// The request finished: its sequence has left the batch, its KV is cached and freed.
    Finished { id: RequestId, output: GenOutput },
}

/// Occupancy of one model's scheduler and KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SchedulerStats {
    /// Requests admitted and not finished (or finished with an event not yet returned).
    pub live: usize,
    /// Sequences the KV cache holds (0 when idle: every finished sequence was freed).
    pub kv_sequences: usize,
    pub total_blocks: usize,
    pub free_blocks: usize,
    /// Distinct blocks the prefix cache holds (when idle, `free + cached = total`).
    pub cached_blocks: usize,
}

/// The scheduler's state between steps: the live sequences in admission order.
#[derive(Default)]
pub(super) struct Queue {
    live: Vec<Sequence>,
    next_id: u64,
    /// Events of requests [`super::Engine::generate`] did not add, for the next `step`.
    pending: Vec<Event>,
}

/// One generation request inside the scheduler.
struct Sequence {
    id: RequestId,
    seq: Option<SeqId>,
    /// All tokens the sequence should hold: prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    reused: usize,
    sampler: Sampler,
    stop: StopChecker,
    finish: Option<Finish>,
    /// Final text and how many generated tokens it spans, once finished.
    done: Option<Finished>,
    /// Preempted for lack of KV blocks: not re-admitted while others run until one finishes
    /// (re-admitting at once would only preempt it again).
    blocked: bool,
}

/// The work of one forward: which live sequences run, and which of their tokens each feeds.
struct Batch {
    items: Vec<BatchItem>,
}

struct BatchItem {
    /// Index into the live sequences.
    at: usize,
    from: usize,
    to: usize,
}

/// One model's scheduler, borrowed from the engine ([`super::Engine::scheduler`]).
pub struct Scheduler<'m> {
    m: &'m mut EngineModel,
}

impl EngineModel {
    /// This model's scheduler.
    pub fn scheduler(&mut self) -> Scheduler<'_> {
        Scheduler { m: self }
    }
}

impl Scheduler<'_> {
    /// Admits a request; it joins the batch at the next [`Scheduler::step`], beside sequences
    /// already decoding.
    pub fn add(&mut self, req: &GenRequest) -> Result<RequestId> {
        self.admit(req, "request")
    }

    /// [`Scheduler::add`] with `what` naming the request in errors.
    pub(super) fn admit(&mut self, req: &GenRequest, what: &str) -> Result<RequestId> {
        let tokens = self.m.encode(&req.prompt)?;
        if tokens.is_empty() {
            return Err(EngineError::Invalid(format!("{what}: empty prompt")));
        }
        let cfg = StopConfig {
            eos_token_ids: self.m.loaded.eos_token_ids.clone(),
            stop_strings: req.stop.clone(),
            max_new_tokens: req.max_new_tokens,
            include_stop_string: req.keep_stop,
            skip_special_tokens: true,
        };
        let ctx_from = tokens.len().saturating_sub(4);
        let stop = StopChecker::with_context(cfg, &tokens[ctx_from..]);
        let prompt_len = tokens.len();
        let sampler = Sampler::new(req.params, req.seed)
            .map_err(|e| EngineError::Invalid(format!("{what}: {e}")))?;
        let q = &mut self.m.queue;
        let id = RequestId(q.next_id);
        q.next_id += 1;
        q.live.push(Sequence {
            id,
            seq: None,
            tokens,
            prompt_len,
            reused: 0,
            sampler,
            stop,
            finish: if req.max_new_tokens == 0 {
                Some(Finish::Length)
            } else {
                None
            },
            done: None,
            blocked: false,
        });
        Ok(id)
    }

    /// Drops a request at once (a client went away): its KV sequence is freed, what it
    /// computed stays in the prefix cache. `false` when it is not live (finished or unknown).
    pub fn cancel(&mut self, id: RequestId) -> Result<bool> {
        let q = &mut self.m.queue;
        q.pending.retain(|e| match e {
            Event::Text { id: i, .. } => *i != id,
            Event::Finished { .. } => true,
        });
        let Some(at) = q.live.iter().position(|s| s.id == id) else {
            return Ok(false);
        };
        let mut s = q.live.remove(at);
        if let Some(seq) = s.seq.take() {
            self.m.cache_and_free(seq, None)?;
        }
        Ok(true)
    }

    /// Cancels `ids` after `e` stopped the call that added them; returns `e`.
    pub(super) fn abandon(
        &mut self,
        ids: impl Iterator<Item = RequestId>,
        e: EngineError,
    ) -> EngineError {
        for id in ids {
            // The first error is the one to report; a failing cancel only adds noise.
            let _ = self.cancel(id);
        }
        e
    }

    /// Events a caller took but does not own: returned again by the next step.
    pub(super) fn defer(&mut self, events: Vec<Event>) {
        self.m.queue.pending.extend(events);
    }

    /// No request is live and no event waits to be returned.
    pub fn is_idle(&self) -> bool {
        self.m.queue.live.is_empty() && self.m.queue.pending.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        let kv = &self.m.kv;
        SchedulerStats {
            live: self.m.queue.live.len(),
            kv_sequences: kv.num_sequences(),
            total_blocks: kv.num_blocks(),
            free_blocks: kv.free_blocks(),
            cached_blocks: kv
                .prefix_cache_block_refs()
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }

    /// One forward over the current batch (at most; none when a preemption made room instead or
    /// nothing is live). Returns the new text and the finished requests, in batch order.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let t0 = Instant::now();
        let out = self.step_inner();
        self.m.stats.generate_seconds += t0.elapsed().as_secs_f64();
        out
    }

    fn step_inner(&mut self) -> Result<Vec<Event>> {
        let mut events = std::mem::take(&mut self.m.queue.pending);
        let batch = self.plan()?;
        if batch.items.is_empty() {
            // Nothing can run: whatever is unfinished ends here with what it has.
            for s in &mut self.m.queue.live {
                s.finish.get_or_insert(Finish::Length);
            }
            self.retire(&[], &mut events)?;
            return Ok(events);
        }
        let live = &self.m.queue.live;
        let inputs: Vec<SeqInput> = batch
            .items
            .iter()
            .map(|b| SeqInput {
                seq: live[b.at].seq.expect("attached"),
                tokens: &live[b.at].tokens[b.from..b.to],
                logits: LogitsMode::Last,
            })
            .collect();
        let logits = match self.m.loaded.model.forward(&inputs, &mut self.m.kv) {
            Ok(l) => l,
            Err(e) if is_out_of_blocks(&e) => {
                drop(inputs);
                self.preempt(&batch)?;
                return Ok(events);
            }
            Err(e) => return Err(super::model_err(&self.m.name, e)),
        };
        drop(inputs);
        let m = &mut *self.m;
        m.stats.forward_calls += 1;
        m.stats.computed_tokens += batch
            .items
            .iter()
            .map(|b| (b.to - b.from) as u64)
            .sum::<u64>();
        let rows: Vec<Vec<f32>> = logits
            .to_vec2::<f32>()
            .map_err(|e| super::model_err(&m.name, e))?;
        for (row, b) in rows.iter().zip(&batch.items) {
            let s = &mut m.queue.live[b.at];
            if b.to < s.tokens.len() {
                continue; // prefill chunk that has not reached the end yet
            }
            let tok = s
                .sampler
                .sample(row)
                .map_err(|e| super::model_err(&m.name, e))?;
            s.tokens.push(tok);
            m.stats.generated_tokens += 1;
            let step = s
                .stop
                .push(&m.loaded.tokenizer, tok)
                .map_err(|e| super::model_err(&m.name, e))?;
            if !step.delta.is_empty() {
                events.push(Event::Text {
                    id: s.id,
                    text: step.delta,
                });
            }
            if let Some(f) = step.finished {
                s.finish = Some(f.reason.clone());
                s.done = Some(f);
            }
        }
        self.retire(&batch.items, &mut events)?;
        Ok(events)
    }

    /// Admission and chunked prefill: decoding sequences first (one token each), then prefill
    /// chunks, oldest request first, until the token budget is spent. Sequences without a KV
    /// sequence (new or preempted) attach their longest cached prefix here.
    fn plan(&mut self) -> Result<Batch> {
        let m = &mut *self.m;
        let live = &mut m.queue.live;
        let mut items = Vec::new();
        let mut budget = m.max_batch_tokens;
        let mut order: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].finish.is_none())
            .collect();
        order.sort_by_key(|&i| {
            let s = &live[i];
            let held = s.seq.map(|q| m.kv.seq_len(q).unwrap_or(0)).unwrap_or(0);
            (s.tokens.len() - held > 1, s.id)
        });
        let any_running = live.iter().any(|s| s.seq.is_some() && s.finish.is_none());
        for &i in &order {
            if budget == 0 {
                break;
            }
            let s = &mut live[i];
            if s.seq.is_none() && s.blocked && any_running {
                continue;
            }
            if s.seq.is_none() {
                // Keep at least one token to compute: its logits give the next token.
                let limit = s.tokens.len().saturating_sub(1);
                let (seq, cached) =
                    m.kv.match_prefix(&s.tokens[..limit])
                        .map_err(|e| super::model_err(&m.name, e))?;
                s.seq = Some(seq);
                if s.tokens.len() == s.prompt_len || s.reused == 0 {
                    s.reused = s.reused.max(cached.min(s.prompt_len));
                }
            }
            let seq = s.seq.expect("attached above");
            let held =
                m.kv.seq_len(seq)
                    .map_err(|e| super::model_err(&m.name, e))?;
            let n = (s.tokens.len() - held).min(budget);
            if n == 0 {
                continue;
            }
            items.push(BatchItem {
                at: i,
                from: held,
                to: held + n,
            });
            budget -= n;
        }
        Ok(Batch { items })
    }

    /// Finished sequences leave: those of the batch (in batch order) cache the kept part of
    /// what they computed and free their KV sequence, then the ones that finished without
    /// running (`max_new_tokens` 0, or nothing could run). Each gives a `Finished` event.
    fn retire(&mut self, ran: &[BatchItem], events: &mut Vec<Event>) -> Result<()> {
        let mut leaving: Vec<usize> = ran
            .iter()
            .map(|b| b.at)
            .filter(|&i| self.m.queue.live[i].finish.is_some())
            .collect();
        if !leaving.is_empty() {
            self.m.queue.live.iter_mut().for_each(|s| s.blocked = false);
        }
        for i in 0..self.m.queue.live.len() {
            if self.m.queue.live[i].finish.is_some() && !leaving.contains(&i) {
                leaving.push(i);
            }
        }
        for &i in &leaving {
            let s = &mut self.m.queue.live[i];
            let generated = s.tokens.len() - s.prompt_len;
            let kept = s
                .done
                .as_ref()
                .map_or(generated, |f| f.tokens_to_keep.min(generated));
            let keep = s.prompt_len + kept;
            if let Some(seq) = s.seq.take() {
                self.m.cache_and_free(seq, Some(keep))?;
            }
            let s = &self.m.queue.live[i];
            let text = match &s.done {
                Some(f) => f.text.clone(),
                None => s.stop.text().to_string(),
            };
            self.m.stats.prompt_tokens += s.prompt_len as u64;
            self.m.stats.reused_tokens += s.reused as u64;
            events.push(Event::Finished {
                id: s.id,
                output: GenOutput {
                    text,
                    token_ids: s.tokens[s.prompt_len..s.prompt_len + kept].to_vec(),
                    finish: s.finish.clone().unwrap_or(Finish::Length),
                    prompt_tokens: s.prompt_len,
                    reused_tokens: s.reused,
                    completion_tokens: generated,
                },
            });
        }
        let mut at = 0;
        self.m.queue.live.retain(|_| {
            at += 1;
            !leaving.contains(&(at - 1))
        });
        Ok(())
    }

    /// The pool could not hold this step: free the most recently admitted running sequence (it
    /// is recomputed later from its tokens, through the prefix cache where blocks survive).
    fn preempt(&mut self, batch: &Batch) -> Result<()> {
        let live = &mut self.m.queue.live;
        let running: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].seq.is_some() && live[i].finish.is_none())
            .collect();
        if running.len() <= 1 {
            let i = batch.items.first().map(|b| b.at).unwrap_or(0);
            let needed = live[i].tokens.len().div_ceil(self.m.kv.config().block_size);
            return Err(EngineError::KvTooSmall {
                model: self.m.name.clone(),
                needed,
                total: self.m.kv.num_blocks(),
            });
        }
        let victim = *running
            .iter()
            .max_by_key(|&&i| live[i].id)
            .expect("non-empty");
        let seq = live[victim].seq.take().expect("running");
        live[victim].blocked = true;
        let id = live[victim].id;
        self.m.cache_and_free(seq, None)?;
        self.m.stats.preemptions += 1;
        tracing::debug!(model = %self.m.name, req = id.0, "preempted a sequence: KV pool low");
        Ok(())
    }
}
