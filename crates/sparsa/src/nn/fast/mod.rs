//! The fused CPU engine for image classifiers: the same forward pass, cross-entropy, gradients,
//! batch-norm running statistics and masked SGD as the candle path ([`super::models::Net`] +
//! autograd + [`super::optim::Sgd`]), which stays as its tested reference.
//!
//! A [`FastNet`] is compiled from a [`Net`]'s op list into units, each with an explicit forward
//! and backward pass and its own buffers, reused from step to step (no autograd tape):
//! - **conv unit**: conv (+ bias) (→ batch norm) (→ ReLU). Activations are channels-last (NHWC),
//!   so a conv is a GEMM of im2col rows with the (cout × k·k·cin) weight matrix
//!   ([`crate::kernels::matmul::gemm_into`]), built tile by tile (≈1 MiB of im2col at a time,
//!   never the batch's whole k²-expanded matrix); a 1×1 stride-1 conv is one plain GEMM. The
//!   bias, ReLU and dead-unit count (or the batch-norm statistics) run on each output tile while
//!   it is in cache; batch norm + ReLU is then one pass. Backward: batch norm + ReLU in two
//!   passes, then per tile ∂W += dyᵀ·im2col(x) and dx += col2im(dy·W). Stride-1 convolutions
//!   of at most 64 channels run the direct AVX-512 kernels instead ([`direct`]: no im2col);
//!   3×3 stride-1 padding-1 convolutions with more output channels run Winograd F(2×2, 3×3)
//!   forward, input gradient and weight gradient ([`winograd`]: 16 instead of 36 multiply-adds
//!   per 2×2 outputs).
//!   Masked stride-1 convolutions whose density × wasted positions is below
//!   [`SPARSE_CONV_BELOW`] run [`sparse_conv`] (work in proportion to the kept weights; the
//!   weight gradient on the mask's support, SGD over the support only).
//! - **linear unit**: `x Wᵀ + b` (→ ReLU), one GEMM each way; evaluation runs [`direct`]'s
//!   product on a Wᵀ panel packed once per weight generation (`FastNet::gen`).
//! - max pooling (arg-max recorded), global average pooling, the residual join
//!   `relu(main + shortcut)` with counting, and softmax cross-entropy with its gradient.
//! - masked SGD fused per parameter: `g ← (g + λw)⊙m, v ← (μv + g)⊙m, w ← (w − ηv)⊙m`, so a
//!   pruned weight stays exactly 0.
//!
//! Weights live here in the engine's own layout (conv (o, ky, kx, ci); the first linear layer
//! after a flatten has its columns in (y, x, c) order); [`FastNet::write_back`] puts them back
//! into the [`Net`] in candle's layout.
//!
//! Dead-neuron counting is folded into the ReLU passes ([`FastNet::set_counting`]); per-unit
//! counts are kept in channels-last unit order (only the count of always-dead units is read from
//! them).
//!
//! Determinism: work is split into one group of images per rayon thread, each GEMM inside a
//! group runs on that thread with fixed tile boundaries, and partial sums are combined in group
//! order; a step is bit-reproducible for a given thread count and kernel set
//! ([`direct::kernel_set`]; tested on one thread).

pub mod direct;
pub mod geom;
pub mod kernels;
pub mod sparse_conv;
pub mod winograd;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use self::kernels::{ConvGeom, GroupAcc, Real};
use super::models::{Arch, InputSpec, Mode, Net, Op};
use super::optim::SgdConfig;
use super::{NnError, Result};
use crate::kernels::matmul::{gemm_into, Operand};

/// What the ReLU passes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    Off,
    /// Dead units per layer (dynamic DNR).
    Dynamic,
    /// Also per unit, for the static dead rate.
    Static,
}

/// Dead-unit counts of one ReLU layer over the batches since the last [`FastNet::take_counts`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReluCount {
    /// Units per sample.
    pub units: usize,
    pub samples: u64,
    /// Σ over samples of the units whose output was exactly 0.
    pub dead: u64,
    /// Per unit (channels-last order): samples on which it was 0 (empty unless `Static`).
    pub per_unit: Vec<u64>,
}

/// Loss and accuracy of one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy.
    pub loss: f64,
    pub correct: usize,
}

/// How a parameter's engine layout maps to candle's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PLayout {
    Plain,
    /// candle (o, i, ky, kx) ↔ engine (o, ky, kx, i).
    Conv {
        o: usize,
        i: usize,
        k: usize,
    },
    /// candle columns (c, y, x) ↔ engine columns (y, x, c).
    LinearHwc {
        out: usize,
        c: usize,
        h: usize,
        w: usize,
    },
}

impl PLayout {
    /// Engine index of candle index `r`.
    fn fast_index(self, r: usize) -> usize {
        match self {
            PLayout::Plain => r,
            PLayout::Conv { i, k, .. } => {
                let (o, rest) = (r / (i * k * k), r % (i * k * k));
                let (ci, ky, kx) = (rest / (k * k), rest / k % k, rest % k);
                ((o * k + ky) * k + kx) * i + ci
            }
            PLayout::LinearHwc { c, h, w, .. } => {
                let cols = c * h * w;
                let (o, j) = (r / cols, r % cols);
                let (ch, y, x) = (j / (h * w), j / w % h, j % w);
                o * cols + (y * w + x) * c + ch
            }
        }
    }
    fn to_fast<T: Copy>(self, v: &[T]) -> Vec<T> {
        let mut out = v.to_vec();
        for (r, &x) in v.iter().enumerate() {
            out[self.fast_index(r)] = x;
        }
        out
    }
    fn to_ref<T: Copy>(self, v: &[T]) -> Vec<T> {
        (0..v.len()).map(|r| v[self.fast_index(r)]).collect()
    }
}

struct Slot<T> {
    layout: PLayout,
    shape: Vec<usize>,
    w: Vec<T>,
    mask: Option<Vec<T>>,
    /// Flat indices of the mask's support when the layer runs sparse kernels: SGD then updates
    /// only these (the others are 0 in w, the momentum and the update).
    support: Option<Vec<u32>>,
    /// Momentum buffer (empty before the first step).
    mom: Vec<T>,
}

impl<T: Real> Slot<T> {
    /// `sparse`: SGD touches only the mask's support (the weight's layer runs sparse kernels,
    /// whose gradient is 0 off it); the rest of the weight and momentum is made exactly 0 now,
    /// as the dense path's first masked update would. Otherwise SGD runs over the whole tensor.
    fn restrict_sgd(&mut self, sparse: bool) {
        self.support = None;
        let (true, Some(m)) = (sparse, self.mask.as_deref()) else {
            return;
        };
        for (w, &m) in self.w.iter_mut().zip(m) {
            *w *= m;
        }
        for (v, &m) in self.mom.iter_mut().zip(m) {
            *v *= m;
        }
        self.support = Some(support_of(m));
    }
}

