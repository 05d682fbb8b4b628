//! The sharded activation store: a directory of safetensors shards plus `manifest.json`.
//!
//! Layout (format `sparsa-activations/1`):
//! ```text
//! store/
//!   manifest.json             this file's [`Manifest`]
//!   shard-00000.safetensors   tensor "activations" [n_i, d_model] (f32 | f16 | bf16),
//!                             optional "token_ids" [n_i] (u32/i64) and "doc_ids" [n_i] (u32/i64)
//!   shard-00001.safetensors   …
//! ```
//! Shards are written atomically and listed in the manifest only once complete, so a store is
//! always readable and an interrupted extraction resumes from the last listed shard.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's format tag.
pub const MANIFEST_FORMAT: &str = "sparsa-activations/1";
/// The manifest's file name inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The tensor name of the activations inside each shard.
pub const ACTIVATIONS_TENSOR: &str = "activations";

/// One shard of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name relative to the store directory.
    pub file: String,
    /// Rows (tokens) in this shard.
    pub n_tokens: u64,
}

/// `manifest.json` of an activation store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Width of each activation vector.
    pub d_model: usize,
    /// Storage dtype of the activations: "f32", "f16" or "bf16".
    pub dtype: String,
    /// Total rows over all shards.
    pub n_tokens: u64,
    /// Complete shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Source model (e.g. "SmolLM2-135M-Instruct"), if extracted from a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Hook point name (e.g. "blocks.15.hook_resid_post").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Layer index of the hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Anything else the producer wants to record (corpus, seq_len, seed, checksums…).
    #[serde(default, flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}", path = .path.display())]
pub struct ManifestError {
    pub path: PathBuf,
    pub reason: String,
}

impl Manifest {
    /// Read and check (format tag) the manifest of the store at `path`: a store directory or its
    /// `manifest.json`.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let mp = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let err = |reason: String| ManifestError {
            path: mp.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&mp)
            .map_err(|e| err(format!("cannot read ({e}); is this an activation store?")))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| err(format!("does not parse as a store manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(err(format!(
                "format is `{}`, expected `{MANIFEST_FORMAT}`; this is not a sparsa activation store",
                m.format
            )));
        }
        Ok(m)
    }

    /// Whether `path` is a store (a directory holding a manifest, or a `manifest.json`).
    pub fn is_store(path: &Path) -> bool {
        if path.is_dir() {
            path.join(MANIFEST_FILE).is_file()
        } else {
            path.file_name().is_some_and(|n| n == MANIFEST_FILE) && path.is_file()
        }
    }

    /// Tokens per context, prefix included (`seq_len`, recorded by extraction).
    pub fn context_size(&self) -> Option<usize> {
        self.extra
            .get("seq_len")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    }

    /// The token prepended to every context: `None` when the manifest does not say,
    /// `Some(None)` when contexts have no prefix, `Some(Some(id))` otherwise.
    pub fn prefix_token(&self) -> Option<Option<u32>> {
        match self.extra.get("prefix_token")? {
            serde_json::Value::Null => Some(None),
            v => v.as_u64().and_then(|id| u32::try_from(id).ok()).map(Some),
        }
    }

    /// Whether the prefix (BOS) position's rows are stored (`include_bos`), if recorded.
    pub fn include_bos(&self) -> Option<bool> {
        self.extra.get("include_bos").and_then(|v| v.as_bool())
    }

    /// Whether extraction finished (`complete`, recorded by extraction; `None` for stores made
    /// by other writers). A store with `Some(false)` was left by an interrupted extraction.
    pub fn complete(&self) -> Option<bool> {
        self.extra.get("complete").and_then(|v| v.as_bool())
    }

    /// The corpus label, if recorded.
    pub fn corpus(&self) -> Option<&str> {
        self.extra.get("corpus").and_then(|v| v.as_str())
    }
}
