//! Pruning with dead-neuron tracking and Activate-while-Pruning (AP).
//!
//! - [`mask`]: sparsity accounting and exact-count selection of the lowest scores.
//! - [`method`]: score functions (random, magnitude, LAMP, SNIP, SynFlow).
//! - [`schedule`]: one-shot and iterative targets and the per-round pruning step.
//! - [`ap`]: Activate-while-Pruning and its ablations.
//! - [`dnr`]: dead-neuron-rate probes (dynamic, static; per layer and global).
//! - [`identity`]: the code and data identity recorded in a run directory.
//! - [`train`]: the training loop (masked SGD, per-epoch metrics and DNR).
//! - [`runner`]: experiment grids in hashed, resumable run directories; [`report`]: the summary
//!   table, paired statistics ([`stats`]), CSVs and SVG charts ([`plots`]).
//!
//! See `shared/spec/pruning.md` and `docs/pruning.md`.

pub mod ap;
pub mod bench;
pub mod dnr;
pub mod identity;
pub mod layout;
pub mod mask;
pub mod method;
pub mod plots;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod train;

use std::path::PathBuf;

/// Errors from pruning, training and experiment running.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] crate::data::idx::ImageDataError),
    #[error("invalid configuration `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {msg}. Delete it and rerun to recompute it")]
    Corrupt { path: PathBuf, msg: String },
    #[error(
        "{dir} holds results made with different code or data: {differences}. Use another --out \
         or delete the directory to start afresh, or pass --allow-identity-mismatch to continue \
         it anyway (the directory then records that it is mixed)"
    )]
    IdentityMismatch { dir: PathBuf, differences: String },
    #[error("cancelled: finished rounds are saved; rerun the same command to resume")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, PruneError>;

pub(crate) fn config_err(field: &str, msg: impl Into<String>) -> PruneError {
    PruneError::Config {
        field: field.to_string(),
        msg: msg.into(),
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PruneError + '_ {
    move |source| PruneError::Io {
        path: path.to_path_buf(),
        source,
    }
}
