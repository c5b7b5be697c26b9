//! CoRD over the real small models fetched by `scripts/fetch-models.sh` (skipped, with a visible
//! message, when they are absent): the meta-prover's scores, and a short synthesis run with the
//! demo pool.

#[path = "../../cord-models/tests/common/assets.rs"]
mod assets;

use std::path::Path;

use cord_backend::{BackendOptions, EngineBackend};
use cord_decode::backend::{Backend, ScoreRequest};
use cord_decode::config::PoolConfig;
use cord_decode::io::{Problem, Record};

const SUFFIX: &str = " </think> The final answer is ";

/// A GSM8K worked solution from the package's TOML: the reasoning (annotations `<<..>>`
/// removed, `#### N` cut) and the answer.
fn worked(dir: &Path, i: usize) -> (String, String, String) {
    let text = std::fs::read_to_string(dir.join(format!("data/gsm8k/{i:04}.toml"))).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let q = v["question"].as_str().unwrap().to_string();
    let a = v["answer"].as_str().unwrap();
    let (body, gt) = a.split_once("####").unwrap();
    let mut clean = String::new();
    let mut rest = body;
    while let Some(s) = rest.find("<<") {
        clean.push_str(&rest[..s]);
        rest = rest[s..].find(">>").map_or("", |e| &rest[s + e + 2..]);
    }
    clean.push_str(rest);
    (q, clean.trim().to_string(), gt.trim().to_string())
}

fn pool(text: &str, dir: &Path) -> PoolConfig {
    let text = text.replace("${CORD_MODELS}", &dir.to_string_lossy());
    PoolConfig::from_toml_str(&text, "test pool").unwrap()
}

#[test]
fn meta_prover_scores_rank_the_correct_answer_first() {
    let Some(dir) = assets::require(
        "meta_prover_scores_rank_the_correct_answer_first",
        &[
            "qwen2.5-coder-0.5b/model.gguf",
            "qwen2.5-coder-1.5b/model.gguf",
            "data/gsm8k/0004.toml",
        ],
    ) else {
        return;
    };
    let pool = pool(
        r#"
[scorer]
kind = "meta-prover"
model = "${CORD_MODELS}/qwen2.5-coder-1.5b/model.gguf"
dtype = "f32"
[[teacher]]
name = "qwen"
model = "${CORD_MODELS}/qwen2.5-coder-0.5b/model.gguf"
dtype = "f32"
"#,
        &dir,
    );
    let mut backend = EngineBackend::from_pool(&pool, &BackendOptions::default()).unwrap();
    let mut reqs = Vec::new();
    for i in 0..5 {
        let (q, reasoning, gt) = worked(&dir, i);
        let wrong = gt
            .parse::<f64>()
            .map(|x| format!("{}", x * 2.0 + 7.0))
            .unwrap();
        for target in [gt, wrong] {
            reqs.push(ScoreRequest {
                scorer: 0,
                question: q.clone(),
                context: format!("{reasoning}{SUFFIX}"),
                target: format!("{target}."),
            });
        }
    }
    let scores = backend.score(&reqs).unwrap();
    for (i, pair) in scores.chunks(2).enumerate() {
        let (right, wrong) = (pair[0].mean_logprob.exp(), pair[1].mean_logprob.exp());
        eprintln!(
            "problem {i}: correct {right:.4} (m={}), wrong {wrong:.4} (m={})",
            pair[0].m, pair[1].m
        );
        assert!(right > 0.0 && right <= 1.0 && wrong > 0.0 && wrong <= 1.0);
        assert!(pair[0].m >= 2, "the answer and its '.' are scored");
        assert!(
            right > wrong,
            "problem {i}: the correct answer must score higher"
        );
    }
}

#[test]
fn synth_runs_two_problems_with_the_demo_pool() {
    let Some(dir) = assets::require(
        "synth_runs_two_problems_with_the_demo_pool",
        &["qwen2.5-coder-1.5b/model.gguf", "smollm2-135m/model.gguf"],
    ) else {
        return;
    };
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo.toml"),
    )
    .unwrap();
    let mut pool = pool(&demo, &dir);
    // Small budgets keep this within CI's time on 2 cores; the mechanics are the demo's.
    pool.search.think_budget = 96;
    pool.search.max_step_tokens = 32;
    pool.search.answer_budget = 16;
    pool.search.max_steps = 2;
    // A 32-token cap cuts most steps mid-paragraph, which the demo's filter rejects.
    pool.filter.reject_cut = false;
    pool.search.record_timing = false;
    pool.validate().unwrap();
    let settings = cord_decode::Settings::shared(&pool).unwrap();
    let mut backend = EngineBackend::from_pool(&pool, &BackendOptions::default()).unwrap();
    let text = include_str!("../../../data/gsm8k.jsonl");
    let problems: Vec<Problem> = cord_decode::io::parse_problems(text, "gsm8k")
        .unwrap()
        .into_iter()
        .take(2)
        .collect();
    let mut out: Vec<Record> = Vec::new();
    let summary = cord_decode::run(
        &mut backend,
        &settings,
        problems.clone(),
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.problems, 2);
    assert_eq!(out.len(), 2);
    for (r, p) in out.iter().zip(&problems) {
        assert_eq!(r.id, p.id);
        assert!(
            !r.steps.is_empty() && r.steps.len() <= 3,
            "{} steps",
            r.steps.len()
        );
        let names: Vec<&str> = pool.teachers.iter().map(|t| t.name.as_str()).collect();
        assert!(
            r.steps.iter().all(|s| names.contains(&s.teacher.as_str())),
            "step teachers {:?} not all in the pool {names:?}",
            r.steps.iter().map(|s| &s.teacher).collect::<Vec<_>>()
        );
        assert!(r.steps.iter().all(|s| s.score > 0.0 && s.score <= 1.0));
        assert!(r.score > 0.0 && r.score <= 1.0);
        assert!(r.response.starts_with("<think>\n### Step 1."));
        assert!(r.response.contains("</think>"));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].content, p.question);
        // The record survives a JSON round trip exactly (serde_json's float_roundtrip is on, so a
        // resumed run reads back the very scores that were written).
        let line = serde_json::to_string(r).unwrap();
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
        eprintln!(
            "{}: {} steps, score {:.3}, predicted {:?} (gt {})",
            r.id,
            r.steps.len(),
            r.score,
            r.predicted,
            r.answer
        );
    }
}
