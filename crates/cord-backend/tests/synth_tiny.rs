//! End-to-end synthesis over the real engine backend, on two tiny generated models with
//! different architectures and tokenizers (see `cord_testkit::tiny`): a full run writes valid
//! records, equal seeds give byte-identical files whatever `problems_in_flight` is, and a
//! resumed run after a torn or missing last record writes every id exactly once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cord_backend::{BackendOptions, EngineBackend, KvMemory, Parallel};
use cord_decode::config::DEFAULT_SUFFIX;
use cord_decode::driver;
use cord_decode::io::{OutputMode, Problem, Record, RecordWriter, ResumeInfo, read_problems};
use cord_decode::search::{Settings, score_context};
use cord_decode::{
    AnswerRequest, Backend, Finish, PoolConfig, ProposeRequest, ScoreRequest, Summary,
};
use cord_testkit::tiny;
use serde_json::Value;
use tempfile::TempDir;

const TEACHERS: [&str; 2] = tiny::POOL_TEACHERS;
const IDS: [&str; 3] = ["gsm-1", "gsm-2", "gsm-3"];

struct Fixture {
    dir: TempDir,
    llama: PathBuf,
    qwen2: PathBuf,
    problems: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (llama, qwen2) = tiny::write_pool_models(dir.path());
        let problems = dir.path().join("problems.jsonl");
        let lines = [
            serde_json::json!({"id": IDS[0], "question": "Tom has 3 apples and buys 9 more. How many apples does he have?", "answer": "12"}),
            serde_json::json!({"id": IDS[1], "question": "What is 6 * 7?\nAnswer with a number.", "answer": "42"}),
            serde_json::json!({"id": IDS[2], "question": "A train travels 100 km in 2 hours; what is its speed (km/h)?", "answer": "50"}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&problems, text).unwrap();
        Fixture {
            dir,
            llama,
            qwen2,
            problems,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pool: both tiny teachers on the CPU, small budgets. `scorer` is the `[scorer]` body.
    fn pool(&self, seed: u64, in_flight: usize, scorer: &str) -> PoolConfig {
        self.pool_with(seed, in_flight, scorer, "")
    }

    /// As [`Fixture::pool`] with extra `[search]` lines.
    fn pool_with(&self, seed: u64, in_flight: usize, scorer: &str, search: &str) -> PoolConfig {
        let text = format!(
            r#"
[search]
method = "cord"
beam_width = 2
think_budget = 96
max_step_tokens = 24
answer_budget = 16
max_steps = 12
seed = {seed}
problems_in_flight = {in_flight}
record_timing = false
{search}

"#,
        ) + &tiny::pool_tables(&self.llama, &self.qwen2, scorer);
        PoolConfig::from_toml_str(&text, "tiny-pool").unwrap()
    }

    fn problems(&self) -> Vec<Problem> {
        read_problems(&self.problems).unwrap()
    }
}

const META: &str = "kind = \"meta-prover\"\nmodel = \"byte-llama\"";
const CROSS: &str = "kind = \"cross-teacher\"";

fn backend(pool: &PoolConfig) -> EngineBackend {
    backend_with(pool, Parallel::Device)
}

fn backend_with(pool: &PoolConfig, parallel: Parallel) -> EngineBackend {
    let opts = BackendOptions {
        kv_memory: KvMemory::Fixed(8 << 20),
        max_batch_tokens: 512,
        parallel,
        ..BackendOptions::default()
    };
    EngineBackend::from_pool(pool, &opts).unwrap()
}

/// Runs `problems` into `out` (opened with `mode`).
fn synth(
    pool: &PoolConfig,
    problems: Vec<Problem>,
    out: &Path,
    mode: OutputMode,
) -> (Summary, ResumeInfo) {
    let (mut writer, info) = RecordWriter::open(out, mode, &pool.fingerprint()).unwrap();
    let todo: Vec<Problem> = problems
        .into_iter()
        .filter(|p| !info.done.contains(&p.id))
        .collect();
    let mut b = backend(pool);
    let settings = Settings::shared(pool).unwrap();
    let summary = driver::run(&mut b, &settings, todo, &mut writer, &mut |_| {}).unwrap();
    (summary, info)
}

fn fresh() -> OutputMode {
    OutputMode::default()
}

fn resume() -> OutputMode {
    OutputMode {
        resume: true,
        ..OutputMode::default()
    }
}

/// Every line is a whole JSON record; returns them typed, checking the invariants a consumer
/// relies on.
fn check_records(path: &Path, pool: &PoolConfig, problems: &[Problem]) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "the file ends with a whole line");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON: {e}", i + 1));
        let rec: Record = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("line {} is not a record: {e}", i + 1));
        let p = &problems[i];
        assert_eq!(rec.id, p.id, "records in input order");
        assert_eq!(rec.question, p.question);
        assert_eq!(rec.answer, p.answer);
        if let Some(why) = &rec.failed {
            // Every candidate was rejected: no trajectory, nothing to train on.
            assert!(!why.is_empty());
            assert!(rec.steps.is_empty() && rec.messages.is_empty() && rec.response.is_empty());
            assert!(!rec.correct && !rec.natural_end);
            out.push(rec);
            continue;
        }
        assert!(!rec.steps.is_empty(), "{}: no steps", rec.id);
        for (k, s) in rec.steps.iter().enumerate() {
            assert_eq!(s.index, k + 1, "{}: steps numbered from 1", rec.id);
            assert!(
                TEACHERS.contains(&s.teacher.as_str()),
                "{}: step teacher {:?} is not in the pool",
                rec.id,
                s.teacher
            );
            assert!(s.score.is_finite() && s.score > 0.0 && s.score <= 1.0);
            assert!(s.candidates >= 1);
            assert!(!s.finish.is_empty());
            for t in &s.also_proposed_by {
                assert!(TEACHERS.contains(&t.as_str()));
            }
            // The engine cut every generation at the first stop string: a step holds no other
            // step header, and `</think>` only at its very end. (A step that only closes the
            // reasoning because the budget ran out has no header.)
            let header = format!("### Step {}.", k + 1);
            let Some(body) = s.text.strip_prefix(&header) else {
                assert_eq!(
                    s.text,
                    "</think>",
                    "{}: step {} has no header",
                    rec.id,
                    k + 1
                );
                assert_eq!(k + 1, rec.steps.len(), "only the last step may just close");
                // Closed by the orchestrator: forced (cap, budget), or the beam's own score
                // beat every continuation (`close_candidate`).
                assert!(
                    rec.forced_close || s.finish == "score-close",
                    "{}",
                    s.finish
                );
                continue;
            };
            assert!(!body.contains("### Step"), "{}: {:?}", rec.id, s.text);
            let open = body.strip_suffix("</think>").unwrap_or(body);
            assert!(!open.contains("</think>"), "{}: {:?}", rec.id, s.text);
        }
        assert!(
            rec.score.is_finite() && rec.score > 0.0 && rec.score <= 1.0,
            "{}: score {} not in (0, 1]",
            rec.id,
            rec.score
        );
        assert!(TEACHERS.contains(&rec.answer_teacher.as_str()));
        assert!(v.get("final_answer").is_some_and(Value::is_string));
        assert!(rec.response.starts_with("<think>\n"), "{}", rec.response);
        // The response is the chosen steps, closed, then the answer.
        let reasoning: String = rec.steps.iter().map(|s| s.text.as_str()).collect();
        assert!(rec.steps[0].text.starts_with("### Step 1."));
        assert_eq!(
            rec.response,
            format!(
                "<think>\n{}\n</think>\n\n{}",
                score_context(&reasoning),
                rec.final_answer
            )
        );
        assert_eq!(rec.messages.len(), 2);
        assert_eq!(rec.messages[0].role, "user");
        assert_eq!(rec.messages[0].content, p.question);
        assert_eq!(rec.messages[1].role, "assistant");
        assert_eq!(rec.messages[1].content, rec.response);
        assert_eq!(rec.config.seed, pool.search.seed);
        assert_eq!(rec.config.beam, 2);
        assert_eq!(rec.config.pool, pool.fingerprint());
        // Every beam asks every teacher each step: both generated tokens.
        let generated = &rec.stats.tokens_generated;
        let mut names = TEACHERS.to_vec();
        names.sort();
        assert_eq!(
            generated.keys().map(String::as_str).collect::<Vec<_>>(),
            names,
            "{}: tokens per teacher {generated:?}",
            rec.id
        );
        assert!(generated.values().all(|&n| n > 0));
        assert!(rec.stats.propose_requests >= 2);
        assert!(rec.stats.score_requests >= 1);
        assert!(rec.stats.tokens_scored >= 1);
        assert!(rec.stats.seconds.is_none(), "record_timing = false");
        assert!(v["stats"].get("seconds").is_none());
        out.push(rec);
    }
    assert_eq!(out.len(), problems.len(), "one record per problem");
    out
}

