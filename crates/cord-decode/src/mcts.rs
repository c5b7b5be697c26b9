//! MCTS baseline (O-22): UCB1 selection (c = 1.0, unvisited children first), expansion with one
//! proposal per teacher, a rollout to `</think>` by the new child's proposer, reward = S of the
//! complete reasoning, back-propagation; after `mcts_simulations` simulations commit to the most
//! visited child (ties: higher Q, then teacher order) and repeat until the committed node is
//! finished.

use std::sync::Arc;

use crate::backend::{Backend, ProposeRequest};
use crate::chunked::Chunked;
use crate::error::{Error, Result};
use crate::expand::{Expansion, also_proposed, expansions, same_reasoning};
use crate::hygiene::Reject;
use crate::io::{Problem, Record, StepRecord, TreeEntry};
use crate::search::{
    Need, Outcome, Reply, Run, ScoreDetail, Search, Settings, StepOutcome, closed, expect_len,
    wrong_reply,
};
use crate::seed::{Purpose, request_seed};

#[derive(Debug, Clone)]
struct Node {
    parent: Option<usize>,
    reasoning: String,
    text: String,
    teacher: usize,
    depth: usize,
    done: bool,
    forced: bool,
    reason: &'static str,
    pending: String,
    tokens: usize,
    children: Vec<usize>,
    expanded: bool,
    visits: u32,
    total: f64,
    /// Score of the node's own (finished) reasoning.
    terminal: Option<ScoreDetail>,
    also: Vec<usize>,
}

impl Node {
    fn q(&self) -> f64 {
        if self.visits == 0 {
            0.0
        } else {
            self.total / f64::from(self.visits)
        }
    }
}

#[derive(Debug)]
enum State {
    Simulate,
    Expanding {
        node: usize,
        slots: Vec<Expansion>,
        pending: Vec<usize>,
        resample: bool,
    },
    Resample {
        node: usize,
        slots: Vec<Expansion>,
        pending: Vec<usize>,
    },
    Expanded {
        node: usize,
        slots: Vec<Expansion>,
    },
    Rollout {
        leaf: usize,
        run: Chunked,
    },
    RollingOut {
        leaf: usize,
        run: Chunked,
    },
    Evaluate {
        leaf: usize,
        reasoning: String,
        terminal: bool,
    },
    Scoring {
        leaf: usize,
        js: Vec<usize>,
        terminal: bool,
    },
    Commit,
    Answer,
    Answering,
    Finished(Box<Record>),
    Over,
}

/// Monte-Carlo tree search over one problem.
pub struct MctsSearch {
    s: Arc<Settings>,
    p: Problem,
    nodes: Vec<Node>,
    root: usize,
    sims: usize,
    sim_counter: u64,
    committed: Vec<StepRecord>,
    path: Vec<usize>,
    state: State,
    run: Run,
}

impl MctsSearch {
    pub fn new(s: Arc<Settings>, p: Problem) -> Self {
        let root = Node {
            parent: None,
            reasoning: String::new(),
            text: String::new(),
            teacher: 0,
            depth: 0,
            done: false,
            forced: false,
            reason: "",
            pending: String::new(),
            tokens: 0,
            children: vec![],
            expanded: false,
            visits: 0,
            total: 0.0,
            terminal: None,
            also: vec![],
        };
        MctsSearch {
            s,
            p,
            nodes: vec![root],
            root: 0,
            sims: 0,
            sim_counter: 0,
            committed: vec![],
            path: vec![0],
            state: State::Simulate,
            run: Run::new(),
        }
    }

    fn force_close(&mut self, n: usize, reason: &'static str) {
        let node = &mut self.nodes[n];
        node.reasoning = closed(&node.reasoning);
        node.done = true;
        node.forced = true;
        node.reason = reason;
        node.expanded = true;
    }

    fn ucb_child(&self, n: usize) -> usize {
        let node = &self.nodes[n];
        let ln_n = f64::from(node.visits.max(1)).ln();
        let mut best = node.children[0];
        let mut best_v = f64::NEG_INFINITY;
        for &c in &node.children {
            let ch = &self.nodes[c];
            let v = ch.q() + self.s.mcts_c * (ln_n / f64::from(ch.visits)).sqrt();
            if v > best_v {
                best_v = v;
                best = c;
            }
        }
        best
    }

