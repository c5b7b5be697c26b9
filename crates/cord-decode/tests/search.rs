//! The scripted-teacher harness: the beam logic of CoRD, greedy, curation and MCTS, checked
//! request by request.

mod common;

use std::collections::HashSet;

use common::*;
use cord_decode::backend::{Finish, Proposal};
use cord_decode::scripted::ScriptedBackend;

const H1: &str = "### Step 1.";

/// B = 2, K = 3. Step 1: B (0.7) and C (0.6) kept, A (0.5) pruned. Step 2: B's t0 finishes
/// with 0.9, C0 (0.8) is kept, the rest pruned; the live width shrinks to 1. Step 3: C0's t1
/// finishes with `final_score`.
fn basic_script(final_score: f64) -> ScriptedBackend {
    let mut b = backend(3);
    b.propose(0, H1, " A", step())
        .propose(1, H1, " B\n\n", step())
        .propose(2, H1, " C", step());
    b.score("### Step 1. A", 0.5)
        .score("### Step 1. B", 0.7)
        .score("### Step 1. C", 0.6);
    let pb = "### Step 1. B\n\n### Step 2.";
    let pc = "### Step 1. C\n\n### Step 2.";
    b.propose(0, pb, " done B", think())
        .propose(1, pb, " B1", step())
        .propose(2, pb, " B2", step());
    b.propose(0, pc, " C0", step())
        .propose(1, pc, " C1", step())
        .propose(2, pc, " C2", step());
    b.score("### Step 1. B\n\n### Step 2. done B", 0.9)
        .score("### Step 1. B\n\n### Step 2. B1", 0.3)
        .score("### Step 1. B\n\n### Step 2. B2", 0.4)
        .score("### Step 1. C\n\n### Step 2. C0", 0.8)
        .score("### Step 1. C\n\n### Step 2. C1", 0.2)
        .score("### Step 1. C\n\n### Step 2. C2", 0.1);
    let p3 = "### Step 1. C\n\n### Step 2. C0\n\n### Step 3.";
    b.propose(0, p3, " x", step())
        .propose(1, p3, " final C", think())
        .propose(2, p3, " y", step());
    b.score("### Step 1. C\n\n### Step 2. C0\n\n### Step 3. x", 0.5)
        .score(
            "### Step 1. C\n\n### Step 2. C0\n\n### Step 3. final C",
            final_score,
        )
        .score("### Step 1. C\n\n### Step 2. C0\n\n### Step 3. y", 0.6);
    b.answer(
        1,
        "### Step 1. C\n\n### Step 2. C0\n\n### Step 3. final C</think>",
        "The final answer is \\boxed{42}.",
        Finish::Eos,
    );
    b.answer(
        0,
        "### Step 1. B\n\n### Step 2. done B</think>",
        "So \\boxed{41}.",
        Finish::Eos,
    );
    b
}

