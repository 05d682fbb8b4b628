//! Selection primitives shared by the allocation rules. All are O(n) selections (never a full
//! sort of the candidates) and deterministic: among equal values the lower index wins, and a
//! zero (or negative) entry is never selected.

/// Indices (ascending) of the `k` largest positive entries of `values`, appended to `out`.
/// `scratch` is reused between calls to avoid allocation.
///
/// Candidates are held as one integer key each (the value's bits above the complemented index:
/// positive floats order like their bit patterns, so a larger key is a larger value or, among
/// equal values, a lower index), and selected by key. Rows of at most [`SHORT_ROW`]·k entries
/// (an auxiliary selection over its eligible features: hundreds of a few thousand) take every
/// positive entry at once, branch-free, select the k-th key and collect the indices in order.
/// Longer rows take one pass with a rising threshold: candidates above the threshold are
/// buffered; when the buffer holds 2k + 32 of them it is cut to its best k (a select, not a
/// sort) and the threshold becomes the k-th best value. Entries are visited in index order, so
/// a later entry equal to the threshold loses its tie and can be skipped. Blocks of 16 entries
/// none of which beats the threshold are skipped after one vector compare ([`row_body`]).
/// O(n) overall.
pub fn top_k_positive(values: &[f32], k: usize, scratch: &mut Vec<u64>, out: &mut Vec<u32>) {
    scratch.clear();
    if k == 0 {
        return;
    }
    if values.len() <= SHORT_ROW * k {
        return top_k_short(values, k, scratch, out);
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::simd;
        if simd::avx512() {
            // SAFETY: the CPU supports AVX-512F (checked above).
            unsafe { row_avx512(values, k, scratch) };
        } else if simd::avx2_fma() {
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { row_avx2(values, k, scratch) };
        } else {
            row_body::<PORTABLE>(values, k, scratch);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    row_body::<PORTABLE>(values, k, scratch);
    finish_keys(scratch, k, out);
}

/// The indices of the best k of `keys` (value bits over the complemented index), ascending,
/// appended to `out`.
fn finish_keys(keys: &mut Vec<u64>, k: usize, out: &mut Vec<u32>) {
    if keys.len() > k {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
    let start = out.len();
    out.extend(keys.iter().map(|&key| !(key as u32)));
    out[start..].sort_unstable();
}

/// The rising-threshold pass of [`top_k_positive`] over a long row: every entry above the
/// threshold buffered as a key, the buffer cut to its best k at 2k + 32 keys. Blocks of 16
/// entries are tested with one compare on the instruction set `ISA` (the caller has checked
/// the CPU), and in a block that passes only the entries above are visited (a bit mask).
#[inline(always)]
fn row_body<const ISA: u8>(values: &[f32], k: usize, scratch: &mut Vec<u64>) {
    let cap = 2 * k + 32;
    let mut thr = [0f32; 16];
    let mut blocks = values.chunks_exact(16);
    for (c, block) in (&mut blocks).enumerate() {
        let mut m = above_mask::<ISA>(block.try_into().unwrap(), &thr);
        while m != 0 {
            let o = m.trailing_zeros() as usize;
            m &= m - 1;
            let v = block[o];
            // The threshold may have risen within this block: test again.
            if v > thr[0] {
                if let Some(t) = offer(scratch, rank_key(v, (c * 16 + o) as u32), k, cap) {
                    thr = [t; 16];
                }
            }
        }
    }
    let base = values.len() - blocks.remainder().len();
    for (o, &v) in blocks.remainder().iter().enumerate() {
        if v > thr[0] {
            if let Some(t) = offer(scratch, rank_key(v, (base + o) as u32), k, cap) {
                thr = [t; 16];
            }
        }
    }
}

/// Indices (ascending) of the entries of `values` that are positive and at least `t`, appended
/// to `out`. Blocks of 16 entries with none of them are skipped after one vector compare (as
/// in [`top_k_positive`]), on the instruction sets `kernels::simd` allows.
pub fn positive_at_least(values: &[f32], t: f32, out: &mut Vec<u32>) {
    if t.is_nan() {
        return; // v ≥ NaN holds for no v
    }
    // v ≥ t > 0 is v > the float below t; for t ≤ 0 the test is v > 0.
    let above = if t > 0.0 {
        f32::from_bits(t.to_bits() - 1)
    } else {
        0.0
    };
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::simd;
        if simd::avx512() {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { above_avx512(values, above, out) };
        }
        if simd::avx2_fma() {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { above_avx2(values, above, out) };
        }
    }
    above_body::<PORTABLE>(values, above, out)
}

/// Indices of the entries above `t` (≥ 0), by blocks of 16 tested on `ISA`.
#[inline(always)]
fn above_body<const ISA: u8>(values: &[f32], t: f32, out: &mut Vec<u32>) {
    let thr = [t; 16];
    let mut blocks = values.chunks_exact(16);
    for (c, block) in (&mut blocks).enumerate() {
        let mut m = above_mask::<ISA>(block.try_into().unwrap(), &thr);
        while m != 0 {
            out.push((c * 16) as u32 + m.trailing_zeros());
            m &= m - 1;
        }
    }
    let base = values.len() - blocks.remainder().len();
    let mut m = mask_gt(blocks.remainder(), &thr);
    while m != 0 {
        out.push(base as u32 + m.trailing_zeros());
        m &= m - 1;
    }
}

/// [`above_body`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn above_avx512(values: &[f32], t: f32, out: &mut Vec<u32>) {
    above_body::<AVX512>(values, t, out)
}

/// [`above_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn above_avx2(values: &[f32], t: f32, out: &mut Vec<u32>) {
    above_body::<AVX2>(values, t, out)
}

