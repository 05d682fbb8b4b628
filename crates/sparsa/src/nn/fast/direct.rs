//! Direct kernels on AVX-512 (f32) where im2col + GEMM or a general GEMM fits poorly:
//! stride-1 convolutions with few output channels (ResNet's 16/32/64, LeNet-5's 6/16, the first
//! pairs of Conv-2/4/6 and VGG), the evaluation product of dense linear layers, and 16 × 16
//! transposes.
//!
//! Convolution: the GEMM's output would have only 6–64 columns, so the narrow microkernels run,
//! and the k²-expanded matrix is written and read once per pass. Here each image is copied once
//! into a zero-bordered buffer, and a register block of output pixels × 16-lane channel vectors
//! accumulates over the k² taps × input channels directly (one weight vector load per tap and
//! input channel, one broadcast FMA per pixel): no expanded matrix exists. Channel counts that
//! are not a multiple of 16 use zero weight lanes and masked stores.
//! - Forward: `y[p, co] = Σ_{tap, ci} xpad[p + tap, ci] · W[co, tap, ci]`, weights packed as
//!   `[tap][ci][co16]` ([`pack_forward`]).
//! - Input gradient: the same kernel over the output gradient padded by k − 1 − pad, with the
//!   taps flipped and the channel roles swapped ([`pack_backward`]).
//! - Weight gradient: `dW[tap][ci][co16] += Σ_p xpad[p + tap, ci] · dy[p, co]`, a register block
//!   of input channels × output-channel vectors accumulated over every pixel of an image
//!   ([`weight_grad_image`]); the caller transposes the sum to the engine's (co, tap, ci) layout.
//!
//! Exactness: the kernels compute the same sums as the im2col path in another order, so results
//! agree to float rounding (tested against the f64 im2col path and the candle reference).
//! Sums are in a fixed order for a given shape, so runs stay bit-reproducible.

use super::geom::{ConvGeom, Real};
use crate::kernels::simd;

/// Widest channel count (in and out) the direct convolution takes (measured: beyond 64 channels
/// the GEMM's wide microkernels win and the direct kernel's weight slice no longer stays in L2).
pub const MAX_CHANNELS: usize = 64;
/// Widest window the direct convolution takes.
pub const MAX_K: usize = 7;

/// An instruction set the kernels are built for. Both compute every sum in the same order, so
/// their results are equal bit for bit (tested); AVX2 runs sixteen channels as two 8-lane halves
/// with smaller register blocks (16 vector registers, not 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16-lane vectors.
    Avx512,
    /// AVX2 with FMA: 8-lane vectors.
    Avx2,
}

impl Isa {
    /// The widest set this CPU runs within `SPARSA_SIMD`'s cap ([`simd`]), if any.
    pub fn best() -> Option<Isa> {
        if simd::avx512() {
            return Some(Isa::Avx512);
        }
        simd::avx2_fma().then_some(Isa::Avx2)
    }

    /// Every set this CPU runs within the cap, widest first (the tests run each).
    pub fn all() -> Vec<Isa> {
        let mut v = Vec::new();
        if simd::avx512() {
            v.push(Isa::Avx512);
        }
        if simd::avx2_fma() {
            v.push(Isa::Avx2);
        }
        v
    }

    /// Whether this CPU runs the set.
    pub fn runs(self) -> bool {
        Isa::all().contains(&self)
    }
}

/// Whether the CPU has the instructions the kernels need (AVX-512F, or AVX2 with FMA).
pub fn available() -> bool {
    Isa::best().is_some()
}

/// Whether the CPU has AVX-512F (the 16-lane builds).
pub fn avx512() -> bool {
    Isa::best() == Some(Isa::Avx512)
}

/// The kernel set this CPU runs: "avx512f" (the direct kernels and the sparse convolution on
/// 16 lanes), "avx2" (the same kernels on 8 lanes: the direct kernels' results are equal bit
/// for bit, the sparse convolution's weight gradient sums in another order) or "portable" (no
/// direct kernels and no sparse convolution: im2col + GEMM and Winograd). Run directories record
/// it (`prune::identity`).
pub fn kernel_set() -> &'static str {
    match Isa::best() {
        Some(Isa::Avx512) => "avx512f",
        Some(Isa::Avx2) => "avx2",
        None => "portable",
    }
}

/// `c` rounded up to a whole number of 16-lane vectors.
pub fn lanes16(c: usize) -> usize {
    c.div_ceil(16) * 16
}

/// Whether `g`'s forward pass (and weight gradient) runs on the direct kernels for element type T.
pub fn forward_applies<T: Real>(g: &ConvGeom) -> bool {
    g.direct
        && T::as_f32(&[]).is_some()
        && g.stride == 1
        && !g.pointwise()
        && g.k <= MAX_K
        && g.pad < g.k
        && g.cout <= MAX_CHANNELS
        && available()
}

/// Whether `g`'s input gradient runs on the direct kernels (the roles of cin and cout swap).
pub fn input_grad_applies<T: Real>(g: &ConvGeom) -> bool {
    forward_applies::<T>(g) && g.cin <= MAX_CHANNELS
}

/// Whether dense linear layers in element type T run [`linear_rows`].
pub fn linear_applies<T: Real>() -> bool {
    T::as_f32(&[]).is_some() && available()
}

/// Elements of one (h, w, c) image with a zero border of `pad` pixels.
pub fn padded_len(h: usize, w: usize, c: usize, pad: usize) -> usize {
    (h + 2 * pad) * (w + 2 * pad) * c
}

/// Copy one (h, w, c) image into `dst` (at least [`padded_len`] long) with a zero border of
/// `pad` pixels, channels last ((h+2p), (w+2p), c): the layout the kernels read.
pub fn pad_image<T: Real>(src: &[T], h: usize, w: usize, c: usize, pad: usize, dst: &mut [T]) {
    let wp = w + 2 * pad;
    let dst = &mut dst[..padded_len(h, w, c, pad)];
    dst[..pad * wp * c].fill(T::zero());
    dst[(pad + h) * wp * c..].fill(T::zero());
    for y in 0..h {
        let row = &mut dst[(y + pad) * wp * c..(y + pad + 1) * wp * c];
        row[..pad * c].fill(T::zero());
        row[(w + pad) * c..].fill(T::zero());
        row[pad * c..(w + pad) * c].copy_from_slice(&src[y * w * c..(y + 1) * w * c]);
    }
}

