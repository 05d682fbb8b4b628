//! Auxiliary losses that revive dead and under-used features. One file per loss behind
//! [`AuxLoss`]; the registry is [`build`].
//!
//! Both losses share one mechanism: a per-feature eligibility u_j ∈ [0, 1]; per token, select the
//! `k_aux` features with the largest u_j·a_ij among u_j > 0 (and a_ij > 0), decode their a_ij
//! (without b_dec) to ê, and compare with the detached residual e = x − x̂:
//! L_aux = NMSE(e, ê) (or MSE, `aux.normalization`). aux_k is u_j = 1 for dead features, else 0.

mod aux_k;
mod aux_zipf;

pub use aux_k::AuxK;
pub use aux_zipf::AuxZipf;

use super::allocation::Matching;
use super::config::{AuxConfig, AuxKind};
use super::select::top_k_positive;
use rayon::prelude::*;

/// What an auxiliary loss knows of the features.
#[derive(Debug, Clone, Copy)]
pub struct FeatureStats<'a> {
    /// Running firing density ρ_j (fraction of tokens matched), bias-corrected.
    pub density: &'a [f32],
    /// Dead: not selected in the last `aux.dead_tokens` tokens.
    pub dead: &'a [bool],
}

/// The eligibility of each feature, and the Zipf law used (aux_zipf only).
#[derive(Debug, Clone, Default)]
pub struct AuxWeights {
    pub u: Vec<f32>,
    pub zipf_alpha: Option<f64>,
    pub zipf_beta: Option<f64>,
    pub zipf_r2: Option<f64>,
}

/// An auxiliary loss: decides each feature's eligibility u_j.
pub trait AuxLoss: Send + Sync {
    fn name(&self) -> &'static str;
    fn weights(&self, stats: &FeatureStats) -> AuxWeights;
}

/// The registry: the auxiliary loss a configuration names (`None` for `kind = "none"`).
pub fn build(cfg: &AuxConfig) -> Option<Box<dyn AuxLoss>> {
    match cfg.kind {
        AuxKind::None => None,
        AuxKind::AuxK => Some(Box::new(AuxK)),
        AuxKind::AuxZipf => Some(Box::new(AuxZipf::from_config(cfg))),
    }
}

/// An eligibility above 1: a dead feature served before every feature with u_j ≤ 1 (aux_zipf
/// with `aux.zipf_dead_first`); among themselves such features rank by a_ij.
pub const DEAD_FIRST: f32 = 2.0;

/// Per token, the `k_aux` features with the largest u_j·a_ij among u_j > 0 and a_ij > 0;
/// features with u_j > 1 ([`DEAD_FIRST`]) come first, ranked by a_ij. With `exclude`, a
/// token's own matches in it are not eligible (`aux.exclude_matched`).
pub fn aux_select(
    a: &[f32],
    b: usize,
    f: usize,
    u: &[f32],
    k_aux: usize,
    exclude: Option<&Matching>,
    out: &mut Matching,
) {
    aux_select_with(a, b, f, u, k_aux, exclude, None, out, None);
}

/// One token's auxiliary selection, shared by [`aux_select`] and passes that select the main
/// matching row by row as well (the fast step fuses both for TopK, while the row is in cache).
pub struct AuxRowSelector<'a> {
    u: &'a [f32],
    k_aux: usize,
    tiered: bool,
    /// The eligible columns (u_j > 0), ascending, when only they are visited.
    eligible: Option<Vec<u32>>,
    /// Their u_j, in the same order (empty when every column is visited).
    u_eligible: Vec<f32>,
}

/// Per-thread scratch of [`AuxRowSelector::select`].
#[derive(Default)]
pub struct AuxRowScratch {
    scratch: Vec<u64>,
    prod: Vec<f32>,
}

impl<'a> AuxRowSelector<'a> {
    /// `compact`: visit only the eligible columns (`None`: when at most a quarter of the
    /// features are eligible, as aux_k late in training). Both visits select the same entries:
    /// ineligible entries are never selected, and the compact list keeps the column order that
    /// breaks ties.
    pub fn new(u: &'a [f32], k_aux: usize, compact: Option<bool>) -> Self {
        let f = u.len();
        let eligible: Vec<u32> = (0..f as u32).filter(|&j| u[j as usize] > 0.0).collect();
        let compact = compact.unwrap_or(eligible.len() * 4 <= f);
        AuxRowSelector {
            u,
            k_aux,
            tiered: u.iter().any(|&w| w > 1.0),
            u_eligible: if compact {
                eligible.iter().map(|&j| u[j as usize]).collect()
            } else {
                Vec::new()
            },
            eligible: compact.then_some(eligible),
        }
    }