    fn propose_request(&self, n: usize, slot: &Expansion, purpose: Purpose) -> ProposeRequest {
        let node = &self.nodes[n];
        let key = [node.depth as u64 + 1, n as u64];
        slot.request(&self.s, &self.p, &node.reasoning, purpose, key)
    }

    /// Walks down from the committed root; returns a need or moves the state on.
    fn simulate(&mut self, backend: &mut dyn Backend) -> Result<Option<Need>> {
        let mut n = self.root;
        loop {
            if self.nodes[n].done {
                let reasoning = self.nodes[n].reasoning.clone();
                self.state = State::Evaluate {
                    leaf: n,
                    reasoning,
                    terminal: true,
                };
                return Ok(None);
            }
            if !self.nodes[n].expanded {
                if self.nodes[n].depth >= self.s.max_steps {
                    tracing::warn!(id = %self.p.id, "max_steps = {} reached in MCTS; force-closing", self.s.max_steps);
                    self.force_close(n, "max-steps");
                    continue;
                }
                let header = self
                    .s
                    .header(self.nodes[n].depth + 1, &self.nodes[n].pending);
                let slots = expansions(&self.s, backend, &self.nodes[n].reasoning, &header)?;
                let mut pending = Vec::new();
                let mut reqs = Vec::new();
                for (i, slot) in slots.iter().enumerate() {
                    if !slot.no_room {
                        reqs.push(self.propose_request(n, slot, Purpose::Propose));
                        pending.push(i);
                    }
                }
                if reqs.is_empty() {
                    self.state = State::Expanded { node: n, slots };
                    return Ok(None);
                }
                self.state = State::Expanding {
                    node: n,
                    slots,
                    pending,
                    resample: false,
                };
                return Ok(Some(Need::Propose(reqs)));
            }
            if let Some(&c) = self.nodes[n]
                .children
                .iter()
                .find(|&&c| self.nodes[c].visits == 0)
            {
                self.start_rollout(c);
                return Ok(None);
            }
            n = self.ucb_child(n);
        }
    }

