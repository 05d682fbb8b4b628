//! Files. An SAE directory in SAELens's layout, readable by `SAE.load_from_disk`:
//! - `cfg.json`: SAELens 6 fields (`architecture` = `topk` | `jumprelu`, `d_in`, `d_sae`, `k`,
//!   `dtype`, `device`, `apply_b_dec_to_input`, `normalize_activations`, `metadata` {model_name,
//!   hook_name, hook_layer, context_size, prepend_bos, exclude_special_tokens, dataset_path,
//!   sae_lens_version…}) plus a `sparsa` block (how it was trained) that SAELens ignores. The
//!   metadata comes from the training store's manifest ([`SourceMeta::from_manifest`]) and is
//!   null where the data says nothing;
//! - `sae_weights.safetensors`: `W_enc` [d_in, d_sae], `W_dec` [d_sae, d_in], `b_enc` [d_sae],
//!   `b_dec` [d_in], and `threshold` [d_sae] for JumpReLU; f32; input scaling folded in;
//! - `sparsity.safetensors`: `sparsity` [d_sae], log10 of the running firing density.
//!
//! Trainer state for exact resume sits beside them in `trainer_state.json` (step, counters,
//! config) and `trainer_state.safetensors` (raw weights, Adam moments, densities, thresholds).
//! Every file is written atomically (temp + rename).

use super::config::{Architecture, AuxKind, Capacity, RunConfig, ThresholdMode};
use super::optim::Adam;
use super::params::SaeParams;
use super::SaeError;
use crate::data::activations::{write_safetensors, RawTensor};
use crate::data::store::Manifest;
use crate::util::fs::atomic_write;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
pub const SPARSITY_FILE: &str = "sparsity.safetensors";
pub const STATE_JSON: &str = "trainer_state.json";
pub const STATE_TENSORS: &str = "trainer_state.safetensors";
/// The SAELens layout version the files follow.
pub const SAELENS_LAYOUT_VERSION: &str = "6.0.0";

/// How an SAE was trained (the `sparsa` block of cfg.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeMeta {
    pub trained_architecture: Architecture,
    pub k: usize,
    #[serde(default)]
    pub capacity: Capacity,
    /// Feature Choice capacity factor c (1 = plain Feature Choice).
    #[serde(default = "one")]
    pub capacity_factor: f64,
    /// Per-token cap of the batch rules, as a multiple of k (0 = none).
    #[serde(default)]
    pub token_cap: f64,
    #[serde(default)]
    pub threshold_mode: ThresholdMode,
    /// Rows the inference thresholds were calibrated on; `None`: the running (EMA) thresholds
    /// from training.
    #[serde(default)]
    pub threshold_calibration_tokens: Option<u64>,
    /// The input scaling that was folded into the weights.
    pub input_scale: f32,
    #[serde(default)]
    pub aux: AuxKind,
    #[serde(default)]
    pub steps: u64,
    #[serde(default)]
    pub tokens_seen: u64,
    #[serde(default)]
    pub dataset: String,
    /// Row ranges of `dataset` held out of training (half-open; empty: none or unknown).
    #[serde(default)]
    pub holdout_rows: Vec<(u64, u64)>,
    /// In-context positions whose rows training and evaluation left out (`data.exclude_positions`;
    /// empty: none). The SAE was never fitted there: splice it elsewhere only.
    #[serde(default)]
    pub exclude_positions: Vec<u32>,
    /// Where the activations came from (model, hook, contexts); unknown fields are `None`.
    #[serde(flatten)]
    pub source: SourceMeta,
}

/// Where an SAE's training activations came from: SAELens's `metadata` fields (`model_name`,
/// `hook_name`, `hook_layer`, `context_size`, `prepend_bos`) plus the exact prefix token and
/// whether its position was trained on. `None` means unknown (written as null).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub hook_name: Option<String>,
    #[serde(default)]
    pub hook_layer: Option<usize>,
    /// Tokens per context, prefix included.
    #[serde(default)]
    pub context_size: Option<usize>,
    /// Whether every context starts with a prefix (BOS) token.
    #[serde(default)]
    pub prepend_bos: Option<bool>,
    /// The prefix token id (it may differ from the tokenizer's BOS: sparsa's SmolLM2 stores use
    /// `<|endoftext|>`, id 0).
    #[serde(default)]
    pub prefix_token: Option<u32>,
    /// Whether the prefix position's activations were in the training data.
    #[serde(default)]
    pub include_bos: Option<bool>,
}