/// Buffer `key`; when the buffer reaches `cap` keys, cut it to its best k and return the new
/// threshold (the k-th best value).
#[inline(always)]
fn offer(scratch: &mut Vec<u64>, key: u64, k: usize, cap: usize) -> Option<f32> {
    scratch.push(key);
    (scratch.len() >= cap).then(|| {
        scratch.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        scratch.truncate(k);
        f32::from_bits((scratch[k - 1] >> 32) as u32)
    })
}

/// [`row_body`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(values: &[f32], k: usize, scratch: &mut Vec<u64>) {
    row_body::<AVX512>(values, k, scratch)
}

/// [`row_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(values: &[f32], k: usize, scratch: &mut Vec<u64>) {
    row_body::<AVX2>(values, k, scratch)
}

/// Rows up to this many times k take [`top_k_short`]: measured on an auxiliary selection of
/// k = 384 among 1,800 entries, half of them positive, 6.3 µs a row against 16 µs with the
/// rising threshold; on a main TopK row (k = 32 of 24,576) the threshold skips most blocks.
pub const SHORT_ROW: usize = 8;

/// The key of a value at an index; see [`top_k_positive`].
#[inline(always)]
fn rank_key(v: f32, i: u32) -> u64 {
    ((v.to_bits() as u64) << 32) | (!i) as u64
}

/// [`top_k_positive`] for a short row: every positive entry's key (branch-free compaction),
/// the k-th largest key, then the indices whose key reaches it, in order (branch-free).
fn top_k_short(values: &[f32], k: usize, keys: &mut Vec<u64>, out: &mut Vec<u32>) {
    let n = values.len();
    keys.clear();
    keys.resize(n, 0);
    let mut len = 0;
    for (i, &v) in values.iter().enumerate() {
        keys[len] = rank_key(v, i as u32);
        len += usize::from(v > 0.0);
    }
    let start = out.len();
    let take = len.min(k);
    out.resize(start + take, 0);
    let kth = if len > k {
        *keys[..len].select_nth_unstable_by(k - 1, |a, b| b.cmp(a)).1
    } else {
        0
    };
    let mut m = start;
    for (i, &v) in values.iter().enumerate() {
        if m == start + take {
            break;
        }
        out[m] = i as u32;
        m += usize::from((v > 0.0) & (rank_key(v, i as u32) >= kth));
    }
    out.truncate(start + take);
}

