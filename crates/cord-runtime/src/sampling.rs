//! Token sampling from one row of logits, with a per-sequence seeded RNG.
//!
//! Every sequence owns its own [`Sampler`] (parameters + RNG). The sampler only ever sees that
//! sequence's logits row, so the token chosen for a sequence does not depend on what else is in the
//! batch, nor on the order in which the engine visits sequences.
//!
//! Determinism: the RNG is ChaCha8 (`rand_chacha`), seeded with `SeedableRng::seed_from_u64`; both
//! are value-stable across platforms and releases. A uniform number is built from the top 53 bits of
//! one `next_u64` draw, so the sequence of draws does not depend on `rand`'s distribution code.
//! Candidates are ranked by (logit descending, id ascending) before the cumulative walk, so the
//! result does not depend on sort stability either.
//!
//! Non-finite logits: `NaN` and `-inf` entries are never chosen. If some entries are `+inf`, they
//! are the only candidates (equally likely; greedy takes the lowest id). A row with no usable entry
//! is an error, never a panic.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Errors from parameter validation or from sampling a row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("invalid sampling parameter {name}: {value} ({why})")]
    InvalidParam {
        name: &'static str,
        value: f32,
        why: &'static str,
    },
    #[error("empty logits row")]
    EmptyLogits,
    #[error("no finite logit to sample from (all NaN or -inf)")]
    NoValidLogits,
    #[error("logits row of {0} entries is too large for u32 token ids")]
    TooManyLogits(usize),
}

/// Sampling parameters of one request.
///
/// * `temperature`: `0` means greedy (argmax, ties go to the lowest id); otherwise logits are divided
///   by it before the softmax. Must be finite and `>= 0`.
/// * `top_p`: nucleus sampling; keep the smallest set of most likely tokens whose probability mass
///   reaches `top_p`. `1.0` = off. Must be in `(0, 1]`.
/// * `top_k`: keep only the `top_k` most likely tokens; `0` = off.
/// * `min_p`: drop tokens whose probability is below `min_p` times the largest probability; `0.0` =
///   off. Must be in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
}

impl Default for SamplingParams {
    /// Plain sampling from the model's distribution: temperature 1, all filters off.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether these parameters select the argmax (temperature 0 or `top_k == 1`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks the ranges documented on the struct.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name, value, why| Err(SamplingError::InvalidParam { name, value, why });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", self.temperature, "must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "must be in [0, 1]");
        }
        Ok(())
    }
}

/// A per-sequence sampler: parameters plus a seeded RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for one sequence. The same `(params, seed)` and the same logits rows always give
    /// the same tokens.
    pub fn new(params: SamplingParams, seed: u64) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Samples one token id from a logits row (`logits[i]` is the logit of token `i`).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::EmptyLogits);
        }
        if u32::try_from(logits.len()).is_err() {
            return Err(SamplingError::TooManyLogits(logits.len()));
        }
        if self.params.is_greedy() {
            return argmax(logits).ok_or(SamplingError::NoValidLogits);
        }
        // +inf logits dominate every finite one: sample uniformly among them.
        let inf: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize] == f32::INFINITY)
            .collect();
        if !inf.is_empty() {
            let pick = (self.uniform() * inf.len() as f64) as usize;
            return Ok(inf[pick.min(inf.len() - 1)]);
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let mut cands: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(i, &x)| (i as u32, x as f64 * inv_t))
            .collect();
        if cands.is_empty() {
            return Err(SamplingError::NoValidLogits);
        }
        // Rank: larger logit first, then lower id first.
        let rank = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, rank);
            cands.truncate(k);
        }
        let max = cands.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
        // min_p relative to the most likely token: p_i >= min_p * p_max  <=>  x_i - max >= ln(min_p).
        if self.params.min_p > 0.0 {
            let floor = (self.params.min_p as f64).ln();
            cands.retain(|c| c.1 - max >= floor);
        }
        let total: f64 = cands.iter().map(|c| (c.1 - max).exp()).sum();
        let target = self.params.top_p as f64 * total;
        if self.params.top_p < 1.0 {
            // Only candidates at least as likely as some threshold θ can be in the top-p prefix
            // when the mass of those ≥ θ already reaches the target: sort just those (the prefix
            // and its sums are exactly the ones a full sort gives), not a whole 150k vocabulary.
            let mut theta = 1.0 / 1024.0;
            while theta > 1e-300 {
                let mass: f64 = cands
                    .iter()
                    .map(|c| (c.1 - max).exp())
                    .filter(|&p| p >= theta)
                    .sum();
                if mass >= target {
                    cands.retain(|c| (c.1 - max).exp() >= theta);
                    break;
                }
                theta /= 64.0;
            }
        }
        cands.sort_unstable_by(rank);
        let mut probs: Vec<f64> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let u = self.uniform() * total;
        let mut acc = 0.0;
        for (c, p) in cands.iter().zip(&probs) {
            acc += p;
            if u < acc {
                return Ok(c.0);
            }
        }
        // Rounding left `u` at the very end of the mass: take the last kept candidate.
        Ok(cands[probs.len() - 1].0)
    }

    /// A uniform number in `[0, 1)` from the top 53 bits of one 64-bit draw.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest non-NaN logit; ties go to the lowest id. `None` if every entry is NaN or
