//! `cord export`: records from a tiny-model synth run become a parquet dataset directory with a
//! card; the parquet is read back here with the parquet crate, and with pyarrow (and
//! `datasets`, if importable) through scripts/check-export.py when python3 has pyarrow.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use arrow_array::{Array, BooleanArray, Float64Array, ListArray, StringArray, StructArray};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn export(records: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    cord()
        .arg("export")
        .arg(records)
        .args(["--format", "parquet", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn export_reads_back_as_the_records() {
    const N: usize = 3;
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", N);
    let out = f.path("out.jsonl");
    let o = synth(&pool, &input, &out, &["--save-tree", "--attempts", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs: Vec<serde_json::Value> = records(&out).into_iter().map(|(_, v)| v).collect();
    assert_eq!(recs.len(), N);

    let dir = f.path("dataset");
    let o = export(&out, &dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let file = File::open(dir.join("data/train-00000-of-00001.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, N);
    let b = &batches[0];
    let schema = b.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "question",
            "answer",
            "messages",
            "correct",
            "score",
            "predicted",
            "predicted_normalized",
            "teachers",
            "answer_teacher",
            "method",
            "pool",
            "attempts",
            "tokens_generated"
        ]
    );
    let col = |n: &str| b.column_by_name(n).unwrap().clone();
    let ids = col("id");
    let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
    let correct = col("correct");
    let correct = correct.as_any().downcast_ref::<BooleanArray>().unwrap();
    let score = col("score");
    let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
    let pools = col("pool");
    let pools = pools.as_any().downcast_ref::<StringArray>().unwrap();
    let teachers = col("teachers");
    let teachers = teachers.as_any().downcast_ref::<ListArray>().unwrap();
    let messages = col("messages");
    let messages = messages.as_any().downcast_ref::<ListArray>().unwrap();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(ids.value(i), r["id"].as_str().unwrap());
        assert_eq!(correct.value(i), r["correct"].as_bool().unwrap());
        assert_eq!(score.value(i), r["score"].as_f64().unwrap());
        assert_eq!(pools.value(i), r["config"]["pool"].as_str().unwrap());
        let t = teachers.value(i);
        let t = t.as_any().downcast_ref::<StringArray>().unwrap();
        let want: Vec<&str> = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["teacher"].as_str().unwrap())
            .collect();
        assert_eq!(t.iter().map(Option::unwrap).collect::<Vec<_>>(), want);
        let m = messages.value(i);
        let m = m.as_any().downcast_ref::<StructArray>().unwrap();
        let content = m.column_by_name("content").unwrap();
        let content = content.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(content.len(), 2);
        assert_eq!(
            content.value(1),
            r["messages"][1]["content"].as_str().unwrap()
        );
    }

    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(card.starts_with("---\n"), "{card}");
    for needle in [
        "configs:",
        "path: data/train-00000-of-00001.parquet",
        "| records | 3 |",
        "verified correct",
        "Teacher shares",
        "Rejected candidate steps by reason",
        "attempts (rejection sampling)",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    let pool_fp = recs[0]["config"]["pool"].as_str().unwrap();
    assert!(card.contains(pool_fp), "card lacks the pool fingerprint");

    // A second export into the same directory needs --overwrite.
    let o = export(&out, &dir, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    let o = export(&out, &dir, &["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // CI reads the export with pyarrow / datasets afterwards (scripts/check-export.py).
    if let Some(keep) = std::env::var_os("CORD_EXPORT_DIR") {
        let keep = Path::new(&keep);
        let _ = std::fs::remove_dir_all(keep);
        std::fs::create_dir_all(keep.join("data")).unwrap();
        for p in ["README.md", "data/train-00000-of-00001.parquet"] {
            std::fs::copy(dir.join(p), keep.join(p)).unwrap();
        }
    }
    let has_pyarrow = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_pyarrow {
        let o = Command::new("python3")
            .arg(Path::new(REPO).join("scripts/check-export.py"))
            .arg(&dir)
            .args(["--rows", "3"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "check-export.py: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
    } else {
        eprintln!("SKIPPED: python3 has no pyarrow; scripts/check-export.py not run");
    }
}

#[test]
fn export_errors_are_clear() {
    let f = Fixture::new();
    let bad = f.path("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"x\"}\n").unwrap();
    let o = export(&bad, &f.path("d1"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.jsonl:1") && !err.contains("panicked"),
        "{err}"
    );
    let empty = f.path("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = export(&empty, &f.path("d2"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no records"), "{}", stderr(&o));
    let o = export(&f.path("missing.jsonl"), &f.path("d3"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.jsonl"), "{}", stderr(&o));
}
