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
//! order of the additions (the products' blocking). Which path runs is decided per step by the
//! pairs' density in the block ([`AuxDense::worth_it`]).

use super::csc::NONE;
use super::{resize, Matching};
use crate::kernels::matmul::{gemm_into, Operand};
use rayon::prelude::*;

/// The pairs' density in the B × n block (n: features with an auxiliary pair) from which the
/// dense products run. Project choice, measured (`sparsa bench sae --aux-dense-above`): at
/// 768 × 24576, B 4096, on two threads, see docs/sae.md section 5.
pub const AUX_DENSE_ABOVE: f64 = 0.3;

/// Rows per parallel task of the row passes.
const ROWS: usize = 64;

/// The dense auxiliary block of one step and its gradients.
#[derive(Debug, Default)]
pub struct AuxDense {
    /// Features with at least one auxiliary pair, ascending.
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
}

impl AuxDense {
    /// Whether the dense products pay for `aux` (B tokens, F features) at `threshold` (the
    /// pairs' density in their block; 0 always, above 1 never).
    pub fn worth_it(aux: &Matching, counts: &mut Vec<u32>, threshold: f64) -> bool {
        let n = feature_count(aux, counts);
        n > 0 && aux.nnz() as f64 >= threshold * (aux.b * n) as f64
    }

    /// Gather the block: the features of `aux`, A_E from the pairs' a_ij (`vals`, aligned with
    /// `aux.cols`) and W_E from `w_dec` (F×d).
    pub fn gather(&mut self, aux: &Matching, vals: &[f32], w_dec: &[f32], d: usize) {
        let (b, f) = (aux.b, aux.f);
        resize(&mut self.pos, f);
        self.pos.fill(NONE);
        for &j in &aux.cols {
            self.pos[j as usize] = 0;
        }
        self.cols.clear();
        for j in 0..f {
            if self.pos[j] != NONE {
                self.pos[j] = self.cols.len() as u32;
                self.cols.push(j as u32);
            }
        }
        let n = self.cols.len();
        resize(&mut self.a, b * n);
        let pos = &self.pos;
        self.a
            .par_chunks_mut(ROWS * n.max(1))
            .enumerate()
            .for_each(|(ci, block)| {
                for (r, row) in block.chunks_mut(n.max(1)).enumerate() {
                    let i = ci * ROWS + r;
                    row.fill(0.0);
                    let (r0, r1) = (aux.row_ptr[i], aux.row_ptr[i + 1]);
                    for (&j, &v) in aux.cols[r0..r1].iter().zip(&vals[r0..r1]) {
                        row[pos[j as usize] as usize] = v;
                    }
                }
            });
        resize(&mut self.w, n * d);
        let cols = &self.cols;
        self.w
            .par_chunks_mut(d.max(1))
            .zip(cols.par_iter())
            .for_each(|(w, &j)| w.copy_from_slice(&w_dec[j as usize * d..(j as usize + 1) * d]));
    }

    /// The decode: `r` (B×d) = e − A_E·W_E, `sse[i]` = ‖r_i‖² (f64, lane order), and C_E =
    /// (R·W_Eᵀ) masked to the pairs (unscaled).
    pub fn decode(&mut self, e: &[f32], d: usize, r: &mut [f32], sse: &mut [f64]) {
        let b = sse.len();
        let n = self.cols.len();
        let threads = rayon::current_num_threads();
        gemm_into(
            r,
            Operand::n(&self.a, b, n),
            Operand::n(&self.w, n, d),
            false,
            threads,
            1.0,
        );
        r.par_chunks_mut(ROWS * d)
            .zip(e.par_chunks(ROWS * d))
            .zip(sse.par_chunks_mut(ROWS))
            .for_each(|((r, e), sse)| {
                for ((r, e), s) in r.chunks_mut(d).zip(e.chunks(d)).zip(sse.iter_mut()) {
                    let mut acc = 0f64;
                    for (r, &e) in r.iter_mut().zip(e) {
                        *r = e - *r;
                        acc += (*r as f64) * (*r as f64);
                    }
                    *s = acc;
                }
            });
        resize(&mut self.c, b * n);
        gemm_into(
            &mut self.c,
            Operand::n(r, b, d),
            Operand::t(&self.w, n, d),
            false,
            threads,
            1.0,
        );
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
        let threads = rayon::current_num_threads();
        resize(&mut self.ge, n * d);
        resize(&mut self.gd, n * d);
        gemm_into(
            &mut self.ge,
            Operand::t(&self.c, b, n),
            Operand::n(xc, b, d),
            false,
            threads,
            1.0,
        );
        gemm_into(
            &mut self.gd,
            Operand::t(&self.a, b, n),
            Operand::n(h, b, d),
            false,
            threads,
            1.0,
        );
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

    /// The block's gradients of feature j, if it is in the block: (∂W_enc, ∂W_dec, ∂b_enc).
    pub fn feature(&self, j: usize, d: usize) -> Option<(&[f32], &[f32], f32)> {
        match self.pos.get(j) {
            Some(&p) if p != NONE => {
                let p = p as usize;
                Some((
                    &self.ge[p * d..(p + 1) * d],
                    &self.gd[p * d..(p + 1) * d],
                    self.gb[p],
                ))
            }
            _ => None,
        }
    }
}

/// Features with at least one pair in `m` (`counts`: scratch of length F).
fn feature_count(m: &Matching, counts: &mut Vec<u32>) -> usize {
    resize(counts, m.f);
    counts.fill(0);
    let mut n = 0;
    for &j in &m.cols {
        let c = &mut counts[j as usize];
        n += usize::from(*c == 0);
        *c = 1;
    }
    n
}
