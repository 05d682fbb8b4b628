//! Allocation rules: which (token, feature) pairs are active, given the non-negative
//! pre-activations `A` (B×F, row-major). One file per rule behind [`Allocation`]; the registry
//! is [`build`]. Adding a rule touches its file and one line in [`build`].
//!
//! Every rule selects among the largest entries of `A`, never selects a zero entry, and breaks
//! ties towards the lower index (deterministic). Selections are O(BF), never a full sort.

mod feature_choice;
mod jumprelu;
mod mutual_choice;
mod topk;

pub use feature_choice::{capacities, capacities_for_budget, Capacity, FeatureChoice};
pub use jumprelu::JumpRelu;
pub use mutual_choice::MutualChoice;
pub use topk::TopK;

use super::config::{Architecture, SaeConfig};
use super::SaeError;

/// A matching in CSR form: for token `i`, the active features are
/// `cols[row_ptr[i]..row_ptr[i + 1]]`, ascending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matching {
    pub b: usize,
    pub f: usize,
    pub row_ptr: Vec<usize>,
    pub cols: Vec<u32>,
}

impl Matching {
    /// An empty matching for a B×F batch (reusing buffers).
    pub fn reset(&mut self, b: usize, f: usize) {
        self.b = b;
        self.f = f;
        self.row_ptr.clear();
        self.row_ptr.push(0);
        self.cols.clear();
    }

    /// Close the current row (call once per row, in order, after pushing its columns).
    pub fn end_row(&mut self) {
        self.row_ptr.push(self.cols.len());
    }

    /// Build from per-token column lists (each ascending), in token order.
    pub fn from_rows(&mut self, f: usize, rows: &[Vec<u32>]) {
        self.reset(rows.len(), f);
        for r in rows {
            self.cols.extend_from_slice(r);
            self.end_row();
        }
    }

    /// Build from (row, col) pairs in any order (counting sort by row; cols ascending per row).
    pub fn from_pairs(&mut self, b: usize, f: usize, pairs: &[(u32, u32)]) {
        self.b = b;
        self.f = f;
        self.row_ptr.clear();
        self.row_ptr.resize(b + 1, 0);
        for &(r, _) in pairs {
            self.row_ptr[r as usize + 1] += 1;
        }
        for i in 0..b {
            self.row_ptr[i + 1] += self.row_ptr[i];
        }
        self.cols.clear();
        self.cols.resize(pairs.len(), 0);
        let mut fill = self.row_ptr.clone();
        // Pairs sorted by column within a row come out ascending if we insert in column order.
        let mut sorted: Vec<(u32, u32)> = pairs.to_vec();
        sorted.sort_unstable_by_key(|&(r, c)| (c, r));
        for (r, c) in sorted {
            self.cols[fill[r as usize]] = c;
            fill[r as usize] += 1;
        }
    }

    /// Active features of token `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.cols[self.row_ptr[i]..self.row_ptr[i + 1]]
    }

    /// Total number of matches.
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// Number of active features per token (L0 per token).
    pub fn l0_per_row(&self) -> Vec<usize> {
        (0..self.b)
            .map(|i| self.row_ptr[i + 1] - self.row_ptr[i])
            .collect()
    }

    /// Number of tokens each feature is matched to.
    pub fn per_feature_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.f];
        for &j in &self.cols {
            c[j as usize] += 1;
        }
        c
    }

    /// Dense 0/1 mask, B×F row-major (reference path only).
    pub fn to_mask(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.b * self.f];
        for i in 0..self.b {
            for &j in self.row(i) {
                m[i * self.f + j as usize] = 1.0;
            }
        }
        m
    }
}

/// What a rule sees of the batch.
#[derive(Debug, Clone, Copy)]
pub struct AllocInput<'a> {
    /// Non-negative pre-activations, B×F row-major.
    pub a: &'a [f32],
    pub b: usize,
    pub f: usize,
    /// Running firing density per feature (used by Zipf capacities); length F.
    pub density: &'a [f32],
    /// Index of this batch (the training step, or the batch number in an evaluation). Feature
    /// Choice rotates the share of its budget that cannot be split evenly with it, so that no
    /// feature is locked out for good.
    pub step: u64,
}