    /// [`AuxRowSelector::select`], and the selected entries of `row` in `vals` (cleared first).
    pub fn select_values(
        &self,
        row: &[f32],
        exclude: &[u32],
        s: &mut AuxRowScratch,
        sel: &mut Vec<u32>,
        vals: &mut Vec<f32>,
    ) {
        self.select(row, exclude, s, sel);
        vals.clear();
        vals.extend(sel.iter().map(|&j| row[j as usize]));
    }

    /// The auxiliary selection of one row of A (columns ascending) into `sel` (cleared first),
    /// skipping the columns in `exclude` (ascending).
    pub fn select(&self, row: &[f32], exclude: &[u32], s: &mut AuxRowScratch, sel: &mut Vec<u32>) {
        let u = self.u;
        // Tiered: a_ij + max_j a_ij exceeds every u·a with u ≤ 1, so the first tier is served
        // first and keeps its order by a_ij.
        let lift = if self.tiered {
            row.iter().copied().fold(0f32, f32::max)
        } else {
            0.0
        };
        let value = |x: f32, w: f32| {
            if w > 1.0 && x > 0.0 {
                x + lift
            } else if w > 0.0 {
                x * w
            } else {
                0.0
            }
        };
        sel.clear();
        let prod = &mut s.prod;
        match &self.eligible {
            Some(eligible) => {
                prod.clear();
                if self.tiered {
                    prod.extend(
                        eligible
                            .iter()
                            .map(|&j| value(row[j as usize], u[j as usize])),
                    );
                } else {
                    // Every eligible u_j is in (0, 1]: the value is x·u_j.
                    prod.extend(
                        eligible
                            .iter()
                            .zip(&self.u_eligible)
                            .map(|(&j, &w)| row[j as usize] * w),
                    );
                }
                for j in exclude {
                    if let Ok(pos) = eligible.binary_search(j) {
                        prod[pos] = 0.0;
                    }
                }
                top_k_positive(prod, self.k_aux, &mut s.scratch, sel);
                sel.iter_mut().for_each(|p| *p = eligible[*p as usize]);
            }
            None => {
                prod.clear();
                if self.tiered {
                    prod.extend(row.iter().zip(u).map(|(&x, &w)| value(x, w)));
                } else {
                    // u_j in [0, 1]: x·u_j, which is not positive where u_j = 0.
                    prod.extend(row.iter().zip(u).map(|(&x, &w)| x * w));
                }
                for &j in exclude {
                    prod[j as usize] = 0.0;
                }
                top_k_positive(prod, self.k_aux, &mut s.scratch, sel);
            }
        }
    }
}