fn ids_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn tiny_models_load_with_different_tokenizers() {
    let f = Fixture::new();
    let a = cord_models::load(f.llama.to_str().unwrap(), &Default::default()).unwrap();
    let b = cord_models::load(f.qwen2.to_str().unwrap(), &Default::default()).unwrap();
    let text =
        "### Step 1. <think>\nWe add 3 + 9 = 12, so the final answer is 12.</think> (x/y) ~ $5!";
    for m in [&a, &b] {
        let enc = m.tokenizer.encode(text, false).unwrap();
        let dec = m.tokenizer.decode(enc.get_ids(), false).unwrap();
        assert_eq!(dec, text, "{}: ASCII round-trips", m.name);
        assert!(m.tokenizer.get_vocab_size(true) <= m.model.config().vocab_size);
        assert!(m.chat_template.is_some());
        assert!(!m.eos_token_ids.is_empty());
    }
    let ea = a.tokenizer.encode(text, false).unwrap();
    let eb = b.tokenizer.encode(text, false).unwrap();
    assert_eq!(
        ea.get_ids().len(),
        text.len(),
        "byte tokenizer: one token per byte"
    );
    assert!(
        eb.get_ids().len() < ea.get_ids().len(),
        "the BPE tokenizer merges"
    );
    assert_ne!(a.tokenizer.get_vocab(true), b.tokenizer.get_vocab(true));
    // `</think>` is one token for the qwen2 flavour, bytes for the llama one.
    let close = b.tokenizer.encode("</think>", false).unwrap();
    assert_eq!(close.get_ids().len(), 1);
    assert!(a.add_bos && a.bos_token.as_deref() == Some("<s>"));
    assert_eq!(a.model.config().arch, cord_models::Arch::Llama);
    assert_eq!(b.model.config().arch, cord_models::Arch::Qwen2);
    assert!(b.model.config().qkv_bias && b.model.config().tie_word_embeddings);
}