/// An allocation rule.
pub trait Allocation: Send + Sync {
    /// The rule's name as written in configs (e.g. "topk").
    fn name(&self) -> &'static str;
    /// Whether a token's selection depends on the rest of the batch (then inference needs
    /// thresholds: see [`JumpRelu`]).
    fn batch_dependent(&self) -> bool;
    /// Write the matching of `input` into `out`.
    fn select(&self, input: &AllocInput, out: &mut Matching);
    /// The rule as a per-row selection, when it selects each token from its own row alone
    /// (TopK), so that a pass over the rows can do more work per row while it is in cache;
    /// `None` for batch rules.
    fn by_row(&self) -> Option<&dyn RowRule> {
        None
    }
}

/// A rule that selects each token from its own row of A alone.
pub trait RowRule: Sync {
    /// The row's selection, ascending, appended to `out` (`scratch` reused between calls);
    /// the same as that token's row of [`Allocation::select`].
    fn select_row(&self, row: &[f32], scratch: &mut Vec<u64>, out: &mut Vec<u32>);
}

/// The per-token cap of a batch rule, ⌈c·k⌉ features (project choice); `None` for c = 0.
pub fn token_cap(k: usize, c: f64) -> Option<usize> {
    (c > 0.0).then(|| ((c * k as f64).ceil() as usize).max(1))
}

/// Keep the `budget` largest of `pairs` (value in `a` descending, ties: lower flat index). With a
/// `cap`, a pair whose token already holds `cap` kept pairs is skipped (greedy in value order,
/// which is exact for a cap on tokens alone, and the usual greedy b-matching when the pairs also
/// respect per-feature capacities).
pub(crate) fn keep_largest(
    a: &[f32],
    f: usize,
    b: usize,
    pairs: &mut Vec<(u32, u32)>,
    budget: usize,
    cap: Option<usize>,
) {
    let flat = |&(r, c): &(u32, u32)| r as usize * f + c as usize;
    let order = |p: &(u32, u32), q: &(u32, u32)| {
        let (ip, iq) = (flat(p), flat(q));
        a[iq].total_cmp(&a[ip]).then(ip.cmp(&iq))
    };
    match cap {
        None => {
            if pairs.len() > budget {
                if budget == 0 {
                    pairs.clear();
                    return;
                }
                pairs.select_nth_unstable_by(budget - 1, order);
                pairs.truncate(budget);
            }
        }
        Some(cap) => {
            pairs.sort_unstable_by(order);
            let mut held = vec![0usize; b];
            let mut kept = 0;
            pairs.retain(|&(r, _)| {
                if kept < budget && held[r as usize] < cap {
                    held[r as usize] += 1;
                    kept += 1;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// The registry: the rule a configuration names. `thresholds` is required for JumpReLU.
pub fn build(cfg: &SaeConfig, thresholds: Option<&[f32]>) -> Result<Box<dyn Allocation>, SaeError> {
    cfg.validate()?;
    Ok(match cfg.architecture {
        Architecture::TopK => Box::new(TopK { k: cfg.k }),
        Architecture::MutualChoice => Box::new(MutualChoice {
            k: cfg.k,
            token_cap: token_cap(cfg.k, cfg.token_cap),
        }),
        Architecture::FeatureChoice => Box::new(FeatureChoice {
            k: cfg.k,
            capacity: cfg.capacity.clone(),
            capacity_factor: cfg.capacity_factor,
            token_cap: token_cap(cfg.k, cfg.token_cap),
        }),
        Architecture::JumpRelu => {
            let t = thresholds.ok_or_else(|| {
                SaeError::config(
                    "threshold",
                    "architecture `jumprelu` needs per-feature thresholds",
                )
            })?;
            if t.len() != cfg.d_sae {
                return Err(SaeError::config(
                    "threshold",
                    format!(
                        "jumprelu thresholds have length {}, expected d_sae = {}",
                        t.len(),
                        cfg.d_sae
                    ),
                ));
            }
            Box::new(JumpRelu {
                thresholds: t.to_vec(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_is_csr_sorted() {
        let mut m = Matching::default();
        m.from_pairs(3, 5, &[(2, 4), (0, 3), (2, 1), (0, 0)]);
        assert_eq!(m.row(0), &[0, 3]);
        assert_eq!(m.row(1), &[] as &[u32]);
        assert_eq!(m.row(2), &[1, 4]);
        assert_eq!(m.l0_per_row(), vec![2, 0, 2]);
        assert_eq!(m.per_feature_counts(), vec![1, 1, 0, 1, 1]);
    }
}
