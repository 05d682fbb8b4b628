//! The training loop: shuffled mini-batches, masked SGD, a warm-up + decay schedule, and
//! per-epoch metrics with dead-neuron rates (dynamic DNR over the epoch's training batches;
//! dynamic and static DNR on the test set in evaluation mode).
//!
//! Training, evaluation and the DNR probes run on the fused engine ([`crate::nn::fast`]) by
//! default; `train.reference = true` runs the candle path (autograd + [`Sgd`]) that serves as
//! its oracle. SNIP and SynFlow scoring stay on the candle path (one or a few passes per run).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::dnr::{DnrProbe, DnrReport};
use super::{config_err, PruneError, Result};
use crate::data::idx::ImageSet;
use crate::nn::fast::{Counting, FastNet};
use crate::nn::layers;
use crate::nn::models::{Mode, Net};
use crate::nn::optim::{Sgd, SgdConfig};
use crate::nn::schedule::{Decay, LrSchedule};
use crate::util::progress::{Cancel, Progress};

fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    5e-4
}
fn d_pad() -> usize {
    4
}
fn d_eval_batch() -> usize {
    1000
}
fn d_decay() -> Decay {
    Decay::Cosine
}

/// Training hyper-parameters (the `[train]` table of an experiment config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup_epochs: f64,
    #[serde(default = "d_decay")]
    pub decay: Decay,
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Random crop with `pad`-pixel zero padding and horizontal flip, training batches only.
    #[serde(default)]
    pub augment: bool,
    #[serde(default = "d_pad")]
    pub pad: usize,
    #[serde(default = "d_eval_batch")]
    pub eval_batch: usize,
    /// Train and evaluate on the candle reference path instead of the fused engine (slow; for
    /// checks). Left out of the serialised config when false, so run hashes do not change.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reference: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(config_err("train.epochs", "must be at least 1"));
        }
        if self.batch_size == 0 || self.eval_batch == 0 {
            return Err(config_err(
                "train.batch_size",
                "batch sizes must be at least 1",
            ));
        }
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs <= self.epochs as f64) {
            return Err(config_err(
                "train.warmup_epochs",
                "must be between 0 and epochs",
            ));
        }
        LrSchedule::new(self.lr, 0, 1, self.decay.clone())?;
        Sgd::new(self.sgd())?;
        Ok(())
    }

    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }

    /// Optimiser steps per epoch for `n` training examples (the last batch may be smaller).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size)
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Optimiser steps done at the end of the epoch (counted from the start of training).
    pub step: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Dynamic DNR over the epoch's training batches (training mode).
    pub train_dnr: DnrReport,
    /// Dynamic and static DNR on the test set (evaluation mode).
    pub test_dnr: DnrReport,
    pub seconds: f64,
    /// Training throughput of the epoch, images per second (evaluation excluded).
    pub images_per_s: f64,
}

/// What a call to [`train`] produced.
pub struct TrainOutcome {
    pub epochs: Vec<EpochMetrics>,
    /// The state captured at `capture_at` (for rewinding), if asked for.
    pub captured: Option<HashMap<String, Tensor>>,
}

/// Evaluate `net` on `set` with the fused engine: (mean loss, accuracy, DNR with the static
/// rate).
pub fn evaluate(net: &mut Net, set: &ImageSet, batch: usize) -> Result<(f64, f64, DnrReport)> {
    let mut fast = FastNet::<f32>::from_net(net, SgdConfig::default())?;
    evaluate_fast(&mut fast, net.relu_names(), set, batch)
}

/// [`evaluate`] on an already compiled engine (its counting mode is left off).
pub fn evaluate_fast(
    fast: &mut FastNet<f32>,
    relu_names: &[String],
    set: &ImageSet,
    batch: usize,
) -> Result<(f64, f64, DnrReport)> {
    let mut probe = DnrProbe::new(relu_names, true);
    fast.set_counting(Counting::Static);
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut buf = Vec::new();
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (_, y) = set.batch::<ChaCha8Rng>(chunk, None, &mut buf)?;
        let y = y.to_vec1::<u32>()?;
        fast.forward(&buf, chunk.len(), Mode::Eval)?;
        let s = fast.loss(&y)?;
        loss += s.loss * chunk.len() as f64;
        correct += s.correct;
    }
    probe.add_counts(&fast.take_counts());
    fast.set_counting(Counting::Off);
    let n = set.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n, probe.report()?))
}

