//! Downstream evaluation: what an SAE's reconstruction does to the model's own next-token loss.
//!
//! For held-out sequences and a hook, four forward passes share one run of the blocks before the
//! hook ([`Llama::capture`] / [`Llama::resume`]):
//! - clean: the model as is → CE_clean;
//! - spliced: the hook's activation x replaced by x̂ = reconstruct(x) → CE_sae;
//! - zero-ablated: x replaced by 0 → CE_zero;
//! - mean-ablated: x replaced by the mean of x over the evaluated positions → CE_mean.
//!
//! Loss recovered = (CE_abl − CE_sae) / (CE_abl − CE_clean), reported against both ablations
//! (1 = the SAE costs nothing, 0 = as bad as deleting the activation).
//! KL(clean ‖ spliced) = Σ_v p_clean(v) (log p_clean(v) − log p_spliced(v)), averaged over
//! predictions. All CEs are in nats per predicted token.
//!
//! # Positions (BOS handling)
//! A position is *evaluated* if it is a real (not padding) position whose token is not the BOS
//! id and whose index is not in `skip_positions`. Only evaluated positions are replaced (spliced
//! or ablated) — BOS and skipped positions keep their clean activation, as SAEs are trained
//! without them — and only predictions made *from* an evaluated position (of the next real
//! token) enter CE and KL; the last position of each sequence predicts nothing. The reconstruction function receives exactly the evaluated rows of a batch,
//! `[n, d_model]` f32, and must return `[n, d_model]`.

use super::batch::Batch;
use super::llama::{log_softmax_last, Hook, Llama};
use super::{LmError, Result};
use crate::util::progress::{Cancel, Progress};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

/// Settings of a downstream evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamConfig {
    /// Where to splice.
    pub hook: Hook,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Id used to pad sequences (never read).
    pub pad_id: u32,
    /// Positions holding this id are never replaced and never a prediction source.
    pub bos_id: Option<u32>,
    /// Positions (index in the sequence, 0 = first) never replaced and never a prediction
    /// source: those an SAE was trained without (`data.exclude_positions`).
    pub skip_positions: Vec<u32>,
}

/// Downstream metrics of one reconstruction function on one set of sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamReport {
    /// Hook name (`blocks.L.hook_resid_post`).
    pub hook: String,
    /// Sequences evaluated.
    pub n_sequences: usize,
    /// Positions replaced (rows given to the reconstruction function).
    pub n_spliced: usize,
    /// Predictions scored.
    pub n_predictions: usize,
    /// CE of the unmodified model (nats/token).
    pub ce_clean: f64,
    /// CE with x̂ spliced in.
    pub ce_spliced: f64,
    /// CE with the activation set to zero.
    pub ce_zero_ablated: f64,
    /// CE with the activation set to its mean over the evaluated positions.
    pub ce_mean_ablated: f64,
    /// (CE_zero − CE_spliced) / (CE_zero − CE_clean).
    pub loss_recovered_zero: f64,
    /// (CE_mean − CE_spliced) / (CE_mean − CE_clean).
    pub loss_recovered_mean: f64,
    /// Mean KL(clean ‖ spliced) over predictions (nats).
    pub kl_clean_spliced: f64,
    /// How BOS positions were treated, in words.
    pub bos_rule: String,
}

/// The rule stated in every report.
pub const BOS_RULE: &str =
    "BOS positions keep their clean activation and are not prediction sources; padding ignored";

/// [`BOS_RULE`], naming the skipped positions when there are any.
pub fn bos_rule(skip_positions: &[u32]) -> String {
    if skip_positions.is_empty() {
        return BOS_RULE.to_string();
    }
    let list: Vec<String> = skip_positions.iter().map(u32::to_string).collect();
    let noun = if list.len() == 1 {
        "position"
    } else {
        "positions"
    };
    format!(
        "BOS positions and {noun} {} keep their clean activation and are not prediction \
         sources; padding ignored",
        list.join(", ")
    )
}

/// Per-batch index bookkeeping.
struct Positions {
    /// Flat indices (i·t + j) of evaluated positions.
    eval_idx: Vec<u32>,
    /// 1 at evaluated positions, `[b·t, 1]`.
    mask: Tensor,
    /// Flat indices of prediction sources and their target ids.
    src_idx: Vec<u32>,
    targets: Vec<u32>,
}

