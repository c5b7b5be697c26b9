//! Teacher-forced scoring: the log-prob of each continuation token after its context, batched
//! into as few forwards as the token budget allows, the context left in the prefix cache.

use std::time::Instant;

use candle_core::Tensor;
use cord_kv::SeqId;
use cord_models::{LogitsMode, SeqInput};

use super::{EngineError, EngineModel, Result, is_out_of_blocks, model_err};
use cord_kernels::token_logprobs;

/// Teacher-forced scoring of `continuation` after `context` (tokenized jointly): the log-prob of
/// each continuation token. (The search's `cord_decode::backend::ScoreRequest`, an answer scored
/// by one of the pool's scorers, becomes one of these in cord-backend.)
#[derive(Debug, Clone)]
pub struct TokenScoreRequest {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoreOutput {
    /// Ids of the continuation tokens (a token straddling the junction counts as continuation).
    pub token_ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub logprobs: Vec<f32>,
    pub context_tokens: usize,
    pub reused_tokens: usize,
    /// With [`super::Engine::score_top`]: for each continuation token, the `top` most likely
    /// tokens at its position as (id, log-prob), most likely first (ties: lower id first).
    /// Empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
}

impl ScoreOutput {
    pub fn sum(&self) -> f64 {
        self.logprobs.iter().map(|&x| x as f64).sum()
    }
    pub fn mean(&self) -> f64 {
        if self.logprobs.is_empty() {
            0.0
        } else {
            self.sum() / self.logprobs.len() as f64
        }
    }
}

impl EngineModel {
    /// [`EngineModel::score`] with the per-model counters and the debug trace line.
    pub(super) fn score_timed(
        &mut self,
        reqs: &[TokenScoreRequest],
        top: usize,
    ) -> Result<Vec<ScoreOutput>> {
        let t0 = Instant::now();
        let out = self.score(reqs, top);
        let secs = t0.elapsed().as_secs_f64();
        self.stats.score_seconds += secs;
        if let Ok(o) = &out {
            let ctx: usize = o.iter().map(|s| s.context_tokens).sum();
            let reused: usize = o.iter().map(|s| s.reused_tokens).sum();
            tracing::debug!(model = %self.name, requests = reqs.len(), context = ctx, reused, secs, "score");
        }
        out
    }

