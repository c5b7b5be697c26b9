//! The bad-input catalogue: every case drives the real `cord` binary and checks that it exits
//! non-zero with one clear `error:` message that names the problem and where it is, prints no
//! panic, and leaves the input files and any existing output byte-for-byte as they were (a
//! missing output stays missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::{Value, json};

/// What a path holds: bytes, "a directory", or nothing.
#[derive(Debug, PartialEq)]
enum Snap {
    File(Vec<u8>),
    Dir,
    Missing,
}

fn snap(p: &Path) -> Snap {
    if p.is_dir() {
        Snap::Dir
    } else {
        std::fs::read(p).map_or(Snap::Missing, Snap::File)
    }
}

/// A runnable setup: valid pool, problems and output path, which a case then spoils.
struct Case {
    f: Fixture,
    pool: PathBuf,
    input: PathBuf,
    out: PathBuf,
}

impl Case {
    fn new() -> Self {
        let f = Fixture::new();
        let pool = f.pool("pool.toml", "");
        let input = f.problems("problems.jsonl", 3);
        let out = f.path("out.jsonl");
        Case {
            f,
            pool,
            input,
            out,
        }
    }

    fn with_problems(self, text: &[u8]) -> Self {
        std::fs::write(&self.input, text).unwrap();
        self
    }

    fn with_pool(self, text: &str) -> Self {
        std::fs::write(&self.pool, text).unwrap();
        self
    }

    /// Runs `cord synth` with `args` and checks the refusal; `needles` must all appear in the
    /// error message.
    fn refused(&self, args: &[&str], needles: &[&str]) -> String {
        self.refused_with(&self.pool, &self.input, &self.out, args, needles)
    }

    fn refused_with(
        &self,
        pool: &Path,
        input: &Path,
        out: &Path,
        args: &[&str],
        needles: &[&str],
    ) -> String {
        let watched = [pool, input, out];
        let before: Vec<Snap> = watched.iter().map(|p| snap(p)).collect();
        let o = synth(pool, input, out, args);
        let after: Vec<Snap> = watched.iter().map(|p| snap(p)).collect();
        let err = check_refusal(&o, needles);
        for ((p, b), a) in watched.iter().zip(&before).zip(&after) {
            assert_eq!(b, a, "{} was changed by a refused run", p.display());
        }
        err
    }
}

/// Exit status non-zero, exactly one `error:` message on stderr holding every needle, no panic.
fn check_refusal(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "accepted; stderr: {err}");
    assert!(
        !err.contains("panicked")
            && !err.contains("RUST_BACKTRACE")
            && !err.contains("stack backtrace"),
        "a panic: {err}"
    );
    // A captured backtrace prints frames as `  12: crate::function` lines.
    let frame = |l: &str| {
        let t = l.trim_start();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && t[digits..].starts_with(": ")
    };
    assert!(
        !err.lines().any(frame),
        "a backtrace after the error: {err}"
    );
    assert_eq!(
        err.matches("error:").count(),
        1,
        "one error message expected: {err}"
    );
    let msg = &err[err.find("error:").unwrap()..];
    for n in needles {
        assert!(msg.contains(n), "the message lacks {n:?}: {msg}");
    }
    msg.to_string()
}

fn line(v: Value) -> String {
    format!("{v}\n")
}

fn good(id: &str) -> String {
    line(json!({"id": id, "question": "What is 2 + 2?", "answer": "4"}))
}

// ---- problems file ----

#[test]
fn malformed_json_line_names_the_file_and_line() {
    let text = format!(
        "{}{{\"id\": \"b\", \"question\": \n{}",
        good("a"),
        good("c")
    );
    Case::new()
        .with_problems(text.as_bytes())
        .refused(&[], &["problems.jsonl:2:", "invalid JSON"]);
}

#[test]
fn several_bad_lines_are_all_listed_before_any_work() {
    let text = format!("{}not json\n{}[1, 2]\n{}", good("a"), good("b"), good("c"));
    Case::new().with_problems(text.as_bytes()).refused(
        &[],
        &[
            "problems.jsonl: 2 bad lines",
            "line 2: invalid JSON",
            "line 4: expected a JSON object, found an array",
            "--skip-bad-lines",
        ],
    );
}

