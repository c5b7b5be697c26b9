//! cord-serve: `cord serve`, an OpenAI-compatible HTTP server over the engine.
//!
//! - `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (OpenAI's fields,
//!   streaming as server-sent events ending with `data: [DONE]`, usage in every response,
//!   `logprobs` / `top_logprobs`, `echo` for scoring prompts);
//! - `POST /v1/score`: the engine's cached-prefix scoring of several continuations of one context;
//! - `POST /v1/cord`: one problem through the pool's search, the same driver and backend as
//!   `cord synth`, streaming the kept steps and ending with the record `cord synth` would write;
//! - `GET /v1/engine`: the KV state of every model (live sequences, free and cached blocks).
//!
//! The engine is synchronous and owns the models: it runs on one thread, the engine worker
//! ([`worker`](crate::worker) module docs), that batches what is queued. How a request flows is
//! described in `docs/design.md` ("cord-serve").

mod api;
mod error;
mod models;
mod routes;
mod server;
mod worker;

pub use error::{ApiError, ServeError};
pub use models::{BackendOptions, EngineBackend, KvMemory, Models};
pub use server::{ServeConfig, Server};
pub use worker::{EngineState, ModelState};
