//! Feature Choice (Ayonrinde 2024): each feature j picks its m_j largest tokens, Σ m_j ≤ kB.
//! Capacities m_j are a project choice: `uniform` (default) or `zipf` by running density rank.

use super::{AllocInput, Allocation, Matching};
use crate::sae::select::top_k_positive_columns;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How the budget kB is split into per-feature capacities (project choice, configurable).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Capacity {
    /// m_j = ⌊kB/F⌋, the remainder spread one each over the first features so Σ m_j = kB.
    #[default]
    Uniform,
    /// m_j ∝ (r_j + β)^−α with r_j ∈ 1..F the feature's rank by running firing density
    /// (descending, ties to the lower index), floored, the remainder given by largest fractional
    /// part, each m_j capped at B (the excess re-spread over the others), so Σ m_j = min(kB, F·B).
    Zipf { alpha: f64, beta: f64 },
}

/// Per-feature capacities for a batch of `b` tokens with budget `k·b` over `f` features.
pub fn capacities(cap: &Capacity, k: usize, b: usize, f: usize, density: &[f32]) -> Vec<usize> {
    let budget = k * b;
    match cap {
        Capacity::Uniform => {
            let base = budget / f;
            let rem = budget % f;
            (0..f)
                .map(|j| (base + usize::from(j < rem)).min(b))
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
            let mut left = budget.saturating_sub(m.iter().sum());
            let mut frac: Vec<usize> = (0..f).collect();
            frac.sort_by(|&i, &j| {
                (exact[j] - exact[j].floor())
                    .total_cmp(&(exact[i] - exact[i].floor()))
                    .then(i.cmp(&j))
            });
            for j in frac {
                if left == 0 {
                    break;
                }
                if m[j] < b {
                    m[j] += 1;
                    left -= 1;
                }
            }
            m
        }
    }
}

/// Per column j: the m_j largest positive entries.
#[derive(Debug, Clone)]
pub struct FeatureChoice {
    pub k: usize,
    pub capacity: Capacity,
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
        let m = capacities(&self.capacity, self.k, b, f, input.density);
        // Blocks of 16 columns (one cache line of each row), in parallel.
        const BLOCK: usize = 16;
        let cols: Vec<Vec<Vec<u32>>> = m
            .par_chunks(BLOCK)
            .enumerate()
            .map_init(Vec::new, |thr, (bi, caps)| {
                let mut outs = vec![Vec::new(); caps.len()];
                top_k_positive_columns(input.a, b, f, bi * BLOCK, caps, thr, &mut outs);
                outs
            })
            .collect();
        let pairs: Vec<(u32, u32)> = cols
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(j, rows)| rows.iter().map(move |&r| (r, j as u32)))
            .collect();
        out.from_pairs(b, f, &pairs);
    }
}
