//! Evaluation of a trained SAE on held-out rows: every reconstruction metric of the spec, in
//! the SAE's training form (its batch rule) or its inference form (TopK per token, or JumpReLU
//! with the learned thresholds).

use super::allocation::{self, AllocInput, Allocation, JumpRelu, Matching, TopK};
use super::config::Architecture;
use super::io::SaeModel;
use super::stats::{dense_frac, share, L0Stats};
use super::zipf;
use super::SaeError;
use crate::data::activations::BatchSource;
use crate::util::progress::Progress;
use serde::{Deserialize, Serialize};

/// Which form of the SAE to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// The rule it was trained with (batch-dependent for Mutual/Feature Choice).
    Training,
    /// Per-token: TopK, or JumpReLU with learned thresholds.
    Inference,
}

impl Form {
    /// `training` or `inference`.
    pub fn name(self) -> &'static str {
        match self {
            Form::Training => "training",
            Form::Inference => "inference",
        }
    }
}

/// The evaluation table (a header row, then one row per report) shown by `sae eval`,
/// `sae train` and the SAE report.
pub fn eval_rows(reports: &[EvalReport]) -> Vec<Vec<String>> {
    let header = [
        "form",
        "rule",
        "tokens",
        "FVU",
        "MSE",
        "cos",
        "L0 mean",
        "L0 std",
        "L0 max",
        "L0=0 %",
        "dead %",
        "dense %",
        "rel. bias",
        "zipf α",
    ];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in reports {
        rows.push(vec![
            r.form.name().to_string(),
            r.rule.clone(),
            r.tokens.to_string(),
            format!("{:.4}", r.fvu),
            format!("{:.4e}", r.mse),
            format!("{:.4}", r.cosine),
            format!("{:.2}", r.l0_mean),
            format!("{:.2}", r.l0_std),
            r.l0_max.to_string(),
            format!("{:.2}", 100.0 * r.l0_zero_frac),
            format!("{:.1}", 100.0 * r.dead_frac),
            format!("{:.1}", 100.0 * r.dense_frac),
            format!("{:.3}", r.rel_bias),
            r.zipf_alpha.map_or("-".into(), |a| format!("{a:.2}")),
        ]);
    }
    rows
}

/// Evaluation results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub form: Form,
    /// The allocation rule actually applied.
    pub rule: String,
    pub tokens: u64,
    /// Σ‖x − x̂‖² / Σ‖x − x̄‖² over all evaluated tokens.
    pub fvu: f64,
    pub mse: f64,
    /// Mean cosine similarity of x and x̂.
    pub cosine: f64,
    pub l0_mean: f64,
    pub l0_std: f64,
    pub l0_max: usize,
    /// Per-token L0 histogram: `l0_hist[n]` tokens had exactly n active features (absent in
    /// eval.json files written before it existed).
    #[serde(default)]
    pub l0_hist: Vec<u64>,
    /// Share of tokens with no active feature.
    pub l0_zero_frac: f64,
    /// Share of features that never fired on these tokens.
    pub dead_frac: f64,
    /// Share of features active on more than 10 % of tokens.
    pub dense_frac: f64,
    /// γ = E‖x̂‖² / E[x̂·x] (Rajamanoharan et al.): < 1 means shrinkage.
    pub rel_bias: f64,
    /// Histogram of log10 feature density: (lower edge, count); features that never fired are
    /// counted under edge −∞ (serialised as null).
    pub log10_density_hist: Vec<(Option<f64>, usize)>,
    pub zipf_alpha: Option<f64>,
    pub zipf_beta: Option<f64>,
    pub zipf_r2: Option<f64>,
    /// Firing density per feature on these tokens.
    #[serde(skip)]
    pub density: Vec<f32>,
}

