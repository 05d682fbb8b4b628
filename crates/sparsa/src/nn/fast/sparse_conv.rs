//! Sparse-weight convolution for pruned conv layers (f32, AVX-512F, stride 1): the work is
//! proportional to the weights the mask keeps.
//!
//! Dense kernels vectorise over output channels, so a pruned weight still costs its lane. Here
//! each image is copied into zero-bordered *planes* (one per channel, rows padded to a whole
//! number of cache lines: row stride `wp`) and the kernels vectorise over output pixels instead.
//! With `q = oy·wp + ox`, a kept weight `W[co, ky, kx, ci]` adds `W · xp[ci][q + ky·wp + kx]` to
//! `out[co][q]` for every q at once: one broadcast and one FMA per 16 pixels. The planes are
//! stored k times, copy kx shifted left by kx floats, so those 16 pixels are one aligned load
//! at `copy[kx][ci·plane + ky·wp + q]`. Columns `ox ≥ ow` of each output row are computed and
//! thrown away (the trick that makes a row's taps one contiguous run). A register block of up
//! to 16 vectors of 16 pixels accumulates over one output channel's kept weights ([`Entries`]:
//! the offset `kx·copy + ci·plane + ky·wp` and the weight, in CSR order), the input planes taken
//! in chunks that stay in L1.
//! - Forward: the entries of each output channel over the input planes; the output planes are
//!   transposed back to NHWC and handed to the unit's epilogue (bias, ReLU, counting, statistics).
//! - Input gradient: the same kernel over the output gradient's planes padded by k − 1 − pad,
//!   with each input channel's entries (taps flipped).
//! - Weight gradient, on the mask's support only: `dW[e] = Σ_q dy[co][q] · xp[ci][q + off]` over
//!   the output gradient's planes laid out like the forward output (zeros in the thrown-away
//!   columns), eight entries at a time sharing each dy load; 0 off the support (masked SGD
//!   updates the support only, [`super::FastNet`]'s `Slot::support`).
//!
//! Small maps waste most: a 4×4 output row padded to 16 floats computes 4 positions per valid
//! one. So several images sit side by side in one set of planes (each image `w + 2·pad` columns,
//! the row padded to whole cache lines once for all of them): the columns a window straddling two
//! images computes are thrown away like the row's tail, and the waste falls towards
//! (w + 2·pad)/w (4×4: 4 → 1.5; 16×16: 2 → 1.14; 32×32: 1.5 → 1.17; the forward planes' rows
//! stay within [`MAX_ROW`]). A layer keeps two layouts: the one-image planes for the
//! images left over, and planes of [`images_per_planes`] images for the rest of each group.
//!
//! Exactness: the same sums as the dense kernels in another order, so results agree to float
//! rounding (tested against the dense path at densities 0–100 %). Sums are in a fixed order for a
//! given shape and thread count, so runs stay bit-reproducible.

use rayon::prelude::*;

use super::direct;
use super::geom::{ConvGeom, Real};
use super::kernels::{group_ranges, split_by, GroupAcc};
use crate::kernels::aligned::Aligned;

/// Whether a masked convolution of shape `g` in element type T can run these kernels.
pub fn applies<T: Real>(g: &ConvGeom) -> bool {
    T::as_f32(&[]).is_some() && available() && g.stride == 1 && g.pad < g.k
}

/// Whether this CPU runs the kernels: AVX-512F (16-lane vectors), or AVX2 with FMA (the same
/// planes in 8-lane halves).
pub fn available() -> bool {
    direct::available()
}

/// Output positions the kernels compute per valid output of `g` (≥ 1) on the planes most of a
/// batch runs on ([`images_per_planes`] images side by side): rows padded to whole cache lines
/// and the thrown-away columns cost as much as real outputs (with padding 1: 1.14 for 28×28,
/// 14×14 and 16×16, 1.17 for 32×32, 1.25 for 8×8, 1.5 for 4×4, 2 for 2×2 maps). It assumes
/// each thread's share of a batch fills whole sets of planes; images left over run on one-image
/// planes, whose waste is higher on small maps (a batch of 128 on 2 threads leaves none).
pub fn waste(g: &ConvGeom) -> f64 {
    let n = images_per_planes(g);
    let p = Planes::new(g.h, g.w, g.cin, g.pad, g.k, n);
    (16 * p.qv) as f64 / (n * g.ohw()).max(1) as f64
}

/// Images side by side in one set of planes, at most.
pub const MAX_IMAGES: usize = 8;

/// Floats a row of images side by side may take. A register block's reads span its positions
/// and k − 1 rows more, so wide rows fill L1 with fewer channels per chunk: with 8 images of
/// 28×28 (rows of 240) Conv-4 and Conv-6 trained 15–25 % slower at 95 % sparsity than with one
/// image (rows of 32), while the small maps of VGG gained. Project choice, measured
/// (docs/pruning.md, "Images side by side").
pub const MAX_ROW: usize = 128;

