//! Test fixtures shared by the integration tests of several cord crates (a dev-dependency only,
//! never published): complete tiny HF-style model directories with random weights
//! ([`tiny::write_model`]) that `cord_models::load` reads like downloaded checkpoints.

pub mod tiny;

pub use tiny::{Tiny, write_model};