/// Engine weights (co, tap, ci) of a k×k window → `[tap][ci][co16]` (zero lanes past cout).
pub fn pack_forward<T: Real>(w: &[T], cout: usize, cin: usize, k: usize, dst: &mut Vec<T>) {
    let (kk, c16) = (k * k, lanes16(cout));
    dst.clear();
    dst.resize(kk * cin * c16, T::zero());
    for co in 0..cout {
        for t in 0..kk {
            for ci in 0..cin {
                dst[(t * cin + ci) * c16 + co] = w[(co * kk + t) * cin + ci];
            }
        }
    }
}

/// Engine weights (co, tap, ci) → `[k² − 1 − tap][co][ci16]`: the kernel of the input gradient.
pub fn pack_backward<T: Real>(w: &[T], cout: usize, cin: usize, k: usize, dst: &mut Vec<T>) {
    let (kk, c16) = (k * k, lanes16(cin));
    dst.clear();
    dst.resize(kk * cout * c16, T::zero());
    for co in 0..cout {
        for t in 0..kk {
            let d = ((kk - 1 - t) * cout + co) * c16;
            dst[d..d + cin].copy_from_slice(&w[(co * kk + t) * cin..(co * kk + t + 1) * cin]);
        }
    }
}

/// `[tap][ci][co16]` weight-gradient sums → the engine's (co, tap, ci), assigned.
pub fn unpack_weight_grad<T: Real>(src: &[T], cout: usize, cin: usize, k: usize, dw: &mut [T]) {
    let (kk, c16) = (k * k, lanes16(cout));
    for co in 0..cout {
        for t in 0..kk {
            for ci in 0..cin {
                dw[(co * kk + t) * cin + ci] = src[(t * cin + ci) * c16 + co];
            }
        }
    }
}

/// The shape of one image's direct convolution: `oh × ow` outputs from a padded input of
/// `(oh + k − 1) × (ow + k − 1) × cin`, `cout` output channels.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub oh: usize,
    pub ow: usize,
    pub k: usize,
    pub cin: usize,
    pub cout: usize,
}

impl Window {
    fn padded_len(&self) -> usize {
        (self.oh + self.k - 1) * (self.ow + self.k - 1) * self.cin
    }

    /// The kernels' preconditions: AVX-512F, a supported window, and slices at least as long
    /// as the padded input, the `[tap][ci][co16]` weights (or sums) and the oh·ow·cout output
    /// (or output gradient). The kernels' raw indexing relies on these.
    fn check(&self, padded: usize, weights: usize, out: usize) {
        let Window {
            oh,
            ow,
            k,
            cin,
            cout,
        } = *self;
        assert!(available() && (1..=MAX_K).contains(&k) && cout > 0);
        assert!(padded >= self.padded_len() && weights >= k * k * cin * lanes16(cout));
        assert!(out >= oh * ow * cout);
    }
}

/// One image: y (oh, ow, cout) = the k×k correlation of `xp` ([`pad_image`]) with `wt`
/// ([`pack_forward`]'s `[tap][ci][co16]`), assigned. Requires [`available`].
pub fn conv_image<T: Real>(win: Window, xp: &[T], wt: &[T], y: &mut [T]) {
    conv_image_on(best(), win, xp, wt, y)
}