struct BnRun<T> {
    gamma: usize,
    beta: usize,
    mean: Vec<T>,
    var: Vec<T>,
}

/// Per-thread-group scratch shared by all units.
struct Shared<T> {
    /// Weights packed or transformed for the dense conv kernels ([`direct`], [`winograd`]):
    /// every pass rebuilds them before use, so the layers share one buffer.
    pack: Vec<T>,
    scratch: Vec<Vec<T>>,
    accs: Vec<GroupAcc>,
    parts: Vec<Vec<T>>,
}

struct Fwd<'a, T> {
    p: &'a [Slot<T>],
    bns: &'a mut [BnRun<T>],
    counts: &'a mut [ReluCount],
    counting: Counting,
    train: bool,
    eps: f64,
    momentum: f64,
    /// [`FastNet`]'s weight generation: packed copies made at another generation are stale.
    gen: u64,
    sh: &'a mut Shared<T>,
}

struct Bwd<'a, T> {
    p: &'a [Slot<T>],
    bns: &'a [BnRun<T>],
    grads: &'a mut [Vec<T>],
    sh: &'a mut Shared<T>,
}

fn reset_accs(accs: &mut [GroupAcc], c: usize, counting: Counting, units: usize) {
    for a in accs {
        a.reset(c, (counting == Counting::Static).then_some(units));
    }
}

fn record(fw: &mut Fwd<'_, impl Real>, relu: usize, units: usize, n: usize) {
    if fw.counting == Counting::Off {
        return;
    }
    let rc = &mut fw.counts[relu];
    rc.units = units;
    rc.samples += n as u64;
    for a in fw.sh.accs.iter() {
        rc.dead += a.dead;
        if fw.counting == Counting::Static && a.per_unit.len() == units {
            if rc.per_unit.len() != units {
                rc.per_unit = vec![0; units];
            }
            for (d, &s) in rc.per_unit.iter_mut().zip(&a.per_unit) {
                *d += s;
            }
        }
    }
}

