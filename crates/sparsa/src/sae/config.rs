//! Run configuration: `[sae]`, `[aux]`, `[train]`, `[data]` tables of a TOML file, with
//! `key=value` overrides (`train.lr=1e-3`). Unknown keys are errors, naming the key.
//! Defaults follow `shared/spec/sae.md`; values marked "project choice" there are documented
//! as such on their fields.

use super::SaeError;
use crate::data::synthetic::SyntheticConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the budget kB is split into per-feature capacities (project choice, configurable).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Capacity {
    /// m_j = ⌊kB/F⌋, the remainder spread one each over a contiguous (cyclic) run of features
    /// that starts where the previous batch's run ended, so Σ m_j = kB.
    #[default]
    Uniform,
    /// m_j ∝ (r_j + β)^−α with r_j ∈ 1..F the feature's rank by running firing density
    /// (descending, ties to the lower index), each m_j capped at B (the excess re-spread over
    /// the others), then rounded by systematic sampling with an offset that rotates with the
    /// batch index, so Σ m_j = min(kB, F·B) and E[m_j] is the exact share.
    Zipf { alpha: f64, beta: f64 },
}

/// The allocation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Each token keeps its k largest pre-activations.
    #[serde(rename = "topk")]
    TopK,
    /// The kB largest entries of the batch (alias `batch_topk`).
    #[serde(alias = "batch_topk")]
    MutualChoice,
    /// Each feature keeps its m_j largest tokens, Σ m_j ≤ kB.
    FeatureChoice,
    /// Inference form: z = a if a > θ_j (thresholds come with the weights).
    #[serde(rename = "jumprelu")]
    JumpRelu,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::TopK => "topk",
            Architecture::MutualChoice => "mutual_choice",
            Architecture::FeatureChoice => "feature_choice",
            Architecture::JumpRelu => "jumprelu",
        }
    }
    /// Whether training needs learned thresholds for an inference form.
    pub fn batch_dependent(self) -> bool {
        matches!(
            self,
            Architecture::MutualChoice | Architecture::FeatureChoice
        )
    }
}

impl std::str::FromStr for Architecture {
    type Err = String;
    /// A trainable architecture: `topk`, `mutual_choice` (alias `batch_topk`) or
    /// `feature_choice` (spaces around the name are ignored). `jumprelu` is an inference form,
    /// not trained, and is refused.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "topk" => Ok(Architecture::TopK),
            "mutual_choice" | "batch_topk" => Ok(Architecture::MutualChoice),
            "feature_choice" => Ok(Architecture::FeatureChoice),
            other => Err(format!(
                "unknown architecture `{other}` (topk, mutual_choice, feature_choice)"
            )),
        }
    }
}

/// Which learned threshold the JumpReLU inference form uses (project choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    /// θ_j per feature.
    #[default]
    Feature,
    /// One θ shared by all features.
    Global,
}

/// Where the JumpReLU inference thresholds come from (project choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// A calibration pass after training over a seeded sample of training rows, in batches of
    /// the training size: θ_j is set so that feature j fires on exactly as many of those rows
    /// as the training form selects it (per feature), or θ so that the total L0 matches
    /// (global). See `sae::calibrate`.
    #[default]
    Calibrated,
    /// The running estimate kept during training: an EMA of each feature's smallest selected
    /// activation per batch (stale for features that fire rarely).
    Ema,
}

/// How `data.holdout_tokens` rows are taken out of a file for evaluation (project choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldoutSplit {
    /// `data.holdout_chunks` equal chunks, each centred in one of as many equal segments of the
    /// file, so the held-out rows sample the whole data (a store is in corpus order: its tail
    /// is the last documents, whose activations may differ from the rest).
    #[default]
    Spread,
    /// The last `holdout_tokens` rows: a test of generalisation to later text.
    Tail,
}