    fn score(&mut self, reqs: &[TokenScoreRequest], top: usize) -> Result<Vec<ScoreOutput>> {
        struct Job {
            ids: Vec<u32>,
            first: usize,
            seq: Option<SeqId>,
            reused: usize,
        }
        let mut jobs = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let text = format!("{}{}", r.context, r.continuation);
            let enc = self
                .loaded
                .tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| model_err(&self.name, e))?;
            let mut ids = enc.get_ids().to_vec();
            self.check_ids(&ids)?;
            let ctx_len = r.context.len();
            let mut first = enc
                .get_offsets()
                .iter()
                .position(|&(_, end)| end > ctx_len)
                .unwrap_or(ids.len());
            if self.maybe_bos(&text, &mut ids) {
                first += 1;
            }
            if first == ids.len() {
                return Err(EngineError::Invalid(format!(
                    "score request {i}: the continuation is empty"
                )));
            }
            if first == 0 {
                return Err(EngineError::Invalid(format!(
                    "score request {i}: the context is empty (the first continuation token has nothing to condition on)"
                )));
            }
            jobs.push(Job {
                ids,
                first,
                seq: None,
                reused: 0,
            });
        }
        let mut outs: Vec<Option<ScoreOutput>> = vec![None; jobs.len()];
        let mut next = 0;
        // Shrinks (for this call only) when the KV pool cannot hold a group.
        let mut group_budget = self.max_batch_tokens;
        while next < jobs.len() {
            // One forward over as many jobs as fit the token budget (at least one).
            let mut group = Vec::new();
            let mut budget = group_budget;
            while next < jobs.len() {
                let j = &mut jobs[next];
                let (seq, cached) = {
                    let limit = j.first - 1;
                    self.kv
                        .match_prefix(&j.ids[..limit])
                        .map_err(|e| model_err(&self.name, e))?
                };
                let n = j.ids.len() - 1 - cached;
                if !group.is_empty() && n > budget {
                    self.kv.free(seq).map_err(|e| model_err(&self.name, e))?;
                    break;
                }
                j.seq = Some(seq);
                j.reused = cached;
                budget = budget.saturating_sub(n);
                group.push(next);
                next += 1;
            }
            let inputs: Vec<SeqInput> = group
                .iter()
                .map(|&g| {
                    let j = &jobs[g];
                    // Only the rows that predict the continuation go through the LM head.
                    SeqInput {
                        seq: j.seq.expect("attached"),
                        tokens: &j.ids[j.reused..j.ids.len() - 1],
                        logits: LogitsMode::Tail(j.ids.len() - j.first),
                    }
                })
                .collect();
            let logits = match self.loaded.model.forward(&inputs, &mut self.kv) {
                Ok(l) => l,
                Err(e) => {
                    drop(inputs);
                    for &g in &group {
                        if let Some(s) = jobs[g].seq.take() {
                            let _ = self.kv.free(s);
                        }
                    }
                    if is_out_of_blocks(&e) && group.len() > 1 {
                        // Retry with a smaller group: half the budget.
                        next = group[0];
                        group_budget = (group_budget / 2).max(1);
                        continue;
                    }
                    return Err(model_err(&self.name, e));
                }
            };
            drop(inputs);
            self.stats.forward_calls += 1;
            // Logits rows are the answer rows of each job in order: the last M fed positions
            // (the fed tokens end one before the last answer token, so each row predicts one).
            let mut targets = Vec::new();
            for &g in &group {
                let j = &jobs[g];
                targets.extend_from_slice(&j.ids[j.first..]);
                self.stats.computed_tokens += (j.ids.len() - 1 - j.reused) as u64;
            }
            let dev = logits.device().clone();
            let tg = Tensor::new(targets.as_slice(), &dev).map_err(|e| model_err(&self.name, e))?;
            let lp: Vec<f32> = token_logprobs(&logits, &tg)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| model_err(&self.name, e))?;
            let tops: Vec<Vec<(u32, f32)>> = if top == 0 {
                Vec::new()
            } else {
                logits
                    .to_vec2::<f32>()
                    .map_err(|e| model_err(&self.name, e))?
                    .iter()
                    .map(|row| top_logprobs(row, top))
                    .collect()
            };
            let mut at = 0;
            for &g in &group {
                let j = &mut jobs[g];
                let m = j.ids.len() - j.first;
                let token_ids = j.ids[j.first..].to_vec();
                let tokens = token_ids
                    .iter()
                    .map(|&t| {
                        self.loaded
                            .tokenizer
                            .decode(&[t], false)
                            .unwrap_or_default()
                    })
                    .collect();
                outs[g] = Some(ScoreOutput {
                    token_ids,
                    tokens,
                    logprobs: lp[at..at + m].to_vec(),
                    context_tokens: j.first,
                    reused_tokens: j.reused,
                    top_logprobs: if tops.is_empty() {
                        Vec::new()
                    } else {
                        tops[at..at + m].to_vec()
                    },
                });
                at += m;
                self.stats.prompt_tokens += j.first as u64;
                self.stats.reused_tokens += j.reused as u64;
                self.stats.scored_tokens += m as u64;
                // Keep the context (without the answer) cached: the next step's prompts share it.
                let seq = j.seq.take().expect("attached");
                self.cache_and_free(seq, Some(j.first))?;
            }
        }
        Ok(outs
            .into_iter()
            .map(|o| o.expect("every job scored"))
            .collect())
    }
}

/// The `k` largest log-softmax entries of one logits row as (id, log-prob), largest first, ties
/// to the lower id; NaN entries are never listed.
fn top_logprobs(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = row
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + row
            .iter()
            .filter(|x| !x.is_nan())
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let mut ids: Vec<u32> = (0..row.len() as u32)
        .filter(|&i| !row[i as usize].is_nan())
        .collect();
    let by = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(k - 1, by);
    ids.truncate(k);
    ids.sort_by(by);
    ids.into_iter()
        .map(|i| (i, row[i as usize] - lse))
        .collect()
}
