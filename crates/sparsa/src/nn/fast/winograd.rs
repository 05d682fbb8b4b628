//! Winograd F(2×2, 3×3) convolution for the wide 3×3 layers (stride 1, padding 1, by default
//! more than [`WINOGRAD_ABOVE`] output channels): VGG's 128–512-channel layers and the second
//! pairs of Conv-4/6, where im2col + GEMM spends 36 multiply-adds per 2×2 block of outputs and
//! input channel, and this spends 16.
//!
//! Each 2×2 block of outputs (a *tile*) reads a 4×4 patch d of the zero-padded input. With
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡1   0   0⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢½   ½   ½⎥    Aᵀ = ⎡1 1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢½  −½   ½⎥         ⎣0 1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣0   0   1⎦
//! ```
//!
//! the tile's output is `Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` for each output channel's 3×3 filters
//! g. So, per block of images:
//! 1. input transform: `V[ξ][t][ci] = (Bᵀ d_t B)[ξ]` for the 16 positions ξ, vectorised over
//!    channels (NHWC keeps a pixel's channels contiguous);
//! 2. 16 GEMMs `M[ξ] (tiles × cout) = V[ξ] (tiles × cin) · U[ξ]ᵀ`, with the weights transformed
//!    once per pass: `U[ξ][co][ci] = (G g_{co,ci} Gᵀ)[ξ]` ([`transform_weights`]);
//! 3. output transform `Aᵀ M A` into the NHWC output (outputs past an odd edge dropped), then the
//!    caller's epilogue on the block while it is in cache.
//!
//! The input gradient of such a layer is the same convolution of dy with the filters flipped and
//! the channel roles swapped (padding k − 1 − pad = 1), so it runs the same code
//! ([`transform_weights`] with `flip`). The weight gradient uses the same transforms backwards
//! ([`weight_grad`]): `dU[ξ] = Σ_t (A dy_t Aᵀ)[ξ]ᵀ · V[ξ][t]` over the tiles, then
//! `dW = Gᵀ dU G`.
//!
//! Exactness: the transforms multiply by 0, ±1 and ±½ only, so the result is the convolution's
//! sum in another order with a few more roundings per term (tested against the f64 im2col path
//! within f32 rounding). Sums are in a fixed order for a given shape and thread count.

use rayon::prelude::*;

pub use super::geom::WINOGRAD_ABOVE;
use super::geom::{group_ranges, split_by, sum_parts, ConvGeom, Real};
use crate::kernels::matmul::{gemm_into, Operand};

/// Whether `g` runs the Winograd kernels (its forward pass and input gradient).
pub fn applies(g: &ConvGeom) -> bool {
    g.direct && g.k == 3 && g.stride == 1 && g.pad == 1 && g.cout > g.winograd_above
}

/// Elements of a block's transformed inputs, about: tiles per block = this / (16·cin), but never
/// fewer than the output channels or 64 (each GEMM packs one cout × cin slice of U per call),
/// rounded up to whole images and capped by the group's images. A group's scratch holds the
/// block's inputs and outputs, 16·tiles·(cin + cout) elements: up to ≈ 6 M for VGG's 8×8
/// 256 → 512 layer (512 tiles). Capping it at 4·2¹⁸/(16·(cin + cout)) tiles saved 30 MB of
/// VGG-16's peak RSS and cost 15 % of its evaluation speed (measured), so it is not capped.
const BLOCK_ELEMS: usize = 1 << 18;

/// Tiles of 2×2 outputs per image and per row of images.
fn tiles(g: &ConvGeom) -> (usize, usize) {
    let tw = g.ow.div_ceil(2);
    (g.oh.div_ceil(2) * tw, tw)
}

/// Images per block of one group.
fn block_images(g: &ConvGeom) -> usize {
    let (per_image, _) = tiles(g);
    let want = (BLOCK_ELEMS / (16 * g.cin).max(1)).max(g.cout).max(64);
    want.div_ceil(per_image.max(1)).max(1)
}

