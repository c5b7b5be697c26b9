//! The driver: many problems in flight give byte-identical output to one at a time; resume.

mod common;

use std::collections::HashMap;

use common::*;
use cord_decode::backend::{Finish, Proposal};
use cord_decode::io::{OutputMode, Problem, Record, RecordSink, RecordWriter};
use cord_decode::scripted::ScriptedBackend;
use cord_decode::seed::{fnv1a64, splitmix64};
use cord_decode::{Error, PoolConfig, Settings, run};

/// A backend whose results are pseudo-random functions of the request alone.
fn generative(k: usize) -> ScriptedBackend {
    backend(k)
        .with_propose_fn(|r| {
            let h = splitmix64(r.seed ^ fnv1a64(r.reasoning.as_bytes()));
            let words = 1 + (h % 7) as usize;
            let text: String = (0..words)
                .map(|i| format!(" w{}", (h >> (i * 4)) % 13))
                .collect();
            let steps = r.reasoning.matches("### Step").count();
            let finish = match (h >> 40) % 10 {
                _ if steps >= 6 => Finish::Stop("</think>".into()),
                0 => Finish::Eos,
                1 | 2 => Finish::Stop("</think>".into()),
                3 => Finish::Length,
                _ if r.stop.len() == 1 => Finish::Stop("</think>".into()),
                _ => Finish::Stop("### Step".into()),
            };
            Some(Proposal::new(text, finish, words))
        })
        .with_score_fn(|r| {
            Some(0.05 + 0.9 * (fnv1a64(r.context.as_bytes()) % 1000) as f64 / 1000.0)
        })
        .with_answer_fn(|r| {
            let v = fnv1a64(r.reasoning.as_bytes()) % 3;
            Some(Proposal::new(
                format!("The final answer is \\boxed{{{v}}}."),
                Finish::Eos,
                8,
            ))
        })
}

fn problems(n: usize) -> Vec<Problem> {
    (0..n)
        .map(|i| problem(&format!("q{i}"), &format!("{}", i % 3)))
        .collect()
}

fn run_to_file(
    pool: &PoolConfig,
    problems: Vec<Problem>,
    path: &std::path::Path,
    mode: OutputMode,
) -> (ScriptedBackend, cord_decode::Summary) {
    let settings = Settings::shared(pool).unwrap();
    let (mut w, _) = RecordWriter::open(path, mode, &settings.fingerprint).unwrap();
    let mut b = generative(pool.teachers.len());
    let mut seen = Vec::new();
    let summary = run(&mut b, &settings, problems, &mut w, &mut |p| {
        seen.push((p.done, p.record.id.clone()))
    })
    .unwrap();
    // Progress comes once per problem, in input order.
    assert!(seen.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    (b, summary)
}

#[test]
fn output_is_identical_whatever_problems_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    for method in ["cord", "greedy", "curation", "mcts"] {
        let mut outputs = Vec::new();
        for pif in [1, 3, 16] {
            let pool = pool(
                3,
                &format!(
                    "method = \"{method}\"\nbeam_width = 2\nproblems_in_flight = {pif}\nsave_tree = true"
                ),
            );
            let path = dir.path().join(format!("{method}-{pif}.jsonl"));
            let (b, summary) = run_to_file(&pool, problems(7), &path, OutputMode::default());
            assert_eq!(summary.problems, 7);
            assert_eq!(summary.written, 7);
            if pif > 1 {
                // Requests of several problems travel in one backend call.
                let mixed = b.propose_calls().iter().any(|c| {
                    let qs: std::collections::HashSet<&str> =
                        c.iter().map(|r| r.question.as_str()).collect();
                    qs.len() > 1
                });
                assert!(mixed, "{method}: no batched call mixed problems");
            }
            outputs.push(std::fs::read(&path).unwrap());
        }
        assert_eq!(outputs[0], outputs[1], "{method}: 1 vs 3 in flight");
        assert_eq!(outputs[0], outputs[2], "{method}: 1 vs 16 in flight");
        let text = String::from_utf8(outputs[0].clone()).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            ids,
            (0..7).map(|i| format!("q{i}")).collect::<Vec<_>>(),
            "{method}: input order"
        );
    }
}