#[test]
fn full_run_writes_three_valid_records() {
    let f = Fixture::new();
    let pool = f.pool(7, 3, META);
    let out = f.out("full.jsonl");
    let (summary, info) = synth(&pool, f.problems(), &out, fresh());
    assert_eq!(info, ResumeInfo::default());
    assert_eq!(summary.problems, 3);
    assert_eq!(summary.written, 3);
    assert!(summary.propose_calls > 0 && summary.score_calls > 0 && summary.answer_calls > 0);
    assert_eq!(
        summary.tokens_per_teacher.keys().collect::<Vec<_>>(),
        vec!["bpe-qwen2", "byte-llama"]
    );
    let recs = check_records(&out, &pool, &f.problems());
    // Meta-prover scoring: every ranked step carries its own mean log-prob and M.
    for r in &recs {
        assert!(r.steps.iter().all(|s| s.scorers.is_empty()));
        assert!(r.steps.iter().any(|s| s.m.is_some_and(|m| m >= 1)));
    }
    // The meta-prover is a teacher: it shares that teacher's model (two models, not three).
    let b = backend(&pool);
    assert_eq!(b.engine().models().len(), 2);
}

#[test]
fn cross_teacher_run_writes_valid_records() {
    let f = Fixture::new();
    // The random tiny models write junk that the filter would reject; this test is about
    // cross-teacher scoring, so every candidate is scored.
    let mut pool = f.pool_with(3, 2, CROSS, "save_tree = true");
    pool.filter.enabled = false;
    let out = f.out("cross.jsonl");
    let (summary, _) = synth(&pool, f.problems(), &out, fresh());
    assert_eq!(summary.written, 3);
    let recs = check_records(&out, &pool, &f.problems());
    for r in &recs {
        // The tree holds every candidate of both teachers; each chosen step is a kept one.
        let tree = r.tree.as_ref().expect("save_tree");
        for t in TEACHERS {
            assert!(
                tree.iter().any(|e| e.teacher == t),
                "{}: no {t} candidate",
                r.id
            );
        }
        for s in &r.steps {
            assert!(
                tree.iter()
                    .any(|e| e.step == s.index && e.kept && e.teacher == s.teacher),
                "{}: step {} is not a kept candidate",
                r.id,
                s.index
            );
        }
        for s in r.steps.iter().filter(|s| !s.scorers.is_empty()) {
            let names: Vec<&str> = s.scorers.iter().map(|v| v.scorer.as_str()).collect();
            assert_eq!(names, TEACHERS, "{}: every teacher scores", r.id);
            assert!(s.scorers.iter().all(|v| v.m >= 1 && v.mean_logprob < 0.0));
        }
        assert!(r.steps.iter().any(|s| !s.scorers.is_empty()));
    }
}

