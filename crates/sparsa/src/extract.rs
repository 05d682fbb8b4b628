//! Extracting a language model's activations into an activation store (format of
//! [`crate::data::store`]), resumably.
//!
//! # Contexts (project choice)
//! Documents are taken in corpus order ([`crate::data::corpus`]) and tokenized without special tokens.
//! Each document's tokens are cut into consecutive windows of `seq_len − 1` tokens (or `seq_len`
//! with no prefix token), and each window becomes one context: `[prefix] + window`, where the
//! prefix is a document-start token ([`Tokenizer::document_start_id`]: SmolLM2's `<|endoftext|>`,
//! id 0, which gave lower clean CE than the GGUF's `bos_token_id` 1 `<|im_start|>`; the CLI's
//! `--prefix-token` overrides it). "BOS" below means this prefix. A context never spans two
//! documents; a document's
//! last window may be shorter (contexts of a batch are right-padded, which is exact under causal
//! attention). [`contexts`] yields this stream; downstream evaluation takes held-out contexts
//! from the same stream after the `contexts_used` recorded in the manifest.
//!
//! # Rows
//! Every real position of a context gives one row, except the prefix (BOS) position unless
//! `include_bos` is set: the BOS residual is an attention sink with a norm far larger than text
//! positions and would dominate an SAE's loss. Rows keep context order, then position order.
//! Each shard holds `activations` `[n, d]` (f32/f16/bf16), `token_ids` `[n]` (u32, the token at
//! the row's position), `doc_ids` `[n]` (u32, document id) and `positions` `[n]` (u32, position
//! in the context, 0 = prefix).
//!
//! # Resume
//! Contexts are batched `batch_size` at a time in stream order, so batch `k` is the same in every
//! run. Shards of `shard_tokens` rows are written atomically and the manifest is rewritten after
//! each, listing only complete shards. A rerun with the same settings skips the batches whose rows
//! are all stored (no forward pass), recomputes the batch holding the first missing row with the
//! same composition, and continues: the finished store is byte-identical to an uninterrupted one.

use crate::data::activations::Elem;
use crate::data::corpus::Document;
use crate::data::store::{
    key, Manifest, ShardEntry, ACTIVATIONS_TENSOR, MANIFEST_FILE, MANIFEST_FORMAT,
};
use crate::lm::{Batch, Hook, Llama, LmError, Tokenizer};
use crate::util::progress::{Cancel, Progress};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::data::store::{DOC_IDS_TENSOR, POSITIONS_TENSOR, TOKEN_IDS_TENSOR};

/// Errors of extraction.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Impossible settings.
    #[error("invalid extraction setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    /// The output directory holds a store made with other settings.
    #[error("{path} holds an activation store made with different settings ({field}: stored {stored}, requested {requested}); use another --out or delete it", path = .path.display())]
    Mismatch {
        path: PathBuf,
        field: String,
        stored: String,
        requested: String,
    },
    /// The output directory holds something that is not a store.
    #[error("{path} exists and is not an activation store ({reason}); use another --out", path = .path.display())]
    NotAStore { path: PathBuf, reason: String },
    /// Writing failed.
    #[error("writing {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a shard failed.
    #[error(transparent)]
    Data(#[from] crate::data::activations::DataError),
    /// The model failed.
    #[error(transparent)]
    Lm(#[from] LmError),
    /// Tensor arithmetic failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Settings of one extraction; all of them (but `batch_size`) determine the stored bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractConfig {
    /// Where to read.
    pub hook: Hook,
    /// Tokens per context, prefix included.
    pub seq_len: usize,
    /// Rows to store.
    pub n_tokens: u64,
    /// Contexts per forward pass (changes the batches, so part of the store's identity).
    pub batch_size: usize,
    /// Rows per shard.
    pub shard_tokens: usize,
    /// Storage dtype.
    #[serde(with = "elem_serde")]
    pub dtype: Elem,
    /// Keep the prefix (BOS) position's row.
    pub include_bos: bool,
    /// Token prepended to every context (the BOS / document-start token); `None` for no prefix.
    pub prefix_token: Option<u32>,
    /// Corpus label recorded in the manifest ("sotu", "wiki" or a path).
    pub corpus: String,
}

mod elem_serde {
    use super::Elem;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(e: &Elem, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.name())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Elem, D::Error> {
        let s = String::deserialize(d)?;
        Elem::from_name(&s).ok_or_else(|| serde::de::Error::custom(format!("bad dtype {s}")))
    }
}

/// One context: a window of one document, with the prefix token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Document id.
    pub doc: u32,
    /// Token ids, prefix included.
    pub ids: Vec<u32>,
}