/// The held-out row ranges of a file of `n_rows` rows: `holdout` = h rows split as `split`
/// says, sorted, disjoint, half-open, h rows in all. A spread holdout has c = min(`chunks`, h)
/// chunks of ⌊h/c⌋ or ⌈h/c⌉ rows; the g = n − h training rows sit around them as half a gap
/// of g/c, c − 1 whole gaps, and half a gap (each rounded down), so chunk i sits near the
/// centre of the i-th c-th of the file.
pub fn holdout_ranges(
    n_rows: u64,
    holdout: u64,
    split: HoldoutSplit,
    chunks: u64,
) -> Vec<(u64, u64)> {
    let h = holdout.min(n_rows);
    if h == 0 {
        return Vec::new();
    }
    match split {
        HoldoutSplit::Tail => vec![(n_rows - h, n_rows)],
        HoldoutSplit::Spread => {
            let c = chunks.clamp(1, h) as u128;
            let (h, g) = (h as u128, (n_rows - h) as u128);
            (0..c)
                .map(|i| {
                    // Training rows before chunk i: half a gap, then i whole gaps of g/c.
                    let start = g * (2 * i + 1) / (2 * c) + i * h / c;
                    let len = (i + 1) * h / c - i * h / c;
                    (start as u64, (start + len) as u64)
                })
                .collect()
        }
    }
}

/// `[sae]`: the autoencoder and its allocation rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeConfig {
    pub architecture: Architecture,
    /// Input width d; 0 = take it from the data.
    #[serde(default)]
    pub d_in: usize,
    /// Number of latents F.
    pub d_sae: usize,
    /// Mean number of active features per token (TopK: exact per token; Mutual/Feature
    /// Choice: the budget is k·B per batch).
    pub k: usize,
    /// Feature Choice capacities (project choice).
    #[serde(default)]
    pub capacity: Capacity,
    /// Feature Choice capacity factor c ≥ 1 (project choice): each feature may take up to
    /// c·m_j tokens, and the kB largest of those selections are kept. 1 = plain Feature Choice;
    /// c → ∞ approaches Mutual Choice.
    #[serde(default = "default_capacity_factor")]
    pub capacity_factor: f64,
    /// Per-token cap for the batch rules (Mutual and Feature Choice; project choice): a token
    /// takes at most ⌈token_cap·k⌉ features, the budget k·B unchanged. 0 = no cap (the papers'
    /// rules); 1 makes Mutual Choice TopK.
    #[serde(default)]
    pub token_cap: f64,
    /// Inference thresholds written on export (project choice).
    #[serde(default)]
    pub threshold_mode: ThresholdMode,
    /// EMA decay of the learned thresholds per batch (project choice).
    #[serde(default = "default_threshold_ema")]
    pub threshold_ema: f64,
    /// Where exported inference thresholds come from (project choice; default calibrated).
    #[serde(default)]
    pub threshold_source: ThresholdSource,
    /// Training rows read by the threshold calibration pass.
    #[serde(default = "default_calibration_tokens")]
    pub calibration_tokens: u64,
}

fn default_capacity_factor() -> f64 {
    1.0
}

fn default_threshold_ema() -> f64 {
    0.99
}

fn default_calibration_tokens() -> u64 {
    65_536
}