#[test]
fn cord_beam_search_step_by_step() {
    let pool = pool(3, "beam_width = 2");
    let mut b = basic_script(0.95);
    let rec = drive(&pool, problem("p1", "42"), &mut b);

    // B·K proposals per step, then K once the width has shrunk to 1; every distinct candidate scored once.
    let sizes: Vec<usize> = b.propose_calls().iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![3, 6, 3]);
    let sizes: Vec<usize> = b.score_calls().iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![3, 6, 3]);
    // Step 2 continues the two kept beams in rank order (B before C), teachers in order.
    let step2 = &b.propose_calls()[1];
    let order: Vec<(usize, &str)> = step2
        .iter()
        .map(|r| (r.teacher, &r.reasoning[..13]))
        .collect();
    assert_eq!(
        order,
        vec![
            (0, "### Step 1. B"),
            (1, "### Step 1. B"),
            (2, "### Step 1. B"),
            (0, "### Step 1. C"),
            (1, "### Step 1. C"),
            (2, "### Step 1. C")
        ]
    );
    assert!(
        step2
            .iter()
            .all(|r| r.stop == vec!["### Step".to_string(), "</think>".to_string()])
    );
    assert!(step2.iter().all(|r| r.max_new_tokens == 1024));
    // Seeds differ across (step, beam, teacher).
    let seeds: HashSet<u64> = b
        .propose_calls()
        .iter()
        .flat_map(|c| c.iter().map(|r| r.seed))
        .collect();
    assert_eq!(seeds.len(), 12);
    // Scoring: reasoning (</think> removed) + suffix, target GT + ".".
    let s3 = &b.score_calls()[2];
    assert_eq!(
        s3[1].context,
        "### Step 1. C\n\n### Step 2. C0\n\n### Step 3. final C </think> The final answer is "
    );
    assert_eq!(s3[1].target, "42.");
    assert_eq!(s3[1].scorer, 0);

    let teachers: Vec<&str> = rec.steps.iter().map(|s| s.teacher.as_str()).collect();
    assert_eq!(teachers, vec!["t2", "t0", "t1"]);
    let scores: Vec<f64> = rec.steps.iter().map(|s| s.score).collect();
    assert!(
        (scores[0] - 0.6).abs() < 1e-12
            && (scores[1] - 0.8).abs() < 1e-12
            && (scores[2] - 0.95).abs() < 1e-12
    );
    let cands: Vec<usize> = rec.steps.iter().map(|s| s.candidates).collect();
    assert_eq!(cands, vec![3, 6, 3]);
    assert_eq!(rec.steps[2].text, "### Step 3. final C</think>");
    assert_eq!(rec.steps[2].finish, "think");
    assert_eq!(rec.steps[0].finish, "step");
    // The final answer is written by the proposer of the last selected step.
    assert_eq!(rec.answer_teacher, "t1");
    assert_eq!(b.answer_requests().len(), 1);
    assert!((rec.score - 0.95).abs() < 1e-12);
    assert!(rec.correct);
    assert_eq!(rec.predicted.as_deref(), Some("42"));
    assert!(!rec.forced_close && !rec.answer_truncated);
    assert_eq!(
        rec.response,
        "<think>\n### Step 1. C\n\n### Step 2. C0\n\n### Step 3. final C\n</think>\n\nThe final answer is \\boxed{42}."
    );
    assert_eq!(rec.messages[1].content, rec.response);
    assert_eq!(rec.messages[0].content, "Question p1?");
    assert_eq!(rec.config.beam, 2);
    assert_eq!(rec.stats.score_requests, 12);
    assert_eq!(rec.stats.propose_requests, 12);
}

#[test]
fn final_pick_ties_go_to_the_earliest_finished() {
    let pool = pool(3, "beam_width = 2");
    let mut b = basic_script(0.9); // the step-3 finisher ties the step-2 finisher
    let rec = drive(&pool, problem("p1", "42"), &mut b);
    assert_eq!(rec.answer_teacher, "t0");
    assert_eq!(rec.steps.len(), 2);
    assert_eq!(rec.final_answer, "So \\boxed{41}.");
    assert!(!rec.correct);
}

#[test]
fn an_unverified_answer_moves_on_to_the_next_finished_trajectory() {
    // `verify_beams`: the best finished trajectory (B, tie at 0.9, finished first) is answered
    // 41, which does not verify against 42; the next one (C, answered by its own last teacher
    // t1) is answered 42 and kept.
    let pool = pool(3, "beam_width = 2\nverify_beams = true");
    let mut b = basic_script(0.9);
    let rec = drive(&pool, problem("p1", "42"), &mut b);
    let asked: Vec<usize> = b.answer_requests().iter().map(|r| r.teacher).collect();
    assert_eq!(asked, vec![0, 1]);
    assert!(rec.correct);
    assert_eq!(rec.answer_teacher, "t1");
    assert_eq!(rec.steps.len(), 3);
    assert_eq!(rec.steps[2].text, "### Step 3. final C</think>");
    assert_eq!(rec.final_answer, "The final answer is \\boxed{42}.");
    assert!((rec.score - 0.9).abs() < 1e-12);
    assert_eq!(rec.stats.extra_answers, 1);

    // When no answer verifies, the best trajectory's record is kept; both answers were written.
    let mut b = basic_script(0.9);
    let rec = drive(&pool, problem("p1", "7"), &mut b);
    assert_eq!(b.answer_requests().len(), 2);
    assert!(!rec.correct);
    assert_eq!(rec.answer_teacher, "t0");
    assert_eq!(rec.final_answer, "So \\boxed{41}.");
    assert_eq!(rec.stats.extra_answers, 1);

    // A verified best answer is the only one written; off, the paper's single answer.
    let mut b = basic_script(0.95);
    let rec = drive(&pool, problem("p1", "42"), &mut b);
    assert_eq!((b.answer_requests().len(), rec.stats.extra_answers), (1, 0));
    let off = common::pool(3, "beam_width = 2\nverify_beams = false");
    let mut b = basic_script(0.9);
    let rec = drive(&off, problem("p1", "42"), &mut b);
    assert_eq!(b.answer_requests().len(), 1);
    assert!(!rec.correct);
}