/// Per column of a block: for columns `col0 .. col0 + caps.len()` of the row-major n×stride
/// matrix `values`, the `caps[c]` largest positive entries' row indices (ascending) in
/// `outs[c]` (cleared first). `scratch` is reused between calls.
///
/// The block is read row by row, each row's part contiguous and asked for a few rows ahead,
/// so a wide block streams through memory. Per column, the rising-threshold scheme of
/// [`top_k_positive`] with the same tie rule: entries above the column's threshold are
/// buffered as keys (value bits over the complemented row index), and a buffer that reaches
/// 2k + 8 keys is cut to its best k (a select on the keys, never a read of `values`), the
/// threshold becoming the k-th best value. The short buffers of a block lie side by side in
/// one allocation that stays in cache. A block of 16 columns whose entries are all at or below
/// their thresholds is skipped after one vector compare; in the others only the entries above
/// are visited (a bit mask).
pub fn top_k_positive_columns(
    values: &[f32],
    n: usize,
    stride: usize,
    col0: usize,
    caps: &[usize],
    scratch: &mut ColumnScratch,
    outs: &mut [Vec<u32>],
) {
    let block = Block {
        values,
        n,
        stride,
        col0,
        caps,
    };
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::simd;
        if simd::avx512() {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { columns_avx512(&block, scratch, outs) };
        }
        if simd::avx2_fma() {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { columns_avx2(&block, scratch, outs) };
        }
    }
    columns_body::<PORTABLE>(&block, scratch, outs)
}

/// The arguments of one [`top_k_positive_columns`] call.
struct Block<'a> {
    values: &'a [f32],
    n: usize,
    stride: usize,
    col0: usize,
    caps: &'a [usize],
}

/// The instruction sets of [`columns_body`]'s block compare.
const PORTABLE: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// Bit l set where `r[l] > t[l]` (false for NaN), on the instruction set `ISA`; the caller
/// has checked that the CPU supports it.
#[inline(always)]
fn above_mask<const ISA: u8>(r: &[f32; 16], t: &[f32; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if ISA == AVX512 {
            // SAFETY: 16 floats each side; AVX-512F is enabled in the calling build.
            return unsafe {
                u32::from(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(
                    _mm512_loadu_ps(r.as_ptr()),
                    _mm512_loadu_ps(t.as_ptr()),
                ))
            };
        }
        if ISA == AVX2 {
            // SAFETY: 16 floats each side; AVX2 is enabled in the calling build.
            return unsafe {
                let lo = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_loadu_ps(r.as_ptr()),
                    _mm256_loadu_ps(t.as_ptr()),
                );
                let hi = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_loadu_ps(r.as_ptr().add(8)),
                    _mm256_loadu_ps(t.as_ptr().add(8)),
                );
                (_mm256_movemask_ps(lo) as u32) | ((_mm256_movemask_ps(hi) as u32) << 8)
            };
        }
    }
    mask_gt(r, t)
}

/// Bit l set where `r[l] > t[l]`, over the common length (at most 32): the portable compare,
/// also used for a block's tail of fewer than 16 columns.
#[inline(always)]
fn mask_gt(r: &[f32], t: &[f32]) -> u32 {
    r.iter()
        .zip(t)
        .enumerate()
        .fold(0u32, |m, (l, (&v, &t))| m | (u32::from(v > t) << l))
}

/// [`top_k_positive_columns`] compiled for AVX-512F: a block's compare is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512(block: &Block<'_>, scratch: &mut ColumnScratch, outs: &mut [Vec<u32>]) {
    columns_body::<AVX512>(block, scratch, outs)
}

/// [`top_k_positive_columns`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2(block: &Block<'_>, scratch: &mut ColumnScratch, outs: &mut [Vec<u32>]) {
    columns_body::<AVX2>(block, scratch, outs)
}