impl SaeConfig {
    pub fn validate(&self) -> Result<(), SaeError> {
        let bad = |field: &str, m: String| Err(SaeError::config(field, m));
        if self.d_sae == 0 {
            return bad("sae.d_sae", "sae.d_sae must be at least 1".into());
        }
        if self.k == 0 {
            return bad(
                "sae.k",
                "sae.k must be at least 1 (k = 0 selects nothing)".into(),
            );
        }
        if self.k > self.d_sae {
            return bad(
                "sae.k",
                format!(
                "sae.k = {} exceeds sae.d_sae = {}: a token cannot use more features than exist",
                self.k, self.d_sae
            ),
            );
        }
        if !(0.0..1.0).contains(&self.threshold_ema) {
            return bad(
                "sae.threshold_ema",
                format!(
                    "sae.threshold_ema = {} must be in [0, 1)",
                    self.threshold_ema
                ),
            );
        }
        if !(self.capacity_factor.is_finite() && self.capacity_factor >= 1.0) {
            return bad(
                "sae.capacity_factor",
                format!(
                    "sae.capacity_factor = {} must be a number ≥ 1 (1 = plain Feature Choice)",
                    self.capacity_factor
                ),
            );
        }
        if !(self.token_cap.is_finite() && (self.token_cap == 0.0 || self.token_cap >= 1.0)) {
            return bad(
                "sae.token_cap",
                format!(
                    "sae.token_cap = {} must be 0 (no cap) or a number ≥ 1 (a token takes at most \
                 ⌈token_cap·k⌉ features)",
                    self.token_cap
                ),
            );
        }
        if self.threshold_source == ThresholdSource::Calibrated && self.calibration_tokens == 0 {
            return bad(
                "sae.calibration_tokens",
                "sae.calibration_tokens must be at least 1 with threshold_source = \"calibrated\" \
                 (or set sae.threshold_source = \"ema\")"
                    .into(),
            );
        }
        if let Capacity::Zipf { alpha, beta } = self.capacity {
            if !(alpha.is_finite() && alpha >= 0.0 && beta.is_finite() && beta > -1.0) {
                return bad("sae.capacity", format!(
                    "sae.capacity zipf needs alpha ≥ 0 and beta > -1, got alpha = {alpha}, beta = {beta}"
                ));
            }
        }
        Ok(())
    }
}

/// The auxiliary loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxKind {
    #[default]
    None,
    AuxK,
    AuxZipf,
}

/// Normalisation of the auxiliary reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxNorm {
    /// Σ‖e − ê‖² / Σ‖e − ē‖².
    #[default]
    Nmse,
    /// Σ‖e − ê‖² / (B·d).
    Mse,
}

/// Precision of the encoder's dense product X′·W_encᵀ (`train.matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Matmul {
    /// f32 operands and accumulation.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 accumulation (`kernels::bf16`: AMX or AVX512-BF16;
    /// CPUs with neither fall back to f32 with a message). Selection, decode, gradients and
    /// Adam stay f32. Project choice, off by default.
    Bf16,
}

impl Matmul {
    pub fn name(self) -> &'static str {
        match self {
            Matmul::F32 => "f32",
            Matmul::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Matmul {
    type Err = String;
    /// `f32` or `bf16` (spaces around the name are ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "f32" => Ok(Matmul::F32),
            "bf16" => Ok(Matmul::Bf16),
            other => Err(format!("unknown precision `{other}` (f32, bf16)")),
        }
    }
}

impl AuxKind {
    pub fn name(self) -> &'static str {
        match self {
            AuxKind::None => "none",
            AuxKind::AuxK => "aux_k",
            AuxKind::AuxZipf => "aux_zipf",
        }
    }
}

impl std::str::FromStr for AuxKind {
    type Err = String;
    /// `none`, `aux_k` or `aux_zipf` (spaces around the name are ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" => Ok(AuxKind::None),
            "aux_k" => Ok(AuxKind::AuxK),
            "aux_zipf" => Ok(AuxKind::AuxZipf),
            other => Err(format!(
                "unknown auxiliary loss `{other}` (none, aux_k, aux_zipf)"
            )),
        }
    }
}

/// A Zipf parameter: a number, or `"fit"` from the running densities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ZipfParam {
    Fit,
    Value(f64),
}

impl Serialize for ZipfParam {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ZipfParam::Fit => s.serialize_str("fit"),
            ZipfParam::Value(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ZipfParam {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(ZipfParam::Value(v)),
            Raw::Int(v) => Ok(ZipfParam::Value(v as f64)),
            Raw::Str(s) if s == "fit" => Ok(ZipfParam::Fit),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "expected a number or \"fit\", got \"{s}\""
            ))),
        }
    }
}

