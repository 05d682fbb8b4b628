//! The per-layer kernels of the fused engine, over channels-last (NHWC) slices: convolution as
//! tiled im2col + GEMM, batch-norm statistics and application fused with ReLU and dead-unit
//! counting, pooling, residual add, and softmax cross-entropy. Each takes the slices it reads and
//! writes; nothing allocates except the per-group scratch the caller owns and reuses.
//!
//! Parallelism: work is cut into `groups` contiguous ranges of images (or rows) that depend only
//! on the thread count; each group reduces into its own partial, and partials are combined in
//! group order, so results are bit-reproducible for a fixed thread count.

use rayon::prelude::*;

use super::direct;
use super::geom::MIN_TILE_ROWS;
pub use super::geom::{group_ranges, split_by, sum_parts, ConvGeom, Real};
use super::winograd;
use crate::kernels::matmul::{gemm_into, Operand};

/// What a group of rows accumulates during a fused pass: per-channel sums (batch-norm
/// statistics or gradient sums) and dead-unit counts.
#[derive(Debug, Clone, Default)]
pub struct GroupAcc {
    /// Two per-channel sums, `[s1 (c) | s2 (c)]`.
    pub sums: Vec<f64>,
    /// Exactly-zero ReLU outputs seen.
    pub dead: u64,
    /// Per unit of one sample (position × channel, channels last): samples on which it was 0.
    pub per_unit: Vec<u64>,
}

impl GroupAcc {
    /// Clear for a pass over `c` channels, with per-unit counts over `units` when `per_unit`.
    pub fn reset(&mut self, c: usize, units: Option<usize>) {
        self.sums.clear();
        self.sums.resize(2 * c, 0.0);
        self.dead = 0;
        self.per_unit.clear();
        if let Some(u) = units {
            self.per_unit.resize(u, 0);
        }
    }
}

/// Combine the groups' partial sums in group order.
pub fn merge_sums(accs: &[GroupAcc], c: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut s1, mut s2) = (vec![0f64; c], vec![0f64; c]);
    for a in accs {
        if a.sums.len() == 2 * c {
            for j in 0..c {
                s1[j] += a.sums[j];
                s2[j] += a.sums[c + j];
            }
        }
    }
    (s1, s2)
}

/// `v > 0` (false for NaN): the ReLU passes exactly the positive values, and its derivative is
/// 0 at 0 (PyTorch's convention).
#[inline(always)]
fn positive<T: Real>(v: T) -> bool {
    v > T::zero()
}

/// ReLU over `rows` (`cols` wide, starting at global row `row0`) in place, counting zeros into
/// `acc`: `per_unit` (when sized) is indexed by `(row mod rows_per_sample) · cols + j`.
#[inline]
pub fn relu_count<T: Real>(
    acc: &mut GroupAcc,
    rows: &mut [T],
    cols: usize,
    row0: usize,
    rows_per_sample: usize,
) {
    if acc.per_unit.is_empty() {
        acc.dead += relu_count_flat(rows);
        return;
    }
    let zero = T::zero();
    let mut dead = 0u64;
    for (i, row) in rows.chunks_exact_mut(cols).enumerate() {
        let base = ((row0 + i) % rows_per_sample) * cols;
        let pu = &mut acc.per_unit[base..base + cols];
        for (v, u) in row.iter_mut().zip(pu) {
            let p = positive(*v);
            *v = if p { *v } else { zero };
            *u += u64::from(!p);
            dead += u64::from(!p);
        }
    }
    acc.dead += dead;
}

/// ReLU in place over a flat slice; returns the number of zero outputs. Lanes of 16 with u32
/// counters so the loop vectorises (a compare, a blend and an add per vector).
#[inline]
fn relu_count_flat<T: Real>(v: &mut [T]) -> u64 {
    const L: usize = 16;
    let zero = T::zero();
    let mut total = 0u64;
    // u32 lane counters, flushed before they could overflow.
    for block in v.chunks_mut(L << 20) {
        let mut lanes = [0u32; L];
        let mut chunks = block.chunks_exact_mut(L);
        for ch in &mut chunks {
            for l in 0..L {
                let x = ch[l];
                let p = positive(x);
                ch[l] = if p { x } else { zero };
                lanes[l] += u32::from(!p);
            }
        }
        for x in chunks.into_remainder() {
            let p = positive(*x);
            *x = if p { *x } else { zero };
            total += u64::from(!p);
        }
        total += lanes.iter().map(|&c| u64::from(c)).sum::<u64>();
    }
    total
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for the short runs im2col copies (a few
/// dozen elements): whole vectors of 16, then the rest.
#[inline(always)]
fn copy_small<T: Real>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let v: [T; 16] = s.try_into().expect("chunk of 16");
        d.copy_from_slice(&v);
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}

/// The dense kernels a convolution runs ([`ConvGeom::dense_kernel`]), in the order they are
/// tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseKernel {
    /// [`winograd`]: 3×3, stride 1, padding 1, more than `winograd_above` output channels.
    Winograd,
    /// [`super::direct`]: stride 1, at most 64 channels, f32 on AVX-512F.
    Direct,
    /// A 1×1 stride-1 unpadded convolution: one GEMM.
    Pointwise,
    /// Tiled im2col + GEMM.
    Im2col,
}

