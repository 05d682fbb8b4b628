//! The fused fast training step: the same losses, gradients and Adam update as
//! [`super::reference::forward_backward`] + [`super::optim::Adam::step`], without any dense B×F
//! gradient and without per-step allocation of the large buffers (they live in [`FastStep`],
//! owned by the trainer and reused).
//!
//! With X′ = X − b_dec, A = ReLU(X′·W_encᵀ + b_enc), matchings M (main) and M_aux, Z = A ⊙ M:
//!
//! 1. encoder: the one dense product X′·W_encᵀ ([`crate::kernels::matmul`], bit-identical to
//!    the reference's candle matmul, so both paths select the same entries), then + b_enc, ReLU;
//!    with `train.matmul = "bf16"` the product rounds X′ and W_enc to bf16 and accumulates in
//!    f32 ([`crate::kernels::bf16`], + b_enc and ReLU fused); everything after it stays f32;
//! 2. allocation on A (the configured rule) and, when active, the auxiliary selection;
//! 3. sparse decode per token: x̂_i = Σ_{j∈M_i} a_ij·W_dec[j] + b_dec, e_i = x_i − x̂_i;
//!    L_rec = Σ‖e‖² / Σ‖x − x̄‖²; ê_i = Σ_{j∈M_aux,i} a_ij·W_dec[j] (no b_dec),
//!    L_aux = Σ‖e − ê‖² / (Σ‖e − ē‖² or B·d), e detached; L = L_rec + α·L_aux;
//! 4. per token: g_i = ∂L/∂x̂_i = −2·e_i / var, h_i = ∂L/∂ê_i = −2α·(e_i − ê_i) / denom, and per
//!    matched pair ∂L/∂pre_ij = W_dec[j]·g_i (main) or W_dec[j]·h_i (aux) (a_ij > 0 for every
//!    selected entry, so the ReLU passes the gradient);
//! 5. per touched feature j (a CSC view of both matchings, fixed order):
//!    ∂W_dec[j] = Σ a_ij·g_i + Σ_aux a_ij·h_i (then its component along W_dec[j] removed),
//!    ∂b_enc[j] = Σ ∂pre_ij, ∂W_enc[j] = Σ ∂pre_ij·x′_i; untouched features have zero gradient.
//!    Features whose auxiliary pairs fill at least [`AUX_DENSE_ABOVE`] of their column take the
//!    auxiliary terms of steps 3–5 from four dense products instead (`aux_dense`);
//! 6. ∂b_dec = Σ_i g_i − Σ_j ∂b_enc[j]·W_enc[j] (the decoder bias, plus the encoder input X − b_dec);
//! 7. Adam on every parameter (moments of untouched rows decay exactly as in the dense
//!    optimiser: m ← β1·m, v ← β2·v, and the row still moves), fused per row with the decoder
//!    renormalisation, in parallel.
//!
//! Determinism: every reduction has a fixed order independent of the thread count; the encoder
//! product's and the dense auxiliary products' orders depend only on `gemm`'s blocking. On a
//! fixed thread count the step is bit-reproducible (tested on one thread).

use super::allocation::{AllocInput, Allocation, Matching};
use super::config::AuxNorm;
use super::loss::{aux_select_with, AuxRowScratch, AuxRowSelector};
use super::optim::{Adam, AdamStep, Grads};
use super::params::SaeParams;
use super::reference::Losses;
use super::SaeError;
use crate::kernels::aligned::Aligned;
use crate::kernels::bf16::{Bf16Gemm, Bf16Kernel};
use crate::kernels::{matmul, reduce, vector};
use csc::{FeatureView, Pairs, NONE};
use rayon::prelude::*;

mod aux_decode;
mod aux_dense;
mod csc;

use aux_dense::AuxDense;
pub use aux_dense::AUX_DENSE_ABOVE;

/// The auxiliary loss of a step: eligibilities u (length F), k_aux, weight α, normalisation.
#[derive(Debug, Clone, Copy)]
pub struct AuxSpec<'a> {
    pub u: &'a [f32],
    pub k_aux: usize,
    pub coeff: f64,
    pub norm: AuxNorm,
    /// Skip each token's own main matches in its auxiliary selection.
    pub exclude_matched: bool,
}

/// Tokens per parallel task of the per-token passes.
const ROW_CHUNK: usize = 16;
/// Rows per parallel task of the Adam pass.
const ADAM_ROWS: usize = 32;
/// Touched features per partial sum of the b_dec encoder term.
const FEAT_CHUNK: usize = 256;