/// `[aux]`: the auxiliary loss that revives dead and under-used features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuxConfig {
    #[serde(default)]
    pub kind: AuxKind,
    /// Weight α of the auxiliary loss (default 1/32).
    #[serde(default = "default_aux_coeff")]
    pub coeff: f64,
    /// Features decoded per token by the auxiliary loss; default d/2.
    #[serde(default)]
    pub k_aux: Option<usize>,
    /// A feature is dead when not selected in this many tokens (default 10,000,000).
    #[serde(default = "default_dead_tokens")]
    pub dead_tokens: u64,
    #[serde(default)]
    pub normalization: AuxNorm,
    /// aux_zipf exponent α of the target τ_r ∝ (r + β)^−α, or "fit" (default 1: measured to
    /// leave fewer features dead than the fit, docs/sae.md §3).
    #[serde(default = "default_zipf_alpha")]
    pub zipf_alpha: ZipfParam,
    /// aux_zipf offset β, or "fit" (default 0).
    #[serde(default = "default_zipf_beta")]
    pub zipf_beta: ZipfParam,
    /// Share of the positive-density head of the rank curve used by the fit (project choice).
    #[serde(default = "default_fit_head")]
    pub zipf_fit_head: f64,
    /// Running firing densities are EMAs over about this many tokens (project choice).
    #[serde(default = "default_density_window")]
    pub density_window_tokens: u64,
    /// aux_zipf serves dead features first (project choice): per token, the dead features with
    /// the largest pre-activations take the k_aux slots as in aux_k, and only the slots they
    /// leave go to under-used live features by u_j·a_ij. Off: one ranking by u_j·a_ij, where
    /// dead features (u = 1, but small a) compete with under-used live ones.
    #[serde(default)]
    pub zipf_dead_first: bool,
    /// The auxiliary selection of a token skips the features its main selection already
    /// matched (project choice): the residual e = x − x̂ already holds their contribution, so
    /// decoding them again into ê counts them twice and the auxiliary gradient then pushes
    /// their activations down (default on; for aux_k it only matters when a dead feature is
    /// selected again).
    #[serde(default = "yes")]
    pub exclude_matched: bool,
}

fn default_aux_coeff() -> f64 {
    1.0 / 32.0
}
fn default_dead_tokens() -> u64 {
    10_000_000
}
fn default_zipf_alpha() -> ZipfParam {
    ZipfParam::Value(1.0)
}
fn default_zipf_beta() -> ZipfParam {
    ZipfParam::Value(0.0)
}
fn yes() -> bool {
    true
}
fn default_fit_head() -> f64 {
    0.5
}
fn default_density_window() -> u64 {
    1_000_000
}

impl Default for AuxConfig {
    fn default() -> Self {
        AuxConfig {
            kind: AuxKind::None,
            coeff: default_aux_coeff(),
            k_aux: None,
            dead_tokens: default_dead_tokens(),
            normalization: AuxNorm::Nmse,
            zipf_alpha: default_zipf_alpha(),
            zipf_beta: default_zipf_beta(),
            zipf_fit_head: default_fit_head(),
            density_window_tokens: default_density_window(),
            zipf_dead_first: false,
            exclude_matched: true,
        }
    }
}

impl AuxConfig {
    pub fn validate(&self) -> Result<(), SaeError> {
        let bad = |field: &str, m: String| Err(SaeError::config(field, m));
        if !(self.coeff.is_finite() && self.coeff >= 0.0) {
            return bad(
                "aux.coeff",
                format!("aux.coeff = {} must be a finite number ≥ 0", self.coeff),
            );
        }
        if self.k_aux == Some(0) {
            return bad("aux.k_aux", "aux.k_aux must be at least 1".into());
        }
        if self.dead_tokens == 0 {
            return bad(
                "aux.dead_tokens",
                "aux.dead_tokens must be at least 1".into(),
            );
        }
        if self.density_window_tokens == 0 {
            return bad(
                "aux.density_window_tokens",
                "aux.density_window_tokens must be at least 1".into(),
            );
        }
        if !(self.zipf_fit_head > 0.0 && self.zipf_fit_head <= 1.0) {
            return bad(
                "aux.zipf_fit_head",
                format!(
                    "aux.zipf_fit_head = {} must be in (0, 1]",
                    self.zipf_fit_head
                ),
            );
        }
        if let ZipfParam::Value(a) = self.zipf_alpha {
            if !(a.is_finite() && a >= 0.0) {
                return bad(
                    "aux.zipf_alpha",
                    format!("aux.zipf_alpha = {a} must be ≥ 0 or \"fit\""),
                );
            }
        }
        if let ZipfParam::Value(b) = self.zipf_beta {
            if !(b.is_finite() && b > -1.0) {
                return bad(
                    "aux.zipf_beta",
                    format!("aux.zipf_beta = {b} must be > -1 or \"fit\""),
                );
            }
        }
        Ok(())
    }
}