/// The records of a file, checking that `stats.prefix_tokens_reused` (the one field that depends
/// on what the prefix caches held, so on `problems_in_flight` and on resuming, see `driver`) is
/// left out with `record_timing = false`.
fn without_reuse(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let stats = v["stats"].as_object_mut().unwrap();
            assert!(stats.remove("prefix_tokens_reused").is_none());
            v
        })
        .collect()
}

/// `a` and `b` hold the same records: every string, integer and structure equal, floats equal
/// up to f32 rounding, `stats.prefix_tokens_reused` ignored.
///
/// Floats are not compared bit for bit because candle's CPU matmul rounds differently for
/// different row counts (M ≤ 16 takes other kernels), so a score computed over a cached prefix
/// (a few new rows) or in another batch can differ in the last bits of the f32 logits. Text,
/// choices and token counts must not change.
fn assert_same_records(a: &[u8], b: &[u8], what: &str) {
    fn same(x: &Value, y: &Value, path: &str, what: &str) {
        match (x, y) {
            (Value::Number(p), Value::Number(q)) if !(p.is_u64() && q.is_u64()) => {
                let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                assert!(
                    (p - q).abs() <= 1e-5 * p.abs().max(q.abs()).max(1e-3),
                    "{what}: {path}: {p} vs {q}"
                );
            }
            (Value::Array(p), Value::Array(q)) => {
                assert_eq!(p.len(), q.len(), "{what}: {path}: lengths");
                for (i, (p, q)) in p.iter().zip(q).enumerate() {
                    same(p, q, &format!("{path}[{i}]"), what);
                }
            }
            (Value::Object(p), Value::Object(q)) => {
                assert_eq!(
                    p.keys().collect::<Vec<_>>(),
                    q.keys().collect::<Vec<_>>(),
                    "{what}: {path}: keys"
                );
                for (k, v) in p {
                    same(v, &q[k], &format!("{path}.{k}"), what);
                }
            }
            _ => assert_eq!(x, y, "{what}: {path}"),
        }
    }
    let (a, b) = (without_reuse(a), without_reuse(b));
    assert_eq!(a.len(), b.len(), "{what}: number of records");
    for (x, y) in a.iter().zip(&b) {
        same(x, y, x["id"].as_str().unwrap_or("?"), what);
    }
}

#[test]
fn same_seed_same_output_whatever_problems_in_flight() {
    let f = Fixture::new();
    let pool1 = f.pool(7, 1, META);
    let pool3 = f.pool(7, 3, META);
    assert_eq!(pool1.fingerprint(), pool3.fingerprint());
    let run = |pool: &PoolConfig, name: &str| {
        let out = f.out(name);
        synth(pool, f.problems(), &out, fresh());
        check_records(&out, pool, &f.problems());
        std::fs::read(&out).unwrap()
    };
    let a = run(&pool3, "a.jsonl");
    // The same run again (new engine): byte-identical.
    let again = run(&pool3, "again.jsonl");
    assert!(
        a == again,
        "the same seed changed the output:\n{}\n---\n{}",
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&again)
    );
    // One problem at a time: other batches, other prefix-cache contents, same records.
    let one = run(&pool1, "one.jsonl");
    assert_same_records(&a, &one, "problems_in_flight 3 vs 1");
    // Sanity: the comparison can fail — another seed writes other trajectories.
    let pool8 = f.pool(8, 3, META);
    let other = run(&pool8, "seed8.jsonl");
    assert_ne!(a, other, "a different seed must change the output");
    let compared = std::panic::catch_unwind(|| assert_same_records(&a, &other, "seed 7 vs 8"));
    assert!(compared.is_err(), "the record comparison can fail");
    for (x, y) in without_reuse(&a).iter().zip(without_reuse(&other)) {
        assert_eq!(x["id"], y["id"]);
        assert_ne!(
            x["response"], y["response"],
            "every problem's trajectory changes with the seed"
        );
    }
}

