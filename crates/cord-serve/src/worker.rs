//! The engine worker: one OS thread that owns the [`Models`] (the engine is synchronous) and
//! serves [`Job`]s from a channel; each job carries its own channel back.
//!
//! Continuous batching across clients: a generation job is added to its model's
//! [`cord_runtime::engine::Scheduler`] as soon as the worker sees it, and the worker steps every
//! model that has live requests, one forward over the whole batch per step, so a new client joins
//! the batch that is already decoding. Between steps the worker takes new jobs, answers scoring
//! jobs (one batched scoring call each, over the same KV and prefix caches) and cancels the
//! requests whose client has gone (the receiver of their channel was dropped): their KV sequence
//! is freed at once.
//!
//! A CoRD run (`/v1/cord`) holds the worker for its whole duration: the driver owns the engine
//! for the search. Chat and completion requests already in a scheduler keep decoding inside the
//! search's own generation calls (the scheduler steps every live sequence), but their text is
//! delivered, and new requests are admitted, only when the search ends (or when its client
//! disconnects, which stops the search after the current round).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use cord_decode::io::{Problem, Record};
use cord_decode::{SelectedStep, Settings};
use cord_runtime::engine::{
    EngineError, Event, GenOutput, GenRequest, ModelId, RequestId, ScoreOutput, TokenScoreRequest,
};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::error::ApiError;
use crate::models::Models;

/// Work for the engine worker.
pub(crate) enum Job {
    Generate(GenJob),
    Score(ScoreJob),
    Cord(CordJob),
    State(oneshot::Sender<EngineState>),
}

/// One sequence to generate; its events go to `events` tagged with `index` (several jobs of one
/// request, `n > 1`, share one channel).
pub(crate) struct GenJob {
    pub model: ModelId,
    pub index: usize,
    pub req: GenRequest,
    pub events: tmpsc::UnboundedSender<(usize, GenEvent)>,
}

pub(crate) enum GenEvent {
    /// Text that became final (stop strings already cut).
    Text(String),
    Done(GenOutput),
    Failed(ApiError),
}

/// Teacher-forced scoring of several continuations on one model.
pub(crate) struct ScoreJob {
    pub model: ModelId,
    pub reqs: Vec<TokenScoreRequest>,
    /// Most likely tokens to list per position (0 = none).
    pub top: usize,
    pub reply: oneshot::Sender<Result<Vec<ScoreOutput>, ApiError>>,
}

/// One problem through the pool's search with per-request settings.
pub(crate) struct CordJob {
    pub settings: Arc<Settings>,
    pub problem: Problem,
    pub events: tmpsc::UnboundedSender<CordEvent>,
}

pub(crate) enum CordEvent {
    Step(SelectedStep),
    Record(Box<Record>),
    Failed(ApiError),
}

/// The KV state of one model, for `/v1/engine` and the leak checks of the tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelState {
    /// The names this model is served under.
    pub names: Vec<String>,
    /// Sequences the KV cache holds (0 when no request is running).
    pub live_sequences: usize,
    pub kv_blocks: usize,
    pub free_blocks: usize,
    /// Distinct blocks the prefix cache holds.
    pub prefix_cache_blocks: usize,
    /// Blocks in use that neither a live sequence nor the prefix cache can account for
    /// (only meaningful with no live sequence; must be 0).
    pub leaked_blocks: usize,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub scored_tokens: u64,
    pub preemptions: u64,
}

/// The state of every model plus the worker's own counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct EngineState {
    pub models: Vec<ModelState>,
    /// Generation requests live in the schedulers now.
    pub live_requests: usize,
    /// Scheduler steps run so far (one forward over one model's batch each).
    pub steps: u64,
    /// Generation requests cancelled because their client had gone.
    pub cancelled: u64,
    /// Most requests one model's batch held at a step.
    pub max_batch: usize,
}