/// Images per set of planes for a batch of `g`'s shape: the count up to [`MAX_IMAGES`] whose
/// images fit in a row of [`MAX_ROW`] floats with the fewest computed positions per valid
/// output, the smallest on ties (1 for 28×28 and 14×14 maps; 3 for 32×32, 7 for 16×16, 8 for
/// 8×8 and 4×4).
pub fn images_per_planes(g: &ConvGeom) -> usize {
    let cost = |n: usize| {
        let p = Planes::new(g.h, g.w, 1, g.pad, g.k, n);
        // Compared as exact fractions: 16·qv(n)·best_n against 16·qv(best)·n.
        16 * p.qv
    };
    let wi = g.w + 2 * g.pad;
    let mut best = 1;
    for n in (2..=MAX_IMAGES).take_while(|&n| n * wi <= MAX_ROW) {
        if cost(n) * best < cost(best) * n {
            best = n;
        }
    }
    best
}

/// Zero-bordered channel planes of `n` images side by side: `c` planes of `hp × wp` (each image
/// padded by `pad` takes `wi = w + 2·pad` columns, image m from column m·wi; rows padded on the
/// right to a multiple of 16 floats so that every row starts on a cache line), read by a k×k
/// window into `rows × cols` outputs per image at positions `q = oy·wp + m·wi + ox`, `qv`
/// vectors of 16 per output plane. The planes are stored k times, copy `kx` shifted left by kx
/// floats, so the read of tap (ky, kx) at q is the aligned `copy[kx][ci·plane + ky·wp + q]`.
/// A window at an output column ox < cols reads only its own image's columns.
#[derive(Debug, Clone, Copy)]
struct Planes {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    pad: usize,
    n: usize,
    wi: usize,
    wp: usize,
    plane: usize,
    rows: usize,
    cols: usize,
    qv: usize,
    /// Floats of one copy (all c planes and the slack the thrown-away positions read), a
    /// multiple of 16.
    copy: usize,
}

impl Planes {
    fn new(h: usize, w: usize, c: usize, pad: usize, k: usize, n: usize) -> Planes {
        let (hp, wi) = (h + 2 * pad, w + 2 * pad);
        let wp = (n * wi).div_ceil(16) * 16;
        let rows = hp + 1 - k;
        let qv = (rows * wp).div_ceil(16);
        // The furthest read of a plane is 16·qv + (k − 1)·wp = plane floats past its start
        // (16·qv = rows·wp, wp being whole vectors); 16 floats of slack on top.
        let plane = hp * wp;
        Planes {
            h,
            w,
            c,
            k,
            pad,
            n,
            wi,
            wp,
            plane,
            rows,
            cols: wi + 1 - k,
            qv,
            copy: c * plane + 16,
        }
    }
    /// Elements of the k copies.
    fn in_len(&self) -> usize {
        self.k * self.copy
    }
    /// Offset of tap (ky, kx) of channel ch.
    fn offset(&self, ch: usize, ky: usize, kx: usize) -> u32 {
        (kx * self.copy + ch * self.plane + ky * self.wp) as u32
    }
    /// Vectors per register block of the forward kernel: a whole output plane when it fits
    /// in sixteen registers (14×14 maps), else eight (measured: sixteen is slower on 28×28).
    fn block(&self) -> usize {
        if self.qv <= 16 {
            self.qv
        } else {
            8
        }
    }
    /// Floats of one channel (all copies) a register block of the forward kernel reads.
    fn span(&self) -> usize {
        self.k * (16 * self.block() + (self.k - 1) * self.wp)
    }
    /// Elements of one output plane.
    fn out_plane(&self) -> usize {
        16 * self.qv
    }
    /// Copy `n` NHWC images (h, w, c) into the planes' interiors, then make the shifted copies
    /// (the borders stay as they are: zero from the buffer's allocation).
    fn fill(&self, src: &[f32], dst: &mut [f32]) {
        let (w, c, wp) = (self.w, self.c, self.wp);
        let img = self.h * w * c;
        debug_assert_eq!(src.len(), self.n * img);
        for (m, src) in src.chunks_exact(img).enumerate() {
            for y in 0..self.h {
                let o = (y + self.pad) * wp + m * self.wi + self.pad;
                let done = direct::transpose_strided_f32(
                    &src[y * w * c..(y + 1) * w * c],
                    c,
                    w,
                    c,
                    &mut dst[o..],
                    self.plane,
                );
                debug_assert!(done);
            }
        }
        let (first, rest) = dst[..self.in_len()].split_at_mut(self.copy);
        for (kx, d) in (1..self.k).zip(rest.chunks_exact_mut(self.copy)) {
            d[..self.copy - kx].copy_from_slice(&first[kx..]);
        }
    }
    /// `n` NHWC images (rows, cols, c) into output-shaped planes (`c` planes of
    /// [`Planes::out_plane`], row stride wp; the thrown-away columns are left as they are).
    fn fill_out(&self, src: &[f32], c: usize, dst: &mut [f32]) {
        let img = self.rows * self.cols * c;
        for (m, src) in src.chunks_exact(img).enumerate() {
            for oy in 0..self.rows {
                let done = direct::transpose_strided_f32(
                    &src[oy * self.cols * c..(oy + 1) * self.cols * c],
                    c,
                    self.cols,
                    c,
                    &mut dst[oy * self.wp + m * self.wi..],
                    self.out_plane(),
                );
                debug_assert!(done);
            }
        }
    }
    /// Output planes (`c` planes of [`Planes::out_plane`]) → `n` NHWC images (rows, cols, c).
    fn unplane(&self, yp: &[f32], c: usize, y: &mut [f32]) {
        let img = self.rows * self.cols * c;
        for (m, y) in y.chunks_exact_mut(img).enumerate() {
            for oy in 0..self.rows {
                let done = direct::transpose_strided_f32(
                    &yp[oy * self.wp + m * self.wi..],
                    self.out_plane(),
                    c,
                    self.cols,
                    &mut y[oy * self.cols * c..(oy + 1) * self.cols * c],
                    c,
                );
                debug_assert!(done);
            }
        }
    }
}

