//! cord-kernels: every custom op of cord, each with a CPU implementation — also the reference the
//! tests hold the CUDA kernel to — and a CUDA kernel from the top-level `kernels/` folder (one
//! `.cu` per op), compiled at run time with NVRTC (once per process) and launched on candle's
//! stream. The default build needs no CUDA toolkit; the kernels are behind the `cuda` feature.
//!
//! * [`cpu`] — CPU ops for shapes and types where candle has no fast kernel: the repacked int8
//!   GEMM for Q8_0 weights (runtime-dispatched by CPU feature: AVX-512 VNNI, AVX2, scalar).
//! * [`paged_attention`] — decode and append/prefill attention reading K/V through block tables
//!   (`kernels/paged_attention.cu`).
//! * [`kv_write`] — scatter new K or V rows into their slots (`kernels/kv_write.cu`).
//! * [`block_copy`] — copy whole blocks of every layer, for copy-on-write
//!   (`kernels/block_copy.cu`).
//! * [`token_logprob`] — fused `log_softmax(logits)[target]` per row
//!   (`kernels/token_logprob.cu`).
//! * [`check`] — each op on a device against its reference, and its speed against plain candle
//!   ops (the tests and `cord bench kernels`).
//! * `cuda` (feature `cuda`) — NVRTC compilation to PTX and kernel launches.

mod block_copy;
pub mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod kv_write;
mod paged_attention;
pub mod token_logprob;

pub use block_copy::block_copy;
pub use kv_write::kv_write;
pub use paged_attention::{AttentionParams, AttentionPlan, PlanSeq, paged_attention};
pub use token_logprob::{TokenLogprob, token_logprobs};