fn positions(
    seqs: &[Vec<u32>],
    batch: &Batch,
    bos: Option<u32>,
    skip: &[u32],
) -> Result<Positions> {
    let t = batch.seq_len;
    let mut eval_idx = Vec::new();
    let mut src_idx = Vec::new();
    let mut targets = Vec::new();
    let mut mask = vec![0u8; seqs.len() * t];
    for (i, s) in seqs.iter().enumerate() {
        for (j, &id) in s.iter().enumerate() {
            if Some(id) == bos || skip.contains(&(j as u32)) {
                continue;
            }
            let flat = (i * t + j) as u32;
            eval_idx.push(flat);
            mask[i * t + j] = 1;
            if j + 1 < s.len() {
                src_idx.push(flat);
                targets.push(s[j + 1]);
            }
        }
    }
    let n = mask.len();
    Ok(Positions {
        eval_idx,
        mask: Tensor::from_vec(mask, (n, 1), &Device::Cpu)?,
        src_idx,
        targets,
    })
}

/// Sum over prediction sources of −log p(target), and the log-probs `[n, vocab]` themselves.
fn nll(logits: &Tensor, pos: &Positions) -> Result<(f64, Tensor)> {
    let (b, t, v) = logits.dims3()?;
    let n = pos.src_idx.len();
    let idx = Tensor::from_slice(&pos.src_idx, n, &Device::Cpu)?;
    let rows = logits.reshape((b * t, v))?.index_select(&idx, 0)?;
    let lp = log_softmax_last(&rows)?;
    let tgt = Tensor::from_slice(&pos.targets, (n, 1), &Device::Cpu)?;
    let picked = lp.gather(&tgt, 1)?.to_dtype(DType::F64)?;
    let s: f64 = picked.sum_all()?.to_scalar()?;
    Ok((-s, lp))
}

/// Replace the evaluated rows of `act` `[b, t, d]` by `rows` `[n, d]` (exactly: unselected rows
/// are copied, selected rows are `rows`).
fn splice_rows(act: &Tensor, pos: &Positions, rows: &Tensor) -> Result<Tensor> {
    let (b, t, d) = act.dims3()?;
    let flat = act.reshape((b * t, d))?;
    let n = pos.eval_idx.len();
    let idx = Tensor::from_slice(&pos.eval_idx, n, &Device::Cpu)?;
    let full = Tensor::zeros((b * t, d), DType::F32, &Device::Cpu)?.index_add(&idx, rows, 0)?;
    let mask = pos.mask.broadcast_as((b * t, d))?;
    Ok(mask.where_cond(&full, &flat)?.reshape((b, t, d))?)
}

/// A reconstruction function: evaluated rows `[n, d]` → x̂ `[n, d]`.
pub type Reconstruct<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

/// Adapt a row-slice reconstruction (`rows × d` row-major f32 in, same out; what the SAE code
/// works on) to a [`Reconstruct`] closure over tensors. For a batch-dependent allocation rule
/// (Mutual / Feature Choice in training form) the rows of one evaluation batch (up to
/// `batch_size` sequences' evaluated positions) form one SAE batch.
pub fn from_rows<F, E>(d: usize, f: F) -> impl Fn(&Tensor) -> candle_core::Result<Tensor>
where
    F: Fn(&[f32], usize) -> std::result::Result<Vec<f32>, E>,
    E: std::fmt::Display + Send + Sync + 'static,
{
    move |x: &Tensor| {
        let (n, dx) = x.dims2()?;
        if dx != d {
            candle_core::bail!("reconstruction expects rows of width {d}, got {dx}");
        }
        let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let out = f(&v, n).map_err(candle_core::Error::wrap)?;
        if out.len() != n * d {
            candle_core::bail!(
                "reconstruction returned {} values for {n} rows of width {d}",
                out.len()
            );
        }
        Tensor::from_vec(out, (n, d), x.device())
    }
}

/// Run the four passes over `seqs` and report CE clean / spliced / zero- / mean-ablated, loss
/// recovered and KL(clean ‖ spliced). `reconstruct` maps the evaluated rows `[n, d]` of each batch
/// to x̂ `[n, d]` (e.g. an SAE's encode→decode, including any input scaling).
pub fn downstream_eval(
    model: &Llama,
    seqs: &[Vec<u32>],
    cfg: &DownstreamConfig,
    reconstruct: Reconstruct<'_>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<DownstreamReport> {
    let mut v = downstream_eval_many(model, seqs, cfg, &[reconstruct], progress, cancel)?;
    v.pop()
        .ok_or_else(|| LmError::Input("no reconstruction function".into()))
}