impl DenseKernel {
    pub fn name(self) -> &'static str {
        match self {
            DenseKernel::Winograd => "winograd",
            DenseKernel::Direct => "direct",
            DenseKernel::Pointwise => "pointwise",
            DenseKernel::Im2col => "im2col",
        }
    }
}

impl ConvGeom {
    /// The dense kernels this convolution runs in element type T (its forward pass; the
    /// backward pass of a direct layer falls back to im2col when its input gradient cannot run
    /// them).
    pub fn dense_kernel<T: Real>(&self) -> DenseKernel {
        if winograd::applies(self) {
            DenseKernel::Winograd
        } else if direct::forward_applies::<T>(self) {
            DenseKernel::Direct
        } else if self.pointwise() {
            DenseKernel::Pointwise
        } else {
            DenseKernel::Im2col
        }
    }

    /// col[(r − r0)][(ky·k + kx)·cin + ci] = x[n][oy·s + ky − p][ox·s + kx − p][ci] (0 outside),
    /// for global output rows r = (n·OH + oy)·OW + ox in [r0, r1).
    pub fn im2col<T: Real>(&self, x: &[T], r0: usize, r1: usize, col: &mut [T]) {
        let (ckk, cin, k) = (self.ckk(), self.cin, self.k);
        let ohw = self.ohw();
        let kc = k * cin;
        for r in r0..r1 {
            let (n, p) = (r / ohw, r % ohw);
            let (oy, ox) = (p / self.ow, p % self.ow);
            let img = &x[n * self.h * self.w * cin..(n + 1) * self.h * self.w * cin];
            let row = &mut col[(r - r0) * ckk..(r - r0 + 1) * ckk];
            let ix0 = (ox * self.stride) as isize - self.pad as isize;
            // Window columns inside the image: kx in [kx0, kx1).
            let kx0 = (-ix0).clamp(0, k as isize) as usize;
            let kx1 = (self.w as isize - ix0).clamp(kx0 as isize, k as isize) as usize;
            for ky in 0..k {
                let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                let dst = &mut row[ky * kc..(ky + 1) * kc];
                if iy < 0 || iy as usize >= self.h || kx0 == kx1 {
                    dst.fill(T::zero());
                    continue;
                }
                dst[..kx0 * cin].fill(T::zero());
                dst[kx1 * cin..].fill(T::zero());
                // The inside part of a window row is contiguous in NHWC: one copy.
                let s = (iy as usize * self.w + (ix0 + kx0 as isize) as usize) * cin;
                copy_small(
                    &mut dst[kx0 * cin..kx1 * cin],
                    &img[s..s + (kx1 - kx0) * cin],
                );
            }
        }
    }

