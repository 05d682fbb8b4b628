//! Threshold calibration: JumpReLU thresholds that reproduce what the training form selects.
//!
//! A batch-dependent rule (Mutual or Feature Choice) cannot be applied to one token, so the
//! SAE is deployed in its JumpReLU inference form, z_ij = a_ij if a_ij > θ_j. The running
//! thresholds kept during training (an EMA of each feature's smallest selected activation) go
//! stale for features that fire rarely, and the inference form then loses L0 and features.
//! Calibration (project choice, `sae.threshold_source = "calibrated"`, the default) sets the
//! thresholds after training from a sample of N training rows, read in batches of the training
//! size:
//!
//! 1. pass 1 applies the training form and counts c_j, the tokens it matches to feature j;
//! 2. pass 2 keeps, for every feature, its c_j + 1 largest pre-activations (and the C + 1
//!    largest over all features, C = Σ c_j), in bounded buffers of about 2(c_j + 1) values;
//! 3. per feature: θ_j = the (c_j + 1)-th largest a_ij, so exactly c_j of the N rows have
//!    a_ij > θ_j (ties aside): the inference form fires each feature as often as the training
//!    form selects it, and its mean L0 on the calibration rows is Σ c_j / N = the trained L0.
//!    A feature with c_j = 0 gets +∞ (never selected, never fires); one with fewer than c_j + 1
//!    positive values gets 0 (fires whenever positive).
//!    Global: one θ = the (C + 1)-th largest over all entries, so the total L0 matches.
//!
//! Memory is O(Σ c_j + F) = O(k·N + F) floats, whatever the width; each pass costs one encoder
//! product per batch.

use super::allocation::{Allocation, Matching};
use super::config::{ThresholdMode, ThresholdSource};
use super::io::SaeModel;
use super::metrics::{encode_select, rule_for, Form};
use super::train::{DataSpec, Trainer};
use super::SaeError;
use crate::data::activations::BatchSource;
use crate::util::progress::Progress;
use rayon::prelude::*;
use serde::Serialize;

/// The result of a calibration pass.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Rows read.
    pub tokens: u64,
    /// Batch size the training form was applied with.
    pub batch: usize,
    /// Training-form matches per feature on the calibration rows.
    #[serde(skip)]
    pub counts: Vec<u64>,
    /// Per-feature thresholds θ_j (+∞ for features the training form never selected).
    #[serde(skip)]
    pub feature: Vec<f32>,
    /// The single global threshold.
    pub global: f32,
    /// Mean training-form L0 on the calibration rows (the target of the inference form).
    pub target_l0: f64,
}

impl Calibration {
    /// The thresholds of a mode, one per feature.
    pub fn thresholds(&self, mode: ThresholdMode) -> Vec<f32> {
        match mode {
            ThresholdMode::Feature => self.feature.clone(),
            ThresholdMode::Global => vec![self.global; self.feature.len()],
        }
    }
}

/// The `cap` largest values pushed so far (values ≤ the current floor are dropped at once).
#[derive(Debug, Clone, Default)]
struct TopKeep {
    cap: usize,
    floor: f32,
    buf: Vec<f32>,
}