/// [`downstream_eval`] for several reconstructions of the same hook at once (e.g. SAEs of
/// different architectures): the prefix up to the hook and the clean, zero- and mean-ablated
/// passes run once, each reconstruction adds one spliced pass. Reports come in the order of
/// `reconstructions`; their clean/ablated CEs are identical.
pub fn downstream_eval_many(
    model: &Llama,
    seqs: &[Vec<u32>],
    cfg: &DownstreamConfig,
    reconstructions: &[Reconstruct<'_>],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<DownstreamReport>> {
    model.check_hook(cfg.hook)?;
    if cfg.batch_size == 0 {
        return Err(LmError::Input("batch_size must be at least 1".into()));
    }
    if seqs.is_empty() {
        return Err(LmError::Input("no sequences to evaluate".into()));
    }
    if reconstructions.is_empty() {
        return Err(LmError::Input("no reconstruction function".into()));
    }
    let total: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    progress.set_total(2 * total);
    let mut done = 0u64;
    let mean = mean_activation(model, seqs, cfg, progress, cancel, &mut done)?;
    let mut sums = Sums::new(reconstructions.len());
    for chunk in seqs.chunks(cfg.batch_size) {
        if cancel.is_cancelled() {
            return Err(LmError::Cancelled);
        }
        score_batch(model, chunk, cfg, &mean, reconstructions, &mut sums)?;
        done += chunk.iter().map(|s| s.len() as u64).sum::<u64>();
        progress.set_position(done);
    }
    if sums.n_pred == 0 {
        return Err(LmError::Input(
            "the sequences make no prediction (each needs two or more non-BOS tokens)".into(),
        ));
    }
    progress.finish();
    Ok(sums.reports(cfg, seqs.len()))
}

/// Pass 1: the mean activation `[1, d]` over evaluated positions (runs only up to the hook).
fn mean_activation(
    model: &Llama,
    seqs: &[Vec<u32>],
    cfg: &DownstreamConfig,
    progress: &dyn Progress,
    cancel: &Cancel,
    done: &mut u64,
) -> Result<Tensor> {
    let d = model.d_model();
    let mut sum = vec![0f64; d];
    let mut count = 0usize;
    for chunk in seqs.chunks(cfg.batch_size) {
        if cancel.is_cancelled() {
            return Err(LmError::Cancelled);
        }
        let batch = Batch::new(chunk, cfg.pad_id)?;
        let pos = positions(chunk, &batch, cfg.bos_id, &cfg.skip_positions)?;
        *done += chunk.iter().map(|s| s.len() as u64).sum::<u64>();
        if pos.eval_idx.is_empty() {
            continue;
        }
        let act = model.run_to(&batch.ids, cfg.hook)?;
        let (b, t, _) = act.dims3()?;
        let idx = Tensor::from_slice(&pos.eval_idx, pos.eval_idx.len(), &Device::Cpu)?;
        let rows = act.reshape((b * t, d))?.index_select(&idx, 0)?;
        let s: Vec<f64> = rows.to_dtype(DType::F64)?.sum(0)?.to_vec1()?;
        for (a, x) in sum.iter_mut().zip(s) {
            *a += x;
        }
        count += pos.eval_idx.len();
        progress.set_position(*done);
    }
    if count == 0 {
        return Err(LmError::Input(
            "the sequences hold no evaluated position (only BOS tokens?)".into(),
        ));
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    Ok(Tensor::from_vec(mean, (1, d), &Device::Cpu)?)
}

/// Summed NLLs and KLs over the scored predictions (pass 2).
struct Sums {
    ce_clean: f64,
    ce_zero: f64,
    ce_mean: f64,
    /// Per reconstruction.
    ce_spliced: Vec<f64>,
    kl: Vec<f64>,
    n_pred: usize,
    n_spliced: usize,
}

impl Sums {
    fn new(k: usize) -> Self {
        Sums {
            ce_clean: 0.0,
            ce_zero: 0.0,
            ce_mean: 0.0,
            ce_spliced: vec![0.0; k],
            kl: vec![0.0; k],
            n_pred: 0,
            n_spliced: 0,
        }
    }

    /// One report per reconstruction: the sums divided by the predictions scored.
    fn reports(&self, cfg: &DownstreamConfig, n_sequences: usize) -> Vec<DownstreamReport> {
        let np = self.n_pred as f64;
        let (ce_c, ce_z, ce_m) = (self.ce_clean / np, self.ce_zero / np, self.ce_mean / np);
        self.ce_spliced
            .iter()
            .zip(&self.kl)
            .map(|(s, kl)| {
                let ce_sp = s / np;
                DownstreamReport {
                    hook: cfg.hook.name(),
                    n_sequences,
                    n_spliced: self.n_spliced,
                    n_predictions: self.n_pred,
                    ce_clean: ce_c,
                    ce_spliced: ce_sp,
                    ce_zero_ablated: ce_z,
                    ce_mean_ablated: ce_m,
                    loss_recovered_zero: (ce_z - ce_sp) / (ce_z - ce_c),
                    loss_recovered_mean: (ce_m - ce_sp) / (ce_m - ce_c),
                    kl_clean_spliced: kl / np,
                    bos_rule: bos_rule(&cfg.skip_positions),
                }
            })
            .collect()
    }
}

/// Pass 2 on one batch: the clean, zero- and mean-ablated passes once, then one spliced pass per
/// reconstruction, added to `sums`.
fn score_batch(
    model: &Llama,
    chunk: &[Vec<u32>],
    cfg: &DownstreamConfig,
    mean: &Tensor,
    reconstructions: &[Reconstruct<'_>],
    sums: &mut Sums,
) -> Result<()> {
    let d = model.d_model();
    let batch = Batch::new(chunk, cfg.pad_id)?;
    let pos = positions(chunk, &batch, cfg.bos_id, &cfg.skip_positions)?;
    if pos.src_idx.is_empty() || pos.eval_idx.is_empty() {
        return Ok(());
    }
    let cap = model.capture(&batch.ids, cfg.hook)?;
    let (b, t, _) = cap.act.dims3()?;
    let n = pos.eval_idx.len();
    let idx = Tensor::from_slice(&pos.eval_idx, n, &Device::Cpu)?;
    let x = cap.act.reshape((b * t, d))?.index_select(&idx, 0)?;

    let (c, lp_clean) = nll(&model.resume(&cap, &cap.act)?, &pos)?;
    let zeros = Tensor::zeros((n, d), DType::F32, &Device::Cpu)?;
    let (z, _) = nll(
        &model.resume(&cap, &splice_rows(&cap.act, &pos, &zeros)?)?,
        &pos,
    )?;
    let means = mean.broadcast_as((n, d))?.contiguous()?;
    let (m, _) = nll(
        &model.resume(&cap, &splice_rows(&cap.act, &pos, &means)?)?,
        &pos,
    )?;
    let p_clean = lp_clean.exp()?;
    for (i, reconstruct) in reconstructions.iter().enumerate() {
        let xhat = reconstruct(&x)?;
        if xhat.dims() != [n, d] {
            return Err(LmError::HookShape {
                hook: format!("{} (reconstruction #{i})", cfg.hook.name()),
                got: xhat.dims().to_vec(),
                expected: vec![n, d],
            });
        }
        let xhat = xhat.to_dtype(DType::F32)?;
        let peak: f32 = xhat.abs()?.max_all()?.to_scalar()?;
        if !peak.is_finite() {
            return Err(LmError::Input(format!(
                "reconstruction #{i} contains NaN or Inf"
            )));
        }
        let spliced = splice_rows(&cap.act, &pos, &xhat)?;
        let (s, lp_spliced) = nll(&model.resume(&cap, &spliced)?, &pos)?;
        let kl_sum: f64 = (&p_clean * (&lp_clean - &lp_spliced)?)?
            .sum(D::Minus1)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar()?;
        sums.ce_spliced[i] += s;
        sums.kl[i] += kl_sum;
    }
    sums.ce_clean += c;
    sums.ce_zero += z;
    sums.ce_mean += m;
    sums.n_pred += pos.src_idx.len();
    sums.n_spliced += n;
    Ok(())
}