/// [`evaluate`] on the candle reference path.
pub fn evaluate_reference(
    net: &mut Net,
    set: &ImageSet,
    batch: usize,
) -> Result<(f64, f64, DnrReport)> {
    let mut probe = DnrProbe::new(net.relu_names(), true);
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut buf = Vec::new();
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = set.batch::<ChaCha8Rng>(chunk, None, &mut buf)?;
        let logits = net.forward(&x, Mode::Eval, Some(&mut probe))?;
        let l = layers::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        loss += l * chunk.len() as f64;
        correct += layers::correct(&logits, &y)?;
    }
    let n = set.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n, probe.report()?))
}

/// The run-time inputs of [`train`].
pub struct TrainJob<'a> {
    pub train: &'a ImageSet,
    pub test: &'a ImageSet,
    pub config: &'a TrainConfig,
    /// Seeds the data order and augmentation (the same seed gives the same batches).
    pub data_seed: u64,
    /// First optimiser step (late rewinding resumes the schedule at step t).
    pub start_step: usize,
    /// Capture the full state after this many steps (0 = before any step).
    pub capture_at: Option<usize>,
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
    /// Called after every epoch with its metrics (e.g. to append to a log).
    pub on_epoch: &'a mut dyn FnMut(&EpochMetrics) -> Result<()>,
}

/// Train `net` from `job.start_step` to the end of the schedule, with a fresh optimiser.
pub fn train(net: &mut Net, job: TrainJob) -> Result<TrainOutcome> {
    let cfg = job.config;
    cfg.validate()?;
    if job.train.is_empty() {
        return Err(config_err("data", "the training set is empty"));
    }
    let n = job.train.len();
    let spe = cfg.steps_per_epoch(n);
    let total = spe * cfg.epochs;
    let warm = (cfg.warmup_epochs * spe as f64).round() as usize;
    let sched = LrSchedule::new(cfg.lr, warm, total, cfg.decay.clone())?;
    let mut engine = if cfg.reference {
        Engine::Reference(Sgd::new(cfg.sgd())?)
    } else {
        let mut f = FastNet::<f32>::from_net(net, cfg.sgd())?;
        f.set_counting(Counting::Dynamic);
        Engine::Fast(Box::new(f))
    };
    let mut captured = None;
    let mut epochs = Vec::new();
    let mut buf = Vec::new();
    let mut perm: Vec<usize> = (0..n).collect();
    let mut aug_rng = ChaCha8Rng::seed_from_u64(job.data_seed ^ 0x05ee_da06);
    let mut probe = DnrProbe::new(net.relu_names(), false);
    let mut sums = EpochSums::new();
    if job.capture_at == Some(job.start_step) {
        engine.sync(net)?;
        captured = Some(net.state()?);
    }
    for step in job.start_step..total {
        if job.cancel.is_cancelled() {
            return Err(PruneError::Cancelled);
        }
        let epoch = step / spe;
        let within = step % spe;
        if within == 0 || step == job.start_step {
            perm = epoch_order(n, job.data_seed, epoch);
        }
        let idx = &perm[within * cfg.batch_size..((within + 1) * cfg.batch_size).min(n)];
        let ts = Instant::now();
        let (x, y) = if cfg.augment {
            job.train
                .batch(idx, Some((cfg.pad, &mut aug_rng)), &mut buf)?
        } else {
            job.train.batch::<ChaCha8Rng>(idx, None, &mut buf)?
        };
        let lr = sched.at(step);
        let (lv, ok) = engine.step(net, (&x, &buf), &y, lr, &mut probe)?;
        sums.add(lv, ok, idx.len(), ts.elapsed().as_secs_f64());
        job.progress.inc(1);
        if job.capture_at == Some(step + 1) {
            engine.sync(net)?;
            captured = Some(net.state()?);
        }
        if within + 1 == spe {
            let m = end_epoch(
                &mut engine,
                net,
                &job,
                &mut probe,
                &sums,
                (epoch, step + 1, lr),
            )?;
            job.progress.message(&format!(
                "epoch {} loss {:.3} test acc {:.2}% DNR {:.3}",
                epoch + 1,
                m.train_loss,
                100.0 * m.test_acc,
                m.train_dnr.global_dynamic
            ));
            (job.on_epoch)(&m)?;
            epochs.push(m);
            sums = EpochSums::new();
        }
    }
    engine.sync(net)?;
    Ok(TrainOutcome { epochs, captured })
}

