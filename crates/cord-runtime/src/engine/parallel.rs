//! Several models at once: [`Engine::generate_many`] / [`Engine::score_many`] run one batch per
//! model, on one thread per device (or per model, or none: [`Parallel`]).

use super::{
    DeviceSpec, Engine, EngineError, EngineModel, GenOutput, GenRequest, ModelId, Result,
    ScoreOutput, TokenScoreRequest,
};

/// How [`Engine::generate_many`] / [`Engine::score_many`] spread models over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallel {
    /// One thread per device (all CPU models share one): the default.
    #[default]
    Device,
    /// One thread per model, even on one device.
    Model,
    /// Everything on the calling thread, in job order.
    None,
}

impl Engine {
    /// [`Engine::generate`] for several models: one batch per model, results in job order.
    /// Models on different devices run at the same time, one thread per device; models on one
    /// device run one after another (they would only compete for its compute units), unless
    /// `by` is [`Parallel::Model`].
    pub fn generate_many(
        &mut self,
        jobs: &[(ModelId, Vec<GenRequest>)],
        by: Parallel,
    ) -> Result<Vec<Vec<GenOutput>>> {
        self.run_many(jobs, by, |m, r| m.generate_timed(r, &mut |_, _| {}))
    }

    /// [`Engine::score`] for several models, concurrent across devices as [`Engine::generate_many`].
    pub fn score_many(
        &mut self,
        jobs: &[(ModelId, Vec<TokenScoreRequest>)],
        by: Parallel,
    ) -> Result<Vec<Vec<ScoreOutput>>> {
        self.run_many(jobs, by, |m, r| m.score_timed(r, 0))
    }

    fn run_many<R: Sync, O: Send>(
        &mut self,
        jobs: &[(ModelId, Vec<R>)],
        by: Parallel,
        f: impl Fn(&mut EngineModel, &[R]) -> Result<Vec<O>> + Sync,
    ) -> Result<Vec<Vec<O>>> {
        // Lanes: the jobs that run one after another on one thread.
        let mut lanes: Vec<(usize, Vec<usize>)> = Vec::new();
        for (j, (id, _)) in jobs.iter().enumerate() {
            let m = self.model(*id)?;
            let key = match by {
                Parallel::Device => match m.device {
                    DeviceSpec::Cpu => usize::MAX,
                    DeviceSpec::Cuda(n) => n,
                },
                Parallel::Model => id.0,
                Parallel::None => 0,
            };
            match lanes.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(j),
                None => lanes.push((key, vec![j])),
            }
        }
        for (i, (id, _)) in jobs.iter().enumerate() {
            if jobs[..i].iter().any(|(other, _)| other == id) {
                return Err(EngineError::Invalid(format!(
                    "model {} appears twice in one multi-model call",
                    id.0
                )));
            }
        }
        let mut slots: Vec<Option<&mut EngineModel>> = self.models.iter_mut().map(Some).collect();
        let mut work: Vec<Vec<(usize, &mut EngineModel)>> = Vec::new();
        for (_, js) in &lanes {
            let mut lane = Vec::new();
            for &j in js {
                let m = slots[jobs[j].0.0].take().expect("each model once");
                lane.push((j, m));
            }
            work.push(lane);
        }
        let run_lane = |lane: Vec<(usize, &mut EngineModel)>| -> Vec<(usize, Result<Vec<O>>)> {
            lane.into_iter()
                .map(|(j, m)| (j, f(m, &jobs[j].1)))
                .collect()
        };
        let done: Vec<(usize, Result<Vec<O>>)> = if work.len() <= 1 {
            work.into_iter().flat_map(run_lane).collect()
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|lane| sc.spawn(|| run_lane(lane)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("model thread panicked"))
                    .collect()
            })
        };
        let mut out: Vec<Option<Vec<O>>> = (0..jobs.len()).map(|_| None).collect();
        for (j, r) in done {
            out[j] = Some(r?);
        }
        Ok(out.into_iter().map(|o| o.expect("every job ran")).collect())
    }
}
