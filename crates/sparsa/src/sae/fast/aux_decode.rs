//! The auxiliary decode: per token ê_i = Σ_{j∈M_aux,i} a_ij·W_dec[j], r_i = e_i − ê_i,
//! ‖r_i‖², and per auxiliary pair W_dec[j]·r_i.
//!
//! With k_aux = d/2 a token has hundreds of auxiliary pairs (1.2–1.6 M per batch at d 768,
//! B 4096), and gathering a 3 KB decoder row per pair from the last-level cache is bound by its
//! bandwidth, while an accumulator row updated in memory per pair is bound by the stores. So
//! tokens go in blocks of [`BLOCK`] (whose distinct auxiliary features are few: a few hundred
//! to a few thousand), and ê is summed by column tiles of [`GATHER_TILE`]: for each tile, every
//! token of the block sums its rows' tile in registers ([`vector::gather_sum`]), the block's
//! rows' tile staying in L2 from one token to the next. A token's rows are added in the
//! matching's (ascending) order from zero, so ê_i, r_i and every W_dec[j]·r_i are bit-identical
//! to zero-fill + one axpy per pair.

use super::{split_rows, Matching};
use crate::kernels::vector::{self, GATHER_TILE};
use rayon::prelude::*;

/// Tokens per block.
const BLOCK: usize = 128;

/// For every token i: `h[i]` = e_i − ê_i and `sse[i]` = ‖e_i − ê_i‖² (summed in f64 in lane
/// order); for every auxiliary pair at position p (a_ij = `vals[p]`): `c[p]` =
/// W_dec[j]·(e_i − ê_i).
#[allow(clippy::too_many_arguments)] // the inputs and the three outputs
pub fn aux_decode(
    aux: &Matching,
    vals: &[f32],
    w_dec: &[f32],
    e: &[f32],
    d: usize,
    h: &mut [f32],
    sse: &mut [f64],
    c: &mut [f32],
) {
    let b = sse.len();
    // Each block's part of c (pairs of its tokens are contiguous in the matching).
    let parts = split_rows(c, &aux.row_ptr, b, BLOCK);
    h.par_chunks_mut(BLOCK * d)
        .zip(sse.par_chunks_mut(BLOCK))
        .zip(parts)
        .enumerate()
        .for_each(|(blk, ((h, sse), c))| {
            let i0 = blk * BLOCK;
            let p0 = aux.row_ptr[i0];
            let pairs = |i: usize| {
                let (r0, r1) = (aux.row_ptr[i], aux.row_ptr[i + 1]);
                (&aux.cols[r0..r1], &vals[r0..r1])
            };
            for c0 in (0..d).step_by(GATHER_TILE) {
                let c1 = (c0 + GATHER_TILE).min(d);
                for (il, h) in h.chunks_mut(d).enumerate() {
                    let (js, vs) = pairs(i0 + il);
                    vector::gather_sum(w_dec, d, c0, js, vs, &mut h[c0..c1]);
                }
            }
            for (il, (h, s)) in h.chunks_mut(d).zip(sse.iter_mut()).enumerate() {
                let e = &e[(i0 + il) * d..(i0 + il + 1) * d];
                let mut acc = 0f64;
                for (h, &e) in h.iter_mut().zip(e) {
                    let res = e - *h;
                    acc += (res as f64) * (res as f64);
                    *h = res;
                }
                *s = acc;
            }
            for (il, h) in h.chunks(d).enumerate() {
                let i = i0 + il;
                let (r0, r1) = (aux.row_ptr[i], aux.row_ptr[i + 1]);
                vector::gather_dots(w_dec, &aux.cols[r0..r1], h, &mut c[r0 - p0..r1 - p0]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The blocked, tiled decode equals the token-by-token one (zero-fill, one axpy per pair,
    /// the residual, one dot per pair) bit for bit: d below, at and past a tile with a tail,
    /// a batch that is not a whole number of blocks, tokens without pairs.
    #[test]
    fn blocked_aux_decode_equals_token_by_token_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (d, b, f) in [(45usize, 300usize, 40usize), (256, 130, 30), (300, 129, 25)] {
            let r = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let (a, w, e) = (r(&mut rng, b * f), r(&mut rng, f * d), r(&mut rng, b * d));
            let rows: Vec<Vec<u32>> = (0..b)
                .map(|i| {
                    let p = if i % 7 == 0 { 0 } else { 6 };
                    (0..f as u32)
                        .filter(|_| rng.random_range(0..f) < p)
                        .collect()
                })
                .collect();
            let mut aux = Matching::default();
            aux.from_rows(f, &rows);
            let (mut want_h, mut want_s, mut want_c) = (e.clone(), vec![0f64; b], Vec::new());
            for i in 0..b {
                let h = &mut want_h[i * d..(i + 1) * d];
                let mut eh = vec![0f32; d];
                for &j in aux.row(i) {
                    let j = j as usize;
                    vector::axpy(a[i * f + j], &w[j * d..(j + 1) * d], &mut eh);
                }
                for (h, x) in h.iter_mut().zip(&eh) {
                    let res = *h - x;
                    want_s[i] += (res as f64) * (res as f64);
                    *h = res;
                }
                for &j in aux.row(i) {
                    want_c.push(vector::dot(&w[j as usize * d..(j as usize + 1) * d], h));
                }
            }
            let (mut h, mut s, mut c) = (vec![0f32; b * d], vec![0f64; b], vec![0f32; aux.nnz()]);
            let vals: Vec<f32> = (0..b)
                .flat_map(|i| aux.row(i).iter().map(move |&j| (i, j)))
                .map(|(i, j)| a[i * f + j as usize])
                .collect();
            aux_decode(&aux, &vals, &w, &e, d, &mut h, &mut s, &mut c);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&h), bits(&want_h), "r = e − ê, d {d}");
            assert_eq!(s, want_s, "‖r‖², d {d}");
            assert_eq!(bits(&c), bits(&want_c), "W_dec[j]·r, d {d}");
        }
    }
}
