//! Train several variants of one base configuration and evaluate each on held-out data:
//! the synthetic comparison of TopK, Mutual Choice and Feature Choice (with aux_k and aux_zipf).

use super::calibrate::{deployable_model, Calibration};
use super::config::{Architecture, AuxKind, RunConfig};
use super::metrics::{evaluate, EvalReport, Form};
use super::train::{DataSpec, RunEnd, StepMetrics, Trainer};
use super::SaeError;
use crate::data::synthetic::recovery;
use crate::util::progress::{Cancel, NoProgress, Progress};
use std::path::Path;

/// One variant: an architecture and an auxiliary loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variant {
    pub architecture: Architecture,
    pub aux: AuxKind,
}

impl std::str::FromStr for Variant {
    type Err = String;
    /// `ARCH+AUX` (ARCH: topk, mutual_choice (alias batch_topk), feature_choice; AUX: none,
    /// aux_k, aux_zipf); a bare ARCH means aux none.
    fn from_str(s: &str) -> Result<Self, String> {
        let (arch, aux) = s.split_once('+').unwrap_or((s, "none"));
        let architecture = arch.parse()?;
        let aux = aux.parse()?;
        Ok(Variant { architecture, aux })
    }
}

impl Variant {
    pub fn label(&self) -> String {
        match self.aux {
            AuxKind::None => self.architecture.name().to_string(),
            aux => format!("{} + {}", self.architecture.name(), aux.name()),
        }
    }
    /// The variants of the paper's comparison.
    pub fn standard() -> Vec<Variant> {
        use Architecture::*;
        use AuxKind::*;
        vec![
            Variant {
                architecture: TopK,
                aux: AuxK,
            },
            Variant {
                architecture: TopK,
                aux: AuxZipf,
            },
            Variant {
                architecture: MutualChoice,
                aux: AuxK,
            },
            Variant {
                architecture: MutualChoice,
                aux: AuxZipf,
            },
            Variant {
                architecture: FeatureChoice,
                aux: AuxK,
            },
            Variant {
                architecture: FeatureChoice,
                aux: AuxZipf,
            },
        ]
    }
}

/// What one variant achieved.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub variant: Variant,
    /// Held-out evaluation in the training form.
    pub eval: EvalReport,
    /// Held-out evaluation in the inference form (JumpReLU for batch-dependent rules).
    pub eval_inference: EvalReport,
    /// Dead share from the trainer's token counters at the end.
    pub train_dead_frac: f64,
    /// The threshold calibration the inference form uses, if calibrated.
    pub calibration: Option<Calibration>,
    /// (MMCS, share of ground-truth features recovered at cosine > 0.9), synthetic data only.
    pub recovery: Option<(f64, f64)>,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Train `cfg` to the end (or until cancelled), saving into `out` if given, and evaluate it on
/// `eval_tokens` held-out rows in both forms.
pub fn train_and_evaluate(
    cfg: &RunConfig,
    out: Option<&Path>,
    eval_tokens: u64,
    progress: &dyn Progress,
    cancel: &Cancel,
    on_log: &mut dyn FnMut(&StepMetrics) -> Result<(), SaeError>,
) -> Result<Option<VariantResult>, SaeError> {
    let data = DataSpec::open(cfg)?;
    let sample = data.init_sample(cfg)?;
    let mut trainer = Trainer::new(cfg.clone(), data.d(), &sample)?;
    let mut source = data.training_source(&trainer.cfg, 0)?;
    let t0 = std::time::Instant::now();
    let end = trainer.run(source.as_mut(), out, progress, cancel, None, on_log)?;
    let seconds = t0.elapsed().as_secs_f64();
    if end == RunEnd::Stopped {
        return Ok(None);
    }
    let (model, calibration) = deployable_model(&trainer, &data, &NoProgress)?;
    if let (Some(dir), Some(_)) = (out, &calibration) {
        super::io::save_sae(dir, &model)?;
    }
    let batch = cfg.train.batch_size;
    let mut ev = data.eval_source(&trainer.cfg, eval_tokens)?;
    let eval = evaluate(
        &model,
        Form::Training,
        ev.as_mut(),
        batch,
        eval_tokens,
        &NoProgress,
    )?;
    let mut ev = data.eval_source(&trainer.cfg, eval_tokens)?;
    let eval_inference = evaluate(
        &model,
        Form::Inference,
        ev.as_mut(),
        batch,
        eval_tokens,
        &NoProgress,
    )?;
    let recovery = match &data {
        DataSpec::Synthetic(s) => Some(recovery(
            s.dictionary(),
            &trainer.params.w_dec,
            s.config().d,
            0.9,
        )),
        DataSpec::File { .. } => None,
    };
    let dead = trainer.dead();
    Ok(Some(VariantResult {
        variant: Variant {
            architecture: cfg.sae.architecture,
            aux: cfg.aux.kind,
        },
        eval,
        eval_inference,
        calibration,
        train_dead_frac: dead.iter().filter(|&&x| x).count() as f64 / dead.len() as f64,
        recovery,
        seconds,
        tokens_per_second: (cfg.train.steps * batch as u64) as f64 / seconds.max(1e-9),
    }))
}

/// The base config with a variant's architecture and auxiliary loss.
pub fn variant_config(base: &RunConfig, v: Variant) -> RunConfig {
    let mut c = base.clone();
    c.sae.architecture = v.architecture;
    c.aux.kind = v.aux;
    c
}