    /// The adjoint of [`ConvGeom::im2col`]: add each column entry back to its input pixel. `dx`
    /// holds the images from `n0` on.
    pub fn col2im_add<T: Real>(&self, col: &[T], r0: usize, r1: usize, dx: &mut [T], n0: usize) {
        let (ckk, cin, k) = (self.ckk(), self.cin, self.k);
        let ohw = self.ohw();
        let img_len = self.h * self.w * cin;
        for r in r0..r1 {
            let (n, p) = (r / ohw, r % ohw);
            let (oy, ox) = (p / self.ow, p % self.ow);
            let img = &mut dx[(n - n0) * img_len..(n - n0 + 1) * img_len];
            let row = &col[(r - r0) * ckk..(r - r0 + 1) * ckk];
            for ky in 0..k {
                let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                if iy < 0 || iy as usize >= self.h {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                    if ix < 0 || ix as usize >= self.w {
                        continue;
                    }
                    let s = (iy as usize * self.w + ix as usize) * cin;
                    let src = &row[(ky * k + kx) * cin..(ky * k + kx + 1) * cin];
                    for (d, &v) in img[s..s + cin].iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }

    /// y (rows × cout) = im2col(x) · Wᵀ, tile by tile; `epi(acc, row0, tile)` runs on each output
    /// tile while it is in cache (bias, ReLU, statistics, counting). One group per entry of
    /// `scratch`/`accs`.
    /// A 3×3 stride-1 padding-1 layer with more than `winograd_above` output channels runs
    /// Winograd instead ([`winograd`]; `pack` holds the transformed filters), calling `epi` once
    /// per block of whole images; a stride-1 layer with few channels runs the direct kernels
    /// ([`super::direct`]; `pack` holds their packed weights), calling `epi` once per image.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        y: &mut [T],
        pack: &mut Vec<T>,
        scratch: &mut [Vec<T>],
        accs: &mut [GroupAcc],
        epi: &(dyn Fn(&mut GroupAcc, usize, &mut [T]) + Sync),
    ) {
        let kernel = self.dense_kernel::<T>();
        match kernel {
            DenseKernel::Winograd => {
                winograd::transform_weights(w, self.cout, self.cin, false, pack);
                let f = winograd::Filters::OutMajor;
                return winograd::forward(self, x, pack, f, y, scratch, accs, epi);
            }
            DenseKernel::Direct => return self.forward_direct(x, w, y, pack, scratch, accs, epi),
            DenseKernel::Pointwise | DenseKernel::Im2col => {}
        }
        let (ckk, cout) = (self.ckk(), self.cout);
        let y = &mut y[..self.out_len()];
        if kernel == DenseKernel::Pointwise {
            let threads = rayon::current_num_threads();
            gemm_into(
                y,
                Operand::n(&x[..self.rows() * ckk], self.rows(), ckk),
                Operand::t(w, cout, ckk),
                false,
                threads,
                T::one(),
            );
            let ranges = group_ranges(self.rows(), accs.len());
            let parts = split_by(y, &ranges, cout);
            parts
                .into_par_iter()
                .zip(accs.par_iter_mut())
                .zip(ranges.par_iter())
                .for_each(|((part, acc), r)| {
                    for (t, tile) in part.chunks_mut(MIN_TILE_ROWS * 16 * cout).enumerate() {
                        epi(acc, r.start + t * MIN_TILE_ROWS * 16, tile);
                    }
                });
            return;
        }
        let ohw = self.ohw();
        let ranges = group_ranges(self.n, accs.len());
        let parts = split_by(y, &ranges, ohw * cout);
        let tr = self.tile_rows();
        parts
            .into_par_iter()
            .zip(accs.par_iter_mut())
            .zip(scratch.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|(((part, acc), col), r)| {
                let (g0, g1) = (r.start * ohw, r.end * ohw);
                col.resize(self.scratch_len(), T::zero());
                let mut r0 = g0;
                while r0 < g1 {
                    let r1 = (r0 + tr).min(g1);
                    let m = r1 - r0;
                    self.im2col(x, r0, r1, col);
                    let tile = &mut part[(r0 - g0) * cout..(r1 - g0) * cout];
                    gemm_into(
                        tile,
                        Operand::n(&col[..m * ckk], m, ckk),
                        Operand::t(w, cout, ckk),
                        false,
                        1,
                        T::one(),
                    );
                    epi(acc, r0, tile);
                    r0 = r1;
                }
            });
    }

    /// Gradients from dy (rows × cout): dW (cout × ckk) = dyᵀ · im2col(x), and when `dx` is
    /// given, dx = col2im(dy · W). `dw_parts` holds one partial dW per group (summed in order).
    /// Runs Winograd (dW and dx) when the forward pass does, else the direct kernels when the
    /// forward pass does and, if `dx` is wanted, its input gradient can too.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        dy: &[T],
        dw: &mut [T],
        dx: Option<&mut [T]>,
        pack: &mut Vec<T>,
        scratch: &mut [Vec<T>],
        dw_parts: &mut [Vec<T>],
    ) {
        let kernel = self.dense_kernel::<T>();
        if kernel == DenseKernel::Winograd {
            // dW by Winograd; dx = dy convolved with the flipped filters, by Winograd too.
            winograd::weight_grad(self, x, dy, dw, pack, scratch, dw_parts);
            let Some(dx) = dx else { return };
            let gt = ConvGeom {
                h: self.oh,
                w: self.ow,
                cin: self.cout,
                cout: self.cin,
                oh: self.h,
                ow: self.w,
                ..*self
            };
            winograd::transform_weights(w, self.cout, self.cin, true, pack);
            let mut groups = vec![(); dw_parts.len().max(1)];
            let f = winograd::Filters::InMajor;
            winograd::forward(&gt, dy, pack, f, dx, scratch, &mut groups, &|_, _, _| {});
            return;
        }
        if kernel == DenseKernel::Direct && (dx.is_none() || direct::input_grad_applies::<T>(self))
        {
            return self.backward_direct(x, w, dy, dw, dx, pack, scratch, dw_parts);
        }
        let (ckk, cout) = (self.ckk(), self.cout);
        let rows = self.rows();
        if kernel == DenseKernel::Pointwise {
            let threads = rayon::current_num_threads();
            gemm_into(
                dw,
                Operand::t(&dy[..rows * cout], rows, cout),
                Operand::n(&x[..rows * ckk], rows, ckk),
                false,
                threads,
                T::one(),
            );
            if let Some(dx) = dx {
                gemm_into(
                    &mut dx[..rows * ckk],
                    Operand::n(&dy[..rows * cout], rows, cout),
                    Operand::n(w, cout, ckk),
                    false,
                    threads,
                    T::one(),
                );
            }
            return;
        }
        let ohw = self.ohw();
        let groups = dw_parts.len();
        let ranges = group_ranges(self.n, groups);
        let dx_parts = self.dx_parts(dx, &ranges);
        let tr = self.tile_rows();
        let used: Vec<bool> = dx_parts
            .into_par_iter()
            .zip(dw_parts.par_iter_mut())
            .zip(scratch.par_iter_mut())
            .zip(ranges.par_iter())
            .map(|(((mut dxp, dwp), col), r)| {
                let (g0, g1) = (r.start * ohw, r.end * ohw);
                col.resize(self.scratch_len(), T::zero());
                dwp.resize(cout * ckk, T::zero());
                if let Some(d) = dxp.as_deref_mut() {
                    d.fill(T::zero());
                }
                let mut r0 = g0;
                while r0 < g1 {
                    let r1 = (r0 + tr).min(g1);
                    let m = r1 - r0;
                    let dyt = &dy[r0 * cout..r1 * cout];
                    self.im2col(x, r0, r1, col);
                    gemm_into(
                        dwp,
                        Operand::t(dyt, m, cout),
                        Operand::n(&col[..m * ckk], m, ckk),
                        r0 != g0,
                        1,
                        T::one(),
                    );
                    if let Some(d) = dxp.as_deref_mut() {
                        gemm_into(
                            &mut col[..m * ckk],
                            Operand::n(dyt, m, cout),
                            Operand::n(w, cout, ckk),
                            false,
                            1,
                            T::one(),
                        );
                        self.col2im_add(col, r0, r1, d, r.start);
                    }
                    r0 = r1;
                }
                g1 > g0
            })
            .collect();
        sum_parts(dw, dw_parts, &used);
    }
}

impl ConvGeom {
    /// The input gradient cut into one slice of images per group (all `None` when not wanted).
    pub(super) fn dx_parts<'a, T>(
        &self,
        dx: Option<&'a mut [T]>,
        ranges: &[std::ops::Range<usize>],
    ) -> Vec<Option<&'a mut [T]>> {
        match dx {
            Some(dx) => split_by(&mut dx[..self.in_len()], ranges, self.h * self.w * self.cin)
                .into_iter()
                .map(Some)
                .collect(),
            None => ranges.iter().map(|_| None).collect(),
        }
    }

    /// The direct kernels' window of the forward pass (and weight gradient).
    fn window(&self) -> direct::Window {
        direct::Window {
            oh: self.oh,
            ow: self.ow,
            k: self.k,
            cin: self.cin,
            cout: self.cout,
        }
    }

    /// [`ConvGeom::forward`] on the direct kernels: per group of images, each image is padded
    /// into the group's scratch, convolved, and handed to `epi` while in cache.
    #[allow(clippy::too_many_arguments)]
    fn forward_direct<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        y: &mut [T],
        pack: &mut Vec<T>,
        scratch: &mut [Vec<T>],
        accs: &mut [GroupAcc],
        epi: &(dyn Fn(&mut GroupAcc, usize, &mut [T]) + Sync),
    ) {
        let (cin, cout, ohw) = (self.cin, self.cout, self.ohw());
        let img = self.h * self.w * cin;
        direct::pack_forward(w, cout, cin, self.k, pack);
        let (wt, win) = (&pack[..], self.window());
        let ranges = group_ranges(self.n, accs.len());
        let parts = split_by(&mut y[..self.out_len()], &ranges, ohw * cout);
        parts
            .into_par_iter()
            .zip(accs.par_iter_mut())
            .zip(scratch.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|(((part, acc), xp), r)| {
                xp.resize(direct::padded_len(self.h, self.w, cin, self.pad), T::zero());
                for (i, yi) in r.clone().zip(part.chunks_exact_mut(ohw * cout)) {
                    let xi = &x[i * img..(i + 1) * img];
                    direct::pad_image(xi, self.h, self.w, cin, self.pad, xp);
                    direct::conv_image(win, xp, wt, yi);
                    epi(acc, i * ohw, yi);
                }
            });
    }

    /// [`ConvGeom::backward`] on the direct kernels: each group sums its images' weight
    /// gradients in `[tap][ci][co16]`; the partials are added in group order and transposed
    /// into `dw`. The input gradient convolves dy, padded by k − 1 − pad, with the flipped
    /// weights.
    #[allow(clippy::too_many_arguments)]
    fn backward_direct<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        dy: &[T],
        dw: &mut [T],
        dx: Option<&mut [T]>,
        pack: &mut Vec<T>,
        scratch: &mut [Vec<T>],
        dw_parts: &mut [Vec<T>],
    ) {
        let (h, wd, k, cin, cout, ohw) = (self.h, self.w, self.k, self.cin, self.cout, self.ohw());
        let (img, wlen) = (h * wd * cin, k * k * cin * direct::lanes16(cout));
        if dx.is_some() {
            direct::pack_backward(w, cout, cin, k, pack);
        }
        let wb = &pack[..];
        let win = self.window();
        // dx: oh × ow gradients padded to (h + k − 1) × (w + k − 1), cout in, cin out.
        let back = direct::Window {
            oh: h,
            ow: wd,
            k,
            cin: cout,
            cout: cin,
        };
        let ranges = group_ranges(self.n, dw_parts.len());
        let dx_parts = self.dx_parts(dx, &ranges);
        let bpad = k - 1 - self.pad;
        let px = direct::padded_len(h, wd, cin, self.pad);
        let py = direct::padded_len(self.oh, self.ow, cout, bpad);
        dx_parts
            .into_par_iter()
            .zip(dw_parts.par_iter_mut())
            .zip(scratch.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|(((mut dxp, dwp), buf), r)| {
                dwp.clear();
                dwp.resize(wlen, T::zero());
                buf.resize(px + py, T::zero());
                let (xp, yp) = buf.split_at_mut(px);
                for i in r.clone() {
                    direct::pad_image(&x[i * img..(i + 1) * img], h, wd, cin, self.pad, xp);
                    let dyi = &dy[i * ohw * cout..(i + 1) * ohw * cout];
                    direct::weight_grad_image(win, xp, dyi, dwp);
                    if let Some(d) = dxp.as_deref_mut() {
                        direct::pad_image(dyi, self.oh, self.ow, cout, bpad, yp);
                        let di = &mut d[(i - r.start) * img..(i - r.start + 1) * img];
                        direct::conv_image(back, yp, wb, di);
                    }
                }
            });
        let (first, rest) = dw_parts.split_first_mut().expect("at least one group");
        for p in rest.iter() {
            for (a, &b) in first[..wlen].iter_mut().zip(&p[..wlen]) {
                *a += b;
            }
        }
        direct::unpack_weight_grad(&first[..wlen], cout, cin, k, dw);
    }
}

