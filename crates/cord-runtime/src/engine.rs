//! The engine: several models resident at once, each with its own paged KV cache and radix prefix
//! cache, continuous batched generation and teacher-forced scoring over text.
//!
//! Text is the currency between models: every request carries fully rendered text, each model
//! tokenizes it with its own tokenizer, attaches the longest token prefix it already holds in its
//! prefix cache, and computes only the rest. Token ids never cross from one model to another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use cord_kv::{KvCache, KvError, SeqId};
use cord_models::{LoadOptions, LoadedModel, LogitsMode, SeqInput};

use crate::chat::ChatTemplate;
use crate::logprob::token_logprobs;
use crate::memory::{DeviceMemory, Placed};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::{FinishReason, Finished, StopChecker, StopConfig};

/// Errors of the engine. Model and cache errors are wrapped with the model's name.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid device `{0}`: expected `cpu` or `cuda:N`")]
    BadDevice(String),
    #[error("device {device}: {message}")]
    DeviceUnavailable { device: String, message: String },
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
    #[error(
        "model `{model}`: the KV cache is too small for one request ({needed} blocks needed, {total} in the pool); give it more KV memory (cord: --kv-mib)"
    )]
    KvTooSmall {
        model: String,
        needed: usize,
        total: usize,
    },
    #[error("{0}")]
    OutOfMemory(String),
    #[error("unknown model id {0}")]
    UnknownModel(usize),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

fn model_err(model: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        model: model.to_string(),
        message: e.to_string(),
    }
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(Self::Cpu);
        }
        if t == "cuda" || t == "gpu" {
            return Ok(Self::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:").or_else(|| t.strip_prefix("gpu:")) {
            return n
                .parse()
                .map(Self::Cuda)
                .map_err(|_| EngineError::BadDevice(s.to_string()));
        }
        Err(EngineError::BadDevice(s.to_string()))
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How to load one model into the engine.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: DeviceSpec,
    /// Weight/activation dtype for unquantized weights; `None` = f32 on CPU, bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Bytes of KV cache (all layers, K and V) for this model.
    pub kv_memory: u64,
    pub block_size: usize,
    /// Dequantize GGUF weights at load time.
    pub dequantize: bool,
    /// Most new tokens fed to one forward call (chunked prefill).
    pub max_batch_tokens: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            dtype: None,
            kv_memory: 1 << 30,
            block_size: 16,
            dequantize: false,
            max_batch_tokens: 1024,
        }
    }
}

/// Counters per model; the synthesis stats and `cord bench` read them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelStats {
    /// Prompt tokens of all requests (generation and scoring contexts).
    pub prompt_tokens: u64,
    /// Prompt tokens found in the prefix cache (not recomputed).
    pub reused_tokens: u64,
    /// Tokens run through the model (prefill + decode).
    pub computed_tokens: u64,
    /// Tokens sampled.
    pub generated_tokens: u64,
    /// Continuation tokens scored.
    pub scored_tokens: u64,
    pub forward_calls: u64,
    pub preemptions: u64,
    pub generate_seconds: f64,
    pub score_seconds: f64,
}

/// Handle of a model inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelId(pub usize);

/// One resident model.
pub struct EngineModel {
    pub name: String,
    pub key: String,
    pub loaded: Arc<LoadedModel>,
    pub device: DeviceSpec,
    pub kv: KvCache,
    pub template: ChatTemplate,
    pub stats: ModelStats,
    max_batch_tokens: usize,
}

/// A generation request over fully rendered text.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: String,
    pub params: SamplingParams,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Keep the matched stop string in the returned text.
    pub keep_stop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Stop(String),
    Length,
}

