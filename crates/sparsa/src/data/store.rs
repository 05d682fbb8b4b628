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
/// Tensor name of the token ids in each shard.
pub const TOKEN_IDS_TENSOR: &str = "token_ids";
/// Tensor name of the document ids in each shard.
pub const DOC_IDS_TENSOR: &str = "doc_ids";
/// Tensor name of the in-context positions in each shard (0 = the prefix).
pub const POSITIONS_TENSOR: &str = "positions";

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

/// The keys extraction records in the manifest's `extra` map: one list, used by the writer
/// (`extract`) and by the accessors below.
pub mod key {
    /// The program that wrote the store.
    pub const PRODUCER: &str = "producer";
    /// The corpus label (`sotu`, `wiki` or a path).
    pub const CORPUS: &str = "corpus";
    /// Tokens per context, prefix included.
    pub const SEQ_LEN: &str = "seq_len";
    /// Rows the extraction was asked for.
    pub const N_TOKENS_TARGET: &str = "n_tokens_target";
    /// Contexts per forward pass.
    pub const BATCH_SIZE: &str = "batch_size";
    /// Precision of the model's linear layers during extraction: `f32` or `bf16` (stores
    /// made before it was recorded are f32).
    pub const MATMUL: &str = "matmul";
    /// The bf16 kernel that ran them (`amx-bf16`, `avx512-bf16`; informational).
    pub const MATMUL_KERNEL: &str = "matmul_kernel";
    /// Rows per shard.
    pub const SHARD_TOKENS: &str = "shard_tokens";
    /// Whether the prefix position's rows are stored.
    pub const INCLUDE_BOS: &str = "include_bos";
    /// The token prepended to every context (null: none).
    pub const PREFIX_TOKEN: &str = "prefix_token";
    /// The hook point within the layer.
    pub const HOOK_POINT: &str = "hook_point";
    /// The tokenizer's description.
    pub const TOKENIZER: &str = "tokenizer";
    /// The model's configuration.
    pub const MODEL_CONFIG: &str = "model_config";
    /// The names of the shards' tensors.
    pub const TENSORS: &str = "tensors";
    /// Whether extraction finished.
    pub const COMPLETE: &str = "complete";
    /// Whether the corpus ran out before the target.
    pub const CORPUS_EXHAUSTED: &str = "corpus_exhausted";
    /// Contexts of the corpus stream consumed (held-out contexts follow them).
    pub const CONTEXTS_USED: &str = "contexts_used";
    /// Digest of the corpus text (a resume checks it).
    pub const CORPUS_SHA256: &str = "corpus_sha256";
}

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}", path = .path.display())]
pub struct ManifestError {
    pub path: PathBuf,
    pub reason: String,
}