/// U (16 × cout × cin, position-major, cin contiguous) from W (cout, 3, 3, cin):
/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for g = W[co][·][·][ci]. With `flip` the filters are rotated by
/// 180° (`g = W[co][2 − ky][2 − kx][ci]`): the input gradient's filters, read by [`forward`]
/// with `Filters::InMajor` (cout is then the gradient's input channel count). Parallel over
/// output channels; each output channel's 9·cin weights are read while in cache.
pub fn transform_weights<T: Real>(w: &[T], cout: usize, cin: usize, flip: bool, u: &mut Vec<T>) {
    assert_eq!(w.len(), cout * 9 * cin, "winograd: weight shape");
    u.resize(16 * cout * cin, T::zero());
    let half = T::from_f64(0.5);
    let mhalf = T::zero() - half;
    // G's rows: the three taps' coefficients of each of the four positions.
    let gm: [[T; 3]; 4] = [
        [T::one(), T::zero(), T::zero()],
        [half, half, half],
        [half, mhalf, half],
        [T::zero(), T::zero(), T::one()],
    ];
    let groups = rayon::current_num_threads().max(1).min(cout.max(1));
    let ranges = group_ranges(cout, groups);
    // Each group writes rows co ∈ its range of all 16 position planes.
    let mut per_group: Vec<Vec<&mut [T]>> = (0..groups).map(|_| Vec::with_capacity(16)).collect();
    for plane in u.chunks_exact_mut(cout * cin) {
        for (dst, part) in per_group.iter_mut().zip(split_by(plane, &ranges, cin)) {
            dst.push(part);
        }
    }
    per_group
        .into_par_iter()
        .zip(ranges.par_iter())
        .for_each(|(mut planes, r)| {
            let mut t = vec![T::zero(); 12 * cin];
            for co in r.clone() {
                let tap = |ky: usize, kx: usize| {
                    let (ky, kx) = if flip { (2 - ky, 2 - kx) } else { (ky, kx) };
                    let o = ((co * 3 + ky) * 3 + kx) * cin;
                    &w[o..o + cin]
                };
                // t[a][kx] = Σ_ky G[a][ky] g[ky][kx]
                for a in 0..4 {
                    for kx in 0..3 {
                        let dst = &mut t[(a * 3 + kx) * cin..(a * 3 + kx + 1) * cin];
                        let (g0, g1, g2) = (tap(0, kx), tap(1, kx), tap(2, kx));
                        let [c0, c1, c2] = gm[a];
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = c0 * g0[i] + c1 * g1[i] + c2 * g2[i];
                        }
                    }
                }
                let row = co - r.start;
                for a in 0..4 {
                    let ta = &t[a * 3 * cin..(a + 1) * 3 * cin];
                    let (t0, t1, t2) = (&ta[..cin], &ta[cin..2 * cin], &ta[2 * cin..]);
                    for (b, [c0, c1, c2]) in gm.iter().enumerate() {
                        let dst = &mut planes[a * 4 + b][row * cin..(row + 1) * cin];
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = *c0 * t0[i] + *c1 * t1[i] + *c2 * t2[i];
                        }
                    }
                }
            }
        });
}

/// How [`forward`] reads the transformed filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filters {
    /// `U[ξ][co][ci]` of the pass's own channels (the forward pass).
    OutMajor,
    /// `U[ξ][ci][co]`: the input gradient's, from [`transform_weights`] with `flip` on the
    /// forward layer's weights.
    InMajor,
}

/// Channels per step of the transforms (a 4×4 patch of them stays in registers or L1).
const CH: usize = 16;

/// The images `r` of one group in blocks of [`block_images`], the group's buffer cut into the
/// block's transformed inputs (16·tb·cin) and its transformed outputs or output gradients
/// (16·tb·cout), tb tiles apart per position: `f(first image, end, tiles used, v, other)`.
fn blocks<T: Real>(
    g: &ConvGeom,
    r: &std::ops::Range<usize>,
    buf: &mut Vec<T>,
    mut f: impl FnMut(usize, usize, usize, usize, &mut [T], &mut [T]),
) {
    let (per_image, _) = tiles(g);
    let bi = block_images(g);
    let tb = bi.min(r.len()) * per_image;
    buf.resize(16 * tb * (g.cin + g.cout), T::zero());
    let (v, other) = buf.split_at_mut(16 * tb * g.cin);
    let mut i0 = r.start;
    while i0 < r.end {
        let i1 = (i0 + bi).min(r.end);
        f(i0, i1, (i1 - i0) * per_image, tb, v, other);
        i0 = i1;
    }
}