/// Kept weights of a conv layer grouped by the planes they read (chunks of `per_chunk`
/// channels, so that a block's reads stay in L1) and then by the plane they write:
/// `ptr[c·outs + j]..ptr[c·outs + j + 1]` are the entries of chunk c writing plane j, each an
/// offset into the planes it reads and the index of its weight in the engine's (co, ky, kx, ci)
/// layout; `w` holds the weights gathered at the last refresh.
#[derive(Debug, Clone, Default)]
struct Entries {
    outs: usize,
    chunks: usize,
    ptr: Vec<usize>,
    off: Vec<u32>,
    /// The largest offset (0 without entries): the kernels' reads end 16·qv past it.
    max_off: usize,
    idx: Vec<u32>,
    w: Vec<f32>,
}

/// L1 bytes a chunk of read planes may take per register block of the forward kernel.
const CHUNK_BYTES: usize = 32 << 10;

impl Entries {
    /// From `(j, channel read, offset, weight index)` items in the order wanted within each
    /// (chunk, j); `span` is the floats of one read channel the kernel touches while it works
    /// through a chunk.
    fn build(
        outs: usize,
        chans: usize,
        span: usize,
        mut items: Vec<(usize, usize, u32, u32)>,
    ) -> Entries {
        let per_chunk = (CHUNK_BYTES / (4 * span.max(1))).clamp(1, chans.max(1));
        let chunks = chans.div_ceil(per_chunk).max(1);
        items.sort_by_key(|&(j, ch, ..)| (ch / per_chunk, j));
        let mut ptr = vec![0; chunks * outs + 1];
        for &(j, ch, ..) in &items {
            ptr[(ch / per_chunk) * outs + j + 1] += 1;
        }
        for i in 1..ptr.len() {
            ptr[i] += ptr[i - 1];
        }
        Entries {
            outs,
            chunks,
            ptr,
            off: items.iter().map(|e| e.2).collect(),
            max_off: items.iter().map(|e| e.2 as usize).max().unwrap_or(0),
            idx: items.iter().map(|e| e.3).collect(),
            w: Vec::new(),
        }
    }

    fn refresh(&mut self, w: &[f32]) {
        self.w.clear();
        self.w.extend(self.idx.iter().map(|&i| w[i as usize]));
    }

    /// The entries of chunk c writing plane j.
    fn range(&self, c: usize, j: usize) -> std::ops::Range<usize> {
        self.ptr[c * self.outs + j]..self.ptr[c * self.outs + j + 1]
    }
}

/// One group's buffers for one layout, zeroed whenever their length changes (the first pass):
/// only plane interiors are written afterwards, so the borders and thrown-away columns the
/// kernels read stay 0. They live as long as the layer (per group and layout: the k input
/// copies, the output planes and the output gradient's planes, ≈ 0.9 MB for 16 channels at
/// 32×32 and one image).
#[derive(Debug, Default)]
struct Buf {
    /// Input planes (forward and weight gradient).
    xp: Aligned<f32>,
    /// Output planes of the forward pass.
    yp: Aligned<f32>,
    /// Output planes of the input gradient.
    dxp: Aligned<f32>,
    /// Output gradient laid out like the forward output (weight gradient).
    dyw: Aligned<f32>,
    /// Output gradient padded by k − 1 − pad (input gradient).
    dyb: Aligned<f32>,
    /// Weight-gradient sums of the group's images, one per kept weight.
    gacc: Vec<f32>,
}

/// The kept weights' entries for planes of `fp.n` images.
#[derive(Debug)]
struct Layout {
    /// By output channel, for the forward pass.
    fwd: Entries,
    /// The same entries chunked for the weight gradient (its sums are in this order).
    grad: Entries,
    /// By input channel, taps flipped: the input gradient.
    bwd: Entries,
    fp: Planes,
    bp: Planes,
    /// For each entry of the one-image layout's `grad`, the same weight's entry in this one.
    grad_from_one: Vec<u32>,
}