/// [`aux_select`] with the column visit chosen (`compact`, see [`AuxRowSelector::new`];
/// `None`: by the share of eligible features) and, with `vals`, the selected a_ij aligned with
/// `out.cols`, read while each row is in cache (the fast step's decode then never reads A at
/// the pairs).
#[allow(clippy::too_many_arguments)] // aux_select's arguments, the path switch, the values
pub(crate) fn aux_select_with(
    a: &[f32],
    b: usize,
    f: usize,
    u: &[f32],
    k_aux: usize,
    exclude: Option<&Matching>,
    compact: Option<bool>,
    out: &mut Matching,
    vals: Option<&mut Vec<f32>>,
) {
    let selector = AuxRowSelector::new(&u[..f], k_aux, compact);
    let with_values = vals.is_some();
    let rows: Vec<(Vec<u32>, Vec<f32>)> = a
        .par_chunks(f)
        .enumerate()
        .map_init(AuxRowScratch::default, |s, (i, row)| {
            let mut sel = Vec::with_capacity(k_aux.min(f));
            let mut v = Vec::new();
            let ex = exclude.map_or(&[][..], |m| m.row(i));
            if with_values {
                selector.select_values(row, ex, s, &mut sel, &mut v);
            } else {
                selector.select(row, ex, s, &mut sel);
            }
            (sel, v)
        })
        .collect();
    debug_assert_eq!(rows.len(), b);
    out.reset(b, f);
    for (sel, _) in &rows {
        out.cols.extend_from_slice(sel);
        out.end_row();
    }
    if let Some(vals) = vals {
        vals.clear();
        for (_, v) in &rows {
            vals.extend_from_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::config::{AuxConfig, ZipfParam};

    fn stats_case() -> (Vec<f32>, Vec<bool>) {
        // 8 features: 0..3 healthy with a Zipf-like density, 4 under-used, 5..7 dead.
        let density = vec![0.5, 0.3, 0.2, 0.15, 0.001, 0.0, 0.0, 0.0];
        let dead = vec![false, false, false, false, false, true, true, true];
        (density, dead)
    }

    #[test]
    fn property_2_dead_features_have_u_one() {
        let (density, dead) = stats_case();
        let cfg = AuxConfig {
            zipf_alpha: ZipfParam::Value(1.0),
            zipf_beta: ZipfParam::Value(1.0),
            ..Default::default()
        };
        let w = AuxZipf::from_config(&cfg).weights(&FeatureStats {
            density: &density,
            dead: &dead,
        });
        for j in 5..8 {
            assert_eq!(w.u[j], 1.0);
        }
        // The under-used live feature is eligible but below 1; healthy head features are not.
        assert!(w.u[4] > 0.5 && w.u[4] < 1.0, "{:?}", w.u);
        assert_eq!(w.u[0], 0.0);
    }

    /// The compact path (eligible columns only) and the full-row path select the same matching,
    /// for sparse and dense eligibility, tiers, exclusion and ties.
    #[test]
    fn compact_and_full_aux_selections_agree() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (b, f) = (37usize, 203usize);
        for trial in 0..24 {
            let a: Vec<f32> = (0..b * f)
                .map(|_| {
                    let v: f32 = rng.random_range(-1.0..1.0);
                    // Coarse values, so that ties occur.
                    (v * 8.0).round() / 8.0
                })
                .collect();
            let share = [0.05, 0.3, 0.9][trial % 3];
            let u: Vec<f32> = (0..f)
                .map(|_| {
                    if rng.random_range(0.0..1.0) >= share {
                        0.0
                    } else if trial % 2 == 0 && rng.random_range(0.0..1.0) < 0.3 {
                        DEAD_FIRST
                    } else {
                        rng.random_range(0.1..1.0)
                    }
                })
                .collect();
            let main_rows: Vec<Vec<u32>> = (0..b)
                .map(|_| {
                    let mut r: Vec<u32> = (0..3).map(|_| rng.random_range(0..f as u32)).collect();
                    r.sort_unstable();
                    r.dedup();
                    r
                })
                .collect();
            let mut main = Matching::default();
            main.from_rows(f, &main_rows);
            for exclude in [None, Some(&main)] {
                let (mut x, mut y) = (Matching::default(), Matching::default());
                let (mut vx, mut vy) = (Vec::new(), Vec::new());
                aux_select_with(&a, b, f, &u, 9, exclude, Some(true), &mut x, Some(&mut vx));
                aux_select_with(&a, b, f, &u, 9, exclude, Some(false), &mut y, Some(&mut vy));
                for i in 0..b {
                    assert_eq!(x.row(i), y.row(i), "trial {trial} row {i}");
                }
                assert_eq!(vx, vy, "trial {trial}: selected values");
                let a = &a;
                let want: Vec<f32> = (0..b)
                    .flat_map(|i| y.row(i).iter().map(move |&j| a[i * f + j as usize]))
                    .collect();
                assert_eq!(vy, want, "trial {trial}: values are the selected a_ij");
                assert!(y.nnz() > 0, "trial {trial}: nothing selected");
            }
        }
    }

    #[test]
    fn aux_select_respects_eligibility() {
        let a = vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0];
        let u = vec![0.0, 1.0, 0.5, 1.0, 1.0, 1.0];
        let mut m = Matching::default();
        aux_select(&a, 1, 6, &u, 2, None, &mut m);
        // products: 0, 4, 1.5, 2, 1, 0 → features 1 and 3.
        assert_eq!(m.row(0), &[1, 3]);
    }

    #[test]
    fn exclude_skips_each_tokens_own_matches() {
        let a = vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let u = vec![1.0; 6];
        let mut main = Matching::default();
        main.from_rows(6, &[vec![0, 2], vec![5]]);
        let mut m = Matching::default();
        aux_select(&a, 2, 6, &u, 2, Some(&main), &mut m);
        assert_eq!(m.row(0), &[1, 3]);
        assert_eq!(m.row(1), &[3, 4]);
        aux_select(&a, 2, 6, &u, 2, None, &mut m);
        assert_eq!(m.row(0), &[0, 1]);
        assert_eq!(m.row(1), &[4, 5]);
    }

    #[test]
    fn dead_first_features_are_served_before_under_used_ones() {
        let a = vec![5.0, 4.0, 0.5, 0.25, 1.0, 0.0];
        let u = vec![1.0, 0.9, DEAD_FIRST, DEAD_FIRST, 1.0, DEAD_FIRST];
        let mut m = Matching::default();
        aux_select(&a, 1, 6, &u, 3, None, &mut m);
        // Tier 1 (positive a only): features 2 and 3; then the best of u·a: feature 0.
        assert_eq!(m.row(0), &[0, 2, 3]);
        aux_select(&a, 1, 6, &u, 1, None, &mut m);
        assert_eq!(m.row(0), &[2]);
    }
}