/// Rows summed in the working precision before a block's partial is added to the f64 total
/// (keeps the inner loops in T's vector width; a block's rounding error stays tiny).
const SUM_BLOCK: usize = 32;

/// Batch-norm statistics of a tile: s1[c] += Σ x, s2[c] += Σ x² (blocks of rows summed in T,
/// then added in f64).
#[inline]
pub fn accumulate_stats<T: Real>(acc: &mut GroupAcc, tile: &[T], c: usize) {
    let (s1, s2) = acc.sums.split_at_mut(c);
    let (mut p1, mut p2) = (vec![T::zero(); c], vec![T::zero(); c]);
    for block in tile.chunks(SUM_BLOCK * c) {
        p1.fill(T::zero());
        p2.fill(T::zero());
        for row in block.chunks_exact(c) {
            for j in 0..c {
                let v = row[j];
                p1[j] += v;
                p2[j] += v * v;
            }
        }
        for j in 0..c {
            s1[j] += p1[j].to_f64();
            s2[j] += p2[j].to_f64();
        }
    }
}

/// Per-channel affine map then optional ReLU with counting: out = relu?(z·a + b), over rows in
/// groups (`rows_per_sample` positions per image).
#[allow(clippy::too_many_arguments)]
pub fn affine_relu<T: Real>(
    z: &[T],
    out: &mut [T],
    a: &[T],
    b: &[T],
    relu: bool,
    rows_per_sample: usize,
    accs: &mut [GroupAcc],
) {
    let c = a.len();
    let rows = out.len() / c.max(1);
    let ranges = group_ranges(rows, accs.len());
    let parts = split_by(out, &ranges, c);
    parts
        .into_par_iter()
        .zip(accs.par_iter_mut())
        .zip(ranges.par_iter())
        .for_each(|((o, acc), r)| {
            let zs = &z[r.start * c..r.end * c];
            for (orow, zrow) in o.chunks_exact_mut(c).zip(zs.chunks_exact(c)) {
                for j in 0..c {
                    orow[j] = zrow[j] * a[j] + b[j];
                }
            }
            if relu {
                relu_count(acc, o, c, r.start, rows_per_sample);
            }
        });
}

