//! Runs many searches at once: each round, poll every active search, merge the requests of
//! each kind into one backend call, hand the results back.
//!
//! **Order and determinism.** Records are written in **input order** (a finished record waits
//! in a small reorder buffer until every earlier problem is written). A search's content depends
//! only on its own requests and results (seeds are per request, O-6), so with a backend whose
//! results depend only on the request the output is byte-identical whatever
//! `problems_in_flight` is — except `stats.seconds` and `stats.prefix_tokens_reused` (both left
//! out with `record_timing = false`). To bound the buffer, problem `i` is started only
//! while `i < first unwritten + 4 × problems_in_flight`.
//!
//! **Rejection sampling.** With `attempts = N > 1`, a search whose answer does not verify is
//! started again from scratch for the same problem with the next run seed (seed + 1, + 2, …)
//! until one verifies or N attempts are spent; the record written is the last attempt's, with
//! every attempt's outcome in `attempts`. With a rejected sink ([`run_sinks`]), records whose
//! answer is still wrong go there instead of to the output.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::{AttemptOutcome, Problem, Record, RecordSink};
use crate::search::{Need, Reply, Search, SelectedStep, Settings, expect_len, new_search};

/// Progress after each finished problem (for a progress bar).
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// Problems finished (written or dropped).
    pub done: usize,
    pub total: usize,
    pub correct: usize,
    /// The record just finished.
    pub record: &'a Record,
    /// Whether it was written to the output (false when dropped or rejected as incorrect).
    pub written: bool,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub problems: usize,
    pub written: usize,
    /// Records not written because their answer was wrong (`drop_incorrect`).
    pub dropped: usize,
    /// Records written to the rejected sink because their answer was wrong.
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected_records: usize,
    /// Attempts run in all (equal to `problems` without rejection sampling).
    #[serde(skip_serializing_if = "is_zero")]
    pub attempts: usize,
    pub correct: usize,
    /// correct / problems.
    pub accuracy: f64,
    /// Mean final score.
    pub mean_score: f64,
    pub mean_steps: f64,
    pub forced_close: usize,
    /// Trajectories whose reasoning ended by itself (`Record::natural_end`).
    pub natural_ends: usize,
    /// Problems without a trajectory: every beam's candidates were rejected (`Record::failed`).
    pub failed: usize,
    /// Candidate steps rejected (or dropped as empty), per teacher and reason.
    pub rejected: BTreeMap<String, BTreeMap<String, u64>>,
    pub beams_resampled: u64,
    pub beams_dropped: u64,
    /// Answers written after lower-ranked finished trajectories (`search.verify_beams`).
    pub extra_answers: u64,
    pub answer_truncated: usize,
    pub tokens_per_teacher: BTreeMap<String, u64>,
    pub tokens_scored: u64,
    pub prefix_tokens_reused: u64,
    pub propose_calls: usize,
    pub score_calls: usize,
    pub answer_calls: usize,
    pub seconds: f64,
    /// The run was stopped early (Ctrl-C): the searches in flight were abandoned, every record
    /// finished before is written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

struct Active {
    index: usize,
    search: Box<dyn Search>,
    /// Kept to start another attempt (only with `attempts > 1`).
    problem: Option<Problem>,
    /// 0-based attempt now running.
    attempt: usize,
    history: Vec<AttemptOutcome>,
}

/// The settings of attempt `k` (0-based): the run seed + k.
fn attempt_settings(settings: &Arc<Settings>, k: usize) -> Arc<Settings> {
    if k == 0 {
        return settings.clone();
    }
    Arc::new(Settings {
        seed: settings.seed.wrapping_add(k as u64),
        ..(**settings).clone()
    })
}

