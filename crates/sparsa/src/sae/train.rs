//! The trainer: initialisation from a data sample, the training step (selection, losses,
//! counters, thresholds, Adam), the run loop with logging, checkpoints and cancellation.

use super::allocation::{self, AllocInput, Allocation, Matching};
use super::config::{holdout_ranges, Matmul, RunConfig, ThresholdMode};
use super::fast::{AuxSpec, FastStep};
pub use super::io::TrainState;
use super::io::{self, SaeMeta, SaeModel, SourceMeta};
use super::loss::{self, aux_select, AuxLoss, FeatureStats};
use super::optim::{Adam, AdamStep};
use super::params::SaeParams;
use super::reference::{self, AuxTerm, Selections};
use super::stats::{dense_frac, share, L0Stats};
use super::SaeError;
use crate::data::activations::{
    subtract_ranges, ActivationSource, BatchSource, DataError, SourceOptions,
};
use crate::data::store::Manifest;
use crate::data::synthetic::SyntheticSource;
use crate::kernels::bf16::Bf16Kernel;
use crate::util::progress::{Cancel, Progress};
use candle_core::DType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;

/// Metrics of one step (one JSONL line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub tokens: u64,
    pub lr: f64,
    pub loss: f64,
    pub fvu: f64,
    pub mse: f64,
    pub aux_loss: f64,
    pub l0_mean: f64,
    pub l0_std: f64,
    pub l0_max: usize,
    pub l0_zero_frac: f64,
    pub dead_frac: f64,
    pub dense_frac: f64,
    /// Features the auxiliary loss could use this step.
    pub aux_eligible: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipf_alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipf_beta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipf_r2: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    /// Cancelled (Ctrl-C) or stopped at `stop_at_step`; a checkpoint was saved if an output
    /// directory was given.
    Stopped,
}

/// The trainer.
pub struct Trainer {
    pub cfg: RunConfig,
    /// Weights in the scaled input space (x·scale).
    pub params: SaeParams,
    /// Input scaling s: the SAE sees s·x, with E‖s·x‖² = d on the init sample.
    pub scale: f32,
    pub state: TrainState,
    alloc: Box<dyn Allocation>,
    aux: Option<Box<dyn AuxLoss>>,
    batch: Vec<f32>,
    /// Reused buffers of the fast step.
    fast: FastStep,
    /// Why a bf16 encoder product asked for by `train.matmul` runs in f32 (no kernel here).
    matmul_fallback: Option<String>,
}

/// The bf16 kernel that `train.matmul = m` runs on, given the `SPARSA_BF16_KERNEL` preference
/// (see [`Bf16Kernel::choose`]): `(None, None)` for f32 by config, `(None, Some(why))` for
/// bf16 asked for but not available here (the step falls back to f32), an error for a
/// preference this CPU cannot honour.
pub fn resolve_matmul(
    m: Matmul,
    preference: Option<&str>,
) -> Result<(Option<Bf16Kernel>, Option<String>), SaeError> {
    if m == Matmul::F32 {
        return Ok((None, None));
    }
    match Bf16Kernel::choose(preference) {
        Err(e) => Err(SaeError::config("train.matmul", e)),
        Ok(Some(k)) => Ok((Some(k), None)),
        Ok(None) => Ok((
            None,
            Some(if preference.is_some_and(|p| p.trim() == "none") {
                "train.matmul = \"bf16\": SPARSA_BF16_KERNEL=none, so the encoder product runs in f32"
                    .to_string()
            } else {
                "train.matmul = \"bf16\": this CPU has neither AMX-BF16 nor AVX512-BF16 (or the OS \
                 does not allow AMX), so the encoder product runs in f32"
                    .to_string()
            }),
        )),
    }
}

