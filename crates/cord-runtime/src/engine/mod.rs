//! The engine: several models resident at once, each with its own paged KV cache and radix prefix
//! cache, continuous batched generation and teacher-forced scoring over text.
//!
//! Text is the currency between models: every request carries fully rendered text, each model
//! tokenizes it with its own tokenizer, attaches the longest token prefix it already holds in its
//! prefix cache, and computes only the rest. Token ids never cross from one model to another.

mod device;
mod generate;
mod parallel;
mod scheduler;
mod score;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device};
use cord_kv::{KvCache, KvError, SeqId};
pub use cord_models::Attention;
use cord_models::{LoadOptions, LoadedModel};

use crate::chat::ChatTemplate;
use crate::memory::{DeviceMemory, DoesNotFit, KvAutoError, Placed};

pub use crate::stop::Finish;
pub use cord_models::CpuGemm;
use device::dense_bytes;
pub use device::{DeviceSpec, parse_dtype};
pub use generate::{GenOutput, GenRequest};
pub use parallel::Parallel;
pub use scheduler::{Event, RequestId, Scheduler, SchedulerStats};
pub use score::{ScoreOutput, TokenScoreRequest};

/// Errors of the engine. Model and cache errors are wrapped with the model's name.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid device `{0}`: expected `cpu` or `cuda:N`")]
    BadDevice(String),
    #[error("device {device}: {message}")]
    DeviceUnavailable { device: String, message: String },
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
    /// One request needs more blocks than the model's whole KV pool holds.
    #[error(
        "model `{model}`: the KV cache is too small for one request ({needed} blocks needed, {total} in the pool)"
    )]
    KvTooSmall {
        model: String,
        needed: usize,
        total: usize,
    },
    /// A model does not fit its device's memory budget.
    #[error(transparent)]
    OutOfMemory(Box<DoesNotFit>),
    /// The KV pools of a device cannot be sized automatically.
    #[error(transparent)]
    KvAuto(Box<KvAutoError>),
    #[error("unknown model id {0}")]
    UnknownModel(usize),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl From<KvAutoError> for EngineError {
    fn from(e: KvAutoError) -> Self {
        EngineError::KvAuto(Box::new(e))
    }
}

