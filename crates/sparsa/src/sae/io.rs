//! Files. An SAE directory in SAELens's layout, readable by `SAE.load_from_disk`:
//! - `cfg.json`: SAELens 6 fields (`architecture` = `topk` | `jumprelu`, `d_in`, `d_sae`, `k`,
//!   `dtype`, `device`, `apply_b_dec_to_input`, `normalize_activations`, `metadata` {model_name,
//!   hook_name, hook_layer, dataset_path, sae_lens_version…}) plus a `sparsa` block (how it was
//!   trained) that SAELens ignores;
//! - `sae_weights.safetensors`: `W_enc` [d_in, d_sae], `W_dec` [d_sae, d_in], `b_enc` [d_sae],
//!   `b_dec` [d_in], and `threshold` [d_sae] for JumpReLU; f32; input scaling folded in;
//! - `sparsity.safetensors`: `sparsity` [d_sae], log10 of the running firing density.
//!
//! Trainer state for exact resume sits beside them in `trainer_state.json` (step, counters,
//! config) and `trainer_state.safetensors` (raw weights, Adam moments, densities, thresholds).
//! Every file is written atomically (temp + rename).

use super::allocation::Capacity;
use super::config::{Architecture, AuxKind, RunConfig, ThresholdMode};
use super::optim::Adam;
use super::params::SaeParams;
use super::train::TrainState;
use super::SaeError;
use crate::data::activations::{write_safetensors, RawTensor};
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
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub hook_name: Option<String>,
    #[serde(default)]
    pub hook_layer: Option<usize>,
    #[serde(default)]
    pub context_size: Option<usize>,
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
            threshold_mode: ThresholdMode::Feature,
            threshold_calibration_tokens: None,
            input_scale: 1.0,
            aux: AuxKind::None,
            steps: 0,
            tokens_seen: 0,
            dataset: String::new(),
            model_name: None,
            hook_name: None,
            hook_layer: None,
            context_size: None,
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
            "model_name": meta.model_name,
            "hook_name": meta.hook_name,
            "hook_layer": meta.hook_layer,
            "context_size": meta.context_size,
            "dataset_path": meta.dataset,
            "prepend_bos": true,
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

/// One f32 tensor of the expected shape.
fn get_f32(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, SaeError> {
    let t = st
        .tensor(name)
        .map_err(|_| SaeError::file(path, format!("no tensor `{name}`")))?;
    if t.dtype() != Dtype::F32 {
        return Err(SaeError::file(
            path,
            format!("tensor `{name}` has dtype {:?}; expected F32", t.dtype()),
        ));
    }
    if t.shape() != shape {
        return Err(SaeError::file(
            path,
            format!(
                "tensor `{name}` has shape {:?}; expected {shape:?}",
                t.shape()
            ),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn parse_st<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, SaeError> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        SaeError::file(
            path,
            format!("not a valid safetensors file ({e}); it is corrupt or truncated"),
        )
    })
}

/// Load an SAE directory written by [`save_sae`] (or an SAELens `topk`/`jumprelu` SAE).
pub fn load_sae(dir: &Path) -> Result<SaeModel, SaeError> {
    let cfg_path = dir.join(CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SaeError::file(&cfg_path, "missing; is this an SAE directory?")
        } else {
            SaeError::Io {
                path: cfg_path.clone(),
                source: e,
            }
        }
    })?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SaeError::file(&cfg_path, format!("not valid JSON: {e}")))?;
    let get_usize = |k: &str| -> Result<usize, SaeError> {
        cfg.get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| SaeError::file(&cfg_path, format!("missing or non-integer field `{k}`")))
    };
    let (d, f) = (get_usize("d_in")?, get_usize("d_sae")?);
    if d == 0 || f == 0 {
        return Err(SaeError::file(&cfg_path, "d_in and d_sae must be positive"));
    }
    let arch = cfg
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("standard");
    if arch != "topk" && arch != "jumprelu" {
        return Err(SaeError::file(
            &cfg_path,
            format!("unsupported architecture `{arch}`; sparsa reads `topk` and `jumprelu` SAEs"),
        ));
    }
    if cfg
        .get("normalize_activations")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s != "none")
    {
        return Err(SaeError::file(
            &cfg_path,
            "normalize_activations other than \"none\" is not supported",
        ));
    }
    let mut meta: SaeMeta = match cfg.get("sparsa") {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| SaeError::file(&cfg_path, format!("bad `sparsa` block: {e}")))?,
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
    if let Some(md) = cfg.get("metadata") {
        meta.model_name = meta.model_name.or(md
            .get("model_name")
            .and_then(|v| v.as_str())
            .map(String::from));
        meta.hook_name = meta.hook_name.or(md
            .get("hook_name")
            .and_then(|v| v.as_str())
            .map(String::from));
    }
    if arch == "topk" {
        meta.k = get_usize("k")?;
        if meta.k == 0 || meta.k > f {
            return Err(SaeError::file(
                &cfg_path,
                format!("k = {} must be in 1..=d_sae ({f})", meta.k),
            ));
        }
    }

    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = read_file(&wpath)?;
    let st = parse_st(&bytes, &wpath)?;
    let w_enc_t = get_f32(&st, &wpath, "W_enc", &[d, f])?;
    let params = SaeParams {
        d,
        f,
        w_enc: transpose(&w_enc_t, d, f),
        b_enc: get_f32(&st, &wpath, "b_enc", &[f])?,
        w_dec: get_f32(&st, &wpath, "W_dec", &[f, d])?,
        b_dec: get_f32(&st, &wpath, "b_dec", &[d])?,
    };
    if let Some(what) = params.non_finite() {
        return Err(SaeError::file(
            &wpath,
            format!("tensor `{what}` holds NaN or infinity"),
        ));
    }
    let thresholds = if arch == "jumprelu" {
        let t = get_f32(&st, &wpath, "threshold", &[f])?;
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