#[test]
fn ties_parent_rank_then_teacher_order_and_dedupe() {
    let pool = pool(2, "beam_width = 2\nsave_tree = true");
    let mut b = backend(2);
    b.propose(0, H1, " A", step()).propose(1, H1, " B", step());
    b.score("### Step 1. A", 0.5).score("### Step 1. B", 0.5);
    let pa = "### Step 1. A\n\n### Step 2.";
    let pb = "### Step 1. B\n\n### Step 2.";
    b.propose(0, pa, " a0", step())
        .propose(1, pa, " a1", step());
    b.propose(0, pb, " b0", step())
        .propose(1, pb, " b1", step());
    b.score("### Step 1. A\n\n### Step 2. a0", 0.3)
        .score("### Step 1. A\n\n### Step 2. a1", 0.6)
        .score("### Step 1. B\n\n### Step 2. b0", 0.6)
        .score("### Step 1. B\n\n### Step 2. b1", 0.6);
    // a1 (rank 0, t1) beats b0 (rank 1, t0): parent rank before teacher order.
    let pa1 = "### Step 1. A\n\n### Step 2. a1\n\n### Step 3.";
    let pb0 = "### Step 1. B\n\n### Step 2. b0\n\n### Step 3.";
    // Both teachers write the same text for a1: merged, scored once, t0 kept.
    b.propose(0, pa1, " end", think())
        .propose(1, pa1, " end", think());
    b.propose(0, pb0, " z", think())
        .propose(1, pb0, " w", think());
    b.score("### Step 1. A\n\n### Step 2. a1\n\n### Step 3. end", 0.9)
        .score("### Step 1. B\n\n### Step 2. b0\n\n### Step 3. z", 0.7)
        .score("### Step 1. B\n\n### Step 2. b0\n\n### Step 3. w", 0.7);
    b.answer(
        0,
        "### Step 1. A\n\n### Step 2. a1\n\n### Step 3. end</think>",
        "\\boxed{7}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "7"), &mut b);

    let step3 = &b.propose_calls()[2];
    let prefixes: Vec<&str> = step3.iter().map(|r| r.reasoning.as_str()).collect();
    assert_eq!(prefixes, vec![pa1, pa1, pb0, pb0]);
    let sizes: Vec<usize> = b.score_calls().iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![2, 4, 3]);
    assert_eq!(rec.steps[2].teacher, "t0");
    assert_eq!(rec.steps[2].also_proposed_by, vec!["t1".to_string()]);
    assert_eq!(rec.steps[2].candidates, 3);
    let teachers: Vec<&str> = rec.steps.iter().map(|s| s.teacher.as_str()).collect();
    assert_eq!(teachers, vec!["t0", "t1", "t0"]);
    assert!(rec.correct);
    // The tree lists every candidate, the merged duplicate included.
    let tree = rec.tree.as_ref().unwrap();
    assert_eq!(tree.len(), 2 + 4 + 4);
    assert_eq!(
        tree.iter()
            .filter(|e| e
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("duplicate")))
            .count(),
        1
    );
    assert_eq!(tree.iter().filter(|e| e.step == 2 && e.kept).count(), 2);
    assert_eq!(
        tree.iter()
            .filter(|e| e.step == 3 && e.kept && e.finished)
            .count(),
        2
    );
}

#[test]
fn step_cap_cuts_at_the_last_blank_line() {
    let pool = pool(1, "beam_width = 1\nthink_budget = 20\nmax_step_tokens = 8");
    let mut b = backend(1);
    b.propose(0, H1, " a b\n\nc d e f g h", Finish::Length);
    let p2 = "### Step 1. a b\n\n### Step 2.";
    b.propose(0, p2, " done", think());
    b.score("### Step 1. a b", 0.4)
        .score("### Step 1. a b\n\n### Step 2. done", 0.5);
    b.answer(
        0,
        "### Step 1. a b\n\n### Step 2. done</think>",
        "42",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "42"), &mut b);
    let max_new: Vec<usize> = b
        .propose_calls()
        .iter()
        .map(|c| c[0].max_new_tokens)
        .collect();
    // Step 2: 3 + 2 + 3 = 8 words used, room 12 > cap 8.
    assert_eq!(max_new, vec![8, 8]);
    assert_eq!(rec.steps[0].text, "### Step 1. a b\n\n");
    assert_eq!(rec.steps[0].finish, "step-cap");
    assert!(!rec.forced_close);
    assert!(rec.correct);
}

