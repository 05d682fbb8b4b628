//! The layout of a pruning run directory: every file name in one place. Cells are named by
//! their directory name (`Cell::dir_name`).

use std::path::{Path, PathBuf};

/// Every file name of a run directory, in one place:
/// ```text
/// RUN/config.toml                          the canonical configuration
/// RUN/identity.json                        the run identity (code, data, kernels)
/// RUN/report/                              `sparsa prune report`'s tables and plots (default)
/// RUN/cells/CELL/rewind.safetensors        θ at the rewind step (captured in round 0)
/// RUN/cells/CELL/round_RR/masks.safetensors    the round's masks
/// RUN/cells/CELL/round_RR/epochs.jsonl         one line per epoch
/// RUN/cells/CELL/round_RR/weights.safetensors  the trained weights
/// RUN/cells/CELL/round_RR/metrics.json         the round's record, written last
/// ```
#[derive(Debug, Clone)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    /// The layout of the run directory `root`.
    pub fn new(root: &Path) -> Self {
        RunLayout {
            root: root.to_path_buf(),
        }
    }
    /// The canonical configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// Where `sparsa prune report` writes its tables and plots unless told otherwise.
    pub fn report(&self) -> PathBuf {
        self.root.join("report")
    }
    /// The run identity record ([`super::identity`]).
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    /// The directory of every cell.
    pub fn cells(&self) -> PathBuf {
        self.root.join("cells")
    }
    /// One cell's directory.
    pub fn cell(&self, cell: &str) -> PathBuf {
        self.cells().join(cell)
    }
    /// θ at the rewind step, captured in round 0.
    pub fn rewind(&self, cell: &str) -> PathBuf {
        self.cell(cell).join("rewind.safetensors")
    }
    /// One round's directory.
    pub fn round(&self, cell: &str, r: usize) -> PathBuf {
        self.cell(cell).join(format!("round_{r:02}"))
    }
    /// The round's masks.
    pub fn masks(&self, cell: &str, r: usize) -> PathBuf {
        self.round(cell, r).join("masks.safetensors")
    }
    /// The round's per-epoch log.
    pub fn epochs_log(&self, cell: &str, r: usize) -> PathBuf {
        self.round(cell, r).join("epochs.jsonl")
    }
    /// The round's trained weights.
    pub fn weights(&self, cell: &str, r: usize) -> PathBuf {
        self.round(cell, r).join("weights.safetensors")
    }
    /// The round's record; its presence marks the round finished.
    pub fn metrics(&self, cell: &str, r: usize) -> PathBuf {
        Self::metrics_in(&self.round(cell, r))
    }
    /// The record inside a round directory.
    pub fn metrics_in(round_dir: &Path) -> PathBuf {
        round_dir.join("metrics.json")
    }
}