impl SourceMeta {
    /// The metadata an activation store's manifest gives (`data::store::Manifest`): model, hook
    /// and layer; context size (`seq_len`); `prepend_bos` = the store prepends a prefix token.
    pub fn from_manifest(m: &Manifest) -> Self {
        let prefix = m.prefix_token();
        SourceMeta {
            model_name: m.model.clone(),
            hook_name: m.hook.clone(),
            hook_layer: m.layer,
            context_size: m.context_size(),
            prepend_bos: prefix.map(|p| p.is_some()),
            prefix_token: prefix.flatten(),
            include_bos: m.include_bos(),
        }
    }

    /// The metadata of the training data at `path`: from its manifest when it is an activation
    /// store, else all unknown (a plain `.safetensors`/`.npy` file, synthetic data, or a store
    /// that is no longer there, e.g. when a checkpoint is exported elsewhere).
    pub fn of_data(path: Option<&Path>) -> Result<Self, SaeError> {
        match path {
            Some(p) if Manifest::is_store(p) => Manifest::read(p)
                .map(|m| Self::from_manifest(&m))
                .map_err(|e| SaeError::file(&e.path, e.reason)),
            _ => Ok(Self::default()),
        }
    }

    /// Nothing is known.
    pub fn is_unknown(&self) -> bool {
        *self == Self::default()
    }

    /// Set the fields given in `o`. A new hook name without a layer sets the layer from the name
    /// (`blocks.N.…`) or to unknown; a layer that contradicts the name is an error.
    pub fn apply(&mut self, o: &SourceOverrides) -> Result<(), SaeError> {
        let layer_of = |name: &str| {
            name.strip_prefix("blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
        };
        if let Some(name) = &o.hook_name {
            if let (Some(l), Some(n)) = (o.hook_layer, layer_of(name)) {
                if l != n {
                    return Err(SaeError::config(
"hook_layer", format!(
                        "hook layer {l} contradicts hook name `{name}` (layer {n}); give one of them"
                    )));
                }
            }
            self.hook_name = Some(name.clone());
            self.hook_layer = o.hook_layer.or_else(|| layer_of(name));
        } else if let Some(l) = o.hook_layer {
            if let Some(n) = self.hook_name.as_deref().and_then(layer_of) {
                if n != l {
                    return Err(SaeError::config(
"hook_layer", format!(
                        "hook layer {l} contradicts the hook name `{}` (layer {n}); set the hook name too",
                        self.hook_name.as_deref().unwrap_or_default()
                    )));
                }
            }
            self.hook_layer = Some(l);
        }
        if let Some(m) = &o.model_name {
            self.model_name = Some(m.clone());
        }
        if let Some(c) = o.context_size {
            if c == 0 {
                return Err(SaeError::config(
                    "context_size",
                    "context size must be at least 1",
                ));
            }
            self.context_size = Some(c);
        }
        if let Some(b) = o.prepend_bos {
            self.prepend_bos = Some(b);
            if !b {
                self.prefix_token = None;
            }
        }
        Ok(())
    }
}

/// Metadata set by hand (`sparsa sae export --model-name … --hook-name … --hook-layer …
/// --context-size … --prepend-bos …`); `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOverrides {
    pub model_name: Option<String>,
    pub hook_name: Option<String>,
    pub hook_layer: Option<usize>,
    pub context_size: Option<usize>,
    pub prepend_bos: Option<bool>,
}

fn one() -> f64 {
    1.0
}

impl Default for SaeMeta {
    fn default() -> Self {
        SaeMeta {
            trained_architecture: Architecture::TopK,
            k: 1,
            capacity: Capacity::Uniform,
            capacity_factor: 1.0,
            token_cap: 0.0,
            threshold_mode: ThresholdMode::Feature,
            threshold_calibration_tokens: None,
            input_scale: 1.0,
            aux: AuxKind::None,
            steps: 0,
            tokens_seen: 0,
            dataset: String::new(),
            holdout_rows: Vec::new(),
            exclude_positions: Vec::new(),
            source: SourceMeta::default(),
        }
    }
}