/// `[train]`: optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokens per batch B.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Optimiser steps (tokens trained = steps · batch_size).
    pub steps: u64,
    /// Learning rate; default 2e-4 / √(F / 2^14).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Linear warm-up steps.
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Share of the steps at the end over which the lr decays linearly to 0.
    #[serde(default = "default_decay")]
    pub decay_fraction: f64,
    /// Global gradient-norm clip; 0 = off.
    #[serde(default)]
    pub grad_clip: f64,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_eps")]
    pub adam_eps: f64,
    /// Seed of initialisation and data order.
    #[serde(default)]
    pub seed: u64,
    /// Rows of data used for input scaling and the geometric-median b_dec.
    #[serde(default = "default_init_sample")]
    pub init_sample: usize,
    /// Weiszfeld iterations of the geometric median.
    #[serde(default = "default_gm_iters")]
    pub geometric_median_iters: usize,
    /// Log metrics every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Save a checkpoint every this many steps (0 = only at the end and on interrupt).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Use the simple dense-autograd reference step (the oracle) instead of the fused sparse
    /// fast step (`sae::fast`). Both compute the same losses and updates; the reference is
    /// several times slower and builds dense B×F gradients.
    #[serde(default)]
    pub reference: bool,
    /// Precision of the encoder product: `"f32"` (default) or `"bf16"`.
    #[serde(default)]
    pub matmul: Matmul,
}