impl Layout {
    fn new<T: Real>(g: &ConvGeom, mask: &[T], n: usize) -> Layout {
        let (k, cin, cout) = (g.k, g.cin, g.cout);
        let fp = Planes::new(g.h, g.w, cin, g.pad, k, n);
        let bp = Planes::new(g.oh, g.ow, cout, k - 1 - g.pad, k, n);
        debug_assert_eq!((fp.rows, fp.cols), (g.oh, g.ow));
        debug_assert_eq!((bp.rows, bp.cols), (g.h, g.w));
        let kept = |co: usize, t: usize, ci: usize| mask[(co * k * k + t) * cin + ci] != T::zero();
        let idx = |co: usize, t: usize, ci: usize| ((co * k * k + t) * cin + ci) as u32;
        let mut items = Vec::new();
        for co in 0..cout {
            for ci in 0..cin {
                for t in 0..k * k {
                    if kept(co, t, ci) {
                        let off = fp.offset(ci, t / k, t % k);
                        items.push((co, ci, off, idx(co, t, ci)));
                    }
                }
            }
        }
        // The weight gradient reads whole planes per entry: its chunks hold fewer channels.
        let grad = Entries::build(cout, cin, k * fp.plane, items.clone());
        let fwd = Entries::build(cout, cin, fp.span(), items);
        let mut items = Vec::new();
        for ci in 0..cin {
            for co in 0..cout {
                for t in 0..k * k {
                    if kept(co, t, ci) {
                        let (ky, kx) = (k - 1 - t / k, k - 1 - t % k);
                        items.push((ci, co, bp.offset(co, ky, kx), idx(co, t, ci)));
                    }
                }
            }
        }
        let bwd = Entries::build(cin, cout, bp.span(), items);
        Layout {
            fwd,
            grad,
            bwd,
            fp,
            bp,
            grad_from_one: Vec::new(),
        }
    }
}

/// A masked convolution running the sparse kernels (built from its mask, fixed for the
/// engine's lifetime; weights are re-gathered at every pass).
#[derive(Debug)]
pub struct SparseConv {
    /// The layer's geometry (any batch size).
    geom: ConvGeom,
    /// Planes of one image, then (when it wastes fewer positions) of [`images_per_planes`].
    layouts: Vec<Layout>,
    /// Per group, one buffer set per layout.
    bufs: Vec<Vec<Buf>>,
}

impl SparseConv {
    /// The kernels of `g` (stride 1, [`applies`]) for the kept weights of `mask` (engine layout
    /// (co, ky, kx, ci)).
    pub fn new<T: Real>(g: &ConvGeom, mask: &[T]) -> SparseConv {
        assert!(
            g.stride == 1 && g.pad < g.k,
            "sparse convolution: stride 1, pad < k"
        );
        assert_eq!(
            mask.len(),
            g.cout * g.k * g.k * g.cin,
            "sparse convolution: mask shape"
        );
        let mut layouts = vec![Layout::new(g, mask, 1)];
        let n = images_per_planes(g);
        if n > 1 {
            let mut multi = Layout::new(g, mask, n);
            let mut at = vec![0u32; mask.len()];
            for (e, &i) in multi.grad.idx.iter().enumerate() {
                at[i as usize] = e as u32;
            }
            multi.grad_from_one = layouts[0]
                .grad
                .idx
                .iter()
                .map(|&i| at[i as usize])
                .collect();
            layouts.push(multi);
        }
        SparseConv {
            geom: ConvGeom { n: 0, ..*g },
            layouts,
            bufs: Vec::new(),
        }
    }

    /// Kept weights.
    pub fn nnz(&self) -> usize {
        self.layouts[0].fwd.idx.len()
    }

    /// Images the kernels put side by side in one set of planes for most of a batch.
    pub fn images_per_planes(&self) -> usize {
        self.layouts.last().map_or(1, |l| l.fp.n)
    }

    /// Panics unless `g` is the shape the kernels were built for (any batch size and choice of
    /// dense kernels).
    fn check(&self, g: &ConvGeom) {
        let dense = (self.geom.direct, self.geom.winograd_above);
        assert!(
            ConvGeom {
                n: 0,
                direct: dense.0,
                winograd_above: dense.1,
                ..*g
            } == self.geom,
            "sparse convolution built for {:?}, called with {g:?}",
            self.geom
        );
    }

    fn bufs(&mut self, groups: usize) {
        if self.bufs.len() != groups {
            let layouts = self.layouts.len();
            self.bufs = (0..groups)
                .map(|_| (0..layouts).map(|_| Buf::default()).collect())
                .collect();
        }
    }

