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
    let tiered = u.iter().any(|&w| w > 1.0);
    let rows: Vec<Vec<u32>> = a
        .par_chunks(f)
        .enumerate()
        .map_init(
            || (Vec::new(), vec![0f32; f]),
            |(scratch, prod), (i, row)| {
                // Tiered: a_ij + max_j a_ij exceeds every u·a with u ≤ 1, so the first tier is
                // served first and keeps its order by a_ij.
                let lift = if tiered {
                    row.iter().copied().fold(0f32, f32::max)
                } else {
                    0.0
                };
                for ((p, &x), &w) in prod.iter_mut().zip(row).zip(u) {
                    *p = if w > 1.0 && x > 0.0 {
                        x + lift
                    } else if w > 0.0 {
                        x * w
                    } else {
                        0.0
                    };
                }
                if let Some(m) = exclude {
                    for &j in m.row(i) {
                        prod[j as usize] = 0.0;
                    }
                }
                let mut sel = Vec::with_capacity(k_aux);
                top_k_positive(prod, k_aux, scratch, &mut sel);
                sel
            },
        )
        .collect();
    debug_assert_eq!(rows.len(), b);
    out.from_rows(f, &rows);
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
