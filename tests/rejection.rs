//! Rejection sampling with the real binary and the tiny generated models (which answer
//! arithmetic wrong most of the time): `--attempts N` retries wrong answers with the next seed,
//! `--keep correct` sends the records still wrong to OUT.rejected.jsonl, and resume and shards
//! count an id in either file as done.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::Value;

fn ids(path: &Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    records(path)
        .into_iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// Each record's attempts: numbered, with consecutive seeds from 3 (the pool's), wrong but for
/// the last, the last being the record itself; a wrong record used all `n`.
fn check_attempts(v: &Value, n: usize) {
    let id = v["id"].as_str().unwrap();
    let a = v["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("{id}: no attempts"));
    assert!((1..=n).contains(&a.len()), "{id}: {} attempts", a.len());
    for (k, o) in a.iter().enumerate() {
        assert_eq!(o["attempt"], k + 1, "{id}");
        assert_eq!(o["seed"], 3 + k as u64, "{id}");
        if k + 1 < a.len() {
            assert_eq!(o["correct"], false, "{id}: a right answer was retried");
        }
    }
    let last = a.last().unwrap();
    assert_eq!(last["correct"], v["correct"], "{id}");
    assert_eq!(last["predicted"], v["predicted"], "{id}");
    assert_eq!(v["config"]["seed"], last["seed"], "{id}");
    if v["correct"] == false {
        assert_eq!(a.len(), n, "{id}: wrong but stopped early");
    }
}

#[test]
fn attempts_and_keep_correct_with_resume() {
    const N: usize = 6;
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", N);
    let out = f.path("out.jsonl");
    let rejected = f.path("out.rejected.jsonl");

    let o = synth(
        &pool,
        &input,
        &out,
        &["--attempts", "3", "--keep", "correct"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (kept, rej) = (records(&out), records(&rejected));
    assert_eq!(
        kept.len() + rej.len(),
        N,
        "every problem in one of the two files"
    );
    for (_, v) in &kept {
        assert_eq!(v["correct"], true);
        check_attempts(v, 3);
    }
    for (_, v) in &rej {
        assert_eq!(v["correct"], false);
        check_attempts(v, 3);
    }
    assert!(
        !rej.is_empty(),
        "the tiny models solved everything: nothing was rejected"
    );
    let tries: usize = kept
        .iter()
        .chain(&rej)
        .map(|(_, v)| v["attempts"].as_array().unwrap().len())
        .sum();
    eprintln!(
        "{} kept, {} rejected, {tries} attempts for {N} problems",
        kept.len(),
        rej.len()
    );
    // Attempts really differ: another seed gives another trajectory.
    let (_, v) = &rej[0];
    let a = v["attempts"].as_array().unwrap();
    let outcomes: BTreeSet<String> = a.iter().map(|o| o["score"].to_string()).collect();
    assert!(
        outcomes.len() > 1,
        "three attempts with the same score: {a:?}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("rejected"), "{stdout}");

    // A run stopped after 2 problems and resumed does the rest once, the same way.
    let out2 = f.path("out2.jsonl");
    let rejected2 = f.path("out2.rejected.jsonl");
    let o = synth(
        &pool,
        &input,
        &out2,
        &["--attempts", "3", "--keep", "correct", "--limit", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = synth(
        &pool,
        &input,
        &out2,
        &["--attempts", "3", "--keep", "correct", "--resume"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut all = ids(&out2);
    all.extend(ids(&rejected2));
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), N, "ids: {all:?}");
    assert_eq!(unique.len(), N);
    // Same records; floats may differ in the last bits, since a resumed run batches other rows
    // together and the tiny models' dense f32 matmuls round by row count (determinism.rs).
    for (a, b) in [(&out2, &out), (&rejected2, &rejected)] {
        let diff = compare_records(a, b)
            .unwrap_or_else(|e| panic!("resumed output differs from the one-go run: {e}"));
        assert!(diff.max_rel <= 1e-6, "resumed output: {diff:?}");
    }
    // A third resume finds nothing to do.
    let o = synth(
        &pool,
        &input,
        &out2,
        &["--attempts", "3", "--keep", "correct", "--resume"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));

    // Shards: together they hold every id exactly once across both files.
    let mut shard_ids = Vec::new();
    for i in 0..2 {
        let so = f.path(&format!("s{i}.jsonl"));
        let o = synth(
            &pool,
            &input,
            &so,
            &[
                "--attempts",
                "3",
                "--keep",
                "correct",
                "--shard",
                &format!("{i}/2"),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        shard_ids.extend(ids(&so));
        shard_ids.extend(ids(&f.path(&format!("s{i}.rejected.jsonl"))));
    }
    shard_ids.sort();
    let mut expected: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    expected.sort();
    assert_eq!(shard_ids, expected);
}

#[test]
fn bad_attempts_is_a_clear_error() {
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", 1);
    let out = f.path("out.jsonl");
    let o = synth(&pool, &input, &out, &["--attempts", "0"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("attempts"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = synth(&pool, &input, &out, &["--keep", "some"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--keep"), "{}", stderr(&o));
}