#[test]
fn budget_reached_mid_step_is_force_closed() {
    // Step 1 is cut by the cap mid-paragraph: kept here (`reject_cut` off) to test the budget.
    let pool = pool(
        1,
        "beam_width = 1\nthink_budget = 20\nmax_step_tokens = 8\n[filter]\nreject_cut = false",
    );
    let mut b = backend(1);
    b.propose(0, H1, " w1 w2 w3 w4 w5 w6 w7 w8", Finish::Length);
    // Prefix: 3 + 8 + 3 = 14 words → room 6 ≤ cap: the budget limits this step.
    let p2 = "### Step 1. w1 w2 w3 w4 w5 w6 w7 w8\n\n### Step 2.";
    b.propose(0, p2, " v1 v2 v3 v4 v5 v6 v7 v8", step());
    b.score("### Step 1. w1 w2 w3 w4 w5 w6 w7 w8", 0.4);
    b.score(
        "### Step 1. w1 w2 w3 w4 w5 w6 w7 w8\n\n### Step 2. v1 v2 v3 v4 v5 v6",
        0.5,
    );
    b.answer(
        0,
        "### Step 1. w1 w2 w3 w4 w5 w6 w7 w8\n\n### Step 2. v1 v2 v3 v4 v5 v6\n</think>",
        "42",
        Finish::Length,
    );
    let rec = drive(&pool, problem("p", "42"), &mut b);
    assert_eq!(b.propose_calls()[1][0].max_new_tokens, 6);
    assert_eq!(rec.steps[1].text, "### Step 2. v1 v2 v3 v4 v5 v6\n</think>");
    assert_eq!(rec.steps[1].finish, "budget");
    assert!(rec.forced_close);
    assert!(rec.answer_truncated);
}

#[test]
fn no_room_left_force_closes_without_a_request() {
    // Step 1 is cut by the cap mid-paragraph: kept here (`reject_cut` off) to test the budget.
    let pool = pool(
        1,
        "beam_width = 1\nthink_budget = 12\nmax_step_tokens = 8\n[filter]\nreject_cut = false",
    );
    let mut b = backend(1);
    b.propose(0, H1, " w1 w2 w3 w4 w5 w6 w7 w8", Finish::Length);
    b.score("### Step 1. w1 w2 w3 w4 w5 w6 w7 w8", 0.4);
    b.answer(
        0,
        "### Step 1. w1 w2 w3 w4 w5 w6 w7 w8\n</think>",
        "\\boxed{42}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "42"), &mut b);
    assert_eq!(b.propose_calls().len(), 1);
    assert_eq!(rec.steps.len(), 2);
    assert_eq!(rec.steps[1].text, "</think>");
    assert_eq!(rec.steps[1].finish, "budget");
    assert!(rec.forced_close);
    assert_eq!(
        rec.response,
        "<think>\n### Step 1. w1 w2 w3 w4 w5 w6 w7 w8\n</think>\n\n\\boxed{42}"
    );
}

#[test]
fn eos_without_think_close_is_force_closed() {
    let pool = pool(1, "beam_width = 1");
    let mut b = backend(1);
    b.propose(0, H1, " so it is 42 ", Finish::Eos);
    b.score("### Step 1. so it is 42", 0.8);
    b.answer(
        0,
        "### Step 1. so it is 42\n</think>",
        "The final answer is 42",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "42"), &mut b);
    assert_eq!(rec.steps.len(), 1);
    assert_eq!(rec.steps[0].finish, "eos");
    assert_eq!(rec.steps[0].text, "### Step 1. so it is 42\n</think>");
    assert!(rec.forced_close);
    assert!(rec.correct);
}

#[test]
fn empty_step_is_resampled_once_then_dropped() {
    let pool = pool(2, "beam_width = 2");
    let mut b = backend(2);
    b.propose(0, H1, "  \n", step())
        .propose(0, H1, " real", step());
    b.propose(1, H1, "", Finish::Eos);
    b.score("### Step 1. real", 0.5);
    let p2 = "### Step 1. real\n\n### Step 2.";
    b.propose(0, p2, " done", think())
        .propose(1, p2, " also done", think());
    b.score("### Step 1. real\n\n### Step 2. done", 0.6)
        .score("### Step 1. real\n\n### Step 2. also done", 0.7);
    b.answer(
        1,
        "### Step 1. real\n\n### Step 2. also done</think>",
        "\\boxed{1}",
        Finish::Eos,
    );
    let rec = drive(&pool, problem("p", "1"), &mut b);
    let calls = b.propose_calls();
    assert_eq!(calls[0].len(), 2);
    assert_eq!(
        calls[1].len(),
        2,
        "both empty proposals are resampled together"
    );
    assert_ne!(
        calls[0][0].seed, calls[1][0].seed,
        "the resample gets a new seed"
    );
    assert_eq!(
        calls[2].len(),
        2,
        "t1's empty resample is dropped; one live beam remains"
    );
    assert_eq!(b.score_calls()[0].len(), 1);
    assert_eq!(rec.steps[0].candidates, 1);
    assert_eq!(rec.steps[0].teacher, "t0");
    assert_eq!(rec.answer_teacher, "t1");
    assert_eq!(rec.stats.propose_requests, 6);
}

