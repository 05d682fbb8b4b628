//! The per-feature (CSC) view of a step's matchings, and the per-feature gradient sums over it.
//!
//! For every touched feature j, with entries (i, a_ij, ∂L/∂pre_ij) of the main and auxiliary
//! matchings sorted by token (main before auxiliary for one token):
//! ∂W_enc[j] = Σ ∂pre_ij·x′_i and ∂W_dec[j] = Σ a_ij·g_i (main) + Σ a_ij·h_i (auxiliary).
//!
//! These sums gather whole rows of X′ and of the per-token gradients (B rows each, 12 MB at
//! d 768, B 4096), one pair per matched pair: with the auxiliary loss on that is 1.2–1.6 M pairs,
//! and gathered straight from the last-level cache they are bound by its bandwidth. So the sums
//! run by d-slices: the rows' slice s (SLICE lanes) is copied into a contiguous slice-major
//! block, and every feature's sums for slice s are taken from it, accumulators in registers,
//! one block of tokens at a time so that what a pass reads stays in the core's L2 cache (the
//! sums carried from pass to pass). Each element's sum is the same sequence of multiplies and
//! adds, in the same order, as a whole-row axpy per entry: the result is bit-identical.

use super::resize;
use crate::kernels::vector;
use rayon::prelude::*;

/// Unused feature (no row in the touched-feature buffers).
pub const NONE: u32 = u32::MAX;

/// Lanes per d-slice: 32 f32 (two AVX-512 registers).
const SLICE: usize = 32;

/// Bytes one pass of the sliced sums reads (a slice of X′ and of each gradient source, for a
/// block of tokens): 1,024 tokens with both gradient sources. A whole slice at B = 4096 takes
/// 1.5 MB. Project choice, measured (docs/sae.md section 5).
const SLICE_PASS_BYTES: usize = 384 * 1024;

/// Entries from which a feature's sums run by d-slices rather than row by row: below it, the
/// per-slice loop costs more than the row gathers it saves (measured at 768 × 24576, B 4096).
const SLICED_MIN: usize = 16;

/// One matched pair in the per-feature view.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Row of the stacked gradients: i for a main pair (g_i), B + i for an auxiliary one (h_i).
    src: u32,
    /// a_ij.
    a: f32,
    /// ∂L/∂pre_ij.
    c: f32,
}

/// The per-feature view of both matchings, and the slice-major copies its sums read.
#[derive(Debug, Default)]
pub struct FeatureView {
    /// Features with at least one entry, and those of `extra` (the dense auxiliary block),
    /// ascending.
    pub touched: Vec<u32>,
    /// Per feature: its position in `touched`, or [`NONE`].
    pub slot: Vec<u32>,
    /// Per touched feature t: its entries are `entries[ptr[t]..ptr[t + 1]]`.
    ptr: Vec<usize>,
    entries: Vec<Entry>,
    counts: Vec<usize>,
    /// Slice-major X′: slice s holds B rows of SLICE lanes (zero-padded past d).
    xs: Vec<f32>,
    /// Slice-major stacked gradients: slice s holds the rows of g, then (auxiliary) of h.
    gs: Vec<f32>,
    /// Tokens per pass of the sliced sums (`None`: from [`SLICE_PASS_BYTES`]); tests set it.
    token_block: Option<usize>,
}

/// Gradients computed elsewhere for some features (the dense auxiliary block), added to their
/// sums before the projection: feature j's are row `pos[j]` of `ge` (∂W_enc) and `gd` (∂W_dec),
/// and `gb[pos[j]]` (∂b_enc), or none when `pos[j]` is [`NONE`].
#[derive(Clone, Copy)]
pub struct Extra<'a> {
    pub pos: &'a [u32],
    pub ge: &'a [f32],
    pub gd: &'a [f32],
    pub gb: &'a [f32],
}