fn default_batch() -> usize {
    4096
}
fn default_warmup() -> u64 {
    1000
}
fn default_decay() -> f64 {
    0.2
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    6.25e-10
}
fn default_init_sample() -> usize {
    8192
}
fn default_gm_iters() -> usize {
    100
}
fn default_log_every() -> u64 {
    50
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), SaeError> {
        let bad = |field: &str, m: String| Err(SaeError::config(field, m));
        if self.batch_size < 2 {
            return bad(
                "train.batch_size",
                format!(
                "train.batch_size = {} must be at least 2: the reconstruction loss is normalised \
                 by the batch's variance, which one row does not have",
                self.batch_size
            ),
            );
        }
        if self.steps == 0 {
            return bad("train.steps", "train.steps must be at least 1".into());
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(
                    "train.lr",
                    format!("train.lr = {lr} must be a finite number > 0"),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return bad(
                "train.decay_fraction",
                format!(
                    "train.decay_fraction = {} must be in [0, 1]",
                    self.decay_fraction
                ),
            );
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad(
                "train.grad_clip",
                format!("train.grad_clip = {} must be ≥ 0", self.grad_clip),
            );
        }
        for (name, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(
                    &format!("train.{name}"),
                    format!("train.{name} = {b} must be in [0, 1)"),
                );
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad(
                "train.adam_eps",
                format!("train.adam_eps = {} must be > 0", self.adam_eps),
            );
        }
        if self.init_sample == 0 {
            return bad(
                "train.init_sample",
                "train.init_sample must be at least 1".into(),
            );
        }
        if self.log_every == 0 {
            return bad(
                "train.log_every",
                "train.log_every must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// `[data]`: where activations come from: a file or store (`path`), or a synthetic generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A .safetensors file, a .npy file, or an activation store directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Tensor name inside a single safetensors file.
    #[serde(default)]
    pub tensor: Option<String>,
    /// Rows held by the shuffle buffer.
    #[serde(default = "default_shuffle")]
    pub shuffle_buffer: usize,
    /// Rows of a file kept out of training for evaluation (0: none).
    #[serde(default)]
    pub holdout_tokens: u64,
    /// Where the held-out rows sit: `spread` (chunks over the whole file, default) or `tail`
    /// (the last rows).
    #[serde(default)]
    pub holdout_split: HoldoutSplit,
    /// Chunks of a `spread` holdout.
    #[serde(default = "default_holdout_chunks")]
    pub holdout_chunks: u64,
    /// In-context positions (0 = the prefix) whose rows are left out of training, threshold
    /// calibration and evaluation, and keep their clean activation in the downstream (spliced)
    /// evaluation (project choice, default none; the `lm-compare` base config leaves out
    /// position 1, SmolLM2's attention-sink position: docs/sae.md). Needs a store that records
    /// positions.
    #[serde(default)]
    pub exclude_positions: Vec<u32>,
    /// Synthetic ground-truth data instead of a file.
    #[serde(default)]
    pub synthetic: Option<SyntheticConfig>,
}

fn default_shuffle() -> usize {
    1 << 18
}

fn default_holdout_chunks() -> u64 {
    32
}

/// A whole run: the four tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub sae: SaeConfig,
    #[serde(default)]
    pub aux: AuxConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

impl RunConfig {
    /// Parse TOML text, apply `key=value` overrides (dotted keys, TOML values; a bare word is a
    /// string), and validate. `origin` names the source in errors.
    pub fn from_toml(text: &str, overrides: &[String], origin: &str) -> Result<Self, SaeError> {
        let cfg: RunConfig = crate::util::toml_set::parse(text, overrides, origin)
            .map_err(|f| SaeError::config(&f.field, format!("{}: {}", f.field, f.msg)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), SaeError> {
        self.sae.validate()?;
        self.aux.validate()?;
        self.train.validate()?;
        if self.sae.architecture == Architecture::JumpRelu {
            return Err(SaeError::config(
                "sae.architecture",
                "sae.architecture = \"jumprelu\" is an inference form, not trainable: train \
                 mutual_choice or feature_choice and export it",
            ));
        }
        if self.data.holdout_chunks == 0 {
            return Err(SaeError::config(
                "data.holdout_chunks",
                "data.holdout_chunks must be at least 1",
            ));
        }
        if self.data.synthetic.is_some() && !self.data.exclude_positions.is_empty() {
            return Err(SaeError::config(
                "data.exclude_positions",
                "data.exclude_positions needs an activation store that records positions; \
                 synthetic data has none",
            ));
        }
        match (&self.data.path, &self.data.synthetic) {
            (None, None) => Err(SaeError::config(
"data", 
                "[data] needs either `path` (activations file or store) or a `[data.synthetic]` table",
            )),
            (Some(_), Some(_)) => Err(SaeError::config(
"data", 
                "[data] has both `path` and `[data.synthetic]`: choose one",
            )),
            _ => Ok(()),
        }
    }

    /// Steps that make `epochs` passes over `rows` training rows at `train.batch_size` (at least
    /// one).
    pub fn steps_for_epochs(&self, epochs: f64, rows: u64) -> u64 {
        ((epochs * rows as f64) / self.train.batch_size as f64)
            .ceil()
            .max(1.0) as u64
    }

    /// The learning rate in effect: `train.lr` or 2e-4 / √(F / 2^14).
    pub fn lr(&self) -> f64 {
        self.train
            .lr
            .unwrap_or_else(|| 2e-4 / (self.sae.d_sae as f64 / 16384.0).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[sae]
architecture = "batch_topk"
d_sae = 64
k = 4
[train]
steps = 10
[data]
path = "x.npy"
"#;

    #[test]
    fn parses_alias_and_overrides() {
        let c =
            RunConfig::from_toml(BASE, &["train.lr=0.01".into(), "sae.k=8".into()], "t").unwrap();
        assert_eq!(c.sae.architecture, Architecture::MutualChoice);
        assert_eq!(c.train.lr, Some(0.01));
        assert_eq!(c.sae.k, 8);
        assert_eq!(c.aux.zipf_alpha, ZipfParam::Value(1.0));
        assert_eq!(c.aux.zipf_beta, ZipfParam::Value(0.0));
        assert!(c.aux.exclude_matched);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = RunConfig::from_toml(BASE, &["train.lrr=1".into()], "cfg.toml").unwrap_err();
        assert!(e.to_string().contains("lrr"), "{e}");
    }

    #[test]
    fn impossible_k_is_rejected() {
        let e = RunConfig::from_toml(BASE, &["sae.k=65".into()], "t").unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let e = RunConfig::from_toml(BASE, &["sae.k=0".into()], "t").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn token_cap_below_one_is_rejected() {
        let c = RunConfig::from_toml(BASE, &["sae.token_cap=1.5".into()], "t").unwrap();
        assert_eq!(c.sae.token_cap, 1.5);
        for bad in ["0.5", "-1", "nan"] {
            let e = RunConfig::from_toml(BASE, &[format!("sae.token_cap={bad}")], "t").unwrap_err();
            assert!(e.to_string().contains("sae.token_cap"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_architecture_is_named() {
        let e = RunConfig::from_toml(BASE, &["sae.architecture=gated".into()], "t").unwrap_err();
        assert!(e.to_string().contains("gated"), "{e}");
    }

    #[test]
    fn holdout_split_defaults_to_spread_and_parses_tail() {
        let c = RunConfig::from_toml(BASE, &[], "t").unwrap();
        assert_eq!(c.data.holdout_split, HoldoutSplit::Spread);
        assert_eq!(c.data.holdout_chunks, 32);
        let c = RunConfig::from_toml(BASE, &["data.holdout_split=tail".into()], "t").unwrap();
        assert_eq!(c.data.holdout_split, HoldoutSplit::Tail);
        let e = RunConfig::from_toml(BASE, &["data.holdout_chunks=0".into()], "t").unwrap_err();
        assert!(e.to_string().contains("holdout_chunks"), "{e}");
    }

    #[test]
    fn holdout_ranges_by_hand() {
        assert_eq!(
            holdout_ranges(100, 10, HoldoutSplit::Tail, 4),
            vec![(90, 100)]
        );
        // Chunks of 2, 3, 2, 3 rows; 90 training rows: 11, then gaps of 22 or 23, then 12.
        assert_eq!(
            holdout_ranges(100, 10, HoldoutSplit::Spread, 4),
            vec![(11, 13), (35, 38), (61, 63), (85, 88)]
        );
        assert_eq!(holdout_ranges(100, 0, HoldoutSplit::Spread, 4), vec![]);
        // More chunks than rows: one row each.
        assert_eq!(
            holdout_ranges(10, 2, HoldoutSplit::Spread, 8),
            vec![(2, 3), (7, 8)]
        );
    }

    proptest::proptest! {
        /// Spread chunks are sorted, disjoint, inside the file and hold exactly h rows; chunk
        /// lengths and the gaps between chunks are even to one row.
        #[test]
        fn spread_holdout_is_exact_and_even(n in 1u64..5000, h_frac in 0.0f64..1.0, c in 1u64..64) {
            let h = ((n as f64 * h_frac) as u64).min(n - 1);
            let r = holdout_ranges(n, h, HoldoutSplit::Spread, c);
            proptest::prop_assert_eq!(r.iter().map(|(a, b)| b - a).sum::<u64>(), h);
            if h == 0 {
                return Ok(());
            }
            let cc = c.min(h);
            proptest::prop_assert_eq!(r.len() as u64, cc);
            let g = n - h;
            for w in r.windows(2) {
                let gap = w[1].0 - w[0].1;
                proptest::prop_assert!(gap == g / cc || gap == g / cc + 1, "gap {}", gap);
            }
            for &(a, b) in &r {
                proptest::prop_assert!(a < b && b <= n);
                proptest::prop_assert!(b - a == h / cc || b - a == h.div_ceil(cc));
            }
        }
    }
}