/// Wall time of each phase of the last step, in seconds (for the benchmark).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Phases {
    /// X − b_dec, the encoder product, + b_enc, ReLU.
    pub encode: f64,
    /// Of which the dense product alone (in bf16: rounding and packing both operands, and the
    /// + b_enc and ReLU fused into the product's output pass).
    pub matmul: f64,
    /// Main and auxiliary selections.
    pub select: f64,
    /// Sparse decode, losses, per-token gradients and ∂L/∂pre.
    pub decode: f64,
    /// Per-feature gradients and ∂b_dec.
    pub backward: f64,
    /// Clipping, Adam on every parameter, decoder renormalisation.
    pub adam: f64,
    /// Of decode and backward: the dense auxiliary block's four products (0 when the block did
    /// not run), the part of the auxiliary loss's cost that is f32 GEMM.
    pub aux_products: f64,
}

/// The fast step's reusable buffers, and the outputs the trainer reads after a step
/// (`a`, `main`, `aux`).
#[derive(Debug, Default)]
pub struct FastStep {
    /// Pre-activations A (B×F) of the last step, on whole cache lines (the bf16 product
    /// stores 64-byte rows into it).
    pub a: Aligned<f32>,
    /// Main matching of the last step.
    pub main: Matching,
    /// Auxiliary matching of the last step (empty when the auxiliary loss did not run).
    pub aux: Matching,
    aux_on: bool,
    /// Whether the last step ran the auxiliary loss as dense products ([`AuxDense`]) for
    /// some of its features.
    dense_on: bool,
    /// A feature's column fill from which it does (`None`: [`AUX_DENSE_ABOVE`]).
    aux_dense_above: Option<f64>,
    dense: AuxDense,
    dims: (usize, usize, usize),
    xc: Vec<f32>,
    e: Vec<f32>,
    g_rec: Vec<f32>,
    g_aux: Vec<f32>,
    c_main: Vec<f32>,
    /// a_ij of the main and auxiliary pairs, aligned with the matchings' columns.
    a_main: Vec<f32>,
    a_aux: Vec<f32>,
    c_aux: Vec<f32>,
    row_sse: Vec<f64>,
    row_sse_aux: Vec<f64>,
    view: FeatureView,
    g_wenc: Vec<f32>,
    g_wdec: Vec<f32>,
    g_benc_t: Vec<f32>,
    g_benc: Vec<f32>,
    g_bdec: Vec<f32>,
    zero_row: Vec<f32>,
    /// Whether the gradients in the buffers are ready for [`FastStep::apply_adam`].
    ready: bool,
    /// Phase timings of the last step.
    pub phases: Phases,
    /// The bf16 encoder product's packed operands, when the step runs it in bf16.
    bf16: Option<Bf16Gemm>,
}

/// Set the length to `n`, keeping the capacity and not re-zeroing what is kept: every buffer
/// of the step is fully overwritten before it is read.
pub(super) fn resize<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    } else {
        v.truncate(n);
    }
}

/// Cut a CSR-aligned buffer into the segments of consecutive `rows`-row groups.
pub(super) fn split_rows<'a, T>(
    mut buf: &'a mut [T],
    row_ptr: &[usize],
    b: usize,
    rows: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(b.div_ceil(rows));
    let mut r0 = 0;
    while r0 < b {
        let r1 = (r0 + rows).min(b);
        let (head, tail) = buf.split_at_mut(row_ptr[r1] - row_ptr[r0]);
        out.push(head);
        buf = tail;
        r0 = r1;
    }
    out
}

impl FastStep {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the encoder product in bf16 on `kernel` (f32 operands rounded, f32 accumulation),
    /// or in f32 with `None`. Returns false, and keeps f32, when this CPU cannot run `kernel`.
    pub fn set_bf16(&mut self, kernel: Option<Bf16Kernel>) -> bool {
        self.bf16 = kernel.and_then(Bf16Gemm::new);
        self.bf16.is_some() == kernel.is_some()
    }

    /// Run the auxiliary loss as dense products over the features whose auxiliary pairs fill at
    /// least `t` of their column of B tokens (0: every feature with a pair, above 1 or NaN:
    /// none; default [`AUX_DENSE_ABOVE`]).
    pub fn set_aux_dense_above(&mut self, t: f64) {
        self.aux_dense_above = Some(t);
    }