#[inline(always)]
fn columns_body<const ISA: u8>(
    block: &Block<'_>,
    scratch: &mut ColumnScratch,
    outs: &mut [Vec<u32>],
) {
    let &Block {
        values,
        n,
        stride,
        col0,
        caps,
    } = block;
    let nc = caps.len().min(outs.len());
    let ColumnScratch {
        thr,
        keys,
        start,
        len,
    } = scratch;
    thr.clear();
    thr.extend(
        caps[..nc]
            .iter()
            .map(|&m| if m == 0 { f32::INFINITY } else { 0.0 }),
    );
    // Column c's buffer: keys[start[c] .. start[c] + 2·caps[c] + 8], len[c] of them held.
    start.clear();
    let mut total = 0;
    for &m in &caps[..nc] {
        start.push(total);
        total += cut_at(m);
    }
    keys.clear();
    keys.resize(total, 0);
    len.clear();
    len.resize(nc, 0);
    for i in 0..n {
        let row = &values[i * stride + col0..i * stride + col0 + nc];
        let ahead = (i + PREFETCH_ROWS).min(n - 1) * stride + col0;
        for c0 in (0..nc).step_by(16) {
            prefetch(values, ahead + c0);
            let r = &row[c0..(c0 + 16).min(nc)];
            let t = &thr[c0..c0 + r.len()];
            let mut above = match (<&[f32; 16]>::try_from(r), <&[f32; 16]>::try_from(t)) {
                (Ok(r), Ok(t)) => above_mask::<ISA>(r, t),
                _ => mask_gt(r, t),
            };
            while above != 0 {
                let l = above.trailing_zeros() as usize;
                above &= above - 1;
                let c = c0 + l;
                let (k, at) = (caps[c], start[c]);
                keys[at + len[c]] = rank_key(r[l], i as u32);
                len[c] += 1;
                if len[c] == cut_at(k) {
                    let buf = &mut keys[at..at + len[c]];
                    buf.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
                    len[c] = k;
                    thr[c] = f32::from_bits((buf[k - 1] >> 32) as u32);
                }
            }
        }
    }
    for (c, out) in outs.iter_mut().enumerate().take(nc) {
        let k = caps[c];
        let buf = &mut keys[start[c]..start[c] + len[c]];
        if buf.len() > k {
            buf.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        }
        out.clear();
        out.extend(buf.iter().take(k).map(|&key| !(key as u32)));
        out.sort_unstable();
    }
}

/// A column buffer of [`top_k_positive_columns`] for capacity `k` is cut to its best k when it
/// holds this many keys (0 for a column that takes nothing).
#[inline(always)]
fn cut_at(k: usize) -> usize {
    if k == 0 {
        0
    } else {
        2 * k + 8
    }
}

/// How many rows ahead [`top_k_positive_columns`] asks for the block's lines.
const PREFETCH_ROWS: usize = 4;

/// A hint to bring the cache line holding `values[at]` into L1 (no effect past the end).
#[inline(always)]
fn prefetch(values: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < values.len() {
        // SAFETY: `at` is in bounds; a prefetch reads nothing architecturally.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(values.as_ptr().add(at).cast());
        }
    }
}

/// Reused buffers of [`top_k_positive_columns`]: the columns' thresholds, their candidate
/// keys side by side, and where each column's buffer starts and how full it is.
#[derive(Debug, Default)]
pub struct ColumnScratch {
    thr: Vec<f32>,
    keys: Vec<u64>,
    start: Vec<usize>,
    len: Vec<usize>,
}

/// The threshold of a global top-`k` over the positive entries of `values`: returns
/// `(t, n_above, n_at_t_to_take)` so that the selection is every entry `> t` plus the first
/// `n_at_t_to_take` entries equal to `t` in index order. `t` is the k-th largest positive value.
/// Returns `None` when there are at most `k` positive entries (select them all).
///
/// Radix select on the IEEE bit patterns (positive floats order like their bits as u32):
/// two histogram passes of 2^16 bins, O(n) time, one histogram per thread ([`histogram`]).
pub fn global_kth_positive(values: &[f32], k: usize) -> Option<(f32, usize, usize)> {
    let hist_hi = histogram(values, |bits| ((bits >> 16) as usize, 1));
    let positives: u64 = hist_hi.iter().sum();
    if positives as usize <= k || k == 0 {
        return None;
    }
    // Walk from the largest bin down until the k-th largest falls in `bin`.
    let mut above = 0u64;
    let mut bin = 0usize;
    for b in (0..1usize << 16).rev() {
        if above + hist_hi[b] >= k as u64 {
            bin = b;
            break;
        }
        above += hist_hi[b];
    }
    let hist_lo = histogram(values, |bits| {
        (
            (bits & 0xffff) as usize,
            u64::from((bits >> 16) as usize == bin),
        )
    });
    let mut above2 = above;
    for lo in (0..1usize << 16).rev() {
        let c = hist_lo[lo];
        if above2 + c >= k as u64 {
            let t = f32::from_bits(((bin as u32) << 16) | lo as u32);
            let take = (k as u64 - above2) as usize;
            return Some((t, above2 as usize, take));
        }
        above2 += c;
    }
    None
}

