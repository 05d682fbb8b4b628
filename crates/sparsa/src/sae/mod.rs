//! Sparse autoencoders with adaptive sparse allocation (`shared/spec/sae.md`).
//!
//! - [`allocation`]: TopK, Mutual Choice (= BatchTopK), Feature Choice, JumpReLU; registry `build`.
//! - [`loss`]: aux_k and aux_zipf behind one interface; registry `build`.
//! - [`params`]: the weights; [`reference`]: the simple autograd training step (the oracle);
//!   [`optim`]: Adam with decoder-norm handling; [`train`]: the trainer (state, counters,
//!   thresholds, checkpoints); [`calibrate`]: inference thresholds that reproduce the training
//!   form; [`metrics`]: evaluation; [`io`]: SAELens files.

pub mod allocation;
pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod config;
pub mod fast;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod reference;
pub mod select;
pub mod stats;
pub mod train;
pub mod zipf;

use crate::data::activations::DataError;
use std::path::PathBuf;

/// Errors of the SAE half. Each names what is wrong and, where it can, the fix.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// An invalid or impossible setting: `field` is the config key at fault (`sae.k`), or the
    /// table or file when no single key is; `msg` is the whole sentence a user reads.
    #[error("config: {msg}")]
    Config { field: String, msg: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("batch at token {token}: row {row} holds {what}; the activations must be finite (check the extraction, or filter the data)")]
    NonFinite {
        token: u64,
        row: usize,
        what: &'static str,
    },
    #[error("training diverged at step {step}: {what} is not finite; lower train.lr or set train.grad_clip")]
    Diverged { step: u64, what: &'static str },
    #[error("data width {data} does not match the SAE's d_in = {sae}")]
    Width { data: usize, sae: usize },
    #[error("{path}: {what}", path = .path.display())]
    File { path: PathBuf, what: String },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl SaeError {
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        SaeError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn file(path: &std::path::Path, what: impl Into<String>) -> Self {
        SaeError::File {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| SaeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
#[cfg(test)]
mod tests;