impl Finish {
    pub fn as_str(&self) -> &'static str {
        match self {
            Finish::Eos => "stop",
            Finish::Stop(_) => "stop_string",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub completion_tokens: usize,
}

/// Teacher-forced scoring of `continuation` after `context` (tokenized jointly).
#[derive(Debug, Clone)]
pub struct ScoreRequest {
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

/// Weight bytes of a loaded dense model (its parameter count in its dtype).
fn dense_bytes(m: &cord_models::Model) -> u64 {
    m.config().num_parameters() as u64 * m.dtype().size_in_bytes() as u64
}

#[cfg(feature = "cuda")]
fn cuda_total_memory(dev: &Device) -> std::result::Result<u64, String> {
    let cuda = dev.as_cuda_device().map_err(|e| e.to_string())?;
    cuda.cuda_stream()
        .context()
        .total_mem()
        .map(|b| b as u64)
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_total_memory(_dev: &Device) -> std::result::Result<u64, String> {
    Err("this build has no CUDA support".into())
}

/// The engine: models keyed by (spec, device, dtype), one candle device per ordinal, and a
/// memory budget per device ([`crate::memory`]).
pub struct Engine {
    models: Vec<EngineModel>,
    devices: HashMap<DeviceSpec, Device>,
    memory: HashMap<DeviceSpec, DeviceMemory>,
    /// Share of a GPU's total memory the models may take (default 0.9).
    gpu_memory_fraction: f64,
    budgets: HashMap<DeviceSpec, u64>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            models: vec![],
            devices: HashMap::new(),
            memory: HashMap::new(),
            gpu_memory_fraction: 0.9,
            budgets: HashMap::new(),
        }
    }
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Share of each GPU's total memory that weights + KV pools may take (for devices not
    /// opened yet).
    pub fn set_gpu_memory_fraction(&mut self, fraction: f64) -> Result<()> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(EngineError::Invalid(format!(
                "GPU memory fraction must be in (0, 1], got {fraction}"
            )));
        }
        self.gpu_memory_fraction = fraction;
        Ok(())
    }

    /// A fixed budget in bytes for a device (replaces the default of [`crate::memory`]).
    pub fn set_memory_budget(&mut self, device: DeviceSpec, bytes: u64) {
        self.budgets.insert(device, bytes);
        if let Some(m) = self.memory.get_mut(&device) {
            m.budget = bytes;
            m.basis = "set explicitly".into();
        }
    }

    /// The budget and placements of a device (once it has been opened).
    pub fn memory(&self, device: DeviceSpec) -> Option<&DeviceMemory> {
        self.memory.get(&device)
    }

    fn open_memory(&self, spec: DeviceSpec, dev: &Device) -> Result<DeviceMemory> {
        if let Some(&b) = self.budgets.get(&spec) {
            return Ok(DeviceMemory::new(b, "set explicitly"));
        }
        match spec {
            DeviceSpec::Cpu => Ok(match crate::memory::cpu_available() {
                Some(avail) => DeviceMemory::new(avail, "memory available when loading began"),
                None => DeviceMemory::new(u64::MAX, "unknown; not enforced"),
            }),
            DeviceSpec::Cuda(_) => {
                let total = cuda_total_memory(dev).map_err(|e| EngineError::DeviceUnavailable {
                    device: spec.to_string(),
                    message: format!("cannot read its memory size: {e}"),
                })?;
                let f = self.gpu_memory_fraction;
                Ok(DeviceMemory::new(
                    (total as f64 * f) as u64,
                    format!("{f:.2} of {} total", crate::memory::gib(total)),
                ))
            }
        }
    }

    /// What can be checked of a model without loading it: that `device` exists in this build
    /// and that `spec` names a model ([`cord_models::check_spec`]: a local checkpoint's config,
    /// tokenizer and weight files, a `.gguf` file or a hub id). Reads no weights.
    pub fn check_model(spec: &str, device: DeviceSpec) -> Result<()> {
        if let DeviceSpec::Cuda(_) = device
            && !candle_core::utils::cuda_is_available()
        {
            return Err(EngineError::DeviceUnavailable {
                device: device.to_string(),
                message: "this build of cord has no CUDA support (rebuild with --features cuda)"
                    .into(),
            });
        }
        cord_models::check_spec(spec).map_err(|e| model_err(spec, e))
    }

    /// The candle device for a spec; one per ordinal, shared by every model placed there.
    pub fn device(&mut self, spec: DeviceSpec) -> Result<Device> {
        if let Some(d) = self.devices.get(&spec) {
            return Ok(d.clone());
        }
        let dev = match spec {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(EngineError::DeviceUnavailable {
                        device: spec.to_string(),
                        message:
                            "this build of cord has no CUDA support (rebuild with --features cuda)"
                                .into(),
                    });
                }
                Device::new_cuda(n).map_err(|e| EngineError::DeviceUnavailable {
                    device: spec.to_string(),
                    message: e.to_string(),
                })?
            }
        };
        let mem = self.open_memory(spec, &dev)?;
        self.memory.insert(spec, mem);
        self.devices.insert(spec, dev.clone());
        Ok(dev)
    }

    /// Loads a model (or returns the already loaded one with the same spec, device and dtype).
    pub fn add_model(&mut self, spec: &str, opts: &ModelOptions) -> Result<ModelId> {
        let key = format!(
            "{spec}|{}|{:?}|{}",
            opts.device, opts.dtype, opts.dequantize
        );
        if let Some(i) = self.models.iter().position(|m| m.key == key) {
            return Ok(ModelId(i));
        }
        let device = self.device(opts.device)?;
        let dtype = opts.dtype.unwrap_or(match opts.device {
            DeviceSpec::Cpu => DType::F32,
            DeviceSpec::Cuda(_) => DType::BF16,
        });
        // Refuse a model that cannot fit before reading its weights.
        let estimate = cord_models::estimate_weight_bytes(spec, dtype, opts.dequantize);
        if let Some(w) = estimate {
            self.check_fits(spec, opts, w)?;
        }
        let load = LoadOptions {
            dtype,
            device: device.clone(),
            dequantize: opts.dequantize,
            ..Default::default()
        };
        let loaded = cord_models::load(spec, &load).map_err(|e| model_err(spec, e))?;
        let weights = estimate.unwrap_or_else(|| dense_bytes(&loaded.model));
        self.insert_placed(spec, key, Arc::new(loaded), opts, weights)
    }

    /// Whether `weights` plus the KV pool of `opts` fit what is left on the device.
    fn check_fits(&self, name: &str, opts: &ModelOptions, weights: u64) -> Result<()> {
        if let Some(m) = self.memory.get(&opts.device) {
            m.check(&opts.device.to_string(), name, weights, opts.kv_memory)
                .map_err(EngineError::OutOfMemory)?;
        }
        Ok(())
    }

    /// Adds an already loaded model (tests, random-weight benchmarks).
    pub fn add_loaded(
        &mut self,
        name: &str,
        loaded: Arc<LoadedModel>,
        opts: &ModelOptions,
    ) -> Result<ModelId> {
        let key = format!("loaded:{name}:{}", self.models.len());
        let weights = dense_bytes(&loaded.model);
        self.insert_placed(name, key, loaded, opts, weights)
    }

    fn insert_placed(
        &mut self,
        name: &str,
        key: String,
        loaded: Arc<LoadedModel>,
        opts: &ModelOptions,
        weights: u64,
    ) -> Result<ModelId> {
        if !self.memory.contains_key(&opts.device) {
            self.device(opts.device)?;
        }
        self.check_fits(name, opts, weights)?;
        let probe = loaded.model.kv_config(1, opts.block_size);
        let per_block = probe.bytes_per_block() as u64;
        let num_blocks = (opts.kv_memory / per_block.max(1)) as usize;
        if num_blocks < 2 {
            return Err(EngineError::Model {
                model: name.to_string(),
                message: format!(
                    "KV memory budget of {} bytes holds fewer than 2 blocks of {} bytes",
                    opts.kv_memory, per_block
                ),
            });
        }
        let kv = KvCache::new(loaded.model.kv_config(num_blocks, opts.block_size))
            .map_err(|e| model_err(name, e))?;
        if let Some(m) = self.memory.get_mut(&opts.device) {
            m.placed.push(Placed {
                model: name.to_string(),
                weights,
                kv: num_blocks as u64 * per_block,
            });
        }
        let (bos, eos) = (
            loaded.bos_token.as_deref().unwrap_or(""),
            loaded.eos_token.as_deref().unwrap_or(""),
        );
        // A model without a template (a base model) gets the documented plain format.
        let template = match &loaded.chat_template {
            Some(src) => ChatTemplate::new(src, bos, eos)
                .map_err(|e| model_err(name, format!("chat template: {e}")))?,
            None => ChatTemplate::plain(bos, eos),
        };
        self.models.push(EngineModel {
            name: name.to_string(),
            key,
            loaded,
            device: opts.device,
            kv,
            template,
            stats: ModelStats::default(),
            max_batch_tokens: opts.max_batch_tokens.max(1),
        });
        Ok(ModelId(self.models.len() - 1))
    }

    pub fn model(&self, id: ModelId) -> Result<&EngineModel> {
        self.models.get(id.0).ok_or(EngineError::UnknownModel(id.0))
    }

    pub fn model_mut(&mut self, id: ModelId) -> Result<&mut EngineModel> {
        self.models
            .get_mut(id.0)
            .ok_or(EngineError::UnknownModel(id.0))
    }

    pub fn models(&self) -> &[EngineModel] {
        &self.models
    }

    /// Generates for every request on one model, all sequences batched together.
    pub fn generate(&mut self, id: ModelId, reqs: &[GenRequest]) -> Result<Vec<GenOutput>> {
        self.generate_streaming(id, reqs, &mut |_, _| {})
    }

    /// As [`Engine::generate`], calling `on_text(request index, new text)` as text becomes final.
    pub fn generate_streaming(
        &mut self,
        id: ModelId,
        reqs: &[GenRequest],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<GenOutput>> {
        self.model_mut(id)?.generate_timed(reqs, on_text)
    }

    /// Teacher-forced log-probs of each continuation after its context, batched.
    pub fn score(&mut self, id: ModelId, reqs: &[ScoreRequest]) -> Result<Vec<ScoreOutput>> {
        self.model_mut(id)?.score_timed(reqs)
    }

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
        jobs: &[(ModelId, Vec<ScoreRequest>)],
        by: Parallel,
    ) -> Result<Vec<Vec<ScoreOutput>>> {
        self.run_many(jobs, by, |m, r| m.score_timed(r))
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

impl EngineModel {
    /// [`EngineModel::generate`] with the per-model counters and the debug trace line.
    fn generate_timed(
        &mut self,
        reqs: &[GenRequest],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<GenOutput>> {
        let t0 = Instant::now();
        let out = self.generate(reqs, on_text);
        let secs = t0.elapsed().as_secs_f64();
        self.stats.generate_seconds += secs;
        if let Ok(o) = &out {
            let toks: usize = o.iter().map(|g| g.completion_tokens).sum();
            let reused: usize = o.iter().map(|g| g.reused_tokens).sum();
            let prompt: usize = o.iter().map(|g| g.prompt_tokens).sum();
            tracing::debug!(model = %self.name, requests = reqs.len(), prompt, reused, generated = toks, secs, "generate");
        }
        out
    }

    /// [`EngineModel::score`] with the per-model counters and the debug trace line.
    fn score_timed(&mut self, reqs: &[ScoreRequest]) -> Result<Vec<ScoreOutput>> {
        let t0 = Instant::now();
        let out = self.score(reqs);
        let secs = t0.elapsed().as_secs_f64();
        self.stats.score_seconds += secs;
        if let Ok(o) = &out {
            let ctx: usize = o.iter().map(|s| s.context_tokens).sum();
            let reused: usize = o.iter().map(|s| s.reused_tokens).sum();
            tracing::debug!(model = %self.name, requests = reqs.len(), context = ctx, reused, secs, "score");
        }
        out
    }
}

/// State of one sequence during a generate call.
struct Active {
    req: usize,
    seq: Option<SeqId>,
    /// All tokens the sequence should hold: prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    reused: usize,
    sampler: Sampler,
    stop: StopChecker,
    finish: Option<Finish>,
    /// Final text and how many generated tokens it spans, once finished.
    done: Option<Finished>,
    /// Preempted for lack of KV blocks: not re-admitted while others run until one finishes
    /// (re-admitting at once would only preempt it again).
    blocked: bool,
}

impl EngineModel {
    /// Token ids of a rendered text for this model: no special tokens are added by the tokenizer
    /// (templates write their own), but a BOS is prepended when the model wants one and the text
    /// does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .loaded
            .tokenizer
            .encode(text, false)
            .map_err(|e| model_err(&self.name, e))?;
        let mut ids = enc.get_ids().to_vec();
        self.maybe_bos(text, &mut ids);
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// Refuses token ids past the embedding table (a special token the tokenizer knows but the
    /// model has no row for, written literally in the text).
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.loaded.model.config().vocab_size;
        match ids.iter().find(|&&t| t as usize >= vocab) {
            Some(&t) => Err(EngineError::Invalid(format!(
                "{}: the text contains token {t} ({:?}), which the model has no embedding for (vocab_size {vocab})",
                self.name,
                self.loaded.tokenizer.id_to_token(t).unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }

    fn bos_id(&self) -> Option<u32> {
        let bos = self.loaded.bos_token.as_deref()?;
        self.loaded.tokenizer.token_to_id(bos)
    }

    fn maybe_bos(&self, text: &str, ids: &mut Vec<u32>) -> bool {
        if !self.loaded.add_bos {
            return false;
        }
        let (Some(bos), Some(bos_id)) = (self.loaded.bos_token.as_deref(), self.bos_id()) else {
            return false;
        };
        if text.starts_with(bos) || ids.first() == Some(&bos_id) {
            return false;
        }
        ids.insert(0, bos_id);
        true
    }

    /// Number of tokens of `text` in this model's tokenizer (no special tokens).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let enc = self
            .loaded
            .tokenizer
            .encode(text, false)
            .map_err(|e| model_err(&self.name, e))?;
        Ok(enc.get_ids().len())
    }

    /// Renders system + user with the model's chat template and appends `prefill` as raw text,
    /// never emitting `<think>` twice. Models without a template get a plain format.
    pub fn render(&self, system: Option<&str>, user: &str, prefill: &str) -> Result<String> {
        self.template
            .prompt_with_prefill(system, user, prefill)
            .map_err(|e| model_err(&self.name, e))
    }

    fn generate(
        &mut self,
        reqs: &[GenRequest],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<GenOutput>> {
        let eos = self.loaded.eos_token_ids.clone();
        let mut act = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let tokens = self.encode(&r.prompt)?;
            if tokens.is_empty() {
                return Err(EngineError::Invalid(format!("request {i}: empty prompt")));
            }
            let cfg = StopConfig {
                eos_token_ids: eos.clone(),
                stop_strings: r.stop.clone(),
                max_new_tokens: r.max_new_tokens,
                include_stop_string: r.keep_stop,
                skip_special_tokens: true,
            };
            let ctx_from = tokens.len().saturating_sub(4);
            let stop = StopChecker::with_context(cfg, &tokens[ctx_from..]);
            let prompt_len = tokens.len();
            let sampler = Sampler::new(r.params, r.seed)
                .map_err(|e| EngineError::Invalid(format!("request {i}: {e}")))?;
            act.push(Active {
                req: i,
                seq: None,
                tokens,
                prompt_len,
                reused: 0,
                sampler,
                stop,
                finish: if r.max_new_tokens == 0 {
                    Some(Finish::Length)
                } else {
                    None
                },
                done: None,
                blocked: false,
            });
        }
        self.run_generation(&mut act, on_text)?;
        let mut outs = Vec::with_capacity(act.len());
        for a in act {
            let generated = &a.tokens[a.prompt_len..];
            let (text, kept) = match &a.done {
                Some(f) => (f.text.clone(), f.tokens_to_keep.min(generated.len())),
                None => (a.stop.text().to_string(), generated.len()),
            };
            self.stats.prompt_tokens += a.prompt_len as u64;
            self.stats.reused_tokens += a.reused as u64;
            outs.push(GenOutput {
                text,
                token_ids: generated[..kept].to_vec(),
                finish: a.finish.unwrap_or(Finish::Length),
                prompt_tokens: a.prompt_len,
                reused_tokens: a.reused,
                completion_tokens: generated.len(),
            });
        }
        Ok(outs)
    }

    /// Attaches the longest cached prefix of `tokens` (keeping at least `min_new` tokens to compute).
    fn attach(&mut self, tokens: &[u32], min_new: usize) -> Result<(SeqId, usize)> {
        let limit = tokens.len().saturating_sub(min_new);
        let (seq, cached) = self
            .kv
            .match_prefix(&tokens[..limit])
            .map_err(|e| model_err(&self.name, e))?;
        Ok((seq, cached))
    }

    /// Continuous batching: every iteration feeds one token per decoding sequence plus prefill
    /// chunks of the others, up to `max_batch_tokens`; sequences leave as they finish.
    fn run_generation(
        &mut self,
        act: &mut [Active],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<()> {
        loop {
            // Start sequences that have none yet (new or preempted).
            let mut batch: Vec<(usize, usize, usize)> = Vec::new(); // (active index, from, to)
            let mut budget = self.max_batch_tokens;
            // Decoding sequences first (one token each), then prefill chunks.
            let mut order: Vec<usize> = (0..act.len())
                .filter(|&i| act[i].finish.is_none())
                .collect();
            if order.is_empty() {
                break;
            }
            order.sort_by_key(|&i| {
                let a = &act[i];
                let held = a.seq.map(|s| self.kv.seq_len(s).unwrap_or(0)).unwrap_or(0);
                (a.tokens.len() - held > 1, a.req)
            });
            let any_running = act.iter().any(|a| a.seq.is_some() && a.finish.is_none());
            for &i in &order {
                if budget == 0 {
                    break;
                }
                if act[i].seq.is_none() && act[i].blocked && any_running {
                    continue;
                }
                if act[i].seq.is_none() {
                    let (seq, cached) = self.attach(&act[i].tokens.clone(), 1)?;
                    act[i].seq = Some(seq);
                    if act[i].tokens.len() == act[i].prompt_len || act[i].reused == 0 {
                        act[i].reused = act[i].reused.max(cached.min(act[i].prompt_len));
                    }
                }
                let seq = act[i].seq.expect("attached above");
                let held = self.kv.seq_len(seq).map_err(|e| model_err(&self.name, e))?;
                let n = (act[i].tokens.len() - held).min(budget);
                if n == 0 {
                    continue;
                }
                batch.push((i, held, held + n));
                budget -= n;
            }
            if batch.is_empty() {
                break;
            }
            let inputs: Vec<SeqInput> = batch
                .iter()
                .map(|&(i, from, to)| SeqInput {
                    seq: act[i].seq.expect("attached"),
                    tokens: &act[i].tokens[from..to],
                    logits: LogitsMode::Last,
                })
                .collect();
            let logits = match self.loaded.model.forward(&inputs, &mut self.kv) {
                Ok(l) => l,
                Err(e) if is_out_of_blocks(&e) => {
                    drop(inputs);
                    self.preempt(act, &batch)?;
                    continue;
                }
                Err(e) => return Err(model_err(&self.name, e)),
            };
            drop(inputs);
            self.stats.forward_calls += 1;
            self.stats.computed_tokens +=
                batch.iter().map(|&(_, f, t)| (t - f) as u64).sum::<u64>();
            let rows: Vec<Vec<f32>> = logits
                .to_vec2::<f32>()
                .map_err(|e| model_err(&self.name, e))?;
            for (row, &(i, _, to)) in rows.iter().zip(&batch) {
                let a = &mut act[i];
                if to < a.tokens.len() {
                    continue; // prefill chunk that has not reached the end yet
                }
                let tok = a
                    .sampler
                    .sample(row)
                    .map_err(|e| model_err(&self.name, e))?;
                a.tokens.push(tok);
                self.stats.generated_tokens += 1;
                let step = a
                    .stop
                    .push(&self.loaded.tokenizer, tok)
                    .map_err(|e| model_err(&self.name, e))?;
                if !step.delta.is_empty() {
                    on_text(a.req, &step.delta);
                }
                if let Some(f) = step.finished {
                    a.finish = Some(match &f.reason {
                        FinishReason::Eos => Finish::Eos,
                        FinishReason::Stop(s) => Finish::Stop(s.clone()),
                        FinishReason::Length => Finish::Length,
                    });
                    a.done = Some(f);
                }
            }
            // Finished sequences leave: keep what they computed in the prefix cache.
            let mut released = false;
            for &(i, _, _) in &batch {
                if act[i].finish.is_some() {
                    self.release(&mut act[i])?;
                    released = true;
                }
            }
            if released {
                act.iter_mut().for_each(|a| a.blocked = false);
            }
        }
        for a in act.iter_mut() {
            self.release(a)?;
        }
        Ok(())
    }

    /// Caches the kept part of a finished sequence and frees it.
    fn release(&mut self, a: &mut Active) -> Result<()> {
        let Some(seq) = a.seq.take() else {
            return Ok(());
        };
        let generated = a.tokens.len() - a.prompt_len;
        let keep = a.prompt_len
            + a.done
                .as_ref()
                .map_or(generated, |f| f.tokens_to_keep.min(generated));
        let held = self.kv.seq_len(seq).map_err(|e| model_err(&self.name, e))?;
        if keep < held {
            self.kv
                .truncate(seq, keep)
                .map_err(|e| model_err(&self.name, e))?;
        }
        self.kv
            .insert_prefix(seq)
            .map_err(|e| model_err(&self.name, e))?;
        self.kv.free(seq).map_err(|e| model_err(&self.name, e))?;
        Ok(())
    }

    /// The pool could not hold this iteration: free the most recently started sequence (it is
    /// recomputed later from its tokens, through the prefix cache where blocks survive).
    fn preempt(&mut self, act: &mut [Active], batch: &[(usize, usize, usize)]) -> Result<()> {
        let running: Vec<usize> = (0..act.len())
            .filter(|&i| act[i].seq.is_some() && act[i].finish.is_none())
            .collect();
        if running.len() <= 1 {
            let i = batch.first().map(|b| b.0).unwrap_or(0);
            let needed = act[i].tokens.len().div_ceil(self.kv.config().block_size);
            return Err(EngineError::KvTooSmall {
                model: self.name.clone(),
                needed,
                total: self.kv.num_blocks(),
            });
        }
        let victim = *running
            .iter()
            .max_by_key(|&&i| act[i].req)
            .expect("non-empty");
        let seq = act[victim].seq.take().expect("running");
        act[victim].blocked = true;
        self.kv
            .insert_prefix(seq)
            .map_err(|e| model_err(&self.name, e))?;
        self.kv.free(seq).map_err(|e| model_err(&self.name, e))?;
        self.stats.preemptions += 1;
        tracing::debug!(model = %self.name, req = act[victim].req, "preempted a sequence: KV pool low");
        Ok(())
    }

    fn score(&mut self, reqs: &[ScoreRequest]) -> Result<Vec<ScoreOutput>> {
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
                });
                at += m;
                self.stats.prompt_tokens += j.first as u64;
                self.stats.reused_tokens += j.reused as u64;
                self.stats.scored_tokens += m as u64;
                // Keep the context (without the answer) cached: the next step's prompts share it.
                let seq = j.seq.take().expect("attached");
                self.kv
                    .truncate(seq, j.first)
                    .map_err(|e| model_err(&self.name, e))?;
                self.kv
                    .insert_prefix(seq)
                    .map_err(|e| model_err(&self.name, e))?;
                self.kv.free(seq).map_err(|e| model_err(&self.name, e))?;
            }
        }
        Ok(outs
            .into_iter()
            .map(|o| o.expect("every job scored"))
            .collect())
    }
}

fn is_out_of_blocks(e: &cord_models::ModelError) -> bool {
    matches!(e, cord_models::ModelError::Kv(KvError::OutOfBlocks { .. }))
}
