//! cord's own compute kernels, each with a portable reference and tests against it.
//!
//! - [`cpu`]: CPU ops for shapes and types where candle has no fast kernel (runtime-dispatched by
//!   CPU feature).

pub mod cpu;