fn model_err(model: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        model: model.to_string(),
        message: e.to_string(),
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
    /// How the model's attention reads the paged cache.
    pub attention: Attention,
    /// GGUF on the CPU: which kernel runs the Q8_0 matmuls.
    pub cpu_gemm: CpuGemm,
    /// Hub ids: download on a cache miss.
    pub allow_download: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            dtype: None,
            kv_memory: crate::memory::DEFAULT_KV_MIB << 20,
            block_size: 16,
            dequantize: false,
            max_batch_tokens: 1024,
            attention: Attention::default(),
            cpu_gemm: CpuGemm::default(),
            allow_download: true,
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

/// One resident model: its weights, KV cache, chat template and scheduler.
pub struct EngineModel {
    name: String,
    key: String,
    loaded: Arc<LoadedModel>,
    device: DeviceSpec,
    kv: KvCache,
    template: ChatTemplate,
    stats: ModelStats,
    max_batch_tokens: usize,
    queue: scheduler::Queue,
}

/// The engine: models keyed by (spec, device, dtype), one candle device per ordinal, and a
/// memory budget per device ([`crate::memory`]).
pub struct Engine {
    models: Vec<EngineModel>,
    devices: HashMap<DeviceSpec, Device>,
    memory: HashMap<DeviceSpec, DeviceMemory>,
    /// Share of a GPU's total memory the models may take.
    gpu_memory_fraction: f64,
    budgets: HashMap<DeviceSpec, u64>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            models: vec![],
            devices: HashMap::new(),
            memory: HashMap::new(),
            gpu_memory_fraction: crate::memory::DEFAULT_GPU_MEMORY_FRACTION,
            budgets: HashMap::new(),
        }
    }
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a model (or returns the already loaded one with the same spec, device, dtype and
    /// kernels).
    pub fn add_model(&mut self, spec: &str, opts: &ModelOptions) -> Result<ModelId> {
        let key = format!(
            "{spec}|{}|{:?}|{}|{:?}",
            opts.device, opts.dtype, opts.dequantize, opts.cpu_gemm
        );
        if let Some(i) = self.models.iter().position(|m| m.key == key) {
            return Ok(ModelId(i));
        }
        let device = self.device(opts.device)?;
        let dtype = opts.dtype.unwrap_or(opts.device.default_dtype());
        // Refuse a model that cannot fit before reading its weights.
        let estimate = cord_models::estimate_weight_bytes(spec, dtype, opts.dequantize);
        if let Some(w) = estimate {
            self.check_fits(spec, opts, w)?;
        }
        let load = LoadOptions {
            dtype,
            device: device.clone(),
            dequantize: opts.dequantize,
            attention: opts.attention,
            cpu_gemm: opts.cpu_gemm,
            allow_download: opts.allow_download,
        };
        let loaded = cord_models::load(spec, &load).map_err(|e| model_err(spec, e))?;
        let weights = estimate.unwrap_or_else(|| dense_bytes(&loaded.model));
        self.insert_placed(spec, key, Arc::new(loaded), opts, weights)
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
            queue: scheduler::Queue::default(),
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
    pub fn score(&mut self, id: ModelId, reqs: &[TokenScoreRequest]) -> Result<Vec<ScoreOutput>> {
        self.model_mut(id)?.score_timed(reqs, 0)
    }

    /// As [`Engine::score`], also returning the `top` most likely tokens at every continuation
    /// position ([`ScoreOutput::top_logprobs`]).
    pub fn score_top(
        &mut self,
        id: ModelId,
        reqs: &[TokenScoreRequest],
        top: usize,
    ) -> Result<Vec<ScoreOutput>> {
        self.model_mut(id)?.score_timed(reqs, top)
    }

    /// The scheduler of one model, to drive step by step ([`Scheduler::add`], [`Scheduler::step`],
    /// [`Scheduler::cancel`]) beside or instead of [`Engine::generate`].
    pub fn scheduler(&mut self, id: ModelId) -> Result<Scheduler<'_>> {
        Ok(self.model_mut(id)?.scheduler())
    }
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

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// The weights, tokenizer and special tokens.
    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// [`EngineModel::loaded`] as a shared handle, for readers on other threads (a server
    /// tokenizes and renders prompts while the engine runs).
    pub fn loaded_shared(&self) -> Arc<LoadedModel> {
        self.loaded.clone()
    }

    /// The model's chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// The model's KV cache (read only: sequences belong to its scheduler and scoring).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Drops every prefix the KV cache holds for reuse (benchmarks measure without reuse);
    /// returns the blocks freed.
    pub fn clear_prefix_cache(&mut self) -> usize {
        self.kv.clear_prefix_cache()
    }

    /// Leaves the first `keep` tokens of `seq` (all when `None`) in the prefix cache and frees
    /// the sequence.
    fn cache_and_free(&mut self, seq: SeqId, keep: Option<usize>) -> Result<()> {
        let held = self.kv.seq_len(seq).map_err(|e| model_err(&self.name, e))?;
        if let Some(keep) = keep
            && keep < held
        {
            self.kv
                .truncate(seq, keep)
                .map_err(|e| model_err(&self.name, e))?;
        }
        self.kv
            .insert_prefix(seq)
            .map_err(|e| model_err(&self.name, e))?;
        self.kv.free(seq).map_err(|e| model_err(&self.name, e))
    }
}

fn is_out_of_blocks(e: &cord_models::ModelError) -> bool {
    matches!(e, cord_models::ModelError::Kv(KvError::OutOfBlocks { .. }))
}