/// A trained SAE in the raw input space, ready for evaluation or export.
#[derive(Debug, Clone, PartialEq)]
pub struct SaeModel {
    pub params: SaeParams,
    /// JumpReLU thresholds (batch-dependent rules only).
    pub thresholds: Option<Vec<f32>>,
    pub meta: SaeMeta,
    /// Firing density per feature (from training).
    pub density: Vec<f32>,
}

impl SaeModel {
    /// The architecture written to cfg.json: `topk` for TopK, `jumprelu` for the rest.
    pub fn export_architecture(&self) -> &'static str {
        if self.thresholds.is_some() {
            "jumprelu"
        } else {
            "topk"
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// SAELens's `exclude_special_tokens`: the prefix token when its position was left out of the
/// training data, `false` when every position was used, null when unknown.
fn exclude_special_tokens(src: &SourceMeta) -> serde_json::Value {
    match (src.prepend_bos, src.include_bos) {
        (Some(true), Some(false)) => match src.prefix_token {
            Some(p) => serde_json::json!([p]),
            None => serde_json::Value::Null,
        },
        (Some(false), _) | (_, Some(true)) => serde_json::Value::Bool(false),
        _ => serde_json::Value::Null,
    }
}

/// Write an SAE directory (cfg.json, weights, sparsity).
pub fn save_sae(dir: &Path, m: &SaeModel) -> Result<(), SaeError> {
    std::fs::create_dir_all(dir).map_err(SaeError::io(dir))?;
    let p = &m.params;
    let w_enc_t = transpose(&p.w_enc, p.f, p.d); // F×d → d×F = SAELens W_enc [d_in, d_sae]
    let mut tensors = vec![
        RawTensor {
            name: "W_enc",
            dtype: Dtype::F32,
            shape: vec![p.d, p.f],
            data: &[],
        },
        RawTensor {
            name: "W_dec",
            dtype: Dtype::F32,
            shape: vec![p.f, p.d],
            data: &[],
        },
        RawTensor {
            name: "b_enc",
            dtype: Dtype::F32,
            shape: vec![p.f],
            data: &[],
        },
        RawTensor {
            name: "b_dec",
            dtype: Dtype::F32,
            shape: vec![p.d],
            data: &[],
        },
    ];
    let bufs = [
        f32_bytes(&w_enc_t),
        f32_bytes(&p.w_dec),
        f32_bytes(&p.b_enc),
        f32_bytes(&p.b_dec),
    ];
    let thr = m.thresholds.as_ref().map(|t| f32_bytes(t));
    for (t, b) in tensors.iter_mut().zip(&bufs) {
        t.data = b;
    }
    if let Some(t) = &thr {
        tensors.push(RawTensor {
            name: "threshold",
            dtype: Dtype::F32,
            shape: vec![p.f],
            data: t,
        });
    }
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    let log_density: Vec<f32> = m.density.iter().map(|&r| r.max(1e-10).log10()).collect();
    let ld = f32_bytes(&log_density);
    write_safetensors(
        &dir.join(SPARSITY_FILE),
        &[RawTensor {
            name: "sparsity",
            dtype: Dtype::F32,
            shape: vec![p.f],
            data: &ld,
        }],
    )?;
    let meta = &m.meta;
    let src = &meta.source;
    let mut cfg = serde_json::json!({
        "architecture": m.export_architecture(),
        "d_in": p.d,
        "d_sae": p.f,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": src.model_name,
            "hook_name": src.hook_name,
            "hook_layer": src.hook_layer,
            "context_size": src.context_size,
            "prepend_bos": src.prepend_bos,
            "exclude_special_tokens": exclude_special_tokens(src),
            "dataset_path": meta.dataset,
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "sae_lens_training_version": SAELENS_LAYOUT_VERSION,
        },
        "sparsa": meta,
    });
    if m.thresholds.is_none() {
        cfg["k"] = serde_json::json!(meta.k);
    }
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| SaeError::file(dir, e.to_string()))?;
    atomic_write(&dir.join(CFG_FILE), text.as_bytes()).map_err(SaeError::io(&dir.join(CFG_FILE)))
}