/// `-inf`.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() || x == f32::NEG_INFINITY {
            continue;
        }
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.and_then(|(i, _)| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Top-p by sorting the whole vocabulary (the definition) with the sampler's next uniform.
    fn full_sort_top_p(s: &mut Sampler, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / s.params.temperature as f64;
        let mut c: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, x as f64 * inv_t))
            .collect();
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = c[0].1;
        let mut p: Vec<f64> = c.iter().map(|x| (x.1 - max).exp()).collect();
        let target = s.params.top_p as f64 * p.iter().sum::<f64>();
        let mut acc = 0.0;
        let keep = p.iter().position(|&q| {
            acc += q;
            acc >= target
        });
        p.truncate(keep.map_or(p.len(), |k| k + 1));
        let u = s.uniform() * p.iter().sum::<f64>();
        let mut acc = 0.0;
        for (x, q) in c.iter().zip(&p) {
            acc += q;
            if u < acc {
                return x.0;
            }
        }
        c[p.len() - 1].0
    }

    #[test]
    fn thresholded_top_p_equals_a_full_sort() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..40 {
            let v = 500 + case * 97;
            // Peaked, flat and in-between distributions.
            let scale = [0.1, 1.0, 4.0, 12.0][case % 4];
            let logits: Vec<f32> = (0..v).map(|_| (next() * scale) as f32).collect();
            for top_p in [0.5f32, 0.9, 0.95, 0.999] {
                let params = SamplingParams {
                    temperature: 0.7,
                    top_p,
                    top_k: 0,
                    min_p: 0.0,
                };
                let mut a = Sampler::new(params, case as u64).unwrap();
                let mut b = Sampler::new(params, case as u64).unwrap();
                for _ in 0..20 {
                    assert_eq!(a.sample(&logits).unwrap(), full_sort_top_p(&mut b, &logits));
                }
            }
        }
    }

    fn softmax(xs: &[f32], t: f64) -> Vec<f64> {
        let m = xs
            .iter()
            .map(|&x| x as f64 / t)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = xs.iter().map(|&x| (x as f64 / t - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut h = vec![0.0; logits.len()];
        for _ in 0..n {
            h[s.sample(logits).unwrap() as usize] += 1.0;
        }
        h.iter().map(|c| c / n as f64).collect()
    }

    #[test]
    fn greedy_takes_argmax_and_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), 1).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 3.0]).unwrap(), 1);
        assert_eq!(s.sample(&[5.0, 5.0]).unwrap(), 0);
        assert_eq!(s.sample(&[f32::NAN, -1.0, f32::NAN, 2.0]).unwrap(), 3);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -1e30]).unwrap(), 1);
        assert_eq!(s.sample(&[1.0, f32::INFINITY, f32::INFINITY]).unwrap(), 1);
        let mut k1 = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..Default::default()
            },
            9,
        )
        .unwrap();
        assert_eq!(k1.sample(&[0.0, 0.5, 0.49]).unwrap(), 1);
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        for params in [SamplingParams::greedy(), SamplingParams::default()] {
            let mut s = Sampler::new(params, 0).unwrap();
            assert_eq!(s.sample(&[]), Err(SamplingError::EmptyLogits));
            assert_eq!(
                s.sample(&[f32::NAN, f32::NEG_INFINITY]),
                Err(SamplingError::NoValidLogits)
            );
        }
    }

    #[test]
    fn invalid_params_are_rejected() {
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::INFINITY,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: -0.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: f32::NAN,
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(
                matches!(Sampler::new(p, 0), Err(SamplingError::InvalidParam { .. })),
                "{p:?}"
            );
        }
    }

    #[test]
    fn never_picks_nan_or_neg_inf() {
        let logits = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0, f32::NAN];
        let mut s = Sampler::new(SamplingParams::default(), 3).unwrap();
        for _ in 0..2000 {
            let t = s.sample(&logits).unwrap();
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    #[test]
    fn pos_inf_entries_are_the_only_candidates() {
        let logits = [1e30, f32::INFINITY, 0.0, f32::INFINITY];
        let mut s = Sampler::new(SamplingParams::default(), 5).unwrap();
        let h = histogram(&mut s, &logits, 4000);
        assert_eq!(h[0] + h[2], 0.0);
        assert!(
            (h[1] - 0.5).abs() < 0.05 && (h[3] - 0.5).abs() < 0.05,
            "{h:?}"
        );
    }

    #[test]
    fn frequencies_follow_the_tempered_softmax() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5];
        for t in [1.0f32, 0.5, 2.0] {
            let mut s = Sampler::new(
                SamplingParams {
                    temperature: t,
                    ..Default::default()
                },
                11,
            )
            .unwrap();
            let h = histogram(&mut s, &logits, 40_000);
            let p = softmax(&logits, t as f64);
            for (a, b) in h.iter().zip(&p) {
                assert!((a - b).abs() < 0.012, "t={t}: {h:?} vs {p:?}");
            }
        }
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        // probabilities at t=1: softmax([3, 2, 1, 0, -1]) = [.636, .234, .086, .032, .012]
        let logits = [0.0f32, 3.0, -1.0, 2.0, 1.0];
        let support = |params: SamplingParams| {
            let mut s = Sampler::new(params, 17).unwrap();
            let h = histogram(&mut s, &logits, 20_000);
            (0..logits.len())
                .filter(|&i| h[i] > 0.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            support(SamplingParams {
                top_k: 2,
                ..Default::default()
            }),
            vec![1, 3]
        );
        assert_eq!(
            support(SamplingParams {
                top_k: 3,
                ..Default::default()
            }),
            vec![1, 3, 4]
        );
        // 0.636 < 0.8 <= 0.870: two tokens; 0.870 < 0.9 <= 0.956: three.
        assert_eq!(
            support(SamplingParams {
                top_p: 0.8,
                ..Default::default()
            }),
            vec![1, 3]
        );
        assert_eq!(
            support(SamplingParams {
                top_p: 0.9,
                ..Default::default()
            }),
            vec![1, 3, 4]
        );
        // p / p_max: [.050, 1, .018, .368, .135]
        assert_eq!(
            support(SamplingParams {
                min_p: 0.1,
                ..Default::default()
            }),
            vec![1, 3, 4]
        );
        assert_eq!(
            support(SamplingParams {
                min_p: 0.3,
                ..Default::default()
            }),
            vec![1, 3]
        );
        assert_eq!(
            support(SamplingParams {
                min_p: 0.04,
                top_k: 4,
                top_p: 1.0,
                temperature: 1.0
            }),
            vec![0, 1, 3, 4]
        );
        // Within the kept set the probabilities are renormalised.
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 2,
                ..Default::default()
            },
            23,
        )
        .unwrap();
        let h = histogram(&mut s, &logits, 40_000);
        let p1 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((h[1] - p1).abs() < 0.01, "{} vs {p1}", h[1]);
    }

    #[test]
    fn same_seed_same_tokens_regardless_of_other_sequences() {
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|r| {
                (0..97)
                    .map(|i| ((i * 31 + r * 17) % 23) as f32 * 0.3)
                    .collect()
            })
            .collect();
        let params = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.01,
        };
        let alone: Vec<u32> = {
            let mut s = Sampler::new(params, 1234).unwrap();
            rows.iter().map(|r| s.sample(r).unwrap()).collect()
        };
        // Interleave with other sequences' samplers: the sequence's own output must not change.
        let mut a = Sampler::new(params, 1234).unwrap();
        let mut others: Vec<Sampler> = (0..3).map(|i| Sampler::new(params, i).unwrap()).collect();
        let mut mixed = Vec::new();
        for r in &rows {
            for o in others.iter_mut() {
                o.sample(&rows[7]).unwrap();
            }
            mixed.push(a.sample(r).unwrap());
        }
        assert_eq!(alone, mixed);
        // A different seed gives a different sequence.
        let mut b = Sampler::new(params, 1235).unwrap();
        let other: Vec<u32> = rows.iter().map(|r| b.sample(r).unwrap()).collect();
        assert_ne!(alone, other);
    }

    #[test]
    fn rng_stream_and_samples_are_pinned() {
        // ChaCha8 seeded with seed_from_u64 is value-stable across platforms and releases; pinning
        // the raw draws and a short sampled sequence catches any change of RNG, of the uniform
        // construction or of the candidate ordering.
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let draws: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(draws, PINNED_DRAWS);
        let mut s = Sampler::new(SamplingParams::default(), 42).unwrap();
        assert_eq!(s.uniform(), (draws[0] >> 11) as f64 / (1u64 << 53) as f64);
        let logits: Vec<f32> = (0..10).map(|i| (i % 4) as f32 * 0.5).collect();
        let params = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 8,
            min_p: 0.05,
        };
        let mut s = Sampler::new(params, 7).unwrap();
        let got: Vec<u32> = (0..12).map(|_| s.sample(&logits).unwrap()).collect();
        assert_eq!(got, PINNED_SAMPLES);
    }
    const PINNED_DRAWS: [u64; 3] = [
        12578764544318200737,
        17529487244874322312,
        7886285670807131020,
    ];
    const PINNED_SAMPLES: [u32; 12] = [3, 3, 2, 6, 2, 7, 3, 6, 7, 5, 3, 7];
}