#[test]
fn every_candidate_empty_force_closes_the_live_beams() {
    // The paper's raw behaviour (`--no-filter`); with the filter the problem fails (hygiene.rs).
    let pool = pool(1, "beam_width = 1\n[filter]\nenabled = false");
    let mut b = backend(1);
    b.propose(0, H1, " s1", step());
    b.propose(0, "### Step 1. s1\n\n### Step 2.", " ", Finish::Eos);
    b.score("### Step 1. s1", 0.5);
    b.answer(0, "### Step 1. s1\n</think>", "\\boxed{2}", Finish::Eos);
    let rec = drive(&pool, problem("p", "2"), &mut b);
    assert_eq!(b.propose_calls().len(), 3);
    assert_eq!(rec.steps.len(), 2);
    assert_eq!(rec.steps[1].finish, "no-candidates");
    assert!(rec.forced_close);
}

#[test]
fn max_steps_cap_force_closes() {
    // Every step is the same word: the repeated-step rule is off here.
    let pool = pool(
        1,
        "beam_width = 1\nmax_steps = 2\n[filter]\nreject_repeated_step = false",
    );
    let mut b = backend(1)
        .with_propose_fn(|_| Some(Proposal::new(" more", Finish::Stop("### Step".into()), 1)))
        .with_score_fn(|_| Some(0.5))
        .with_answer_fn(|_| Some(Proposal::new("\\boxed{3}", Finish::Eos, 1)));
    let rec = drive(&pool, problem("p", "3"), &mut b);
    assert_eq!(b.propose_calls().len(), 2);
    assert_eq!(rec.steps.len(), 3);
    assert_eq!(rec.steps[2].finish, "max-steps");
    assert!(rec.forced_close);
    assert_eq!(
        rec.response,
        "<think>\n### Step 1. more\n\n### Step 2. more\n</think>\n\n\\boxed{3}"
    );
}

#[test]
fn greedy_is_beam_width_one() {
    // Teachers repeat their one word at every step: the repeated-step rule is off here.
    let pool = pool(
        3,
        "method = \"greedy\"\nbeam_width = 4\n[filter]\nreject_repeated_step = false",
    );
    let mut b = backend(3)
        .with_propose_fn(|r| {
            let depth = r.reasoning.matches("### Step").count();
            let f = if depth >= 3 {
                Finish::Stop("</think>".into())
            } else {
                Finish::Stop("### Step".into())
            };
            Some(Proposal::new(format!(" t{}", r.teacher), f, 1))
        })
        .with_score_fn(|r| {
            Some(if r.context.contains("Step 3. t2") {
                0.9
            } else {
                0.1 + 0.1 * r.context.matches("t1").count() as f64
            })
        })
        .with_answer_fn(|_| Some(Proposal::new("\\boxed{0}", Finish::Eos, 1)));
    let rec = drive(&pool, problem("p", "0"), &mut b);
    let sizes: Vec<usize> = b.propose_calls().iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![3, 3, 3]);
    assert_eq!(rec.config.beam, 1);
    let teachers: Vec<&str> = rec.steps.iter().map(|s| s.teacher.as_str()).collect();
    assert_eq!(teachers, vec!["t1", "t1", "t2"]);
    assert_eq!(rec.answer_teacher, "t2");
}