/// The source fields SAELens reads, from its `metadata` block (SAELens 6), else from the top
/// level of cfg.json (older SAELens layouts); these win over the `sparsa` block (a hand-edited
/// cfg.json edits them), which fills only what they leave null.
fn fill_source(src: &mut SourceMeta, cfg: &serde_json::Value) {
    let md = cfg.get("metadata").filter(|v| v.is_object());
    let get = |k: &str| {
        md.and_then(|m| m.get(k))
            .filter(|v| !v.is_null())
            .or_else(|| cfg.get(k).filter(|v| !v.is_null()))
    };
    let string = |k: &str| get(k).and_then(|v| v.as_str()).map(String::from);
    let int = |k: &str| get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    src.model_name = string("model_name").or(src.model_name.take());
    src.hook_name = string("hook_name").or(src.hook_name.take());
    src.hook_layer = int("hook_layer").or(src.hook_layer);
    src.context_size = int("context_size").or(src.context_size);
    src.prepend_bos = get("prepend_bos")
        .and_then(|v| v.as_bool())
        .or(src.prepend_bos);
}

/// Read a safetensors file fully into memory.
fn read_file(path: &Path) -> Result<Vec<u8>, SaeError> {
    if !path.exists() {
        return Err(SaeError::file(
            path,
            "missing; is this an SAE directory written by sparsa or SAELens?",
        ));
    }
    std::fs::read(path).map_err(SaeError::io(path))
}

/// The element type of an SAE's weights (cfg.json `dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    /// SAELens writes `float32`, `float16`, `bfloat16`, sometimes with a `torch.` prefix.
    fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix("torch.").unwrap_or(s) {
            "float32" | "float" => Some(Self::F32),
            "float16" | "half" => Some(Self::F16),
            "bfloat16" => Some(Self::BF16),
            _ => None,
        }
    }

    /// `v` as this dtype holds it (exact in f32).
    fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::F16 => half::f16::from_f32(v).to_f32(),
            Self::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// One tensor of the expected shape, stored as F32, F16 or BF16, as f32.
fn get_f32(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, SaeError> {
    let t = st
        .tensor(name)
        .map_err(|_| SaeError::file(path, format!("no tensor `{name}`")))?;
    if t.shape() != shape {
        return Err(SaeError::file(
            path,
            format!(
                "tensor `{name}` has shape {:?}; expected {shape:?}",
                t.shape()
            ),
        ));
    }
    let data = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(SaeError::file(
                path,
                format!(
                    "tensor `{name}` has dtype {other:?}; sparsa reads F32, F16 and BF16 weights"
                ),
            ))
        }
    })
}

fn parse_st<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, SaeError> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        SaeError::file(
            path,
            format!("not a valid safetensors file ({e}); it is corrupt or truncated"),
        )
    })
}

/// What cfg.json says, checked.
struct SaeCfg {
    d: usize,
    f: usize,
    jumprelu: bool,
    meta: SaeMeta,
    dtype: WeightDtype,
    apply_b_dec_to_input: bool,
    rescale_acts_by_decoder_norm: bool,
}

fn read_cfg(dir: &Path) -> Result<SaeCfg, SaeError> {
    let cfg_path = dir.join(CFG_FILE);
    let cfg = read_json(&cfg_path)?;
    let bad = |what: String| SaeError::file(&cfg_path, what);
    let get_bool = |k: &str, default: bool| -> Result<bool, SaeError> {
        match cfg.get(k) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("field `{k}` = {v} must be true or false"))),
        }
    };
    let (d, f) = (
        cfg_usize(&cfg, "d_in").map_err(bad)?,
        cfg_usize(&cfg, "d_sae").map_err(bad)?,
    );
    if d == 0 || f == 0 {
        return Err(bad("d_in and d_sae must be positive".into()));
    }
    let arch = cfg
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("standard");
    let dtype = supported_form(&cfg, arch).map_err(bad)?;
    let apply_b_dec_to_input = get_bool("apply_b_dec_to_input", true)?;
    let rescale_acts_by_decoder_norm = get_bool("rescale_acts_by_decoder_norm", false)?;
    if rescale_acts_by_decoder_norm && arch != "topk" {
        return Err(bad(format!(
            "field `rescale_acts_by_decoder_norm` = true is defined for `topk` SAEs only (SAELens's \
             `{arch}` ignores it); fold the decoder norms into the weights and set it to false"
        )));
    }
    Ok(SaeCfg {
        d,
        f,
        jumprelu: arch == "jumprelu",
        meta: meta_of(&cfg, arch, f).map_err(bad)?,
        dtype,
        apply_b_dec_to_input,
        rescale_acts_by_decoder_norm,
    })
}

