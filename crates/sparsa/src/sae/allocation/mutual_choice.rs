//! Mutual Choice (Ayonrinde 2024), identical in rule to BatchTopK (Bussmann et al. 2024): the
//! kB largest entries of the whole B×F matrix, with no per-feature cap and, by default, no
//! per-token cap.

use super::{keep_largest, AllocInput, Allocation, Matching};
use crate::sae::select::{global_kth_positive, positive_at_least, top_k_positive};
use rayon::prelude::*;

/// Global selection of the k·B largest positive entries (ties: lower flat index wins).
#[derive(Debug, Clone)]
pub struct MutualChoice {
    pub k: usize,
    /// At most this many features per token (project choice; `None`: the paper's rule): the
    /// k·B largest entries among each token's `token_cap` largest. A cap of k is TopK.
    pub token_cap: Option<usize>,
}

impl Allocation for MutualChoice {
    fn name(&self) -> &'static str {
        "mutual_choice"
    }
    fn batch_dependent(&self) -> bool {
        true
    }
    fn select(&self, input: &AllocInput, out: &mut Matching) {
        let budget = self.k * input.b;
        if let Some(cap) = self.token_cap {
            return select_capped(input, budget, cap, out);
        }
        out.reset(input.b, input.f);
        if !select_by_sample(input, budget, out) {
            out.reset(input.b, input.f);
            select_exact(input, budget, out);
        }
    }
}

/// With a per-token cap: each token's `cap` largest positive entries are the candidates (a
/// token can never keep more), and the `budget` largest of those are kept.
fn select_capped(input: &AllocInput, budget: usize, cap: usize, out: &mut Matching) {
    let (a, b, f) = (input.a, input.b, input.f);
    let rows: Vec<Vec<u32>> = a
        .par_chunks(f)
        .map_init(Vec::new, |scratch, row| {
            let mut sel = Vec::with_capacity(cap);
            top_k_positive(row, cap, scratch, &mut sel);
            sel
        })
        .collect();
    let mut pairs: Vec<(u32, u32)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().map(move |&j| (i as u32, j)))
        .collect();
    keep_largest(a, f, b, &mut pairs, budget, None);
    out.from_pairs(b, f, &pairs);
}

/// The fast route: estimate a threshold t_low from a sample of rows (every ⌈B/128⌉-th row) at
/// 1.5× the budget's share plus a margin, gather every entry ≥ t_low in one parallel pass, and
/// when at least k·B entries were gathered, the exact top k·B is among them: select it there
/// (ties by flat index, as the exact route). Returns false (nothing decided) when the estimate
/// gathered too few or too many candidates; the caller then takes the exact route.
fn select_by_sample(input: &AllocInput, budget: usize, out: &mut Matching) -> bool {
    let (a, b, f) = (input.a, input.b, input.f);
    let step = (b / 128).max(1);
    if budget == 0 || step == 1 || f == 0 {
        return false;
    }
    let rows: Vec<usize> = (0..b).step_by(step).collect();
    let mut sample = Vec::with_capacity(rows.len() * f);
    for &i in &rows {
        sample.extend_from_slice(&a[i * f..(i + 1) * f]);
    }
    let ks = (budget as f64 * rows.len() as f64 / b as f64 * 1.5).ceil() as usize + 64;
    let t_low = match global_kth_positive(&sample, ks) {
        Some((t, _, _)) => t,
        None => return false,
    };
    drop(sample);
    let cand: Vec<Vec<u32>> = a
        .par_chunks(f)
        .map(|row| {
            let mut c = Vec::new();
            positive_at_least(row, t_low, &mut c);
            c
        })
        .collect();
    let total: usize = cand.iter().map(Vec::len).sum();
    if total < budget || total > 4 * budget {
        return false;
    }
    let mut vals: Vec<(f32, u64)> = Vec::with_capacity(total);
    for (i, c) in cand.iter().enumerate() {
        vals.extend(
            c.iter()
                .map(|&j| (a[i * f + j as usize], (i * f + j as usize) as u64)),
        );
    }
    let better = |x: &(f32, u64), y: &(f32, u64)| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1));
    let (t, flat_t) = if total > budget {
        *vals.select_nth_unstable_by(budget - 1, better).1
    } else {
        // Exactly the budget: everything gathered is selected.
        (f32::NEG_INFINITY, u64::MAX)
    };
    for (i, c) in cand.iter().enumerate() {
        for &j in c {
            let v = a[i * f + j as usize];
            if v > t || (v == t && ((i * f + j as usize) as u64) <= flat_t) {
                out.cols.push(j);
            }
        }
        out.end_row();
    }
    true
}