#[test]
fn line_break_and_cue_phrase_units() {
    let pool_lb = pool(1, "beam_width = 1\nstep_unit = \"line-break\"");
    let mut b = backend(1);
    b.propose(0, "", "First para.", Finish::Stop("\n\n".into()));
    b.propose(0, "First para.\n\n", "Done.", think());
    b.score("First para.", 0.3)
        .score("First para.\n\nDone.", 0.6);
    b.answer(0, "First para.\n\nDone.</think>", "\\boxed{5}", Finish::Eos);
    let rec = drive(&pool_lb, problem("p", "5"), &mut b);
    assert_eq!(
        b.propose_calls()[0][0].stop,
        vec!["\n\n".to_string(), "</think>".to_string()]
    );
    assert_eq!(rec.steps.len(), 2);
    assert!(rec.correct);

    let pool_cue = pool(1, "beam_width = 1\nstep_unit = \"cue-phrase\"");
    let mut b = backend(1);
    b.propose(0, "", "x = 2.", Finish::Stop(" Wait".into()));
    b.propose(0, "x = 2. Wait", ", x = 3.", think());
    b.score("x = 2.", 0.3).score("x = 2. Wait, x = 3.", 0.6);
    b.answer(0, "x = 2. Wait, x = 3.</think>", "\\boxed{3}", Finish::Eos);
    let rec = drive(&pool_cue, problem("p", "3"), &mut b);
    let stops = &b.propose_calls()[0][0].stop;
    assert!(stops.contains(&" Wait".to_string()) && stops.contains(&"\nAlternatively".to_string()));
    assert_eq!(rec.steps[1].text, "Wait, x = 3.</think>");
    assert!(rec.correct);
}

#[test]
fn cross_teacher_scoring_with_and_without_the_proposer() {
    let scorer = "kind = \"cross-teacher\"\nexclude_proposer = true";
    let pool_x = pool_with_scorer(2, "beam_width = 2", scorer);
    let mut b = backend(2);
    b.propose(0, H1, " A", think())
        .propose(1, H1, " B", think());
    b.scorer_score(1, "### Step 1. A", 0.5)
        .scorer_score(0, "### Step 1. B", 0.8);
    b.answer(1, "### Step 1. B</think>", "\\boxed{1}", Finish::Eos);
    let rec = drive(&pool_x, problem("p", "1"), &mut b);
    let scorers: Vec<usize> = b.score_calls()[0].iter().map(|r| r.scorer).collect();
    assert_eq!(scorers, vec![1, 0]);
    assert_eq!(rec.answer_teacher, "t1");
    assert!((rec.score - 0.8).abs() < 1e-12);
    assert_eq!(rec.steps[0].scorers.len(), 1);
    assert_eq!(rec.steps[0].scorers[0].scorer, "t0");

    let pool_all = pool_with_scorer(2, "beam_width = 2", "kind = \"cross-teacher\"");
    let mut b = backend(2);
    b.propose(0, H1, " A", think())
        .propose(1, H1, " B", think());
    b.scorer_score(0, "### Step 1. A", 0.5)
        .scorer_score(1, "### Step 1. A", 0.8);
    b.scorer_score(0, "### Step 1. B", 0.6)
        .scorer_score(1, "### Step 1. B", 0.6);
    b.answer(0, "### Step 1. A</think>", "\\boxed{1}", Finish::Eos);
    let rec = drive(&pool_all, problem("p", "1"), &mut b);
    assert_eq!(b.score_calls()[0].len(), 4);
    // exp(mean(ln 0.5, ln 0.8)) = sqrt(0.4) ≈ 0.632 > 0.6
    assert!((rec.score - 0.4f64.sqrt()).abs() < 1e-12);
    assert_eq!(rec.answer_teacher, "t0");
    let per: Vec<(String, f64)> = rec.steps[0]
        .scorers
        .iter()
        .map(|v| (v.scorer.clone(), v.mean_logprob))
        .collect();
    assert_eq!(per.len(), 2);
    assert!((per[0].1 - 0.5f64.ln()).abs() < 1e-12 && (per[1].1 - 0.8f64.ln()).abs() < 1e-12);
    assert_eq!(rec.steps[0].m, None);
}