/// A histogram of 2¹⁶ bins over the positive entries of `values`: `at(bits)` gives an entry's
/// bin and weight (0 or 1) from its bits. One histogram per thread's contiguous part, then
/// summed (integer counts: the result does not depend on the split). Branch-free: every entry
/// adds its weight, 0 for the non-positive ones (their bits still index a bin).
fn histogram(values: &[f32], at: impl Fn(u32) -> (usize, u64) + Sync) -> Vec<u64> {
    use rayon::prelude::*;
    const BINS: usize = 1 << 16;
    let parts = rayon::current_num_threads().max(1);
    let part = values.len().div_ceil(parts).max(1);
    let hists: Vec<Vec<u64>> = values
        .par_chunks(part)
        .map(|c| {
            let mut h = vec![0u64; BINS];
            for &v in c {
                let (bin, w) = at(v.to_bits());
                h[bin] += w * u64::from(v > 0.0);
            }
            h
        })
        .collect();
    let mut total = vec![0u64; BINS];
    for h in hists {
        total.iter_mut().zip(h).for_each(|(t, c)| *t += c);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    /// Order by value descending, then index ascending: the "better" candidate compares Less.
    fn better(a: (f32, u32), b: (f32, u32)) -> Ordering {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
    }

    fn brute_top_k(values: &[f32], k: usize) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..values.len() as u32)
            .filter(|&i| values[i as usize] > 0.0)
            .collect();
        idx.sort_by(|&i, &j| better((values[i as usize], i), (values[j as usize], j)));
        idx.truncate(k);
        idx.sort_unstable();
        idx
    }

    proptest! {
        #[test]
        fn top_k_matches_brute_force(
            values in prop::collection::vec(
                prop_oneof![
                    8 => prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0],
                    1 => prop_oneof![
                        Just(f32::NAN),
                        Just(f32::INFINITY),
                        Just(f32::NEG_INFINITY),
                        Just(-0.0f32),
                        Just(f32::MIN_POSITIVE / 2.0),
                    ],
                ],
                0..600,
            ),
            k in 0usize..50,
        ) {
            let mut s = Vec::new();
            let mut out = Vec::new();
            top_k_positive(&values, k, &mut s, &mut out);
            prop_assert_eq!(out, brute_top_k(&values, k));
        }

        #[test]
        fn long_row_selection_is_equal_on_every_instruction_set(
            values in prop::collection::vec(
                prop_oneof![
                    8 => prop_oneof![Just(0.0f32), Just(0.5f32), -1.0f32..1.0],
                    1 => prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-0.0f32)],
                ],
                0..3000,
            ),
            k in 1usize..40,
        ) {
            // The rising-threshold pass (rows longer than SHORT_ROW·k, with a tail of fewer
            // than 16) on the portable, AVX2 and AVX-512 builds, each where the CPU has it
            // (whatever SPARSA_SIMD caps), against the brute force.
            let want = brute_top_k(&values, k);
            let finish = |mut keys: Vec<u64>| {
                let mut idx = Vec::new();
                finish_keys(&mut keys, k, &mut idx);
                idx
            };
            let mut keys = Vec::new();
            row_body::<PORTABLE>(&values, k, &mut keys);
            prop_assert_eq!(finish(keys), want.clone());
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    let mut keys = Vec::new();
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    unsafe { row_avx2(&values, k, &mut keys) };
                    prop_assert_eq!(finish(keys), want.clone());
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut keys = Vec::new();
                    // SAFETY: the CPU has AVX-512F (checked).
                    unsafe { row_avx512(&values, k, &mut keys) };
                    prop_assert_eq!(finish(keys), want);
                }
            }
        }

        #[test]
        fn entries_at_least_a_threshold_on_every_instruction_set(
            values in prop::collection::vec(
                prop_oneof![
                    4 => prop_oneof![Just(0.0f32), Just(0.5f32), -1.0f32..1.0],
                    1 => prop_oneof![
                        Just(f32::NAN),
                        Just(f32::INFINITY),
                        Just(-0.0f32),
                        Just(f32::from_bits(1)),
                    ],
                ],
                0..200,
            ),
            t in prop_oneof![
                Just(0.5f32), Just(0.0f32), Just(-0.3f32), Just(f32::INFINITY),
                Just(f32::from_bits(1)), Just(f32::NAN), -1.0f32..1.0,
            ],
        ) {
            // The public entry point and each build the CPU has, against the scalar rule.
            let want: Vec<u32> = (0..values.len() as u32)
                .filter(|&i| values[i as usize] >= t && values[i as usize] > 0.0)
                .collect();
            let mut out = vec![7];
            positive_at_least(&values, t, &mut out);
            prop_assert_eq!(&out[1..], &want[..]);
            if t.is_nan() {
                return Ok(());
            }
            let above = if t > 0.0 { f32::from_bits(t.to_bits() - 1) } else { 0.0 };
            let mut out = Vec::new();
            above_body::<PORTABLE>(&values, above, &mut out);
            prop_assert_eq!(&out, &want);
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    let mut out = Vec::new();
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    unsafe { above_avx2(&values, above, &mut out) };
                    prop_assert_eq!(&out, &want);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut out = Vec::new();
                    // SAFETY: the CPU has AVX-512F (checked).
                    unsafe { above_avx512(&values, above, &mut out) };
                    prop_assert_eq!(&out, &want);
                }
            }
        }

        #[test]
        fn column_block_top_k_matches_brute_force(
            values in prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0], 1..3000),
            ncols in 1usize..40,
            caps in prop::collection::vec(0usize..40, 40),
        ) {
            // Blocks narrower and wider than 16 columns (the skip test's width), with a tail.
            let stride = ncols + 1;
            let n = values.len() / stride;
            let values = &values[..n * stride];
            let mut scratch = ColumnScratch::default();
            let mut outs = vec![Vec::new(); ncols];
            // Twice with the same scratch: the second call must not see the first's buffers.
            for _ in 0..2 {
                top_k_positive_columns(values, n, stride, 1, &caps[..ncols], &mut scratch, &mut outs);
                for c in 0..ncols {
                    let col: Vec<f32> = (0..n).map(|i| values[i * stride + 1 + c]).collect();
                    prop_assert_eq!(&outs[c], &brute_top_k(&col, caps[c]));
                }
            }
        }

        #[test]
        fn column_selection_is_equal_on_every_instruction_set(
            values in prop::collection::vec(
                prop_oneof![
                    4 => prop_oneof![Just(0.0f32), Just(0.5f32), -1.0f32..1.0],
                    1 => prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-0.0f32)],
                ],
                200..4000,
            ),
            ncols in 16usize..70,
            caps in prop::collection::vec(0usize..12, 70),
        ) {
            // The portable, AVX2 and AVX-512 builds of the block compare, each where the CPU
            // has it (whatever SPARSA_SIMD caps), against the brute force.
            let stride = ncols + 3;
            let n = values.len() / stride;
            let values = &values[..n * stride];
            let caps = &caps[..ncols];
            let want: Vec<Vec<u32>> = (0..ncols)
                .map(|c| brute_top_k(&(0..n).map(|i| values[i * stride + 2 + c]).collect::<Vec<_>>(), caps[c]))
                .collect();
            let mut scratch = ColumnScratch::default();
            let mut outs = vec![Vec::new(); ncols];
            let block = Block { values, n, stride, col0: 2, caps };
            columns_body::<PORTABLE>(&block, &mut scratch, &mut outs);
            prop_assert_eq!(&outs, &want);
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    unsafe { columns_avx2(&block, &mut scratch, &mut outs) };
                    prop_assert_eq!(&outs, &want);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked).
                    unsafe { columns_avx512(&block, &mut scratch, &mut outs) };
                    prop_assert_eq!(&outs, &want);
                }
            }
        }

        #[test]
        fn global_threshold_matches_brute_force(
            values in prop::collection::vec(prop_oneof![
                Just(0.0f32), Just(0.5f32), -2.0f32..2.0, 0.0f32..1e-30,
                Just(f32::NAN), Just(f32::INFINITY), Just(-0.0f32),
            ], 1..400),
            k in 1usize..100,
        ) {
            let want = brute_top_k(&values, k);
            // The per-thread histograms' split does not change the answer.
            let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            prop_assert_eq!(
                three.install(|| global_kth_positive(&values, k)),
                global_kth_positive(&values, k)
            );
            let got: Vec<u32> = match global_kth_positive(&values, k) {
                None => (0..values.len() as u32).filter(|&i| values[i as usize] > 0.0).collect(),
                Some((t, _above, take)) => {
                    let mut sel = Vec::new();
                    let mut ties = 0;
                    for (i, &v) in values.iter().enumerate() {
                        if v > t { sel.push(i as u32); }
                        else if v == t && ties < take { sel.push(i as u32); ties += 1; }
                    }
                    sel
                }
            };
            prop_assert_eq!(got, want);
        }
    }
}
