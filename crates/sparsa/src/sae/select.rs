//! Selection primitives shared by the allocation rules. All are O(n) selections (never a full
//! sort of the candidates) and deterministic: among equal values the lower index wins, and a
//! zero (or negative) entry is never selected.

use std::cmp::Ordering;

/// Order by value descending, then index ascending: the "better" candidate compares Less.
#[inline]
fn better(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Indices (ascending) of the `k` largest positive entries of `values`, appended to `out`.
/// `scratch` is reused between calls to avoid allocation.
pub fn top_k_positive(values: &[f32], k: usize, scratch: &mut Vec<u32>, out: &mut Vec<u32>) {
    scratch.clear();
    scratch.extend(
        values
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .map(|(i, _)| i as u32),
    );
    if k == 0 {
        return;
    }
    if scratch.len() > k {
        scratch.select_nth_unstable_by(k - 1, |&i, &j| {
            better((values[i as usize], i), (values[j as usize], j))
        });
        scratch.truncate(k);
    }
    scratch.sort_unstable();
    out.extend_from_slice(scratch);
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
    scratch.clear();
    scratch.extend(
        (0..n)
            .filter(|&i| values[i * stride + col] > 0.0)
            .map(|i| i as u32),
    );
    if k == 0 {
        return;
    }
    let at = |i: u32| values[i as usize * stride + col];
    if scratch.len() > k {
        scratch.select_nth_unstable_by(k - 1, |&i, &j| better((at(i), i), (at(j), j)));
        scratch.truncate(k);
    }
    scratch.sort_unstable();
    out.extend_from_slice(scratch);
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
    let hist_hi = values
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = vec![0u64; 1 << 16];
            for &v in c {
                if v > 0.0 {
                    h[(v.to_bits() >> 16) as usize] += 1;
                }
            }
            h
        })
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
        .map(|c| {
            let mut h = vec![0u64; 1 << 16];
            for &v in c {
                if v > 0.0 && (v.to_bits() >> 16) as usize == bin {
                    h[(v.to_bits() & 0xffff) as usize] += 1;
                }
            }
            h
        })
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
            values in prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0], 0..200),
            k in 0usize..50,
        ) {
            let mut s = Vec::new();
            let mut out = Vec::new();
            top_k_positive(&values, k, &mut s, &mut out);
            prop_assert_eq!(out, brute_top_k(&values, k));
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