    /// y (NHWC) = the convolution of x with the kept weights of `w`; `epi(acc, row0, image)`
    /// runs on each image's output while it is in cache, as [`ConvGeom::forward`]'s does.
    pub fn forward<T: Real>(
        &mut self,
        g: &ConvGeom,
        x: &[T],
        w: &[T],
        y: &mut [T],
        accs: &mut [GroupAcc],
        epi: &(dyn Fn(&mut GroupAcc, usize, &mut [T]) + Sync),
    ) {
        let (Some(x), Some(w)) = (T::as_f32(x), T::as_f32(w)) else {
            unreachable!("the sparse convolution runs only on f32 (applies)")
        };
        self.check(g);
        for l in &mut self.layouts {
            l.fwd.refresh(w);
        }
        self.bufs(accs.len());
        let (cout, ohw) = (g.cout, g.ohw());
        let img = g.h * g.w * g.cin;
        let layouts = &self.layouts;
        let ranges = group_ranges(g.n, accs.len());
        let parts = split_by(&mut y[..g.out_len()], &ranges, ohw * cout);
        parts
            .into_par_iter()
            .zip(accs.par_iter_mut())
            .zip(self.bufs.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|(((part, acc), bufs), r)| {
                for_chunks(layouts, r.clone(), |li, i0, n| {
                    let (l, b) = (&layouts[li], &mut bufs[li]);
                    let fp = l.fp;
                    zeroed(&mut b.xp, fp.in_len());
                    zeroed(&mut b.yp, cout * fp.out_plane());
                    fp.fill(&x[i0 * img..(i0 + n) * img], &mut b.xp);
                    conv_planes(&b.xp, &l.fwd, fp.qv, fp.block(), &mut b.yp);
                    let at = (i0 - r.start) * ohw * cout;
                    let yn = &mut part[at..at + n * ohw * cout];
                    fp.unplane(&b.yp, cout, T::as_f32_mut(yn).expect("f32"));
                    for (m, yi) in yn.chunks_exact_mut(ohw * cout).enumerate() {
                        epi(acc, (i0 + m) * ohw, yi);
                    }
                });
            });
    }

    /// Gradients from dy (NHWC): `dw` = dyᵀ·im2col(x) on the kept weights (0 elsewhere) and,
    /// when wanted, `dx` = the input gradient. Per-group partial sums are added in group order
    /// (within a group, the one-image layout's then the other's).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &mut self,
        g: &ConvGeom,
        x: &[T],
        w: &[T],
        dy: &[T],
        dw: &mut [T],
        dx: Option<&mut [T]>,
        groups: usize,
    ) {
        let (Some(x), Some(w), Some(dy)) = (T::as_f32(x), T::as_f32(w), T::as_f32(dy)) else {
            unreachable!("the sparse convolution runs only on f32 (applies)")
        };
        self.check(g);
        let want_dx = dx.is_some();
        if want_dx {
            for l in &mut self.layouts {
                l.bwd.refresh(w);
            }
        }
        self.bufs(groups.max(1));
        let (cin, cout, ohw) = (g.cin, g.cout, g.ohw());
        let img = g.h * g.w * cin;
        let layouts = &self.layouts;
        let ranges = group_ranges(g.n, self.bufs.len());
        let dx_parts = g.dx_parts(dx, &ranges);
        // With a symmetric window (k = 2·pad + 1) the input gradient's padded planes are the
        // forward output's planes moved down and right by `pad` (each image's block is as wide
        // in both): their copy `pad` read from row `pad` on (the thrown-away columns land on the
        // zero borders), so dy is transposed once.
        let shared = want_dx && 2 * g.pad + 1 == g.k;
        dx_parts
            .into_par_iter()
            .zip(self.bufs.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|((mut dxp, bufs), r)| {
                for (l, b) in layouts.iter().zip(bufs.iter_mut()) {
                    b.gacc.clear();
                    b.gacc.resize(l.grad.idx.len(), 0.0);
                }
                for_chunks(layouts, r.clone(), |li, i0, n| {
                    let (l, b) = (&layouts[li], &mut bufs[li]);
                    let (fp, bp) = (l.fp, l.bp);
                    debug_assert!(!shared || (bp.wp == fp.wp && bp.pad == g.pad));
                    zeroed(&mut b.xp, fp.in_len());
                    fp.fill(&x[i0 * img..(i0 + n) * img], &mut b.xp);
                    let dyn_ = &dy[i0 * ohw * cout..(i0 + n) * ohw * cout];
                    if shared {
                        zeroed(&mut b.dyb, bp.in_len());
                        bp.fill(dyn_, &mut b.dyb);
                        let dyv = &b.dyb[bp.pad * bp.copy + bp.pad * bp.wp..];
                        grad_planes(&b.xp, dyv, bp.plane, &l.grad, fp.qv, &mut b.gacc);
                    } else {
                        // The output gradient as the forward output's planes: row stride wp,
                        // thrown-away columns and the tail past rows·wp zero.
                        zeroed(&mut b.dyw, cout * fp.out_plane() + 16);
                        fp.fill_out(dyn_, cout, &mut b.dyw);
                        grad_planes(&b.xp, &b.dyw, fp.out_plane(), &l.grad, fp.qv, &mut b.gacc);
                    }
                    if let Some(d) = dxp.as_deref_mut() {
                        if !shared {
                            zeroed(&mut b.dyb, bp.in_len());
                            bp.fill(dyn_, &mut b.dyb);
                        }
                        zeroed(&mut b.dxp, cin * bp.out_plane());
                        conv_planes(&b.dyb, &l.bwd, bp.qv, bp.block(), &mut b.dxp);
                        let at = (i0 - r.start) * img;
                        let dn = T::as_f32_mut(&mut d[at..at + n * img]).expect("f32");
                        bp.unplane(&b.dxp, cin, dn);
                    }
                });
            });
        dw.fill(T::zero());
        let one = &layouts[0];
        for (e, &i) in one.grad.idx.iter().enumerate() {
            // Groups without images hold zeros.
            let mut s = 0f32;
            for b in &self.bufs {
                s += b[0].gacc[e];
                if let (Some(l), Some(bm)) = (layouts.get(1), b.get(1)) {
                    s += bm.gacc[l.grad_from_one[e] as usize];
                }
            }
            dw[i as usize] = T::from_f64(s as f64);
        }
    }
}