#[test]
fn resume_after_a_torn_output_writes_every_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(2, "beam_width = 2\nproblems_in_flight = 2");
    let full = dir.path().join("full.jsonl");
    run_to_file(&pool, problems(5), &full, OutputMode::default());
    let full_bytes = std::fs::read(&full).unwrap();

    // Keep two records and half of the third: a torn last line.
    let lines: Vec<&[u8]> = full_bytes.split_inclusive(|&b| b == b'\n').collect();
    let mut torn = lines[0].to_vec();
    torn.extend_from_slice(lines[1]);
    torn.extend_from_slice(&lines[2][..lines[2].len() / 2]);
    let part = dir.path().join("part.jsonl");
    std::fs::write(&part, &torn).unwrap();

    // Without --resume an existing output is refused.
    let settings = Settings::shared(&pool).unwrap();
    let err = RecordWriter::open(&part, OutputMode::default(), &settings.fingerprint).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");

    let resume = OutputMode {
        resume: true,
        ..OutputMode::default()
    };
    let (mut w, info) = RecordWriter::open(&part, resume, &settings.fingerprint).unwrap();
    assert_eq!(info.records, 2);
    assert_eq!(info.truncated_bytes as usize, lines[2].len() / 2);
    let todo: Vec<Problem> = problems(5)
        .into_iter()
        .filter(|p| !info.done.contains(&p.id))
        .collect();
    assert_eq!(todo.len(), 3);
    let mut b = generative(2);
    let summary = run(&mut b, &settings, todo, &mut w, &mut |_| {}).unwrap();
    assert_eq!(summary.written, 3);
    drop(w);
    let resumed = std::fs::read(&part).unwrap();
    assert_eq!(
        resumed, full_bytes,
        "resumed output equals an uninterrupted run"
    );
    let mut count: HashMap<String, usize> = HashMap::new();
    for l in String::from_utf8(resumed).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *count
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(count.len(), 5);
    assert!(count.values().all(|&n| n == 1));

    // A second resume finds everything done and changes nothing.
    let (_, info) = RecordWriter::open(&part, resume, &settings.fingerprint).unwrap();
    assert_eq!(info.records, 5);
    assert_eq!(info.truncated_bytes, 0);
}