/// The sample order of one epoch: a shuffle seeded by the data seed and the epoch.
fn epoch_order(n: usize, data_seed: u64, epoch: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        data_seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(epoch as u64),
    );
    perm.shuffle(&mut rng);
    perm
}

/// Running sums of the current epoch's training steps.
struct EpochSums {
    loss: f64,
    correct: usize,
    seen: usize,
    train_secs: f64,
    t0: Instant,
}

impl EpochSums {
    fn new() -> Self {
        EpochSums {
            loss: 0.0,
            correct: 0,
            seen: 0,
            train_secs: 0.0,
            t0: Instant::now(),
        }
    }
    /// One step: its mean loss and correct count over `n` images, `secs` of training time.
    fn add(&mut self, loss: f64, correct: usize, n: usize, secs: f64) {
        self.loss += loss * n as f64;
        self.correct += correct;
        self.seen += n;
        self.train_secs += secs;
    }
}

/// The end of an epoch: the training DNR over its steps, the test pass (loss, accuracy, DNR),
/// and the epoch's metrics. `at` = (epoch, steps done, last learning rate).
fn end_epoch(
    engine: &mut Engine,
    net: &mut Net,
    job: &TrainJob,
    probe: &mut DnrProbe,
    sums: &EpochSums,
    (epoch, step, lr): (usize, usize, f64),
) -> Result<EpochMetrics> {
    if let Engine::Fast(f) = engine {
        probe.add_counts(&f.take_counts());
    }
    let train_dnr = probe.report()?;
    probe.reset();
    let eval_batch = job.config.eval_batch;
    let (test_loss, test_acc, test_dnr) = match engine {
        Engine::Reference(_) => evaluate_reference(net, job.test, eval_batch)?,
        Engine::Fast(f) => {
            let r = evaluate_fast(f, net.relu_names(), job.test, eval_batch)?;
            f.set_counting(Counting::Dynamic);
            r
        }
    };
    Ok(EpochMetrics {
        epoch,
        step,
        lr,
        train_loss: sums.loss / sums.seen.max(1) as f64,
        train_acc: sums.correct as f64 / sums.seen.max(1) as f64,
        test_loss,
        test_acc,
        train_dnr,
        test_dnr,
        seconds: sums.t0.elapsed().as_secs_f64(),
        images_per_s: sums.seen as f64 / sums.train_secs.max(1e-9),
    })
}

/// The step implementation [`train`] runs: the candle reference or the fused engine.
enum Engine {
    Reference(Sgd),
    Fast(Box<FastNet<f32>>),
}

impl Engine {
    /// One optimiser step on a batch given as a tensor and as its NCHW host data; returns the
    /// mean loss and the number of correct predictions.
    fn step(
        &mut self,
        net: &mut Net,
        (x, xs): (&Tensor, &[f32]),
        y: &Tensor,
        lr: f64,
        probe: &mut DnrProbe,
    ) -> Result<(f64, usize)> {
        match self {
            Engine::Reference(opt) => {
                let logits = net.forward(x, Mode::Train, Some(probe))?;
                let loss = layers::cross_entropy(&logits, y)?;
                let lv = loss.to_scalar::<f32>()?;
                if !lv.is_finite() {
                    return Err(crate::nn::NnError::NonFinite(lv).into());
                }
                let grads = loss.backward()?;
                opt.step(net, &grads, lr)?;
                Ok((lv as f64, layers::correct(&logits, y)?))
            }
            Engine::Fast(f) => {
                let ys = y.to_vec1::<u32>()?;
                let s = f.train_step(xs, &ys, lr)?;
                Ok((s.loss, s.correct))
            }
        }
    }

    /// Bring `net` up to date with the engine's weights and statistics.
    fn sync(&self, net: &mut Net) -> Result<()> {
        if let Engine::Fast(f) = self {
            f.write_back(net)?;
        }
        Ok(())
    }
}
