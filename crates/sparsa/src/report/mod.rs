//! HTML reports: one self-contained file per report (inline CSS and SVG, a few lines of inline
//! script at most; nothing fetched), with plots drawn by plotters.
//!
//! - [`html`]: the page skeleton, tables, figures, escaping.
//! - [`plot`]: line charts and histograms (plotters' SVG backend).
//! - [`sae`]: `sparsa sae report`: summary, training curves, densities with the Zipf fit,
//!   per-token L0, and feature dashboards.
//! - [`dashboards`]: the streaming pass over an activation store behind the dashboards (bounded
//!   memory: a top-N list and a fixed histogram per feature), feature choice, contexts, logit lens.
//! - [`compare`]: `compare.html` of `sparsa sae lm-compare`.
//! - [`prune`]: the HTML page of `sparsa prune report`.
//!
//! This module joins the halves (it reads `sae`, `prune`, `data` and `lm`); nothing in them
//! depends on it. It never prints: pages are returned as strings and written with [`write`].

pub mod compare;
pub mod dashboards;
pub mod html;
pub mod plot;
pub mod prune;
pub mod sae;

use std::path::{Path, PathBuf};

/// Everything that can go wrong building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Sae(#[from] crate::sae::SaeError),
    #[error(transparent)]
    Store(#[from] crate::data::store::ManifestError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error(transparent)]
    Prune(#[from] crate::prune::PruneError),
    #[error(transparent)]
    Chart(#[from] crate::prune::plots::PlotError),
    #[error("{path}: {what}", path = .path.display())]
    File { path: PathBuf, what: String },
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
}

/// Write a page atomically (temporary file, then rename); returns the path.
pub fn write(path: &Path, html: &str) -> Result<PathBuf, ReportError> {
    crate::util::fs::atomic_write(path, html.as_bytes()).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}