#[test]
fn curation_keeps_the_best_whole_trajectory() {
    let pool = pool(
        2,
        "method = \"curation\"\ncuration_samples = 2\nmax_step_tokens = 4\nthink_budget = 100",
    );
    let mut b = backend(2);
    // Teacher 0, samples 0 and 1 (queue order), teacher 1 likewise.
    b.propose(0, H1, " a b c d", Finish::Length)
        .propose(0, H1, " x", think());
    b.propose(0, "### Step 1. a b c d", " e", think());
    b.propose(1, H1, " y", Finish::Eos)
        .propose(1, H1, " z", think());
    b.score("### Step 1. a b c d e", 0.4)
        .score("### Step 1. x", 0.3)
        .score("### Step 1. y", 0.9)
        .score("### Step 1. z", 0.5);
    b.answer(1, "### Step 1. y\n</think>", "\\boxed{9}", Finish::Eos);
    let rec = drive(&pool, problem("p", "9"), &mut b);
    let sizes: Vec<usize> = b.propose_calls().iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![4, 1]);
    assert!(
        b.propose_calls()[0]
            .iter()
            .all(|r| r.stop == vec!["</think>".to_string()])
    );
    let seeds: HashSet<u64> = b.propose_calls()[0].iter().map(|r| r.seed).collect();
    assert_eq!(seeds.len(), 4);
    assert_eq!(b.score_calls().len(), 1);
    assert_eq!(b.score_calls()[0].len(), 4);
    assert_eq!(rec.steps.len(), 1);
    assert_eq!(rec.steps[0].candidates, 4);
    assert_eq!(rec.answer_teacher, "t1");
    assert!((rec.score - 0.9).abs() < 1e-12);
    assert!(rec.forced_close);
    assert!(rec.correct);
    assert_eq!(
        rec.response,
        "<think>\n### Step 1. y\n</think>\n\n\\boxed{9}"
    );
}

#[test]
fn mcts_runs_and_commits_to_the_most_visited_child() {
    // Teachers repeat their one word at every step: the repeated-step rule is off here.
    let pool = pool(
        2,
        "method = \"mcts\"\n[filter]\nreject_repeated_step = false",
    );
    let mut b = backend(2)
        .with_propose_fn(|r| {
            if r.stop.len() == 1 {
                return Some(Proposal::new(
                    " rollout",
                    Finish::Stop("</think>".into()),
                    1,
                ));
            }
            let depth = r.reasoning.matches("### Step").count();
            let f = if depth >= 3 {
                Finish::Stop("</think>".into())
            } else {
                Finish::Stop("### Step".into())
            };
            Some(Proposal::new(format!(" s{}", r.teacher), f, 1))
        })
        .with_score_fn(|r| {
            let c = &r.context;
            Some(
                (0.5 + 0.1 * c.matches(" s1").count() as f64
                    - 0.05 * c.matches(" s0").count() as f64)
                    .clamp(0.01, 1.0),
            )
        })
        .with_answer_fn(|_| Some(Proposal::new("\\boxed{4}", Finish::Eos, 1)));
    let rec = drive(&pool, problem("p", "4"), &mut b);
    // Decision 1: rollouts from s0 (0.45) and s1 (0.6), then UCB picks s1 and s0 once more
    // each; the visits tie 2:2 and the higher Q (s1) is committed.
    assert_eq!(rec.steps[0].teacher, "t1");
    assert_eq!(rec.steps[0].visits, Some(2));
    assert!(rec.steps.iter().all(|s| s.visits.is_some_and(|v| v >= 1)));
    let last = rec.steps.last().unwrap();
    assert_eq!(last.finish, "think");
    assert!(last.text.ends_with("</think>"));
    assert_eq!(rec.steps.len(), 3);
    assert_eq!(rec.answer_teacher, last.teacher);
    assert!(rec.score > 0.0);
    assert!(rec.stats.score_requests >= 4);
    assert!(rec.correct);
    // Rollouts run to </think> only (no step stop).
    assert!(
        b.propose_calls()
            .iter()
            .any(|c| c.len() == 1 && c[0].stop == vec!["</think>".to_string()])
    );
}

#[test]
fn answer_prefix_is_prefilled_and_part_of_the_final_answer() {
    let with = pool(
        3,
        "method = \"greedy\"\nanswer_prefix = \"The final answer is \"",
    );
    let mut b = backend(3)
        .with_propose_fn(|_| Some(Proposal::new(" 6 * 7 = 42.", Finish::Eos, 5)))
        .with_score_fn(|_| Some(0.5))
        .with_answer_fn(|r| {
            // The teacher continues after the prefix: its text alone carries no "answer is".
            assert!(r.prefill().ends_with("</think>\n\nThe final answer is "));
            Some(Proposal::new("42.", Finish::Eos, 2))
        });
    let rec = drive(&with, problem("p", "42"), &mut b);
    assert_eq!(rec.final_answer, "The final answer is 42.");
    assert_eq!(rec.predicted.as_deref(), Some("42"));
    assert!(rec.correct);
    assert!(
        rec.response
            .ends_with("</think>\n\nThe final answer is 42.")
    );
    // Without a prefix the request and the answer are unchanged.
    let plain = pool(3, "method = \"greedy\"");
    let mut b = backend(3)
        .with_propose_fn(|_| Some(Proposal::new(" 6 * 7 = 42.", Finish::Eos, 5)))
        .with_score_fn(|_| Some(0.5))
        .with_answer_fn(|r| {
            assert!(r.prefill().ends_with("</think>\n\n"));
            Some(Proposal::new("So 42.", Finish::Eos, 2))
        });
    let rec = drive(&plain, problem("p", "42"), &mut b);
    assert_eq!(rec.final_answer, "So 42.");
}

