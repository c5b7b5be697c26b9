//! What the server serves: the models of a pool (through the same [`EngineBackend`] that `cord
//! synth` uses, so `/v1/cord` runs the pool's search) or models given one by one. This is the only
//! module that names the engine backend.

use std::sync::Arc;

pub use cord_backend::{BackendOptions, EngineBackend, KvMemory};
use cord_decode::PoolConfig;
use cord_models::LoadedModel;
use cord_runtime::ChatTemplate;
use cord_runtime::engine::{Engine, ModelId, ModelOptions};

use crate::error::ServeError;

/// The models of a running server, each addressable by name.
pub struct Models {
    inner: Inner,
    names: Vec<(String, ModelId)>,
}

enum Inner {
    Pool {
        backend: Box<EngineBackend>,
        pool: Arc<PoolConfig>,
    },
    Engine(Engine),
}

/// What a request handler needs of a model without asking the engine worker: its tokenizer
/// and chat template (to render and count a prompt) and its limits.
#[derive(Clone)]
pub(crate) struct ModelInfo {
    pub name: String,
    pub id: ModelId,
    pub loaded: Arc<LoadedModel>,
    pub template: ChatTemplate,
    /// The model's context length (`max_position_embeddings`).
    pub context: usize,
    /// Tokens the model's whole KV pool holds.
    pub kv_tokens: usize,
}

impl Models {
    /// Loads every model of a validated pool (teachers by teacher name, a scorer that is not a
    /// teacher by its name); `/v1/cord` runs this pool's search.
    pub fn from_pool(pool: PoolConfig, opts: &BackendOptions) -> Result<Self, ServeError> {
        EngineBackend::check(&pool, opts)?;
        let backend = EngineBackend::from_pool(&pool, opts)?;
        let names = backend.roles();
        Ok(Models {
            inner: Inner::Pool {
                backend: Box::new(backend),
                pool: Arc::new(pool),
            },
            names,
        })
    }

    /// Loads `(name, spec)` models (`cord serve --model`), each with `opts`. No pool: `/v1/cord`
    /// answers 400.
    pub fn from_specs(specs: &[(String, String)], opts: &ModelOptions) -> Result<Self, ServeError> {
        for (spec_name, spec) in specs {
            Engine::check_model(spec, opts.device)
                .map_err(|e| ServeError::Config(format!("model `{spec_name}`: {e}")))?;
        }
        let mut engine = Engine::new();
        let mut names = Vec::new();
        for (name, spec) in specs {
            let id = engine.add_model(spec, opts)?;
            names.push((name.clone(), id));
        }
        Self::from_engine(engine, names)
    }

    /// Models already in an engine (tests), by name.
    pub fn from_engine(engine: Engine, names: Vec<(String, ModelId)>) -> Result<Self, ServeError> {
        for id in names.iter().map(|(_, id)| *id) {
            engine.model(id)?;
        }
        let m = Models {
            inner: Inner::Engine(engine),
            names,
        };
        m.check_names()?;
        Ok(m)
    }

    fn check_names(&self) -> Result<(), ServeError> {
        if self.names.is_empty() {
            return Err(ServeError::Config("no model to serve".into()));
        }
        for (i, (n, _)) in self.names.iter().enumerate() {
            if n.is_empty() {
                return Err(ServeError::Config("a model name is empty".into()));
            }
            if self.names[..i].iter().any(|(m, _)| m == n) {
                return Err(ServeError::Config(format!(
                    "two models are named `{n}`; name them apart (--model NAME=SPEC)"
                )));
            }
        }
        Ok(())
    }

    /// The names clients address models by, in order.
    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Engine model index → the names it is served under.
    pub(crate) fn names_by_model(&self) -> std::collections::BTreeMap<usize, Vec<String>> {
        let mut m: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
        for (n, id) in &self.names {
            m.entry(id.0).or_default().push(n.clone());
        }
        m
    }

    pub(crate) fn infos(&self) -> Vec<ModelInfo> {
        let engine = self.engine();
        self.names
            .iter()
            .map(|(name, id)| {
                let m = engine.model(*id).expect("checked when built");
                ModelInfo {
                    name: name.clone(),
                    id: *id,
                    loaded: m.loaded_shared(),
                    template: m.template().clone(),
                    context: m.loaded().model.config().max_position_embeddings,
                    kv_tokens: m.kv().num_blocks() * m.kv().block_size(),
                }
            })
            .collect()
    }

    pub(crate) fn pool(&self) -> Option<Arc<PoolConfig>> {
        match &self.inner {
            Inner::Pool { pool, .. } => Some(pool.clone()),
            Inner::Engine(_) => None,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        match &self.inner {
            Inner::Pool { backend, .. } => backend.engine(),
            Inner::Engine(e) => e,
        }
    }

    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        match &mut self.inner {
            Inner::Pool { backend, .. } => backend.engine_mut(),
            Inner::Engine(e) => e,
        }
    }

    /// The pool's search backend (`None` without a pool).
    pub(crate) fn backend_mut(&mut self) -> Option<&mut dyn cord_decode::Backend> {
        match &mut self.inner {
            Inner::Pool { backend, .. } => Some(backend.as_mut()),
            Inner::Engine(_) => None,
        }
    }
}
