//! What the fused engine's kernels share: the float types it runs in, the geometry of a
//! convolution (shapes, im2col tiling), and the splitting of work into groups of images with
//! partial sums added in group order. The kernels that use them are in `kernels` (im2col +
//! GEMM), `direct` (AVX-512 direct convolution), `winograd` and `sparse_conv`.

use rayon::prelude::*;

/// The float types the engine runs in: f32 for training, f64 for gradient checks.
/// (`zero`/`one` come from `num_traits` through `WithDType`.)
pub trait Real: candle_core::WithDType + Default {
    /// The slice as f32 when the type is f32 (the direct convolution kernels are f32 only).
    fn as_f32(_v: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_v: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}
impl Real for f32 {
    fn as_f32(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32_mut(v: &mut [f32]) -> Option<&mut [f32]> {
        Some(v)
    }
}
impl Real for f64 {}

/// Geometry of a 2-D convolution over NHWC input: (n, h, w, cin) → (n, oh, ow, cout), a k×k
/// window with stride and zero padding. The weight is (cout, k, k, cin) row-major, i.e. the
/// (cout × k·k·cin) matrix the GEMM multiplies im2col rows with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
    /// Allow the direct kernels ([`super::direct`]) and Winograd where they apply (default
    /// true; false forces im2col + GEMM, the oracle the tests compare them with).
    pub direct: bool,
    /// Output channels above which a 3×3 stride-1 padding-1 layer runs the Winograd kernels
    /// (the `winograd` module, forward, input and weight gradient; only when `direct` is true;
    /// default [`WINOGRAD_ABOVE`], `usize::MAX` never).
    pub winograd_above: usize,
}

/// Output channels above which a 3×3 stride-1 padding-1 layer runs the Winograd kernels by
/// default (the direct kernels take up to 64 and are faster there; measured in
/// docs/pruning.md, "Winograd").
pub const WINOGRAD_ABOVE: usize = 64;

/// Elements of an im2col tile (≈1 MiB of f32): rows per tile = this / (k·k·cin), at least
/// [`MIN_TILE_ROWS`].
const TILE_ELEMS: usize = 1 << 18;
pub(crate) const MIN_TILE_ROWS: usize = 64;

impl ConvGeom {
    /// `None` when the window does not fit the padded input or the stride is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<ConvGeom> {
        if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(ConvGeom {
            n,
            h,
            w,
            cin,
            cout,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
            direct: true,
            winograd_above: WINOGRAD_ABOVE,
        })
    }

    pub fn ckk(&self) -> usize {
        self.k * self.k * self.cin
    }
    /// Output positions per image.
    pub fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    pub fn rows(&self) -> usize {
        self.n * self.ohw()
    }
    pub fn in_len(&self) -> usize {
        self.n * self.h * self.w * self.cin
    }
    pub fn out_len(&self) -> usize {
        self.rows() * self.cout
    }
    /// A 1×1, stride-1, unpadded convolution: the input matrix is its own im2col.
    pub fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Rows per im2col tile: about [`TILE_ELEMS`] elements, but never fewer rows than output
    /// channels. Every tile's GEMM packs the whole weight (cout × ckk) and the weight-gradient
    /// GEMM reads and writes the whole dW, so a tile with fewer rows than cout would spend more
    /// on the weight than on its own rows (VGG's 512-channel layers: 64-row tiles repacked 9 MB of
    /// weight per 64 rows).
    pub fn tile_rows(&self) -> usize {
        (TILE_ELEMS / self.ckk().max(1))
            .max(self.cout)
            .max(MIN_TILE_ROWS)
    }
    /// Scratch elements one group needs.
    pub fn scratch_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.tile_rows() * self.ckk()
        }
    }
}

/// Contiguous ranges cutting `items` into `groups` parts (some empty when items < groups).
pub fn group_ranges(items: usize, groups: usize) -> Vec<std::ops::Range<usize>> {
    let g = groups.max(1);
    (0..g).map(|i| i * items / g..(i + 1) * items / g).collect()
}

/// Split `data` (items of `unit` elements each) along `ranges` (contiguous, in order).
pub fn split_by<'a, T>(
    mut data: &'a mut [T],
    ranges: &[std::ops::Range<usize>],
    unit: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = data.split_at_mut(r.len() * unit);
        out.push(head);
        data = tail;
    }
    out
}

/// out = Σ_g parts[g] over the groups marked used, in group order (0 when none is).
pub fn sum_parts<T: Real>(out: &mut [T], parts: &[Vec<T>], used: &[bool]) {
    const CH: usize = 4096;
    out.par_chunks_mut(CH).enumerate().for_each(|(ci, o)| {
        o.fill(T::zero());
        for (p, &u) in parts.iter().zip(used) {
            if u {
                let len = o.len();
                for (a, &b) in o.iter_mut().zip(&p[ci * CH..ci * CH + len]) {
                    *a += b;
                }
            }
        }
    });
}