/// y (NHWC, n × oh × ow × cout) = the convolution of x (NHWC) with the filters whose transform
/// is `u` ([`transform_weights`], read as `filters` says); `epi(state, row0, rows)` runs on each
/// block's output while it is in cache, one `states` entry per group of images (the caller makes
/// one per rayon thread), called once per block of whole images with the block's first global
/// row.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real, S: Send>(
    g: &ConvGeom,
    x: &[T],
    u: &[T],
    filters: Filters,
    y: &mut [T],
    scratch: &mut [Vec<T>],
    states: &mut [S],
    epi: &(dyn Fn(&mut S, usize, &mut [T]) + Sync),
) {
    assert!(
        g.k == 3 && g.stride == 1 && g.pad == 1,
        "winograd: 3×3, stride 1, pad 1"
    );
    let (cin, cout, ohw) = (g.cin, g.cout, g.ohw());
    assert!(x.len() >= g.in_len() && u.len() == 16 * cin * cout);
    assert!(scratch.len() >= states.len());
    let (per_image, _) = tiles(g);
    let ranges = group_ranges(g.n, states.len());
    let parts = split_by(&mut y[..g.out_len()], &ranges, ohw * cout);
    parts
        .into_par_iter()
        .zip(states.par_iter_mut())
        .zip(scratch.par_iter_mut())
        .zip(ranges.par_iter())
        .for_each(|(((part, st), buf), r)| {
            blocks(g, r, buf, |i0, i1, t, tb, v, m| {
                for i in i0..i1 {
                    input_transform(g, x, i, (i - i0) * per_image, tb, v);
                }
                for xi in 0..16 {
                    gemm_into(
                        &mut m[xi * tb * cout..(xi * tb + t) * cout],
                        Operand::n(&v[xi * tb * cin..(xi * tb + t) * cin], t, cin),
                        match filters {
                            Filters::OutMajor => {
                                Operand::t(&u[xi * cout * cin..][..cout * cin], cout, cin)
                            }
                            Filters::InMajor => {
                                Operand::n(&u[xi * cout * cin..][..cout * cin], cin, cout)
                            }
                        },
                        false,
                        1,
                        T::one(),
                    );
                }
                let out = &mut part[(i0 - r.start) * ohw * cout..(i1 - r.start) * ohw * cout];
                for i in i0..i1 {
                    let yi = &mut out[(i - i0) * ohw * cout..(i - i0 + 1) * ohw * cout];
                    output_transform(g, m, (i - i0) * per_image, tb, yi);
                }
                epi(st, i0 * ohw, out);
            });
        });
}

/// dW (cout, 3, 3, cin) of the convolution of x with output gradient dy (NHWC), by the same
/// transforms: `dU[ξ] (cout × cin) = Σ_t D[ξ][t]ᵀ · V[ξ][t]` with V the input transform and
/// `D_t = A dy_t Aᵀ` (the 2×2 output gradient of tile t spread onto the 16 positions; outputs
/// past an odd edge do not exist and count 0), then `dW[co][·][·][ci] = Gᵀ dU[co][ci] G`.
/// Each group of images sums into its own `parts` entry (16·cout·cin); the partials are added
/// in group order into `du`, so the result depends only on the thread count.
pub fn weight_grad<T: Real>(
    g: &ConvGeom,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    du: &mut Vec<T>,
    scratch: &mut [Vec<T>],
    parts: &mut [Vec<T>],
) {
    assert!(
        g.k == 3 && g.stride == 1 && g.pad == 1,
        "winograd: 3×3, stride 1, pad 1"
    );
    let (cin, cout, ohw) = (g.cin, g.cout, g.ohw());
    assert!(x.len() >= g.in_len() && dy.len() >= g.out_len() && dw.len() == cout * 9 * cin);
    assert!(scratch.len() >= parts.len() && !parts.is_empty());
    let (per_image, _) = tiles(g);
    let plen = 16 * cout * cin;
    let ranges = group_ranges(g.n, parts.len());
    parts
        .par_iter_mut()
        .zip(scratch.par_iter_mut())
        .zip(ranges.par_iter())
        .for_each(|((du, buf), r)| {
            du.clear();
            du.resize(plen, T::zero());
            blocks(g, r, buf, |i0, i1, t, tb, v, dm| {
                for i in i0..i1 {
                    let t0 = (i - i0) * per_image;
                    input_transform(g, x, i, t0, tb, v);
                    grad_transform(g, &dy[i * ohw * cout..(i + 1) * ohw * cout], t0, tb, dm);
                }
                for xi in 0..16 {
                    gemm_into(
                        &mut du[xi * cout * cin..(xi + 1) * cout * cin],
                        Operand::t(&dm[xi * tb * cout..(xi * tb + t) * cout], t, cout),
                        Operand::n(&v[xi * tb * cin..(xi * tb + t) * cin], t, cin),
                        true,
                        1,
                        T::one(),
                    );
                }
            });
        });
    // Partials in group order, then dW = Gᵀ dU G per (co, ci), parallel over output channels.
    du.resize(plen, T::zero());
    sum_parts(du, parts, &vec![true; parts.len()]);
    let du = &du[..];
    let half = T::from_f64(0.5);
    // Gᵀ applied to four values along one axis: the three taps' sums.
    let gt = |x: [T; 4]| {
        [
            x[0] + half * (x[1] + x[2]),
            half * (x[1] - x[2]),
            half * (x[1] + x[2]) + x[3],
        ]
    };
    dw.par_chunks_mut(9 * cin)
        .enumerate()
        .for_each(|(co, dwc)| {
            let at = |a: usize, b: usize, ci: usize| du[((a * 4 + b) * cout + co) * cin + ci];
            for ci in 0..cin {
                // Rows (the four positions a of each column b), then columns.
                let cols: [[T; 3]; 4] =
                    std::array::from_fn(|b| gt(std::array::from_fn(|a| at(a, b, ci))));
                for ky in 0..3 {
                    let taps = gt(std::array::from_fn(|b| cols[b][ky]));
                    for (kx, v) in taps.into_iter().enumerate() {
                        dwc[(ky * 3 + kx) * cin + ci] = v;
                    }
                }
            }
        });
}