    /// Step texts from the root down to node `n`.
    fn path_texts(&self, mut n: usize) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(p) = self.nodes[n].parent {
            v.push(self.nodes[n].text.clone());
            n = p;
        }
        v.reverse();
        v
    }

    fn start_rollout(&mut self, leaf: usize) {
        let node = &self.nodes[leaf];
        self.state = if node.done {
            State::Evaluate {
                leaf,
                reasoning: node.reasoning.clone(),
                terminal: true,
            }
        } else {
            let run = Chunked::new(node.teacher, node.reasoning.clone());
            State::Rollout { leaf, run }
        };
    }

    fn build_children(&mut self, n: usize, slots: Vec<Expansion>) {
        let parent_reasoning = self.nodes[n].reasoning.clone();
        let depth = self.nodes[n].depth + 1;
        self.nodes[n].expanded = true;
        for slot in slots {
            let teacher = slot.teacher;
            let Some(child) = slot.child(&parent_reasoning) else {
                continue;
            };
            if self.s.dedupe
                && let Some(&first) = self.nodes[n]
                    .children
                    .iter()
                    .find(|&&c| same_reasoning(&self.nodes[c].reasoning, &child.reasoning))
            {
                let f = &mut self.nodes[first];
                also_proposed(f.teacher, &mut f.also, teacher);
                continue;
            }
            let id = self.nodes.len();
            self.nodes.push(Node {
                parent: Some(n),
                reasoning: child.reasoning,
                text: child.text,
                teacher,
                depth,
                done: child.done,
                forced: child.forced,
                reason: child.reason,
                pending: child.pending,
                tokens: child.tokens,
                children: vec![],
                expanded: child.done,
                visits: 0,
                total: 0.0,
                terminal: None,
                also: vec![],
            });
            self.nodes[n].children.push(id);
        }
        if self.nodes[n].children.is_empty() {
            tracing::warn!(id = %self.p.id, "every proposal was empty; force-closing the node");
            self.force_close(n, "no-candidates");
            self.state = State::Simulate;
        } else {
            let first = self.nodes[n].children[0];
            self.start_rollout(first);
        }
    }

    fn backprop(&mut self, leaf: usize, reward: f64) {
        let mut n = leaf;
        loop {
            self.nodes[n].visits += 1;
            self.nodes[n].total += reward;
            if n == self.root {
                break;
            }
            match self.nodes[n].parent {
                Some(p) => n = p,
                None => break,
            }
        }
        self.sims += 1;
        self.sim_counter += 1;
        self.state = if self.sims >= self.s.mcts_simulations {
            State::Commit
        } else {
            State::Simulate
        };
    }

    fn commit(&mut self) {
        let r = self.root;
        if self.nodes[r].done {
            self.state = if self.nodes[r].terminal.is_some() {
                State::Answer
            } else {
                State::Simulate
            };
            self.sims = 0;
            return;
        }
        let children = &self.nodes[r].children;
        let mut best = children[0];
        for &c in children.iter().skip(1) {
            let (a, b) = (&self.nodes[c], &self.nodes[best]);
            if a.visits > b.visits || (a.visits == b.visits && a.q() > b.q()) {
                best = c;
            }
        }
        let node = &self.nodes[best];
        let candidates = self.nodes[r].children.len();
        self.committed.push(StepRecord {
            index: node.depth,
            text: node.text.clone(),
            teacher: self.s.teacher_names[node.teacher].clone(),
            score: node.q(),
            mean_logprob: node.terminal.as_ref().map(|d| d.mean_logprob),
            m: node.terminal.as_ref().and_then(|d| d.m),
            tokens: node.tokens,
            candidates,
            finish: node.reason.to_string(),
            also_proposed_by: node
                .also
                .iter()
                .map(|&k| self.s.teacher_names[k].clone())
                .collect(),
            scorers: node
                .terminal
                .as_ref()
                .map(|d| d.per_scorer.clone())
                .unwrap_or_default(),
            visits: Some(node.visits),
        });
        self.root = best;
        self.path.push(best);
        self.sims = 0;
        self.state = if node.done && node.terminal.is_some() {
            State::Answer
        } else {
            State::Simulate
        };
    }

    fn tree(&self) -> Vec<TreeEntry> {
        self.nodes
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, n)| TreeEntry {
                step: n.depth,
                id: i as u64,
                parent: n.parent.map(|p| p as u64),
                parent_rank: None,
                teacher: self.s.teacher_names[n.teacher].clone(),
                text: n.text.clone(),
                score: (n.visits > 0).then(|| n.q()),
                kept: self.path.contains(&i),
                finished: n.done,
                note: Some(format!("visits {}", n.visits)),
                scorers: n
                    .terminal
                    .as_ref()
                    .map(|d| d.per_scorer.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }
}

impl Search for MctsSearch {
    fn problem(&self) -> &Problem {
        &self.p
    }

    fn poll(&mut self, backend: &mut dyn Backend) -> Result<Need> {
        loop {
            match std::mem::replace(&mut self.state, State::Over) {
                State::Simulate => {
                    if let Some(need) = self.simulate(backend)? {
                        return Ok(need);
                    }
                }
                State::Resample {
                    node,
                    slots,
                    pending,
                } => {
                    let reqs = pending
                        .iter()
                        .map(|&i| self.propose_request(node, &slots[i], Purpose::Resample))
                        .collect();
                    self.state = State::Expanding {
                        node,
                        slots,
                        pending,
                        resample: true,
                    };
                    return Ok(Need::Propose(reqs));
                }
                State::Expanded { node, slots } => self.build_children(node, slots),
                State::Rollout { leaf, mut run } => {
                    let seed = request_seed(
                        &self.p.id,
                        Purpose::Rollout,
                        &[leaf as u64, self.sim_counter, run.chunks as u64],
                        self.s.seed,
                    );
                    match run.request(&self.s, &self.p, backend, seed)? {
                        Some(r) => {
                            self.state = State::RollingOut { leaf, run };
                            return Ok(Need::Propose(vec![r]));
                        }
                        None => {
                            self.state = State::Evaluate {
                                leaf,
                                reasoning: run.reasoning,
                                terminal: false,
                            }
                        }
                    }
                }
                State::Evaluate {
                    leaf,
                    reasoning,
                    terminal,
                } => {
                    if terminal && let Some(d) = &self.nodes[leaf].terminal {
                        let reward = d.score;
                        self.backprop(leaf, reward);
                        continue;
                    }
                    let (js, reqs) =
                        self.s
                            .score_requests(&self.p, &reasoning, Some(self.nodes[leaf].teacher));
                    self.state = State::Scoring { leaf, js, terminal };
                    return Ok(Need::Score(reqs));
                }
                State::Commit => self.commit(),
                State::Answer => {
                    let node = &self.nodes[self.root];
                    let d = node
                        .terminal
                        .clone()
                        .ok_or_else(|| Error::Protocol("final node not scored".into()))?;
                    let outcome = Outcome {
                        steps: self.committed.clone(),
                        reasoning: node.reasoning.clone(),
                        forced: node.forced,
                        score: d.score,
                        answer_teacher: node.teacher,
                    };
                    let need = self.run.answer(&self.s, &self.p, outcome);
                    self.state = State::Answering;
                    return Ok(need);
                }
                State::Finished(r) => return Ok(Need::Done(r)),
                State::Over => return Err(Error::Protocol("poll after the search ended".into())),
                s => {
                    self.state = s;
                    return Err(Error::Protocol("poll while waiting for results".into()));
                }
            }
        }
    }