/// The deterministic context stream of a corpus (see the module docs). Tokenizes documents lazily.
pub fn contexts<'a>(
    docs: &'a [Document],
    tok: &'a Tokenizer,
    seq_len: usize,
    prefix_token: Option<u32>,
) -> impl Iterator<Item = Context> + 'a {
    let window = seq_len
        .saturating_sub(usize::from(prefix_token.is_some()))
        .max(1);
    docs.iter().flat_map(move |d| {
        let ids = tok.encode(&d.text, false);
        let chunks: Vec<Context> = ids
            .chunks(window)
            .map(|w| {
                let mut v = Vec::with_capacity(w.len() + 1);
                v.extend(prefix_token);
                v.extend_from_slice(w);
                Context { doc: d.id, ids: v }
            })
            .collect();
        chunks
    })
}

/// Rows a context yields: positions `0..len`, minus the prefix position unless `include_bos`.
fn rows_of(ctx: &Context, cfg: &ExtractConfig) -> usize {
    let skip = usize::from(cfg.prefix_token.is_some() && !cfg.include_bos);
    ctx.ids.len().saturating_sub(skip)
}

/// What an extraction did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    /// Rows in the store now.
    pub n_tokens: u64,
    /// Rows that were already there when this run started (resume).
    pub resumed_from: u64,
    /// Shards in the store.
    pub n_shards: usize,
    /// Whether the store is complete (target reached or corpus exhausted).
    pub complete: bool,
    /// Whether the corpus ran out before `n_tokens` rows.
    pub corpus_exhausted: bool,
    /// Contexts consumed from the stream.
    pub contexts_used: u64,
    /// Tokens run through the model in this run (padding excluded, prefix included).
    pub tokens_forwarded: u64,
}

/// Extract activations of `model` at `cfg.hook` over `docs` into the store at `out`, resuming a
/// partial store made with the same settings. Returns early (store consistent, `complete =
/// false`) when `cancel` is set; rerun to continue.
pub fn extract(
    model: &Llama,
    tok: &Tokenizer,
    docs: &[Document],
    cfg: &ExtractConfig,
    out: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExtractSummary, ExtractError> {
    validate(model, cfg)?;
    let d = model.d_model();
    let mut manifest = open_or_create(out, model, tok, cfg, &corpus_digest(docs))?;
    let done = manifest.n_tokens;
    let complete = manifest.complete().unwrap_or(false);
    progress.set_total(cfg.n_tokens);
    progress.set_position(done);
    if complete {
        progress.finish();
        return Ok(summary(&manifest, done, 0));
    }

    let mut stream = contexts(docs, tok, cfg.seq_len, cfg.prefix_token).peekable();
    let mut row = 0u64; // rows of the stream before the current batch
    let mut contexts_used = 0u64;
    let mut forwarded = 0u64;
    let mut buf = ShardBuf::default();
    let mut exhausted = false;
    let mut shard_index = manifest.shards.len();
    while row < cfg.n_tokens {
        let batch: Vec<Context> = stream.by_ref().take(cfg.batch_size).collect();
        if batch.is_empty() {
            exhausted = true;
            break;
        }
        contexts_used += batch.len() as u64;
        let batch_rows: u64 = batch.iter().map(|c| rows_of(c, cfg) as u64).sum();
        if row + batch_rows <= done {
            row += batch_rows;
            continue;
        }
        if cancel.is_cancelled() {
            progress.finish();
            return Ok(summary(&manifest, done, forwarded));
        }
        let seqs: Vec<Vec<u32>> = batch.iter().map(|c| c.ids.clone()).collect();
        let b = Batch::new(&seqs, tok.eos_id().unwrap_or(0))?;
        let acts = model.run_to(&b.ids, cfg.hook)?; // [b, t, d]
        forwarded += seqs.iter().map(|s| s.len() as u64).sum::<u64>();
        let flat: Vec<f32> = acts.flatten_all()?.to_vec1()?;
        let rows = BatchRows {
            flat: &flat,
            seq_len: b.seq_len,
            d,
        };
        row = rows.append(&batch, cfg, row, done, &mut buf);
        while buf.token_ids.len() >= cfg.shard_tokens {
            let rest = buf.split_off(cfg.shard_tokens, d);
            write_shard(out, &mut manifest, shard_index, &buf, d, cfg.dtype)?;
            shard_index += 1;
            buf = rest;
            write_manifest(out, &manifest)?;
        }
        progress.set_position(manifest.n_tokens + buf.token_ids.len() as u64);
    }
    // The stream is exhausted if no further context exists (a last full batch may end it).
    if !exhausted && row < cfg.n_tokens && stream.peek().is_none() {
        exhausted = true;
    }
    if !buf.token_ids.is_empty() {
        write_shard(out, &mut manifest, shard_index, &buf, d, cfg.dtype)?;
    }
    manifest.mark_complete(exhausted, contexts_used);
    write_manifest(out, &manifest)?;
    progress.set_position(manifest.n_tokens);
    progress.finish();
    let mut s = summary(&manifest, done, forwarded);
    s.contexts_used = contexts_used;
    Ok(s)
}

/// One forwarded batch's activations, `[b, seq_len, d]` flattened.
struct BatchRows<'a> {
    flat: &'a [f32],
    seq_len: usize,
    d: usize,
}

