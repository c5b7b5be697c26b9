//! The engine worker: one OS thread that owns the [`Models`] (the engine is synchronous) and
//! serves [`Job`]s from a channel; each job carries its own channel back.
//!
//! Batching: the worker takes every job queued when it wakes up, runs the generation jobs of each
//! model as **one** batched `generate_streaming` call (the engine batches them continuously inside
//! the call: sequences join the forward as they are prefilled and leave as they finish), then
//! the scoring jobs of each model as one scoring call, then the CoRD runs one by one. Jobs that
//! arrive meanwhile wait for the next round. A job whose receiver is gone (the client
//! disconnected) is dropped before its round starts; a sequence already running finishes in the
//! engine and is then freed like any other (its text goes nowhere).
//!
//! A CoRD run (`/v1/cord`) holds the worker for its whole duration: the driver owns the engine
//! for the search, so chat, completion and scoring requests wait until it ends (or until its
//! client disconnects, which stops the search after the current round).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use cord_decode::io::{Problem, Record};
use cord_decode::{SelectedStep, Settings};
use cord_runtime::engine::{
    EngineError, GenOutput, GenRequest, ModelId, ScoreOutput, ScoreRequest,
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
    pub reqs: Vec<ScoreRequest>,
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
    /// Worker rounds run so far.
    pub rounds: u64,
    /// Generation jobs dropped before running because their client had gone.
    pub cancelled: u64,
    /// Largest number of sequences generated together in one call.
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
        EngineError::KvTooSmall { .. } => ApiError::invalid(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

struct Counters {
    rounds: u64,
    cancelled: u64,
    max_batch: usize,
}

fn run(mut models: Models, rx: mpsc::Receiver<Job>, stopping: Arc<AtomicBool>) {
    let mut counters = Counters {
        rounds: 0,
        cancelled: 0,
        max_batch: 0,
    };
    while let Ok(first) = rx.recv() {
        counters.rounds += 1;
        let mut gens: BTreeMap<usize, Vec<GenJob>> = BTreeMap::new();
        let mut scores: Vec<ScoreJob> = Vec::new();
        let mut cords: Vec<CordJob> = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Generate(g) => gens.entry(g.model.0).or_default().push(g),
                Job::Score(s) => scores.push(s),
                Job::Cord(c) => cords.push(c),
                Job::State(reply) => {
                    let _ = reply.send(state(&models, &counters));
                }
            }
        }
        for (m, jobs) in gens {
            generate(&mut models, ModelId(m), jobs, &mut counters);
        }
        for job in scores {
            if job.reply.is_closed() {
                continue;
            }
            let out = models
                .engine_mut()
                .score_top(job.model, &job.reqs, job.top)
                .map_err(engine_error);
            let _ = job.reply.send(out);
        }
        for job in cords {
            cord(&mut models, job, &stopping);
        }
    }
}

/// One batched generation call over the live jobs of one model.
fn generate(models: &mut Models, model: ModelId, jobs: Vec<GenJob>, counters: &mut Counters) {
    let before = jobs.len();
    let jobs: Vec<GenJob> = jobs.into_iter().filter(|j| !j.events.is_closed()).collect();
    counters.cancelled += (before - jobs.len()) as u64;
    if jobs.is_empty() {
        return;
    }
    counters.max_batch = counters.max_batch.max(jobs.len());
    let reqs: Vec<GenRequest> = jobs.iter().map(|j| j.req.clone()).collect();
    let res = models
        .engine_mut()
        .generate_streaming(model, &reqs, &mut |i, text| {
            let j = &jobs[i];
            let _ = j.events.send((j.index, GenEvent::Text(text.to_string())));
        });
    match res {
        Ok(outs) => {
            for (j, out) in jobs.iter().zip(outs) {
                let _ = j.events.send((j.index, GenEvent::Done(out)));
            }
        }
        Err(e) => {
            let err = engine_error(e);
            tracing::warn!(error = %err.message, requests = jobs.len(), "generation batch failed");
            for j in &jobs {
                let _ = j.events.send((j.index, GenEvent::Failed(err.clone())));
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

fn state(models: &Models, counters: &Counters) -> EngineState {
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
        rounds: counters.rounds,
        cancelled: counters.cancelled,
        max_batch: counters.max_batch,
    }
}
