//! `cord eval` on the tiny generated models: every run (the pool's method, curation, each
//! teacher alone) over every seed writes its records, and the table agrees with them.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn eval(f: &Fixture, pool: &Path, out: &Path, args: &[&str]) -> (String, Vec<Value>) {
    let input = f.problems("problems.jsonl", 3);
    let json = out.join("table.json");
    let o = cord()
        .arg("eval")
        .arg("--pool")
        .arg(pool)
        .arg("--input")
        .arg(&input)
        .arg("--out-dir")
        .arg(out)
        .arg("--json")
        .arg(&json)
        .args(["--limit", "2", "--quiet", "--no-timing"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table: Vec<Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (String::from_utf8(o.stdout).unwrap(), table)
}

#[test]
fn eval_runs_the_pool_curation_and_each_teacher_alone_on_the_same_problems() {
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let out = f.path("eval");
    let (stdout, table) = eval(&f, &pool, &out, &["--seeds", "1,2"]);
    let runs: Vec<&str> = table.iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(
        runs,
        [
            "cord (the pool)",
            "curation (2 per teacher)",
            "byte-llama alone",
            "bpe-qwen2 alone"
        ]
    );
    for name in &runs {
        assert!(
            stdout.contains(&format!("| {name}")),
            "{name} row missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("2 problems × seed(s) 1,2; candidate filter on"));
    for row in &table {
        let files: Vec<&str> = row["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(files.len(), 2, "one records file per seed");
        let recs: Vec<Value> = files
            .iter()
            .flat_map(|p| records(Path::new(p)).into_iter().map(|(_, v)| v))
            .collect();
        assert_eq!(recs.len(), 4);
        assert_eq!(row["problems"], 4);
        let count = |pred: &dyn Fn(&Value) -> bool| recs.iter().filter(|r| pred(r)).count();
        assert_eq!(row["correct"], count(&|r| r["correct"] == true));
        assert_eq!(row["failed"], count(&|r| !r["failed"].is_null()));
        assert_eq!(row["natural_ends"], count(&|r| r["natural_end"] == true));
        // With the filter on, no junk step reaches a written trace.
        assert_eq!(row["degenerate_steps"], 0, "{row}");
        let seeds: Vec<u64> = recs
            .iter()
            .map(|r| r["config"]["seed"].as_u64().unwrap())
            .collect();
        assert_eq!(seeds, [1, 1, 2, 2]);
        let slug = row["slug"].as_str().unwrap();
        if let Some(t) = slug.strip_prefix("alone-") {
            for r in &recs {
                assert_eq!(r["method"], "curation");
                for s in r["steps"].as_array().unwrap() {
                    assert_eq!(s["teacher"], t);
                }
            }
        }
    }

    // Without the filter only empty steps are dropped, and junk may stay in the traces.
    let out2 = f.path("eval-raw");
    let (stdout, table) = eval(&f, &pool, &out2, &["--no-filter", "--runs", "pool"]);
    assert!(stdout.contains("candidate filter off"));
    assert_eq!(table.len(), 1);
    let file = table[0]["records"][0].as_str().unwrap();
    for (_, r) in records(Path::new(file)) {
        assert!(r["failed"].is_null());
        for reasons in r["stats"]["rejected"].as_object().into_iter().flatten() {
            let keys: Vec<&String> = reasons.1.as_object().unwrap().keys().collect();
            assert!(keys.iter().all(|k| *k == "empty"), "{keys:?}");
        }
    }
}

#[test]
fn eval_refuses_an_unknown_run() {
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", 1);
    let o = cord()
        .arg("eval")
        .arg("--pool")
        .arg(&pool)
        .arg("--input")
        .arg(&input)
        .args(["--runs", "pool,best", "--quiet"])
        .arg("--out-dir")
        .arg(f.path("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown run `best`"), "{}", stderr(&o));
}