/// The exact route: radix select of the k·B-th largest over the whole matrix.
fn select_exact(input: &AllocInput, budget: usize, out: &mut Matching) {
    let f = input.f;
    {
        match global_kth_positive(input.a, budget) {
            None => {
                for row in input.a.chunks(f) {
                    out.cols.extend(
                        row.iter()
                            .enumerate()
                            .filter(|(_, &v)| v > 0.0)
                            .map(|(j, _)| j as u32),
                    );
                    out.end_row();
                }
            }
            Some((t, _above, ties_left)) => {
                // Per token in parallel: entries > t, and entries == t (ties, rare) flagged;
                // then ties are granted in flat-index order.
                let rows: Vec<(Vec<u32>, bool)> = input
                    .a
                    .par_chunks(f)
                    .map(|row| {
                        let mut sel = Vec::new();
                        let mut tie = false;
                        for (c, chunk) in row.chunks(16).enumerate() {
                            if !chunk.iter().fold(false, |acc, &v| acc | (v >= t)) {
                                continue;
                            }
                            for (o, &v) in chunk.iter().enumerate() {
                                if v >= t {
                                    sel.push((c * 16 + o) as u32);
                                    tie |= v == t;
                                }
                            }
                        }
                        (sel, tie)
                    })
                    .collect();
                let mut ties_left = ties_left;
                for (i, (sel, tie)) in rows.into_iter().enumerate() {
                    if tie {
                        let row = &input.a[i * f..(i + 1) * f];
                        for j in sel {
                            let v = row[j as usize];
                            if v > t {
                                out.cols.push(j);
                            } else if ties_left > 0 {
                                out.cols.push(j);
                                ties_left -= 1;
                            }
                        }
                    } else {
                        out.cols.extend_from_slice(&sel);
                    }
                    out.end_row();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// At a training-sized batch (B = 2048, F = 384, k = 16: the trainer's route) the sampled
    /// route decides, and its selection is the brute-force one: sort all B·F entries by value
    /// (descending, ties by flat index) and keep the first k·B positive ones. Rows differ in scale
    /// (tokens needing many or few features) and values are coarse (ties across the cut).
    #[test]
    fn sampled_route_at_training_size_equals_brute_force() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        let (b, f, k) = (2048, 384, 16);
        for coarse in [false, true] {
            let a: Vec<f32> = (0..b * f)
                .map(|i| {
                    let scale = 0.25 + (i / f % 13) as f32 * 0.5;
                    let v: f32 = rng.random_range(-1.0f32..1.0).max(0.0) * scale;
                    if coarse {
                        (v * 16.0).round() / 16.0
                    } else {
                        v
                    }
                })
                .collect();
            let input = AllocInput {
                a: &a,
                b,
                f,
                density: &[],
                step: 0,
            };
            let mut order: Vec<usize> = (0..b * f).filter(|&i| a[i] > 0.0).collect();
            order.sort_by(|&x, &y| a[y].total_cmp(&a[x]).then(x.cmp(&y)));
            order.truncate(k * b);
            order.sort_unstable();
            let mut want = Matching::default();
            let mut pairs: Vec<(u32, u32)> = order
                .iter()
                .map(|&i| ((i / f) as u32, (i % f) as u32))
                .collect();
            pairs.sort_unstable();
            want.from_pairs(b, f, &pairs);
            let mut got = Matching::default();
            got.reset(b, f);
            assert!(
                select_by_sample(&input, k * b, &mut got),
                "coarse {coarse}: the sampled route did not decide"
            );
            assert_eq!(got, want, "coarse {coarse}");
            assert_eq!(got.nnz(), k * b);
            let mut via_trait = Matching::default();
            MutualChoice { k, token_cap: None }.select(&input, &mut via_trait);
            assert_eq!(via_trait, want, "coarse {coarse}");
        }
    }

    /// The sampled route agrees with the exact route whenever it decides, including ties and
    /// rows of very different scales (tokens that need many or few features).
    #[test]
    fn sampled_route_equals_exact_route() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut decided = 0;
        for case in 0..24 {
            let (b, f) = (256 + 64 * (case % 5), 48 + case);
            let k = 1 + case % 7;
            let a: Vec<f32> = (0..b * f)
                .map(|i| {
                    let scale = 1.0 + (i / f % 9) as f32;
                    let v: f32 = rng.random_range(-1.0..1.0);
                    // Coarse values make ties common.
                    if case % 2 == 0 {
                        (v * 8.0).round() / 8.0 * scale
                    } else {
                        v * scale
                    }
                })
                .collect();
            let input = AllocInput {
                a: &a,
                b,
                f,
                density: &[],
                step: 0,
            };
            let mut want = Matching::default();
            want.reset(b, f);
            select_exact(&input, k * b, &mut want);
            let mut got = Matching::default();
            got.reset(b, f);
            if select_by_sample(&input, k * b, &mut got) {
                decided += 1;
                assert_eq!(got, want, "case {case}");
            }
            let mut via_trait = Matching::default();
            MutualChoice { k, token_cap: None }.select(&input, &mut via_trait);
            assert_eq!(via_trait, want, "case {case}");
        }
        assert!(
            decided >= 12,
            "the sampled route decided only {decided} of 24 cases"
        );
    }
}
