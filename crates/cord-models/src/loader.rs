//! `load(spec)`: a local directory, a `.gguf` file or a hub id → model + tokenizer + chat data.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::{ModelConfig, RopeScaling, gguf_usize, json_token_ids};
use crate::error::{ModelError, Result};
use crate::hub::{HubSpec, Resolved, resolve};
use crate::layers::CpuGemm;
use crate::model::{Attention, Model};
use crate::weights::WeightSource;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Activation / weight dtype of safetensors models (and of dequantized GGUF models).
    /// Quantized GGUF models compute in f32.
    pub dtype: DType,
    pub device: Device,
    /// GGUF: dequantize the matmul weights at load (to `dtype`) instead of quantized matmuls.
    pub dequantize: bool,
    /// Hub ids: allow downloading on a cache miss.
    pub allow_download: bool,
    /// How the model's attention reads the paged cache.
    pub attention: Attention,
    /// GGUF on the CPU: which kernel runs the Q8_0 matmuls.
    pub cpu_gemm: CpuGemm,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            dequantize: false,
            allow_download: true,
            attention: Attention::default(),
            cpu_gemm: CpuGemm::default(),
        }
    }
}

/// A model with everything the runtime needs to talk to it.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Every id that ends generation (generation_config, config, tokenizer_config, GGUF).
    pub eos_token_ids: Vec<u32>,
    /// Whether the model expects a BOS token in front (`add_bos_token`).
    pub add_bos: bool,
    pub name: String,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("arch", &self.model.config().arch)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Loads `spec`: a local model directory, a `.gguf` file, or a hub id
/// (`org/name[@rev][:file.gguf]`, resolved through the HF cache first).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let path = Path::new(spec);
    if path.is_dir() {
        return load_dir(path, &dir_name(path), opts);
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return load_gguf(path, &file_stem(path), opts);
        }
        return Err(ModelError::InvalidConfig {
            key: "model spec".into(),
            origin: spec.into(),
            msg: "a file must be a .gguf; give a directory for safetensors checkpoints".into(),
        });
    }
    let Some(hub) = HubSpec::parse(spec) else {
        return Err(ModelError::ModelNotFound {
            spec: spec.into(),
            looked: vec![format!(
                "local path {} (does not exist; not a hub id either)",
                path.display()
            )],
        });
    };
    let name = hub.repo.clone();
    match resolve(spec, &hub, opts.allow_download).map_err(|e| match e {
        ModelError::ModelNotFound { spec, mut looked } => {
            looked.insert(0, format!("local path {} (does not exist)", path.display()));
            ModelError::ModelNotFound { spec, looked }
        }
        e => e,
    })? {
        Resolved::Dir(dir) => load_dir(&dir, &name, opts),
        Resolved::Gguf(file) => load_gguf(&file, &name, opts),
    }
}

fn dir_name(p: &Path) -> String {
    p.canonicalize()
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| p.display().to_string())
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Shard file names listed in a `model.safetensors.index.json`.
pub(crate) fn index_shards(index: &Path) -> Result<Vec<String>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::MissingKey {
            key: "weight_map".into(),
            origin: index.display().to_string(),
        })?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| ModelError::InvalidConfig {
            key: format!("weight_map.{tensor}"),
            origin: index.display().to_string(),
            msg: "expected a file name".into(),
        })?;
        shards.insert(f.to_string());
    }
    Ok(shards.into_iter().collect())
}

/// The safetensors files of a checkpoint directory.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let mut files = vec![];
        for shard in index_shards(&index)? {
            let p = dir.join(&shard);
            if !p.is_file() {
                return Err(ModelError::MissingFile {
                    what: format!("shard listed in {}", index.display()),
                    path: p,
                });
            }
            files.push(p);
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::MissingFile {
            what: "safetensors weights".into(),
            path: dir.join("*.safetensors"),
        });
    }
    Ok(files)
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            what: "tokenizer".into(),
            path: path.to_path_buf(),
        });
    }
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Every regular token id of the tokenizer must index the model's embedding: an id at or past
/// `vocab_size` would make the model read past its embedding table. Special added tokens past
/// the table are tolerated with a warning (Gemma 3's tokenizer has `<image_soft_token>` =
/// 262144 over a 262144-row text embedding): they only appear when a prompt spells them out,
/// and the engine refuses such a prompt.
fn check_vocab(
    tok: &Tokenizer,
    cfg: &ModelConfig,
    tok_origin: &Path,
    cfg_origin: &str,
) -> Result<()> {
    let added = tok.get_added_tokens_decoder();
    let mut special_over = Vec::new();
    let mut regular_max: Option<u32> = None;
    for (text, id) in tok.get_vocab(true) {
        if (id as usize) < cfg.vocab_size {
            continue;
        }
        if added.get(&id).is_some_and(|t| t.special) {
            special_over.push((id, text));
        } else {
            regular_max = Some(regular_max.map_or(id, |m| m.max(id)));
        }
    }
    if let Some(max_id) = regular_max {
        return Err(ModelError::Tokenizer {
            path: tok_origin.to_path_buf(),
            msg: format!(
                "token id {max_id} does not fit the model: vocab_size is {} in {cfg_origin}",
                cfg.vocab_size
            ),
        });
    }
    if !special_over.is_empty() {
        special_over.sort();
        tracing::warn!(
            "{}: special token(s) {:?} lie past the model's vocab_size {}; prompts containing them are refused",
            tok_origin.display(),
            special_over,
            cfg.vocab_size
        );
    }
    Ok(())
}