/// A cfg.json parsed, with "missing" and "not JSON" told apart.
fn read_json(cfg_path: &Path) -> Result<serde_json::Value, SaeError> {
    let text = std::fs::read_to_string(cfg_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SaeError::file(cfg_path, "missing; is this an SAE directory?")
        } else {
            SaeError::Io {
                path: cfg_path.to_path_buf(),
                source: e,
            }
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| SaeError::file(cfg_path, format!("not valid JSON: {e}")))
}

/// A required non-negative integer field.
fn cfg_usize(cfg: &serde_json::Value, k: &str) -> Result<usize, String> {
    cfg.get(k)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| format!("missing or non-integer field `{k}`"))
}

/// Checks that the architecture and normalisation are ones sparsa reads, and returns the weights'
/// dtype (float32 when the field is absent).
fn supported_form(cfg: &serde_json::Value, arch: &str) -> Result<WeightDtype, String> {
    if arch != "topk" && arch != "jumprelu" {
        return Err(format!(
            "unsupported architecture `{arch}`; sparsa reads `topk` and `jumprelu` SAEs"
        ));
    }
    if cfg
        .get("normalize_activations")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s != "none")
    {
        return Err("normalize_activations other than \"none\" is not supported".into());
    }
    match cfg.get("dtype") {
        None | Some(serde_json::Value::Null) => Ok(WeightDtype::F32),
        Some(v) => v.as_str().and_then(WeightDtype::parse).ok_or_else(|| {
            format!(
                "field `dtype` = {v} is not supported; sparsa loads \"float32\", \"float16\" and \"bfloat16\" SAEs"
            )
        }),
    }
}

/// sparsa's own metadata (the `sparsa` block), or what a foreign SAE's fields imply; a TopK SAE's
/// `k` must lie in 1..=d_sae.
fn meta_of(cfg: &serde_json::Value, arch: &str, f: usize) -> Result<SaeMeta, String> {
    let mut meta: SaeMeta = match cfg.get("sparsa") {
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| format!("bad `sparsa` block: {e}"))?
        }
        None => SaeMeta {
            trained_architecture: if arch == "topk" {
                Architecture::TopK
            } else {
                Architecture::MutualChoice
            },
            k: cfg.get("k").and_then(|v| v.as_u64()).unwrap_or(1) as usize,
            ..Default::default()
        },
    };
    fill_source(&mut meta.source, cfg);
    if arch == "topk" {
        meta.k = cfg_usize(cfg, "k")?;
        if meta.k == 0 || meta.k > f {
            return Err(format!("k = {} must be in 1..=d_sae ({f})", meta.k));
        }
    }
    Ok(meta)
}

/// The metadata of an SAE directory (its cfg.json only; the weights are not read).
pub fn load_meta(dir: &Path) -> Result<SaeMeta, SaeError> {
    Ok(read_cfg(dir)?.meta)
}