/// The allocation rule of a form.
pub fn rule_for(model: &SaeModel, form: Form) -> Result<Box<dyn Allocation>, SaeError> {
    let meta = &model.meta;
    match (form, &model.thresholds) {
        (Form::Inference, Some(t)) => Ok(Box::new(JumpRelu {
            thresholds: t.clone(),
        })),
        (Form::Inference, None) => Ok(Box::new(TopK { k: meta.k })),
        (Form::Training, _) => {
            let cfg = super::config::SaeConfig {
                architecture: meta.trained_architecture,
                d_in: model.params.d,
                d_sae: model.params.f,
                k: meta.k,
                capacity: meta.capacity.clone(),
                capacity_factor: meta.capacity_factor,
                token_cap: meta.token_cap,
                threshold_mode: meta.threshold_mode,
                threshold_ema: 0.99,
                threshold_source: Default::default(),
                calibration_tokens: 65_536,
            };
            if cfg.architecture == Architecture::JumpRelu {
                return allocation::build(&cfg, model.thresholds.as_deref());
            }
            allocation::build(&cfg, None)
        }
    }
}

/// Encode the rows `x` (B×d) and apply `rule` as batch number `step`: the pre-activations A
/// come back and the matching goes to `m`.
pub fn encode_select(
    model: &SaeModel,
    rule: &dyn Allocation,
    x: &[f32],
    step: u64,
    m: &mut Matching,
) -> Result<Vec<f32>, SaeError> {
    let p = &model.params;
    let b = x.len() / p.d;
    let a = p.encode_pre(x, b)?;
    rule.select(
        &AllocInput {
            a: &a,
            b,
            f: p.f,
            density: &model.density,
            step,
        },
        m,
    );
    Ok(a)
}

/// Running sums of the reconstruction metrics over rows (f64).
struct RecSums {
    sse: f64,
    sum_sq: f64,
    cos: f64,
    xh_x: f64,
    xh_xh: f64,
    /// Column sums of x, for the total variance.
    sum_x: Vec<f64>,
}

impl RecSums {
    fn new(d: usize) -> Self {
        RecSums {
            sse: 0.0,
            sum_sq: 0.0,
            cos: 0.0,
            xh_x: 0.0,
            xh_xh: 0.0,
            sum_x: vec![0.0; d],
        }
    }

    /// Add one row `xi` and its reconstruction `hi`.
    fn add_row(&mut self, xi: &[f32], hi: &[f32]) {
        let (mut e, mut xx, mut hh, mut hx) = (0f64, 0f64, 0f64, 0f64);
        for k in 0..xi.len() {
            let (a, b) = (xi[k] as f64, hi[k] as f64);
            e += (a - b).powi(2);
            xx += a * a;
            hh += b * b;
            hx += a * b;
            self.sum_x[k] += a;
        }
        self.sse += e;
        self.sum_sq += xx;
        self.xh_x += hx;
        self.xh_xh += hh;
        self.cos += if xx > 0.0 && hh > 0.0 {
            hx / (xx.sqrt() * hh.sqrt())
        } else {
            0.0
        };
    }

    /// Σ‖x − mean‖² over the `n` rows added.
    fn total_var(&self, n: f64) -> f64 {
        let mean_sq: f64 = self.sum_x.iter().map(|s| s * s).sum::<f64>() / n;
        (self.sum_sq - mean_sq).max(f64::MIN_POSITIVE)
    }
}

/// Features per half-decade of log10 density from 1e-8 (first bin: never active).
fn log10_density_hist(density: &[f32]) -> Vec<(Option<f64>, usize)> {
    let mut hist: Vec<(Option<f64>, usize)> = vec![(None, 0)];
    for e in 0..16 {
        hist.push((Some(-8.0 + 0.5 * e as f64), 0));
    }
    for &r in density {
        if r <= 0.0 {
            hist[0].1 += 1;
        } else {
            let bin = (((r as f64).log10() + 8.0) / 0.5).floor().clamp(0.0, 15.0) as usize;
            hist[bin + 1].1 += 1;
        }
    }
    hist
}