#[test]
fn missing_question_is_named() {
    let text = line(json!({"id": "a", "answer": "4"}));
    Case::new()
        .with_problems(text.as_bytes())
        .refused(&[], &["problems.jsonl:1:", "missing `question`"]);
}

#[test]
fn missing_answer_is_named() {
    let text = format!(
        "{}{}",
        good("a"),
        line(json!({"id": "b", "question": "Q?"}))
    );
    Case::new()
        .with_problems(text.as_bytes())
        .refused(&[], &["problems.jsonl:2:", "missing `answer`"]);
}

#[test]
fn empty_problems_file() {
    Case::new()
        .with_problems(b"\n  \n")
        .refused(&[], &["problems.jsonl", "no problems"]);
}

#[test]
fn duplicate_ids_name_both_lines() {
    let text = format!("{}{}{}", good("a"), good("b"), good("a"));
    Case::new().with_problems(text.as_bytes()).refused(
        &[],
        &["problems.jsonl:3:", "duplicate id \"a\" (first on line 1)"],
    );
}

#[test]
fn question_of_the_wrong_type() {
    let text = line(json!({"id": "a", "question": 17, "answer": "4"}));
    Case::new().with_problems(text.as_bytes()).refused(
        &[],
        &["problems.jsonl:1:", "`question` must be a non-empty string"],
    );
}

#[test]
fn id_and_answer_of_the_wrong_type() {
    let text = format!(
        "{}{}",
        line(json!({"id": ["a"], "question": "Q?", "answer": "4"})),
        line(json!({"id": "b", "question": "Q?", "answer": {"value": 4}}))
    );
    Case::new().with_problems(text.as_bytes()).refused(
        &[],
        &[
            "line 1: `id` must be a non-empty string or a number",
            "line 2: `answer` must be a non-empty string or a number",
        ],
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let mut text = good("a").into_bytes();
    text.extend_from_slice(b"{\"id\": \"b\", \"question\": \"caf\xe9?\", \"answer\": \"1\"}\n");
    Case::new()
        .with_problems(&text)
        .refused(&[], &["problems.jsonl:2:", "not valid UTF-8"]);
}

#[test]
fn skip_bad_lines_leaves_them_out_and_says_so() {
    let text = format!("{}not json\n{}", good("a"), good("b"));
    let c = Case::new().with_problems(text.as_bytes());
    let o = synth(&c.pool, &c.input, &c.out, &["--skip-bad-lines"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("leaving out 1 bad line(s): line 2: invalid JSON"),
        "{err}"
    );
    let ids: Vec<String> = records(&c.out)
        .into_iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn problems_file_missing() {
    let c = Case::new();
    let missing = c.f.path("nope.jsonl");
    let msg = c.refused_with(
        &c.pool,
        &missing,
        &c.out,
        &[],
        &["nope.jsonl", "No such file"],
    );
    assert_eq!(msg.matches("No such file").count(), 1, "said once: {msg}");
}

#[test]
fn limit_zero() {
    Case::new().refused(&["--limit", "0"], &["--limit 0"]);
}

// ---- pool file ----

#[test]
fn pool_file_missing() {
    let c = Case::new();
    let missing = c.f.path("nope.toml");
    let msg = c.refused_with(
        &missing,
        &c.input,
        &c.out,
        &[],
        &["nope.toml", "No such file"],
    );
    assert_eq!(msg.matches("No such file").count(), 1, "said once: {msg}");
}

#[test]
fn bad_toml_names_line_and_column() {
    let c = Case::new();
    let text =
        c.f.pool_text("", META)
            .replace("beam_width = 2", "beam_width = = 2");
    let lineno = text.lines().position(|l| l.contains("= = 2")).unwrap() + 1;
    c.with_pool(&text)
        .refused(&[], &["pool.toml", &format!("line {lineno}, column")]);
}

#[test]
fn unknown_key_in_the_pool() {
    let c = Case::new();
    let text = c.f.pool_text("beam_widht = 3", META);
    c.with_pool(&text)
        .refused(&[], &["pool.toml", "unknown field `beam_widht`"]);
}

#[test]
fn unknown_teacher_named_by_the_scorer() {
    let c = Case::new();
    let text = c.f.pool_text("", "model = \"nobody\"");
    c.with_pool(&text).refused(
        &[],
        &[
            "scorer.model",
            "\"nobody\" names no teacher",
            "byte-llama, bpe-qwen2",
        ],
    );
}

#[test]
fn unknown_method() {
    Case::new().refused(&["--method", "beam"], &["unknown method `beam`"]);
}

#[test]
fn beam_width_zero() {
    Case::new().refused(&["--beam-width", "0"], &["search.beam_width", "at least 1"]);
}

#[test]
fn think_budget_smaller_than_a_step() {
    Case::new().refused(
        &["--think-budget", "8"],
        &[
            "search.max_step_tokens",
            "larger than search.think_budget = 8",
        ],
    );
}

#[test]
fn answer_budget_zero() {
    Case::new().refused(
        &["--answer-budget", "0"],
        &["search.answer_budget", "at least 1"],
    );
}

#[test]
fn problems_in_flight_zero() {
    Case::new().refused(
        &["--problems-in-flight", "0"],
        &["search.problems_in_flight", "at least 1"],
    );
}

// ---- models ----

/// The pool with the first teacher's model replaced by `model`.
fn pool_with_model(c: &Case, model: &Path) -> String {
    pool_text(model, &c.f.qwen2, "", META)
}

/// A copy of the tiny llama checkpoint that `spoil` then edits.
fn spoiled_llama(c: &Case, spoil: impl FnOnce(&Path)) -> PathBuf {
    let dir = c.f.path("spoiled-llama");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&c.f.llama).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    spoil(&dir);
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_model_path_names_the_teacher() {
    let c = Case::new();
    let text = pool_with_model(&c, &c.f.path("no-such-model"));
    let msg = c.with_pool(&text).refused(
        &[],
        &["teacher `byte-llama`", "no-such-model", "does not exist"],
    );
    assert_eq!(msg.matches("does not exist").count(), 1, "said once: {msg}");
}

#[test]
fn unknown_architecture_in_config_json() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| {
        edit_config(d, |v| {
            v["model_type"] = json!("mamba9");
            v["architectures"] = json!(["Mamba9ForCausalLM"]);
        })
    });
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "unknown architecture `mamba9`",
            "config.json",
        ],
    );
}