/// [`conv_image`] on the instruction set `isa` (which the CPU must run).
pub fn conv_image_on<T: Real>(isa: Isa, win: Window, xp: &[T], wt: &[T], y: &mut [T]) {
    let (Some(xp), Some(wt), Some(y)) = (T::as_f32(xp), T::as_f32(wt), T::as_f32_mut(y)) else {
        unreachable!("the direct kernels run only on f32 (forward_applies)")
    };
    assert!(isa.runs(), "this CPU does not run {isa:?}");
    win.check(xp.len(), wt.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU runs `isa` and every index the kernel forms is inside the slices whose
    // lengths `Window::check` asserted (see `avx::conv_image`, `avx2::conv_image`).
    unsafe {
        match isa {
            Isa::Avx512 => avx::conv_image(win, xp.as_ptr(), wt.as_ptr(), y.as_mut_ptr()),
            Isa::Avx2 => avx2::conv_image(win, xp.as_ptr(), wt.as_ptr(), y.as_mut_ptr()),
        }
    }
}

/// One image: `acc[tap][ci][co16] += Σ_p xp[p + tap, ci] · dy[p, co]` over its oh·ow pixels.
/// Requires [`available`].
pub fn weight_grad_image<T: Real>(win: Window, xp: &[T], dy: &[T], acc: &mut [T]) {
    weight_grad_image_on(best(), win, xp, dy, acc)
}

/// [`weight_grad_image`] on the instruction set `isa` (which the CPU must run).
pub fn weight_grad_image_on<T: Real>(isa: Isa, win: Window, xp: &[T], dy: &[T], acc: &mut [T]) {
    let (Some(xp), Some(dy), Some(acc)) = (T::as_f32(xp), T::as_f32(dy), T::as_f32_mut(acc)) else {
        unreachable!("the direct kernels run only on f32 (forward_applies)")
    };
    assert!(isa.runs(), "this CPU does not run {isa:?}");
    win.check(xp.len(), acc.len(), dy.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `conv_image_on`.
    unsafe {
        match isa {
            Isa::Avx512 => avx::weight_grad_image(win, xp.as_ptr(), dy.as_ptr(), acc.as_mut_ptr()),
            Isa::Avx2 => avx2::weight_grad_image(win, xp.as_ptr(), dy.as_ptr(), acc.as_mut_ptr()),
        }
    }
}

/// The widest instruction set; callers have checked [`available`].
fn best() -> Isa {
    Isa::best().expect("the direct kernels need AVX-512F or AVX2 with FMA")
}

/// Engine linear weights (fout × fin) → the panel [`linear_rows`] reads: W̃ = Wᵀ (fin × fout,
/// columns rounded up to 16 with zeros) in strips of 32 columns (the last one 16 or 32), each
/// strip contiguous, row after row, so a kernel walking the inputs of a strip reads memory in
/// order. [`panel_strip`] gives where a column's strip row starts and its width.
pub fn pack_linear<T: Real>(w: &[T], fout: usize, fin: usize, dst: &mut Vec<T>) {
    let f16 = fout.div_ceil(16) * 16;
    dst.clear();
    dst.resize(fin * f16, T::zero());
    // 16 × 16 blocks, so both sides stay in cache.
    for o0 in (0..fout).step_by(16) {
        let (off, ld) = panel_strip(o0, fin, f16);
        for i0 in (0..fin).step_by(16) {
            for o in o0..(o0 + 16).min(fout) {
                for i in i0..(i0 + 16).min(fin) {
                    dst[off + i * ld + (o - o0)] = w[o * fin + i];
                }
            }
        }
    }
}

/// Where column `c` (a multiple of 16) of a [`pack_linear`] panel sits: (offset of input 0,
/// stride between inputs = its strip's width, 32 or 16).
pub fn panel_strip(c: usize, fin: usize, f16: usize) -> (usize, usize) {
    let s0 = c - c % 32;
    (s0 * fin + c % 32, (f16 - s0).min(32))
}

/// y (n × fout) = x (n × fin) · W̃ where `wt` is [`pack_linear`]'s panel of W: rows are taken
/// [`LINEAR_ROWS`] at a time (six on AVX2; copied transposed into `xt`, so their broadcasts are
/// constant offsets) and multiplied with the panel's 32-column strips, each read in order from
/// L2. Requires [`available`].
pub fn linear_rows<T: Real>(
    x: &[T],
    n: usize,
    fin: usize,
    wt: &[T],
    fout: usize,
    xt: &mut Vec<T>,
    y: &mut [T],
) {
    linear_rows_on(best(), x, n, fin, wt, fout, xt, y)
}

/// [`linear_rows`] on the instruction set `isa` (which the CPU must run). On AVX2 the rows are
/// taken in near-equal blocks of at most six, all transposed first, and each 16-column strip of
/// the panel meets every block in turn (the strip stays in L2, which is too small for the whole
/// panel of LeNet-300-100's first layer on such CPUs).
#[allow(clippy::too_many_arguments)]
pub fn linear_rows_on<T: Real>(
    isa: Isa,
    x: &[T],
    n: usize,
    fin: usize,
    wt: &[T],
    fout: usize,
    xt: &mut Vec<T>,
    y: &mut [T],
) {
    let (Some(x), Some(wt), Some(y)) = (T::as_f32(x), T::as_f32(wt), T::as_f32_mut(y)) else {
        unreachable!("the direct kernels run only on f32")
    };
    let f16 = fout.div_ceil(16) * 16;
    assert!(isa.runs(), "this CPU does not run {isa:?}");
    assert!(x.len() >= n * fin && wt.len() >= fin * f16 && y.len() >= n * fout);
    if isa == Isa::Avx2 {
        let rows = LINEAR_ROWS_AVX2;
        let blocks = n.div_ceil(rows);
        xt.resize(blocks * fin * rows, T::zero());
        let xt = T::as_f32_mut(xt).expect("f32");
        for b in 0..blocks {
            let (r0, r1) = (b * n / blocks, (b + 1) * n / blocks);
            let block = &mut xt[b * fin * rows..(b + 1) * fin * rows];
            for (j, r) in (r0..r1).enumerate() {
                for (i, &v) in x[r * fin..(r + 1) * fin].iter().enumerate() {
                    block[i * rows + j] = v;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present (asserted); `xt` holds blocks·fin·rows floats, `wt`
        // fin·f16 and `y` n rows of fout (asserted above; see `avx2::linear_blocks`).
        unsafe {
            avx2::linear_blocks(xt.as_ptr(), n, fin, wt.as_ptr(), fout, y.as_mut_ptr())
        }
        return;
    }
    xt.resize(fin * LINEAR_ROWS, T::zero());
    let xt = T::as_f32_mut(xt).expect("f32");
    for r0 in (0..n).step_by(LINEAR_ROWS) {
        let nb = LINEAR_ROWS.min(n - r0);
        for j in 0..nb {
            for (i, &v) in x[(r0 + j) * fin..(r0 + j + 1) * fin].iter().enumerate() {
                xt[i * LINEAR_ROWS + j] = v;
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (asserted); `xt` holds fin·LINEAR_ROWS floats, `wt`
        // fin·f16, and `y` rows r0..r0+nb of fout (asserted above; see `avx::linear_block`).
        unsafe {
            avx::linear_block(
                xt.as_ptr(),
                nb,
                fin,
                wt.as_ptr(),
                fout,
                y.as_mut_ptr().add(r0 * fout),
            )
        }
    }
}

/// out (cols × rows) = aᵀ for a row-major `a` (rows × cols), in 16 × 16 register blocks
/// (edges scalar); on AVX2 in 8 × 8 ones ([`transpose_strided_f32`]). Returns false, doing
/// nothing, without AVX-512F or AVX2.
pub fn transpose_f32(a: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> bool {
    if !avx512() {
        assert!(a.len() >= rows * cols && out.len() >= rows * cols);
        return transpose_strided_f32(a, cols.max(1), rows, cols, out, rows.max(1));
    }
    assert!(a.len() >= rows * cols && out.len() >= rows * cols);
    let (r16, c16) = (rows / 16 * 16, cols / 16 * 16);
    for r0 in (0..r16).step_by(16) {
        for c0 in (0..c16).step_by(16) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F is present; the block's rows r0..r0+16 and columns c0..c0+16 are
            // inside a (rows × cols) and its transpose inside out (asserted lengths).
            unsafe {
                avx::transpose16(
                    a.as_ptr().add(r0 * cols + c0),
                    cols,
                    out.as_mut_ptr().add(c0 * rows + r0),
                    rows,
                )
            }
        }
    }
    for r in 0..rows {
        let cs = if r < r16 { c16 } else { 0 };
        for c in cs..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    true
}

/// `out[j·ldo + i] = a[i·lda + j]` for i < rows, j < cols: a strided transpose in 16 × 16
/// register blocks (on AVX2: 8 × 8), the edge blocks with lane masks (nothing outside the
/// rows × cols block is read or written). Returns false, doing nothing, without AVX-512F or
/// AVX2.
pub fn transpose_strided_f32(
    a: &[f32],
    lda: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) -> bool {
    let Some(isa) = Isa::best() else {
        return false;
    };
    let avx2 = isa == Isa::Avx2;
    if rows == 0 || cols == 0 {
        return true;
    }
    assert!(lda >= cols && ldo >= rows);
    assert!(a.len() >= (rows - 1) * lda + cols && out.len() >= (cols - 1) * ldo + rows);
    // Blocks of 8 × 8 (AVX2) or 16 × 16 (AVX-512), masked at the edges.
    let b = if avx2 { 8 } else { 16 };
    for r0 in (0..rows).step_by(b) {
        let nr = (rows - r0).min(b);
        for c0 in (0..cols).step_by(b) {
            let nc = (cols - c0).min(b);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` (AVX-512F or AVX2) is present (`Isa::best`); the block
            // reads rows r0..r0+nr, columns c0..c0+nc of `a` and writes rows c0..c0+nc, columns
            // r0..r0+nr of `out`, inside the lengths asserted above (masked lanes are not
            // touched).
            unsafe {
                let (src, dst) = (
                    a.as_ptr().add(r0 * lda + c0),
                    out.as_mut_ptr().add(c0 * ldo + r0),
                );
                if avx2 {
                    avx2::transpose_block(src, lda, nr, nc, dst, ldo)
                } else {
                    avx::transpose_block(src, lda, nr, nc, dst, ldo)
                }
            }
        }
    }
    true
}

/// One NHWC image (h, w, c) max-pooled by k×k windows with stride k into `o` (h/k, w/k, c), the
/// window offset of each maximum in `a` (the first on ties: a later value wins only when
/// greater, as in [`super::kernels::max_pool`]'s portable loop). Requires [`available`].
pub fn max_pool_image(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    o: &mut [f32],
    a: &mut [u8],
) {
    max_pool_image_on(best(), x, h, w, c, k, o, a)
}

/// [`max_pool_image`] on the instruction set `isa` (which the CPU must run).
#[allow(clippy::too_many_arguments)]
pub fn max_pool_image_on(
    isa: Isa,
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    o: &mut [f32],
    a: &mut [u8],
) {
    let (oh, ow) = (h / k, w / k);
    assert!(isa.runs(), "this CPU does not run {isa:?}");
    assert!(k >= 1 && k * k <= 256);
    assert!(x.len() >= h * w * c && o.len() >= oh * ow * c && a.len() >= oh * ow * c);
    let (x, o, a) = (x.as_ptr(), o.as_mut_ptr(), a.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU runs `isa`; every window read is inside the h × w × c image and every
    // write inside the (h/k) × (w/k) × c outputs (asserted above; lane masks cover the tail of c).
    unsafe {
        match isa {
            Isa::Avx512 => avx::max_pool_image(x, w, c, k, oh, ow, o, a),
            Isa::Avx2 => avx2::max_pool_image(x, w, c, k, oh, ow, o, a),
        }
    }
}

/// Rows per register block of [`linear_rows`] (AVX-512: 12 rows × 32 columns, 24 of the 32
/// vector registers accumulate; against 8 rows on a Sapphire Rapids VM, LeNet-300-100
/// evaluation was faster in six of seven alternations, docs/pruning.md; 14 rows did no better).
pub const LINEAR_ROWS: usize = 12;
/// Rows per register block of [`linear_rows`] on AVX2 (6 rows × 16 columns: 12 of the 16 vector
/// registers accumulate).
pub const LINEAR_ROWS_AVX2: usize = 6;

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::Window;

    /// Output pixels per register block with one (two) 16-lane vectors of output channels.
    const PB1: usize = 16;
    const PB2: usize = 8;
    /// Input channels per register block of the weight gradient, for one (two) vectors.
    const CB1: usize = 16;
    const CB2: usize = 8;

    /// Call `$f::<n, $nv[, $extra]>(args)` for a runtime n in 1..=16.
    macro_rules! dispatch {
        ($n:expr, $f:ident, $($c:literal),+; $($arg:expr),*) => {
            match $n {
                1 => $f::<1, $($c),+>($($arg),*),
                2 => $f::<2, $($c),+>($($arg),*),
                3 => $f::<3, $($c),+>($($arg),*),
                4 => $f::<4, $($c),+>($($arg),*),
                5 => $f::<5, $($c),+>($($arg),*),
                6 => $f::<6, $($c),+>($($arg),*),
                7 => $f::<7, $($c),+>($($arg),*),
                8 => $f::<8, $($c),+>($($arg),*),
                9 => $f::<9, $($c),+>($($arg),*),
                10 => $f::<10, $($c),+>($($arg),*),
                11 => $f::<11, $($c),+>($($arg),*),
                12 => $f::<12, $($c),+>($($arg),*),
                13 => $f::<13, $($c),+>($($arg),*),
                14 => $f::<14, $($c),+>($($arg),*),
                15 => $f::<15, $($c),+>($($arg),*),
                16 => $f::<16, $($c),+>($($arg),*),
                _ => unreachable!(),
            }
        };
    }

    /// Lane mask of the first `n` (≤ 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// SAFETY (callers): AVX-512F present; `xp` holds the window's padded input, `wt` k²·cin·co16
    /// and `y` oh·ow·cout floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv_image(win: Window, xp: *const f32, wt: *const f32, y: *mut f32) {
        let Window {
            oh,
            ow,
            k,
            cin,
            cout,
        } = win;
        let c16 = super::lanes16(cout);
        let row = (ow + k - 1) * cin;
        let two = c16.is_multiple_of(32);
        let (nv, pb) = if two { (2, PB2) } else { (1, PB1) };
        for cob in (0..c16).step_by(16 * nv) {
            let valid = cout - cob;
            for oy in 0..oh {
                let mut ox = 0;
                while ox < ow {
                    let nb = pb.min(ow - ox);
                    let x = xp.add((oy * (ow + k - 1) + ox) * cin);
                    let o = y.add((oy * ow + ox) * cout + cob);
                    let wt = wt.add(cob);
                    let g = Geo {
                        row,
                        cin,
                        k,
                        c16,
                        cout,
                        valid,
                    };
                    // The usual channel counts get their own code, so that the pixels' inputs
                    // (cin apart) are constant offsets from one pointer.
                    match (two, cin) {
                        (false, 16) => dispatch!(nb, pixels, 1, 16; x, wt, o, g),
                        (false, 32) => dispatch!(nb, pixels, 1, 32; x, wt, o, g),
                        (false, 64) => dispatch!(nb, pixels, 1, 64; x, wt, o, g),
                        (false, _) => dispatch!(nb, pixels, 1, 0; x, wt, o, g),
                        (true, 16) => dispatch!(nb, pixels, 2, 16; x, wt, o, g),
                        (true, 32) => dispatch!(nb, pixels, 2, 32; x, wt, o, g),
                        (true, 64) => dispatch!(nb, pixels, 2, 64; x, wt, o, g),
                        (true, _) => dispatch!(nb, pixels, 2, 0; x, wt, o, g),
                    }
                    ox += nb;
                }
            }
        }
    }

    /// Strides and sizes the register blocks need.
    #[derive(Clone, Copy)]
    struct Geo {
        /// Padded input row stride (floats).
        row: usize,
        cin: usize,
        k: usize,
        /// Weight row stride: cout rounded up to 16.
        c16: usize,
        /// Output row stride.
        cout: usize,
        /// Output channels left from this block's first one (stores are masked past them).
        valid: usize,
    }

    /// NB consecutive output pixels × NV channel vectors: x points at the first pixel's window
    /// corner, `wt` and `o` are offset to the channel block. CIN is the input channel count when
    /// known at compile time (0: `g.cin`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pixels<const NB: usize, const NV: usize, const CIN: usize>(
        x: *const f32,
        wt: *const f32,
        o: *mut f32,
        g: Geo,
    ) {
        let cin = if CIN > 0 { CIN } else { g.cin };
        let mut acc = [[_mm512_setzero_ps(); NV]; NB];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let xr = x.add(ky * g.row + kx * cin);
                let wr = wt.add((ky * g.k + kx) * cin * g.c16);
                for ci in 0..cin {
                    let mut wv = [_mm512_setzero_ps(); NV];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(wr.add(ci * g.c16 + 16 * v));
                    }
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*xr.add(j * cin + ci));
                        for v in 0..NV {
                            acc[v] = _mm512_fmadd_ps(xv, wv[v], acc[v]);
                        }
                    }
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                let left = g.valid.saturating_sub(16 * v);
                let p = o.add(j * g.cout + 16 * v);
                if left >= 16 {
                    _mm512_storeu_ps(p, a);
                } else if left > 0 {
                    _mm512_mask_storeu_ps(p, lanes(left), a);
                }
            }
        }
    }

    /// SAFETY (callers): AVX-512F present; `xp` holds the window's padded input, `dy` oh·ow·cout
    /// and `acc` k²·cin·co16 floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad_image(
        win: Window,
        xp: *const f32,
        dy: *const f32,
        acc: *mut f32,
    ) {
        let Window {
            oh,
            ow,
            k,
            cin,
            cout,
        } = win;
        let c16 = super::lanes16(cout);
        let two = c16.is_multiple_of(32);
        let (nv, cb) = if two { (2, CB2) } else { (1, CB1) };
        for t in 0..k * k {
            let (ky, kx) = (t / k, t % k);
            for cob in (0..c16).step_by(16 * nv) {
                let m = [lanes(cout - cob), lanes((cout - cob).saturating_sub(16))];
                let mut ci = 0;
                while ci < cin {
                    let nc = cb.min(cin - ci);
                    let x = xp.add((ky * (ow + k - 1) + kx) * cin + ci);
                    let a = acc.add((t * cin + ci) * c16 + cob);
                    let d = dy.add(cob);
                    let g = Grad {
                        oh,
                        ow,
                        k,
                        cin,
                        cout,
                        c16,
                        m,
                    };
                    if two {
                        dispatch!(nc, channels, 2; x, d, a, g);
                    } else {
                        dispatch!(nc, channels, 1; x, d, a, g);
                    }
                    ci += nc;
                }
            }
        }
    }

    /// Sizes and lane masks of a weight-gradient block.
    #[derive(Clone, Copy)]
    struct Grad {
        oh: usize,
        ow: usize,
        k: usize,
        cin: usize,
        cout: usize,
        c16: usize,
        /// Lanes of the block's two output-channel vectors that are inside cout.
        m: [__mmask16; 2],
    }

    /// NC input channels × NV output-channel vectors of one tap, summed over every pixel.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn channels<const NC: usize, const NV: usize>(
        x: *const f32,
        dy: *const f32,
        a: *mut f32,
        g: Grad,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; NC];
        for (c, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(a.add(c * g.c16 + 16 * v));
            }
        }
        let row = (g.ow + g.k - 1) * g.cin;
        for oy in 0..g.oh {
            let xr = x.add(oy * row);
            let dr = dy.add(oy * g.ow * g.cout);
            for ox in 0..g.ow {
                let mut d = [_mm512_setzero_ps(); NV];
                for (v, d) in d.iter_mut().enumerate() {
                    *d = _mm512_maskz_loadu_ps(g.m[v], dr.add(ox * g.cout + 16 * v));
                }
                for (c, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xr.add(ox * g.cin + c));
                    for v in 0..NV {
                        acc[v] = _mm512_fmadd_ps(xv, d[v], acc[v]);
                    }
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            for (v, &s) in acc.iter().enumerate() {
                _mm512_storeu_ps(a.add(c * g.c16 + 16 * v), s);
            }
        }
    }

    /// SAFETY (callers): AVX-512F present; `x` an image of at least (oh·k) × w × c floats with
    /// w ≥ ow·k, `o` and `a` oh·ow·c elements.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_pool_image(
        x: *const f32,
        w: usize,
        c: usize,
        k: usize,
        oh: usize,
        ow: usize,
        o: *mut f32,
        a: *mut u8,
    ) {
        for oy in 0..oh {
            for ox in 0..ow {
                let ob = (oy * ow + ox) * c;
                let corner = (oy * k * w + ox * k) * c;
                for j in (0..c).step_by(16) {
                    let m = lanes(c - j);
                    let mut best = _mm512_maskz_loadu_ps(m, x.add(corner + j));
                    let mut code = _mm512_setzero_si512();
                    for t in 1..k * k {
                        let s = corner + (t / k * w + t % k) * c + j;
                        let v = _mm512_maskz_loadu_ps(m, x.add(s));
                        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                        best = _mm512_mask_mov_ps(best, gt, v);
                        code = _mm512_mask_mov_epi32(code, gt, _mm512_set1_epi32(t as i32));
                    }
                    _mm512_mask_storeu_ps(o.add(ob + j), m, best);
                    _mm512_mask_cvtepi32_storeu_epi8(a.add(ob + j) as *mut i8, m, code);
                }
            }
        }
    }

    /// Transpose the 16 × 16 block at `a` (row stride `lda`) into `o` (row stride `ldo`).
    /// SAFETY (callers): AVX-512F present; both blocks in bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(a: *const f32, lda: usize, o: *mut f32, ldo: usize) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, r) in r.iter_mut().enumerate() {
            *r = _mm512_loadu_ps(a.add(i * lda));
        }
        transpose_regs(&mut r);
        for (i, r) in r.iter().enumerate() {
            _mm512_storeu_ps(o.add(i * ldo), *r);
        }
    }

    /// [`transpose16`] of the top-left nr × nc corner (nr, nc ≤ 16): rows past nr are not read,
    /// lanes past nc are masked on load and lanes past nr on store.
    /// SAFETY (callers): AVX-512F present; the nr × nc block at `a` and the nc × nr block at `o`
    /// in bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_block(
        a: *const f32,
        lda: usize,
        nr: usize,
        nc: usize,
        o: *mut f32,
        ldo: usize,
    ) {
        if nr == 16 && nc == 16 {
            return transpose16(a, lda, o, ldo);
        }
        let (lm, sm) = (lanes(nc), lanes(nr));
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, r) in r.iter_mut().enumerate().take(nr) {
            *r = _mm512_maskz_loadu_ps(lm, a.add(i * lda));
        }
        transpose_regs(&mut r);
        for (i, r) in r.iter().enumerate().take(nc) {
            _mm512_mask_storeu_ps(o.add(i * ldo), sm, *r);
        }
    }

    /// Sixteen rows of sixteen lanes transposed in registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose_regs(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for q in 0..4 {
            let b = 4 * q;
            r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
            r[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
            r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
        }
        for h in 0..2 {
            let b = 8 * h;
            for i in 0..4 {
                t[b + i] = _mm512_shuffle_f32x4::<0x88>(r[b + i], r[b + i + 4]);
                t[b + i + 4] = _mm512_shuffle_f32x4::<0xDD>(r[b + i], r[b + i + 4]);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
            r[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
        }
    }

    /// SAFETY (callers): AVX-512F present; `xt` holds fin·LINEAR_ROWS floats (row j of the
    /// block at lane j of each group of LINEAR_ROWS), `wt` the `pack_linear` panel (fin·f16
    /// floats in column strips), `y` nb rows of fout.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn linear_block(
        xt: *const f32,
        nb: usize,
        fin: usize,
        wt: *const f32,
        fout: usize,
        y: *mut f32,
    ) {
        let f16 = fout.div_ceil(16) * 16;
        let mut c = 0;
        while c < f16 {
            let two = c + 32 <= f16;
            // Columns past fout are computed (zero weights) but not stored.
            let valid = (fout - c).min(if two { 32 } else { 16 });
            let (off, ld) = super::panel_strip(c, fin, f16);
            if two {
                dispatch!(nb, strip, 2; xt, fin, wt.add(off), ld, y.add(c), fout, valid);
            } else {
                dispatch!(nb, strip, 1; xt, fin, wt.add(off), ld, y.add(c), fout, valid);
            }
            c += if two { 32 } else { 16 };
        }
    }

    /// NB rows × NV 16-column vectors of the panel, over all fin inputs; stores the first
    /// `valid` columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn strip<const NB: usize, const NV: usize>(
        xt: *const f32,
        fin: usize,
        wt: *const f32,
        ld: usize,
        y: *mut f32,
        fout: usize,
        valid: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; NB];
        for i in 0..fin {
            let mut wv = [_mm512_setzero_ps(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_ps(wt.add(i * ld + 16 * v));
            }
            let xr = xt.add(i * super::LINEAR_ROWS);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xr.add(j));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(xv, wv[v], acc[v]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                let left = valid.saturating_sub(16 * v).min(16);
                let o = y.add(j * fout + 16 * v);
                if left == 16 {
                    _mm512_storeu_ps(o, a);
                } else if left > 0 {
                    _mm512_mask_storeu_ps(o, lanes(left), a);
                }
            }
        }
    }
}

/// The kernels on AVX2 with FMA: each 16-channel vector of the AVX-512 build is two 8-lane
/// halves, and the register blocks shrink to fit 16 vector registers (6 pixels, input channels
/// or rows × 16 channels: 12 accumulators, 2 weight vectors, 1 broadcast). Every sum runs in the
/// AVX-512 build's order, so results are equal bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Window;

    /// Output pixels (input channels, rows) per register block.
    const PB: usize = 6;

    /// Call `$f::<n[, $extra]>(args)` for a runtime n in 1..=6.
    macro_rules! dispatch {
        ($n:expr, $f:ident $(, $c:literal)*; $($arg:expr),*) => {
            match $n {
                1 => $f::<1 $(, $c)*>($($arg),*),
                2 => $f::<2 $(, $c)*>($($arg),*),
                3 => $f::<3 $(, $c)*>($($arg),*),
                4 => $f::<4 $(, $c)*>($($arg),*),
                5 => $f::<5 $(, $c)*>($($arg),*),
                6 => $f::<6 $(, $c)*>($($arg),*),
                _ => unreachable!(),
            }
        };
    }

    /// Sizes of `n` items split into near-equal blocks of at most [`PB`]: (start, len) pairs.
    fn blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
        let b = n.div_ceil(PB);
        (0..b).map(move |i| (i * n / b, (i + 1) * n / b - i * n / b))
    }

    /// Store the first `valid` lanes (of 16) of the pair `a` at `p`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store16(p: *mut f32, a: [__m256; 2], valid: usize) {
        for (h, &a) in a.iter().enumerate() {
            let left = valid.saturating_sub(8 * h);
            if left >= 8 {
                _mm256_storeu_ps(p.add(8 * h), a);
            } else if left > 0 {
                _mm256_maskstore_ps(p.add(8 * h), lanes(left), a);
            }
        }
    }

    /// SAFETY (callers): AVX2 and FMA present; `xp` holds the window's padded input, `wt`
    /// k²·cin·co16 and `y` oh·ow·cout floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv_image(win: Window, xp: *const f32, wt: *const f32, y: *mut f32) {
        let Window {
            oh,
            ow,
            k,
            cin,
            cout,
        } = win;
        let c16 = super::lanes16(cout);
        let row = (ow + k - 1) * cin;
        for cob in (0..c16).step_by(16) {
            let g = Geo {
                row,
                cin,
                k,
                c16,
                cout,
                valid: cout - cob,
            };
            for oy in 0..oh {
                for (ox, nb) in blocks(ow) {
                    let x = xp.add((oy * (ow + k - 1) + ox) * cin);
                    let o = y.add((oy * ow + ox) * cout + cob);
                    let wt = wt.add(cob);
                    match cin {
                        16 => dispatch!(nb, pixels, 16; x, wt, o, g),
                        32 => dispatch!(nb, pixels, 32; x, wt, o, g),
                        64 => dispatch!(nb, pixels, 64; x, wt, o, g),
                        _ => dispatch!(nb, pixels, 0; x, wt, o, g),
                    }
                }
            }
        }
    }

    /// Strides and sizes of a forward block (as in the AVX-512 build).
    #[derive(Clone, Copy)]
    struct Geo {
        row: usize,
        cin: usize,
        k: usize,
        c16: usize,
        cout: usize,
        valid: usize,
    }

    /// NB consecutive output pixels × 16 channels (CIN: the input channel count when known at
    /// compile time, 0: `g.cin`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pixels<const NB: usize, const CIN: usize>(
        x: *const f32,
        wt: *const f32,
        o: *mut f32,
        g: Geo,
    ) {
        let cin = if CIN > 0 { CIN } else { g.cin };
        let mut acc = [[_mm256_setzero_ps(); 2]; NB];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let xr = x.add(ky * g.row + kx * cin);
                let wr = wt.add((ky * g.k + kx) * cin * g.c16);
                for ci in 0..cin {
                    let w0 = _mm256_loadu_ps(wr.add(ci * g.c16));
                    let w1 = _mm256_loadu_ps(wr.add(ci * g.c16 + 8));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_broadcast_ss(&*xr.add(j * cin + ci));
                        acc[0] = _mm256_fmadd_ps(xv, w0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(xv, w1, acc[1]);
                    }
                }
            }
        }
        for (j, &acc) in acc.iter().enumerate() {
            store16(o.add(j * g.cout), acc, g.valid);
        }
    }

    /// SAFETY (callers): AVX2 and FMA present; `xp` holds the window's padded input, `dy`
    /// oh·ow·cout and `acc` k²·cin·co16 floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad_image(
        win: Window,
        xp: *const f32,
        dy: *const f32,
        acc: *mut f32,
    ) {
        let Window {
            oh,
            ow,
            k,
            cin,
            cout,
        } = win;
        let c16 = super::lanes16(cout);
        for t in 0..k * k {
            let (ky, kx) = (t / k, t % k);
            for cob in (0..c16).step_by(16) {
                let valid = cout - cob;
                let g = Grad {
                    oh,
                    ow,
                    k,
                    cin,
                    cout,
                    c16,
                    full: valid >= 16,
                    m: [lanes(valid), lanes(valid.saturating_sub(8))],
                };
                for (ci, nc) in blocks(cin) {
                    let x = xp.add((ky * (ow + k - 1) + kx) * cin + ci);
                    let a = acc.add((t * cin + ci) * c16 + cob);
                    dispatch!(nc, channels; x, dy.add(cob), a, g);
                }
            }
        }
    }

    /// Sizes and lane masks of a weight-gradient block.
    #[derive(Clone, Copy)]
    struct Grad {
        oh: usize,
        ow: usize,
        k: usize,
        cin: usize,
        cout: usize,
        c16: usize,
        /// All sixteen output channels of the block are inside cout (no masks).
        full: bool,
        /// Lanes of the block's two halves that are inside cout.
        m: [__m256i; 2],
    }

    /// NC input channels × 16 output channels of one tap, summed over every pixel.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn channels<const NC: usize>(x: *const f32, dy: *const f32, a: *mut f32, g: Grad) {
        let mut acc = [[_mm256_setzero_ps(); 2]; NC];
        for (c, acc) in acc.iter_mut().enumerate() {
            for (h, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(a.add(c * g.c16 + 8 * h));
            }
        }
        let row = (g.ow + g.k - 1) * g.cin;
        for oy in 0..g.oh {
            let xr = x.add(oy * row);
            let dr = dy.add(oy * g.ow * g.cout);
            for ox in 0..g.ow {
                let p = dr.add(ox * g.cout);
                let d = if g.full {
                    [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
                } else {
                    [
                        _mm256_maskload_ps(p, g.m[0]),
                        _mm256_maskload_ps(p.add(8), g.m[1]),
                    ]
                };
                for (c, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xr.add(ox * g.cin + c));
                    acc[0] = _mm256_fmadd_ps(xv, d[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(xv, d[1], acc[1]);
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            for (h, &s) in acc.iter().enumerate() {
                _mm256_storeu_ps(a.add(c * g.c16 + 8 * h), s);
            }
        }
    }

    /// SAFETY (callers): AVX2 and FMA present; `xt` holds ⌈n/6⌉ blocks of fin × 6 floats (row j
    /// of block b at lane j of each group of 6; blocks split n near-equally), `wt` the
    /// `pack_linear` panel (fin·f16 floats in column strips), `y` n rows of fout.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn linear_blocks(
        xt: *const f32,
        n: usize,
        fin: usize,
        wt: *const f32,
        fout: usize,
        y: *mut f32,
    ) {
        let f16 = fout.div_ceil(16) * 16;
        for c in (0..f16).step_by(16) {
            // Columns past fout are computed (zero weights) but not stored.
            let valid = (fout - c).min(16);
            let (off, ld) = super::panel_strip(c, fin, f16);
            for (b, (r0, nb)) in blocks(n).enumerate() {
                let x = xt.add(b * fin * PB);
                let o = y.add(r0 * fout + c);
                dispatch!(nb, strip; x, fin, wt.add(off), ld, o, fout, valid);
            }
        }
    }

    /// NB rows × 16 columns of the panel over all fin inputs; stores the first `valid` columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn strip<const NB: usize>(
        xt: *const f32,
        fin: usize,
        wt: *const f32,
        ld: usize,
        y: *mut f32,
        fout: usize,
        valid: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; NB];
        for i in 0..fin {
            let w0 = _mm256_loadu_ps(wt.add(i * ld));
            let w1 = _mm256_loadu_ps(wt.add(i * ld + 8));
            let xr = xt.add(i * PB);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xr.add(j));
                acc[0] = _mm256_fmadd_ps(xv, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(xv, w1, acc[1]);
            }
        }
        for (j, &acc) in acc.iter().enumerate() {
            store16(y.add(j * fout), acc, valid);
        }
    }

    /// SAFETY (callers): AVX2 present; `x` an image of at least (oh·k) × w × c floats with
    /// w ≥ ow·k, `o` and `a` oh·ow·c elements.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_pool_image(
        x: *const f32,
        w: usize,
        c: usize,
        k: usize,
        oh: usize,
        ow: usize,
        o: *mut f32,
        a: *mut u8,
    ) {
        for oy in 0..oh {
            for ox in 0..ow {
                let ob = (oy * ow + ox) * c;
                let corner = (oy * k * w + ox * k) * c;
                for j in (0..c).step_by(8) {
                    let n = (c - j).min(8);
                    let m = lanes(n);
                    let load = |s: usize| {
                        if n == 8 {
                            _mm256_loadu_ps(x.add(s))
                        } else {
                            _mm256_maskload_ps(x.add(s), m)
                        }
                    };
                    let mut best = load(corner + j);
                    let mut code = _mm256_setzero_ps();
                    for t in 1..k * k {
                        let v = load(corner + (t / k * w + t % k) * c + j);
                        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best);
                        best = _mm256_blendv_ps(best, v, gt);
                        let tv = _mm256_castsi256_ps(_mm256_set1_epi32(t as i32));
                        code = _mm256_blendv_ps(code, tv, gt);
                    }
                    let mut codes = [0i32; 8];
                    _mm256_storeu_si256(codes.as_mut_ptr().cast(), _mm256_castps_si256(code));
                    if n == 8 {
                        _mm256_storeu_ps(o.add(ob + j), best);
                    } else {
                        _mm256_maskstore_ps(o.add(ob + j), m, best);
                    }
                    for (l, &t) in codes.iter().enumerate().take(n) {
                        *a.add(ob + j + l) = t as u8;
                    }
                }
            }
        }
    }

    /// Lane mask of the first `n` (≤ 8) lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The top-left nr × nc corner (nr, nc ≤ 8) of the block at `a` (row stride `lda`),
    /// transposed into `o` (row stride `ldo`): rows past nr are not read, lanes past nc are
    /// masked on load and lanes past nr on store.
    /// SAFETY (callers): AVX2 present; the nr × nc block at `a` and the nc × nr block at `o`
    /// in bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_block(
        a: *const f32,
        lda: usize,
        nr: usize,
        nc: usize,
        o: *mut f32,
        ldo: usize,
    ) {
        let full = nr == 8 && nc == 8;
        let (lm, sm) = (lanes(nc), lanes(nr));
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, r) in r.iter_mut().enumerate().take(nr) {
            *r = if full {
                _mm256_loadu_ps(a.add(i * lda))
            } else {
                _mm256_maskload_ps(a.add(i * lda), lm)
            };
        }
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let q = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let c = [
            _mm256_permute2f128_ps::<0x20>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x20>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x20>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x20>(q[3], q[7]),
            _mm256_permute2f128_ps::<0x31>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x31>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x31>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x31>(q[3], q[7]),
        ];
        for (i, c) in c.iter().enumerate().take(nc) {
            if full {
                _mm256_storeu_ps(o.add(i * ldo), *c);
            } else {
                _mm256_maskstore_ps(o.add(i * ldo), sm, *c);
            }
        }
    }
}
