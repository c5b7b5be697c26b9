//! cord-models: one decoder skeleton for llama / qwen2 / qwen3 / phi3 / gemma3, running ragged
//! batches over the paged KV cache of `cord-kv`, with safetensors, GGUF and hub loading.

pub mod config;
pub mod error;
pub mod gguf_tokenizer;
pub mod hub;
pub mod layers;
pub mod loader;
pub mod model;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use hub::{HubSpec, Resolved};
pub use layers::CpuGemm;
pub use loader::{LoadOptions, LoadedModel, check_spec, estimate_weight_bytes, load};
pub use model::{Attention, LogitsMode, Model, SeqInput};
pub use weights::{WeightSource, gguf_name, random_weights, weight_specs};
