#![allow(dead_code)]

use std::sync::Arc;

use cord_decode::backend::{Backend, Finish};
use cord_decode::io::{Problem, Record};
use cord_decode::scripted::ScriptedBackend;
use cord_decode::search::{Need, Reply, Search, Settings, new_search};
use cord_decode::{PoolConfig, config::DEFAULT_SUFFIX};

/// A pool of `k` teachers t0..t{k-1}, meta-prover t0, extra `[search]` lines.
pub fn pool(k: usize, search: &str) -> PoolConfig {
    let mut s = format!("[search]\nrecord_timing = false\n{search}\n[scorer]\nmodel = \"t0\"\n");
    for i in 0..k {
        s.push_str(&format!(
            "[[teacher]]\nname = \"t{i}\"\nmodel = \"org/model-{i}\"\n"
        ));
    }
    scripted_pool(&s, search)
}

pub fn pool_with_scorer(k: usize, search: &str, scorer: &str) -> PoolConfig {
    let mut s = format!("[search]\nrecord_timing = false\n{search}\n[scorer]\n{scorer}\n");
    for i in 0..k {
        s.push_str(&format!(
            "[[teacher]]\nname = \"t{i}\"\nmodel = \"org/model-{i}\"\n"
        ));
    }
    scripted_pool(&s, search)
}

/// The scripted tests drive the beam mechanics with placeholder step texts ("A", "B1"), which
/// `[filter] progress_first` would sort by their digits, and scripted scores that
/// `search.close_candidate` would let a beam's own closing outbid; scripted answers are often
/// "wrong", which `search.verify_beams` would answer again: all three are off unless the test
/// names them (tests/hygiene.rs and tests/search.rs test them on their own).
fn scripted_pool(toml: &str, search: &str) -> PoolConfig {
    let mut p = PoolConfig::from_toml_str(toml, "test-pool").unwrap();
    if !search.contains("progress_first") {
        p.filter.progress_first = false;
    }
    if !search.contains("close_candidate") {
        p.search.close_candidate = false;
    }
    if !search.contains("verify_beams") {
        p.search.verify_beams = false;
    }
    p
}

pub fn backend(k: usize) -> ScriptedBackend {
    let names: Vec<String> = (0..k).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ScriptedBackend::new(&refs, DEFAULT_SUFFIX)
}

pub fn problem(id: &str, answer: &str) -> Problem {
    Problem {
        id: id.to_string(),
        question: format!("Question {id}?"),
        answer: answer.to_string(),
        line: 1,
    }
}

pub fn step() -> Finish {
    Finish::Stop("### Step".to_string())
}

pub fn think() -> Finish {
    Finish::Stop("</think>".to_string())
}

/// Drives one search to the end against `b`.
pub fn drive(pool: &PoolConfig, p: Problem, b: &mut ScriptedBackend) -> Record {
    let settings: Arc<Settings> = Settings::shared(pool).unwrap();
    let mut s = new_search(settings, p);
    drive_search(s.as_mut(), b)
}

pub fn drive_search(s: &mut dyn Search, b: &mut ScriptedBackend) -> Record {
    for _ in 0..100_000 {
        match s.poll(b).unwrap() {
            Need::Propose(r) => {
                let res = Backend::propose(b, &r).unwrap();
                s.feed(Reply::Proposals(res)).unwrap();
            }
            Need::Score(r) => {
                let res = Backend::score(b, &r).unwrap();
                s.feed(Reply::Scores(res)).unwrap();
            }
            Need::Answer(r) => {
                let res = Backend::answer(b, &r).unwrap();
                s.feed(Reply::Answers(res)).unwrap();
            }
            Need::Done(r) => return *r,
        }
    }
    panic!("search did not finish");
}
