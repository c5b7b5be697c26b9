//! Crash safety of `cord synth` (the real binary): SIGKILL at random moments followed by
//! `--resume` loses and duplicates nothing, and SIGINT / SIGTERM stop the run cleanly (whole
//! lines, a summary, exit status 128 + signal).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// splitmix64: the kill moments are random but fixed by the seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks that every complete line of `out` is a record and returns the complete lines.
fn check_complete_lines(out: &Path) -> Vec<Vec<u8>> {
    let lines = complete_lines(out);
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(l)
            .unwrap_or_else(|e| panic!("line {} is not a whole record: {e}", i + 1));
        assert!(v["id"].is_string(), "line {}: no id", i + 1);
    }
    lines
}

/// Every id of `0..n` exactly once, every line a record.
fn assert_every_id_once(out: &Path, n: usize) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, v) in records(out) {
        *count
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "ids written twice: {dup:?}");
    let missing: Vec<String> = (0..n)
        .map(|i| format!("p{i}"))
        .filter(|id| !count.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "ids missing: {missing:?}");
    assert_eq!(count.len(), n, "no foreign ids");
}

#[test]
fn sigkill_at_20_random_moments_and_resume_loses_and_duplicates_nothing() {
    const N: usize = 72;
    const KILLS: usize = 20;
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", N);
    let input_bytes = std::fs::read(&input).unwrap();
    let out = f.path("out.jsonl");

    // A kill moment: after 0, 1 or 2 more records have become complete, plus 0-250 ms (so
    // during model loading, between rounds, or in the middle of writing a record). Tied to
    // progress rather than to wall-clock time, the kills land mid-run on fast and slow machines.
    let mut rng = 0xC0DE_u64;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let (mut landed, mut torn, mut grew) = (0, 0, 0);
    let t0 = Instant::now();
    let mut tried = 0;
    for k in 0..KILLS {
        // Once every record is written a run has nothing left to be killed in.
        if seen.len() == N {
            break;
        }
        tried += 1;
        let target = seen.len() + (next(&mut rng) % 3) as usize;
        let extra = Duration::from_millis(next(&mut rng) % 250);
        let mut child = synth_cmd(&pool, &input, &out, &["--resume"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while complete_lines(&out).len() < target && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(300), "no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(extra);
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        landed += usize::from(still_running);
        let bytes = std::fs::read(&out).unwrap_or_default();
        torn += usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
        let lines = check_complete_lines(&out);
        assert!(
            lines.starts_with(&seen),
            "kill {k}: a record that was complete before is gone or changed"
        );
        grew += usize::from(lines.len() > seen.len());
        seen = lines;
    }
    eprintln!(
        "{tried} SIGKILLs in {:.1}s: {landed} landed mid-run, {torn} left a torn line, the output grew after {grew}; {} of {N} records before the last resume",
        t0.elapsed().as_secs_f64(),
        seen.len()
    );
    assert!(
        landed >= tried / 2 && landed >= 5,
        "too few kills landed mid-run: {landed} of {tried}"
    );
    assert!(
        grew >= 3,
        "runs between kills made too little progress: {grew}"
    );

    let o = synth(&pool, &input, &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = check_complete_lines(&out);
    assert!(
        lines.starts_with(&seen),
        "the last resume changed earlier records"
    );
    assert_every_id_once(&out, N);
    assert_eq!(
        std::fs::read(&input).unwrap(),
        input_bytes,
        "input untouched"
    );
    // Ids in input order, as an uninterrupted run writes them.
    let ids: Vec<String> = records(&out)
        .into_iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    assert_eq!(ids, expected);
}

/// Starts a run of `n` problems and waits until it has written at least one record.
fn start_and_wait_for_records(f: &Fixture, n: usize, out: &Path) -> Child {
    let pool = f.pool("pool.toml", "");
    let input = f.problems("problems.jsonl", n);
    let child = synth_cmd(&pool, &input, out, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while complete_lines(out).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no record written");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn send(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn graceful_stop(sig: &str, code: i32) {
    const N: usize = 60;
    let f = Fixture::new();
    let out = f.path("out.jsonl");
    let child = start_and_wait_for_records(&f, N, &out);
    send(&child, sig);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(
        err.contains(&format!("interrupted by SIG{sig}")),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout.contains("problems,"), "no summary: {stdout}");
    // Whole lines only, and the summary counts what the file holds.
    let recs = records(&out);
    assert!(!recs.is_empty() && recs.len() < N, "{} records", recs.len());
    assert!(
        stdout.starts_with(&format!("{} problems,", recs.len())),
        "{stdout}"
    );
    let before = complete_lines(&out);
    let pool = f.path("pool.toml");
    let input = f.path("problems.jsonl");
    let o = synth(&pool, &input, &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(complete_lines(&out).starts_with(&before));
    assert_every_id_once(&out, N);
}

#[test]
fn sigint_finishes_whole_records_prints_the_summary_and_exits_130() {
    graceful_stop("INT", 130);
}

#[test]
fn sigterm_finishes_whole_records_prints_the_summary_and_exits_143() {
    graceful_stop("TERM", 143);
}

#[test]
fn a_second_sigint_aborts_at_once_and_resume_repairs_the_file() {
    const N: usize = 60;
    let f = Fixture::new();
    let out = f.path("out.jsonl");
    let child = start_and_wait_for_records(&f, N, &out);
    send(&child, "INT");
    send(&child, "INT");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let before = check_complete_lines(&out);
    let o = synth(
        &f.path("pool.toml"),
        &f.path("problems.jsonl"),
        &out,
        &["--resume"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(complete_lines(&out).starts_with(&before));
    assert_every_id_once(&out, N);
}