/// The handle the HTTP side holds.
pub(crate) struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread over `models`; `stopping` makes running CoRD searches stop after
    /// their current round.
    pub fn start(models: Models, stopping: Arc<AtomicBool>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cord-engine".into())
            .spawn(move || run(models, rx, stopping))?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> mpsc::Sender<Job> {
        self.tx.clone().expect("sender lives until join")
    }

    /// Drops this handle's sender and waits for the worker to finish the jobs it has (it stops
    /// once every sender is gone).
    pub fn join(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Invalid(m) => ApiError::invalid(m),
        EngineError::KvTooSmall { .. } => ApiError::invalid(format!(
            "{e}; the server needs more KV memory (cord serve --kv-mib)"
        )),
        other => ApiError::internal(other.to_string()),
    }
}

struct Counters {
    steps: u64,
    cancelled: u64,
    max_batch: usize,
}

/// Generation requests in the schedulers, by (model, request).
type Live = HashMap<(usize, RequestId), GenJob>;

fn run(mut models: Models, rx: mpsc::Receiver<Job>, stopping: Arc<AtomicBool>) {
    let mut c = Counters {
        steps: 0,
        cancelled: 0,
        max_batch: 0,
    };
    let mut live: Live = HashMap::new();
    loop {
        // Block only when nothing is decoding.
        let jobs: Vec<Job> = if live.is_empty() {
            match rx.recv() {
                Ok(first) => std::iter::once(first).chain(rx.try_iter()).collect(),
                Err(_) => break,
            }
        } else {
            rx.try_iter().collect()
        };
        let mut cords = Vec::new();
        for job in jobs {
            match job {
                Job::Generate(g) => admit(&mut models, &mut live, g, &mut c),
                Job::Score(s) => {
                    if !s.reply.is_closed() {
                        let out = models
                            .engine_mut()
                            .score_top(s.model, &s.reqs, s.top)
                            .map_err(engine_error);
                        let _ = s.reply.send(out);
                    }
                }
                Job::Cord(job) => cords.push(job),
                Job::State(reply) => {
                    let _ = reply.send(state(&models, &live, &c));
                }
            }
        }
        for job in cords {
            cord(&mut models, job, &stopping);
        }
        cancel_gone(&mut models, &mut live, &mut c);
        step_all(&mut models, &mut live, &mut c);
    }
}

/// Adds a generation job to its model's scheduler (it joins the running batch at the next step).
fn admit(models: &mut Models, live: &mut Live, g: GenJob, c: &mut Counters) {
    if g.events.is_closed() {
        c.cancelled += 1;
        return;
    }
    let added = models
        .engine_mut()
        .scheduler(g.model)
        .and_then(|mut s| s.add(&g.req));
    match added {
        Ok(id) => {
            live.insert((g.model.0, id), g);
        }
        Err(e) => {
            let _ = g.events.send((g.index, GenEvent::Failed(engine_error(e))));
        }
    }
}

/// Cancels the requests whose client has gone: their sequences are freed now.
fn cancel_gone(models: &mut Models, live: &mut Live, c: &mut Counters) {
    let gone: Vec<(usize, RequestId)> = live
        .iter()
        .filter(|(_, g)| g.events.is_closed())
        .map(|(k, _)| *k)
        .collect();
    for (m, id) in gone {
        live.remove(&(m, id));
        c.cancelled += 1;
        if let Err(e) = models
            .engine_mut()
            .scheduler(ModelId(m))
            .and_then(|mut s| s.cancel(id))
        {
            tracing::warn!(error = %e, "cancelling a request failed");
        }
    }
}