/// D[ξ][t0 + t][·] = (A dy_t Aᵀ)[ξ] for the tiles t of one image's output gradient `dy`
/// (oh × ow × cout; positions `tb` tiles apart).
fn grad_transform<T: Real>(g: &ConvGeom, dy: &[T], t0: usize, tb: usize, d: &mut [T]) {
    let (oh, ow, cout) = (g.oh, g.ow, g.cout);
    let zero = [T::zero(); CH];
    each_tile_chunk(g, cout, |ty, tx, tile, c0, len| {
        let t = t0 + tile;
        let mut q = [[T::zero(); CH]; 4];
        for (ij, qv) in q.iter_mut().enumerate() {
            let (oy, ox) = (2 * ty + ij / 2, 2 * tx + ij % 2);
            let src = if oy < oh && ox < ow {
                let s = (oy * ow + ox) * cout + c0;
                &dy[s..s + len]
            } else {
                &zero[..len]
            };
            copy_n(qv, src, len);
        }
        // Rows (A: r0 = q0, r1 = q0 + q1, r2 = q0 − q1, r3 = −q1), per column j.
        let mut rr = [[[T::zero(); CH]; 2]; 4];
        for j in 0..2 {
            for l in 0..CH {
                let (a, b) = (q[j][l], q[2 + j][l]);
                rr[0][j][l] = a;
                rr[1][j][l] = a + b;
                rr[2][j][l] = a - b;
                rr[3][j][l] = T::zero() - b;
            }
        }
        for (a, row) in rr.iter().enumerate() {
            let cols: [[T; CH]; 4] = [
                row[0],
                std::array::from_fn(|l| row[0][l] + row[1][l]),
                std::array::from_fn(|l| row[0][l] - row[1][l]),
                std::array::from_fn(|l| T::zero() - row[1][l]),
            ];
            for (b, col) in cols.iter().enumerate() {
                let at = ((a * 4 + b) * tb + t) * cout + c0;
                copy_n(&mut d[at..], col, len);
            }
        }
    });
}

/// Every 2×2 output tile of one image and chunk of [`CH`] of its `c` channels:
/// `f(ty, tx, tile index in the image, first channel, channels)`.
fn each_tile_chunk(g: &ConvGeom, c: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let (_, tw) = tiles(g);
    for ty in 0..g.oh.div_ceil(2) {
        for tx in 0..tw {
            let mut c0 = 0;
            while c0 < c {
                let len = CH.min(c - c0);
                f(ty, tx, ty * tw + tx, c0, len);
                c0 += len;
            }
        }
    }
}