/// The images `r` of a group in chunks for the layouts: whole sets of planes of the last
/// layout's images, then the rest one at a time; `f(layout, first image, images)`.
fn for_chunks(
    layouts: &[Layout],
    r: std::ops::Range<usize>,
    mut f: impl FnMut(usize, usize, usize),
) {
    let multi = layouts.len() - 1;
    let n = layouts[multi].fp.n;
    let mut i = r.start;
    while i < r.end {
        if multi > 0 && r.end - i >= n {
            f(multi, i, n);
            i += n;
        } else {
            f(0, i, 1);
            i += 1;
        }
    }
}

/// `v` resized to `len`, zero-filled only when its length changes (borders stay 0 otherwise).
fn zeroed(v: &mut Aligned<f32>, len: usize) {
    if v.len() != len {
        v.resize(len);
        v.fill(0.0);
    }
}

/// out[j][q] = Σ_{e of j} w_e · xp[off_e + q] for every output plane j and q < 16·qv.
fn conv_planes(xp: &[f32], ent: &Entries, qv: usize, block: usize, out: &mut [f32]) {
    let planes = ent.outs;
    let max_off = ent.max_off;
    assert!(ent.w.len() == ent.off.len() && ent.ptr.len() == ent.chunks * planes + 1);
    assert!(ent.ptr[ent.chunks * planes] == ent.off.len());
    assert!(max_off + 16 * qv <= xp.len() && out.len() >= planes * 16 * qv);
    assert!(available());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F (or AVX2 and FMA) is present; every read is at off_e + q < max_off +
    // 16·qv ≤ xp.len() and every write inside plane j < planes of 16·qv (asserted above).
    unsafe {
        if direct::avx512() {
            avx::conv_planes(xp.as_ptr(), ent, qv, block.clamp(1, 16), out.as_mut_ptr())
        } else {
            avx2::conv_planes(xp.as_ptr(), ent, qv, out.as_mut_ptr())
        }
    }
}