/// Load an SAE directory written by [`save_sae`] or by SAELens (`topk` or `jumprelu`).
///
/// SAELens settings are honoured by folding them into sparsa's one encoding
/// A = ReLU((x − b_dec)·W_encᵀ + b_enc), x̂ = Z·W_dec + b_dec, which gives the same codes and
/// reconstruction:
/// - `apply_b_dec_to_input = false` (encode x, not x − b_dec): b_enc ← b_enc + W_enc·b_dec;
/// - `rescale_acts_by_decoder_norm = true` (TopK only; pre-activations times ‖W_dec_j‖, codes
///   divided by it before decoding): W_enc_j, b_enc_j ← ·‖W_dec_j‖, W_dec_j ← W_dec_j/‖W_dec_j‖;
/// - `dtype` `float16`/`bfloat16`: weights are stored in any of F32/F16/BF16 and rounded to the
///   declared dtype, as SAELens holds them; arithmetic is f32.
///
/// Anything else (other architectures, `normalize_activations`, other dtypes, a zero decoder row
/// under rescaling) is an error naming the field.
pub fn load_sae(dir: &Path) -> Result<SaeModel, SaeError> {
    let SaeCfg {
        d,
        f,
        jumprelu,
        meta,
        dtype,
        apply_b_dec_to_input,
        rescale_acts_by_decoder_norm,
    } = read_cfg(dir)?;
    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = read_file(&wpath)?;
    let st = parse_st(&bytes, &wpath)?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, SaeError> {
        let mut v = get_f32(&st, &wpath, name, shape)?;
        v.iter_mut().for_each(|x| *x = dtype.round(*x));
        Ok(v)
    };
    let w_enc_t = get("W_enc", &[d, f])?;
    let mut params = SaeParams {
        d,
        f,
        w_enc: transpose(&w_enc_t, d, f),
        b_enc: get("b_enc", &[f])?,
        w_dec: get("W_dec", &[f, d])?,
        b_dec: get("b_dec", &[d])?,
    };
    if let Some(what) = params.non_finite() {
        return Err(SaeError::file(
            &wpath,
            format!("tensor `{what}` holds NaN or infinity"),
        ));
    }
    if !apply_b_dec_to_input {
        for (j, b) in params.b_enc.iter_mut().enumerate() {
            let w = &params.w_enc[j * d..(j + 1) * d];
            let dot: f64 = w
                .iter()
                .zip(&params.b_dec)
                .map(|(&w, &c)| w as f64 * c as f64)
                .sum();
            *b = (*b as f64 + dot) as f32;
        }
    }
    if rescale_acts_by_decoder_norm {
        for j in 0..f {
            let row = &mut params.w_dec[j * d..(j + 1) * d];
            let n = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            if !(n > 0.0 && n.is_finite()) {
                return Err(SaeError::file(
                    &wpath,
                    format!(
                        "W_dec row {j} has norm {n}: rescale_acts_by_decoder_norm = true divides by it"
                    ),
                ));
            }
            row.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
            params.w_enc[j * d..(j + 1) * d]
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * n) as f32);
            params.b_enc[j] = (params.b_enc[j] as f64 * n) as f32;
        }
    }
    let thresholds = if jumprelu {
        let t = get("threshold", &[f])?;
        if t.iter().any(|x| x.is_nan()) {
            return Err(SaeError::file(&wpath, "tensor `threshold` holds NaN"));
        }
        Some(t)
    } else {
        None
    };
    let spath = dir.join(SPARSITY_FILE);
    let density = if spath.exists() {
        let sb = read_file(&spath)?;
        let sst = parse_st(&sb, &spath)?;
        get_f32(&sst, &spath, "sparsity", &[f])?
            .iter()
            .map(|&l| 10f32.powf(l))
            .collect()
    } else {
        vec![0.0; f]
    };
    Ok(SaeModel {
        params,
        thresholds,
        meta,
        density,
    })
}

#[derive(Serialize, Deserialize)]
struct StateJson {
    format: String,
    config_toml: String,
    step: u64,
    tokens: u64,
    adam_t: u64,
    density_updates: u64,
    /// f32 bit patterns (exact).
    scale_bits: u32,
    global_threshold_bits: u32,
}

const STATE_FORMAT: &str = "sparsa-trainer-state/1";

/// Mutable training state beyond the weights; everything needed for an exact resume.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    pub step: u64,
    /// Tokens trained on (= rows read from the training source).
    pub tokens: u64,
    pub adam: Adam,
    /// Tokens since each feature was last selected (dead when ≥ `aux.dead_tokens`).
    pub since_fired: Vec<u64>,
    /// EMA of the per-batch firing fraction (not bias-corrected).
    pub density_ema: Vec<f32>,
    /// Number of EMA updates so far (for bias correction).
    pub density_updates: u64,
    /// Learned per-feature JumpReLU thresholds θ_j (+∞: never selected).
    pub thresholds: Vec<f32>,
    /// Learned global threshold θ.
    pub global_threshold: f32,
}