impl TopKeep {
    fn new(cap: usize) -> Self {
        TopKeep {
            cap,
            floor: 0.0,
            buf: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, v: f32) {
        if v > self.floor {
            self.buf.push(v);
            if self.buf.len() >= 2 * self.cap.max(32) {
                self.compact();
            }
        }
    }

    /// Keep the `cap` largest; the floor becomes the smallest kept once `cap` are held.
    fn compact(&mut self) {
        if self.buf.len() > self.cap {
            let c = self.cap;
            self.buf
                .select_nth_unstable_by(c - 1, |x, y| y.total_cmp(x));
            self.buf.truncate(c);
        }
        if self.buf.len() == self.cap && self.cap > 0 {
            // Every kept value exceeds the old floor, so the floor only rises.
            self.floor = self.buf.iter().copied().fold(f32::INFINITY, f32::min);
        }
    }

    /// The cap-th largest value pushed, if at least `cap` positive values were pushed.
    fn kth(&mut self) -> Option<f32> {
        self.compact();
        (self.cap > 0 && self.buf.len() == self.cap).then_some(self.floor)
    }
}

/// Calibrate the inference thresholds of `model` (a batch-dependent training form) on up to
/// `tokens` rows of the source that `open` returns (called twice: the rows must be the same
/// both times), in batches of `batch` rows.
pub fn calibrate(
    model: &SaeModel,
    open: &mut dyn FnMut() -> Result<Box<dyn BatchSource>, SaeError>,
    batch: usize,
    tokens: u64,
    progress: &dyn Progress,
) -> Result<Calibration, SaeError> {
    let d = model.params.d;
    if !model.meta.trained_architecture.batch_dependent() {
        return Err(SaeError::config(
"sae.architecture", format!(
            "threshold calibration applies to mutual_choice and feature_choice SAEs; this one was trained as {}",
            model.meta.trained_architecture.name()
        )));
    }
    if batch == 0 || tokens == 0 {
        return Err(SaeError::config(
            "sae.calibration_tokens",
            "threshold calibration needs a batch size and a row count of at least 1",
        ));
    }
    let rule = rule_for(model, Form::Training)?;
    let mut x = vec![0f32; batch * d];
    progress.set_total(2 * tokens);
    let (counts, n) = count_pass(model, rule.as_ref(), open, &mut x, batch, tokens, progress)?;
    if n == 0 {
        return Err(SaeError::config(
            "sae.calibration_tokens",
            "threshold calibration read no rows: the calibration source is empty",
        ));
    }
    let total: u64 = counts.iter().sum();
    let (feature, global) = value_pass(model, open, &mut x, batch, n, &counts, progress)?;
    let global = if total == 0 { f32::INFINITY } else { global };
    progress.finish();
    Ok(Calibration {
        tokens: n,
        batch,
        counts,
        feature,
        global,
        target_l0: total as f64 / n as f64,
    })
}

/// Pass 1: how often each feature is selected by the training-form rule over up to `tokens`
/// rows; returns the counts and the rows read.
#[allow(clippy::too_many_arguments)]
fn count_pass(
    model: &SaeModel,
    rule: &dyn Allocation,
    open: &mut dyn FnMut() -> Result<Box<dyn BatchSource>, SaeError>,
    x: &mut [f32],
    batch: usize,
    tokens: u64,
    progress: &dyn Progress,
) -> Result<(Vec<u64>, u64), SaeError> {
    let (d, f) = (model.params.d, model.params.f);
    let mut m = Matching::default();
    let mut counts = vec![0u64; f];
    let mut src = open()?;
    check_width(src.as_ref(), d)?;
    let (mut n, mut step) = (0u64, 0u64);
    while n < tokens {
        let want = ((tokens - n) as usize).min(batch);
        let got = src.next_batch(&mut x[..want * d])?;
        if got == 0 {
            break;
        }
        super::train::check_finite(&x[..got * d], d, n)?;
        encode_select(model, rule, &x[..got * d], step, &mut m)?;
        for &j in &m.cols {
            counts[j as usize] += 1;
        }
        n += got as u64;
        step += 1;
        progress.inc(got as u64);
    }
    Ok((counts, n))
}

/// Pass 2 over the same `n` rows: the c_j + 1 largest positive pre-activations per feature and
/// the C + 1 largest overall (C = Σ c_j); returns each feature's threshold (∞ for a feature
/// never selected) and the global one.
#[allow(clippy::too_many_arguments)]
fn value_pass(
    model: &SaeModel,
    open: &mut dyn FnMut() -> Result<Box<dyn BatchSource>, SaeError>,
    x: &mut [f32],
    batch: usize,
    n: u64,
    counts: &[u64],
    progress: &dyn Progress,
) -> Result<(Vec<f32>, f32), SaeError> {
    let p = &model.params;
    let (d, f) = (p.d, p.f);
    let total: u64 = counts.iter().sum();
    let mut keep: Vec<TopKeep> = counts
        .iter()
        .map(|&c| TopKeep::new(if c == 0 { 0 } else { c as usize + 1 }))
        .collect();
    let mut global = TopKeep::new(total as usize + 1);
    let mut src = open()?;
    check_width(src.as_ref(), d)?;
    let mut n2 = 0u64;
    const BLOCK: usize = 64;
    while n2 < n {
        let want = ((n - n2) as usize).min(batch);
        let got = src.next_batch(&mut x[..want * d])?;
        if got == 0 {
            break;
        }
        let a = p.encode_pre(&x[..got * d], got)?;
        let gfloor = global.floor;
        let cands: Vec<Vec<f32>> = keep
            .par_chunks_mut(BLOCK)
            .enumerate()
            .map(|(bi, ks)| {
                let j0 = bi * BLOCK;
                let mut cand = Vec::new();
                for i in 0..got {
                    let row = &a[i * f + j0..i * f + j0 + ks.len()];
                    for (k, &v) in ks.iter_mut().zip(row) {
                        if v > 0.0 {
                            if k.cap > 0 {
                                k.push(v);
                            }
                            if v > gfloor {
                                cand.push(v);
                            }
                        }
                    }
                }
                cand
            })
            .collect();
        for v in cands.into_iter().flatten() {
            global.push(v);
        }
        n2 += got as u64;
        progress.inc(got as u64);
    }
    if n2 != n {
        return Err(SaeError::config(
            "sae.calibration_tokens",
            format!(
                "threshold calibration: the second pass read {n2} rows where the first read {n}"
            ),
        ));
    }
    let feature: Vec<f32> = keep
        .iter_mut()
        .map(|k| {
            if k.cap == 0 {
                f32::INFINITY
            } else {
                k.kth().unwrap_or(0.0)
            }
        })
        .collect();
    Ok((feature, global.kth().unwrap_or(0.0)))
}

/// The SAE to deploy: the trainer's model (input scaling folded in) with its inference
/// thresholds taken as `sae.threshold_source` says. Calibrated thresholds are computed here from
/// `sae.calibration_tokens` training rows (see [`DataSpec::calibration_source`]); TopK SAEs and
/// `ema` thresholds return the trainer's model as it is.
pub fn deployable_model(
    trainer: &Trainer,
    data: &DataSpec,
    progress: &dyn Progress,
) -> Result<(SaeModel, Option<Calibration>), SaeError> {
    let mut model = trainer.model();
    let cfg = &trainer.cfg;
    if !cfg.sae.architecture.batch_dependent() || cfg.sae.threshold_source == ThresholdSource::Ema {
        return Ok((model, None));
    }
    let n = cfg.sae.calibration_tokens;
    let cal = calibrate(
        &model,
        &mut || data.calibration_source(cfg, n),
        cfg.train.batch_size,
        n,
        progress,
    )?;
    model.thresholds = Some(cal.thresholds(cfg.sae.threshold_mode));
    model.meta.threshold_calibration_tokens = Some(cal.tokens);
    Ok((model, Some(cal)))
}

fn check_width(src: &dyn BatchSource, d: usize) -> Result<(), SaeError> {
    if src.d() != d {
        return Err(SaeError::Width {
            data: src.d(),
            sae: d,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keep_finds_the_kth_largest() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 + 0.5)
            .collect();
        for cap in [1usize, 2, 5, 64, 999, 1000] {
            let mut k = TopKeep::new(cap);
            for &v in &vals {
                k.push(v);
            }
            let mut sorted = vals.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(k.kth(), Some(sorted[cap - 1]), "cap {cap}");
        }
        let mut k = TopKeep::new(1001);
        vals.iter().for_each(|&v| k.push(v));
        assert_eq!(k.kth(), None, "fewer values than the cap");
    }
}