/// Runs every problem through the configured search and writes the records in input order.
pub fn run(
    backend: &mut dyn Backend,
    settings: &Arc<Settings>,
    problems: Vec<Problem>,
    sink: &mut dyn RecordSink,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Summary> {
    run_until(backend, settings, problems, sink, progress, &|| false)
}

/// As [`run`], checking `stop` before every round: once it returns true the searches in flight
/// are abandoned (never half-written: a record is written whole or not at all), the sink is
/// synced and the summary of what was written comes back with `interrupted` set. A resumed run
/// redoes the abandoned problems.
pub fn run_until(
    backend: &mut dyn Backend,
    settings: &Arc<Settings>,
    problems: Vec<Problem>,
    sink: &mut dyn RecordSink,
    progress: &mut dyn FnMut(&Progress<'_>),
    stop: &dyn Fn() -> bool,
) -> Result<Summary> {
    run_sinks(backend, settings, problems, sink, None, progress, stop)
}

/// As [`run_until`]; records whose answer is wrong (after every attempt) go to `rejected`
/// when it is given (`--keep correct`), else to `sink`.
pub fn run_sinks(
    backend: &mut dyn Backend,
    settings: &Arc<Settings>,
    problems: Vec<Problem>,
    sink: &mut dyn RecordSink,
    rejected: Option<&mut dyn RecordSink>,
    progress: &mut dyn FnMut(&Progress<'_>),
    stop: &dyn Fn() -> bool,
) -> Result<Summary> {
    run_observed(
        backend,
        settings,
        problems,
        sink,
        rejected,
        progress,
        stop,
        &mut |_, _| {},
    )
}

/// As [`run_sinks`], calling `on_step(problem id, step)` for every step a search keeps, as soon
/// as it is kept ([`Search::take_selected`]; `cord serve` streams them).
#[allow(clippy::too_many_arguments)]
pub fn run_observed(
    backend: &mut dyn Backend,
    settings: &Arc<Settings>,
    problems: Vec<Problem>,
    sink: &mut dyn RecordSink,
    mut rejected: Option<&mut dyn RecordSink>,
    progress: &mut dyn FnMut(&Progress<'_>),
    stop: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(&str, &SelectedStep),
) -> Result<Summary> {
    let started = Instant::now();
    if backend.num_teachers() != settings.num_teachers() {
        return Err(Error::Protocol(format!(
            "the backend holds {} teachers, the pool {}",
            backend.num_teachers(),
            settings.num_teachers()
        )));
    }
    for (k, name) in settings.teacher_names.iter().enumerate() {
        if backend.teacher_name(k) != name {
            return Err(Error::Protocol(format!(
                "teacher {k} is {:?} in the backend and {name:?} in the pool",
                backend.teacher_name(k)
            )));
        }
    }
    let total = problems.len();
    let in_flight = settings.problems_in_flight.max(1);
    let window = 4 * in_flight;
    let mut queue: VecDeque<(usize, Problem)> = problems.into_iter().enumerate().collect();
    let mut active: Vec<Active> = Vec::new();
    let mut ready: BTreeMap<usize, Record> = BTreeMap::new();
    let mut next_write = 0usize;
    let mut summary = Summary {
        problems: total,
        ..Summary::default()
    };
    let mut score_sum = 0.0;
    let mut steps_sum = 0usize;
    let mut done = 0usize;

    loop {
        if stop() {
            summary.interrupted = true;
            break;
        }
        while active.len() < in_flight
            && let Some((i, _)) = queue.front()
            && *i < next_write + window
        {
            let (index, p) = queue.pop_front().expect("front exists");
            summary.attempts += 1;
            active.push(Active {
                index,
                problem: (settings.attempts > 1).then(|| p.clone()),
                search: new_search(settings.clone(), p),
                attempt: 0,
                history: Vec::new(),
            });
        }
        if active.is_empty() {
            break;
        }
        // Poll every active search (in input order); collect the needs.
        let mut proposes = Vec::new();
        let mut scores = Vec::new();
        let mut answers = Vec::new();
        let mut owners: Vec<(usize, Kind, usize)> = Vec::new(); // (active idx, kind, count)
        let mut finished = Vec::new();
        for (a, act) in active.iter_mut().enumerate() {
            match act.search.poll(backend)? {
                Need::Propose(r) => {
                    owners.push((a, Kind::Propose, r.len()));
                    proposes.extend(r);
                }
                Need::Score(r) => {
                    owners.push((a, Kind::Score, r.len()));
                    scores.extend(r);
                }
                Need::Answer(r) => {
                    owners.push((a, Kind::Answer, r.len()));
                    answers.extend(r);
                }
                Need::Done(rec) => finished.push((a, rec)),
            }
        }
        let mut prop_res = if proposes.is_empty() {
            Vec::new()
        } else {
            summary.propose_calls += 1;
            expect_len(backend.propose(&proposes)?, proposes.len(), "proposals")?
        }
        .into_iter();
        let mut score_res = if scores.is_empty() {
            Vec::new()
        } else {
            summary.score_calls += 1;
            expect_len(backend.score(&scores)?, scores.len(), "scores")?
        }
        .into_iter();
        let mut ans_res = if answers.is_empty() {
            Vec::new()
        } else {
            summary.answer_calls += 1;
            expect_len(backend.answer(&answers)?, answers.len(), "answers")?
        }
        .into_iter();
        for (a, kind, n) in owners {
            let reply = match kind {
                Kind::Propose => Reply::Proposals(prop_res.by_ref().take(n).collect()),
                Kind::Score => Reply::Scores(score_res.by_ref().take(n).collect()),
                Kind::Answer => Reply::Answers(ans_res.by_ref().take(n).collect()),
            };
            let search = &mut active[a].search;
            search.feed(reply)?;
            for step in search.take_selected() {
                on_step(&search.problem().id, &step);
            }
        }
        // Retire finished searches (highest index first so that indices stay valid), or start
        // the next attempt of a wrong one.
        for (a, rec) in finished.into_iter().rev() {
            let act = &mut active[a];
            if settings.attempts > 1 {
                act.history.push(AttemptOutcome::of(&rec, act.attempt + 1));
                if !rec.correct
                    && act.attempt + 1 < settings.attempts
                    && let Some(p) = act.problem.clone()
                {
                    act.attempt += 1;
                    act.search = new_search(attempt_settings(settings, act.attempt), p);
                    summary.attempts += 1;
                    continue;
                }
            }
            let act = active.remove(a);
            let mut rec = *rec;
            rec.attempts = act.history;
            ready.insert(act.index, rec);
        }
        let mut wrote = false;
        let mut wrote_rejected = false;
        while let Some(rec) = ready.remove(&next_write) {
            next_write += 1;
            done += 1;
            let reject = !rec.correct && rejected.is_some();
            let write = !reject && (rec.correct || !settings.drop_incorrect);
            if reject && let Some(r) = rejected.as_deref_mut() {
                r.write_record(&rec)?;
                summary.rejected_records += 1;
                wrote_rejected = true;
            } else if write {
                sink.write_record(&rec)?;
                summary.written += 1;
                wrote = true;
            } else {
                summary.dropped += 1;
            }
            summary.correct += usize::from(rec.correct);
            summary.forced_close += usize::from(rec.forced_close);
            summary.natural_ends += usize::from(rec.natural_end);
            summary.failed += usize::from(rec.failed.is_some());
            for (t, reasons) in &rec.stats.rejected {
                let into = summary.rejected.entry(t.clone()).or_default();
                for (r, n) in reasons {
                    *into.entry(r.clone()).or_default() += n;
                }
            }
            summary.beams_resampled += rec.stats.beams_resampled;
            summary.beams_dropped += rec.stats.beams_dropped;
            summary.extra_answers += rec.stats.extra_answers;
            summary.answer_truncated += usize::from(rec.answer_truncated);
            score_sum += rec.score;
            steps_sum += rec.steps.len();
            for (t, n) in &rec.stats.tokens_generated {
                *summary.tokens_per_teacher.entry(t.clone()).or_default() += n;
            }
            summary.tokens_scored += rec.stats.tokens_scored;
            summary.prefix_tokens_reused += rec.stats.prefix_tokens_reused.unwrap_or(0);
            progress(&Progress {
                done,
                total,
                correct: summary.correct,
                record: &rec,
                written: write,
            });
        }
        if wrote {
            sink.sync()?;
        }
        if wrote_rejected && let Some(r) = rejected.as_deref_mut() {
            r.sync()?;
        }
    }
    sink.sync()?;
    if let Some(r) = rejected {
        r.sync()?;
    }
    if done > 0 {
        summary.accuracy = summary.correct as f64 / done as f64;
        summary.mean_score = score_sum / done as f64;
        summary.mean_steps = steps_sum as f64 / done as f64;
    }
    if summary.interrupted {
        summary.problems = done;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The kind of backend call a search's requests of one round go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Propose,
    Score,
    Answer,
}