    fn feed(&mut self, reply: Reply) -> Result<()> {
        match (std::mem::replace(&mut self.state, State::Over), reply) {
            (
                State::Expanding {
                    node,
                    mut slots,
                    pending,
                    resample,
                },
                Reply::Proposals(ps),
            ) => {
                let ps = expect_len(ps, pending.len(), "proposals")?;
                let teachers: Vec<usize> = pending.iter().map(|&i| slots[i].teacher).collect();
                self.run.stats.proposals(&self.s, &teachers, &ps);
                let mut again = Vec::new();
                for (&i, p) in pending.iter().zip(&ps) {
                    let mut out = slots[i].receive(&self.s, p);
                    if let Some(text) = slots[i].step_text(&out) {
                        let earlier = self.path_texts(node);
                        let earlier: Vec<&str> = earlier.iter().map(String::as_str).collect();
                        if let Some(why) = self.s.reject(&out, &text, &earlier) {
                            // A rejected step is handled like an empty one: resampled once,
                            // then left out of the node's children.
                            self.run.stats.reject(&self.s, slots[i].teacher, why);
                            out = StepOutcome::Blank;
                        }
                    } else {
                        self.run
                            .stats
                            .reject(&self.s, slots[i].teacher, Reject::Empty);
                    }
                    if out == StepOutcome::Blank && !resample && self.s.resample_empty {
                        again.push(i);
                    }
                    slots[i].outcome = Some(out);
                }
                self.state = if again.is_empty() {
                    State::Expanded { node, slots }
                } else {
                    State::Resample {
                        node,
                        slots,
                        pending: again,
                    }
                };
                Ok(())
            }
            (State::RollingOut { leaf, mut run }, Reply::Proposals(ps)) => {
                let ps = expect_len(ps, 1, "proposals")?;
                self.run.stats.proposals(&self.s, &[run.teacher], &ps);
                run.absorb(
                    &ps[0].text,
                    &ps[0].finish,
                    ps[0].tokens,
                    self.s.end_on_answer,
                );
                self.state = if run.done {
                    State::Evaluate {
                        leaf,
                        reasoning: run.reasoning,
                        terminal: false,
                    }
                } else {
                    State::Rollout { leaf, run }
                };
                Ok(())
            }
            (State::Scoring { leaf, js, terminal }, Reply::Scores(ss)) => {
                let ss = expect_len(ss, js.len(), "scores")?;
                self.run.stats.scores(&ss);
                let d = self.s.aggregate(&js, &ss);
                let reward = d.score;
                if terminal {
                    self.nodes[leaf].terminal = Some(d);
                }
                self.backprop(leaf, reward);
                Ok(())
            }
            (State::Answering, Reply::Answers(a)) => {
                let tree = self.s.save_tree.then(|| self.tree());
                let rec = self.run.record(&self.s, &self.p, a, tree)?;
                self.state = State::Finished(Box::new(rec));
                Ok(())
            }
            (s, _) => {
                self.state = s;
                Err(wrong_reply())
            }
        }
    }
}
