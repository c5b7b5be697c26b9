//! CPU ops. Each op has a portable scalar implementation that is both the fallback and the
//! reference the SIMD tiers are tested against; the tier is picked at run time by CPU feature.

pub mod kquant;
pub mod q8_0;

pub use kquant::{KQuant, KQuantGemv};
pub use q8_0::{PackedQ8_0, Tier, candle_repacks_q8_0};