/// acc[e] += Σ_{q < 16·qv} dy[j][q] · xp[off_e + q] for the entries e of every plane j (dy's
/// planes `ld` apart).
fn grad_planes(xp: &[f32], dy: &[f32], ld: usize, ent: &Entries, qv: usize, acc: &mut [f32]) {
    let planes = ent.outs;
    let max_off = ent.max_off;
    assert!(ent.ptr.len() == ent.chunks * planes + 1 && acc.len() >= ent.off.len());
    assert!(ent.ptr[ent.chunks * planes] == ent.off.len());
    assert!(max_off + 16 * qv <= xp.len() && 16 * qv <= ld);
    assert!(planes == 0 || (planes - 1) * ld + 16 * qv <= dy.len());
    assert!(available());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F (or AVX2 and FMA) is present; reads of xp as in `conv_planes`, of dy
    // inside plane j's first 16·qv elements, writes to acc[e] for e < nnz (asserted above).
    unsafe {
        if direct::avx512() {
            avx::grad_planes(xp.as_ptr(), dy.as_ptr(), ld, ent, qv, acc.as_mut_ptr())
        } else {
            avx2::grad_planes(xp.as_ptr(), dy.as_ptr(), ld, ent, qv, acc.as_mut_ptr())
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::Entries;

    /// Entries per block of the weight gradient.
    const NE: usize = 8;

    /// SAFETY (callers): AVX-512F present; bounds as asserted by `super::conv_planes`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv_planes(
        xp: *const f32,
        ent: &Entries,
        qv: usize,
        per_block: usize,
        out: *mut f32,
    ) {
        let ld = 16 * qv;
        let mut v0 = 0;
        while v0 < qv {
            let nv = (qv - v0).min(per_block);
            let (x, o) = (xp.add(16 * v0), out.add(16 * v0));
            match nv {
                16 => block::<16>(x, ent, o, ld),
                15 => block::<15>(x, ent, o, ld),
                14 => block::<14>(x, ent, o, ld),
                13 => block::<13>(x, ent, o, ld),
                12 => block::<12>(x, ent, o, ld),
                11 => block::<11>(x, ent, o, ld),
                10 => block::<10>(x, ent, o, ld),
                9 => block::<9>(x, ent, o, ld),
                8 => block::<8>(x, ent, o, ld),
                7 => block::<7>(x, ent, o, ld),
                6 => block::<6>(x, ent, o, ld),
                5 => block::<5>(x, ent, o, ld),
                4 => block::<4>(x, ent, o, ld),
                3 => block::<3>(x, ent, o, ld),
                2 => block::<2>(x, ent, o, ld),
                _ => block::<1>(x, ent, o, ld),
            }
            v0 += nv;
        }
    }

    /// One block of V vectors of every output plane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const V: usize>(x: *const f32, ent: &Entries, out: *mut f32, ld: usize) {
        let (off, w) = (ent.off.as_ptr(), ent.w.as_ptr());
        for (c, j) in (0..ent.chunks).flat_map(|c| (0..ent.outs).map(move |j| (c, j))) {
            let o = out.add(j * ld);
            let mut acc = [_mm512_setzero_ps(); V];
            if c > 0 {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(o.add(16 * v));
                }
            }
            for e in ent.range(c, j) {
                let wv = _mm512_set1_ps(*w.add(e));
                let p = x.add(*off.add(e) as usize);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16 * v)), wv, *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * v), *a);
            }
        }
    }

    /// SAFETY (callers): AVX-512F present; bounds as asserted by `super::grad_planes`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_planes(
        xp: *const f32,
        dy: *const f32,
        ld: usize,
        ent: &Entries,
        qv: usize,
        acc: *mut f32,
    ) {
        for (c, j) in (0..ent.chunks).flat_map(|c| (0..ent.outs).map(move |j| (c, j))) {
            let d = dy.add(j * ld);
            let r = ent.range(c, j);
            let (mut e, end) = (r.start, r.end);
            while e < end {
                let ne = (end - e).min(NE);
                match ne {
                    8 => dots::<8>(xp, d, ent, e, qv, acc),
                    7 => dots::<7>(xp, d, ent, e, qv, acc),
                    6 => dots::<6>(xp, d, ent, e, qv, acc),
                    5 => dots::<5>(xp, d, ent, e, qv, acc),
                    4 => dots::<4>(xp, d, ent, e, qv, acc),
                    3 => dots::<3>(xp, d, ent, e, qv, acc),
                    2 => dots::<2>(xp, d, ent, e, qv, acc),
                    _ => dots::<1>(xp, d, ent, e, qv, acc),
                }
                e += ne;
            }
        }
    }

    /// acc[e0 + i] += Σ_q d[q] · xp[off + q] for E entries from e0, sharing each load of d.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const E: usize>(
        xp: *const f32,
        d: *const f32,
        ent: &Entries,
        e0: usize,
        qv: usize,
        acc: *mut f32,
    ) {
        let mut p = [xp; E];
        for (i, p) in p.iter_mut().enumerate() {
            *p = xp.add(*ent.off.as_ptr().add(e0 + i) as usize);
        }
        let mut s = [_mm512_setzero_ps(); E];
        for v in 0..qv {
            let dv = _mm512_loadu_ps(d.add(16 * v));
            for i in 0..E {
                s[i] = _mm512_fmadd_ps(_mm512_loadu_ps(p[i].add(16 * v)), dv, s[i]);
            }
        }
        if E == 8 {
            let a = acc.add(e0);
            _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), sums8(&s[..8])));
        } else {
            for (i, s) in s.iter().enumerate() {
                *acc.add(e0 + i) += _mm512_reduce_add_ps(*s);
            }
        }
    }

    /// The sums of eight vectors' lanes, in one vector of eight (a shuffle tree: about three
    /// operations per sum instead of eight for a reduction each).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sums8(s: &[__m512]) -> __m256 {
        // Pairs: 128-bit quarters 0+2 and 1+3 of s[2i] and s[2i+1] side by side.
        let pair = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        };
        let (t01, t23, t45, t67) = (
            pair(s[0], s[1]),
            pair(s[2], s[3]),
            pair(s[4], s[5]),
            pair(s[6], s[7]),
        );
        // Quads: quarter i holds four partial sums of s[i] (u) and of s[4 + i] (w).
        let quad = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        };
        let (u, w) = (quad(t01, t23), quad(t45, t67));
        // Within each quarter: element 0 = Σ of u's four, element 1 = Σ of w's four.
        let h = _mm512_add_ps(_mm512_unpacklo_ps(u, w), _mm512_unpackhi_ps(u, w));
        let h = _mm512_add_ps(h, _mm512_shuffle_ps::<0b01_00_11_10>(h, h));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, h))
    }
}