#[test]
fn resume_refuses_an_output_of_another_run_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let pool_a = pool(2, "beam_width = 2");
    let path = dir.path().join("out.jsonl");
    run_to_file(&pool_a, problems(2), &path, OutputMode::default());
    let pool_b = pool(2, "beam_width = 2\nseed = 7");
    let fp_b = Settings::new(&pool_b).unwrap().fingerprint;
    assert_ne!(fp_b, Settings::new(&pool_a).unwrap().fingerprint);
    // problems_in_flight and save_tree do not change the fingerprint.
    let pool_c = pool(
        2,
        "beam_width = 2\nproblems_in_flight = 5\nsave_tree = true",
    );
    assert_eq!(
        Settings::new(&pool_c).unwrap().fingerprint,
        Settings::new(&pool_a).unwrap().fingerprint
    );

    let resume = OutputMode {
        resume: true,
        ..OutputMode::default()
    };
    let err = RecordWriter::open(&path, resume, &fp_b).unwrap_err();
    match err {
        Error::ForeignOutput { line, .. } => assert_eq!(line, 1),
        e => panic!("unexpected {e}"),
    }
    let forced = OutputMode {
        resume: true,
        force: true,
        ..OutputMode::default()
    };
    let (_, info) = RecordWriter::open(&path, forced, &fp_b).unwrap();
    assert_eq!(info.records, 2);
    let overwrite = OutputMode {
        overwrite: true,
        ..OutputMode::default()
    };
    let before = std::fs::read(&path).unwrap();
    let (mut w, _) = RecordWriter::open(&path, overwrite, &fp_b).unwrap();
    // Opening changes nothing; the file is replaced when the run writes (or ends).
    assert_eq!(std::fs::read(&path).unwrap(), before);
    w.sync().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn corrupt_middle_line_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(2, "beam_width = 2");
    let path = dir.path().join("out.jsonl");
    run_to_file(&pool, problems(3), &path, OutputMode::default());
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = "{not json".to_string();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let fp = Settings::new(&pool).unwrap().fingerprint;
    let err = RecordWriter::open(
        &path,
        OutputMode {
            resume: true,
            ..OutputMode::default()
        },
        &fp,
    )
    .unwrap_err();
    match err {
        Error::CorruptOutput { line, .. } => assert_eq!(line, 2),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn drop_incorrect_and_summary() {
    let pool_all = pool(2, "beam_width = 2\nproblems_in_flight = 4");
    let settings = Settings::shared(&pool_all).unwrap();
    let mut b = generative(2);
    let mut out = Vec::new();
    let s = run(&mut b, &settings, problems(6), &mut out, &mut |_| {}).unwrap();
    assert_eq!(s.written, 6);
    let correct = out.iter().filter(|r| r.correct).count();
    assert_eq!(s.correct, correct);
    assert!((s.accuracy - correct as f64 / 6.0).abs() < 1e-12);
    let mean: f64 = out.iter().map(|r| r.score).sum::<f64>() / 6.0;
    assert!((s.mean_score - mean).abs() < 1e-12);
    let toks: u64 = out
        .iter()
        .map(|r| r.stats.tokens_generated.values().sum::<u64>())
        .sum();
    assert_eq!(s.tokens_per_teacher.values().sum::<u64>(), toks);
    assert!(out.iter().all(|r| r.stats.seconds.is_none()));

    let pool_drop = pool(
        2,
        "beam_width = 2\nproblems_in_flight = 4\ndrop_incorrect = true",
    );
    let settings = Settings::shared(&pool_drop).unwrap();
    let mut b = generative(2);
    let mut kept = Vec::new();
    let s = run(&mut b, &settings, problems(6), &mut kept, &mut |_| {}).unwrap();
    assert_eq!(kept.len(), correct);
    assert!(kept.iter().all(|r| r.correct));
    assert_eq!(s.dropped, 6 - correct);
}

#[test]
fn backend_with_other_teachers_is_refused() {
    let pool = pool(2, "");
    let settings = Settings::shared(&pool).unwrap();
    let mut b = generative(3);
    let err = run(&mut b, &settings, problems(1), &mut Vec::new(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("3 teachers"), "{err}");
}

/// A backend whose final answer depends on the request seed, so that another attempt (another
/// run seed) can answer differently.
fn seed_dependent(k: usize) -> ScriptedBackend {
    generative(k).with_answer_fn(|r| {
        let v = splitmix64(r.seed) % 3;
        Some(Proposal::new(
            format!("The final answer is \\boxed{{{v}}}."),
            Finish::Eos,
            8,
        ))
    })
}

#[test]
fn rejection_sampling_retries_wrong_answers_with_the_next_seed() {
    const ATTEMPTS: usize = 4;
    let run_with = |in_flight: usize, rejected: bool| {
        let pool = pool(
            2,
            &format!(
                "beam_width = 2\nproblems_in_flight = {in_flight}\nattempts = {ATTEMPTS}\nseed = 7"
            ),
        );
        let settings = Settings::shared(&pool).unwrap();
        let mut b = seed_dependent(2);
        let (mut out, mut rej): (Vec<Record>, Vec<Record>) = (Vec::new(), Vec::new());
        let s = cord_decode::run_sinks(
            &mut b,
            &settings,
            problems(12),
            &mut out,
            rejected.then_some(&mut rej as &mut dyn RecordSink),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
        (s, out, rej)
    };
    let (s, out, rej) = run_with(4, false);
    assert!(rej.is_empty());
    assert_eq!(out.len(), 12);
    let mut retried_then_right = 0;
    for r in &out {
        let a = &r.attempts;
        assert!(
            (1..=ATTEMPTS).contains(&a.len()),
            "{}: {} attempts",
            r.id,
            a.len()
        );
        for (k, o) in a.iter().enumerate() {
            assert_eq!(o.attempt, k + 1);
            assert_eq!(
                o.seed,
                7 + k as u64,
                "attempt {} runs with the next seed",
                k + 1
            );
        }
        assert!(
            a[..a.len() - 1].iter().all(|o| !o.correct),
            "{}: retried a right answer",
            r.id
        );
        let last = a.last().unwrap();
        assert_eq!(last.correct, r.correct);
        assert_eq!(last.predicted, r.predicted);
        assert_eq!(r.config.seed, last.seed, "the record is the last attempt's");
        if !r.correct {
            assert_eq!(a.len(), ATTEMPTS, "{}: wrong but gave up early", r.id);
        }
        retried_then_right += usize::from(r.correct && a.len() > 1);
    }
    assert!(
        retried_then_right > 0,
        "no problem was right only after a retry"
    );
    assert!(out.iter().any(|r| !r.correct), "every problem ended right");
    assert_eq!(
        s.attempts,
        out.iter().map(|r| r.attempts.len()).sum::<usize>()
    );
    assert_eq!(s.correct, out.iter().filter(|r| r.correct).count());

    // The same records whatever the number of problems in flight.
    let (_, out1, _) = run_with(1, false);
    assert_eq!(out1, out);

    // With a rejected sink: right answers to the output, wrong ones to the rejected sink.
    let (s2, kept, rej) = run_with(4, true);
    assert!(kept.iter().all(|r| r.correct) && rej.iter().all(|r| !r.correct));
    assert_eq!(s2.rejected_records, rej.len());
    assert_eq!(s2.written, kept.len());
    let mut ids: Vec<&str> = kept.iter().chain(&rej).map(|r| r.id.as_str()).collect();
    ids.sort();
    let mut all: Vec<String> = (0..12).map(|i| format!("q{i}")).collect();
    all.sort();
    assert_eq!(ids, all);
    assert_eq!(kept.len() + rej.len(), out.len());

    // One attempt (the default): no retry and no `attempts` in the records.
    let pool1 = pool(2, "beam_width = 2\nseed = 7");
    let settings = Settings::shared(&pool1).unwrap();
    let mut b = seed_dependent(2);
    let mut single = Vec::new();
    let s = run(&mut b, &settings, problems(12), &mut single, &mut |_| {}).unwrap();
    assert_eq!(s.attempts, 12);
    assert!(single.iter().all(|r| r.attempts.is_empty()));
    let json = serde_json::to_string(&single[0]).unwrap();
    assert!(!json.contains("\"attempts\""), "{json}");
    // The first attempt of the multi-attempt run is the single-attempt run.
    for (r1, r) in single.iter().zip(&out) {
        assert_eq!(r1.correct, r.attempts[0].correct);
        assert_eq!(r1.predicted, r.attempts[0].predicted);
    }
}

#[test]
fn records_without_the_newer_fields_still_read() {
    let pool = pool(2, "beam_width = 2\nattempts = 2");
    let settings = Settings::shared(&pool).unwrap();
    let mut b = seed_dependent(2);
    let mut out: Vec<Record> = Vec::new();
    run(&mut b, &settings, problems(2), &mut out, &mut |_| {}).unwrap();
    let mut v = serde_json::to_value(&out[0]).unwrap();
    assert!(v.get("predicted_normalized").is_some() && v.get("attempts").is_some());
    let o = v.as_object_mut().unwrap();
    o.remove("predicted_normalized");
    o.remove("attempts");
    let old: Record = serde_json::from_value(v).unwrap();
    assert_eq!(old.predicted_normalized, None);
    assert!(old.attempts.is_empty());
    assert_eq!(old.predicted, out[0].predicted);
}