#[test]
fn config_json_that_is_not_json() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| {
        std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap()
    });
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &["teacher `byte-llama`", "cannot parse", "config.json"],
    );
}

#[test]
fn missing_tokenizer_json() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "tokenizer not found",
            "tokenizer.json",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "model.safetensors",
            "truncated or corrupt",
        ],
    );
}

#[test]
fn safetensors_shapes_that_do_not_match_config_json() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| {
        edit_config(d, |v| v["intermediate_size"] = json!(96))
    });
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "has shape",
            "expected",
            "model.safetensors",
        ],
    );
}

#[test]
fn tokenizer_vocabulary_larger_than_the_model() {
    let c = Case::new();
    let dir = spoiled_llama(&c, |d| edit_config(d, |v| v["vocab_size"] = json!(100)));
    let text = pool_with_model(&c, &dir);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "tokenizer.json",
            "does not fit the model: vocab_size is 100",
        ],
    );
}

/// A GGUF v3 file with llama metadata and one tensor of type 16 (IQ2_XXS), which cord does not
/// read.
fn gguf_with_unsupported_type(path: &Path) {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string
    s(&mut b, "llama");
    s(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(16u32.to_le_bytes()); // IQ2_XXS
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; 1024]);
    std::fs::write(path, b).unwrap();
}