impl BatchRows<'_> {
    /// Append the batch's rows that lie at or after `done` (rows already in the store are
    /// skipped) and before `cfg.n_tokens` to `buf`; `row` counts the stream's rows before this
    /// batch, and the count after it is returned.
    fn append(
        &self,
        batch: &[Context],
        cfg: &ExtractConfig,
        mut row: u64,
        done: u64,
        buf: &mut ShardBuf,
    ) -> u64 {
        let skip = usize::from(cfg.prefix_token.is_some() && !cfg.include_bos);
        for (ci, ctx) in batch.iter().enumerate() {
            for (p, &id) in ctx.ids.iter().enumerate().skip(skip) {
                if row >= cfg.n_tokens {
                    return row;
                }
                if row >= done {
                    let at = (ci * self.seq_len + p) * self.d;
                    buf.acts.extend_from_slice(&self.flat[at..at + self.d]);
                    buf.token_ids.push(id);
                    buf.doc_ids.push(ctx.doc);
                    buf.positions.push(p as u32);
                }
                row += 1;
            }
        }
        row
    }
}

fn summary(m: &Manifest, resumed_from: u64, forwarded: u64) -> ExtractSummary {
    ExtractSummary {
        n_tokens: m.n_tokens,
        resumed_from,
        n_shards: m.shards.len(),
        complete: m.complete().unwrap_or(false),
        corpus_exhausted: m.corpus_exhausted().unwrap_or(false),
        contexts_used: m.contexts_used().unwrap_or(0),
        tokens_forwarded: forwarded,
    }
}

fn validate(model: &Llama, cfg: &ExtractConfig) -> Result<(), ExtractError> {
    model.check_hook(cfg.hook)?;
    let bad = |field, reason: String| Err(ExtractError::Config { field, reason });
    let min = 1 + usize::from(cfg.prefix_token.is_some());
    if cfg.seq_len < min || cfg.seq_len > model.config().context_length {
        return bad(
            "seq_len",
            format!(
                "{} is outside {min}..={}",
                cfg.seq_len,
                model.config().context_length
            ),
        );
    }
    if cfg.n_tokens == 0 {
        return bad("tokens", "must be at least 1".into());
    }
    if cfg.batch_size == 0 {
        return bad("batch_size", "must be at least 1".into());
    }
    if cfg.shard_tokens == 0 {
        return bad("shard_tokens", "must be at least 1".into());
    }
    if let Some(p) = cfg.prefix_token {
        if p as usize >= model.config().vocab {
            return bad("prefix_token", format!("{p} is outside the vocabulary"));
        }
    }
    Ok(())
}

