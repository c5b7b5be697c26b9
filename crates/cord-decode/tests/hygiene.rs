//! Candidate hygiene in the searches: junk steps are rejected before scoring (so they never
//! win, however well they would score), a beam whose every candidate is rejected is proposed
//! for once more and then dropped, a problem without any beam left is recorded as failed; steps
//! that state the final answer end the trajectory.

mod common;

use common::*;
use cord_decode::backend::{Finish, Proposal};
use cord_decode::io::Record;

const H1: &str = "### Step 1.";

fn hashes() -> String {
    format!("\n{}", "####\n".repeat(23))
}

fn rejected(rec: &Record, teacher: &str, why: &str) -> u64 {
    rec.stats
        .rejected
        .get(teacher)
        .and_then(|m| m.get(why))
        .copied()
        .unwrap_or(0)
}

/// t0 proposes a step of `####` lines that the scorer would love (0.99); t1 a plain one (0.2).
fn junk_script() -> cord_decode::scripted::ScriptedBackend {
    let mut b = backend(2);
    b.propose(0, H1, &hashes(), step())
        .propose(1, H1, " 3 + 4 = 7", step());
    b.score(&format!("{H1}{}", hashes().trim_end()), 0.99)
        .score("### Step 1. 3 + 4 = 7", 0.2);
    let p2 = "### Step 1. 3 + 4 = 7\n\n### Step 2.";
    b.propose(0, p2, " So 7.", think())
        .propose(1, p2, " Done.", think());
    b.score("### Step 1. 3 + 4 = 7\n\n### Step 2. So 7.", 0.5)
        .score("### Step 1. 3 + 4 = 7\n\n### Step 2. Done.", 0.4);
    b.answer(
        0,
        "### Step 1. 3 + 4 = 7\n\n### Step 2. So 7.</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let junk = format!("{H1}{}\n\n### Step 2.", hashes().trim_end());
    b.propose(0, &junk, " So 7.", think())
        .propose(1, &junk, " 7", think());
    b.score(&junk.replace("### Step 2.", "### Step 2. So 7."), 0.99)
        .score(&junk.replace("### Step 2.", "### Step 2. 7"), 0.99);
    b.answer(
        0,
        &format!(
            "{}</think>",
            junk.replace("### Step 2.", "### Step 2. So 7.")
        ),
        "\\boxed{7}",
        Finish::Eos,
    );
    b
}

#[test]
fn junk_is_rejected_before_scoring_and_never_wins() {
    let pool = pool(2, "beam_width = 1\nsave_tree = true");
    let mut b = junk_script();
    let rec = drive(&pool, problem("p", "7"), &mut b);
    // The junk step was never scored: one score request at step 1.
    assert_eq!(b.score_calls()[0].len(), 1);
    assert_eq!(rec.steps[0].teacher, "t1");
    assert_eq!(rec.steps[0].text, "### Step 1. 3 + 4 = 7\n\n");
    assert!(!rec.response.contains("####"));
    assert_eq!(rejected(&rec, "t0", "non-text"), 1);
    assert_eq!(rec.stats.beams_resampled, 0);
    // The tree shows it, pruned, with the reason.
    let tree = rec.tree.as_ref().unwrap();
    let junk: Vec<_> = tree
        .iter()
        .filter(|e| e.note.as_deref() == Some("rejected: non-text"))
        .collect();
    assert_eq!(junk.len(), 1);
    assert!(!junk[0].kept && junk[0].score.is_none() && junk[0].teacher == "t0");
    assert!(rec.correct && rec.natural_end && rec.failed.is_none());
}

#[test]
fn without_the_filter_the_junk_step_wins_as_in_the_paper() {
    let pool = pool(2, "beam_width = 1\n[filter]\nenabled = false");
    let mut b = junk_script();
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert_eq!(b.score_calls()[0].len(), 2);
    assert_eq!(rec.steps[0].teacher, "t0");
    assert!(rec.response.contains("####"));
    assert!(rec.stats.rejected.is_empty());
}

#[test]
fn a_beam_with_only_rejected_candidates_is_resampled_once_then_dropped() {
    let pool = pool(2, "beam_width = 2");
    let mut b = backend(2);
    b.propose(0, H1, " Tom has 3 apples.", step())
        .propose(1, H1, " He buys 4 more.", step());
    b.score("### Step 1. Tom has 3 apples.", 0.6)
        .score("### Step 1. He buys 4 more.", 0.5);
    let pa = "### Step 1. Tom has 3 apples.\n\n### Step 2.";
    let pb = "### Step 1. He buys 4 more.\n\n### Step 2.";
    // Beam A: both rejected (a loop, a repeat of step 1); the resample gives t0 a real step.
    b.propose(0, pa, " so so so so so so so so", step())
        .propose(0, pa, " Now he has 7.", think());
    b.propose(1, pa, " Tom has 3 apples.", step())
        .propose(1, pa, "x = 1\nx = 1\nx = 1", step());
    // Beam B: rejected, and rejected again after the resample: dropped.
    b.propose(0, pb, " \u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}", step());
    b.propose(1, pb, "", step());
    b.score(
        "### Step 1. Tom has 3 apples.\n\n### Step 2. Now he has 7.",
        0.7,
    );
    b.answer(
        0,
        "### Step 1. Tom has 3 apples.\n\n### Step 2. Now he has 7.</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "7"), &mut b);
    let sizes: Vec<usize> = b.propose_calls().iter().map(|c| c.len()).collect();
    assert_eq!(
        sizes,
        vec![2, 4, 4],
        "both beams are proposed for once more"
    );
    let (first, again) = (&b.propose_calls()[1], &b.propose_calls()[2]);
    assert_ne!(first[0].seed, again[0].seed, "the resample has new seeds");
    assert_eq!(
        b.score_calls()[1].len(),
        1,
        "only the one good step is scored"
    );
    assert_eq!(rec.stats.beams_resampled, 2);
    assert_eq!(rec.stats.beams_dropped, 1);
    assert_eq!(rejected(&rec, "t0", "loop"), 1);
    assert_eq!(rejected(&rec, "t1", "repeats-earlier-step"), 1);
    assert_eq!(rejected(&rec, "t1", "repeated-line"), 1);
    assert_eq!(rejected(&rec, "t0", "non-text"), 2);
    assert_eq!(rejected(&rec, "t1", "empty"), 2);
    assert_eq!(rec.steps.len(), 2);
    assert_eq!(rec.steps[1].text, "### Step 2. Now he has 7.</think>");
    assert!(rec.correct && rec.failed.is_none());
}

#[test]
fn a_problem_whose_every_beam_is_dropped_is_recorded_as_failed() {
    let pool = pool(1, "beam_width = 1\nsave_tree = true");
    let mut b = backend(1);
    b.propose(0, H1, &hashes(), step())
        .propose(0, H1, " ha ha ha ha ha ha ha", step());
    let mut sink: Vec<Record> = Vec::new();
    let settings = cord_decode::Settings::shared(&pool).unwrap();
    let summary = cord_decode::run(
        &mut b,
        &settings,
        vec![problem("p", "7")],
        &mut sink,
        &mut |_| {},
    )
    .unwrap();
    let rec = &sink[0];
    let why = rec.failed.as_deref().expect("failed");
    assert!(why.contains("step 1") && why.contains("t0: loop"), "{why}");
    assert!(rec.steps.is_empty() && rec.messages.is_empty() && rec.response.is_empty());
    assert!(!rec.correct && !rec.natural_end);
    assert!(b.score_calls().is_empty() && b.answer_requests().is_empty());
    assert_eq!(rejected(rec, "t0", "non-text"), 1);
    assert_eq!(rejected(rec, "t0", "loop"), 1);
    assert_eq!(rec.stats.beams_dropped, 1);
    assert_eq!(rec.tree.as_ref().unwrap().len(), 2);
    assert_eq!(summary.failed, 1);
    assert_eq!(summary.rejected["t0"]["loop"], 1);
    assert_eq!(summary.written, 1);
    // The failed record reads back.
    let line = serde_json::to_string(rec).unwrap();
    let back: Record = serde_json::from_str(&line).unwrap();
    assert_eq!(&back, rec);
}

#[test]
fn a_stalled_beam_is_closed_or_dropped_and_the_finished_ones_answer() {
    // Width 2: t0's step 1 finishes, t1's beam goes on; every candidate of its step 2 is
    // rejected (a repeat, non-text), also after the resample.
    let script = |b: &mut cord_decode::scripted::ScriptedBackend| {
        b.propose(0, H1, " 3 + 4 = 7", think())
            .propose(1, H1, " Add them.", step());
        b.score("### Step 1. 3 + 4 = 7", 0.4)
            .score("### Step 1. Add them.", 0.5);
        let p2 = "### Step 1. Add them.\n\n### Step 2.";
        b.propose(0, p2, " Add them.", step());
        b.propose(1, p2, "####", step());
        b.answer(
            0,
            "### Step 1. 3 + 4 = 7</think>",
            "\\boxed{7}",
            Finish::Eos,
        );
        b.answer(
            1,
            "### Step 1. Add them.\n</think>",
            "\\boxed{7}",
            Finish::Eos,
        );
    };
    // close_stalled (default): t1's beam is closed as it stood (scored closed: 0.5 beats the
    // finished 0.4) and answered by its own teacher.
    let mut b = backend(2);
    script(&mut b);
    let rec = drive(&pool(2, "beam_width = 2"), problem("p", "7"), &mut b);
    assert_eq!(b.propose_calls().len(), 3);
    assert!(rec.failed.is_none() && rec.correct);
    assert_eq!(rec.steps.len(), 2);
    assert_eq!(rec.steps[0].text, "### Step 1. Add them.\n\n");
    assert_eq!(rec.steps[1].finish, "stalled");
    assert!(rec.forced_close && !rec.natural_end);
    assert_eq!(rec.answer_teacher, "t1");
    assert_eq!(rec.stats.beams_dropped, 0);
    // Off: the beam is dropped and the finished trajectory answers.
    let mut off = pool(2, "beam_width = 2");
    off.filter.close_stalled = false;
    let mut b = backend(2);
    script(&mut b);
    let rec = drive(&off, problem("p", "7"), &mut b);
    assert_eq!(b.propose_calls().len(), 3);
    assert!(rec.failed.is_none() && rec.correct);
    assert_eq!(rec.steps.len(), 1);
    assert_eq!(rec.answer_teacher, "t0");
    assert_eq!(rec.stats.beams_dropped, 1);
}

#[test]
fn a_step_stating_the_final_answer_ends_the_trajectory() {
    let pool = pool(1, "beam_width = 1");
    let mut b = backend(1);
    b.propose(
        0,
        H1,
        " 3 + 4 = 7.\nThe final answer is 7.\nNow let us",
        step(),
    );
    b.score("### Step 1. 3 + 4 = 7.\nThe final answer is 7.", 0.9);
    b.answer(
        0,
        "### Step 1. 3 + 4 = 7.\nThe final answer is 7.\n</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert_eq!(b.propose_calls().len(), 1);
    assert_eq!(rec.steps[0].finish, "answer");
    assert!(rec.natural_end && !rec.forced_close);

    // Off: the search asks for the next step (and is closed at max_steps).
    let pool = pool_off_answer();
    let mut b = backend(1)
        .with_propose_fn(|_| Some(Proposal::new(" The final answer is 7.", step(), 5)))
        .with_score_fn(|_| Some(0.5))
        .with_answer_fn(|_| Some(Proposal::new("\\boxed{7}", Finish::Eos, 1)));
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert_eq!(b.propose_calls().len(), 2);
    assert_eq!(rec.steps.last().unwrap().finish, "max-steps");
    assert!(!rec.natural_end);
}

fn pool_off_answer() -> cord_decode::PoolConfig {
    pool(
        1,
        "beam_width = 1\nmax_steps = 2\nend_on_answer = false\n[filter]\nreject_repeated_step = false",
    )
}

#[test]
fn curation_rejects_a_junk_trajectory_and_fails_when_all_are() {
    let search =
        "method = \"curation\"\ncuration_samples = 1\nthink_budget = 100\nmax_step_tokens = 50";
    // Without the cut (below), t0's trajectory is lost to its junk step 2.
    let pool = crate::common::pool(2, &format!("{search}\n[filter]\nclose_stalled = false"));
    let mut b = backend(2);
    b.propose(
        0,
        H1,
        &format!(" 3 + 4 = 7\n### Step 2.{}", hashes()),
        think(),
    );
    b.propose(1, H1, " 3 + 4 = 7", think());
    b.score(
        &format!("### Step 1. 3 + 4 = 7\n### Step 2.{}", hashes().trim_end()),
        0.99,
    )
    .score("### Step 1. 3 + 4 = 7", 0.3);
    b.answer(
        1,
        "### Step 1. 3 + 4 = 7</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert_eq!(rec.answer_teacher, "t1");
    assert_eq!(rejected(&rec, "t0", "non-text"), 1);

    let pool = crate::common::pool(1, search);
    let mut b = backend(1);
    b.propose(0, H1, " a\na\na\na", think());
    b.score("### Step 1. a\na\na\na", 0.99);
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert!(rec.failed.as_deref().unwrap().contains("t0: repeated-line"));
    assert!(b.answer_requests().is_empty());
}

/// With `close_stalled` (the default), a whole trajectory whose step 2 is junk is cut before
/// it and competes as its sound step 1 (scored on the cut text, answered from it); the
/// rejection is still counted. A trajectory whose first step is junk is still rejected.
#[test]
fn curation_cuts_a_trajectory_before_its_first_junk_step() {
    let search =
        "method = \"curation\"\ncuration_samples = 1\nthink_budget = 100\nmax_step_tokens = 50";
    let pool = pool(2, search);
    let mut b = backend(2);
    b.propose(
        0,
        H1,
        &format!(" 3 + 4 = 7\n### Step 2.{}", hashes()),
        think(),
    );
    b.propose(1, H1, &hashes(), think());
    // t0 is scored on its cut text; t1 (all junk) scores higher and is still rejected.
    b.score("### Step 1. 3 + 4 = 7", 0.6)
        .score(&format!("{H1}{}", hashes().trim_end()), 0.99);
    b.answer(
        0,
        "### Step 1. 3 + 4 = 7\n</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "7"), &mut b);
    assert!(rec.failed.is_none(), "{:?}", rec.failed);
    assert_eq!(rec.answer_teacher, "t0");
    assert_eq!(rec.steps[0].finish, "cut-before-junk");
    assert!(!rec.response.contains("####"));
    assert!(rec.correct);
    assert_eq!(rejected(&rec, "t0", "non-text"), 1);
    assert_eq!(rejected(&rec, "t1", "non-text"), 1);
}

#[test]
fn progress_first_rejects_steps_that_add_nothing_before_scoring() {
    // Width 1, two teachers. Step 1: t1 restates the question (the paper's score would prefer
    // it: nothing said keeps the answer at its prior) while t0 computes; t1's step is rejected
    // unscored. Step 2: neither candidate adds anything, so both compete.
    let pool = pool(
        2,
        "beam_width = 1\nsave_tree = true\n[filter]\nprogress_first = true",
    );
    let mut p = problem("p", "8");
    p.question = "Tom has 16 balls and gives half away. How many are left?".into();
    let mut b = backend(2);
    b.propose(0, H1, " 16 / 2 = 8 balls are given away.", step())
        .propose(1, H1, " Tom has 16 balls.", step());
    b.score("### Step 1. 16 / 2 = 8 balls are given away.", 0.05)
        .score("### Step 1. Tom has 16 balls.", 0.3);
    let p2 = "### Step 1. 16 / 2 = 8 balls are given away.\n\n### Step 2.";
    b.propose(0, p2, " So 8 balls are left.", think()).propose(
        1,
        p2,
        " Tom is left with balls.",
        think(),
    );
    b.score(&format!("{p2} So 8 balls are left."), 0.6)
        .score(&format!("{p2} Tom is left with balls."), 0.7);
    b.answer(
        1,
        &format!("{p2} Tom is left with balls.</think>"),
        "\\boxed{8}",
        Finish::Eos,
    );
    let rec = drive(&pool, p, &mut b);
    assert_eq!(b.score_calls()[0].len(), 1, "the restatement is not scored");
    assert_eq!(
        b.score_calls()[1].len(),
        2,
        "no candidate adds anything: both compete"
    );
    assert_eq!(rec.steps[0].teacher, "t0");
    assert_eq!(rec.steps[1].teacher, "t1");
    assert_eq!(rejected(&rec, "t1", "no-progress"), 1);
    let tree = rec.tree.as_ref().unwrap();
    assert!(tree.iter().any(
        |e| e.text.contains("Tom has 16") && e.note.as_deref() == Some("rejected: no-progress")
    ));
}

#[test]
fn progress_first_is_off_without_the_filter() {
    let pool = pool(
        2,
        "beam_width = 1\n[filter]\nenabled = false\nprogress_first = true",
    );
    let mut p = problem("p", "8");
    p.question = "Tom has 16 balls and gives half away. How many are left?".into();
    let mut b = backend(2);
    b.propose(0, H1, " 16 / 2 = 8", think())
        .propose(1, H1, " Tom has 16 balls.", think());
    b.score("### Step 1. 16 / 2 = 8", 0.05)
        .score("### Step 1. Tom has 16 balls.", 0.3);
    b.answer(
        1,
        "### Step 1. Tom has 16 balls.</think>",
        "\\boxed{8}",
        Finish::Eos,
    );
    let rec = drive(&pool, p, &mut b);
    assert_eq!(b.score_calls()[0].len(), 2);
    assert_eq!(rec.steps[0].teacher, "t1");
}

/// t0's step is cut by the step cap mid-paragraph (scored highest if it competed), t1's ends
/// with its own header.
fn cut_script() -> cord_decode::scripted::ScriptedBackend {
    let mut b = backend(2);
    b.propose(
        0,
        H1,
        " 42 / 3 = 14 so the fog covers it in \\[ 14 \\",
        Finish::Length,
    )
    .propose(1, H1, " 42 / 3 = 14 segments", step());
    b.score(
        "### Step 1. 42 / 3 = 14 so the fog covers it in \\[ 14 \\",
        0.9,
    )
    .score("### Step 1. 42 / 3 = 14 segments", 0.3);
    for first in [
        "### Step 1. 42 / 3 = 14 so the fog covers it in \\[ 14 \\",
        "### Step 1. 42 / 3 = 14 segments",
    ] {
        let p2 = format!("{first}\n\n### Step 2.");
        b.propose(0, &p2, " 14 * 10 = 140", think()).propose(
            1,
            &p2,
            " 14 * 10 = 140 minutes",
            think(),
        );
        b.score(&format!("{first}\n\n### Step 2. 14 * 10 = 140"), 0.8)
            .score(
                &format!("{first}\n\n### Step 2. 14 * 10 = 140 minutes"),
                0.7,
            );
        b.answer(
            0,
            &format!("{first}\n\n### Step 2. 14 * 10 = 140</think>"),
            "\\boxed{140}",
            Finish::Eos,
        );
    }
    b
}

#[test]
fn a_step_the_cap_cut_mid_paragraph_is_rejected() {
    let capped = pool(2, "beam_width = 1\nmax_step_tokens = 16");
    let mut b = cut_script();
    let rec = drive(&capped, problem("p", "140"), &mut b);
    assert_eq!(rec.steps[0].teacher, "t1");
    assert_eq!(rec.steps[0].text, "### Step 1. 42 / 3 = 14 segments\n\n");
    assert_eq!(rejected(&rec, "t0", "cut-by-cap"), 1);
    assert_eq!(b.score_calls()[0].len(), 1, "the cut step is never scored");

    // `reject_cut = false`: the cut step competes, wins on its score, and says how it ended.
    let raw = pool(
        2,
        "beam_width = 1\nmax_step_tokens = 16\n[filter]\nreject_cut = false",
    );
    let mut b = cut_script();
    let rec = drive(&raw, problem("p", "140"), &mut b);
    assert_eq!(rec.steps[0].teacher, "t0");
    assert_eq!(rec.steps[0].finish, "step-cap-mid");
    assert_eq!(rejected(&rec, "t0", "cut-by-cap"), 0);
}