impl Manifest {
    /// The manifest file of the store at `path`: `path/manifest.json` for a directory, else
    /// `path` itself.
    pub fn file_of(path: &Path) -> PathBuf {
        if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        }
    }

    /// Parse and check manifest JSON: the format tag, a known dtype, and `n_tokens` equal to the
    /// shards' sum. The one place a store's manifest is parsed; an error names the field.
    pub fn parse(text: &str) -> Result<Manifest, (&'static str, String)> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| {
            (
                "(json)",
                format!("{e}; the manifest must be a {MANIFEST_FORMAT} JSON object"),
            )
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err((
                "format",
                format!(
                    "is `{}`, expected `{MANIFEST_FORMAT}`; this is not a sparsa activation store",
                    m.format
                ),
            ));
        }
        if super::elem::Elem::from_name(&m.dtype).is_none() {
            return Err((
                "dtype",
                format!("is `{}`; expected one of f32, f16, bf16", m.dtype),
            ));
        }
        let listed: u64 = m.shards.iter().map(|s| s.n_tokens).sum();
        if listed != m.n_tokens {
            return Err((
                "n_tokens",
                format!(
                    "is {} but the shards' n_tokens sum to {listed}; fix manifest.json or re-extract",
                    m.n_tokens
                ),
            ));
        }
        Ok(m)
    }

    /// Read and check ([`Manifest::parse`]) the manifest of the store at `path`: a store
    /// directory or its `manifest.json`.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let mp = Self::file_of(path);
        let text = std::fs::read_to_string(&mp).map_err(|e| ManifestError {
            path: mp.clone(),
            reason: format!("cannot read ({e}); is this an activation store?"),
        })?;
        Self::parse(&text).map_err(|(field, reason)| ManifestError {
            path: mp,
            reason: format!("manifest field `{field}`: {reason}"),
        })
    }

    /// Write the manifest into the store directory `dir`, atomically (temp file, then rename).
    /// The one place a store's manifest is written.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::util::fs::atomic_write(&dir.join(MANIFEST_FILE), &json)
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
            .get(key::SEQ_LEN)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    }

    /// The token prepended to every context: `None` when the manifest does not say,
    /// `Some(None)` when contexts have no prefix, `Some(Some(id))` otherwise.
    pub fn prefix_token(&self) -> Option<Option<u32>> {
        match self.extra.get(key::PREFIX_TOKEN)? {
            serde_json::Value::Null => Some(None),
            v => v.as_u64().and_then(|id| u32::try_from(id).ok()).map(Some),
        }
    }

    /// Whether the prefix (BOS) position's rows are stored (`include_bos`), if recorded.
    pub fn include_bos(&self) -> Option<bool> {
        self.extra.get(key::INCLUDE_BOS).and_then(|v| v.as_bool())
    }

    /// Whether extraction finished (`complete`, recorded by extraction; `None` for stores made
    /// by other writers). A store with `Some(false)` was left by an interrupted extraction.
    pub fn complete(&self) -> Option<bool> {
        self.extra.get(key::COMPLETE).and_then(|v| v.as_bool())
    }

    /// The corpus label, if recorded.
    pub fn corpus(&self) -> Option<&str> {
        self.extra.get(key::CORPUS).and_then(|v| v.as_str())
    }

    /// Whether extraction ran out of corpus before its target (`corpus_exhausted`), if recorded.
    pub fn corpus_exhausted(&self) -> Option<bool> {
        self.extra
            .get(key::CORPUS_EXHAUSTED)
            .and_then(|v| v.as_bool())
    }

    /// Contexts of the corpus stream extraction consumed (`contexts_used`), if recorded: the
    /// held-out contexts start after them.
    pub fn contexts_used(&self) -> Option<u64> {
        self.extra.get(key::CONTEXTS_USED).and_then(|v| v.as_u64())
    }

    /// The first listed shard whose file is not in `dir` (the store directory), as (entry, path).
    pub fn missing_shard(&self, dir: &Path) -> Option<(&ShardEntry, PathBuf)> {
        self.shards
            .iter()
            .map(|s| (s, dir.join(&s.file)))
            .find(|(_, p)| !p.is_file())
    }

    /// Record that extraction finished: `complete`, `corpus_exhausted` and `contexts_used`.
    pub fn mark_complete(&mut self, corpus_exhausted: bool, contexts_used: u64) {
        let extra = &mut self.extra;
        extra.insert(key::COMPLETE.into(), serde_json::Value::Bool(true));
        extra.insert(
            key::CORPUS_EXHAUSTED.into(),
            serde_json::Value::Bool(corpus_exhausted),
        );
        extra.insert(key::CONTEXTS_USED.into(), serde_json::json!(contexts_used));
    }
}

/// One tensor's place inside a shard file.
#[derive(Debug, Clone)]
struct TensorAt {
    /// Byte offset of the tensor's data in the file.
    offset: u64,
    dtype: String,
    n: u64,
}

/// A shard opened for positional reads.
#[derive(Debug)]
struct ShardFile {
    path: PathBuf,
    file: std::fs::File,
    first_row: u64,
    n_rows: u64,
    activations: TensorAt,
    token_ids: Option<TensorAt>,
    doc_ids: Option<TensorAt>,
    positions: Option<TensorAt>,
}

/// Where one row came from: its token, document and position in its context (`None` when the
/// store does not record it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowSource {
    pub token: Option<u32>,
    pub doc: Option<u32>,
    pub position: Option<u32>,
}

