//! Problems JSONL, pool configuration and answer checking.

use cord_decode::answer::{answers_match, extract_answer};
use cord_decode::config::{Method, PoolConfig, ScorerModel, SearchOverrides};
use cord_decode::io::parse_problems;
use cord_decode::{Error, read_problems};

#[test]
fn problems_with_aliases_ids_and_answers() {
    let text = r#"{"id": "a", "question": "Q1", "answer": "204"}

{"problem": "Q2", "gt": 17}
{"id": 12, "prompt": "Q3", "final_answer": "\\frac{1}{2}"}
{"question": "Q4", "solution": "Natalia sold 48/2 = 24 clips.\n#### 72"}
{"question": "Q5", "solution": "So the answer is $\\boxed{\\frac{3}{4}}$."}
"#;
    let ps = parse_problems(text, "in.jsonl").unwrap();
    let got: Vec<(&str, &str, &str, usize)> = ps
        .iter()
        .map(|p| {
            (
                p.id.as_str(),
                p.question.as_str(),
                p.answer.as_str(),
                p.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", "Q1", "204", 1),
            ("line-3", "Q2", "17", 3),
            ("12", "Q3", "\\frac{1}{2}", 4),
            ("line-5", "Q4", "72", 5),
            ("line-6", "Q5", "\\frac{3}{4}", 6),
        ]
    );
}

fn input_error(text: &str) -> (usize, String) {
    match parse_problems(text, "in.jsonl").unwrap_err() {
        Error::Input {
            line,
            message,
            path,
        } => {
            assert_eq!(path, "in.jsonl");
            (line, message)
        }
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn bad_lines_are_reported_with_their_line_number() {
    let ok = r#"{"question": "Q", "answer": "1"}"#;
    let (line, msg) = input_error(&format!(
        "{ok}\n{ok}\n{{\"question\": \"Q\", \"answer\": \n"
    ));
    assert_eq!(line, 3);
    assert!(msg.contains("invalid JSON"), "{msg}");
    let (line, msg) = input_error(&format!("{ok}\n{{\"answer\": \"1\"}}\n"));
    assert_eq!(line, 2);
    assert!(msg.contains("question"), "{msg}");
    let (line, msg) = input_error(&format!("{ok}\n{ok}\n{ok}\n{{\"question\": \"Q\"}}\n"));
    assert_eq!(line, 4);
    assert!(msg.contains("answer"), "{msg}");
    let (line, msg) = input_error("[1, 2]\n");
    assert_eq!(line, 1);
    assert!(msg.contains("object"), "{msg}");
    let (line, msg) = input_error(r#"{"question": "", "answer": "1"}"#);
    assert_eq!(line, 1);
    assert!(msg.contains("non-empty"), "{msg}");
    let (line, msg) = input_error(r#"{"id": [1], "question": "Q", "answer": "1"}"#);
    assert_eq!(line, 1);
    assert!(msg.contains("id"), "{msg}");
    let (line, msg) = input_error(r#"{"question": "Q", "solution": "no final line"}"#);
    assert_eq!(line, 1);
    assert!(msg.contains("solution"), "{msg}");
}

#[test]
fn duplicate_ids_and_empty_files() {
    let text = r#"{"id": "x", "question": "Q", "answer": "1"}
{"id": "y", "question": "Q", "answer": "1"}
{"id": "x", "question": "Q", "answer": "2"}
"#;
    match parse_problems(text, "in.jsonl").unwrap_err() {
        Error::Input { line, message, .. } => {
            assert_eq!(line, 3);
            assert_eq!(message, "duplicate id \"x\" (first on line 1)");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(matches!(
        parse_problems("", "in.jsonl").unwrap_err(),
        Error::EmptyInput { .. }
    ));
    assert!(matches!(
        parse_problems("\n  \n", "in.jsonl").unwrap_err(),
        Error::EmptyInput { .. }
    ));
    let err = read_problems("/nonexistent/problems.jsonl").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/problems.jsonl"),
        "{err}"
    );
}

const BASE: &str = r#"
[search]
beam_width = 4

[scorer]
model = "qwq"

[[teacher]]
name = "qwq"
model = "Qwen/QwQ-32B"

[[teacher]]
name = "r1"
model = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
"#;

fn config_error(text: &str) -> Error {
    PoolConfig::from_toml_str(text, "pool.toml").unwrap_err()
}

fn assert_key(text: &str, key: &str) {
    match config_error(text) {
        Error::Config { key: k, message } => assert_eq!(k, key, "{message}"),
        e => panic!("expected an error on {key}, got {e}"),
    }
}

#[test]
fn pool_defaults_and_scorer_resolution() {
    let pool = PoolConfig::from_toml_str(BASE, "pool.toml").unwrap();
    let s = &pool.search;
    assert_eq!(
        (
            s.method,
            s.beam_width,
            s.think_budget,
            s.answer_budget,
            s.max_step_tokens
        ),
        (Method::Cord, 4, 16384, 4096, 1024)
    );
    assert_eq!(
        (
            s.max_steps,
            s.mcts_simulations,
            s.problems_in_flight,
            s.seed
        ),
        (512, 4, 16, 0)
    );
    assert!(s.dedupe && !s.drop_incorrect && s.prefill_think && s.resample_empty && s.score_period);
    assert_eq!(s.effective_curation_samples(), 4);
    assert_eq!(pool.teachers[0].temperature, 0.6);
    assert_eq!(pool.teachers[0].top_p, 0.95);
    assert_eq!(pool.teachers[0].dtype, "bf16");
    assert_eq!(pool.scorer.suffix, " </think> The final answer is ");
    let scorers = pool.scorers();
    assert_eq!(scorers.len(), 1);
    assert_eq!(scorers[0].model, ScorerModel::Teacher(0));

    let spec = BASE.replace("model = \"qwq\"", "model = \"Qwen/QwQ-32B-Preview\"");
    let pool = PoolConfig::from_toml_str(&spec, "pool.toml").unwrap();
    assert_eq!(
        pool.scorers()[0].model,
        ScorerModel::Model("Qwen/QwQ-32B-Preview".into())
    );
}

#[test]
fn pool_validation_names_the_key() {
    assert_key(
        &BASE.replace("beam_width = 4", "beam_width = 0"),
        "search.beam_width",
    );
    assert_key(
        &BASE.replace("beam_width = 4", "think_budget = 0"),
        "search.think_budget",
    );
    assert_key(
        &BASE.replace("beam_width = 4", "answer_budget = 0"),
        "search.answer_budget",
    );
    assert_key(
        &BASE.replace(
            "beam_width = 4",
            "think_budget = 100\nmax_step_tokens = 200",
        ),
        "search.max_step_tokens",
    );
    assert_key(
        &BASE.replace("beam_width = 4", "mcts_c = -1.0"),
        "search.mcts_c",
    );
    assert_key(
        &BASE.replace("name = \"r1\"", "name = \"qwq\""),
        "teacher[1].name",
    );
    assert_key(
        &BASE.replace("model = \"qwq\"", "model = \"qwen\""),
        "scorer.model",
    );
    assert_key(
        &format!("{BASE}temperature = -0.5\n"),
        "teacher[1].temperature",
    );
    assert_key(&format!("{BASE}top_p = 1.5\n"), "teacher[1].top_p");
    assert_key(&format!("{BASE}dtype = \"int3\"\n"), "teacher[1].dtype");
    assert_key(
        &format!("{BASE}max_step_tokens = 99999\n"),
        "teacher[1].max_step_tokens",
    );
    assert_key("[scorer]\nmodel = \"x/y\"\n", "teacher");
    assert_key(&BASE.replace("model = \"qwq\"\n", ""), "scorer.model");
    let one = "[scorer]\nkind = \"cross-teacher\"\nexclude_proposer = true\n[[teacher]]\nname = \"a\"\nmodel = \"o/a\"\n";
    assert_key(one, "scorer.exclude_proposer");
    let e = config_error(&BASE.replace("beam_width = 4", "beam_width = 0"));
    assert!(e.to_string().contains("search.beam_width"), "{e}");
}

#[test]
fn unknown_keys_and_bad_values_are_parse_errors_naming_them() {
    let e = config_error(&BASE.replace("beam_width = 4", "beam_widht = 4"));
    assert!(matches!(e, Error::ConfigParse { .. }));
    assert!(e.to_string().contains("beam_widht"), "{e}");
    let e = config_error(&format!("{BASE}colour = \"red\"\n"));
    assert!(e.to_string().contains("colour"), "{e}");
    let e = config_error(&BASE.replace("beam_width = 4", "method = \"beam\""));
    assert!(e.to_string().contains("beam"), "{e}");
    let e = config_error(&BASE.replace("beam_width = 4", "beam_width = \"four\""));
    assert!(e.to_string().contains("beam_width"), "{e}");
    assert!(e.to_string().starts_with("pool.toml"), "{e}");
}

#[test]
fn overrides_apply_and_validate() {
    let mut pool = PoolConfig::from_toml_str(BASE, "pool.toml").unwrap();
    let fp = pool.fingerprint();
    pool.apply_overrides(&SearchOverrides {
        method: Some(Method::Greedy),
        seed: Some(3),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(pool.search.effective_beam(), 1);
    assert_eq!(pool.search.seed, 3);
    assert_ne!(pool.fingerprint(), fp);
    let err = pool
        .apply_overrides(&SearchOverrides {
            beam_width: Some(0),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("search.beam_width"), "{err}");
    pool.apply_overrides(&SearchOverrides {
        problems_in_flight: Some(64),
        beam_width: Some(4),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(pool.search.problems_in_flight, 64);
}

#[test]
fn presets_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    let pool = PoolConfig::from_file(format!("{dir}/paper.toml")).unwrap();
    let names: Vec<&str> = pool.teachers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["r1-qwen-32b", "qwq", "phi-4-reasoning-plus"]);
    assert_eq!(pool.scorers()[0].model, ScorerModel::Teacher(1));
    assert_eq!(pool.teachers[0].system_prompt.as_deref(), Some(""));
    assert!(
        pool.teachers[2]
            .system_prompt
            .as_deref()
            .unwrap()
            .contains("<think> {Thought section} </think>")
    );
    assert!(
        pool.teachers
            .iter()
            .all(|t| t.temperature == 0.6 && t.top_p == 0.95 && t.dtype == "bf16")
    );
    let homo = PoolConfig::from_file(format!("{dir}/paper-homo.toml")).unwrap();
    let temps: Vec<f64> = homo.teachers.iter().map(|t| t.temperature).collect();
    assert_eq!(temps, vec![0.5, 0.6, 0.7]);
}

#[test]
fn answer_extraction() {
    let cases: &[(&str, Option<&str>)] = &[
        ("so \\boxed{204}.", Some("204")),
        (
            "first \\boxed{1} then \\boxed{\\frac{1}{2}}",
            Some("\\frac{1}{2}"),
        ),
        (
            "nested \\boxed{\\text{(A) } {x}^{2}}",
            Some("\\text{(A) } {x}^{2}"),
        ),
        ("$\\boxed 7$", Some("7")),
        ("\\fbox{12}", Some("12")),
        ("The final answer is 42.", Some("42")),
        ("The final answer is: $3.50$.\nThanks", Some("3.50")),
        ("**The final answer is \\(x = 5\\)**", Some("x = 5")),
        ("Thus the answer is 17", Some("17")),
        ("The final answer is 140 minutes.", Some("140")),
        (
            "The final answer is 16 eggs will not be placed on the tray",
            Some("16"),
        ),
        ("The final answer is $1,200 per week.", Some("$1,200")),
        ("The final answer is 3.5 hours, so", Some("3.5")),
        ("I think the answer is: **Paris**.", Some("Paris")),
        (
            "We get 3 apples and then 1,234 pears, total 1,237.",
            Some("1237"),
        ),
        ("temperature fell to -4 degrees", Some("-4")),
        ("ratio 3/4 overall", Some("3/4")),
        ("value 2.5.", Some("2.5")),
        ("no numbers here", None),
        ("unbalanced \\boxed{12", Some("12")),
    ];
    for (text, want) in cases {
        assert_eq!(extract_answer(text).as_deref(), *want, "{text:?}");
    }
}

#[test]
fn answer_comparison() {
    let yes = [
        ("42", "42"),
        ("3.50", "3.5"),
        ("1,000", "1000"),
        ("$1,000", "1000"),
        ("50\\%", "50"),
        ("50%", "50"),
        ("42.", "42"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{1}{2}", "1/2"),
        ("-\\frac{3}{4}", "-0.75"),
        ("x = 5", "5"),
        ("\\boxed{7}", "7"),
        ("\\text{Paris}", "paris"),
        ("(1, 2)", "(1,2)"),
        ("\\left(1,2\\right)", "(1,2)"),
        ("90^\\circ", "90"),
        ("  204 ", "204"),
    ];
    for (a, b) in yes {
        assert!(answers_match(a, b), "{a:?} should match {b:?}");
    }
    let no = [
        ("42", "43"),
        ("0.333", "1/3"),
        ("1,2", "12"),
        ("", "1"),
        ("paris", "london"),
        ("1/0", "0"),
        ("3.5", "35"),
    ];
    for (a, b) in no {
        assert!(!answers_match(a, b), "{a:?} should not match {b:?}");
    }
}