/// Geometric median of the rows of `x` (B×d) by Weiszfeld iterations, starting at the mean.
pub fn geometric_median(x: &[f32], d: usize, iters: usize) -> Vec<f32> {
    let n = x.len() / d;
    let mut y = vec![0f64; d];
    for row in x.chunks(d) {
        y.iter_mut()
            .zip(row)
            .for_each(|(y, &v)| *y += v as f64 / n as f64);
    }
    for _ in 0..iters {
        let mut num = vec![0f64; d];
        let mut den = 0f64;
        for row in x.chunks(d) {
            let dist = row
                .iter()
                .zip(&y)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>()
                .sqrt();
            let w = 1.0 / dist.max(1e-8);
            num.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += w * v as f64);
            den += w;
        }
        let next: Vec<f64> = num.iter().map(|s| s / den).collect();
        let shift: f64 = next
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        y = next;
        if shift < 1e-7 {
            break;
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

/// Check a batch for NaN/Inf; `first_token` is the global index of its first row.
pub fn check_finite(x: &[f32], d: usize, first_token: u64) -> Result<(), SaeError> {
    for (row, r) in x.chunks(d).enumerate() {
        if let Some(v) = r.iter().find(|v| !v.is_finite()) {
            return Err(SaeError::NonFinite {
                token: first_token + row as u64,
                row,
                what: if v.is_nan() { "NaN" } else { "an infinity" },
            });
        }
    }
    Ok(())
}

impl Trainer {
    /// A fresh trainer for data of width `d`, initialised from `sample` (rows of width d).
    pub fn new(mut cfg: RunConfig, d: usize, sample: &[f32]) -> Result<Self, SaeError> {
        if cfg.sae.d_in != 0 && cfg.sae.d_in != d {
            return Err(SaeError::Width {
                data: d,
                sae: cfg.sae.d_in,
            });
        }
        cfg.sae.d_in = d;
        cfg.validate()?;
        if sample.is_empty() || !sample.len().is_multiple_of(d) {
            return Err(SaeError::config(
                "train.init_sample",
                "the init sample is empty",
            ));
        }
        check_finite(sample, d, 0)?;
        let n = sample.len() / d;
        let mean_sq = sample.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        if !(mean_sq > 0.0 && mean_sq.is_finite()) {
            return Err(SaeError::config(
                "data",
                "the data sample is all zeros: input scaling E‖x‖² = d is undefined",
            ));
        }
        let scale = (d as f64 / mean_sq).sqrt() as f32;
        let scaled: Vec<f32> = sample.iter().map(|&v| v * scale).collect();
        let b_dec = geometric_median(&scaled, d, cfg.train.geometric_median_iters);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
        let params = SaeParams::init_tied(d, cfg.sae.d_sae, b_dec, &mut rng);
        let f = cfg.sae.d_sae;
        let state = TrainState {
            step: 0,
            tokens: 0,
            adam: Adam::new(&params),
            since_fired: vec![0; f],
            density_ema: vec![0.0; f],
            density_updates: 0,
            thresholds: vec![f32::INFINITY; f],
            global_threshold: f32::INFINITY,
        };
        Self::from_parts(cfg, params, scale, state)
    }

    /// Assemble a trainer from saved parts (used by resume).
    pub fn from_parts(
        cfg: RunConfig,
        params: SaeParams,
        scale: f32,
        state: TrainState,
    ) -> Result<Self, SaeError> {
        cfg.validate()?;
        let alloc = allocation::build(&cfg.sae, None)?;
        let aux = loss::build(&cfg.aux);
        let preference = std::env::var("SPARSA_BF16_KERNEL").ok();
        let (kernel, matmul_fallback) = resolve_matmul(cfg.train.matmul, preference.as_deref())?;
        let mut fast = FastStep::new();
        fast.set_bf16(kernel);
        Ok(Trainer {
            cfg,
            params,
            scale,
            state,
            alloc,
            aux,
            batch: Vec::new(),
            fast,
            matmul_fallback,
        })
    }

    /// Resume from a checkpoint directory written by [`Trainer::save_checkpoint`].
    pub fn resume(dir: &Path) -> Result<Self, SaeError> {
        let (cfg, params, scale, state) = io::load_trainer_state(dir)?;
        Self::from_parts(cfg, params, scale, state)
    }

    pub fn d(&self) -> usize {
        self.params.d
    }

    /// Matched pairs (main, auxiliary) of the last fast step.
    pub fn fast_matches(&self) -> (usize, usize) {
        (
            self.fast.main.nnz(),
            if self.fast.aux_active() {
                self.fast.aux.nnz()
            } else {
                0
            },
        )
    }

    /// Run the auxiliary loss as dense products over the features whose pairs fill at least `t`
    /// of their column ([`super::fast::FastStep::set_aux_dense_above`]).
    pub fn set_aux_dense_above(&mut self, t: f64) {
        self.fast.set_aux_dense_above(t);
    }

    /// Whether the last fast step ran the auxiliary loss as dense products.
    pub fn fast_aux_dense(&self) -> bool {
        self.fast.aux_dense()
    }

    /// The encoder product this trainer runs: `f32`, or `bf16 (amx-bf16)` and the like.
    pub fn encoder_product(&self) -> String {
        match self.fast.bf16_kernel() {
            Some(k) => format!("bf16 ({})", k.name()),
            None => "f32".to_string(),
        }
    }

    /// Why `train.matmul = "bf16"` runs in f32 here, when it does.
    pub fn matmul_fallback(&self) -> Option<&str> {
        self.matmul_fallback.as_deref()
    }

    /// Phase timings of the last fast step (zero on the reference path).
    pub fn fast_phases(&self) -> super::fast::Phases {
        self.fast.phases
    }

    /// Learning rate at step index `t` (0-based): linear warm-up, then constant, then linear
    /// decay to 0 over the last `decay_fraction` of the steps.
    pub fn lr_at(&self, t: u64) -> f64 {
        let base = self.cfg.lr();
        let tc = &self.cfg.train;
        let warm = if tc.warmup_steps > 0 {
            ((t + 1) as f64 / tc.warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        let total = tc.steps;
        let decay_start = ((total as f64) * (1.0 - tc.decay_fraction)).floor() as u64;
        let decay = if tc.decay_fraction > 0.0 && t >= decay_start && total > decay_start {
            (total - t) as f64 / (total - decay_start) as f64
        } else {
            1.0
        };
        base * warm * decay
    }

    /// Running firing densities, bias-corrected.
    pub fn density(&self) -> Vec<f32> {
        let gamma = self.density_decay();
        let corr = 1.0 - gamma.powf(self.state.density_updates as f64);
        if corr <= 0.0 {
            return vec![0.0; self.params.f];
        }
        self.state
            .density_ema
            .iter()
            .map(|&e| (e as f64 / corr) as f32)
            .collect()
    }

    fn density_decay(&self) -> f64 {
        (-(self.cfg.train.batch_size as f64) / self.cfg.aux.density_window_tokens as f64).exp()
    }

    /// Dead flags: not selected in the last `aux.dead_tokens` tokens.
    pub fn dead(&self) -> Vec<bool> {
        self.state
            .since_fired
            .iter()
            .map(|&s| s >= self.cfg.aux.dead_tokens)
            .collect()
    }

    /// One training step on a batch of raw (unscaled) rows; `x` is scaled in place.
    pub fn step(&mut self, x: &mut [f32]) -> Result<StepMetrics, SaeError> {
        let d = self.params.d;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(SaeError::Width {
                data: x.len(),
                sae: d,
            });
        }
        let b = x.len() / d;
        check_finite(x, d, self.state.tokens)?;
        x.iter_mut().for_each(|v| *v *= self.scale);

        let density = self.density();
        let dead = self.dead();
        let weights = self.aux.as_ref().map(|a| {
            a.weights(&FeatureStats {
                density: &density,
                dead: &dead,
            })
        });
        let aux_eligible = weights
            .as_ref()
            .map_or(0, |w| w.u.iter().filter(|&&u| u > 0.0).count());
        let k_aux = self.cfg.aux.k_aux.unwrap_or(d / 2).max(1);
        let tc = &self.cfg.train;
        let lr = self.lr_at(self.state.step);
        let h = AdamStep {
            lr,
            beta1: tc.adam_beta1,
            beta2: tc.adam_beta2,
            eps: tc.adam_eps,
            clip: tc.grad_clip,
        };
        let aux = weights.as_ref().filter(|_| aux_eligible > 0);
        let (losses, main) = if self.cfg.train.reference {
            self.step_reference(x, b, &density, aux, k_aux, h)?
        } else {
            self.step_fast(x, b, &density, aux, k_aux, h)?
        };
        self.state.step += 1;
        self.state.tokens += b as u64;

        let l0 = L0Stats::of(&main.l0_per_row());
        if !self.cfg.train.reference {
            self.fast.main = main;
        }
        Ok(StepMetrics {
            step: self.state.step,
            tokens: self.state.tokens,
            lr,
            loss: losses.total,
            fvu: losses.rec,
            mse: losses.mse,
            aux_loss: losses.aux,
            l0_mean: l0.mean(),
            l0_std: l0.std(),
            l0_max: l0.max(),
            l0_zero_frac: l0.zero_frac(),
            dead_frac: share(self.dead().into_iter()),
            dense_frac: dense_frac(&self.density()),
            aux_eligible,
            zipf_alpha: weights.as_ref().and_then(|w| w.zipf_alpha),
            zipf_beta: weights.as_ref().and_then(|w| w.zipf_beta),
            zipf_r2: weights
                .as_ref()
                .and_then(|w| w.zipf_r2)
                .filter(|r| r.is_finite()),
        })
    }

    /// One step on the candle reference path (the oracle of the fast path): forward and
    /// backward through autograd, then Adam. Returns the losses and the main matching.
    fn step_reference(
        &mut self,
        x: &[f32],
        b: usize,
        density: &[f32],
        aux: Option<&loss::AuxWeights>,
        k_aux: usize,
        h: AdamStep,
    ) -> Result<(reference::Losses, Matching), SaeError> {
        let (f, step) = (self.params.f, self.state.step);
        let alloc = &self.alloc;
        let exclude_matched = self.cfg.aux.exclude_matched;
        let select = |a: &[f32]| {
            let mut main = Matching::default();
            alloc.select(
                &AllocInput {
                    a,
                    b,
                    f,
                    density,
                    step,
                },
                &mut main,
            );
            let aux = aux.map(|w| {
                let mut m = Matching::default();
                let exclude = exclude_matched.then_some(&main);
                aux_select(a, b, f, &w.u, k_aux, exclude, &mut m);
                m
            });
            Selections { main, aux }
        };
        let term = AuxTerm {
            coeff: self.cfg.aux.coeff,
            norm: self.cfg.aux.normalization,
            residual: None,
        };
        let prec = reference::Precision {
            dtype: DType::F32,
            bf16_product: self.fast.bf16_kernel().is_some(),
        };
        let (losses, grads, sel, a) =
            reference::forward_backward(&self.params, x, b, prec, Some(term), true, select)?;
        let diverged = |what| SaeError::Diverged { step, what };
        let grads = grads.ok_or(diverged("gradient"))?;
        if !losses.total.is_finite() {
            return Err(diverged("the loss"));
        }
        self.update_feature_state(&sel.main, &a, b);
        self.state.adam.step(&mut self.params, grads, h);
        if let Some(what) = self.params.non_finite() {
            return Err(diverged(what));
        }
        Ok((losses, sel.main))
    }

    /// One step on the fused fast path (`sae::fast`): forward, backward and Adam with reused
    /// buffers. Returns the losses and the main matching (hand it back to `self.fast.main`).
    fn step_fast(
        &mut self,
        x: &[f32],
        b: usize,
        density: &[f32],
        aux: Option<&loss::AuxWeights>,
        k_aux: usize,
        h: AdamStep,
    ) -> Result<(reference::Losses, Matching), SaeError> {
        let step = self.state.step;
        let mut fast = std::mem::take(&mut self.fast);
        let spec = aux.map(|w| AuxSpec {
            u: &w.u,
            k_aux,
            coeff: self.cfg.aux.coeff,
            norm: self.cfg.aux.normalization,
            exclude_matched: self.cfg.aux.exclude_matched,
        });
        let res = fast
            .forward_backward(&self.params, x, b, self.alloc.as_ref(), density, step, spec)
            .and_then(|losses| {
                if !losses.total.is_finite() {
                    return Err(SaeError::Diverged {
                        step,
                        what: "the loss",
                    });
                }
                self.update_feature_state(&fast.main, &fast.a, b);
                match fast.apply_adam(&mut self.params, &mut self.state.adam, h) {
                    Some(what) => Err(SaeError::Diverged { step, what }),
                    None => Ok(losses),
                }
            });
        let main = std::mem::take(&mut fast.main);
        self.fast = fast;
        Ok((res?, main))
    }

    /// Counters in tokens, running densities, and learned thresholds from this batch's matching.
    fn update_feature_state(&mut self, m: &Matching, a: &[f32], b: usize) {
        let f = self.params.f;
        let mut count = vec![0u32; f];
        let mut min_sel = vec![f32::INFINITY; f];
        let mut global_min = f32::INFINITY;
        for i in 0..b {
            for &j in m.row(i) {
                let j = j as usize;
                let v = a[i * f + j];
                count[j] += 1;
                min_sel[j] = min_sel[j].min(v);
                global_min = global_min.min(v);
            }
        }
        let gamma = self.density_decay() as f32;
        let ema = self.cfg.sae.threshold_ema as f32;
        // Thresholds sit one ulp below the smallest selected activation, so that the strict
        // JumpReLU rule (a > θ) keeps it (project choice).
        let update = |theta: &mut f32, obs: f32| {
            let obs = obs.next_down();
            *theta = if theta.is_finite() {
                ema * *theta + (1.0 - ema) * obs
            } else {
                obs
            };
        };
        for j in 0..f {
            if count[j] > 0 {
                self.state.since_fired[j] = 0;
                update(&mut self.state.thresholds[j], min_sel[j]);
            } else {
                self.state.since_fired[j] = self.state.since_fired[j].saturating_add(b as u64);
            }
            let frac = count[j] as f32 / b as f32;
            self.state.density_ema[j] = gamma * self.state.density_ema[j] + (1.0 - gamma) * frac;
        }
        if global_min.is_finite() {
            update(&mut self.state.global_threshold, global_min);
        }
        self.state.density_updates += 1;
    }

    /// The inference thresholds for export, per the configured mode.
    pub fn export_thresholds(&self) -> Vec<f32> {
        match self.cfg.sae.threshold_mode {
            ThresholdMode::Feature => self.state.thresholds.clone(),
            ThresholdMode::Global => vec![self.state.global_threshold; self.params.f],
        }
    }

    /// The trained SAE in the raw input space (input scaling folded in).
    pub fn model(&self) -> SaeModel {
        let s = self.scale;
        let p = &self.params;
        let folded = SaeParams {
            d: p.d,
            f: p.f,
            w_enc: p.w_enc.iter().map(|&w| w * s).collect(),
            b_enc: p.b_enc.clone(),
            w_dec: p.w_dec.iter().map(|&w| w / s).collect(),
            b_dec: p.b_dec.iter().map(|&w| w / s).collect(),
        };
        let arch = self.cfg.sae.architecture;
        SaeModel {
            params: folded,
            thresholds: arch.batch_dependent().then(|| self.export_thresholds()),
            meta: SaeMeta {
                trained_architecture: arch,
                k: self.cfg.sae.k,
                capacity: self.cfg.sae.capacity.clone(),
                capacity_factor: self.cfg.sae.capacity_factor,
                token_cap: self.cfg.sae.token_cap,
                threshold_mode: self.cfg.sae.threshold_mode,
                // Running (EMA) thresholds; `calibrate::deployable_model` sets this.
                threshold_calibration_tokens: None,
                input_scale: self.scale,
                aux: self.cfg.aux.kind,
                steps: self.state.step,
                tokens_seen: self.state.tokens,
                dataset: self
                    .cfg
                    .data
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "synthetic".into()),
                holdout_rows: self.holdout_rows(),
                exclude_positions: self.cfg.data.exclude_positions.clone(),
                // Unknown when the data is no store or is gone (an export elsewhere).
                source: SourceMeta::of_data(self.cfg.data.path.as_deref()).unwrap_or_default(),
            },
            density: self.density(),
        }
    }

    /// The held-out row ranges of the training file (empty: no holdout, synthetic data, or the
    /// file is gone).
    fn holdout_rows(&self) -> Vec<(u64, u64)> {
        let d = &self.cfg.data;
        match (&d.path, d.holdout_tokens) {
            (Some(p), h) if h > 0 => crate::data::activations::inspect(p)
                .map(|i| holdout_ranges(i.n_rows, h, d.holdout_split, d.holdout_chunks))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Save the SAE (SAELens layout) and the trainer state into `dir`, atomically per file.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), SaeError> {
        io::save_sae(dir, &self.model())?;
        io::save_trainer_state(dir, &self.cfg, &self.params, self.scale, &self.state)
    }

    /// Train until `train.steps` (or `stop_at_step`), reading batches from `source` (which must
    /// already be positioned at `state.tokens` rows). Checkpoints go to `out` every
    /// `train.checkpoint_every` steps, at the end, and when stopped.
    pub fn run(
        &mut self,
        source: &mut dyn BatchSource,
        out: Option<&Path>,
        progress: &dyn Progress,
        cancel: &Cancel,
        stop_at_step: Option<u64>,
        on_log: &mut dyn FnMut(&StepMetrics) -> Result<(), SaeError>,
    ) -> Result<RunEnd, SaeError> {
        let (d, bsz) = (self.d(), self.cfg.train.batch_size);
        if source.d() != d {
            return Err(SaeError::Width {
                data: source.d(),
                sae: d,
            });
        }
        let total = self.cfg.train.steps;
        progress.set_total(total * bsz as u64);
        progress.set_position(self.state.tokens);
        let mut batch = std::mem::take(&mut self.batch);
        batch.resize(bsz * d, 0.0);
        let result = (|| {
            while self.state.step < total {
                if cancel.is_cancelled() || stop_at_step.is_some_and(|s| self.state.step >= s) {
                    if let Some(dir) = out {
                        self.save_checkpoint(dir)?;
                    }
                    return Ok(RunEnd::Stopped);
                }
                let got = source.next_batch(&mut batch)?;
                if got != bsz {
                    return Err(SaeError::Data(DataError::Invalid(format!(
                        "the training source returned {got} rows where {bsz} were expected"
                    ))));
                }
                let m = self.step(&mut batch)?;
                progress.inc(bsz as u64);
                if m.step % self.cfg.train.log_every == 0 || m.step == total {
                    progress.message(&format!(
                        "fvu {:.4} L0 {:.1} dead {:.1}%",
                        m.fvu,
                        m.l0_mean,
                        100.0 * m.dead_frac
                    ));
                    on_log(&m)?;
                }
                let every = self.cfg.train.checkpoint_every;
                if let Some(dir) = out {
                    if every > 0 && m.step % every == 0 && m.step < total {
                        self.save_checkpoint(dir)?;
                    }
                }
            }
            if let Some(dir) = out {
                self.save_checkpoint(dir)?;
            }
            progress.finish();
            Ok(RunEnd::Finished)
        })();
        self.batch = batch;
        result
    }
}

/// Rows of the data kept for evaluation when the config names none: this many.
pub const DEFAULT_EVAL_TOKENS: u64 = 16_384;
/// Row offset of the synthetic evaluation stream (disjoint from training rows).
const SYNTHETIC_EVAL_OFFSET: u64 = 1 << 62;
/// Row offset of the synthetic calibration stream (disjoint from training and evaluation).
const SYNTHETIC_CALIBRATION_OFFSET: u64 = 1 << 61;
/// Mixed into `train.seed` for the calibration sample's shuffle.
const CALIBRATION_SEED: u64 = 0x5EED_CA1B_2A7E_0001;

/// A row range `[start, end)` and ranges excluded inside it (see `SourceOptions`).
type Rows = ((u64, u64), Vec<(u64, u64)>);

/// The data named by a run's `[data]` table.
pub enum DataSpec {
    File {
        path: std::path::PathBuf,
        tensor: Option<String>,
        n_rows: u64,
        d: usize,
        /// Held-out row ranges (`data.holdout_tokens` split by `data.holdout_split`).
        holdout: Vec<(u64, u64)>,
        /// Rows at `data.exclude_positions`, skipped by every source (training, init sample,
        /// calibration, evaluation).
        skipped: Vec<(u64, u64)>,
    },
    Synthetic(SyntheticSource),
}

impl DataSpec {
    pub fn open(cfg: &RunConfig) -> Result<Self, SaeError> {
        if let Some(syn) = &cfg.data.synthetic {
            return Ok(DataSpec::Synthetic(SyntheticSource::new(syn.clone())?));
        }
        let path = cfg
            .data
            .path
            .clone()
            .ok_or_else(|| SaeError::config("data.path", "[data] has no path"))?;
        let info = crate::data::activations::inspect(&path)?;
        if Manifest::is_store(&path) {
            let m = Manifest::read(&path).map_err(|e| SaeError::file(&e.path, e.reason))?;
            if m.complete() == Some(false) {
                return Err(SaeError::config(
                    "data.path",
                    format!(
                        "{}: the activation store is incomplete ({} rows; its extraction was \
                     interrupted): rerun the same `sparsa activations extract` command to \
                     finish it before training",
                        path.display(),
                        m.n_tokens
                    ),
                ));
            }
        }
        if info.n_rows <= cfg.data.holdout_tokens {
            return Err(SaeError::config(
                "data.holdout_tokens",
                format!(
                    "data.holdout_tokens = {} leaves no training rows of the {} in {}",
                    cfg.data.holdout_tokens,
                    info.n_rows,
                    path.display()
                ),
            ));
        }
        let skipped = skipped_rows(&path, &cfg.data.exclude_positions)?;
        Ok(DataSpec::File {
            path,
            tensor: cfg.data.tensor.clone(),
            n_rows: info.n_rows,
            d: info.d,
            skipped,
            holdout: holdout_ranges(
                info.n_rows,
                cfg.data.holdout_tokens,
                cfg.data.holdout_split,
                cfg.data.holdout_chunks,
            ),
        })
    }

    pub fn d(&self) -> usize {
        match self {
            DataSpec::File { d, .. } => *d,
            DataSpec::Synthetic(s) => s.config().d,
        }
    }

    fn opts(&self, cfg: &RunConfig, rows: Rows, cycle: bool, shuffle: bool) -> SourceOptions {
        let (tensor, mut exclude) = (cfg.data.tensor.clone(), rows.1);
        if let DataSpec::File { skipped, .. } = self {
            exclude.extend_from_slice(skipped);
        }
        SourceOptions {
            tensor,
            shuffle_buffer: if shuffle { cfg.data.shuffle_buffer } else { 0 },
            seed: cfg.train.seed,
            rows: Some(rows.0),
            exclude,
            cycle,
        }
    }

    /// The held-out row ranges of a file (empty without `data.holdout_tokens`).
    pub fn holdout(&self) -> &[(u64, u64)] {
        match self {
            DataSpec::File { holdout, .. } => holdout,
            DataSpec::Synthetic(_) => &[],
        }
    }

    /// Rows one training epoch reads: the file minus the held-out rows and the rows at
    /// `data.exclude_positions` (synthetic data: unbounded, `u64::MAX`).
    pub fn training_rows(&self) -> u64 {
        match self {
            DataSpec::File {
                n_rows,
                holdout,
                skipped,
                ..
            } => {
                let mut out = holdout.clone();
                out.extend_from_slice(skipped);
                subtract_ranges((0, *n_rows), &out)
                    .iter()
                    .map(|(a, b)| b - a)
                    .sum()
            }
            DataSpec::Synthetic(_) => u64::MAX,
        }
    }

    /// The training rows: the whole file minus the held-out ranges.
    fn train_rows(&self) -> Rows {
        match self {
            DataSpec::File {
                n_rows, holdout, ..
            } => ((0, *n_rows), holdout.clone()),
            DataSpec::Synthetic(_) => ((0, u64::MAX), Vec::new()),
        }
    }

    /// The first `n` training rows, unshuffled (init statistics).
    pub fn init_sample(&self, cfg: &RunConfig) -> Result<Vec<f32>, SaeError> {
        let n = cfg.train.init_sample;
        match self {
            DataSpec::File { path, .. } => {
                let rows = self.train_rows();
                Ok(crate::data::activations::read_sample(
                    path,
                    &self.opts(cfg, rows, false, false),
                    n,
                )?)
            }
            DataSpec::Synthetic(s) => {
                let mut s = s.clone();
                let d = s.config().d;
                let too_large = || {
                    SaeError::config(
                        "train.init_sample",
                        format!(
                        "train.init_sample = {n} rows × d = {d} does not fit in memory; lower it \
                         (8192 is plenty for the init statistics)"
                    ),
                    )
                };
                let len = n.checked_mul(d).ok_or_else(too_large)?;
                let mut out = Vec::new();
                out.try_reserve_exact(len).map_err(|_| too_large())?;
                out.resize(len, 0f32);
                s.next_batch(&mut out)?;
                Ok(out)
            }
        }
    }

    /// `n` training rows for threshold calibration: a seeded sample (the training rows shuffled
    /// with a seed derived from `train.seed`, or a disjoint synthetic stream). Every call
    /// returns the same rows.
    pub fn calibration_source(
        &self,
        cfg: &RunConfig,
        n: u64,
    ) -> Result<Box<dyn BatchSource>, SaeError> {
        match self {
            DataSpec::File { path, .. } => {
                let mut opts = self.opts(cfg, self.train_rows(), true, true);
                opts.seed = cfg.train.seed ^ CALIBRATION_SEED;
                Ok(Box::new(Take {
                    inner: ActivationSource::open(path, opts)?,
                    left: n,
                }))
            }
            DataSpec::Synthetic(s) => {
                let mut s = s.clone();
                s.skip_rows(SYNTHETIC_CALIBRATION_OFFSET);
                Ok(Box::new(Take { inner: s, left: n }))
            }
        }
    }

    /// The endless, shuffled training stream, fast-forwarded past `skip` rows.
    pub fn training_source(
        &self,
        cfg: &RunConfig,
        skip: u64,
    ) -> Result<Box<dyn BatchSource>, SaeError> {
        match self {
            DataSpec::File { path, .. } => {
                let mut s =
                    ActivationSource::open(path, self.opts(cfg, self.train_rows(), true, true))?;
                s.skip_rows(skip)?;
                Ok(Box::new(s))
            }
            DataSpec::Synthetic(s) => {
                let mut s = s.clone();
                s.skip_rows(skip);
                Ok(Box::new(s))
            }
        }
    }

    /// The held-out evaluation rows (finite): a file's held-out ranges in file order, or
    /// (synthetic, or a file without holdout) up to `max_rows` rows from a disjoint stream /
    /// the start of the data.
    pub fn eval_source(
        &self,
        cfg: &RunConfig,
        max_rows: u64,
    ) -> Result<Box<dyn BatchSource>, SaeError> {
        match self {
            DataSpec::File {
                path,
                n_rows,
                holdout,
                ..
            } => {
                let rows: Rows = if holdout.is_empty() {
                    ((0, max_rows.min(*n_rows)), Vec::new())
                } else {
                    // Everything but the held-out ranges is excluded.
                    let train = subtract_ranges((0, *n_rows), holdout);
                    ((0, *n_rows), train)
                };
                Ok(Box::new(ActivationSource::open(
                    path,
                    self.opts(cfg, rows, false, false),
                )?))
            }
            DataSpec::Synthetic(s) => {
                let mut s = s.clone();
                s.skip_rows(SYNTHETIC_EVAL_OFFSET);
                Ok(Box::new(Take {
                    inner: s,
                    left: max_rows,
                }))
            }
        }
    }
}

/// The row ranges of the store at `path` whose in-context position is one of `positions`
/// (empty when `positions` is); a clear error when `path` is no store or records no positions.
pub fn skipped_rows(
    path: &std::path::Path,
    positions: &[u32],
) -> Result<Vec<(u64, u64)>, SaeError> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    if !Manifest::is_store(path) {
        return Err(SaeError::config(
            "data.exclude_positions",
            format!(
                "data.exclude_positions = {positions:?} needs an activation store (made by \
                 `sparsa activations extract`) that records each row's position; {} is a plain \
                 file",
                path.display()
            ),
        ));
    }
    let mut r = crate::data::store::StoreReader::open(path)
        .map_err(|e| SaeError::file(&e.path, e.reason))?;
    r.rows_at_positions(positions)
        .map_err(|e| SaeError::file(&e.path, e.reason))
}

/// At most `left` rows of an endless source.
pub struct Take<S> {
    pub inner: S,
    pub left: u64,
}

impl<S: BatchSource> BatchSource for Take<S> {
    fn d(&self) -> usize {
        self.inner.d()
    }
    fn next_batch(&mut self, out: &mut [f32]) -> Result<usize, DataError> {
        let d = self.inner.d();
        let rows = ((out.len() / d) as u64).min(self.left) as usize;
        if rows == 0 {
            return Ok(0);
        }
        let got = self.inner.next_batch(&mut out[..rows * d])?;
        self.left -= got as u64;
        Ok(got)
    }
}
