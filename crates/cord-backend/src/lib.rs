//! The real [`Backend`]: the pool's teachers and scorers as models of one
//! [`cord_runtime::engine::Engine`].
//!
//! Each distinct model (spec, device, dtype) is loaded once; teachers that share weights (a
//! homogeneous pool) and a meta-prover that is also a teacher share that model, its KV cache and
//! its prefix cache. Requests of one kind are grouped per model, so every model runs one
//! batched generation (or one batched scoring pass) per round over all problems and beams.

use std::collections::BTreeMap;

use candle_core::DType;
use cord_decode::backend::{
    AnswerRequest, Backend, Finish, Proposal, ProposeRequest, Score, ScoreRequest,
};
use cord_decode::config::{PoolConfig, ScorerModel};
use cord_decode::error::{Error, Result};
pub use cord_runtime::engine::Attention;
pub use cord_runtime::engine::Parallel;
use cord_runtime::engine::TokenScoreRequest;
use cord_runtime::engine::{
    DeviceSpec, Engine, EngineError, GenRequest, ModelId, ModelOptions, ModelStats,
};
use cord_runtime::memory::DEFAULT_GPU_MEMORY_FRACTION;
pub use cord_runtime::memory::{CPU_AUTO_KV, KvMemory};
use cord_runtime::sampling::SamplingParams;

/// Engine-level settings that are not part of the pool file.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// KV cache memory per model.
    pub kv_memory: KvMemory,
    /// Most new tokens per forward call.
    pub max_batch_tokens: usize,
    /// Replaces every teacher's / scorer's device (e.g. `--device cpu`).
    pub device_override: Option<String>,
    /// How models run concurrently within one round (default: one thread per device, so
    /// teachers on different GPUs decode at the same time).
    pub parallel: Parallel,
    /// Share of each GPU's memory that weights + KV pools may take.
    pub gpu_memory_fraction: f64,
    /// How every model's attention reads the paged cache.
    pub attention: Attention,
    /// GGUF on the CPU: which kernel runs the Q8_0 matmuls.
    pub cpu_gemm: cord_runtime::engine::CpuGemm,
    /// Hub ids: download on a cache miss.
    pub allow_download: bool,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kv_memory: KvMemory::default(),
            max_batch_tokens: ModelOptions::default().max_batch_tokens,
            device_override: None,
            parallel: Parallel::Device,
            gpu_memory_fraction: DEFAULT_GPU_MEMORY_FRACTION,
            attention: Attention::default(),
            cpu_gemm: cord_runtime::engine::CpuGemm::default(),
            allow_download: true,
        }
    }
}

struct Role {
    name: String,
    model: ModelId,
    params: SamplingParams,
    /// `None`: the template's own default; `Some(s)`: this system prompt (empty = none).
    system: Option<String>,
    prefill_think: bool,
}

/// The pool on an [`Engine`].
pub struct EngineBackend {
    engine: Engine,
    parallel: Parallel,
    teachers: Vec<Role>,
    scorers: Vec<Role>,
}

fn engine_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(e)
}

/// A pool entry's dtype on `device`: [`cord_runtime::engine::parse_dtype`], except that `bf16`
/// on the CPU computes in f32 (candle's CPU bf16 matmuls are slow and gain nothing here; the
/// pool's `dtype` documents it).
fn pool_dtype(s: &str, device: DeviceSpec) -> Result<Option<DType>> {
    let dtype = cord_runtime::engine::parse_dtype(s).map_err(|e| Error::Config {
        key: "dtype".into(),
        message: e.to_string(),
    })?;
    Ok(match (dtype, device) {
        (Some(DType::BF16), DeviceSpec::Cpu) => Some(DType::F32),
        (d, _) => d,
    })
}