/// Bias add and optional ReLU with counting on a tile of `c`-wide rows.
#[inline]
fn bias_relu<T: Real>(
    acc: &mut GroupAcc,
    tile: &mut [T],
    bias: Option<&[T]>,
    relu: bool,
    c: usize,
    row0: usize,
    rows_per_sample: usize,
) {
    if let Some(b) = bias {
        for row in tile.chunks_exact_mut(c) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    if relu {
        kernels::relu_count(acc, tile, c, row0, rows_per_sample);
    }
}

struct ConvUnit<T> {
    geom: ConvGeom,
    w: usize,
    b: Option<usize>,
    bn: Option<usize>,
    relu: Option<usize>,
    need_gin: bool,
    z: Vec<T>,
    out: Vec<T>,
    gin: Vec<T>,
    mean: Vec<T>,
    inv: Vec<T>,
    /// The mask's kept weights when the layer runs the sparse kernels.
    sparse: Option<Box<sparse_conv::SparseConv>>,
}

/// [`ConvGeom::forward`], or the sparse kernels when the layer has them.
#[allow(clippy::too_many_arguments)]
fn conv_forward<T: Real>(
    g: &ConvGeom,
    sparse: &mut Option<Box<sparse_conv::SparseConv>>,
    x: &[T],
    w: &[T],
    y: &mut [T],
    sh: &mut Shared<T>,
    epi: &(dyn Fn(&mut GroupAcc, usize, &mut [T]) + Sync),
) {
    match sparse {
        Some(s) => s.forward(g, x, w, y, &mut sh.accs, epi),
        None => g.forward(x, w, y, &mut sh.pack, &mut sh.scratch, &mut sh.accs, epi),
    }
}

impl<T: Real> ConvUnit<T> {
    fn forward(&mut self, x: &[T], n: usize, fw: &mut Fwd<'_, T>) {
        let g = ConvGeom { n, ..self.geom };
        let (c, ohw) = (g.cout, g.ohw());
        self.out.resize(g.out_len(), T::zero());
        reset_accs(&mut fw.sh.accs, c, fw.counting, ohw * c);
        let w = &fw.p[self.w].w;
        let relu = self.relu.is_some();
        match self.bn {
            None => {
                let bias = self.b.map(|b| fw.p[b].w.as_slice());
                let epi = |acc: &mut GroupAcc, r0: usize, tile: &mut [T]| {
                    bias_relu(acc, tile, bias, relu, c, r0, ohw)
                };
                conv_forward(&g, &mut self.sparse, x, w, &mut self.out, fw.sh, &epi);
            }
            Some(bi) if fw.train => {
                self.z.resize(g.out_len(), T::zero());
                let epi = |acc: &mut GroupAcc, _r0: usize, tile: &mut [T]| {
                    kernels::accumulate_stats(acc, tile, c)
                };
                conv_forward(&g, &mut self.sparse, x, w, &mut self.z, fw.sh, &epi);
                let (s1, s2) = kernels::merge_sums(&fw.sh.accs, c);
                let nf = g.rows() as f64;
                let bn = &mut fw.bns[bi];
                let (gamma, beta) = (&fw.p[bn.gamma].w, &fw.p[bn.beta].w);
                self.mean.clear();
                self.inv.clear();
                let (mut a, mut b) = (Vec::with_capacity(c), Vec::with_capacity(c));
                let m = fw.momentum;
                for j in 0..c {
                    let mu = s1[j] / nf;
                    let var = (s2[j] / nf - mu * mu).max(0.0);
                    let inv = 1.0 / (var + fw.eps).sqrt();
                    self.mean.push(T::from_f64(mu));
                    self.inv.push(T::from_f64(inv));
                    a.push(gamma[j] * T::from_f64(inv));
                    b.push(beta[j] - T::from_f64(mu) * a[j]);
                    let unbiased = if nf > 1.0 { var * nf / (nf - 1.0) } else { var };
                    bn.mean[j] = T::from_f64((1.0 - m) * bn.mean[j].to_f64() + m * mu);
                    bn.var[j] = T::from_f64((1.0 - m) * bn.var[j].to_f64() + m * unbiased);
                }
                reset_accs(&mut fw.sh.accs, c, fw.counting, ohw * c);
                kernels::affine_relu(&self.z, &mut self.out, &a, &b, relu, ohw, &mut fw.sh.accs);
            }
            Some(bi) => {
                let bn = &fw.bns[bi];
                let (gamma, beta) = (&fw.p[bn.gamma].w, &fw.p[bn.beta].w);
                let a: Vec<T> = (0..c)
                    .map(|j| gamma[j] * T::from_f64(1.0 / (bn.var[j].to_f64() + fw.eps).sqrt()))
                    .collect();
                let b: Vec<T> = (0..c).map(|j| beta[j] - bn.mean[j] * a[j]).collect();
                let epi = |acc: &mut GroupAcc, r0: usize, tile: &mut [T]| {
                    for row in tile.chunks_exact_mut(c) {
                        for j in 0..c {
                            row[j] = row[j] * a[j] + b[j];
                        }
                    }
                    if relu {
                        kernels::relu_count(acc, tile, c, r0, ohw);
                    }
                };
                conv_forward(&g, &mut self.sparse, x, w, &mut self.out, fw.sh, &epi);
            }
        }
        if let Some(r) = self.relu {
            record(fw, r, ohw * c, n);
        }
    }

    fn backward(&mut self, x: &[T], gout: &mut [T], n: usize, bw: &mut Bwd<'_, T>) {
        let g = ConvGeom { n, ..self.geom };
        let c = g.cout;
        let gout = &mut gout[..g.out_len()];
        let out = self.relu.map(|_| &self.out[..g.out_len()]);
        match self.bn {
            Some(bi) => {
                let bn = &bw.bns[bi];
                let (dgamma, dbeta) = kernels::bn_backward(
                    gout,
                    out,
                    &self.z[..g.out_len()],
                    &self.mean,
                    &self.inv,
                    &bw.p[bn.gamma].w,
                    &mut bw.sh.accs,
                );
                set_from_f64(&mut bw.grads[bn.gamma], &dgamma);
                set_from_f64(&mut bw.grads[bn.beta], &dbeta);
            }
            None => {
                if out.is_some() || self.b.is_some() {
                    kernels::relu_backward(gout, out, c, &mut bw.sh.accs);
                }
                if let Some(b) = self.b {
                    let (s1, _) = kernels::merge_sums(&bw.sh.accs, c);
                    set_from_f64(&mut bw.grads[b], &s1);
                }
            }
        }
        if self.need_gin {
            self.gin.resize(g.in_len(), T::zero());
        }
        let dx = if self.need_gin {
            Some(self.gin.as_mut_slice())
        } else {
            None
        };
        let dw = &mut bw.grads[self.w];
        dw.resize(g.cout * g.ckk(), T::zero());
        match &mut self.sparse {
            Some(s) => s.backward(&g, x, &bw.p[self.w].w, gout, dw, dx, bw.sh.parts.len()),
            None => g.backward(
                x,
                &bw.p[self.w].w,
                gout,
                dw,
                dx,
                &mut bw.sh.pack,
                &mut bw.sh.scratch,
                &mut bw.sh.parts,
            ),
        }
    }
}

fn set_from_f64<T: Real>(dst: &mut Vec<T>, src: &[f64]) {
    dst.clear();
    dst.extend(src.iter().map(|&v| T::from_f64(v)));
}

struct LinearUnit<T> {
    w: usize,
    b: Option<usize>,
    relu: Option<usize>,
    fin: usize,
    fout: usize,
    need_gin: bool,
    out: Vec<T>,
    gin: Vec<T>,
    /// The mask's support in CSR form when the layer runs the sparse kernels.
    sparse: Option<kernels::Csr>,
    /// Sparse path: the input transposed (fin × n), kept for the backward pass, and scratch.
    xt: Vec<T>,
    tmp: Vec<T>,
    /// Dense path on the direct kernels: the weight panel ([`direct::pack_linear`]) and the
    /// weight generation it was packed at (repacked only when the weights changed).
    packed: Vec<T>,
    packed_gen: Option<u64>,
}

impl<T: Real> LinearUnit<T> {
    fn forward(&mut self, x: &[T], n: usize, fw: &mut Fwd<'_, T>) {
        let (fin, fout) = (self.fin, self.fout);
        self.out.resize(n * fout, T::zero());
        if let Some(csr) = &self.sparse {
            // yᵀ = W·xᵀ over the mask's support: one n-wide AXPY per kept weight.
            kernels::transpose(&x[..n * fin], n, fin, &mut self.xt);
            self.tmp.resize(fout * n, T::zero());
            csr.mul_rows(&fw.p[self.w].w, &self.xt, n, &mut self.tmp);
            kernels::transpose(&self.tmp, fout, n, &mut self.out);
        } else if !fw.train && direct::linear_applies::<T>() {
            // Evaluation: the panel is packed once per weight generation and reused by every
            // batch. (Training keeps the GEMM: repacking W every step cost more than it saved.)
            if self.packed_gen != Some(fw.gen) {
                direct::pack_linear(&fw.p[self.w].w, fout, fin, &mut self.packed);
                self.packed_gen = Some(fw.gen);
            }
            let ranges = kernels::group_ranges(n, fw.sh.scratch.len());
            let parts = kernels::split_by(&mut self.out, &ranges, fout);
            let wt = &self.packed;
            parts
                .into_par_iter()
                .zip(fw.sh.scratch.par_iter_mut())
                .zip(ranges.par_iter())
                .for_each(|((y, xt), r)| {
                    let xs = &x[r.start * fin..r.end * fin];
                    direct::linear_rows(xs, r.len(), fin, wt, fout, xt, y);
                });
        } else {
            let threads = rayon::current_num_threads();
            gemm_into(
                &mut self.out,
                Operand::n(&x[..n * fin], n, fin),
                Operand::t(&fw.p[self.w].w, fout, fin),
                false,
                threads,
                T::one(),
            );
        }
        reset_accs(&mut fw.sh.accs, fout, fw.counting, fout);
        let bias = self.b.map(|b| fw.p[b].w.as_slice());
        let relu = self.relu.is_some();
        let ranges = kernels::group_ranges(n, fw.sh.accs.len());
        let parts = kernels::split_by(&mut self.out, &ranges, fout);
        parts
            .into_par_iter()
            .zip(fw.sh.accs.par_iter_mut())
            .zip(ranges.par_iter())
            .for_each(|((o, acc), r)| bias_relu(acc, o, bias, relu, fout, r.start, 1));
        if let Some(r) = self.relu {
            record(fw, r, fout, n);
        }
    }

    fn backward(&mut self, x: &[T], gout: &mut [T], n: usize, bw: &mut Bwd<'_, T>) {
        let (fin, fout) = (self.fin, self.fout);
        let gout = &mut gout[..n * fout];
        let out = self.relu.map(|_| &self.out[..n * fout]);
        kernels::relu_backward(gout, out, fout, &mut bw.sh.accs);
        if let Some(b) = self.b {
            let (s1, _) = kernels::merge_sums(&bw.sh.accs, fout);
            set_from_f64(&mut bw.grads[b], &s1);
        }
        if let Some(csr) = &self.sparse {
            // dW on the support (0 elsewhere: masked SGD ignores it) and dxᵀ = Wᵀ·gᵀ.
            kernels::transpose(gout, n, fout, &mut self.tmp);
            let dw = &mut bw.grads[self.w];
            dw.resize(fout * fin, T::zero());
            csr.grad_on_support(&self.tmp, &self.xt, n, dw);
            if self.need_gin {
                let mut dxt = std::mem::take(&mut self.xt);
                csr.mul_rows_transposed(&bw.p[self.w].w, &self.tmp, n, fin, &mut dxt);
                self.gin.resize(n * fin, T::zero());
                kernels::transpose(&dxt, fin, n, &mut self.gin);
                // The transposed input is stale now; the next forward rebuilds it.
                self.xt = dxt;
            }
            return;
        }
        let threads = rayon::current_num_threads();
        let dw = &mut bw.grads[self.w];
        dw.resize(fout * fin, T::zero());
        gemm_into(
            dw,
            Operand::t(gout, n, fout),
            Operand::n(&x[..n * fin], n, fin),
            false,
            threads,
            T::one(),
        );
        if self.need_gin {
            self.gin.resize(n * fin, T::zero());
            gemm_into(
                &mut self.gin,
                Operand::n(gout, n, fout),
                Operand::n(&bw.p[self.w].w, fout, fin),
                false,
                threads,
                T::one(),
            );
        }
    }
}

struct PoolUnit<T> {
    k: usize,
    h: usize,
    w: usize,
    c: usize,
    out: Vec<T>,
    arg: Vec<u8>,
    gin: Vec<T>,
}

struct GapUnit<T> {
    hw: usize,
    c: usize,
    out: Vec<T>,
    gin: Vec<T>,
}

struct ResUnit<T> {
    main: Vec<Unit<T>>,
    short: Vec<Unit<T>>,
    relu: usize,
    c: usize,
    hw: usize,
    /// Input elements per sample.
    in_len: usize,
    out: Vec<T>,
    gin: Vec<T>,
    gm: Vec<T>,
}

enum Unit<T> {
    Conv(ConvUnit<T>),
    Linear(LinearUnit<T>),
    Pool(PoolUnit<T>),
    Gap(GapUnit<T>),
    Res(Box<ResUnit<T>>),
}

impl<T: Real> Unit<T> {
    fn out(&self) -> &[T] {
        match self {
            Unit::Conv(u) => &u.out,
            Unit::Linear(u) => &u.out,
            Unit::Pool(u) => &u.out,
            Unit::Gap(u) => &u.out,
            Unit::Res(u) => &u.out,
        }
    }

    fn gin_mut(&mut self) -> &mut [T] {
        match self {
            Unit::Conv(u) => &mut u.gin,
            Unit::Linear(u) => &mut u.gin,
            Unit::Pool(u) => &mut u.gin,
            Unit::Gap(u) => &mut u.gin,
            Unit::Res(u) => &mut u.gin,
        }
    }

    fn forward(&mut self, x: &[T], n: usize, fw: &mut Fwd<'_, T>) {
        match self {
            Unit::Conv(u) => u.forward(x, n, fw),
            Unit::Linear(u) => u.forward(x, n, fw),
            Unit::Pool(u) => {
                let len = n * (u.h / u.k) * (u.w / u.k) * u.c;
                u.out.resize(len, T::zero());
                u.arg.resize(len, 0);
                kernels::max_pool(x, n, u.h, u.w, u.c, u.k, &mut u.out, &mut u.arg);
            }
            Unit::Gap(u) => {
                u.out.resize(n * u.c, T::zero());
                kernels::gap(x, n, u.hw, u.c, &mut u.out);
            }
            Unit::Res(u) => {
                forward_seq(&mut u.main, x, n, fw);
                if !u.short.is_empty() {
                    forward_seq(&mut u.short, x, n, fw);
                }
                let len = n * u.hw * u.c;
                u.out.resize(len, T::zero());
                let a = &u.main[u.main.len() - 1].out()[..len];
                let b = match u.short.last() {
                    Some(s) => &s.out()[..len],
                    None => &x[..len],
                };
                reset_accs(&mut fw.sh.accs, u.c, fw.counting, u.hw * u.c);
                kernels::add_relu(a, b, &mut u.out, u.c, u.hw, &mut fw.sh.accs);
                record(fw, u.relu, u.hw * u.c, n);
            }
        }
    }

    fn backward(&mut self, x: &[T], g: &mut [T], n: usize, bw: &mut Bwd<'_, T>) {
        match self {
            Unit::Conv(u) => u.backward(x, g, n, bw),
            Unit::Linear(u) => u.backward(x, g, n, bw),
            Unit::Pool(u) => {
                u.gin.resize(n * u.h * u.w * u.c, T::zero());
                kernels::max_pool_backward(g, &u.arg, n, u.h, u.w, u.c, u.k, &mut u.gin);
            }
            Unit::Gap(u) => {
                u.gin.resize(n * u.hw * u.c, T::zero());
                kernels::gap_backward(g, n, u.hw, u.c, &mut u.gin);
            }
            Unit::Res(u) => {
                let len = n * u.hw * u.c;
                let in_len = n * u.in_len;
                let ResUnit {
                    main,
                    short,
                    c,
                    out,
                    gin,
                    gm,
                    ..
                } = &mut **u;
                let g = &mut g[..len];
                kernels::relu_backward(g, Some(&out[..len]), *c, &mut bw.sh.accs);
                gm.clear();
                gm.extend_from_slice(g);
                backward_seq(main, x, gm, n, bw);
                gin.resize(in_len, T::zero());
                let gs: &[T] = if short.is_empty() {
                    g
                } else {
                    backward_seq(short, x, g, n, bw);
                    short[0].gin_mut()
                };
                let gmain = main[0].gin_mut();
                gin.par_chunks_mut(1 << 14)
                    .zip(gmain[..in_len].par_chunks(1 << 14))
                    .zip(gs[..in_len].par_chunks(1 << 14))
                    .for_each(|((o, a), b)| {
                        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                            *o = a + b;
                        }
                    });
            }
        }
    }
}