/// Reads a store's rows in file order, or any rows by global index, with ordinary positional
/// reads (no memory map), so memory stays the caller's buffer whatever the store's size.
#[derive(Debug)]
pub struct StoreReader {
    manifest: Manifest,
    elem: super::elem::Elem,
    shards: Vec<ShardFile>,
}

fn read_header(path: &Path, file: &mut std::fs::File) -> Result<(u64, serde_json::Value), String> {
    use std::io::Read;
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|e| format!("cannot read the safetensors header ({e})"))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        return Err(format!("header of {n} bytes is implausible"));
    }
    let mut h = vec![0u8; n as usize];
    file.read_exact(&mut h)
        .map_err(|e| format!("truncated safetensors header ({e})"))?;
    let v = serde_json::from_slice(&h)
        .map_err(|e| format!("{}: header is not JSON ({e})", path.display()))?;
    Ok((8 + n, v))
}

fn tensor_at(header: &serde_json::Value, base: u64, name: &str) -> Option<TensorAt> {
    let t = header.get(name)?;
    let dtype = t.get("dtype")?.as_str()?.to_string();
    let offs = t.get("data_offsets")?.as_array()?;
    let n = t
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64())
        .product::<Option<u64>>()?;
    Some(TensorAt {
        offset: base + offs.first()?.as_u64()?,
        dtype,
        n,
    })
}