#[test]
fn answer_stop_strings_reach_the_answer_request() {
    // `answer_stop` is passed to the answering teacher (the backend ends the answer before
    // the first stop string); without it the answer has no stop strings (O-18).
    for (extra, want) in [
        (
            "\nanswer_stop = [\"### Step\"]",
            vec!["### Step".to_string()],
        ),
        ("", vec![]),
    ] {
        let pool = pool(
            3,
            &format!("method = \"greedy\"\nanswer_prefix = \"The final answer is \"{extra}"),
        );
        let want2 = want.clone();
        let mut b = backend(3)
            .with_propose_fn(|_| Some(Proposal::new(" 6 * 7 = 42.", Finish::Eos, 5)))
            .with_score_fn(|_| Some(0.5))
            .with_answer_fn(move |r| {
                assert_eq!(r.stop, want2);
                Some(Proposal::new("42.", Finish::Stop("### Step".into()), 2))
            });
        let rec = drive(&pool, problem("p", "42"), &mut b);
        assert_eq!(b.answer_requests().len(), 1);
        assert_eq!(rec.final_answer, "The final answer is 42.");
        assert!(!rec.answer_truncated);
        assert!(rec.correct);
    }
}

#[test]
fn a_beam_closes_itself_when_every_continuation_scores_lower() {
    // `close_candidate`: from step 2 on, the live beam also competes as itself closed, with
    // its own score. Step 2 (0.8) beats closing after step 1 (0.5); at step 3 closing after
    // step 2 (0.8) beats the continuation (0.3).
    let pool = pool(1, "beam_width = 1\nclose_candidate = true");
    let mut b = backend(1);
    b.propose(0, H1, " s1", step());
    b.score("### Step 1. s1", 0.5);
    let p2 = "### Step 1. s1\n\n### Step 2.";
    b.propose(0, p2, " s2", step());
    b.score(&format!("{p2} s2"), 0.8);
    let p3 = format!("{p2} s2\n\n### Step 3.");
    b.propose(0, &p3, " s3", step());
    b.score(&format!("{p3} s3"), 0.3);
    b.answer(0, &format!("{p2} s2\n</think>"), "\\boxed{5}", Finish::Eos);
    let rec = drive(&pool, problem("p", "5"), &mut b);
    assert_eq!(b.propose_calls().len(), 3);
    assert_eq!(
        b.score_calls().len(),
        3,
        "a closed beam is not scored again"
    );
    assert_eq!(b.score_calls()[2].len(), 1);
    assert_eq!(rec.steps.len(), 3);
    assert_eq!(rec.steps[2].text, "</think>");
    assert_eq!(rec.steps[2].finish, "score-close");
    assert_eq!(rec.steps[2].score, 0.8);
    assert_eq!(rec.steps[2].candidates, 2);
    assert!(!rec.forced_close && !rec.natural_end);
    assert!(rec.correct);
}

#[test]
fn a_beam_below_close_min_score_does_not_close() {
    // Closing after step 1 (0.4) would beat step 2 (0.3), but 0.4 < close_min_score = 0.5:
    // the search goes on until max_steps.
    let pool = pool(
        1,
        "beam_width = 1\nmax_steps = 2\nclose_candidate = true\nclose_min_score = 0.5",
    );
    let mut b = backend(1);
    b.propose(0, H1, " s1", step());
    b.score("### Step 1. s1", 0.4);
    let p2 = "### Step 1. s1\n\n### Step 2.";
    b.propose(0, p2, " s2", step());
    b.score(&format!("{p2} s2"), 0.3);
    b.score(&format!("{p2} s2\n</think>"), 0.3);
    b.answer(0, &format!("{p2} s2\n</think>"), "\\boxed{5}", Finish::Eos);
    let rec = drive(&pool, problem("p", "5"), &mut b);
    assert_eq!(rec.steps[1].text.trim(), "### Step 2. s2");
    assert_eq!(rec.steps[1].candidates, 1);
    assert_eq!(rec.steps[2].finish, "max-steps");
    assert!(rec.forced_close);
}