fn forward_seq<T: Real>(units: &mut [Unit<T>], x: &[T], n: usize, fw: &mut Fwd<'_, T>) {
    for i in 0..units.len() {
        let (before, rest) = units.split_at_mut(i);
        let xin = if i == 0 { x } else { before[i - 1].out() };
        rest[0].forward(xin, n, fw);
    }
}

fn backward_seq<T: Real>(
    units: &mut [Unit<T>],
    x: &[T],
    g: &mut [T],
    n: usize,
    bw: &mut Bwd<'_, T>,
) {
    let len = units.len();
    for i in (0..len).rev() {
        let (before, rest) = units.split_at_mut(i);
        let (cur, after) = rest.split_at_mut(1);
        let xin = if i == 0 { x } else { before[i - 1].out() };
        let gout: &mut [T] = if i + 1 == len {
            &mut *g
        } else {
            after[0].gin_mut()
        };
        cur[0].backward(xin, gout, n, bw);
    }
}

/// Shape of the activation flowing between units while compiling.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// (h, w, c), channels last.
    Spatial(usize, usize, usize),
    /// Features; `from` is the spatial shape it was flattened from, if any.
    Flat(usize, Option<(usize, usize, usize)>),
}

fn unsupported(msg: &str) -> NnError {
    NnError::Config {
        field: "fast engine",
        msg: msg.to_string(),
    }
}