/// V[ξ][t0 + t][·] for the tiles t of image i (V's positions `tb` tiles apart).
fn input_transform<T: Real>(g: &ConvGeom, x: &[T], i: usize, t0: usize, tb: usize, v: &mut [T]) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    let img = &x[i * h * w * cin..(i + 1) * h * w * cin];
    let zero = [T::zero(); CH];
    each_tile_chunk(g, cin, |ty, tx, tile, c0, len| {
        let t = t0 + tile;
        // The 4×4 patch of this channel chunk (zero outside the image).
        let mut d = [[T::zero(); CH]; 16];
        for r in 0..4 {
            let iy = (2 * ty + r) as isize - 1;
            for c in 0..4 {
                let ix = (2 * tx + c) as isize - 1;
                let src = if iy < 0 || iy as usize >= h || ix < 0 || ix as usize >= w {
                    &zero[..len]
                } else {
                    let s = (iy as usize * w + ix as usize) * cin + c0;
                    &img[s..s + len]
                };
                copy_n(&mut d[r * 4 + c], src, len);
            }
        }
        // Bᵀ d: rows.
        let mut e = [[T::zero(); CH]; 16];
        for c in 0..4 {
            for l in 0..CH {
                let (d0, d1, d2, d3) = (d[c][l], d[4 + c][l], d[8 + c][l], d[12 + c][l]);
                e[c][l] = d0 - d2;
                e[4 + c][l] = d1 + d2;
                e[8 + c][l] = d2 - d1;
                e[12 + c][l] = d1 - d3;
            }
        }
        // (Bᵀ d) B: columns, written to the 16 positions.
        for r in 0..4 {
            let row = &e[r * 4..r * 4 + 4];
            let cols: [[T; CH]; 4] = [
                std::array::from_fn(|l| row[0][l] - row[2][l]),
                std::array::from_fn(|l| row[1][l] + row[2][l]),
                std::array::from_fn(|l| row[2][l] - row[1][l]),
                std::array::from_fn(|l| row[1][l] - row[3][l]),
            ];
            for (c, col) in cols.iter().enumerate() {
                let at = ((r * 4 + c) * tb + t) * cin + c0;
                copy_n(&mut v[at..], col, len);
            }
        }
    });
}

/// dst[..len] = src[..len], with a constant length for whole chunks (a call to `memcpy` per
/// 16 channels otherwise costs more than the copy).
#[inline(always)]
fn copy_n<T: Copy>(dst: &mut [T], src: &[T], len: usize) {
    if len == CH {
        dst[..CH].copy_from_slice(&src[..CH]);
    } else {
        dst[..len].copy_from_slice(&src[..len]);
    }
}