/// Cheap checks of a model spec that read no weights, so that a pool with a bad model is
/// refused before anything is loaded: a local directory must hold a `config.json` of a
/// supported architecture, a `tokenizer.json` and safetensors files; a file must be a `.gguf`;
/// anything else must be a hub id (`org/name`; resolved, and downloaded if allowed, by [`load`]).
pub fn check_spec(spec: &str) -> Result<()> {
    let path = Path::new(spec);
    if path.is_dir() {
        let config_path = path.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::MissingFile {
                what: "config.json".into(),
                path: config_path,
            });
        }
        ModelConfig::from_hf_json(
            &read_json(&config_path)?,
            &config_path.display().to_string(),
        )?;
        let tok = path.join("tokenizer.json");
        if !tok.is_file() {
            return Err(ModelError::MissingFile {
                what: "tokenizer".into(),
                path: tok,
            });
        }
        safetensors_files(path)?;
        return Ok(());
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(());
        }
        return Err(ModelError::InvalidConfig {
            key: "model spec".into(),
            origin: spec.into(),
            msg: "a file must be a .gguf; give a directory for safetensors checkpoints".into(),
        });
    }
    let path_like = spec.starts_with(['/', '.', '~']) || spec.contains('\\');
    if path_like || HubSpec::parse(spec).is_none() {
        return Err(ModelError::ModelNotFound {
            spec: spec.into(),
            looked: vec![format!(
                "local path {} (does not exist{})",
                path.display(),
                if path_like {
                    ""
                } else {
                    "; not a hub id either"
                }
            )],
        });
    }
    Ok(())
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` as a string or a list of `{name, template}` (the `default` one).
fn chat_template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(list.first())?;
            pick.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

fn push_unique(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

fn load_dir(dir: &Path, name: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::MissingFile {
            what: "config.json".into(),
            path: config_path,
        });
    }
    let config_json = read_json(&config_path)?;
    let origin = config_path.display().to_string();
    let cfg = ModelConfig::from_hf_json(&config_json, &origin)?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are mapped read-only; as for every mmap, they must not be modified
    // while the model is alive.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::Weights {
        path: if files.len() == 1 {
            files[0].clone()
        } else {
            dir.to_path_buf()
        },
        msg: format!("not a readable safetensors file (truncated or corrupt?): {e}"),
    })?;
    let src = WeightSource::Safetensors {
        st,
        origin: if files.len() == 1 {
            files[0].display().to_string()
        } else {
            format!("{} ({} shards)", dir.display(), files.len())
        },
    };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tok_path)?;
    check_vocab(&tokenizer, &cfg, &tok_path, &origin)?;
    let mut model = Model::from_source(&cfg, &src, opts.dtype, &opts.device)?;
    model.set_attention(opts.attention);

    let tok_cfg = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let mut chat_template = chat_template_of(tok_cfg.get("chat_template"));
    let jinja = dir.join("chat_template.jinja");
    if chat_template.is_none() && jinja.is_file() {
        chat_template =
            Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
    }
    let bos_token = token_string(tok_cfg.get("bos_token"));
    let eos_token = token_string(tok_cfg.get("eos_token"));
    let add_bos = tok_cfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut eos_token_ids = vec![];
    let gen_path = dir.join("generation_config.json");
    if let Some(gen_cfg) = read_json_opt(&gen_path)? {
        push_unique(
            &mut eos_token_ids,
            json_token_ids(&gen_cfg, "eos_token_id", &gen_path.display().to_string())?,
        );
    }
    push_unique(&mut eos_token_ids, cfg.eos_token_ids.iter().copied());
    if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
        push_unique(&mut eos_token_ids, [id]);
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        eos_token_ids,
        add_bos,
        name: name.to_string(),
    })
}

fn gguf_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    match content.metadata.get(key)? {
        gguf_file::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn gguf_token(content: &gguf_file::Content, id: Option<usize>) -> Option<String> {
    let tokens = content
        .metadata
        .get("tokenizer.ggml.tokens")?
        .to_vec()
        .ok()?;
    match tokens.get(id?)? {
        gguf_file::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The ggml name of a tensor type number (those candle cannot read included).
fn ggml_type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

fn load_gguf(path: &Path, name: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let origin = path.display().to_string();
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        let msg = e.to_string();
        match msg
            .strip_prefix("unknown dtype for tensor ")
            .and_then(|n| n.trim().parse::<u32>().ok())
        {
            Some(t) => ModelError::InvalidConfig {
                key: "GGUF tensor type".into(),
                origin: origin.clone(),
                msg: format!(
                    "unsupported tensor type {t} ({}); cord reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q2_K..Q8_K",
                    ggml_type_name(t)
                ),
            },
            None => ModelError::InvalidConfig {
                key: "GGUF header".into(),
                origin: origin.clone(),
                msg,
            },
        }
    })?;
    let mut cfg = ModelConfig::from_gguf(&content, &origin)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let ff = content
            .tensor(&mut file, "rope_freqs.weight", &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        cfg.rope_scaling = Some(RopeScaling::FreqFactors(ff));
    }
    let dtype = if opts.dequantize {
        opts.dtype
    } else {
        DType::F32
    };
    let content = Arc::new(content);
    let src = WeightSource::Gguf {
        content: content.clone(),
        file: Mutex::new(file),
        origin: origin.clone(),
        arch: cfg.arch,
        dequantize: opts.dequantize,
        cpu_gemm: opts.cpu_gemm,
    };
    let mut model = Model::from_source(&cfg, &src, dtype, &opts.device)?;
    model.set_attention(opts.attention);
    drop(src);

    let dir = path.parent().unwrap_or(Path::new("."));
    let beside = [
        dir.join(format!("{}.tokenizer.json", file_stem(path))),
        dir.join("tokenizer.json"),
    ];
    let tokenizer = match beside.iter().find(|p| p.is_file()) {
        Some(p) => load_tokenizer(p)?,
        None => crate::gguf_tokenizer::tokenizer_from_gguf(&content).map_err(|e| {
            ModelError::Tokenizer {
                path: path.to_path_buf(),
                msg: format!("no tokenizer.json beside the GGUF, and from GGUF metadata: {e}"),
            }
        })?,
    };
    check_vocab(&tokenizer, &cfg, path, &origin)?;
    let mut chat_template = gguf_string(&content, "tokenizer.chat_template");
    let tok_cfg = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    if chat_template.is_none() {
        chat_template = chat_template_of(tok_cfg.get("chat_template"));
    }
    let bos_id = gguf_usize(&content, "tokenizer.ggml.bos_token_id", &origin)?;
    let eos_id = gguf_usize(&content, "tokenizer.ggml.eos_token_id", &origin)?;
    let add_bos = match content.metadata.get("tokenizer.ggml.add_bos_token") {
        Some(gguf_file::Value::Bool(b)) => *b,
        _ => false,
    };
    let mut eos_token_ids = vec![];
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = gguf_usize(&content, key, &origin)? {
            push_unique(&mut eos_token_ids, [id as u32]);
        }
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        bos_token: gguf_token(&content, bos_id),
        eos_token: gguf_token(&content, eos_id),
        eos_token_ids,
        add_bos,
        name: name.to_string(),
    })
}

/// Device bytes the weights of `spec` will take when loaded with `dtype` / `dequantize`,
/// estimated without reading any weight: from `config.json` (every weight in `dtype`) or from a
/// GGUF header (quantized tensors at their stored size, the token embedding widened to f32 as
/// the loader keeps it; every tensor in `dtype` with `dequantize`). `None` when the spec cannot
/// be resolved locally (a hub id not in the cache) or its files cannot be read: the load itself
/// then reports the problem.
pub fn estimate_weight_bytes(spec: &str, dtype: DType, dequantize: bool) -> Option<u64> {
    let path = Path::new(spec);
    let target = if path.exists() {
        if path.is_dir() {
            Resolved::Dir(path.to_path_buf())
        } else {
            Resolved::Gguf(path.to_path_buf())
        }
    } else {
        let hub = HubSpec::parse(spec)?;
        resolve(spec, &hub, false).ok()?
    };
    match target {
        Resolved::Dir(dir) => {
            let cfg_path = dir.join("config.json");
            let cfg = ModelConfig::from_hf_json(&read_json(&cfg_path).ok()?, spec).ok()?;
            Some(cfg.num_parameters() as u64 * dtype.size_in_bytes() as u64)
        }
        Resolved::Gguf(file) => {
            let mut f = File::open(&file).ok()?;
            let content = gguf_file::Content::read(&mut f).ok()?;
            let mut total = 0u64;
            for (name, info) in &content.tensor_infos {
                let elems = info.shape.elem_count() as u64;
                let stored = (elems as usize / info.ggml_dtype.block_size()
                    * info.ggml_dtype.type_size()) as u64;
                total += if dequantize {
                    elems * dtype.size_in_bytes() as u64
                } else if name == "token_embd.weight" {
                    // Dense f32 embedding; the quantized table stays too when it is the LM head.
                    elems * 4
                        + if content.tensor_infos.contains_key("output.weight") {
                            0
                        } else {
                            stored
                        }
                } else {
                    stored
                };
            }
            Some(total)
        }
    }
}