/// One step of every model that has live requests; text and results go to their clients.
fn step_all(models: &mut Models, live: &mut Live, c: &mut Counters) {
    let busy: BTreeSet<usize> = live.keys().map(|k| k.0).collect();
    for m in busy {
        let in_batch = live.keys().filter(|k| k.0 == m).count();
        c.max_batch = c.max_batch.max(in_batch);
        c.steps += 1;
        let res = models
            .engine_mut()
            .scheduler(ModelId(m))
            .and_then(|mut s| s.step());
        match res {
            Ok(events) => {
                for ev in events {
                    match ev {
                        Event::Text { id, text } => {
                            if let Some(g) = live.get(&(m, id)) {
                                let _ = g.events.send((g.index, GenEvent::Text(text)));
                            }
                        }
                        Event::Finished { id, output } => {
                            if let Some(g) = live.remove(&(m, id)) {
                                let _ = g.events.send((g.index, GenEvent::Done(output)));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let err = engine_error(e);
                tracing::warn!(error = %err.message, "a generation step failed");
                let ids: Vec<RequestId> = live.keys().filter(|k| k.0 == m).map(|k| k.1).collect();
                for id in ids {
                    if let Some(g) = live.remove(&(m, id)) {
                        let _ = g.events.send((g.index, GenEvent::Failed(err.clone())));
                    }
                    let _ = models
                        .engine_mut()
                        .scheduler(ModelId(m))
                        .and_then(|mut s| s.cancel(id));
                }
            }
        }
    }
}

fn cord(models: &mut Models, job: CordJob, stopping: &AtomicBool) {
    let Some(backend) = models.backend_mut() else {
        let _ = job.events.send(CordEvent::Failed(ApiError::invalid(
            "this server was started without a pool (cord serve --pool POOL.toml runs CoRD)",
        )));
        return;
    };
    if job.events.is_closed() {
        return;
    }
    let events = &job.events;
    let mut finished: Option<Record> = None;
    let mut sink: Vec<Record> = Vec::new();
    let res = cord_decode::run_observed(
        backend,
        &job.settings,
        vec![job.problem],
        &mut sink,
        None,
        &mut |p| finished = Some(p.record.clone()),
        &|| events.is_closed() || stopping.load(Ordering::SeqCst),
        &mut |_, step| {
            let _ = events.send(CordEvent::Step(step.clone()));
        },
    );
    let ev = match res {
        Ok(summary) if summary.interrupted => return,
        Ok(_) => match finished {
            Some(r) => CordEvent::Record(Box::new(r)),
            None => CordEvent::Failed(ApiError::internal("the search wrote no record")),
        },
        Err(e) => CordEvent::Failed(ApiError::internal(e.to_string())),
    };
    let _ = events.send(ev);
}

fn state(models: &Models, live: &Live, counters: &Counters) -> EngineState {
    let engine = models.engine();
    let names = models.names_by_model();
    let mut out = Vec::new();
    for (i, m) in engine.models().iter().enumerate() {
        let kv = m.kv();
        let mut prefix: Vec<u32> = kv.prefix_cache_block_refs();
        prefix.sort_unstable();
        prefix.dedup();
        let mut held: Vec<u32> = Vec::new();
        for s in kv.sequences() {
            held.extend(kv.block_table(s).unwrap_or(&[]));
        }
        held.extend(&prefix);
        held.sort_unstable();
        held.dedup();
        let used = kv.num_blocks() - kv.free_blocks();
        out.push(ModelState {
            names: names.get(&i).cloned().unwrap_or_default(),
            live_sequences: kv.num_sequences(),
            kv_blocks: kv.num_blocks(),
            free_blocks: kv.free_blocks(),
            prefix_cache_blocks: prefix.len(),
            leaked_blocks: used.saturating_sub(held.len()),
            prompt_tokens: m.stats().prompt_tokens,
            generated_tokens: m.stats().generated_tokens,
            scored_tokens: m.stats().scored_tokens,
            preemptions: m.stats().preemptions,
        });
    }
    EngineState {
        models: out,
        live_requests: live.len(),
        steps: counters.steps,
        cancelled: counters.cancelled,
        max_batch: counters.max_batch,
    }
}