/// Cuts the full output, resumes, and checks that the result is the full output again.
fn resume_after(cut: impl Fn(&[u8]) -> Vec<u8>, expect_truncated: bool, name: &str) {
    let f = Fixture::new();
    let pool = f.pool(5, 2, META);
    let full = f.out(&format!("{name}-full.jsonl"));
    synth(&pool, f.problems(), &full, fresh());
    let full_bytes = std::fs::read(&full).unwrap();
    check_records(&full, &pool, &f.problems());

    let part = f.out(&format!("{name}-part.jsonl"));
    let cut_bytes = cut(&full_bytes);
    std::fs::write(&part, &cut_bytes).unwrap();
    let kept_lines = cut_bytes.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(kept_lines, 2, "the cut keeps two whole records");
    let kept_prefix =
        full_bytes[..cut_bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1].to_vec();

    // A fresh open refuses to clobber the partial file.
    assert!(RecordWriter::open(&part, fresh(), &pool.fingerprint()).is_err());

    let (summary, info) = synth(&pool, f.problems(), &part, resume());
    assert_eq!(info.records, 2);
    assert_eq!(
        info.done,
        IDS[..2]
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>()
    );
    assert_eq!(info.truncated_bytes > 0, expect_truncated);
    assert_eq!(summary.problems, 1, "only the missing problem runs again");
    assert_eq!(summary.written, 1);

    let ids = ids_of(&part);
    assert_eq!(ids, IDS, "every id exactly once, in input order");
    let resumed = std::fs::read(&part).unwrap();
    assert!(
        resumed.starts_with(&kept_prefix),
        "earlier records are unchanged"
    );
    check_records(&part, &pool, &f.problems());
    // Seeds depend on the problem id, never on its position or on what ran before: the resumed
    // file holds the full run's records (up to the prefix-cache statistics of the rerun one).
    assert_same_records(&resumed, &full_bytes, "resumed vs full run");

    // Resuming a complete file runs nothing and changes nothing.
    let (summary, info) = synth(&pool, f.problems(), &part, resume());
    assert_eq!(
        (summary.problems, info.records, info.truncated_bytes),
        (0, 3, 0)
    );
    assert_eq!(std::fs::read(&part).unwrap(), resumed);
}