impl<'a> Extra<'a> {
    fn feature(self, j: usize, d: usize) -> Option<(&'a [f32], &'a [f32], f32)> {
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

/// One matching with its per-pair a_ij and ∂L/∂pre (aligned with `cols`).
pub struct Pairs<'a> {
    pub row_ptr: &'a [usize],
    pub cols: &'a [u32],
    pub a: &'a [f32],
    pub c: &'a [f32],
}

impl<'a> Pairs<'a> {
    fn row(&self, i: usize) -> (&'a [u32], &'a [f32], &'a [f32]) {
        let (r0, r1) = (self.row_ptr[i], self.row_ptr[i + 1]);
        (&self.cols[r0..r1], &self.a[r0..r1], &self.c[r0..r1])
    }
}

impl FeatureView {
    /// Build the view of `main` and (when on) `aux` (B tokens, F features): a counting sort by
    /// feature, filled in parallel by feature ranges, each range scanning the tokens in order,
    /// so the layout does not depend on the thread count. Features of `extra` (per feature:
    /// [`NONE`] or not) are touched even without an entry: the dense auxiliary block's.
    pub fn build(
        &mut self,
        b: usize,
        f: usize,
        main: &Pairs,
        aux: Option<&Pairs>,
        extra: Option<&[u32]>,
    ) {
        resize(&mut self.counts, f);
        self.counts.fill(0);
        for m in std::iter::once(main).chain(aux) {
            for &j in m.cols {
                self.counts[j as usize] += 1;
            }
        }
        resize(&mut self.slot, f);
        self.touched.clear();
        self.ptr.clear();
        self.ptr.push(0);
        let mut total = 0;
        for (j, &n) in self.counts.iter().enumerate() {
            if n > 0 || extra.is_some_and(|x| x[j] != NONE) {
                self.slot[j] = self.touched.len() as u32;
                self.touched.push(j as u32);
                total += n;
                self.ptr.push(total);
            } else {
                self.slot[j] = NONE;
            }
        }
        resize(&mut self.entries, total);
        // Feature ranges of about equal entry counts; each fills its own part of `entries`.
        let parts = rayon::current_num_threads().clamp(1, 64) * 2;
        let bounds = balanced_bounds(&self.ptr, parts);
        let mut pieces = Vec::with_capacity(bounds.len());
        let mut rest = &mut self.entries[..];
        for w in bounds.windows(2) {
            let (head, tail) = rest.split_at_mut(self.ptr[w[1]] - self.ptr[w[0]]);
            pieces.push((w[0], w[1], head));
            rest = tail;
        }
        let (touched, slot, ptr) = (&self.touched, &self.slot, &self.ptr);
        pieces.into_par_iter().for_each(|(t0, t1, out)| {
            if t0 == t1 {
                return;
            }
            let (j0, j1) = (touched[t0], touched[t1 - 1]);
            let base = ptr[t0];
            let mut fill: Vec<usize> = ptr[t0..t1].iter().map(|p| p - base).collect();
            for i in 0..b {
                let sets = std::iter::once((main, 0)).chain(aux.map(|m| (m, b)));
                for (m, off) in sets {
                    let (js, vs, cs) = m.row(i);
                    for ((&j, &a), &c) in js.iter().zip(vs).zip(cs) {
                        if j < j0 || j > j1 {
                            continue;
                        }
                        let t = slot[j as usize] as usize - t0;
                        out[fill[t]] = Entry {
                            src: (off + i) as u32,
                            a,
                            c,
                        };
                        fill[t] += 1;
                    }
                }
            }
        });
    }

