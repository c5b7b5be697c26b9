//! Shape of a model's paged KV cache and sizing of its block pool from a memory budget.

use candle_core::{DType, Device};

use crate::error::{KvError, Result};

/// Default number of tokens per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Shape of one model's paged KV cache.
///
/// Per layer, K and V are each stored as `[num_blocks, block_size, num_kv_heads, head_dim]` of
/// `dtype` on `device`.
#[derive(Debug, Clone)]
pub struct KvConfig {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per block (default [`DEFAULT_BLOCK_SIZE`]).
    pub block_size: usize,
    /// Blocks in the pool (shared by all sequences of the model).
    pub num_blocks: usize,
    pub dtype: DType,
    pub device: Device,
}

impl KvConfig {
    /// A config with the default block size and no blocks yet; size the pool with
    /// [`KvConfig::with_num_blocks`], [`KvConfig::with_budget_bytes`] or
    /// [`KvConfig::with_budget_fraction`].
    pub fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: Device,
    ) -> Self {
        Self {
            num_layers,
            num_kv_heads,
            head_dim,
            block_size: DEFAULT_BLOCK_SIZE,
            num_blocks: 0,
            dtype,
            device,
        }
    }

    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    pub fn with_num_blocks(mut self, num_blocks: usize) -> Self {
        self.num_blocks = num_blocks;
        self
    }

    /// Sizes the pool to as many blocks as fit in `bytes` (K and V of all layers).
    pub fn with_budget_bytes(mut self, bytes: usize) -> Self {
        self.num_blocks = self.blocks_for_budget(bytes);
        self
    }

    /// Sizes the pool to as many blocks as fit in `fraction` of `total_bytes`.
    pub fn with_budget_fraction(mut self, total_bytes: usize, fraction: f64) -> Self {
        self.num_blocks = self.blocks_for_fraction(total_bytes, fraction);
        self
    }

    /// Bytes of K and V of one token over all layers.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Bytes of one block: K and V of `block_size` tokens over all layers.
    pub fn bytes_per_block(&self) -> usize {
        self.bytes_per_token() * self.block_size
    }

    /// How many blocks fit in `bytes` (0 when a block has no size).
    pub fn blocks_for_budget(&self, bytes: usize) -> usize {
        match self.bytes_per_block() {
            0 => 0,
            per => bytes / per,
        }
    }

    /// How many blocks fit in `fraction` (clamped to `[0, 1]`, NaN counts as 0) of `total_bytes`.
    pub fn blocks_for_fraction(&self, total_bytes: usize, fraction: f64) -> usize {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let budget = (total_bytes as f64 * fraction).floor();
        let budget = if budget >= usize::MAX as f64 {
            usize::MAX
        } else {
            budget as usize
        };
        self.blocks_for_budget(budget)
    }

    /// Bytes of the whole pool.
    pub fn pool_bytes(&self) -> usize {
        self.bytes_per_block() * self.num_blocks
    }

    /// Tokens the whole pool can hold.
    pub fn token_capacity(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Checks that the config describes a usable pool.
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("num_layers", self.num_layers),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(KvError::InvalidConfig(format!("{name} must be > 0")));
        }
        let slots = self.num_blocks.checked_mul(self.block_size);
        if slots.is_none_or(|s| s > u32::MAX as usize) {
            return Err(KvError::InvalidConfig(format!(
                "{} blocks of {} tokens do not fit u32 slot ids",
                self.num_blocks, self.block_size
            )));
        }
        Ok(())
    }
}