struct Compiler<'a> {
    layouts: Vec<PLayout>,
    shapes: &'a [Vec<usize>],
}

impl Compiler<'_> {
    /// Compile an op list into units; `shape` is the input's on entry and the output's on exit.
    /// A conv or linear layer absorbs the batch norm and ReLU that follow it.
    fn seq<T: Real>(&mut self, ops: &[Op], shape: &mut Shape, first: bool) -> Result<Vec<Unit<T>>> {
        let mut units = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let need_gin = !(first && units.is_empty());
            let unit = match &ops[i] {
                Op::Flatten => {
                    *shape = match *shape {
                        Shape::Spatial(h, w, c) => Shape::Flat(h * w * c, Some((h, w, c))),
                        s => s,
                    };
                    None
                }
                Op::Conv { w, b, stride, pad } => {
                    Some(self.conv(ops, &mut i, (*w, *b, *stride, *pad), shape, need_gin)?)
                }
                Op::Linear { w, b } => Some(self.linear(ops, &mut i, (*w, *b), shape, need_gin)?),
                Op::MaxPool(k) => Some(Self::max_pool(*k, shape)?),
                Op::GlobalAvgPool => {
                    let Shape::Spatial(h, w, c) = *shape else {
                        return Err(unsupported("pooling after a flatten"));
                    };
                    *shape = Shape::Flat(c, None);
                    Some(Unit::Gap(GapUnit {
                        hw: h * w,
                        c,
                        out: Vec::new(),
                        gin: Vec::new(),
                    }))
                }
                Op::Residual {
                    main,
                    shortcut,
                    relu,
                } => Some(self.residual(main, shortcut, *relu, shape)?),
                Op::Bn(_) | Op::Relu(_) => {
                    return Err(unsupported(
                        "batch norm or ReLU not after a conv or linear layer",
                    ))
                }
            };
            units.extend(unit);
            i += 1;
        }
        Ok(units)
    }

    /// The op after `ops[*i]` when it is a batch norm (consumed: `*i` moves past it).
    fn take_bn(ops: &[Op], i: &mut usize) -> Option<usize> {
        let Some(Op::Bn(j)) = ops.get(*i + 1) else {
            return None;
        };
        *i += 1;
        Some(*j)
    }

    /// The op after `ops[*i]` when it is a ReLU (consumed).
    fn take_relu(ops: &[Op], i: &mut usize) -> Option<usize> {
        let Some(Op::Relu(r)) = ops.get(*i + 1) else {
            return None;
        };
        *i += 1;
        Some(*r)
    }

    /// A conv unit for `ops[*i]` = conv (w, b, stride, pad) and the BN/ReLU after it.
    fn conv<T: Real>(
        &mut self,
        ops: &[Op],
        i: &mut usize,
        (w, b, stride, pad): (usize, Option<usize>, usize, usize),
        shape: &mut Shape,
        need_gin: bool,
    ) -> Result<Unit<T>> {
        let Shape::Spatial(h, wd, cin) = *shape else {
            return Err(unsupported("a conv after a flatten"));
        };
        let dims = &self.shapes[w];
        let (cout, k) = (dims[0], dims[2]);
        if dims[1] != cin || dims[3] != k {
            return Err(unsupported("conv weight shape does not fit its input"));
        }
        let geom = ConvGeom::new(0, h, wd, cin, cout, k, stride, pad)
            .ok_or_else(|| unsupported("conv window larger than its input"))?;
        self.layouts[w] = PLayout::Conv { o: cout, i: cin, k };
        let bn = Self::take_bn(ops, i);
        let relu = Self::take_relu(ops, i);
        *shape = Shape::Spatial(geom.oh, geom.ow, cout);
        Ok(Unit::Conv(ConvUnit {
            geom,
            w,
            b,
            bn,
            relu,
            need_gin,
            z: Vec::new(),
            out: Vec::new(),
            gin: Vec::new(),
            mean: Vec::new(),
            inv: Vec::new(),
            sparse: None,
        }))
    }

    /// A linear unit for `ops[*i]` = linear (w, b) and the ReLU after it. After a flatten of a
    /// multi-channel map, its weight columns are kept in the engine's (y, x, c) order.
    fn linear<T: Real>(
        &mut self,
        ops: &[Op],
        i: &mut usize,
        (w, b): (usize, Option<usize>),
        shape: &mut Shape,
        need_gin: bool,
    ) -> Result<Unit<T>> {
        let dims = &self.shapes[w];
        let (fout, fin) = (dims[0], dims[1]);
        let feats = match *shape {
            Shape::Flat(f, from) => {
                if let Some((h, wd, c)) = from {
                    if c > 1 && h * wd > 1 {
                        self.layouts[w] = PLayout::LinearHwc {
                            out: fout,
                            c,
                            h,
                            w: wd,
                        };
                    }
                }
                f
            }
            Shape::Spatial(..) => return Err(unsupported("a linear layer on a spatial input")),
        };
        if feats != fin {
            return Err(unsupported("linear weight shape does not fit its input"));
        }
        let relu = Self::take_relu(ops, i);
        *shape = Shape::Flat(fout, None);
        Ok(Unit::Linear(LinearUnit {
            w,
            b,
            relu,
            fin,
            fout,
            need_gin,
            out: Vec::new(),
            gin: Vec::new(),
            sparse: None,
            xt: Vec::new(),
            tmp: Vec::new(),
            packed: Vec::new(),
            packed_gen: None,
        }))
    }

    fn max_pool<T: Real>(k: usize, shape: &mut Shape) -> Result<Unit<T>> {
        let Shape::Spatial(h, w, c) = *shape else {
            return Err(unsupported("pooling after a flatten"));
        };
        if k == 0 || h < k || w < k {
            return Err(unsupported("pooling window larger than its input"));
        }
        *shape = Shape::Spatial(h / k, w / k, c);
        Ok(Unit::Pool(PoolUnit {
            k,
            h,
            w,
            c,
            out: Vec::new(),
            arg: Vec::new(),
            gin: Vec::new(),
        }))
    }

    /// A residual unit: both branches compiled from the same input shape, which must agree.
    fn residual<T: Real>(
        &mut self,
        main: &[Op],
        shortcut: &[Op],
        relu: usize,
        shape: &mut Shape,
    ) -> Result<Unit<T>> {
        let s0 = *shape;
        let mut sm = s0;
        let m = self.seq(main, &mut sm, false)?;
        let mut ss = s0;
        let s = self.seq(shortcut, &mut ss, false)?;
        let (Shape::Spatial(h, w, c), Shape::Spatial(h2, w2, c2)) = (sm, ss) else {
            return Err(unsupported("a residual block without spatial output"));
        };
        if (h, w, c) != (h2, w2, c2) || m.is_empty() {
            return Err(unsupported("residual branches of different shapes"));
        }
        *shape = sm;
        let in_len = match s0 {
            Shape::Spatial(a, b, c) => a * b * c,
            Shape::Flat(f, _) => f,
        };
        Ok(Unit::Res(Box::new(ResUnit {
            main: m,
            short: s,
            relu,
            c,
            hw: h * w,
            in_len,
            out: Vec::new(),
            gin: Vec::new(),
            gm: Vec::new(),
        })))
    }
}

