//! Feature Choice (Ayonrinde 2024): each feature j picks its m_j largest tokens, Σ m_j ≤ kB.
//! Capacities m_j are a project choice: `uniform` (default) or `zipf` by running density rank.
//!
//! The budget rarely splits into whole capacities. The units left over after flooring go to a
//! set of features that moves with the batch index (`AllocInput::step`), so that no feature is
//! locked out for good: with uniform capacities and F > kB every feature gets a capacity of 1
//! once in every ⌈F/(kB)⌉ batches; with Zipf capacities each feature gets its fractional share
//! over time (systematic rounding with a rotating offset).

use super::{keep_largest, AllocInput, Allocation, Matching};
pub use crate::sae::config::Capacity;
use crate::sae::select::{top_k_positive_columns, ColumnScratch};
use rayon::prelude::*;

/// Per-feature capacities for batch number `step` of `b` tokens with budget `k·b` over `f`
/// features.
pub fn capacities(
    cap: &Capacity,
    k: usize,
    b: usize,
    f: usize,
    density: &[f32],
    step: u64,
) -> Vec<usize> {
    capacities_for_budget(cap, k * b, b, f, density, step)
}

/// Per-feature capacities summing to min(`budget`, F·B) (see [`capacities`]).
pub fn capacities_for_budget(
    cap: &Capacity,
    budget: usize,
    b: usize,
    f: usize,
    density: &[f32],
    step: u64,
) -> Vec<usize> {
    match cap {
        Capacity::Uniform => {
            let base = budget / f;
            let rem = budget % f;
            // The run of `rem` features that get one more starts where the last one ended.
            let start = ((step as u128 * rem as u128) % f as u128) as usize;
            (0..f)
                .map(|j| (base + usize::from((j + f - start) % f < rem)).min(b))
                .collect()
        }
        Capacity::Zipf { alpha, beta } => {
            let mut order: Vec<usize> = (0..f).collect();
            order.sort_by(|&i, &j| density[j].total_cmp(&density[i]).then(i.cmp(&j)));
            let mut w = vec![0f64; f];
            for (rank0, &j) in order.iter().enumerate() {
                w[j] = ((rank0 + 1) as f64 + beta).powf(-alpha);
            }
            // Water-filling: shares ∝ w_j, capped at b; the excess of capped features is
            // spread over the others until no share exceeds b.
            let mut exact = vec![0f64; f];
            let mut capped = vec![false; f];
            let mut left = budget as f64;
            loop {
                let wsum: f64 = (0..f).filter(|&j| !capped[j]).map(|j| w[j]).sum();
                if wsum <= 0.0 {
                    break;
                }
                let mut newly = false;
                for j in 0..f {
                    if !capped[j] && w[j] / wsum * left >= b as f64 {
                        capped[j] = true;
                        exact[j] = b as f64;
                        newly = true;
                    }
                }
                if !newly {
                    for j in (0..f).filter(|&j| !capped[j]) {
                        exact[j] = w[j] / wsum * left;
                    }
                    break;
                }
                left = budget as f64
                    - exact.iter().filter(|e| **e >= b as f64).count() as f64 * b as f64;
                if left <= 0.0 {
                    break;
                }
            }
            let mut m: Vec<usize> = exact.iter().map(|&e| (e.floor() as usize).min(b)).collect();
            let target = budget.min(f * b);
            // Systematic rounding of the fractional parts: one uniform offset u per batch (a
            // golden-ratio sequence in the step), feature j gets one more when the running sum
            // of fractional parts crosses an integer + u. Each feature gets its fractional share
            // on average, and every feature with a positive share is selectable over time.
            let u = (step as f64 * 0.618_033_988_749_894_9).fract();
            let mut cum = 0f64;
            for j in 0..f {
                if m[j] >= b {
                    continue;
                }
                let before = (cum + u).floor();
                cum += exact[j] - exact[j].floor();
                if (cum + u).floor() > before {
                    m[j] += 1;
                }
            }
            // Floating-point slack: trim or top up (cyclically from the rotating start) so
            // Σ m_j = min(kB, F·B) exactly.
            let mut total: usize = m.iter().sum();
            let start = ((step as u128 * 2_654_435_761u128) % f as u128) as usize;
            let mut j = start;
            let mut guard = 0;
            while total != target && guard < 2 * f {
                if total > target && m[j] > exact[j].floor() as usize {
                    m[j] -= 1;
                    total -= 1;
                } else if total < target && m[j] < b {
                    m[j] += 1;
                    total += 1;
                }
                j = (j + 1) % f;
                guard += 1;
            }
            m
        }
    }
}

/// Columns per parallel task of the selection. Each row's part of a block is read as one
/// contiguous run (8 KB here), so the B×F pre-activations stream through memory; a block of 16
/// (one cache line a row, a row apart) read them at ≈ 3 GB/s. Measured at 256, 2,048 and
/// 12,288 (docs/sae.md section 5): 2,048 fastest, its thresholds and buffers in L1/L2.
const BLOCK: usize = 2048;

/// Per column j: the m_j largest positive entries. With a capacity factor c > 1 (project
/// choice), column j may take up to c·m_j entries and the kB largest of all those are kept
/// (ties: lower flat index), so a feature can take more than its share when the batch needs it.
/// With a token cap (project choice), a token keeps at most that many of them.
#[derive(Debug, Clone)]
pub struct FeatureChoice {
    pub k: usize,
    pub capacity: Capacity,
    /// c ≥ 1; 1 = plain Feature Choice.
    pub capacity_factor: f64,
    /// At most this many features per token (project choice; `None`: the paper's rule). The
    /// widened selections are kept in value order, skipping a token once it is full.
    pub token_cap: Option<usize>,
}

impl Allocation for FeatureChoice {
    fn name(&self) -> &'static str {
        "feature_choice"
    }
    fn batch_dependent(&self) -> bool {
        true
    }
    fn select(&self, input: &AllocInput, out: &mut Matching) {
        let (b, f) = (input.b, input.f);
        let budget = self.k * b;
        let widened = (budget as f64 * self.capacity_factor.max(1.0)).round() as usize;
        let m = capacities_for_budget(&self.capacity, widened, b, f, input.density, input.step);
        // Blocks of BLOCK columns, in parallel, each read row by row.
        let cols: Vec<Vec<Vec<u32>>> = m
            .par_chunks(BLOCK)
            .enumerate()
            .map_init(ColumnScratch::default, |scratch, (bi, caps)| {
                let mut outs = vec![Vec::new(); caps.len()];
                top_k_positive_columns(input.a, b, f, bi * BLOCK, caps, scratch, &mut outs);
                outs
            })
            .collect();
        let mut pairs: Vec<(u32, u32)> = cols
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(j, rows)| rows.iter().map(move |&r| (r, j as u32)))
            .collect();
        // Keep the kB largest selections (value descending, then lower flat index), at most
        // `token_cap` per token.
        keep_largest(input.a, f, b, &mut pairs, budget, self.token_cap);
        out.from_pairs(b, f, &pairs);
    }
}