#[test]
fn gguf_with_an_unsupported_tensor_type() {
    let c = Case::new();
    let gguf = c.f.path("odd.gguf");
    gguf_with_unsupported_type(&gguf);
    let text = pool_with_model(&c, &gguf);
    c.with_pool(&text).refused(
        &[],
        &[
            "teacher `byte-llama`",
            "odd.gguf",
            "unsupported tensor type 16",
        ],
    );
}

/// `cord generate` on a file of random bytes named `.gguf`, with RUST_BACKTRACE=1 set (as
/// `common::cord` sets it): one error line, no backtrace that candle captured.
#[test]
fn random_bytes_as_a_gguf_model() {
    let f = Fixture::new();
    let path = f.path("random-bytes.gguf");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let o = cord()
        .args([
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    let err = check_refusal(&o, &["random-bytes.gguf"]);
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "one line: {err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

// ---- devices and memory ----

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_in_a_cpu_build() {
    Case::new().refused(
        &["--device", "cuda:0"],
        &["cuda:0", "no CUDA support", "--features cuda"],
    );
}

#[test]
fn device_that_is_not_a_device() {
    Case::new().refused(&["--device", "tpu3"], &["invalid device `tpu3`"]);
}

#[test]
fn kv_memory_of_zero() {
    Case::new().refused(&["--kv-mib", "0"], &["--kv-mib 0"]);
}

#[test]
fn kv_memory_that_is_not_a_size() {
    Case::new().refused(
        &["--kv-mib", "lots"],
        &["`lots` is neither a number of MiB nor `auto`"],
    );
}

#[test]
fn gpu_memory_fraction_out_of_range() {
    Case::new().refused(
        &["--gpu-memory-fraction", "0"],
        &["GPU memory fraction must be in (0, 1]"],
    );
}

#[test]
fn kv_memory_too_small_for_one_sequence() {
    // 1 MiB holds 128 blocks of 16 tokens of the tiny models; one byte-level token per
    // character makes this prompt need more.
    let q = "Count the letters: ".to_string() + &"abcdefghij ".repeat(250);
    let text = line(json!({"id": "long", "question": q, "answer": "2500"}));
    let c = Case::new().with_problems(text.as_bytes());
    c.refused(
        &["--kv-mib", "1"],
        &["KV cache is too small for one request", "--kv-mib"],
    );
}

// ---- output ----

#[test]
fn output_directory_missing() {
    let c = Case::new();
    let out = c.f.path("no-dir/out.jsonl");
    c.refused_with(&c.pool, &c.input, &out, &[], &["no-dir", "does not exist"]);
}

#[test]
fn output_is_a_directory() {
    let c = Case::new();
    let out = c.f.path("a-dir");
    std::fs::create_dir(&out).unwrap();
    c.refused_with(
        &c.pool,
        &c.input,
        &out,
        &["--resume"],
        &["a-dir", "is a directory"],
    );
}

/// Two records written by a normal run into `c.out`.
fn two_records(c: &Case) {
    let o = synth(&c.pool, &c.input, &c.out, &["--limit", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&c.out).len(), 2);
}

#[test]
fn existing_output_without_resume_or_overwrite() {
    let c = Case::new();
    two_records(&c);
    c.refused(
        &[],
        &["out.jsonl", "output file exists", "--resume", "--overwrite"],
    );
}

#[test]
fn output_of_another_run_is_refused_unless_forced() {
    let c = Case::new();
    two_records(&c);
    c.refused(
        &["--resume", "--method", "greedy"],
        &["out.jsonl:1:", "written by another run", "--force"],
    );
    c.refused(
        &["--resume", "--seed", "99"],
        &["out.jsonl:1:", "written by another run"],
    );
    let o = synth(
        &c.pool,
        &c.input,
        &c.out,
        &["--resume", "--force", "--seed", "99"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&c.out).len(), 3);
}

#[test]
fn corrupt_record_in_the_middle_of_the_output() {
    let c = Case::new();
    two_records(&c);
    let mut lines = complete_lines(&c.out);
    lines.insert(1, b"{\"id\": \"x\", \"que\n".to_vec());
    std::fs::write(&c.out, lines.concat()).unwrap();
    c.refused(&["--resume"], &["out.jsonl:2:", "corrupt output record"]);
}
