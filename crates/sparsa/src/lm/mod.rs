//! Language models: a GGUF llama (SmolLM2) run in Rust on f32 weights, its byte-level BPE
//! tokenizer built from the GGUF metadata, forward hooks that read or replace the residual stream,
//! and downstream evaluation (next-token loss with an SAE's reconstruction spliced in).
//!
//! - [`gguf`]: reads a GGUF file into a [`gguf::GgufModel`] (config, tokenizer metadata, f32
//!   weights), with typed errors for truncated/corrupt files and unsupported architectures.
//! - [`tokenizer`]: byte-level BPE with SmolLM2's pre-tokenizer rule (digits split one by one, no
//!   prefix space, special tokens kept whole).
//! - [`llama`]: the forward pass, batched, with [`llama::Hook`]s.
//! - [`eval`]: clean / spliced / zero- / mean-ablated next-token cross-entropy, loss recovered, KL.
//! - [`batch`]: right-padded batches of token sequences.
//! - [`bench`]: forward-pass timing for `sparsa bench lm`.

pub mod batch;
pub mod bench;
pub mod eval;
pub mod gguf;
pub mod llama;
pub mod tokenizer;

pub use batch::Batch;
pub use eval::{
    downstream_eval, downstream_eval_many, from_rows, DownstreamConfig, DownstreamReport,
    Reconstruct,
};
pub use gguf::GgufModel;
pub use llama::{top_k, Hook, HookPoint, Llama, LlamaConfig, Unembedding};
pub use tokenizer::Tokenizer;

use std::path::PathBuf;

/// Everything that can go wrong loading or running a language model.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The model file does not exist or cannot be opened.
    #[error(
        "cannot open model file {path}: {source} (check the path, or run `sparsa fetch smollm2-135m`)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable GGUF (bad magic, corrupt header, bad metadata).
    #[error("{path} is not a valid GGUF file: {reason} (the file is corrupt or not a GGUF model; re-download it, e.g. `sparsa fetch smollm2-135m`)")]
    Corrupt { path: PathBuf, reason: String },
    /// The file ends before the tensor data it declares.
    #[error("{path} is truncated: it has {actual} bytes but its tensors (the last is `{tensor}`) need {needed} (an interrupted download? re-fetch it, e.g. `sparsa fetch smollm2-135m`)")]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        actual: u64,
    },
    /// `general.architecture` is not one this module runs.
    #[error("{path}: architecture `{arch}` is not supported (sparsa runs `llama`-architecture GGUF models such as SmolLM2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// A required metadata key is missing or has the wrong type.
    #[error("{path}: metadata key `{key}`: {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    /// A required tensor is missing or has an unexpected shape.
    #[error("{path}: tensor `{tensor}` {problem}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    /// The tokenizer metadata describes something this tokenizer does not implement.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// A hook names a layer the model does not have.
    #[error("layer {layer} is out of range: the model has {n_layers} blocks (valid layers 0..={max})", max = .n_layers.saturating_sub(1))]
    LayerOutOfRange { layer: usize, n_layers: usize },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    /// Input sequences that cannot be run (empty batch, empty sequence, too long).
    #[error("bad input: {0}")]
    Input(String),
    /// A hook's replacement tensor has the wrong shape.
    #[error("hook {hook} returned shape {got:?}, expected {expected:?}")]
    HookShape {
        hook: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Tensor arithmetic failed (also what a user hook returns on failure).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Work was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, LmError>;

/// Open a GGUF file and build its llama model (f32 weights) and tokenizer.
pub fn load(path: &std::path::Path) -> Result<(Llama, Tokenizer)> {
    let g = GgufModel::open(path)?;
    let model = Llama::from_gguf(&g)?;
    let tok = Tokenizer::from_gguf(&g)?;
    Ok((model, tok))
}