/// The manifest a fresh store starts with (no shards).
/// SHA-256 over the corpus's document names and texts, in order: a resume must read the same
/// text, not just the same corpus path.
pub fn corpus_digest(docs: &[Document]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for d in docs {
        for part in [d.name.as_bytes(), d.text.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    format!("{:x}", h.finalize())
}

fn fresh_manifest(model: &Llama, tok: &Tokenizer, cfg: &ExtractConfig) -> Manifest {
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(key::PRODUCER.into(), "sparsa activations extract".into());
    extra.insert(key::CORPUS.into(), cfg.corpus.clone().into());
    extra.insert(key::SEQ_LEN.into(), serde_json::json!(cfg.seq_len));
    extra.insert(key::N_TOKENS_TARGET.into(), serde_json::json!(cfg.n_tokens));
    extra.insert(key::BATCH_SIZE.into(), serde_json::json!(cfg.batch_size));
    extra.insert(key::MATMUL.into(), matmul_of(model).into());
    if let Some(k) = model.bf16_kernel() {
        extra.insert(key::MATMUL_KERNEL.into(), k.name().into());
    }
    extra.insert(
        key::SHARD_TOKENS.into(),
        serde_json::json!(cfg.shard_tokens),
    );
    extra.insert(key::INCLUDE_BOS.into(), serde_json::json!(cfg.include_bos));
    extra.insert(
        key::PREFIX_TOKEN.into(),
        serde_json::json!(cfg.prefix_token),
    );
    extra.insert(key::HOOK_POINT.into(), cfg.hook.point.as_str().into());
    extra.insert(
        key::TOKENIZER.into(),
        serde_json::json!({
            "kind": "byte-level BPE from GGUF metadata",
            "pre": format!("{:?}", tok.pre_tokenizer()).to_lowercase(),
            "vocab": tok.vocab_size(),
            "bos": tok.bos_id(),
            "eos": tok.eos_id(),
        }),
    );
    extra.insert(
        key::MODEL_CONFIG.into(),
        serde_json::to_value(model.config()).unwrap_or(serde_json::Value::Null),
    );
    extra.insert(
        key::TENSORS.into(),
        serde_json::json!({
            "activations": ACTIVATIONS_TENSOR,
            "token_ids": TOKEN_IDS_TENSOR,
            "doc_ids": DOC_IDS_TENSOR,
            "positions": POSITIONS_TENSOR,
        }),
    );
    extra.insert(key::COMPLETE.into(), serde_json::Value::Bool(false));
    Manifest {
        format: MANIFEST_FORMAT.to_string(),
        d_model: model.d_model(),
        dtype: cfg.dtype.name().to_string(),
        n_tokens: 0,
        shards: Vec::new(),
        model: Some(model.name().to_string()),
        hook: Some(cfg.hook.name()),
        layer: Some(cfg.hook.layer),
        extra,
    }
}

/// The precision the model's linear layers run in ([`Llama::use_bf16`]), as the manifest
/// records it.
fn matmul_of(model: &Llama) -> &'static str {
    if model.bf16_kernel().is_some() {
        "bf16"
    } else {
        "f32"
    }
}

/// Fields that must agree between a stored manifest and a fresh one for a resume.
const IDENTITY: [&str; 10] = [
    key::CORPUS,
    key::SEQ_LEN,
    key::N_TOKENS_TARGET,
    key::BATCH_SIZE,
    key::SHARD_TOKENS,
    key::INCLUDE_BOS,
    key::PREFIX_TOKEN,
    key::HOOK_POINT,
    key::TOKENIZER,
    key::MODEL_CONFIG,
];

fn open_or_create(
    out: &Path,
    model: &Llama,
    tok: &Tokenizer,
    cfg: &ExtractConfig,
    corpus_sha256: &str,
) -> Result<Manifest, ExtractError> {
    let mut fresh = fresh_manifest(model, tok, cfg);
    fresh
        .extra
        .insert(key::CORPUS_SHA256.into(), corpus_sha256.into());
    if out.join(MANIFEST_FILE).exists() {
        // Format, dtype and the shard sum are checked by `Manifest::read`.
        let stored = Manifest::read(out).map_err(|e| ExtractError::NotAStore {
            path: out.to_path_buf(),
            reason: e.reason,
        })?;
        check_same_settings(out, &stored, &fresh)?;
        if let Some((s, _)) = stored.missing_shard(out) {
            return Err(ExtractError::NotAStore {
                path: out.to_path_buf(),
                reason: format!("listed shard {} is missing", s.file),
            });
        }
        return Ok(stored);
    }
    check_holds_only_ours(out)?;
    std::fs::create_dir_all(out).map_err(|source| ExtractError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    write_manifest(out, &fresh)?;
    Ok(fresh)
}

/// A resumed store must have been made with the requested settings: model, hook, dtype, width,
/// the identity keys and (when recorded) the corpus digest.
fn check_same_settings(
    out: &Path,
    stored: &Manifest,
    fresh: &Manifest,
) -> Result<(), ExtractError> {
    let mismatch = |field: &str, s: String, r: String| ExtractError::Mismatch {
        path: out.to_path_buf(),
        field: field.to_string(),
        stored: s,
        requested: r,
    };
    if stored.model != fresh.model {
        return Err(mismatch(
            "model",
            stored.model.clone().unwrap_or_default(),
            fresh.model.clone().unwrap_or_default(),
        ));
    }
    if stored.hook != fresh.hook {
        return Err(mismatch(
            "hook",
            stored.hook.clone().unwrap_or_default(),
            fresh.hook.clone().unwrap_or_default(),
        ));
    }
    if stored.dtype != fresh.dtype {
        return Err(mismatch("dtype", stored.dtype.clone(), fresh.dtype.clone()));
    }
    if stored.d_model != fresh.d_model {
        return Err(mismatch(
            "d_model",
            stored.d_model.to_string(),
            fresh.d_model.to_string(),
        ));
    }
    for key in IDENTITY {
        let s = stored.extra.get(key).cloned().unwrap_or_default();
        let r = fresh.extra.get(key).cloned().unwrap_or_default();
        if s != r {
            return Err(mismatch(key, s.to_string(), r.to_string()));
        }
    }
    // Stores made before the precision was recorded ran in f32.
    let precision = |m: &Manifest| {
        m.extra
            .get(key::MATMUL)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "f32".into())
    };
    let (s, r) = (precision(stored), precision(fresh));
    if s != r {
        return Err(mismatch("matmul", s, r));
    }
    // Stores made before the digest was recorded carry none; only a recorded one is checked.
    if let Some(s) = stored.extra.get(key::CORPUS_SHA256) {
        let r = &fresh.extra[key::CORPUS_SHA256];
        if s != r {
            return Err(mismatch(
                "corpus_sha256 (the corpus text changed since the store was started)",
                s.to_string(),
                r.to_string(),
            ));
        }
    }
    Ok(())
}

/// A directory without a manifest may hold only what an interrupted extraction leaves (shards
/// and temp files); anything else is refused rather than written into.
fn check_holds_only_ours(out: &Path) -> Result<(), ExtractError> {
    if out.exists() {
        let entries = std::fs::read_dir(out).map_err(|source| ExtractError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| ExtractError::Io {
                path: out.to_path_buf(),
                source,
            })?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("shard-") && name.ends_with(".safetensors"))
                || name.starts_with(".shard-")
                || name.starts_with(".manifest.json.tmp");
            if !ours {
                return Err(ExtractError::NotAStore {
                    path: out.to_path_buf(),
                    reason: format!("it holds `{name}` and no manifest.json"),
                });
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct ShardBuf {
    acts: Vec<f32>,
    token_ids: Vec<u32>,
    doc_ids: Vec<u32>,
    positions: Vec<u32>,
}

impl ShardBuf {
    /// Keep the first `n` rows, return the rest.
    fn split_off(&mut self, n: usize, d: usize) -> ShardBuf {
        ShardBuf {
            acts: self.acts.split_off(n * d),
            token_ids: self.token_ids.split_off(n),
            doc_ids: self.doc_ids.split_off(n),
            positions: self.positions.split_off(n),
        }
    }
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_shard(
    out: &Path,
    manifest: &mut Manifest,
    index: usize,
    buf: &ShardBuf,
    d: usize,
    dtype: Elem,
) -> Result<(), ExtractError> {
    use crate::data::activations::{write_safetensors, RawTensor};
    let n = buf.token_ids.len();
    let file = format!("shard-{index:05}.safetensors");
    let acts = dtype.encode(&buf.acts);
    let (tok, doc, pos) = (
        u32_bytes(&buf.token_ids),
        u32_bytes(&buf.doc_ids),
        u32_bytes(&buf.positions),
    );
    let st_dtype = match dtype {
        Elem::F32 => Dtype::F32,
        Elem::F16 => Dtype::F16,
        Elem::BF16 => Dtype::BF16,
    };
    write_safetensors(
        &out.join(&file),
        &[
            RawTensor {
                name: ACTIVATIONS_TENSOR,
                dtype: st_dtype,
                shape: vec![n, d],
                data: &acts,
            },
            RawTensor {
                name: TOKEN_IDS_TENSOR,
                dtype: Dtype::U32,
                shape: vec![n],
                data: &tok,
            },
            RawTensor {
                name: DOC_IDS_TENSOR,
                dtype: Dtype::U32,
                shape: vec![n],
                data: &doc,
            },
            RawTensor {
                name: POSITIONS_TENSOR,
                dtype: Dtype::U32,
                shape: vec![n],
                data: &pos,
            },
        ],
    )?;
    manifest.shards.push(ShardEntry {
        file,
        n_tokens: n as u64,
    });
    manifest.n_tokens += n as u64;
    Ok(())
}

fn write_manifest(out: &Path, m: &Manifest) -> Result<(), ExtractError> {
    m.write(out).map_err(|source| ExtractError::Io {
        path: out.join(MANIFEST_FILE),
        source,
    })
}

/// Held-out evaluation data for a store: the next contexts of the store's own stream.
#[derive(Debug, Clone)]
pub struct HeldOut {
    /// The hook the store was extracted at.
    pub hook: Hook,
    /// Token sequences (prefix included), each of the store's `seq_len` except possibly a
    /// document's last window.
    pub seqs: Vec<Vec<u32>>,
    /// Document id of each sequence.
    pub doc_ids: Vec<u32>,
    /// The prefix (BOS) id the store used, to pass as `DownstreamConfig::bos_id`.
    pub bos_id: Option<u32>,
}

/// The `n` contexts that follow the ones an extraction consumed (`contexts_used` in the
/// manifest), rebuilt from the same corpus and tokenizer: text the SAE never saw, in the same
/// format (a document's last window may be shorter than `seq_len`).
pub fn held_out(
    docs: &[Document],
    tok: &Tokenizer,
    manifest: &Manifest,
    n: usize,
) -> Result<HeldOut, ExtractError> {
    let missing = |f: &'static str| ExtractError::Config {
        field: f,
        reason: "is missing from the store's manifest or has the wrong type (not made by \
                 `sparsa activations extract`, or not complete)"
            .into(),
    };
    let seq_len = manifest
        .context_size()
        .ok_or_else(|| missing(key::SEQ_LEN))?;
    let used = manifest
        .contexts_used()
        .ok_or_else(|| missing(key::CONTEXTS_USED))?;
    let prefix = manifest
        .prefix_token()
        .ok_or_else(|| missing(key::PREFIX_TOKEN))?;
    let hook: Hook = manifest
        .hook
        .as_deref()
        .ok_or(ExtractError::Config {
            field: "hook",
            reason: "is missing from the store's manifest".into(),
        })?
        .parse()?;
    let mut seqs = Vec::with_capacity(n);
    let mut doc_ids = Vec::with_capacity(n);
    let used = usize::try_from(used).unwrap_or(usize::MAX);
    for c in contexts(docs, tok, seq_len, prefix).skip(used).take(n) {
        doc_ids.push(c.doc);
        seqs.push(c.ids);
    }
    if seqs.is_empty() {
        return Err(ExtractError::Config {
            field: "contexts_used",
            reason: format!(
                "the corpus has no context after the {used} the store used; extract fewer tokens or evaluate on another corpus"
            ),
        });
    }
    Ok(HeldOut {
        hook,
        seqs,
        doc_ids,
        bos_id: prefix,
    })
}