/// Every model of the pool as (role, spec, device, dtype), teachers first; a scorer that is a
/// teacher is not listed again.
fn pool_models(pool: &PoolConfig) -> Vec<(String, String, Option<String>, String)> {
    let mut v: Vec<_> = pool
        .teachers
        .iter()
        .map(|t| {
            (
                format!("teacher `{}`", t.name),
                t.model.clone(),
                t.device.clone(),
                t.dtype.clone(),
            )
        })
        .collect();
    for s in pool.scorers() {
        if let ScorerModel::Model(spec) = s.model {
            v.push((
                format!("scorer `{}`", s.name),
                spec,
                pool.scorer.device.clone(),
                pool.scorer.dtype.clone().unwrap_or_else(|| "bf16".into()),
            ));
        }
    }
    v
}

/// KV bytes per model on each device the pool uses (see [`KvMemory`]).
fn kv_per_device(
    pool: &PoolConfig,
    opts: &BackendOptions,
    engine: &mut Engine,
) -> Result<BTreeMap<DeviceSpec, u64>> {
    // Distinct models per device (roles sharing a spec, device and dtype share one model).
    let mut per_device: BTreeMap<DeviceSpec, Vec<(String, String)>> = BTreeMap::new();
    for (role, spec, device, dtype) in pool_models(pool) {
        let device = role_device(opts, device.as_deref(), &role)?;
        let models = per_device.entry(device).or_default();
        if !models.iter().any(|(s, d)| *s == spec && *d == dtype) {
            models.push((spec, dtype));
        }
    }
    let mut out = BTreeMap::new();
    for (device, models) in per_device {
        let mut resolved = Vec::with_capacity(models.len());
        for (spec, dtype) in models {
            resolved.push((spec, pool_dtype(&dtype, device)?));
        }
        let bytes = engine
            .kv_pool_bytes(opts.kv_memory, device, &resolved)
            .map_err(|e| match e {
                EngineError::KvAuto(_) => Error::backend(e),
                e => load_err(&device.to_string(), e),
            })?;
        out.insert(device, bytes);
    }
    Ok(out)
}

/// A role's device: `--device` if given, else the pool entry's, else the CPU.
fn role_device(opts: &BackendOptions, device: Option<&str>, role: &str) -> Result<DeviceSpec> {
    let dev_str = opts.device_override.as_deref().or(device).unwrap_or("cpu");
    DeviceSpec::parse(dev_str).map_err(|e| load_err(role, e))
}

fn load_err(role: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Load {
        role: role.to_string(),
        cause: Box::new(e),
    }
}

impl EngineBackend {
    /// Checks the pool's models without loading any weights (devices, dtypes, model specs:
    /// see [`Engine::check_model`]), so that a bad pool fails at once rather than after
    /// minutes of loading the models before the bad one.
    pub fn check(pool: &PoolConfig, opts: &BackendOptions) -> Result<()> {
        for (role, spec, device, dtype) in pool_models(pool) {
            let device = role_device(opts, device.as_deref(), &role)?;
            pool_dtype(&dtype, device)?;
            Engine::check_model(&spec, device).map_err(|e| load_err(&role, e))?;
        }
        Ok(())
    }

