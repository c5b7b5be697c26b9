//! Property tests of every parser of user files: the problems JSONL reader, the output reader
//! used by `--resume` and the pool TOML loader get arbitrary bytes and structured garbage and
//! never panic: they return problems / records / a pool, or an error.

use std::io::Write;

use cord_decode::io::{OutputMode, RecordWriter, parse_problems, scan_problems};
use cord_decode::{Error, PoolConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON values, small and nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from("   ")),
        Just(Value::from("#### 42")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys the problems reader looks at, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_string()),
        Just("question".to_string()),
        Just("problem".to_string()),
        Just("prompt".to_string()),
        Just("answer".to_string()),
        Just("gt".to_string()),
        Just("final_answer".to_string()),
        Just("solution".to_string()),
        "[a-z]{1,6}",
    ]
}

/// A line of problems JSONL: an object of known keys, any JSON, or any text.
fn problem_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::btree_map(key(), json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => "\\PC{0,30}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..30),
    ]
}

fn problems_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(problem_line(), 0..8).prop_map(|lines| lines.join(&b"\n"[..])),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// A file that looks like cord output: whole records, broken ones, torn tails, other JSON.
fn output_file() -> impl Strategy<Value = Vec<u8>> {
    let record_line = (
        "[a-z0-9]{1,4}",
        prop_oneof![Just("fp".to_string()), "[a-f0-9]{2}"],
    )
        .prop_map(|(id, pool)| json!({"id": id, "config": {"pool": pool}}).to_string());
    let line = prop_oneof![
        4 => record_line,
        1 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{0,20}",
        1 => Just(String::new()),
    ];
    (
        prop::collection::vec(line, 0..6),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(lines, newline, tail)| {
            let mut b = lines.join("\n").into_bytes();
            if newline {
                b.push(b'\n');
            }
            b.extend(tail);
            b
        })
}

/// Pool TOML: the known tables and keys with values of any type, plus any text.
fn pool_toml() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<bool>().prop_map(|v| v.to_string()),
        "\\PC{0,10}".prop_map(|s| toml_string(&s)),
        Just("\"t0\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("= =".to_string()),
    ];
    let search_key = prop_oneof![
        Just("method"),
        Just("beam_width"),
        Just("think_budget"),
        Just("answer_budget"),
        Just("max_step_tokens"),
        Just("step_unit"),
        Just("problems_in_flight"),
        Just("seed"),
        Just("mcts_c"),
        Just("curation_samples"),
        Just("bogus"),
    ];
    let teacher_key = prop_oneof![
        Just("name"),
        Just("model"),
        Just("dtype"),
        Just("temperature"),
        Just("top_p"),
        Just("top_k"),
        Just("min_p"),
        Just("max_step_tokens"),
    ];
    let scorer_key = prop_oneof![
        Just("kind"),
        Just("model"),
        Just("exclude_proposer"),
        Just("suffix")
    ];
    prop_oneof![
        4 => (
            prop::collection::vec((search_key, value.clone()), 0..5),
            prop::collection::vec((scorer_key, value.clone()), 0..3),
            prop::collection::vec(prop::collection::vec((teacher_key, value), 0..6), 0..3),
        )
            .prop_map(|(search, scorer, teachers)| {
                let mut s = String::from("[search]\n");
                for (k, v) in search {
                    s.push_str(&format!("{k} = {v}\n"));
                }
                s.push_str("[scorer]\n");
                for (k, v) in scorer {
                    s.push_str(&format!("{k} = {v}\n"));
                }
                for t in teachers {
                    s.push_str("[[teacher]]\n");
                    for (k, v) in t {
                        s.push_str(&format!("{k} = {v}\n"));
                    }
                }
                s
            }),
        1 => any::<String>(),
    ]
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn problems_reader_never_panics(bytes in problems_file()) {
        let scan = scan_problems(&bytes);
        for p in &scan.problems {
            prop_assert!(!p.id.is_empty() && !p.question.trim().is_empty() && !p.answer.is_empty());
            prop_assert!(p.line >= 1);
        }
        let mut ids: Vec<&str> = scan.problems.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), scan.problems.len(), "ids are unique");
        if let Ok(text) = std::str::from_utf8(&bytes) {
            match parse_problems(text, "in.jsonl") {
                Ok(ps) => {
                    prop_assert!(scan.bad.is_empty());
                    prop_assert_eq!(ps, scan.problems);
                }
                Err(Error::Input { line, .. }) => {
                    prop_assert_eq!(scan.bad.len(), 1);
                    prop_assert_eq!(scan.bad[0].line, line);
                }
                Err(Error::BadLines { count, .. }) => prop_assert_eq!(count, scan.bad.len()),
                Err(Error::EmptyInput { .. }) => prop_assert!(scan.problems.is_empty() && scan.bad.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn resume_reader_never_panics(bytes in output_file(), force in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        let mode = OutputMode { resume: true, force, ..OutputMode::default() };
        if let Ok((_, info)) = RecordWriter::open(&path, mode, "fp") {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count();
            prop_assert!(info.records <= lines);
            prop_assert_eq!(info.done.len(), info.records);
            prop_assert!(info.truncated_bytes as usize <= bytes.len());
        }
        // Opening reads only.
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn pool_loader_never_panics(text in pool_toml()) {
        if let Ok(pool) = PoolConfig::from_toml_str(&text, "pool.toml") {
            // What loads validates, and its fingerprint is stable.
            prop_assert!(pool.validate().is_ok());
            prop_assert_eq!(pool.fingerprint(), pool.fingerprint());
            let _ = pool.scorers();
        }
    }
}