/// Evaluate `model` in `form` over up to `max_tokens` rows of `source`, in batches of `batch`
/// (the batch size matters for the batch-dependent training forms).
pub fn evaluate(
    model: &SaeModel,
    form: Form,
    source: &mut dyn BatchSource,
    batch: usize,
    max_tokens: u64,
    progress: &dyn Progress,
) -> Result<EvalReport, SaeError> {
    let p = &model.params;
    let (d, f) = (p.d, p.f);
    if source.d() != d {
        return Err(SaeError::Width {
            data: source.d(),
            sae: d,
        });
    }
    let rule = rule_for(model, form)?;
    let mut x = vec![0f32; batch.max(1) * d];
    let mut xhat = vec![0f32; x.len()];
    let mut m = Matching::default();
    let mut n = 0u64;
    let mut sums = RecSums::new(d);
    let mut l0 = L0Stats::default();
    let mut counts = vec![0u64; f];
    progress.set_total(max_tokens);
    let mut batch_index = 0u64;
    while n < max_tokens {
        let want = ((max_tokens - n) as usize).min(batch.max(1));
        let got = source.next_batch(&mut x[..want * d])?;
        if got == 0 {
            break;
        }
        super::train::check_finite(&x[..got * d], d, n)?;
        let a = encode_select(model, rule.as_ref(), &x[..got * d], batch_index, &mut m)?;
        batch_index += 1;
        p.decode_sparse(&a, &m, &mut xhat[..got * d]);
        for i in 0..got {
            sums.add_row(&x[i * d..(i + 1) * d], &xhat[i * d..(i + 1) * d]);
            l0.add(m.row(i).len());
            for &j in m.row(i) {
                counts[j as usize] += 1;
            }
        }
        n += got as u64;
        progress.inc(got as u64);
    }
    if n == 0 {
        return Err(SaeError::config(
            "rows",
            "no evaluation rows: the held-out range is empty",
        ));
    }
    let nf = n as f64;
    let density: Vec<f32> = counts.iter().map(|&c| (c as f64 / nf) as f32).collect();
    let hist = log10_density_hist(&density);
    let fit = zipf::fit(&density, 0.5, &zipf::BETA_GRID);
    Ok(EvalReport {
        form,
        rule: rule.name().to_string(),
        tokens: n,
        fvu: sums.sse / sums.total_var(nf),
        mse: sums.sse / (nf * d as f64),
        cosine: sums.cos / nf,
        l0_mean: l0.mean(),
        l0_std: l0.std(),
        l0_max: l0.max(),
        l0_hist: l0.hist().to_vec(),
        l0_zero_frac: l0.zero_frac(),
        dead_frac: share(counts.iter().map(|&c| c == 0)),
        dense_frac: dense_frac(&density),
        rel_bias: if sums.xh_x != 0.0 {
            sums.xh_xh / sums.xh_x
        } else {
            f64::NAN
        },
        log10_density_hist: hist,
        zipf_alpha: fit.map(|z| z.alpha),
        zipf_beta: fit.map(|z| z.beta),
        zipf_r2: fit.map(|z| z.r2),
        density,
    })
}

/// Result of reconstructing rows.
pub type RowsResult = Result<Vec<f32>, SaeError>;

/// The SAE as a row function for splicing into a model: `rows × d` activations in, x̂ out, in
/// the given form (for a batch-dependent training form the rows passed in form one batch).
pub fn reconstructor(
    model: &SaeModel,
    form: Form,
) -> Result<impl Fn(&[f32], usize) -> RowsResult + '_, SaeError> {
    let rule = rule_for(model, form)?;
    Ok(move |x: &[f32], n: usize| {
        let p = &model.params;
        let mut m = Matching::default();
        let a = encode_select(model, rule.as_ref(), &x[..n * p.d], 0, &mut m)?;
        let mut out = vec![0f32; n * p.d];
        p.decode_sparse(&a, &m, &mut out);
        Ok(out)
    })
}