/// out = relu(a + b) with counting (the residual join).
pub fn add_relu<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    c: usize,
    rows_per_sample: usize,
    accs: &mut [GroupAcc],
) {
    let rows = out.len() / c.max(1);
    let ranges = group_ranges(rows, accs.len());
    let parts = split_by(out, &ranges, c);
    parts
        .into_par_iter()
        .zip(accs.par_iter_mut())
        .zip(ranges.par_iter())
        .for_each(|((o, acc), r)| {
            let (x, y) = (&a[r.start * c..r.end * c], &b[r.start * c..r.end * c]);
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = x + y;
            }
            relu_count(acc, o, c, r.start, rows_per_sample);
        });
}

/// g ← g ⊙ [out > 0] for one row (a select, so it vectorises).
#[inline]
fn relu_mask<T: Real>(g: &mut [T], out: &[T]) {
    for (g, &o) in g.iter_mut().zip(out) {
        *g = if positive(o) { *g } else { T::zero() };
    }
}

/// g ← g ⊙ [out > 0] (the ReLU backward, in place; no mask when `out` is `None`), and the
/// per-channel sums of the masked g into the groups' `s1` (the bias gradient).
pub fn relu_backward<T: Real>(g: &mut [T], out: Option<&[T]>, c: usize, accs: &mut [GroupAcc]) {
    let rows = g.len() / c.max(1);
    let ranges = group_ranges(rows, accs.len());
    let parts = split_by(g, &ranges, c);
    parts
        .into_par_iter()
        .zip(accs.par_iter_mut())
        .zip(ranges.par_iter())
        .for_each(|((gp, acc), r)| {
            acc.reset(c, None);
            let mut p = vec![T::zero(); c];
            for (b, block) in gp.chunks_mut(SUM_BLOCK * c).enumerate() {
                p.fill(T::zero());
                let e0 = (r.start + b * SUM_BLOCK) * c;
                if let Some(out) = out {
                    // The whole block at once: rows of a few channels would not vectorise.
                    relu_mask(block, &out[e0..e0 + block.len()]);
                }
                for grow in block.chunks_exact(c) {
                    for (s, &g) in p.iter_mut().zip(grow.iter()) {
                        *s += g;
                    }
                }
                for (s, &v) in acc.sums.iter_mut().zip(&p) {
                    *s += v.to_f64();
                }
            }
        });
}

