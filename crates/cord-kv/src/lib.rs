//! cord-kv: a model's KV cache as a pool of fixed-size blocks shared by many sequences.
//!
//! * [`KvConfig`] — shape of the cache and sizing of the pool from a memory budget.
//! * [`KvCache`] — block pool tensors (K and V per layer,
//!   `[num_blocks, block_size, n_kv_heads, head_dim]`), sequences with their block tables,
//!   fork (shares blocks; copy-on-write of a shared partial last block on the next append),
//!   truncate, free, a token-granular radix prefix cache with LRU eviction, and the slot
//!   write / gather helpers used by attention code.
//!
//! The custom ops over the paged layout (KV write, block copy, and paged attention, which the
//! models call) live in `cord-kernels`.
//!
//! A sequence only ever writes slots of blocks it holds alone: `append_slots` copies a shared,
//! partially filled last block before handing out its slots, and every other shared block is
//! full or lies before the sequence's end.

mod cache;
mod config;
mod error;
mod pool;
mod radix;

pub use cache::{KvCache, PrefixStats, SeqId};
pub use config::{DEFAULT_BLOCK_SIZE, KvConfig};
pub use error::{KvError, Result};