/// The kernels on AVX2 and FMA: the same planes (rows of whole 16-float vectors) in 8-lane
/// halves, with register blocks sized for sixteen registers. Each output lane adds the same
/// products in the same order as the AVX-512 build, so the forward results are bit-identical to
/// it; the weight gradient's lane sums are grouped by eight instead of sixteen.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Entries;

    /// Entries per block of the weight gradient.
    const NE: usize = 8;
    /// 8-lane accumulators per register block of the forward kernel, at most (with the
    /// broadcast weight, 13 of the 16 registers; the inputs are FMA memory operands).
    const MAX_BLOCK: usize = 12;

    /// SAFETY (callers): AVX2 and FMA present; bounds as asserted by `super::conv_planes`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv_planes(xp: *const f32, ent: &Entries, qv: usize, out: *mut f32) {
        let ld = 16 * qv;
        // A plane's 2·qv vectors in blocks of nearly equal size, none over MAX_BLOCK.
        let nq = 2 * qv;
        let blocks = nq.div_ceil(MAX_BLOCK);
        let mut v0 = 0;
        for bi in 0..blocks {
            let nv = (nq - v0).div_ceil(blocks - bi);
            let (x, o) = (xp.add(8 * v0), out.add(8 * v0));
            match nv {
                12 => block::<12>(x, ent, o, ld),
                11 => block::<11>(x, ent, o, ld),
                10 => block::<10>(x, ent, o, ld),
                9 => block::<9>(x, ent, o, ld),
                8 => block::<8>(x, ent, o, ld),
                7 => block::<7>(x, ent, o, ld),
                6 => block::<6>(x, ent, o, ld),
                5 => block::<5>(x, ent, o, ld),
                4 => block::<4>(x, ent, o, ld),
                3 => block::<3>(x, ent, o, ld),
                2 => block::<2>(x, ent, o, ld),
                _ => block::<1>(x, ent, o, ld),
            }
            v0 += nv;
        }
    }

    /// One block of V 8-lane vectors of every output plane.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const V: usize>(x: *const f32, ent: &Entries, out: *mut f32, ld: usize) {
        let (off, w) = (ent.off.as_ptr(), ent.w.as_ptr());
        for (c, j) in (0..ent.chunks).flat_map(|c| (0..ent.outs).map(move |j| (c, j))) {
            let o = out.add(j * ld);
            let mut acc = [_mm256_setzero_ps(); V];
            if c > 0 {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(8 * v));
                }
            }
            for e in ent.range(c, j) {
                let wv = _mm256_set1_ps(*w.add(e));
                let p = x.add(*off.add(e) as usize);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * v)), wv, *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * v), *a);
            }
        }
    }

    /// SAFETY (callers): AVX2 and FMA present; bounds as asserted by `super::grad_planes`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn grad_planes(
        xp: *const f32,
        dy: *const f32,
        ld: usize,
        ent: &Entries,
        qv: usize,
        acc: *mut f32,
    ) {
        for (c, j) in (0..ent.chunks).flat_map(|c| (0..ent.outs).map(move |j| (c, j))) {
            let d = dy.add(j * ld);
            let r = ent.range(c, j);
            let (mut e, end) = (r.start, r.end);
            while e < end {
                let ne = (end - e).min(NE);
                match ne {
                    8 => dots::<8>(xp, d, ent, e, qv, acc),
                    7 => dots::<7>(xp, d, ent, e, qv, acc),
                    6 => dots::<6>(xp, d, ent, e, qv, acc),
                    5 => dots::<5>(xp, d, ent, e, qv, acc),
                    4 => dots::<4>(xp, d, ent, e, qv, acc),
                    3 => dots::<3>(xp, d, ent, e, qv, acc),
                    2 => dots::<2>(xp, d, ent, e, qv, acc),
                    _ => dots::<1>(xp, d, ent, e, qv, acc),
                }
                e += ne;
            }
        }
    }

    /// acc[e0 + i] += Σ_q d[q] · xp[off + q] for E entries from e0, sharing each load of d.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots<const E: usize>(
        xp: *const f32,
        d: *const f32,
        ent: &Entries,
        e0: usize,
        qv: usize,
        acc: *mut f32,
    ) {
        let mut p = [xp; E];
        for (i, p) in p.iter_mut().enumerate() {
            *p = xp.add(*ent.off.as_ptr().add(e0 + i) as usize);
        }
        let mut s = [_mm256_setzero_ps(); E];
        for v in 0..2 * qv {
            let dv = _mm256_loadu_ps(d.add(8 * v));
            for i in 0..E {
                s[i] = _mm256_fmadd_ps(_mm256_loadu_ps(p[i].add(8 * v)), dv, s[i]);
            }
        }
        if E == 8 {
            let a = acc.add(e0);
            _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), sums8(&s[..8])));
        } else {
            for (i, s) in s.iter().enumerate() {
                *acc.add(e0 + i) += sum(*s);
            }
        }
    }

    /// The sum of one vector's eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum(s: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)))
    }

    /// The sums of eight vectors' lanes, in one vector of eight (a tree of horizontal adds).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sums8(s: &[__m256]) -> __m256 {
        // Lane pairs, then quads: u0 holds s0..s3's partial sums per 128-bit half, u1 s4..s7's.
        let (t0, t1) = (_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
        let (t2, t3) = (_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
        let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }
}