    /// Loads every model of the pool.
    pub fn from_pool(pool: &PoolConfig, opts: &BackendOptions) -> Result<Self> {
        let mut engine = Engine::new();
        engine
            .set_gpu_memory_fraction(opts.gpu_memory_fraction)
            .map_err(|e| Error::Config {
                key: "gpu_memory_fraction".into(),
                message: e.to_string(),
            })?;
        let kv_bytes = kv_per_device(pool, opts, &mut engine)?;
        let load = |role: &str,
                    spec: &str,
                    device: Option<&str>,
                    dtype: &str,
                    engine: &mut Engine|
         -> Result<ModelId> {
            let device = role_device(opts, device, role)?;
            let mo = ModelOptions {
                device,
                dtype: pool_dtype(dtype, device)?,
                kv_memory: kv_bytes.get(&device).copied().unwrap_or(CPU_AUTO_KV),
                max_batch_tokens: opts.max_batch_tokens,
                attention: opts.attention,
                cpu_gemm: opts.cpu_gemm,
                allow_download: opts.allow_download,
                ..ModelOptions::default()
            };
            tracing::info!(model = spec, %device, "loading");
            engine.add_model(spec, &mo).map_err(|e| load_err(role, e))
        };
        let mut teachers = Vec::new();
        for t in &pool.teachers {
            let role = format!("teacher `{}`", t.name);
            let model = load(&role, &t.model, t.device.as_deref(), &t.dtype, &mut engine)?;
            teachers.push(Role {
                name: t.name.clone(),
                model,
                params: SamplingParams {
                    temperature: t.temperature as f32,
                    top_p: t.top_p as f32,
                    top_k: t.top_k.unwrap_or(0),
                    min_p: t.min_p.unwrap_or(0.0) as f32,
                },
                system: t.system_prompt.clone(),
                prefill_think: false,
            });
        }
        for (k, role) in teachers.iter_mut().enumerate() {
            role.prefill_think = pool.prefill_think(k);
        }
        let mut scorers = Vec::new();
        for s in pool.scorers() {
            let role = match s.model {
                ScorerModel::Teacher(k) => Role {
                    name: s.name.clone(),
                    model: teachers[k].model,
                    params: teachers[k].params,
                    system: teachers[k].system.clone(),
                    prefill_think: teachers[k].prefill_think,
                },
                ScorerModel::Model(spec) => {
                    let dtype = pool.scorer.dtype.clone().unwrap_or_else(|| "bf16".into());
                    let role = format!("scorer `{}`", s.name);
                    let model = load(
                        &role,
                        &spec,
                        pool.scorer.device.as_deref(),
                        &dtype,
                        &mut engine,
                    )?;
                    Role {
                        name: s.name.clone(),
                        model,
                        params: SamplingParams::default(),
                        system: pool.scorer.system_prompt.clone(),
                        prefill_think: pool.search.prefill_think,
                    }
                }
            };
            scorers.push(role);
        }
        Ok(EngineBackend {
            engine,
            parallel: opts.parallel,
            teachers,
            scorers,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for requests outside the search (`cord serve`'s chat and scoring endpoints
    /// run on the pool's models between searches).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Every role by name with its engine model: the teachers in pool order, then the scorers
    /// that are not teachers.
    pub fn roles(&self) -> Vec<(String, ModelId)> {
        let mut v: Vec<(String, ModelId)> = self
            .teachers
            .iter()
            .map(|t| (t.name.clone(), t.model))
            .collect();
        for s in &self.scorers {
            if !v.iter().any(|(n, _)| *n == s.name) {
                v.push((s.name.clone(), s.model));
            }
        }
        v
    }

    /// Per-model counters, keyed by model name.
    pub fn model_stats(&self) -> BTreeMap<String, ModelStats> {
        self.engine
            .models()
            .iter()
            .map(|m| (m.name().to_string(), m.stats().clone()))
            .collect()
    }

    /// The model input for `role`: template(system, question) + `<think>\n` (if the role wants it)
    /// + raw assistant text. The template layer never emits `<think>` twice.
    fn prompt(&self, role: &Role, question: &str, raw: &str) -> Result<String> {
        let system = match role.system.as_deref() {
            Some("") => None,
            other => other,
        };
        let open = if role.prefill_think { "<think>\n" } else { "" };
        let m = self.engine.model(role.model).map_err(engine_err)?;
        m.render(system, question, &format!("{open}{raw}"))
            .map_err(engine_err)
    }

    /// Runs generation requests grouped by model, returning results in request order.
    fn run_generation(&mut self, reqs: Vec<(ModelId, GenRequest)>) -> Result<Vec<Proposal>> {
        let mut out: Vec<Option<Proposal>> = vec![None; reqs.len()];
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, (m, _)) in reqs.iter().enumerate() {
            groups.entry(m.0).or_default().push(i);
        }
        // One batch per model; models on different GPUs generate at the same time.
        let jobs: Vec<(ModelId, Vec<GenRequest>)> = groups
            .iter()
            .map(|(&m, idx)| (ModelId(m), idx.iter().map(|&i| reqs[i].1.clone()).collect()))
            .collect();
        let results = self
            .engine
            .generate_many(&jobs, self.parallel)
            .map_err(engine_err)?;
        for ((_, idx), res) in groups.iter().zip(results) {
            for (&i, g) in idx.iter().zip(res) {
                let finish = match g.finish {
                    cord_runtime::engine::Finish::Eos => Finish::Eos,
                    cord_runtime::engine::Finish::Stop(s) => Finish::Stop(s),
                    cord_runtime::engine::Finish::Length => Finish::Length,
                };
                out[i] = Some(Proposal {
                    text: g.text,
                    finish,
                    tokens: g.token_ids.len(),
                    reused_tokens: g.reused_tokens,
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every request answered"))
            .collect())
    }
}

impl Backend for EngineBackend {
    fn propose(&mut self, reqs: &[ProposeRequest]) -> Result<Vec<Proposal>> {
        let mut batch = Vec::with_capacity(reqs.len());
        for r in reqs {
            let role = self
                .teachers
                .get(r.teacher)
                .ok_or_else(|| Error::Protocol(format!("no teacher {}", r.teacher)))?;
            let prompt = self.prompt(role, &r.question, &r.reasoning)?;
            batch.push((
                role.model,
                GenRequest {
                    prompt,
                    params: role.params,
                    seed: r.seed,
                    max_new_tokens: r.max_new_tokens,
                    stop: r.stop.clone(),
                    keep_stop: false,
                },
            ));
        }
        self.run_generation(batch)
    }

    fn score(&mut self, reqs: &[ScoreRequest]) -> Result<Vec<Score>> {
        let mut out: Vec<Option<Score>> = vec![None; reqs.len()];
        let mut groups: BTreeMap<usize, Vec<(usize, TokenScoreRequest)>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate() {
            let role = self
                .scorers
                .get(r.scorer)
                .ok_or_else(|| Error::Protocol(format!("no scorer {}", r.scorer)))?;
            let context = self.prompt(role, &r.question, &r.context)?;
            groups.entry(role.model.0).or_default().push((
                i,
                TokenScoreRequest {
                    context,
                    continuation: r.target.clone(),
                },
            ));
        }
        let jobs: Vec<(ModelId, Vec<TokenScoreRequest>)> = groups
            .iter()
            .map(|(&m, items)| (ModelId(m), items.iter().map(|(_, s)| s.clone()).collect()))
            .collect();
        let results = self
            .engine
            .score_many(&jobs, self.parallel)
            .map_err(engine_err)?;
        for ((_, items), res) in groups.iter().zip(results) {
            for ((i, _), s) in items.iter().zip(res) {
                out[*i] = Some(Score {
                    mean_logprob: s.mean(),
                    m: s.logprobs.len(),
                    reused_tokens: s.reused_tokens,
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every request scored"))
            .collect())
    }

    fn answer(&mut self, reqs: &[AnswerRequest]) -> Result<Vec<Proposal>> {
        let mut batch = Vec::with_capacity(reqs.len());
        for r in reqs {
            let role = self
                .teachers
                .get(r.teacher)
                .ok_or_else(|| Error::Protocol(format!("no teacher {}", r.teacher)))?;
            let prompt = self.prompt(role, &r.question, &r.prefill())?;
            batch.push((
                role.model,
                GenRequest {
                    prompt,
                    params: role.params,
                    seed: r.seed,
                    max_new_tokens: r.max_new_tokens,
                    stop: r.stop.clone(),
                    keep_stop: false,
                },
            ));
        }
        self.run_generation(batch)
    }

    fn count_tokens(&mut self, teacher: usize, text: &str) -> Result<usize> {
        let role = self
            .teachers
            .get(teacher)
            .ok_or_else(|| Error::Protocol(format!("no teacher {teacher}")))?;
        self.engine
            .model(role.model)
            .map_err(engine_err)?
            .count_tokens(text)
            .map_err(engine_err)
    }

    fn num_teachers(&self) -> usize {
        self.teachers.len()
    }

    fn teacher_name(&self, k: usize) -> &str {
        self.teachers.get(k).map(|t| t.name.as_str()).unwrap_or("")
    }
}