    /// The gradients of the touched features: `ge[t]` = Σ c·x′_i (∂W_enc), `gd[t]` =
    /// Σ a·(g or h)_i with its component along W_dec[j] then removed (∂W_dec), `gb[t]` = Σ c
    /// (∂b_enc), in entry order. `g` is B×d; `h` (B×d) when the auxiliary matching is in the
    /// view. Features with at least [`SLICED_MIN`] entries are summed by d-slices, the others
    /// row by row (both the same arithmetic). The gradients of `extra` (the dense auxiliary
    /// block's) are added to its features' sums before the projection.
    #[allow(clippy::too_many_arguments)] // the inputs and the three outputs
    pub fn gradients(
        &mut self,
        xc: &[f32],
        g: &[f32],
        h: Option<&[f32]>,
        extra: Option<Extra<'_>>,
        w_dec: &[f32],
        d: usize,
        ge: &mut [f32],
        gd: &mut [f32],
        gb: &mut [f32],
    ) {
        let b = xc.len() / d.max(1);
        if b == 0 || d == 0 {
            return;
        }
        let ns = d.div_ceil(SLICE);
        let gsrc: Vec<&[f32]> = std::iter::once(g).chain(h).collect();
        let grows = b * gsrc.len();
        let nt = self.touched.len();
        let sliced = (0..nt).any(|t| self.ptr[t + 1] - self.ptr[t] >= SLICED_MIN);
        if sliced {
            resize(&mut self.xs, ns * b * SLICE);
            resize(&mut self.gs, ns * grows * SLICE);
            to_slices(&[xc], d, &mut self.xs);
            to_slices(&gsrc, d, &mut self.gs);
        }
        // Tokens per pass of the sliced sums: a pass reads one slice's rows of these tokens
        // only (X′ and each gradient source), within SLICE_PASS_BYTES.
        let rows_blk = self
            .token_block
            .unwrap_or(SLICE_PASS_BYTES / (SLICE * 4 * (1 + gsrc.len())))
            .clamp(1, b);
        let nb = b.div_ceil(rows_blk);
        let (entries, ptr, xs, gs) = (&self.entries, &self.ptr, &self.xs, &self.gs);
        let touched = &self.touched;
        // Feature ranges of about equal entry counts.
        let parts = rayon::current_num_threads().clamp(1, 64) * 4;
        let bounds = balanced_bounds(ptr, parts);
        let mut pieces = Vec::with_capacity(bounds.len());
        let (mut re, mut rd, mut rb) = (&mut ge[..nt * d], &mut gd[..nt * d], &mut gb[..nt]);
        for w in bounds.windows(2) {
            let n = w[1] - w[0];
            let (he, te) = re.split_at_mut(n * d);
            let (hd, td) = rd.split_at_mut(n * d);
            let (hb, tb) = rb.split_at_mut(n);
            pieces.push((w[0], w[1], he, hd, hb));
            (re, rd, rb) = (te, td, tb);
        }
        pieces.into_par_iter().for_each(|(t0, t1, ge, gd, gb)| {
            let heavy = |t: usize| ptr[t + 1] - ptr[t] >= SLICED_MIN;
            if sliced {
                // Per heavy feature, its entries' bounds at each token block's start (entries
                // are in token order), then the passes: token block by token block, slice by
                // slice, each feature's sums carried on from the last pass in its rows of
                // ge/gd (from 0): per lane the same additions in the same order as one pass.
                let hv: Vec<usize> = (t0..t1).filter(|&t| heavy(t)).collect();
                let mut at = Vec::with_capacity(hv.len() * (nb + 1));
                for &t in &hv {
                    let ens = &entries[ptr[t]..ptr[t + 1]];
                    at.push(ptr[t]);
                    for k in 1..nb {
                        let i0 = k * rows_blk;
                        at.push(ptr[t] + ens.partition_point(|e| token(e.src, b) < i0));
                    }
                    at.push(ptr[t + 1]);
                    let r = (t - t0) * d;
                    ge[r..r + d].fill(0.0);
                    gd[r..r + d].fill(0.0);
                }
                for tb in 0..nb {
                    for s in 0..ns {
                        let xs = &xs[s * b * SLICE..(s + 1) * b * SLICE];
                        let gs = &gs[s * grows * SLICE..(s + 1) * grows * SLICE];
                        let (l0, l1) = (s * SLICE, ((s + 1) * SLICE).min(d));
                        for (h, &t) in hv.iter().enumerate() {
                            let (e0, e1) = (at[h * (nb + 1) + tb], at[h * (nb + 1) + tb + 1]);
                            if e0 == e1 {
                                continue;
                            }
                            let r = (t - t0) * d;
                            let (mut se, mut sd) = ([0f32; SLICE], [0f32; SLICE]);
                            se[..l1 - l0].copy_from_slice(&ge[r + l0..r + l1]);
                            sd[..l1 - l0].copy_from_slice(&gd[r + l0..r + l1]);
                            slice_sums(&entries[e0..e1], b, xs, gs, &mut se, &mut sd);
                            ge[r + l0..r + l1].copy_from_slice(&se[..l1 - l0]);
                            gd[r + l0..r + l1].copy_from_slice(&sd[..l1 - l0]);
                        }
                    }
                }
            }
            for t in t0..t1 {
                let ens = &entries[ptr[t]..ptr[t + 1]];
                let r = (t - t0) * d;
                let (ge, gd) = (&mut ge[r..r + d], &mut gd[r..r + d]);
                gb[t - t0] = ens.iter().fold(0f32, |s, e| s + e.c);
                if !heavy(t) {
                    ge.fill(0.0);
                    gd.fill(0.0);
                    for e in ens {
                        let src = e.src as usize;
                        let i = if src >= b { src - b } else { src };
                        let gsrc = gsrc[src / b];
                        let src = src % b;
                        vector::axpy(e.c, &xc[i * d..(i + 1) * d], ge);
                        vector::axpy(e.a, &gsrc[src * d..(src + 1) * d], gd);
                    }
                }
                let j = touched[t] as usize;
                if let Some((de, dd, db)) = extra.and_then(|x| x.feature(j, d)) {
                    vector::axpy(1.0, de, ge);
                    vector::axpy(1.0, dd, gd);
                    gb[t - t0] += db;
                }
                let w = &w_dec[j * d..(j + 1) * d];
                let dot = vector::dot(gd, w);
                vector::axpy(-dot, w, gd);
            }
        });
    }
}

/// Boundaries (indices into the touched features, first 0, last their count) of at most
/// `parts` ranges with about equal entry counts, from the cumulative counts `ptr`.
fn balanced_bounds(ptr: &[usize], parts: usize) -> Vec<usize> {
    let nt = ptr.len() - 1;
    let total = ptr[nt];
    let mut bounds = vec![0];
    for p in 1..parts {
        let target = total * p / parts;
        let t = ptr.partition_point(|&x| x < target).min(nt);
        if t > *bounds.last().unwrap() {
            bounds.push(t);
        }
    }
    if *bounds.last().unwrap() < nt || nt == 0 {
        bounds.push(nt);
    }
    bounds
}

/// Copy the rows of `srcs` (each n_k × d, row-major), stacked, into slice-major `out`: slice s
/// holds every stacked row's lanes s·SLICE.. (SLICE of them, zero-padded past d).
fn to_slices(srcs: &[&[f32]], d: usize, out: &mut [f32]) {
    let rows: usize = srcs.iter().map(|s| s.len() / d.max(1)).sum();
    out.par_chunks_mut(rows * SLICE)
        .enumerate()
        .for_each(|(s, block)| {
            let (l0, l1) = (s * SLICE, ((s + 1) * SLICE).min(d));
            let mut o = block.chunks_exact_mut(SLICE);
            for src in srcs {
                for (row, dst) in src.chunks_exact(d).zip(&mut o) {
                    dst[..l1 - l0].copy_from_slice(&row[l0..l1]);
                    dst[l1 - l0..].fill(0.0);
                }
            }
        });
}

/// Token of an entry's gradient row `src` (i, or B + i for an auxiliary pair).
#[inline]
fn token(src: u32, b: usize) -> usize {
    let src = src as usize;
    if src >= b {
        src - b
    } else {
        src
    }
}

/// One feature's sums over one slice, carried on: se += Σ c·x′_i, sd += Σ a·gsrc lane by lane,
/// in entry order.
#[inline]
fn slice_sums(
    ens: &[Entry],
    b: usize,
    xs: &[f32],
    gs: &[f32],
    se: &mut [f32; SLICE],
    sd: &mut [f32; SLICE],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { slice_sums_avx512(ens, b, xs, gs, se, sd) };
    }
    slice_sums_body(ens, b, xs, gs, se, sd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn slice_sums_avx512(
    ens: &[Entry],
    b: usize,
    xs: &[f32],
    gs: &[f32],
    se: &mut [f32; SLICE],
    sd: &mut [f32; SLICE],
) {
    slice_sums_body(ens, b, xs, gs, se, sd)
}

#[inline(always)]
fn slice_sums_body(
    ens: &[Entry],
    b: usize,
    xs: &[f32],
    gs: &[f32],
    se: &mut [f32; SLICE],
    sd: &mut [f32; SLICE],
) {
    let (mut ae, mut ad) = (*se, *sd);
    for e in ens {
        let src = e.src as usize;
        let i = token(e.src, b);
        let x: &[f32; SLICE] = xs[i * SLICE..(i + 1) * SLICE].try_into().unwrap();
        let g: &[f32; SLICE] = gs[src * SLICE..(src + 1) * SLICE].try_into().unwrap();
        for l in 0..SLICE {
            ae[l] += e.c * x[l];
            ad[l] += e.a * g[l];
        }
    }
    (*se, *sd) = (ae, ad);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random ascending columns per row; feature 0..3 are in almost every row, so that they
    /// reach [`SLICED_MIN`] entries while most features stay below it.
    fn matching(rng: &mut impl Rng, b: usize, f: usize, per_row: usize) -> (Vec<usize>, Vec<u32>) {
        let mut row_ptr = vec![0];
        let mut cols = Vec::new();
        for _ in 0..b {
            let mut row: Vec<u32> = (0..f as u32)
                .filter(|&j| j < 3 || rng.random_range(0..f) < per_row)
                .collect();
            row.dedup();
            cols.extend(row);
            row_ptr.push(cols.len());
        }
        (row_ptr, cols)
    }

    /// The old whole-row algorithm: per feature, axpy per entry in token order (main before
    /// auxiliary), then the projection.
    #[allow(clippy::type_complexity)]
    fn by_rows(
        entries: &[(usize, u32, f32, f32, bool)],
        f: usize,
        d: usize,
        xc: &[f32],
        g: &[f32],
        h: &[f32],
        w_dec: &[f32],
    ) -> Vec<(u32, Vec<f32>, Vec<f32>, f32)> {
        let mut out = Vec::new();
        for j in 0..f as u32 {
            let mine: Vec<_> = entries.iter().filter(|e| e.1 == j).collect();
            if mine.is_empty() {
                continue;
            }
            let (mut ge, mut gd, mut gb) = (vec![0f32; d], vec![0f32; d], 0f32);
            for &&(i, _, a, c, aux) in &mine {
                gb += c;
                vector::axpy(c, &xc[i * d..(i + 1) * d], &mut ge);
                let src = if aux { h } else { g };
                vector::axpy(a, &src[i * d..(i + 1) * d], &mut gd);
            }
            let w = &w_dec[j as usize * d..(j as usize + 1) * d];
            let dot = vector::dot(&gd, w);
            vector::axpy(-dot, w, &mut gd);
            out.push((j, ge, gd, gb));
        }
        out
    }

    /// Sliced (features with ≥ SLICED_MIN entries) and row-by-row sums equal the whole-row
    /// algorithm bit for bit, with d not a multiple of the slice (a padded tail slice), with and
    /// without the auxiliary matching, on one thread as on several, and with the sliced sums
    /// run in one pass per slice or carried over blocks of 7 tokens or of one.
    #[test]
    fn sliced_sums_equal_whole_row_sums_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (b, f) = (40usize, 24usize);
        for d in [45usize, 32, 7] {
            for with_aux in [false, true] {
                let r = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<f32> {
                    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
                };
                let (a, xc, g, h, w_dec) = (
                    r(&mut rng, b * f),
                    r(&mut rng, b * d),
                    r(&mut rng, b * d),
                    r(&mut rng, b * d),
                    r(&mut rng, f * d),
                );
                let (mp, mc) = matching(&mut rng, b, f, 3);
                let (ap, ac) = matching(&mut rng, b, f, 5);
                let (cm, ca) = (r(&mut rng, mc.len()), r(&mut rng, ac.len()));
                let vals = |p: &[usize], c: &[u32]| -> Vec<f32> {
                    (0..b)
                        .flat_map(|i| c[p[i]..p[i + 1]].iter().map(move |&j| (i, j)))
                        .map(|(i, j)| a[i * f + j as usize])
                        .collect()
                };
                let (am, aa) = (vals(&mp, &mc), vals(&ap, &ac));
                let main = Pairs {
                    row_ptr: &mp,
                    cols: &mc,
                    a: &am,
                    c: &cm,
                };
                let aux = Pairs {
                    row_ptr: &ap,
                    cols: &ac,
                    a: &aa,
                    c: &ca,
                };
                let mut flat = Vec::new();
                for i in 0..b {
                    for (k, &j) in mc[mp[i]..mp[i + 1]].iter().enumerate() {
                        flat.push((i, j, a[i * f + j as usize], cm[mp[i] + k], false));
                    }
                    if with_aux {
                        for (k, &j) in ac[ap[i]..ap[i + 1]].iter().enumerate() {
                            flat.push((i, j, a[i * f + j as usize], ca[ap[i] + k], true));
                        }
                    }
                }
                let want = by_rows(&flat, f, d, &xc, &g, &h, &w_dec);
                for (threads, block) in [(1usize, None), (3, None), (1, Some(7)), (3, Some(1))] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut view = FeatureView {
                        token_block: block,
                        ..FeatureView::default()
                    };
                    let nt = want.len();
                    let (mut ge, mut gd, mut gb) =
                        (vec![0f32; nt * d], vec![0f32; nt * d], vec![0f32; nt]);
                    pool.install(|| {
                        view.build(b, f, &main, with_aux.then_some(&aux), None);
                        let hh = with_aux.then_some(&h[..]);
                        view.gradients(&xc, &g, hh, None, &w_dec, d, &mut ge, &mut gd, &mut gb);
                    });
                    let heavy = (0..nt)
                        .filter(|&t| view.ptr[t + 1] - view.ptr[t] >= SLICED_MIN)
                        .count();
                    assert!(heavy >= 3 && heavy < nt, "both paths run: {heavy} of {nt}");
                    let at = format!("d {d}, aux {with_aux}, {threads} threads, tokens {block:?}");
                    assert_eq!(view.touched.len(), nt, "{at}");
                    for (t, (j, we, wd, wb)) in want.iter().enumerate() {
                        assert_eq!(view.touched[t], *j, "{at}");
                        assert_eq!(view.slot[*j as usize], t as u32, "{at}");
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&ge[t * d..(t + 1) * d]), bits(we), "{at}: ∂W_enc[{j}]");
                        assert_eq!(bits(&gd[t * d..(t + 1) * d]), bits(wd), "{at}: ∂W_dec[{j}]");
                        assert_eq!(gb[t].to_bits(), wb.to_bits(), "{at}: ∂b_enc[{j}]");
                    }
                }
            }
        }
    }
}