/// The compiled network: parameters in the engine's layout, reusable buffers, momentum.
pub struct FastNet<T: Real> {
    pub arch: Arch,
    pub input: InputSpec,
    params: Vec<Slot<T>>,
    grads: Vec<Vec<T>>,
    bns: Vec<BnRun<T>>,
    units: Vec<Unit<T>>,
    sh: Shared<T>,
    x: Vec<T>,
    dlogits: Vec<T>,
    counts: Vec<ReluCount>,
    counting: Counting,
    /// SGD hyper-parameters of [`FastNet::sgd_step`].
    pub sgd: SgdConfig,
    bn_momentum: f64,
    bn_eps: f64,
    n: usize,
    /// Bumped whenever the weights change (packed copies compare against it).
    gen: u64,
}

/// Weight density below which a masked linear layer runs the sparse kernels (CSR × dense), from
/// the measurement in docs/pruning.md ("Sparse linear layers").
pub const SPARSE_LINEAR_BELOW: f64 = 0.1;

/// A masked stride-1 convolution runs the sparse kernels when its weight density times the
/// kernels' [`sparse_conv::waste`] is below this, from the measurement in docs/pruning.md
/// ("Sparse convolutions"): with padding 1, density below 0.39 on 28×28, 14×14 and 16×16 maps,
/// 0.385 on 32×32, 0.36 on 8×8, 0.3 on 4×4 (images side by side; the waste assumes each thread's
/// share of a batch fills whole sets of them, as a batch of 128 on up to 16 threads does).
pub const SPARSE_CONV_BELOW: f64 = 0.45;

/// Every conv unit of `units`, residual blocks included, in order.
fn conv_units<T>(units: &mut [Unit<T>], f: &mut impl FnMut(&mut ConvUnit<T>)) {
    for u in units {
        match u {
            Unit::Conv(c) => f(c),
            Unit::Res(r) => {
                conv_units(&mut r.main, f);
                conv_units(&mut r.short, f);
            }
            _ => {}
        }
    }
}

/// Every conv unit of `units`, residual blocks included, in order (shared).
fn conv_refs<'a, T>(units: &'a [Unit<T>], out: &mut Vec<&'a ConvUnit<T>>) {
    for u in units {
        match u {
            Unit::Conv(c) => out.push(c),
            Unit::Res(r) => {
                conv_refs(&r.main, out);
                conv_refs(&r.short, out);
            }
            _ => {}
        }
    }
}

/// The flat indices of a mask's kept entries.
fn support_of<T: Real>(m: &[T]) -> Vec<u32> {
    (0..m.len() as u32)
        .filter(|&i| m[i as usize] != T::zero())
        .collect()
}

/// Share of a mask's entries that are kept (non-zero).
fn mask_density<T: Real>(m: &[T]) -> f64 {
    m.iter().filter(|&&v| v != T::zero()).count() as f64 / m.len().max(1) as f64
}

fn host<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