/// The batch-norm (+ ReLU) backward in two passes, in place on `g` (∂L/∂out in, ∂L/∂z out):
/// with x̂ = (z − μ)·inv and gz = g ⊙ [out > 0] (no mask without ReLU),
/// ∂β = Σ gz, ∂γ = Σ gz·x̂, ∂z = γ·inv·(gz − ∂β/N − x̂·∂γ/N). Returns (∂γ, ∂β).
#[allow(clippy::too_many_arguments)]
pub fn bn_backward<T: Real>(
    g: &mut [T],
    out: Option<&[T]>,
    z: &[T],
    mean: &[T],
    inv: &[T],
    gamma: &[T],
    accs: &mut [GroupAcc],
) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let rows = g.len() / c.max(1);
    let ranges = group_ranges(rows, accs.len());
    {
        let parts = split_by(&mut *g, &ranges, c);
        parts
            .into_par_iter()
            .zip(accs.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|((gp, acc), r)| {
                acc.reset(c, None);
                let zs = &z[r.start * c..r.end * c];
                let (s1, s2) = acc.sums.split_at_mut(c);
                let (mut p1, mut p2) = (vec![T::zero(); c], vec![T::zero(); c]);
                for (b, (gblock, zblock)) in gp
                    .chunks_mut(SUM_BLOCK * c)
                    .zip(zs.chunks(SUM_BLOCK * c))
                    .enumerate()
                {
                    p1.fill(T::zero());
                    p2.fill(T::zero());
                    let row0 = r.start + b * SUM_BLOCK;
                    for (i, (grow, zrow)) in gblock
                        .chunks_exact_mut(c)
                        .zip(zblock.chunks_exact(c))
                        .enumerate()
                    {
                        if let Some(o) = out {
                            relu_mask(grow, &o[(row0 + i) * c..(row0 + i + 1) * c]);
                        }
                        for j in 0..c {
                            let gz = grow[j];
                            let xh = (zrow[j] - mean[j]) * inv[j];
                            p1[j] += gz;
                            p2[j] += gz * xh;
                        }
                    }
                    for j in 0..c {
                        s1[j] += p1[j].to_f64();
                        s2[j] += p2[j].to_f64();
                    }
                }
            });
    }
    let (dbeta, dgamma) = merge_sums(accs, c);
    let nf = rows as f64;
    let k1: Vec<T> = (0..c).map(|j| T::from_f64(dbeta[j] / nf)).collect();
    let k2: Vec<T> = (0..c).map(|j| T::from_f64(dgamma[j] / nf)).collect();
    let sc: Vec<T> = (0..c).map(|j| gamma[j] * inv[j]).collect();
    let parts = split_by(g, &ranges, c);
    parts
        .into_par_iter()
        .zip(ranges.par_iter())
        .for_each(|(gp, r)| {
            let zs = &z[r.start * c..r.end * c];
            for (grow, zrow) in gp.chunks_exact_mut(c).zip(zs.chunks_exact(c)) {
                for j in 0..c {
                    let xh = (zrow[j] - mean[j]) * inv[j];
                    grow[j] = sc[j] * (grow[j] - k1[j] - xh * k2[j]);
                }
            }
        });
    (dgamma, dbeta)
}

/// k×k max pooling with stride k over NHWC (floor: trailing rows/columns dropped); `arg` gets the
/// window offset of each output's maximum (the first one on ties). f32 runs an AVX-512 kernel
/// where the CPU has one ([`direct::max_pool_image`]; the same selects, sixteen channels at
/// once), else [`max_pool_image`].
#[allow(clippy::too_many_arguments)]
pub fn max_pool<T: Real>(
    x: &[T],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    out: &mut [T],
    arg: &mut [u8],
) {
    let img_in = h * w * c;
    let img_out = (h / k) * (w / k) * c;
    let wide = direct::available();
    out[..n * img_out]
        .par_chunks_mut(img_out.max(1))
        .zip(arg[..n * img_out].par_chunks_mut(img_out.max(1)))
        .enumerate()
        .for_each(|(i, (o, a))| {
            let xi = &x[i * img_in..(i + 1) * img_in];
            if wide {
                if let (Some(xf), Some(of)) = (T::as_f32(xi), T::as_f32_mut(o)) {
                    return direct::max_pool_image(xf, h, w, c, k, of, a);
                }
            }
            max_pool_image(xi, h, w, c, k, o, a);
        });
}

/// [`max_pool`] of one image, portable (and the AVX-512 kernel's test oracle).
pub fn max_pool_image<T: Real>(
    xi: &[T],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    o: &mut [T],
    a: &mut [u8],
) {
    let (oh, ow) = (h / k, w / k);
    for oy in 0..oh {
        for ox in 0..ow {
            let ob = (oy * ow + ox) * c;
            let first = ((oy * k) * w + ox * k) * c;
            o[ob..ob + c].copy_from_slice(&xi[first..first + c]);
            a[ob..ob + c].fill(0);
            for dy in 0..k {
                for dx in 0..k {
                    if dy == 0 && dx == 0 {
                        continue;
                    }
                    let s = ((oy * k + dy) * w + ox * k + dx) * c;
                    let code = (dy * k + dx) as u8;
                    // Selects, not branches: which input wins is data-dependent.
                    let (ov, av) = (&mut o[ob..ob + c], &mut a[ob..ob + c]);
                    for ((o, a), &v) in ov.iter_mut().zip(av).zip(&xi[s..s + c]) {
                        let gt = v > *o;
                        *o = if gt { v } else { *o };
                        *a = if gt { code } else { *a };
                    }
                }
            }
        }
    }
}

/// The max-pool backward: each output's gradient goes to its recorded maximum; the rest is 0.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_backward<T: Real>(
    g: &[T],
    arg: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    dx: &mut [T],
) {
    let (oh, ow) = (h / k, w / k);
    let img_in = h * w * c;
    let img_out = oh * ow * c;
    // Offset of each window position (the recorded code) from the window's corner.
    let off: Vec<usize> = (0..k * k)
        .map(|code| (code / k * w + code % k) * c)
        .collect();
    dx[..n * img_in]
        .par_chunks_mut(img_in.max(1))
        .enumerate()
        .for_each(|(i, d)| {
            d.fill(T::zero());
            let (gi, ai) = (
                &g[i * img_out..(i + 1) * img_out],
                &arg[i * img_out..(i + 1) * img_out],
            );
            for oy in 0..oh {
                for ox in 0..ow {
                    let ob = (oy * ow + ox) * c;
                    let corner = (oy * k * w + ox * k) * c;
                    for j in 0..c {
                        d[corner + off[ai[ob + j] as usize] + j] = gi[ob + j];
                    }
                }
            }
        });
}