fn last_line_start(bytes: &[u8]) -> usize {
    assert_eq!(bytes.last(), Some(&b'\n'));
    bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

#[test]
fn resume_after_a_torn_last_record() {
    resume_after(
        |full| {
            let start = last_line_start(full);
            let mid = start + (full.len() - start) / 2;
            full[..mid].to_vec()
        },
        true,
        "torn",
    );
}

#[test]
fn resume_after_a_lost_last_record() {
    resume_after(|full| full[..last_line_start(full)].to_vec(), false, "lost");
}

/// The [`Backend`] contract on the real engine with both tokenizers: stop strings cut the text,
/// results depend only on the request (not on the batch), scores count answer tokens in the
/// scorer's own tokenizer, and the think opening is never written twice.
#[test]
fn engine_backend_contract_on_tiny_models() {
    let f = Fixture::new();
    let pool = f.pool(1, 1, CROSS);
    let mut b = backend(&pool);
    let question = "What is 6 * 7?";

    // Both templates end the prompt with one `<think>\n`, whether the template opens it (qwen2)
    // or the prefill does (llama).
    for m in b.engine().models() {
        let p = m.render(None, question, "<think>\n### Step 1.").unwrap();
        assert_eq!(p.matches("<think>").count(), 1, "{}: {p:?}", m.name());
        assert!(p.ends_with("assistant\n<think>\n### Step 1."), "{p:?}");
    }

    // Most printable characters stop: generations end early, cut before the match.
    let stops: Vec<String> = "aeiou0123456789 .,#".chars().map(String::from).collect();
    let req = |teacher: usize, seed: u64, stop: &[String]| ProposeRequest {
        teacher,
        question: question.to_string(),
        reasoning: "### Step 1.".to_string(),
        max_new_tokens: 20,
        stop: stop.to_vec(),
        seed,
    };
    let batch: Vec<ProposeRequest> = (0..8)
        .map(|i| req(i % 2, 100 + i as u64, if i < 4 { &stops } else { &[] }))
        .collect();
    let together = b.propose(&batch).unwrap();
    for (r, p) in batch.iter().zip(&together) {
        assert!(p.tokens <= r.max_new_tokens);
        match &p.finish {
            Finish::Stop(s) => {
                assert!(r.stop.contains(s));
                assert!(r.stop.iter().all(|s| !p.text.contains(s.as_str())), "{p:?}");
            }
            Finish::Length => assert_eq!(p.tokens, r.max_new_tokens),
            Finish::Eos => {}
        }
    }
    assert!(
        together[..4]
            .iter()
            .any(|p| matches!(p.finish, Finish::Stop(_))),
        "{together:?}"
    );
    // Alone, in reverse order, or in another batch: the same results.
    for (i, r) in batch.iter().enumerate() {
        let alone = b.propose(std::slice::from_ref(r)).unwrap();
        assert_eq!(
            (&alone[0].text, &alone[0].finish, alone[0].tokens),
            (&together[i].text, &together[i].finish, together[i].tokens),
            "request {i} depends on its batch"
        );
    }
    let reversed: Vec<ProposeRequest> = batch.iter().rev().cloned().collect();
    let back = b.propose(&reversed).unwrap();
    for (p, q) in back.iter().rev().zip(&together) {
        assert_eq!(
            (&p.text, &p.finish, p.tokens),
            (&q.text, &q.finish, q.tokens)
        );
    }
    // Another seed, another text (for at least one request).
    let reseeded: Vec<ProposeRequest> = batch
        .iter()
        .map(|r| ProposeRequest {
            seed: r.seed + 1000,
            ..r.clone()
        })
        .collect();
    let other = b.propose(&reseeded).unwrap();
    assert!(other.iter().zip(&together).any(|(p, q)| p.text != q.text));

    // Scores: the answer tokens are counted in each scorer's tokenizer. "12." after "is " is
    // three bytes for the llama flavour and `Ġ12` + `.` for the qwen2 one (the token holding the
    // space before the answer straddles the boundary and counts).
    let score = |scorer: usize| ScoreRequest {
        scorer,
        question: question.to_string(),
        context: format!("### Step 1. 6 * 7 = 42{DEFAULT_SUFFIX}"),
        target: "12.".to_string(),
    };
    let s = b.score(&[score(0), score(1), score(0)]).unwrap();
    assert_eq!((s[0].m, s[1].m), (3, 2));
    for x in &s {
        assert!(x.mean_logprob < 0.0 && x.mean_logprob.is_finite());
    }
    assert_eq!(
        s[0].mean_logprob, s[2].mean_logprob,
        "same request, same batch"
    );
    // Again alone, over the cached context: the same score up to f32 rounding (fewer new rows
    // take other CPU matmul kernels, see `assert_same_records`).
    let alone = b.score(&[score(1)]).unwrap();
    assert!(
        alone[0].reused_tokens > 0,
        "the context came from the prefix cache"
    );
    assert_eq!(alone[0].m, s[1].m);
    assert!((alone[0].mean_logprob - s[1].mean_logprob).abs() < 1e-5);

    // Answers: no stop strings, at most the budget.
    let a = b
        .answer(&[AnswerRequest {
            teacher: 1,
            question: question.to_string(),
            reasoning: "### Step 1. 6 * 7 = 42\n</think>".to_string(),
            prefix: String::new(),
            stop: Vec::new(),
            max_new_tokens: 5,
            seed: 9,
        }])
        .unwrap();
    assert!(a[0].tokens <= 5);

    // Token counts differ between the tokenizers.
    let text = "### Step 1. So the final answer is 42";
    assert_eq!(b.count_tokens(0, text).unwrap(), text.len());
    assert!(b.count_tokens(1, text).unwrap() < text.len());
    assert_eq!(b.num_teachers(), 2);
    assert_eq!(b.teacher_name(1), TEACHERS[1]);
}

/// Teachers on different devices run their batches on separate threads at once
/// (`Parallel::Device`); `Parallel::Model` forces that on one CPU, so the threaded path is
/// checked here: the same records as everything on the calling thread.
#[test]
fn models_on_separate_threads_give_the_same_records() {
    let f = Fixture::new();
    let pool = f.pool(7, 3, META);
    let run = |parallel: Parallel, name: &str| {
        let out = f.out(name);
        let (mut writer, _) = RecordWriter::open(&out, fresh(), &pool.fingerprint()).unwrap();
        let mut b = backend_with(&pool, parallel);
        let settings = Settings::shared(&pool).unwrap();
        driver::run(&mut b, &settings, f.problems(), &mut writer, &mut |_| {}).unwrap();
        drop(writer);
        check_records(&out, &pool, &f.problems());
        std::fs::read(&out).unwrap()
    };
    let threaded = run(Parallel::Model, "threaded.jsonl");
    let inline = run(Parallel::None, "inline.jsonl");
    assert_same_records(
        &threaded,
        &inline,
        "one thread per model vs the calling thread",
    );
}