    /// Whether the last step ran the auxiliary loss as dense products (for some features).
    pub fn aux_dense(&self) -> bool {
        self.dense_on
    }

    /// The last step's dense auxiliary block: (its features, the pairs left pairwise); (0, 0)
    /// without one.
    pub fn aux_dense_split(&self) -> (usize, usize) {
        if self.aux_dense() {
            (self.dense.cols.len(), self.dense.rest.nnz())
        } else {
            (0, 0)
        }
    }

    /// The bf16 kernel the encoder product runs on (`None`: f32).
    pub fn bf16_kernel(&self) -> Option<Bf16Kernel> {
        self.bf16.as_ref().map(Bf16Gemm::kernel)
    }

    /// Forward and backward of one batch `x` (B×d, already scaled): fills the matchings, A and
    /// the sparse gradients; returns the losses. Parameters are not changed (see
    /// [`FastStep::apply_adam`]).
    #[allow(clippy::too_many_arguments)] // one batch's inputs; splitting it is issue 12's work
    pub fn forward_backward(
        &mut self,
        p: &SaeParams,
        x: &[f32],
        b: usize,
        alloc: &dyn Allocation,
        density: &[f32],
        step: u64,
        aux: Option<AuxSpec<'_>>,
    ) -> Result<Losses, SaeError> {
        let (d, f) = (p.d, p.f);
        if x.len() != b * d || b == 0 {
            return Err(SaeError::Width {
                data: x.len(),
                sae: d,
            });
        }
        self.ready = false;
        self.dims = (b, d, f);
        resize(&mut self.xc, b * d);
        self.a.resize(b * f);
        resize(&mut self.e, b * d);
        resize(&mut self.g_rec, b * d);
        resize(&mut self.g_aux, b * d);
        resize(&mut self.row_sse, b);
        resize(&mut self.row_sse_aux, b);
        resize(&mut self.zero_row, d);

        let clock = std::time::Instant::now();
        let mut lap = {
            let mut last = clock;
            move || {
                let now = std::time::Instant::now();
                let dt = (now - last).as_secs_f64();
                last = now;
                dt
            }
        };
        self.encode(p, x, b);
        self.phases.encode = lap();
        self.select(b, f, alloc, density, step, aux.as_ref());
        self.phases.select = lap();
        let (rec, mse) = self.decode_and_residuals(p, x, b);
        let (coeff, aux_loss) = self.scale_aux(aux.as_ref(), b, d);
        self.phases.decode = lap();
        self.feature_view(b, f);
        self.feature_gradients(p);
        self.decoder_bias_gradient(p);
        self.phases.backward = lap();
        self.phases.aux_products = if self.dense_on {
            self.dense.product_s
        } else {
            0.0
        };
        self.ready = true;
        Ok(Losses {
            rec,
            mse,
            aux: aux_loss,
            total: rec + coeff * aux_loss,
        })
    }

