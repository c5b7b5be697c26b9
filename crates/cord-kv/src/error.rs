//! Errors of the KV cache.

use crate::SeqId;

/// Everything that can go wrong in the KV cache. Bad input never panics: it is reported here.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The pool does not have enough free blocks (even after evicting unused prefix-cache
    /// blocks). Nothing was changed; the caller may preempt a sequence or wait.
    #[error("KV cache out of blocks: {needed} needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
    /// The sequence id is not (or no longer) live in this cache.
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    /// A layer index past the model's layer count.
    #[error("layer {layer} out of range: the cache has {num_layers} layers")]
    LayerOutOfRange { layer: usize, num_layers: usize },
    /// `truncate` to a length longer than the sequence.
    #[error("cannot truncate sequence {seq} of length {len} to length {requested}")]
    InvalidLength {
        seq: SeqId,
        len: usize,
        requested: usize,
    },
    /// A configuration that cannot describe a pool (zero sizes, too many slots, ...).
    #[error("invalid KV cache config: {0}")]
    InvalidConfig(String),
    /// Tensors handed to `write` with the wrong shape, dtype or device.
    #[error("bad tensor for the KV cache: {0}")]
    BadTensor(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KvError>;