/// The NHWC output of one image (oh × ow × cout) from M[ξ][t0 + t][·] (positions `tb` tiles
/// apart).
fn output_transform<T: Real>(g: &ConvGeom, m: &[T], t0: usize, tb: usize, y: &mut [T]) {
    let (oh, ow, cout) = (g.oh, g.ow, g.cout);
    each_tile_chunk(g, cout, |ty, tx, tile, c0, len| {
        let t = t0 + tile;
        let at = |xi: usize| &m[(xi * tb + t) * cout + c0..(xi * tb + t) * cout + c0 + len];
        // Aᵀ M: s0 = m0 + m1 + m2, s1 = m1 − m2 − m3 along the rows, per column b.
        let mut s = [[T::zero(); CH]; 8];
        for b in 0..4 {
            let (m0, m1, m2, m3) = (at(b), at(4 + b), at(8 + b), at(12 + b));
            for l in 0..len {
                s[b][l] = m0[l] + m1[l] + m2[l];
                s[4 + b][l] = m1[l] - m2[l] - m3[l];
            }
        }
        for i in 0..2 {
            let oy = 2 * ty + i;
            if oy >= oh {
                continue;
            }
            let r = &s[i * 4..i * 4 + 4];
            for j in 0..2 {
                let ox = 2 * tx + j;
                if ox >= ow {
                    continue;
                }
                let o = (oy * ow + ox) * cout + c0;
                let dst = &mut y[o..o + len];
                for (l, d) in dst.iter_mut().enumerate() {
                    *d = if j == 0 {
                        r[0][l] + r[1][l] + r[2][l]
                    } else {
                        r[1][l] - r[2][l] - r[3][l]
                    };
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct definition in f64: y[n][oy][ox][co] = Σ w[co][ky][kx][ci] x[n][oy+ky−1][ox+kx−1][ci].
    fn naive(g: &ConvGeom, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; g.out_len()];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for co in 0..g.cout {
                        let mut s = 0.0;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < 1 || ix < 1 || iy > g.h || ix > g.w {
                                    continue;
                                }
                                for ci in 0..g.cin {
                                    s += w[((co * 3 + ky) * 3 + kx) * g.cin + ci]
                                        * x[((n * g.h + iy - 1) * g.w + ix - 1) * g.cin + ci];
                                }
                            }
                        }
                        y[((n * g.oh + oy) * g.ow + ox) * g.cout + co] = s;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        // A fixed, sign-mixed sequence (no RNG dependency needed for a unit test).
        (0..len)
            .map(|i| {
                let v = (i as u64 * 2654435761 + seed * 97) % 1000;
                v as f64 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_in_f64_on_odd_and_tiny_maps() {
        // (n, h, w, cin, cout): odd edges, a 1×1 and a 2×2 map, channels off the 16-lane chunks,
        // blocks of several images per group.
        for &(n, h, w, cin, cout) in &[
            (3, 5, 7, 3, 65),
            (2, 1, 1, 17, 66),
            (2, 2, 2, 5, 70),
            (70, 4, 3, 2, 65),
        ] {
            let g = ConvGeom::new(n, h, w, cin, cout, 3, 1, 1).unwrap();
            let x = values(g.in_len(), 1);
            let wt = values(cout * 9 * cin, 2);
            let mut u = Vec::new();
            transform_weights(&wt, cout, cin, false, &mut u);
            for groups in [1, 2, 3] {
                let mut y = vec![f64::NAN; g.out_len()];
                let mut scratch = vec![Vec::new(); groups];
                let mut rows = vec![0usize; groups];
                forward(
                    &g,
                    &x,
                    &u,
                    Filters::OutMajor,
                    &mut y,
                    &mut scratch,
                    &mut rows,
                    &|s, _, o| *s += o.len(),
                );
                assert_eq!(rows.iter().sum::<usize>(), g.out_len());
                let want = naive(&g, &x, &wt);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{n}×{h}×{w}×{cin}→{cout}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_definition_in_f64() {
        // dW[co][ky][kx][ci] = Σ_{n,oy,ox} dy[n][oy][ox][co] · x[n][oy+ky−1][ox+kx−1][ci].
        for &(n, h, w, cin, cout) in &[(3, 5, 7, 3, 65), (2, 1, 1, 17, 66), (70, 4, 3, 2, 65)] {
            let g = ConvGeom::new(n, h, w, cin, cout, 3, 1, 1).unwrap();
            let x = values(g.in_len(), 6);
            let dy = values(g.out_len(), 7);
            let mut want = vec![0.0; cout * 9 * cin];
            for i in 0..n {
                for oy in 0..h {
                    for ox in 0..w {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > w {
                                    continue;
                                }
                                for co in 0..cout {
                                    let d = dy[((i * h + oy) * w + ox) * cout + co];
                                    for ci in 0..cin {
                                        want[((co * 3 + ky) * 3 + kx) * cin + ci] +=
                                            d * x[((i * h + iy - 1) * w + ix - 1) * cin + ci];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for groups in [1, 2, 3] {
                let mut dw = vec![f64::NAN; want.len()];
                let mut scratch = vec![Vec::new(); groups];
                let mut parts = vec![vec![f64::NAN; 5]; groups];
                let mut du = vec![f64::NAN; 3];
                weight_grad(&g, &x, &dy, &mut dw, &mut du, &mut scratch, &mut parts);
                for (a, b) in dw.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-9, "{n}×{h}×{w}×{cin}→{cout}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn flipped_transform_is_the_input_gradient() {
        // dx = conv(dy, rot180(W) with cin and cout swapped): check against the adjoint
        // identity ⟨conv(x), dy⟩ = ⟨x, dx⟩.
        let (n, h, w, cin, cout) = (2, 5, 4, 66, 3);
        let g = ConvGeom::new(n, h, w, cin, cout, 3, 1, 1).unwrap();
        let gt = ConvGeom::new(n, h, w, cout, cin, 3, 1, 1).unwrap();
        let x = values(g.in_len(), 3);
        let dy = values(g.out_len(), 4);
        let wt = values(cout * 9 * cin, 5);
        let mut u = Vec::new();
        transform_weights(&wt, cout, cin, true, &mut u);
        let mut dx = vec![0.0; g.in_len()];
        forward(
            &gt,
            &dy,
            &u,
            Filters::InMajor,
            &mut dx,
            &mut [Vec::new()],
            &mut [()],
            &|_, _, _| {},
        );
        let lhs: f64 = naive(&g, &x, &wt).iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