    /// Phase 1, the encoder: x − b_dec, the encoder product, + b_enc, ReLU, into `self.a`.
    fn encode(&mut self, p: &SaeParams, x: &[f32], b: usize) {
        let (d, f) = (p.d, p.f);
        self.xc
            .par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, xr)| {
                o.iter_mut()
                    .zip(xr)
                    .zip(&p.b_dec)
                    .for_each(|((o, &x), &bd)| *o = x - bd);
            });
        let t_mm = std::time::Instant::now();
        if let Some(g) = &mut self.bf16 {
            // W_enc changes every step, so it is rounded and packed every step (≈ 5 % of the
            // bf16 product's time at 768 × 24576); + b_enc and ReLU are fused into the product.
            g.pack_b(&p.w_enc, f, d);
            g.pack_a(&self.xc, b, d);
            g.product(&mut self.a, Some(&p.b_enc), true);
            self.phases.matmul = t_mm.elapsed().as_secs_f64();
            return;
        }
        matmul::matmul_abt(&self.xc, &p.w_enc, &mut self.a, b, f, d);
        self.phases.matmul = t_mm.elapsed().as_secs_f64();
        self.a.par_chunks_mut(f).for_each(|row| {
            row.iter_mut()
                .zip(&p.b_enc)
                .for_each(|(v, &be)| *v = (*v + be).max(0.0));
        });
    }

    /// Phase 2, the selections: the main matching by `alloc` and, with an auxiliary loss, its
    /// matching; sets `aux_on`.
    fn select(
        &mut self,
        b: usize,
        f: usize,
        alloc: &dyn Allocation,
        density: &[f32],
        step: u64,
        aux: Option<&AuxSpec<'_>>,
    ) {
        self.aux.reset(b, f);
        if let (Some(s), Some(rule)) = (aux, alloc.by_row()) {
            // A per-row rule: both selections in one pass over the rows of A, the auxiliary
            // one while the row is still in cache.
            let selector = AuxRowSelector::new(&s.u[..f], s.k_aux, None);
            let rows: Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> = self
                .a
                .par_chunks(f)
                .map_init(
                    || (Vec::new(), AuxRowScratch::default()),
                    |(scratch, aux_scratch), row| {
                        let (mut main, mut aux) = (Vec::new(), Vec::with_capacity(s.k_aux.min(f)));
                        let mut vals = Vec::with_capacity(s.k_aux.min(f));
                        rule.select_row(row, scratch, &mut main);
                        let exclude = if s.exclude_matched { &main[..] } else { &[] };
                        selector.select_values(row, exclude, aux_scratch, &mut aux, &mut vals);
                        (main, aux, vals)
                    },
                )
                .collect();
            self.main.reset(b, f);
            self.a_aux.clear();
            for (main, aux, vals) in &rows {
                self.main.cols.extend_from_slice(main);
                self.main.end_row();
                self.aux.cols.extend_from_slice(aux);
                self.aux.end_row();
                self.a_aux.extend_from_slice(vals);
            }
            self.aux_on = self.aux.nnz() > 0;
            return;
        }
        alloc.select(
            &AllocInput {
                a: &self.a,
                b,
                f,
                density,
                step,
            },
            &mut self.main,
        );
        if let Some(s) = aux {
            let exclude = s.exclude_matched.then_some(&self.main);
            aux_select_with(
                &self.a,
                b,
                f,
                s.u,
                s.k_aux,
                exclude,
                None,
                &mut self.aux,
                Some(&mut self.a_aux),
            );
        }
        self.aux_on = aux.is_some() && self.aux.nnz() > 0;
    }

    /// Phases 3–4, decode and residuals. Returns (FVU, MSE) of the main reconstruction.
    fn decode_and_residuals(&mut self, p: &SaeParams, x: &[f32], b: usize) -> (f64, f64) {
        let (d, f) = (p.d, p.f);
        let aux_on = self.aux_on;
        // 3–4. One pass per token over its matched decoder rows (read once, while they are in
        // cache): x̂_i and e_i, g_i = −2·e_i/var, ∂L/∂pre for the main entries. With the
        // auxiliary loss, then by token blocks (`aux_decode`): ê_i, r_i = e_i − ê_i and the
        // unscaled W_dec[j]·r_i, scaled by −2α/denom afterwards (denom needs every e_i); the
        // features of the dense block (`aux_dense`) by products, the rest by `aux_decode` on
        // e − Ê of the block.
        let (a, main, auxm) = (&self.a, &self.main, &self.aux);
        let w_dec = &p.w_dec;
        let var = reduce::total_variance(x, d).max(f64::MIN_POSITIVE);
        let s_rec = (2.0 / var) as f32;
        resize(&mut self.c_main, main.nnz());
        resize(&mut self.a_main, main.nnz());
        self.dense_on = aux_on
            && self.dense.split(
                auxm,
                &self.a_aux,
                self.aux_dense_above.unwrap_or(AUX_DENSE_ABOVE),
                w_dec,
                d,
            );
        // c_aux: ∂L/∂pre of the pairwise auxiliary pairs.
        let pairwise = self.pairwise_aux().map_or(0, |(m, _)| m.nnz());
        resize(&mut self.c_aux, pairwise);
        {
            let c_main = split_rows(&mut self.c_main, &main.row_ptr, b, ROW_CHUNK);
            let a_main = split_rows(&mut self.a_main, &main.row_ptr, b, ROW_CHUNK);
            let chunks: Vec<_> = self
                .e
                .chunks_mut(ROW_CHUNK * d)
                .zip(self.g_rec.chunks_mut(ROW_CHUNK * d))
                .zip(self.row_sse.chunks_mut(ROW_CHUNK))
                .zip(c_main.into_iter().zip(a_main))
                .collect();
            chunks
                .into_par_iter()
                .enumerate()
                .for_each(|(ci, (((e, g), se), (cm, am)))| {
                    let mut cm_at = 0;
                    for r in 0..se.len() {
                        let i = ci * ROW_CHUNK + r;
                        let e = &mut e[r * d..(r + 1) * d];
                        let js = main.row(i);
                        let vals = &mut am[cm_at..cm_at + js.len()];
                        vals.iter_mut()
                            .zip(js)
                            .for_each(|(v, &j)| *v = a[i * f + j as usize]);
                        vector::gather_rows_sum(w_dec, js, vals, e);
                        let mut s = 0f64;
                        for ((e, &xv), &bd) in
                            e.iter_mut().zip(&x[i * d..(i + 1) * d]).zip(&p.b_dec)
                        {
                            let res = xv - (*e + bd);
                            *e = res;
                            s += (res as f64) * (res as f64);
                        }
                        se[r] = s;
                        let g = &mut g[r * d..(r + 1) * d];
                        g.iter_mut()
                            .zip(e.iter())
                            .for_each(|(g, &e)| *g = -s_rec * e);
                        vector::gather_dots(w_dec, js, g, &mut cm[cm_at..cm_at + js.len()]);
                        cm_at += js.len();
                    }
                });
        }
        if self.dense_on {
            self.dense.decode(
                &self.e,
                w_dec,
                d,
                &mut self.g_aux,
                &mut self.row_sse_aux,
                &mut self.c_aux,
            );
        } else if aux_on {
            aux_decode::aux_decode(
                &self.aux,
                &self.a_aux,
                w_dec,
                &self.e,
                d,
                &mut self.g_aux,
                &mut self.row_sse_aux,
                &mut self.c_aux,
            );
        } else {
            self.row_sse_aux.fill(0.0);
        }
        let sse: f64 = self.row_sse.iter().sum();
        let rec = sse / var;
        (rec, sse / (b * d) as f64)
    }

    /// The auxiliary loss from the residual pass, and its gradients scaled by −2α/denom (denom
    /// needs every e_i). Returns (α, auxiliary loss); (0, 0) when the loss is off this step.
    fn scale_aux(&mut self, aux: Option<&AuxSpec<'_>>, b: usize, d: usize) -> (f64, f64) {
        let aux_on = self.aux_on;
        let (coeff, denom) = match (aux, aux_on) {
            (Some(s), true) => (
                s.coeff,
                match s.norm {
                    AuxNorm::Nmse => reduce::total_variance(&self.e, d),
                    AuxNorm::Mse => (b * d) as f64,
                }
                .max(f64::MIN_POSITIVE),
            ),
            _ => (0.0, 1.0),
        };
        if aux_on {
            // h_i = ∂L/∂ê_i = −2α·r_i/denom, and ∂L/∂pre_ij = W_dec[j]·h_i.
            let s_aux = -((2.0 * coeff / denom) as f32);
            if self.dense_on {
                self.dense.scale(s_aux);
            }
            self.c_aux
                .par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= s_aux));
            self.g_aux
                .par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= s_aux));
        }
        let aux_loss = if aux_on {
            self.row_sse_aux.iter().sum::<f64>() / denom
        } else {
            0.0
        };

        (coeff, aux_loss)
    }

    /// Phase 5, the per-feature view of both matchings (entries sorted by token).
    fn feature_view(&mut self, b: usize, f: usize) {
        // The view is taken out while the pairs borrow the rest of the step.
        let mut view = std::mem::take(&mut self.view);
        let main = Pairs {
            row_ptr: &self.main.row_ptr,
            cols: &self.main.cols,
            a: &self.a_main,
            c: &self.c_main,
        };
        let aux = self.pairwise_aux().map(|(m, a)| Pairs {
            row_ptr: &m.row_ptr,
            cols: &m.cols,
            a,
            c: &self.c_aux,
        });
        let extra = self.dense_on.then_some(&self.dense.pos[..]);
        view.build(b, f, &main, aux.as_ref(), extra);
        self.view = view;
    }

    /// The auxiliary pairs that run pairwise, with their a_ij: all of them, or the dense
    /// block's rest (`None`: no auxiliary loss this step, or every pair in the block).
    fn pairwise_aux(&self) -> Option<(&Matching, &[f32])> {
        match (self.aux_on, self.dense_on) {
            (true, false) => Some((&self.aux, &self.a_aux)),
            (true, true) if self.dense.rest.nnz() > 0 => {
                Some((&self.dense.rest, &self.dense.rest_vals))
            }
            _ => None,
        }
    }

    /// Phase 5b, the gradients of the touched features (W_enc, W_dec projected, b_enc).
    fn feature_gradients(&mut self, p: &SaeParams) {
        let (d, f) = (p.d, p.f);
        let nt = self.view.touched.len();
        resize(&mut self.g_wenc, nt * d);
        resize(&mut self.g_wdec, nt * d);
        resize(&mut self.g_benc_t, nt);
        if self.dense_on {
            self.dense.gradients(&self.xc, &self.g_aux, d);
        }
        let pairwise = self.pairwise_aux().is_some();
        let h = pairwise.then_some(&self.g_aux[..]);
        let extra = self.dense_on.then(|| self.dense.extra());
        self.view.gradients(
            &self.xc,
            &self.g_rec,
            h,
            extra,
            &p.w_dec,
            d,
            &mut self.g_wenc,
            &mut self.g_wdec,
            &mut self.g_benc_t,
        );
        resize(&mut self.g_benc, f);
        self.g_benc.fill(0.0);
        for (&j, &g) in self.view.touched.iter().zip(&self.g_benc_t) {
            self.g_benc[j as usize] = g;
        }
    }

    /// Phase 6, b_dec: the decoder-bias gradient minus the encoder-input term.
    fn decoder_bias_gradient(&mut self, p: &SaeParams) {
        let d = p.d;
        let dec = reduce::column_sums_f64(&self.g_rec, d);
        let w_enc = &p.w_enc;
        let parts: Vec<Vec<f64>> = self
            .view
            .touched
            .par_chunks(FEAT_CHUNK)
            .zip(self.g_benc_t.par_chunks(FEAT_CHUNK))
            .map(|(js, gs)| {
                let mut s = vec![0f64; d];
                for (&j, &g) in js.iter().zip(gs) {
                    let w = &w_enc[j as usize * d..(j as usize + 1) * d];
                    s.iter_mut()
                        .zip(w)
                        .for_each(|(s, &w)| *s += g as f64 * w as f64);
                }
                s
            })
            .collect();
        let mut enc = vec![0f64; d];
        for part in parts {
            enc.iter_mut().zip(part).for_each(|(e, p)| *e += p);
        }
        resize(&mut self.g_bdec, d);
        self.g_bdec
            .iter_mut()
            .zip(dec.iter().zip(&enc))
            .for_each(|(g, (a, b))| *g = (a - b) as f32);
    }

    /// Whether the last step ran the auxiliary loss.
    pub fn aux_active(&self) -> bool {
        self.aux_on
    }

    /// The last step's gradients as dense arrays (for tests against the reference path; the
    /// step itself never builds them).
    pub fn dense_grads(&self) -> Grads {
        let (_, d, f) = self.dims;
        let mut w_enc = vec![0f32; f * d];
        let mut w_dec = vec![0f32; f * d];
        for (t, &j) in self.view.touched.iter().enumerate() {
            let j = j as usize;
            w_enc[j * d..(j + 1) * d].copy_from_slice(&self.g_wenc[t * d..(t + 1) * d]);
            w_dec[j * d..(j + 1) * d].copy_from_slice(&self.g_wdec[t * d..(t + 1) * d]);
        }
        Grads {
            w_enc,
            b_enc: self.g_benc.clone(),
            w_dec,
            b_dec: self.g_bdec.clone(),
        }
    }

    /// Adam on every parameter with the gradients of the last [`FastStep::forward_backward`]
    /// (already projected off the decoder rows), optional global-norm clipping, and the decoder
    /// renormalisation fused into the same pass. Returns the name of a parameter that became
    /// non-finite, if any.
    pub fn apply_adam(
        &mut self,
        p: &mut SaeParams,
        adam: &mut Adam,
        h: AdamStep,
    ) -> Option<&'static str> {
        if !self.ready {
            return None;
        }
        self.ready = false;
        let clock = std::time::Instant::now();
        let d = p.d;
        if h.clip > 0.0 {
            let sq = |v: &[f32]| -> f64 {
                v.par_chunks(4096)
                    .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                    .collect::<Vec<f64>>()
                    .iter()
                    .sum()
            };
            let n =
                (sq(&self.g_wenc) + sq(&self.g_benc) + sq(&self.g_wdec) + sq(&self.g_bdec)).sqrt();
            if n > h.clip {
                let s = (h.clip / n) as f32;
                for v in [
                    &mut self.g_wenc,
                    &mut self.g_benc,
                    &mut self.g_wdec,
                    &mut self.g_bdec,
                ] {
                    v.par_iter_mut().for_each(|x| *x *= s);
                }
            }
        }
        adam.t += 1;
        let c = AdamConsts::new(h, adam.t);
        let [m0, m1, m2, m3] = &mut adam.m;
        let [v0, v1, v2, v3] = &mut adam.v;
        let bad_enc = adam_rows(
            &mut p.w_enc,
            m0,
            v0,
            d,
            &self.view.slot,
            &self.g_wenc,
            &self.zero_row,
            c,
            false,
        );
        let bad_be = adam_dense(&mut p.b_enc, m1, v1, &self.g_benc, c);
        let bad_dec = adam_rows(
            &mut p.w_dec,
            m2,
            v2,
            d,
            &self.view.slot,
            &self.g_wdec,
            &self.zero_row,
            c,
            true,
        );
        let bad_bd = adam_dense(&mut p.b_dec, m3, v3, &self.g_bdec, c);
        self.phases.adam = clock.elapsed().as_secs_f64();
        [
            (bad_enc, "W_enc"),
            (bad_be, "b_enc"),
            (bad_dec, "W_dec"),
            (bad_bd, "b_dec"),
        ]
        .into_iter()
        .find(|(bad, _)| *bad)
        .map(|(_, n)| n)
    }
}

