//! cord-runtime: building blocks of the inference engine.
//!
//! * [`sampling`]: per-sequence seeded sampling from one logits row.
//! * [`stop`]: incremental detokenization and stop detection (EOS ids, stop strings, max tokens).
//! * [`chat`]: a model's own Jinja chat template, with CoRD's raw assistant prefill.
//! * [`engine`]: several models with paged KV and prefix caches; batched generation and scoring.
//! * [`memory`]: per-device memory budgets (weights + KV pools), checked before loading.
//! * [`threads`]: one-time CPU thread-count setup (a large decode-speed fix on CPU).

pub mod chat;
pub mod engine;
pub mod memory;
pub mod sampling;
pub mod stop;
pub mod threads;

pub use chat::{ChatError, ChatTemplate};
pub use sampling::{Sampler, SamplingError, SamplingParams};
pub use stop::{Finish, Finished, StepOutput, StopChecker, StopConfig, StopError, StopMatch};
