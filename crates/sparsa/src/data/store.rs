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