/// Adam constants of step t, computed exactly as in [`Adam::step`].
#[derive(Debug, Clone, Copy)]
struct AdamConsts {
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

impl AdamConsts {
    fn new(h: AdamStep, t: u64) -> Self {
        let bc1 = 1.0 - h.beta1.powi(t as i32);
        let bc2 = 1.0 - h.beta2.powi(t as i32);
        AdamConsts {
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            eps: h.eps as f32,
            step_size: (h.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// The element update of [`Adam::step`], same operations in the same order.
#[inline(always)]
fn adam_body(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamConsts) -> bool {
    let (b1, b2, eps, step_size, bc2_sqrt) = (c.b1, c.b2, c.eps, c.step_size, c.bc2_sqrt);
    let n = w.len().min(m.len()).min(v.len()).min(g.len());
    let (w, m, v, g) = (&mut w[..n], &mut m[..n], &mut v[..n], &g[..n]);
    let mut bad = false;
    for i in 0..n {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        w[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
        bad |= !w[i].is_finite();
    }
    bad
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adam_avx512(
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    c: AdamConsts,
) -> bool {
    adam_body(w, m, v, g, c)
}

fn adam_update(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamConsts) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { adam_avx512(w, m, v, g, c) };
    }
    adam_body(w, m, v, g, c)
}

/// Adam over the rows (width d) of a matrix whose gradient is stored only for touched rows
/// (`slot[j]` = row of `g`, or NONE: zero gradient). Optionally renormalise each row.
#[allow(clippy::too_many_arguments)]
fn adam_rows(
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    d: usize,
    slot: &[u32],
    g: &[f32],
    zero: &[f32],
    c: AdamConsts,
    renorm: bool,
) -> bool {
    if d == 0 {
        return false;
    }
    w.par_chunks_mut(ADAM_ROWS * d)
        .zip(m.par_chunks_mut(ADAM_ROWS * d))
        .zip(v.par_chunks_mut(ADAM_ROWS * d))
        .enumerate()
        .map(|(ci, ((w, m), v))| {
            let mut bad = false;
            for (r, ((w, m), v)) in w
                .chunks_mut(d)
                .zip(m.chunks_mut(d))
                .zip(v.chunks_mut(d))
                .enumerate()
            {
                let j = ci * ADAM_ROWS + r;
                let gr = match slot[j] {
                    NONE => &zero[..d],
                    s => &g[s as usize * d..(s as usize + 1) * d],
                };
                bad |= adam_update(w, m, v, gr, c);
                if renorm {
                    let n = vector::dot(w, w).sqrt();
                    if n > 0.0 {
                        w.iter_mut().for_each(|x| *x /= n);
                    }
                }
            }
            bad
        })
        .reduce(|| false, |a, b| a | b)
}

fn adam_dense(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamConsts) -> bool {
    adam_update(w, m, v, g, c)
}