/// Global average pooling (n, hw, c) → (n, c).
pub fn gap<T: Real>(x: &[T], n: usize, hw: usize, c: usize, out: &mut [T]) {
    let inv = T::from_f64(1.0 / hw as f64);
    for i in 0..n {
        let o = &mut out[i * c..(i + 1) * c];
        o.fill(T::zero());
        for row in x[i * hw * c..(i + 1) * hw * c].chunks_exact(c) {
            for (a, &b) in o.iter_mut().zip(row) {
                *a += b;
            }
        }
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The global-average-pool backward: dx[n, p, c] = g[n, c] / hw.
pub fn gap_backward<T: Real>(g: &[T], n: usize, hw: usize, c: usize, dx: &mut [T]) {
    let inv = T::from_f64(1.0 / hw as f64);
    for i in 0..n {
        let gi = &g[i * c..(i + 1) * c];
        for row in dx[i * hw * c..(i + 1) * hw * c].chunks_exact_mut(c) {
            for (d, &v) in row.iter_mut().zip(gi) {
                *d = v * inv;
            }
        }
    }
}

/// Mean softmax cross-entropy of logits (n × k) against `labels`, with its gradient
/// (softmax − onehot)/n written to `grad`, and the number of correct arg-max predictions
/// (first maximum on ties). Sums in f64, fixed order.
pub fn softmax_ce<T: Real>(logits: &[T], labels: &[u32], k: usize, grad: &mut [T]) -> (f64, usize) {
    let n = labels.len();
    let (mut loss, mut correct) = (0f64, 0usize);
    let inv_n = 1.0 / n.max(1) as f64;
    for i in 0..n {
        let row = &logits[i * k..(i + 1) * k];
        let g = &mut grad[i * k..(i + 1) * k];
        let (mut best, mut arg) = (row[0].to_f64(), 0usize);
        for (j, v) in row.iter().enumerate() {
            if v.to_f64() > best {
                best = v.to_f64();
                arg = j;
            }
        }
        let lse = best
            + row
                .iter()
                .map(|v| (v.to_f64() - best).exp())
                .sum::<f64>()
                .ln();
        let y = labels[i] as usize;
        loss += lse - row[y].to_f64();
        correct += (arg == y) as usize;
        for j in 0..k {
            let p = (row[j].to_f64() - lse).exp();
            g[j] = T::from_f64((p - (j == y) as u8 as f64) * inv_n);
        }
    }
    (loss * inv_n, correct)
}

/// `out` (cols × rows) = `a` (rows × cols) transposed, in blocks that stay in cache.
pub fn transpose<T: Real>(a: &[T], rows: usize, cols: usize, out: &mut Vec<T>) {
    out.resize(rows * cols, T::zero());
    if let (Some(af), Some(of)) = (T::as_f32(a), T::as_f32_mut(out)) {
        if direct::transpose_f32(af, rows, cols, of) {
            return;
        }
    }
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
}

/// Row `r` of a row-major matrix with `n` columns.
fn row<T>(m: &[T], r: usize, n: usize) -> &[T] {
    &m[r * n..(r + 1) * n]
}

/// y += a · x, element by element in order (generic over f32/f64; `kernels::vector::axpy` is the
/// f32 one).
#[inline(always)]
fn axpy_t<T: Real>(a: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// One row of [`Csr::mul_rows`]: y = Σ_c w_row[c] · xt[c, :] over `support`, in order.
#[inline(always)]
fn mul_row<T: Real>(w_row: &[T], support: &[u32], xt: &[T], n: usize, y: &mut [T]) {
    y.fill(T::zero());
    for &c in support {
        axpy_t(w_row[c as usize], row(xt, c as usize, n), y);
    }
}

/// One row of [`Csr::grad_on_support`]: drow[c] = g · xt[c, :] on `support` (16-lane sums, then
/// the lanes in order, then the tail), 0 elsewhere.
#[inline(always)]
fn grad_row<T: Real>(g: &[T], support: &[u32], xt: &[T], n: usize, drow: &mut [T]) {
    drow.fill(T::zero());
    for &c in support {
        let xr = row(xt, c as usize, n);
        let mut acc = [T::zero(); 16];
        let mut gi = g.chunks_exact(16);
        let mut xi = xr.chunks_exact(16);
        for (gc, xc) in (&mut gi).zip(&mut xi) {
            for l in 0..16 {
                acc[l] += gc[l] * xc[l];
            }
        }
        let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
        for (&a, &b) in gi.remainder().iter().zip(xi.remainder()) {
            s += a * b;
        }
        drow[c as usize] = s;
    }
}

/// The sparse kernels' rows compiled for the widest vectors this CPU runs (AVX-512F, else AVX2
/// with FMA; the same operations in the same order as the generic build, so the results are
/// bit-identical to it), chosen at run time.
mod wide {
    use super::Real;

    /// [`super::mul_row`] on the widest vectors here.
    pub fn mul_row<T: Real>(w: &[T], sup: &[u32], xt: &[T], n: usize, y: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each build runs only where its features were detected.
        unsafe {
            if crate::kernels::simd::avx512() {
                return x86::mul_row_512(w, sup, xt, n, y);
            }
            if crate::kernels::simd::avx2_fma() {
                return x86::mul_row_256(w, sup, xt, n, y);
            }
        }
        super::mul_row(w, sup, xt, n, y)
    }

    /// [`super::grad_row`] on the widest vectors here.
    pub fn grad_row<T: Real>(g: &[T], sup: &[u32], xt: &[T], n: usize, drow: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each build runs only where its features were detected.
        unsafe {
            if crate::kernels::simd::avx512() {
                return x86::grad_row_512(g, sup, xt, n, drow);
            }
            if crate::kernels::simd::avx2_fma() {
                return x86::grad_row_256(g, sup, xt, n, drow);
            }
        }
        super::grad_row(g, sup, xt, n, drow)
    }

    /// [`super::axpy_t`] on the widest vectors here.
    pub fn axpy<T: Real>(a: T, x: &[T], y: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each build runs only where its features were detected.
        unsafe {
            if crate::kernels::simd::avx512() {
                return x86::axpy_512(a, x, y);
            }
            if crate::kernels::simd::avx2_fma() {
                return x86::axpy_256(a, x, y);
            }
        }
        super::axpy_t(a, x, y)
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::super::{axpy_t, grad_row, mul_row, Real};

        #[target_feature(enable = "avx512f")]
        pub unsafe fn mul_row_512<T: Real>(w: &[T], s: &[u32], xt: &[T], n: usize, y: &mut [T]) {
            mul_row(w, s, xt, n, y)
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn mul_row_256<T: Real>(w: &[T], s: &[u32], xt: &[T], n: usize, y: &mut [T]) {
            mul_row(w, s, xt, n, y)
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn grad_row_512<T: Real>(g: &[T], s: &[u32], xt: &[T], n: usize, d: &mut [T]) {
            grad_row(g, s, xt, n, d)
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn grad_row_256<T: Real>(g: &[T], s: &[u32], xt: &[T], n: usize, d: &mut [T]) {
            grad_row(g, s, xt, n, d)
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn axpy_512<T: Real>(a: T, x: &[T], y: &mut [T]) {
            axpy_t(a, x, y)
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn axpy_256<T: Real>(a: T, x: &[T], y: &mut [T]) {
            axpy_t(a, x, y)
        }
    }
}

/// The support of a weight mask (rows × cols, row-major) in CSR form: for row j the kept
/// columns `cols[row_ptr[j]..row_ptr[j + 1]]`, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols_n: usize,
    pub row_ptr: Vec<usize>,
    pub cols: Vec<u32>,
}

impl Csr {
    pub fn from_mask<T: Real>(mask: &[T], rows: usize, cols: usize) -> Csr {
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut idx = Vec::new();
        row_ptr.push(0);
        for j in 0..rows {
            for (c, &m) in mask[j * cols..(j + 1) * cols].iter().enumerate() {
                if m != T::zero() {
                    idx.push(c as u32);
                }
            }
            row_ptr.push(idx.len());
        }
        Csr {
            rows,
            cols_n: cols,
            row_ptr,
            cols: idx,
        }
    }

    /// The columns of row `j` that the mask keeps, in increasing order.
    fn support(&self, j: usize) -> &[u32] {
        &self.cols[self.row_ptr[j]..self.row_ptr[j + 1]]
    }

    /// yt[j, :] = Σ_c w[j, c] · xt[c, :] over the support (w dense rows × cols, xt cols × n,
    /// yt rows × n). Rows in parallel; each row's sum runs in support order (deterministic).
    pub fn mul_rows<T: Real>(&self, w: &[T], xt: &[T], n: usize, yt: &mut [T]) {
        let cols_n = self.cols_n;
        yt[..self.rows * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(j, y)| {
                let w_row = &w[j * cols_n..(j + 1) * cols_n];
                wide::mul_row(w_row, self.support(j), xt, n, y)
            });
    }

    /// dxt (cols × n) = Σ_j w[j, c] · gt[j, :] over the support, in row order (serial, so the
    /// sums are deterministic).
    pub fn mul_rows_transposed<T: Real>(
        &self,
        w: &[T],
        gt: &[T],
        n: usize,
        cols: usize,
        dxt: &mut Vec<T>,
    ) {
        dxt.clear();
        dxt.resize(cols * n, T::zero());
        for j in 0..self.rows {
            let g = &gt[j * n..(j + 1) * n];
            for &c in self.support(j) {
                let c = c as usize;
                wide::axpy(w[j * self.cols_n + c], g, &mut dxt[c * n..(c + 1) * n]);
            }
        }
    }

    /// dw[j, c] = gt[j, :] · xt[c, :] on the support, 0 elsewhere (rows in parallel).
    pub fn grad_on_support<T: Real>(&self, gt: &[T], xt: &[T], n: usize, dw: &mut [T]) {
        let cols_n = self.cols_n;
        dw[..self.rows * cols_n]
            .par_chunks_mut(cols_n)
            .enumerate()
            .for_each(|(j, drow)| {
                let g = &gt[j * n..(j + 1) * n];
                wide::grad_row(g, self.support(j), xt, n, drow)
            });
    }
}
