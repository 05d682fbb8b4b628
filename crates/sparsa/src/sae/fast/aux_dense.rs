//! The auxiliary loss as dense products over its few features.
//!
//! The auxiliary matching touches only the eligible features (aux_k: the dead ones; aux_zipf:
//! the dead and under-used ones), which in training are a few hundred to a few thousand of F,
//! while each token takes up to k_aux = d/2 of them: the pairs fill a large share of the
//! B × n block of those n features. Gathered pair by pair (`aux_decode` and the per-feature
//! sums of `csc`) every pair reads a 3 KB decoder row and a row of X′ or of the gradient from
//! the last-level cache, twice; as dense products on the block they run at the FMA peak. With
//! A_E (B×n: a_ij on the pairs, 0 elsewhere), W_E (n×d: the features' decoder rows),
//! e the residual and s = −2α/denom:
//!
//! - Ê = A_E·W_E, R = e − Ê, ‖r_i‖²;
//! - C_E = (R·W_Eᵀ) masked to the pairs, then scaled by s (∂L/∂pre of the pairs), H = s·R;
//! - ∂W_enc[E] = C_Eᵀ·X′, ∂W_dec[E] = A_Eᵀ·H, ∂b_enc[E] = the column sums of C_E.
//!
//! The zeros of A_E and C_E add exact zeros, so the results equal the pairwise sums up to the
//! order of the additions (the products' blocking).
//!
//! A product costs the same for a feature whatever its pairs, the pairwise path costs per
//! pair: a feature joins the block when its pairs fill at least [`AUX_DENSE_ABOVE`] of its
//! column (B tokens). The other features' pairs (the rest) stay pairwise: the decode first
//! subtracts the block's Ê from e, then runs the pairwise decode of the rest on that
//! ([`super::aux_decode`]), so R and H are the whole auxiliary residual and gradient.

use super::aux_decode::aux_decode;
use super::csc::{Extra, NONE};
use super::{resize, split_rows, Matching};
use crate::kernels::matmul::{gemm_into, Operand};
use rayon::prelude::*;

/// The share of a feature's column (B tokens) its auxiliary pairs must fill for the feature to
/// join the dense block. Project choice, measured (`sparsa bench sae --aux-dense-above`, and
/// all-dense against all-pairwise at 768 × 24576, B 4096, two threads: equal cost at ≈ 0.24 of
/// the block filled): docs/sae.md section 5.
pub const AUX_DENSE_ABOVE: f64 = 0.25;

/// Rows per parallel task of the row passes.
const ROWS: usize = 64;

/// The dense auxiliary block of one step, the pairwise rest, and the block's gradients.
#[derive(Debug, Default)]
pub struct AuxDense {
    /// The block's features, ascending.
    pub cols: Vec<u32>,
    /// Per feature: its position in `cols`, or [`NONE`].
    pub pos: Vec<u32>,
    /// A_E, B × n.
    a: Vec<f32>,
    /// W_E, n × d.
    w: Vec<f32>,
    /// C_E, B × n.
    c: Vec<f32>,
    /// ∂W_enc[E], ∂W_dec[E] (n × d each) and ∂b_enc[E] (n).
    pub ge: Vec<f32>,
    pub gd: Vec<f32>,
    pub gb: Vec<f32>,
    /// The pairs of the other features, and their a_ij (aligned with `rest.cols`).
    pub rest: Matching,
    pub rest_vals: Vec<f32>,
    /// e − A_E·W_E (B × d), when there is a rest.
    ep: Vec<f32>,
    counts: Vec<u32>,
    /// Seconds in the block's products since the last [`AuxDense::split`].
    pub product_s: f64,
}

impl AuxDense {
    /// Split `aux` (a_ij in `vals`, aligned with `aux.cols`): features whose pairs fill at least
    /// `threshold` of their column join the block (A_E, W_E gathered from `w_dec`, F × d); the
    /// others' pairs go to `rest`. Returns whether the block has a feature (0: every feature
    /// with a pair joins; above 1: none does).
    pub fn split(
        &mut self,
        aux: &Matching,
        vals: &[f32],
        threshold: f64,
        w_dec: &[f32],
        d: usize,
    ) -> bool {
        let (b, f) = (aux.b, aux.f);
        self.product_s = 0.0;
        resize(&mut self.counts, f);
        self.counts.fill(0);
        for &j in &aux.cols {
            self.counts[j as usize] += 1;
        }
        if threshold.is_nan() {
            return false;
        }
        let min = (threshold * b as f64).ceil().max(1.0);
        resize(&mut self.pos, f);
        self.cols.clear();
        for (j, &c) in self.counts.iter().enumerate() {
            self.pos[j] = if c > 0 && c as f64 >= min {
                self.cols.push(j as u32);
                (self.cols.len() - 1) as u32
            } else {
                NONE
            };
        }
        if self.cols.is_empty() {
            return false;
        }
        let n = self.cols.len();
        resize(&mut self.a, b * n);
        let pos = &self.pos;
        self.a
            .par_chunks_mut(ROWS * n)
            .enumerate()
            .for_each(|(ci, block)| {
                for (r, row) in block.chunks_mut(n).enumerate() {
                    let i = ci * ROWS + r;
                    row.fill(0.0);
                    let (r0, r1) = (aux.row_ptr[i], aux.row_ptr[i + 1]);
                    for (&j, &v) in aux.cols[r0..r1].iter().zip(&vals[r0..r1]) {
                        if pos[j as usize] != NONE {
                            row[pos[j as usize] as usize] = v;
                        }
                    }
                }
            });
        resize(&mut self.w, n * d);
        let cols = &self.cols;
        self.w
            .par_chunks_mut(d.max(1))
            .zip(cols.par_iter())
            .for_each(|(w, &j)| w.copy_from_slice(&w_dec[j as usize * d..(j as usize + 1) * d]));
        // The rest, in parallel by rows: per-row counts, their prefix sums, then each row
        // range fills its own part.
        let keep = |i: usize| {
            let (r0, r1) = (aux.row_ptr[i], aux.row_ptr[i + 1]);
            aux.cols[r0..r1]
                .iter()
                .zip(&vals[r0..r1])
                .filter(|(&j, _)| pos[j as usize] == NONE)
        };
        let counts: Vec<usize> = (0..b).into_par_iter().map(|i| keep(i).count()).collect();
        self.rest.reset(b, f);
        for c in counts {
            let last = *self.rest.row_ptr.last().expect("reset leaves row 0");
            self.rest.row_ptr.push(last + c);
        }
        let total = self.rest.row_ptr[b];
        resize(&mut self.rest.cols, total);
        resize(&mut self.rest_vals, total);
        let row_ptr = &self.rest.row_ptr;
        let cols = split_rows(&mut self.rest.cols, row_ptr, b, ROWS);
        let vs = split_rows(&mut self.rest_vals, row_ptr, b, ROWS);
        cols.into_par_iter()
            .zip(vs)
            .enumerate()
            .for_each(|(ci, (cs, vs))| {
                let i0 = ci * ROWS;
                let mut at = 0;
                for i in i0..(i0 + ROWS).min(b) {
                    for (&j, &v) in keep(i) {
                        cs[at] = j;
                        vs[at] = v;
                        at += 1;
                    }
                }
            });
        true
    }