impl StoreReader {
    /// Open the store at `path` (a directory or its manifest) and every listed shard.
    pub fn open(path: &Path) -> Result<StoreReader, ManifestError> {
        let manifest = Manifest::read(path)?;
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let elem = super::elem::Elem::from_name(&manifest.dtype).ok_or_else(|| ManifestError {
            path: dir.join(MANIFEST_FILE),
            reason: format!("dtype `{}` is not f32, f16 or bf16", manifest.dtype),
        })?;
        let mut shards = Vec::new();
        let mut first_row = 0;
        for s in &manifest.shards {
            let p = dir.join(&s.file);
            let err = |reason: String| ManifestError {
                path: p.clone(),
                reason,
            };
            let mut file =
                std::fs::File::open(&p).map_err(|e| err(format!("cannot open shard ({e})")))?;
            let (base, header) = read_header(&p, &mut file).map_err(err)?;
            let activations = tensor_at(&header, base, ACTIVATIONS_TENSOR)
                .filter(|t| t.n == s.n_tokens * manifest.d_model as u64)
                .ok_or_else(|| {
                    err(format!(
                        "no `{ACTIVATIONS_TENSOR}` tensor of {} × {} {}",
                        s.n_tokens, manifest.d_model, manifest.dtype
                    ))
                })?;
            let meta = |name: &str| tensor_at(&header, base, name).filter(|t| t.n == s.n_tokens);
            shards.push(ShardFile {
                path: p.clone(),
                file,
                first_row,
                n_rows: s.n_tokens,
                activations,
                token_ids: meta(TOKEN_IDS_TENSOR),
                doc_ids: meta(DOC_IDS_TENSOR),
                positions: meta(POSITIONS_TENSOR),
            });
            first_row += s.n_tokens;
        }
        Ok(StoreReader {
            manifest,
            elem,
            shards,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Width of each row.
    pub fn d(&self) -> usize {
        self.manifest.d_model
    }

    /// Rows in the listed shards.
    pub fn n_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.n_rows).sum()
    }

    fn shard_of(&self, row: u64) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| row >= s.first_row && row < s.first_row + s.n_rows)
    }

    /// Read rows `start..start + out.len() / d` (they may span shards) into `out`.
    pub fn read_rows(&mut self, start: u64, out: &mut [f32]) -> Result<(), ManifestError> {
        use std::io::{Read, Seek, SeekFrom};
        let d = self.d();
        let es = self.elem.size();
        let elem = self.elem;
        let mut row = start;
        let mut done = 0;
        let mut bytes = Vec::new();
        while done < out.len() {
            let si = self.shard_of(row).ok_or_else(|| ManifestError {
                path: PathBuf::from(&self.manifest.shards.last().map_or("", |s| s.file.as_str())),
                reason: format!("row {row} is past the store's {} rows", self.n_rows()),
            })?;
            let s = &mut self.shards[si];
            let local = row - s.first_row;
            let n = ((out.len() - done) / d).min((s.n_rows - local) as usize);
            bytes.resize(n * d * es, 0);
            let at = s.activations.offset + local * (d * es) as u64;
            let path = s.path.clone();
            s.file
                .seek(SeekFrom::Start(at))
                .and_then(|_| s.file.read_exact(&mut bytes))
                .map_err(|e| ManifestError {
                    path,
                    reason: format!("cannot read rows ({e})"),
                })?;
            elem.decode(&bytes, &mut out[done..done + n * d]);
            done += n * d;
            row += n as u64;
        }
        Ok(())
    }

    /// The rows whose in-context position (the `positions` tensor, 0 = prefix) is one of
    /// `positions`, as sorted disjoint half-open global row ranges. Fails when a shard records
    /// no positions.
    pub fn rows_at_positions(
        &mut self,
        positions: &[u32],
    ) -> Result<Vec<(u64, u64)>, ManifestError> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        if positions.is_empty() {
            return Ok(out);
        }
        for s in &mut self.shards {
            let t = s.positions.clone().ok_or_else(|| ManifestError {
                path: s.path.clone(),
                reason: "the shard records no `positions` tensor, so rows cannot be left out by \
                         position; re-extract the store with `sparsa activations extract`"
                    .into(),
            })?;
            let v = read_ints(&mut s.file, &s.path, &t, 0, s.n_rows as usize)?;
            for (i, p) in v.into_iter().enumerate() {
                if !positions.contains(&p) {
                    continue;
                }
                let row = s.first_row + i as u64;
                match out.last_mut() {
                    Some(last) if last.1 == row => last.1 = row + 1,
                    _ => out.push((row, row + 1)),
                }
            }
        }
        Ok(out)
    }

    /// Token, document and position of rows `start..start + n`.
    pub fn read_sources(&mut self, start: u64, n: usize) -> Result<Vec<RowSource>, ManifestError> {
        let mut out = vec![RowSource::default(); n];
        let mut i = 0;
        while i < n {
            let row = start + i as u64;
            let si = self.shard_of(row).ok_or_else(|| ManifestError {
                path: PathBuf::new(),
                reason: format!("row {row} is past the store's {} rows", self.n_rows()),
            })?;
            let s = &mut self.shards[si];
            let local = row - s.first_row;
            let m = (n - i).min((s.n_rows - local) as usize);
            for (which, t) in [&s.token_ids, &s.doc_ids, &s.positions]
                .into_iter()
                .enumerate()
            {
                let Some(t) = t.clone() else { continue };
                let v = read_ints(&mut s.file, &s.path, &t, local, m)?;
                for (k, x) in v.into_iter().enumerate() {
                    let r = &mut out[i + k];
                    match which {
                        0 => r.token = Some(x),
                        1 => r.doc = Some(x),
                        _ => r.position = Some(x),
                    }
                }
            }
            i += m;
        }
        Ok(out)
    }
}

/// `n` integers (u32 or i64 storage) of tensor `t` from element `start`.
fn read_ints(
    file: &mut std::fs::File,
    path: &Path,
    t: &TensorAt,
    start: u64,
    n: usize,
) -> Result<Vec<u32>, ManifestError> {
    use std::io::{Read, Seek, SeekFrom};
    let size = match t.dtype.as_str() {
        "U32" | "I32" => 4,
        "I64" | "U64" => 8,
        other => {
            return Err(ManifestError {
                path: path.to_path_buf(),
                reason: format!("integer tensor has dtype {other}, expected U32 or I64"),
            })
        }
    };
    let mut bytes = vec![0u8; n * size];
    file.seek(SeekFrom::Start(t.offset + start * size as u64))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| ManifestError {
            path: path.to_path_buf(),
            reason: format!("cannot read token metadata ({e})"),
        })?;
    Ok(bytes
        .chunks_exact(size)
        .map(|b| {
            if size == 4 {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as u32
            }
        })
        .collect())
}
