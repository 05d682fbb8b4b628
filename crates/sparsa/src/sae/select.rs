//! Selection primitives shared by the allocation rules. All are O(n) selections (never a full
//! sort of the candidates) and deterministic: among equal values the lower index wins, and a
//! zero (or negative) entry is never selected.

use std::cmp::Ordering;

/// Order by value descending, then index ascending: the "better" candidate compares Less.
#[inline]
fn better(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Whether any entry of a block (at most 16) is above `t`: a fixed-width, branch-free test on
/// full blocks so that it compiles to a few vector compares.
#[inline(always)]
pub fn any_above(block: &[f32], t: f32) -> bool {
    if let Ok(b) = <&[f32; 16]>::try_from(block) {
        let mut any = false;
        for &v in b {
            any |= v > t;
        }
        any
    } else {
        block.iter().any(|&v| v > t)
    }
}

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
/// none of which beats the threshold are skipped with one vectorisable test. O(n) overall.
pub fn top_k_positive(values: &[f32], k: usize, scratch: &mut Vec<u64>, out: &mut Vec<u32>) {
    scratch.clear();
    if k == 0 {
        return;
    }
    if values.len() <= SHORT_ROW * k {
        return top_k_short(values, k, scratch, out);
    }
    let cap = 2 * k + 32;
    let mut thr = 0f32;
    for (c, chunk) in values.chunks(16).enumerate() {
        if !any_above(chunk, thr) {
            continue;
        }
        for (o, &v) in chunk.iter().enumerate() {
            if v > thr {
                scratch.push(rank_key(v, (c * 16 + o) as u32));
                if scratch.len() >= cap {
                    scratch.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
                    scratch.truncate(k);
                    thr = f32::from_bits((scratch[k - 1] >> 32) as u32);
                }
            }
        }
    }
    if scratch.len() > k {
        scratch.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        scratch.truncate(k);
    }
    let start = out.len();
    out.extend(scratch.iter().map(|&key| !(key as u32)));
    out[start..].sort_unstable();
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
/// `outs[c]` (cleared first). Rows are read one cache line of the block at a time, so a block
/// of 16 columns reads each of its lines of `values` once (the column-at-a-time version reads a
/// line per entry). Same rising-threshold scheme and tie rule as [`top_k_positive`].
pub fn top_k_positive_columns(
    values: &[f32],
    n: usize,
    stride: usize,
    col0: usize,
    caps: &[usize],
    thr: &mut Vec<f32>,
    outs: &mut [Vec<u32>],
) {
    let nc = caps.len().min(outs.len());
    thr.clear();
    thr.extend(
        caps.iter()
            .map(|&m| if m == 0 { f32::INFINITY } else { 0.0 }),
    );
    outs.iter_mut().for_each(|o| o.clear());
    let at = |c: usize, i: u32| values[i as usize * stride + col0 + c];
    for i in 0..n {
        let row = &values[i * stride + col0..i * stride + col0 + nc];
        // A full block of 16 whose entries are all at or below their column's threshold is
        // skipped with one fixed-width vector test.
        if let (Ok(r), Ok(t)) = (
            <&[f32; 16]>::try_from(row),
            <&[f32; 16]>::try_from(&thr[..]),
        ) {
            let mut any = false;
            for l in 0..16 {
                any |= r[l] > t[l];
            }
            if !any {
                continue;
            }
        }
        for (c, &v) in row.iter().enumerate() {
            if v > thr[c] {
                let buf = &mut outs[c];
                buf.push(i as u32);
                let k = caps[c];
                if buf.len() >= 2 * k + 32 {
                    buf.select_nth_unstable_by(k - 1, |&x, &y| {
                        better((at(c, x), x), (at(c, y), y))
                    });
                    buf.truncate(k);
                    thr[c] = at(c, buf[k - 1]);
                }
            }
        }
    }
    for (c, buf) in outs.iter_mut().enumerate().take(nc) {
        let k = caps[c];
        if buf.len() > k {
            buf.select_nth_unstable_by(k - 1, |&x, &y| better((at(c, x), x), (at(c, y), y)));
            buf.truncate(k);
        }
        buf.sort_unstable();
    }
}

/// Indices of the `k` largest positive entries of a strided column: candidates are
/// `values[i * stride + col]` for `i in 0..n`; returns row indices `i` (ascending) in `out`.
pub fn top_k_positive_strided(
    values: &[f32],
    n: usize,
    stride: usize,
    col: usize,
    k: usize,
    scratch: &mut Vec<u32>,
    out: &mut Vec<u32>,
) {
    let mut thr = Vec::new();
    let mut bufs = [std::mem::take(scratch)];
    top_k_positive_columns(values, n, stride, col, &[k], &mut thr, &mut bufs);
    let [buf] = bufs;
    out.extend_from_slice(&buf);
    *scratch = buf;
}

/// The threshold of a global top-`k` over the positive entries of `values`: returns
/// `(t, n_above, n_at_t_to_take)` so that the selection is every entry `> t` plus the first
/// `n_at_t_to_take` entries equal to `t` in index order. `t` is the k-th largest positive value.
/// Returns `None` when there are at most `k` positive entries (select them all).
///
/// Radix select on the IEEE bit patterns (positive floats order like their bits as u32):
/// two histogram passes of 2^16 bins, O(n) time, O(1) extra memory.
pub fn global_kth_positive(values: &[f32], k: usize) -> Option<(f32, usize, usize)> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    // One histogram per rayon split (fold), not per chunk.
    let hist_hi = values
        .par_chunks(CHUNK)
        .fold(
            || vec![0u64; 1 << 16],
            |mut h, c| {
                for &v in c {
                    if v > 0.0 {
                        h[(v.to_bits() >> 16) as usize] += 1;
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
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
    let hist_lo = values
        .par_chunks(CHUNK)
        .fold(
            || vec![0u64; 1 << 16],
            |mut h, c| {
                for &v in c {
                    if v > 0.0 && (v.to_bits() >> 16) as usize == bin {
                        h[(v.to_bits() & 0xffff) as usize] += 1;
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        fn column_block_top_k_matches_brute_force(
            values in prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0], 1..240),
            ncols in 1usize..6,
            caps in prop::collection::vec(0usize..40, 6),
        ) {
            let stride = ncols + 1;
            let n = values.len() / stride;
            let values = &values[..n * stride];
            let mut thr = Vec::new();
            let mut outs = vec![Vec::new(); ncols];
            top_k_positive_columns(values, n, stride, 1, &caps[..ncols], &mut thr, &mut outs);
            for c in 0..ncols {
                let col: Vec<f32> = (0..n).map(|i| values[i * stride + 1 + c]).collect();
                prop_assert_eq!(&outs[c], &brute_top_k(&col, caps[c]));
            }
        }

        #[test]
        fn global_threshold_matches_brute_force(
            values in prop::collection::vec(prop_oneof![Just(0.0f32), Just(0.5f32), -2.0f32..2.0, 0.0f32..1e-30], 1..400),
            k in 1usize..100,
        ) {
            let want = brute_top_k(&values, k);
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