    /// The decode: `r` (B×d) = e − A_E·W_E − (the rest's Ê), `sse[i]` = ‖r_i‖² (f64, lane
    /// order), C_E = R·W_Eᵀ on the whole block (masked to the pairs and scaled by
    /// [`AuxDense::scale`]) and, per pair of the rest, `c_rest` = W_dec[j]·r_i (unscaled).
    #[allow(clippy::too_many_arguments)] // the inputs and the three outputs
    pub fn decode(
        &mut self,
        e: &[f32],
        w_dec: &[f32],
        d: usize,
        r: &mut [f32],
        sse: &mut [f64],
        c_rest: &mut [f32],
    ) {
        let b = sse.len();
        let n = self.cols.len();
        let has_rest = self.rest.nnz() > 0;
        // Ê of the block into r (no rest) or ep (then the rest's pairwise decode on e − Ê).
        let out: &mut [f32] = if has_rest {
            resize(&mut self.ep, b * d);
            &mut self.ep
        } else {
            r
        };
        self.product_s += product(out, Operand::n(&self.a, b, n), Operand::n(&self.w, n, d));
        out.par_chunks_mut(ROWS * d)
            .zip(e.par_chunks(ROWS * d))
            .zip(sse.par_chunks_mut(ROWS))
            .for_each(|((r, e), sse)| {
                for ((r, e), s) in r.chunks_mut(d).zip(e.chunks(d)).zip(sse.iter_mut()) {
                    r.iter_mut().zip(e).for_each(|(r, &e)| *r = e - *r);
                    // With a rest, its decode takes the norms of the final residual.
                    if !has_rest {
                        *s = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
                    }
                }
            });
        if has_rest {
            aux_decode(
                &self.rest,
                &self.rest_vals,
                w_dec,
                &self.ep,
                d,
                r,
                sse,
                c_rest,
            );
        }
        resize(&mut self.c, b * n);
        self.product_s += product(&mut self.c, Operand::n(r, b, d), Operand::t(&self.w, n, d));
    }

    /// C_E ← s·C_E on the pairs, 0 elsewhere (the ReLU passes the gradient where a_ij > 0).
    pub fn scale(&mut self, s: f32) {
        self.c
            .par_chunks_mut(4096)
            .zip(self.a.par_chunks(4096))
            .for_each(|(c, a)| {
                c.iter_mut()
                    .zip(a)
                    .for_each(|(c, &a)| *c = if a > 0.0 { *c * s } else { 0.0 });
            });
    }

    /// The block's gradients from X′ (B×d) and H (B×d, already scaled).
    pub fn gradients(&mut self, xc: &[f32], h: &[f32], d: usize) {
        let n = self.cols.len();
        let b = xc.len() / d.max(1);
        resize(&mut self.ge, n * d);
        resize(&mut self.gd, n * d);
        self.product_s += product(
            &mut self.ge,
            Operand::t(&self.c, b, n),
            Operand::n(xc, b, d),
        );
        self.product_s += product(&mut self.gd, Operand::t(&self.a, b, n), Operand::n(h, b, d));
        // Column sums of C_E, token order, by column blocks.
        resize(&mut self.gb, n);
        let c = &self.c;
        self.gb
            .par_chunks_mut(64)
            .enumerate()
            .for_each(|(blk, out)| {
                let (j0, w) = (blk * 64, out.len());
                out.fill(0.0);
                for row in c.chunks_exact(n.max(1)) {
                    out.iter_mut()
                        .zip(&row[j0..j0 + w])
                        .for_each(|(o, &v)| *o += v);
                }
            });
    }

    /// The block's gradients, for the per-feature sums.
    pub fn extra(&self) -> Extra<'_> {
        Extra {
            pos: &self.pos,
            ge: &self.ge,
            gd: &self.gd,
            gb: &self.gb,
        }
    }
}

/// C = A·B on `gemm` over every thread of the current pool; returns its seconds.
fn product(c: &mut [f32], a: Operand<'_, f32>, b: Operand<'_, f32>) -> f64 {
    let clock = std::time::Instant::now();
    gemm_into(c, a, b, false, rayon::current_num_threads(), 1.0);
    clock.elapsed().as_secs_f64()
}