/// Save the trainer state (exact: raw f32 tensors and bit patterns).
pub fn save_trainer_state(
    dir: &Path,
    cfg: &RunConfig,
    p: &SaeParams,
    scale: f32,
    s: &TrainState,
) -> Result<(), SaeError> {
    let since: Vec<u8> = s.since_fired.iter().flat_map(|x| x.to_le_bytes()).collect();
    let named: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
        ("w_enc", vec![p.f, p.d], f32_bytes(&p.w_enc)),
        ("b_enc", vec![p.f], f32_bytes(&p.b_enc)),
        ("w_dec", vec![p.f, p.d], f32_bytes(&p.w_dec)),
        ("b_dec", vec![p.d], f32_bytes(&p.b_dec)),
        ("m_w_enc", vec![p.f, p.d], f32_bytes(&s.adam.m[0])),
        ("m_b_enc", vec![p.f], f32_bytes(&s.adam.m[1])),
        ("m_w_dec", vec![p.f, p.d], f32_bytes(&s.adam.m[2])),
        ("m_b_dec", vec![p.d], f32_bytes(&s.adam.m[3])),
        ("v_w_enc", vec![p.f, p.d], f32_bytes(&s.adam.v[0])),
        ("v_b_enc", vec![p.f], f32_bytes(&s.adam.v[1])),
        ("v_w_dec", vec![p.f, p.d], f32_bytes(&s.adam.v[2])),
        ("v_b_dec", vec![p.d], f32_bytes(&s.adam.v[3])),
        ("density_ema", vec![p.f], f32_bytes(&s.density_ema)),
        ("thresholds", vec![p.f], f32_bytes(&s.thresholds)),
    ];
    let mut tensors: Vec<RawTensor> = named
        .iter()
        .map(|(n, shape, data)| RawTensor {
            name: n,
            dtype: Dtype::F32,
            shape: shape.clone(),
            data,
        })
        .collect();
    tensors.push(RawTensor {
        name: "since_fired",
        dtype: Dtype::U64,
        shape: vec![p.f],
        data: &since,
    });
    write_safetensors(&dir.join(STATE_TENSORS), &tensors)?;
    let js = StateJson {
        format: STATE_FORMAT.into(),
        config_toml: cfg.to_toml(),
        step: s.step,
        tokens: s.tokens,
        adam_t: s.adam.t,
        density_updates: s.density_updates,
        scale_bits: scale.to_bits(),
        global_threshold_bits: s.global_threshold.to_bits(),
    };
    let path = dir.join(STATE_JSON);
    let text =
        serde_json::to_string_pretty(&js).map_err(|e| SaeError::file(&path, e.to_string()))?;
    atomic_write(&path, text.as_bytes()).map_err(SaeError::io(&path))
}

/// Load what [`save_trainer_state`] wrote.
pub fn load_trainer_state(dir: &Path) -> Result<(RunConfig, SaeParams, f32, TrainState), SaeError> {
    let jpath = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&jpath).map_err(|_| {
        SaeError::file(
            &jpath,
            "missing or unreadable: nothing to resume here (train without --resume to start fresh)",
        )
    })?;
    let js: StateJson = serde_json::from_str(&text)
        .map_err(|e| SaeError::file(&jpath, format!("corrupt trainer state: {e}")))?;
    if js.format != STATE_FORMAT {
        return Err(SaeError::file(
            &jpath,
            format!("unknown trainer-state format `{}`", js.format),
        ));
    }
    let cfg = RunConfig::from_toml(&js.config_toml, &[], &jpath.display().to_string())?;
    let (d, f) = (cfg.sae.d_in, cfg.sae.d_sae);
    let tpath = dir.join(STATE_TENSORS);
    let bytes = read_file(&tpath)?;
    let st = parse_st(&bytes, &tpath)?;
    let g = |n: &str, shape: &[usize]| get_f32(&st, &tpath, n, shape);
    let params = SaeParams {
        d,
        f,
        w_enc: g("w_enc", &[f, d])?,
        b_enc: g("b_enc", &[f])?,
        w_dec: g("w_dec", &[f, d])?,
        b_dec: g("b_dec", &[d])?,
    };
    let adam = Adam {
        m: [
            g("m_w_enc", &[f, d])?,
            g("m_b_enc", &[f])?,
            g("m_w_dec", &[f, d])?,
            g("m_b_dec", &[d])?,
        ],
        v: [
            g("v_w_enc", &[f, d])?,
            g("v_b_enc", &[f])?,
            g("v_w_dec", &[f, d])?,
            g("v_b_dec", &[d])?,
        ],
        t: js.adam_t,
    };
    let since = st
        .tensor("since_fired")
        .map_err(|_| SaeError::file(&tpath, "no tensor `since_fired`"))?;
    if since.dtype() != Dtype::U64 || since.shape() != [f] {
        return Err(SaeError::file(
            &tpath,
            "tensor `since_fired` must be U64 [d_sae]",
        ));
    }
    let since_fired = since
        .data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let state = TrainState {
        step: js.step,
        tokens: js.tokens,
        adam,
        since_fired,
        density_ema: g("density_ema", &[f])?,
        density_updates: js.density_updates,
        thresholds: g("thresholds", &[f])?,
        global_threshold: f32::from_bits(js.global_threshold_bits),
    };
    Ok((cfg, params, f32::from_bits(js.scale_bits), state))
}