impl<T: Real> FastNet<T> {
    /// Compile `net` (weights, masks and batch-norm running statistics are copied).
    pub fn from_net(net: &Net, sgd: SgdConfig) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = net
            .params
            .iter()
            .map(|p| p.var.as_tensor().dims().to_vec())
            .collect();
        let mut comp = Compiler {
            layouts: vec![PLayout::Plain; shapes.len()],
            shapes: &shapes,
        };
        let InputSpec {
            channels,
            height,
            width,
            ..
        } = net.input;
        let mut shape = Shape::Spatial(height, width, channels);
        let units = comp.seq(net.ops(), &mut shape, true)?;
        match shape {
            Shape::Flat(f, _) if f == net.input.classes => {}
            _ => {
                return Err(unsupported(
                    "the network does not end in one logit per class",
                ))
            }
        }
        let mut params = Vec::with_capacity(net.params.len());
        for (p, layout) in net.params.iter().zip(&comp.layouts) {
            let w = layout.to_fast(&host::<T>(p.var.as_tensor())?);
            let mask = match &p.mask {
                Some(m) => Some(layout.to_fast(&host::<T>(m)?)),
                None => None,
            };
            params.push(Slot {
                layout: *layout,
                shape: p.var.as_tensor().dims().to_vec(),
                w,
                mask,
                support: None,
                mom: Vec::new(),
            });
        }
        let mut bns = Vec::new();
        for b in net.bn_states() {
            bns.push(BnRun {
                gamma: b.gamma,
                beta: b.beta,
                mean: host(&b.mean)?,
                var: host(&b.var)?,
            });
        }
        let groups = rayon::current_num_threads().max(1);
        Ok(FastNet {
            arch: net.arch,
            input: net.input,
            grads: vec![Vec::new(); params.len()],
            params,
            bns,
            units,
            sh: Shared {
                pack: Vec::new(),
                scratch: vec![Vec::new(); groups],
                accs: vec![GroupAcc::default(); groups],
                parts: vec![Vec::new(); groups],
            },
            x: Vec::new(),
            dlogits: Vec::new(),
            counts: vec![ReluCount::default(); net.relu_names().len()],
            counting: Counting::Off,
            sgd,
            bn_momentum: net.bn_momentum,
            bn_eps: net.bn_eps,
            n: 0,
            gen: 0,
        }
        .with_sparse_threshold(SPARSE_LINEAR_BELOW)
        .with_sparse_conv_threshold(SPARSE_CONV_BELOW))
    }

    /// Masked convolutions whose weight density times [`sparse_conv::waste`] is below `t` run
    /// the sparse kernels where they apply (f32 on AVX-512F, stride 1; [`sparse_conv::applies`]);
    /// the others the dense ones (0: never sparse; 1 or more: always, for tests). Results agree
    /// to float tolerance, and the sparse path's weight gradient is 0 off the mask.
    pub fn with_sparse_conv_threshold(mut self, t: f64) -> Self {
        self.gen += 1;
        let params = &mut self.params;
        conv_units(&mut self.units, &mut |c| {
            let slot = &mut params[c.w];
            c.sparse = slot.mask.as_deref().and_then(|m| {
                let cost = mask_density(m) * sparse_conv::waste(&c.geom);
                ((t >= 1.0 || cost < t) && sparse_conv::applies::<T>(&c.geom))
                    .then(|| Box::new(sparse_conv::SparseConv::new(&c.geom, m)))
            });
            slot.restrict_sgd(c.sparse.is_some());
        });
        self
    }

    /// 3×3 stride-1 padding-1 convolutions with more than `c` output channels run the Winograd
    /// kernels ([`winograd`]; default [`winograd::WINOGRAD_ABOVE`]; `usize::MAX`: never, to
    /// measure the switch). Results agree to float tolerance.
    pub fn with_winograd_above(mut self, c: usize) -> Self {
        conv_units(&mut self.units, &mut |u| u.geom.winograd_above = c);
        self
    }

    /// Masked linear layers whose weight density is below `density` run the sparse kernels;
    /// the others run dense GEMMs (0: never sparse; above 1: always, for tests). Results agree
    /// to float tolerance, and the sparse path's weight gradient is 0 off the mask.
    pub fn with_sparse_threshold(mut self, density: f64) -> Self {
        self.gen += 1;
        for u in &mut self.units {
            if let Unit::Linear(l) = u {
                let slot = &mut self.params[l.w];
                l.sparse = slot.mask.as_deref().and_then(|m| {
                    (mask_density(m) < density).then(|| kernels::Csr::from_mask(m, l.fout, l.fin))
                });
                slot.restrict_sgd(l.sparse.is_some());
            }
        }
        self
    }

    /// Each parameter's mask in the candle layout, as [`FastNet::weights`] (`None` when
    /// unmasked).
    pub fn masks(&self) -> Vec<Option<Vec<T>>> {
        self.params
            .iter()
            .map(|s| s.mask.as_ref().map(|m| s.layout.to_ref(m)))
            .collect()
    }

    /// Per masked linear layer, in order: its weight density and whether it runs the sparse
    /// kernels.
    pub fn linear_densities(&self) -> Vec<(f64, bool)> {
        self.units
            .iter()
            .filter_map(|u| match u {
                Unit::Linear(l) => self.params[l.w]
                    .mask
                    .as_deref()
                    .map(|m| (mask_density(m), l.sparse.is_some())),
                _ => None,
            })
            .collect()
    }

    /// Per masked convolution, in order (residual blocks included): its weight density and
    /// whether it runs the sparse kernels.
    pub fn conv_densities(&self) -> Vec<(f64, bool)> {
        let mut convs = Vec::new();
        conv_refs(&self.units, &mut convs);
        convs
            .iter()
            .filter_map(|c| {
                let m = self.params[c.w].mask.as_deref()?;
                Some((mask_density(m), c.sparse.is_some()))
            })
            .collect()
    }

    /// The kernels each convolution runs, in layer order: "sparse" ([`sparse_conv`]), "winograd",
    /// "direct", "pointwise" (one GEMM) or "im2col" (tiled im2col + GEMM).
    pub fn conv_kernels(&self) -> Vec<&'static str> {
        let mut convs = Vec::new();
        conv_refs(&self.units, &mut convs);
        convs
            .iter()
            .map(|c| match c.sparse {
                Some(_) => "sparse",
                None => c.geom.dense_kernel::<T>().name(),
            })
            .collect()
    }

    /// How many linear and conv layers run the sparse kernels.
    pub fn sparse_layers(&self) -> usize {
        let linear = self
            .units
            .iter()
            .filter(|u| matches!(u, Unit::Linear(l) if l.sparse.is_some()))
            .count();
        linear + self.conv_densities().iter().filter(|d| d.1).count()
    }

    /// Copy the weights and batch-norm running statistics back into `net` (candle layout).
    pub fn write_back(&self, net: &mut Net) -> Result<()> {
        for (p, s) in net.params.iter().zip(&self.params) {
            let dtype = p.var.as_tensor().dtype();
            let t = Tensor::from_vec(s.layout.to_ref(&s.w), s.shape.as_slice(), &Device::Cpu)?
                .to_dtype(dtype)?;
            p.var.set(&t)?;
        }
        for (i, b) in self.bns.iter().enumerate() {
            let dtype = net.bn_states()[i].mean.dtype();
            let c = b.mean.len();
            let mean = Tensor::from_vec(b.mean.clone(), c, &Device::Cpu)?.to_dtype(dtype)?;
            let var = Tensor::from_vec(b.var.clone(), c, &Device::Cpu)?.to_dtype(dtype)?;
            net.set_bn_running(i, mean, var);
        }
        Ok(())
    }

    /// Start counting dead units in the ReLU passes (clears the counts).
    pub fn set_counting(&mut self, c: Counting) {
        self.counting = c;
        self.counts = vec![ReluCount::default(); self.counts.len()];
    }

    /// The counts since the last call (or [`FastNet::set_counting`]), and reset them.
    pub fn take_counts(&mut self) -> Vec<ReluCount> {
        let n = self.counts.len();
        std::mem::replace(&mut self.counts, vec![ReluCount::default(); n])
    }

    /// Forward pass of `n` images in NCHW order (as [`Net::forward`] takes them); returns the
    /// logits (n × classes). In `Train` mode batch norm uses batch statistics and updates its
    /// running statistics.
    pub fn forward(&mut self, x_nchw: &[T], n: usize, mode: Mode) -> Result<&[T]> {
        let InputSpec {
            channels: c,
            height: h,
            width: w,
            classes,
        } = self.input;
        if x_nchw.len() != n * c * h * w || n == 0 {
            return Err(NnError::InputShape {
                arch: self.arch.to_string(),
                got: vec![n, x_nchw.len() / n.max(1)],
                c,
                h,
                w,
            });
        }
        self.x.resize(n * c * h * w, T::zero());
        let hw = h * w;
        if c == 1 {
            self.x.copy_from_slice(x_nchw);
        } else {
            for i in 0..n {
                let src = &x_nchw[i * c * hw..(i + 1) * c * hw];
                let dst = &mut self.x[i * c * hw..(i + 1) * c * hw];
                for p in 0..hw {
                    for ch in 0..c {
                        dst[p * c + ch] = src[ch * hw + p];
                    }
                }
            }
        }
        self.n = n;
        let mut fw = Fwd {
            p: &self.params,
            bns: &mut self.bns,
            counts: &mut self.counts,
            counting: self.counting,
            train: mode == Mode::Train,
            eps: self.bn_eps,
            momentum: self.bn_momentum,
            gen: self.gen,
            sh: &mut self.sh,
        };
        forward_seq(&mut self.units, &self.x, n, &mut fw);
        let out = self.units[self.units.len() - 1].out();
        Ok(&out[..n * classes])
    }

    /// Cross-entropy of the last forward pass against `labels`, and its backward pass: the
    /// gradients of every parameter are ready for [`FastNet::sgd_step`] (and
    /// [`FastNet::gradients`]).
    pub fn backward(&mut self, labels: &[u32]) -> Result<StepStats> {
        let n = self.n;
        let k = self.input.classes;
        if labels.len() != n {
            return Err(unsupported("labels and the last batch differ in length"));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= k) {
            return Err(NnError::Config {
                field: "labels",
                msg: format!("label {bad} is out of range for {k} classes"),
            });
        }
        self.dlogits.resize(n * k, T::zero());
        let logits = &self.units[self.units.len() - 1].out()[..n * k];
        let (loss, correct) = kernels::softmax_ce(logits, labels, k, &mut self.dlogits);
        if !loss.is_finite() {
            return Err(NnError::NonFinite(loss as f32));
        }
        let mut bw = Bwd {
            p: &self.params,
            bns: &self.bns,
            grads: &mut self.grads,
            sh: &mut self.sh,
        };
        backward_seq(&mut self.units, &self.x, &mut self.dlogits, n, &mut bw);
        Ok(StepStats { loss, correct })
    }

    /// Loss and correct predictions of the last forward pass (no gradients).
    pub fn loss(&mut self, labels: &[u32]) -> Result<StepStats> {
        let n = self.n;
        let k = self.input.classes;
        if labels.len() != n || labels.iter().any(|&l| l as usize >= k) {
            return Err(unsupported("labels do not fit the last batch"));
        }
        self.dlogits.resize(n * k, T::zero());
        let logits = &self.units[self.units.len() - 1].out()[..n * k];
        let (loss, correct) = kernels::softmax_ce(logits, labels, k, &mut self.dlogits);
        Ok(StepStats { loss, correct })
    }

    /// Masked SGD with momentum on every parameter from the last backward pass (the formula of
    /// [`super::optim`]).
    pub fn sgd_step(&mut self, lr: f64) {
        let SgdConfig {
            momentum,
            weight_decay,
        } = self.sgd;
        let (lr, mu, wd) = (
            T::from_f64(lr),
            T::from_f64(momentum),
            T::from_f64(weight_decay),
        );
        const CH: usize = 1 << 14;
        self.gen += 1;
        for (s, g) in self.params.iter_mut().zip(&self.grads) {
            if g.len() != s.w.len() {
                continue;
            }
            let first = s.mom.is_empty() || momentum == 0.0;
            s.mom.resize(s.w.len(), T::zero());
            if let Some(sup) = &s.support {
                // Sparse layer: the same update on the support only (off it w, v and g·m are 0).
                for &i in sup {
                    let i = i as usize;
                    let gi = g[i] + wd * s.w[i];
                    let vi = if first { gi } else { mu * s.mom[i] + gi };
                    s.mom[i] = vi;
                    s.w[i] -= lr * vi;
                }
                continue;
            }
            let mask = s.mask.as_deref();
            s.w.par_chunks_mut(CH)
                .zip(s.mom.par_chunks_mut(CH))
                .zip(g.par_chunks(CH))
                .enumerate()
                .for_each(|(ci, ((w, v), g))| match mask {
                    Some(m) => {
                        let m = &m[ci * CH..ci * CH + w.len()];
                        for i in 0..w.len() {
                            let gi = (g[i] + wd * w[i]) * m[i];
                            let vi = if first { gi } else { (mu * v[i] + gi) * m[i] };
                            v[i] = vi;
                            w[i] = (w[i] - lr * vi) * m[i];
                        }
                    }
                    None => {
                        for i in 0..w.len() {
                            let gi = g[i] + wd * w[i];
                            let vi = if first { gi } else { mu * v[i] + gi };
                            v[i] = vi;
                            w[i] -= lr * vi;
                        }
                    }
                });
        }
    }

    /// One training step: forward (train mode), cross-entropy, backward, masked SGD.
    pub fn train_step(&mut self, x_nchw: &[T], labels: &[u32], lr: f64) -> Result<StepStats> {
        self.forward(x_nchw, labels.len(), Mode::Train)?;
        let s = self.backward(labels)?;
        self.sgd_step(lr);
        Ok(s)
    }

    /// Drop the momentum buffers.
    pub fn reset_momentum(&mut self) {
        for s in &mut self.params {
            s.mom.clear();
        }
    }

    /// The gradients of the last backward pass, per parameter of the [`Net`], in candle's layout
    /// (empty for a parameter that got none).
    pub fn gradients(&self) -> Vec<Vec<T>> {
        self.params
            .iter()
            .zip(&self.grads)
            .map(|(s, g)| {
                if g.len() == s.w.len() {
                    s.layout.to_ref(g)
                } else {
                    Vec::new()
                }
            })
            .collect()
    }

    /// The weights, per parameter, in candle's layout.
    pub fn weights(&self) -> Vec<Vec<T>> {
        self.params.iter().map(|s| s.layout.to_ref(&s.w)).collect()
    }

    /// Batch-norm running (mean, variance) per batch-norm layer.
    pub fn bn_running(&self) -> Vec<(Vec<T>, Vec<T>)> {
        self.bns
            .iter()
            .map(|b| (b.mean.clone(), b.var.clone()))
            .collect()
    }
}
