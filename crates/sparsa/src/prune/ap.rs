//! Activate-while-Pruning (Liu et al. 2023), as the reference code does it.
//!
//! In a round that removes p % of the remaining weights, the base method removes (p − p_ap) % and
//! AP removes p_ap % (of the weights remaining at the start of the round). AP's candidates are the
//! remaining weights that are negative at the end of the round's training; it removes those whose
//! value changed least during the round, score `|w_end − w_start|`, with one threshold across all
//! layers. Nothing else changes (no weights restored, no activation, bias or loss change).
//!
//! Ablations ([`ApVariant`]): `change-only` (least change, any sign), `negative-only` (random
//! among negative weights), and `off`.

use rand::Rng;

use super::mask;

/// Which AP selection to run in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApVariant {
    /// No AP: the base method removes the whole share.
    Off,
    /// AP: negative weights with the least |w_end − w_start|.
    On,
    /// Ablation: the least |w_end − w_start| among all remaining weights, any sign.
    ChangeOnly,
    /// Ablation: uniformly random among the remaining negative weights.
    NegativeOnly,
}

impl std::str::FromStr for ApVariant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            ApVariant::Off,
            ApVariant::On,
            ApVariant::ChangeOnly,
            ApVariant::NegativeOnly,
        ]
        .into_iter()
        .find(|v| v.name() == s)
        .ok_or_else(|| {
            format!("unknown AP variant `{s}`; use off, on, change-only or negative-only")
        })
    }
}

impl ApVariant {
    pub fn name(self) -> &'static str {
        match self {
            ApVariant::Off => "off",
            ApVariant::On => "on",
            ApVariant::ChangeOnly => "change-only",
            ApVariant::NegativeOnly => "negative-only",
        }
    }
}

/// Remove up to `n` alive weights from `masks` with AP's rule. `w_end` are the weights after the
/// round's training, `w_start` at its start (flat, in prunable order). Returns how many were
/// removed: fewer than `n` only when fewer candidates exist (e.g. not enough negative weights).
pub fn ap_remove<R: Rng>(
    masks: &mut [Vec<f32>],
    w_end: &[Vec<f32>],
    w_start: &[Vec<f32>],
    n: usize,
    variant: ApVariant,
    rng: &mut R,
) -> usize {
    let change: Vec<Vec<f32>> = w_end
        .iter()
        .zip(w_start)
        .map(|(e, s)| e.iter().zip(s).map(|(a, b)| (a - b).abs()).collect())
        .collect();
    match variant {
        ApVariant::Off => 0,
        ApVariant::On => mask::remove_lowest(masks, &change, n, &|l, i| w_end[l][i] < 0.0),
        ApVariant::ChangeOnly => mask::remove_lowest(masks, &change, n, &|_, _| true),
        ApVariant::NegativeOnly => {
            let random: Vec<Vec<f32>> = w_end
                .iter()
                .map(|w| w.iter().map(|_| rng.random::<f32>()).collect())
                .collect();
            mask::remove_lowest(masks, &random, n, &|l, i| w_end[l][i] < 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    type Flat = Vec<Vec<f32>>;

    fn case() -> (Flat, Flat, Flat) {
        // Two layers. End weights, start weights; entry (1, 2) is already pruned.
        let end = vec![vec![-0.5, 0.2, -1.0, 0.9], vec![-0.3, -2.0, 0.0, 0.05]];
        let start = vec![vec![-0.45, 0.2, -0.2, 1.5], vec![-0.6, -2.01, 0.0, 0.06]];
        let masks = vec![vec![1.0; 4], vec![1.0, 1.0, 0.0, 1.0]];
        (end, start, masks)
    }

    #[test]
    fn ap_prunes_least_changed_negatives_across_layers() {
        let (end, start, mut m) = case();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        // Negative alive: (0,0) Δ=0.05, (0,2) Δ=0.8, (1,0) Δ=0.3, (1,1) Δ=0.01.
        let n = ap_remove(&mut m, &end, &start, 2, ApVariant::On, &mut rng);
        assert_eq!(n, 2);
        assert_eq!(m, vec![vec![0.0, 1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0, 1.0]]);
        // Only 2 negatives remain: asking for 5 removes exactly those.
        let n = ap_remove(&mut m, &end, &start, 5, ApVariant::On, &mut rng);
        assert_eq!(n, 2);
        assert_eq!(m, vec![vec![0.0, 1.0, 0.0, 1.0], vec![0.0, 0.0, 0.0, 1.0]]);
    }

    #[test]
    fn change_only_ignores_sign() {
        let (end, start, mut m) = case();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        // Δ: (0,1)=0 (positive), (1,1)=0.01, (1,3)=0.01 (positive), (0,0)=0.05.
        let n = ap_remove(&mut m, &end, &start, 3, ApVariant::ChangeOnly, &mut rng);
        assert_eq!(n, 3);
        assert_eq!(m, vec![vec![1.0, 0.0, 1.0, 1.0], vec![1.0, 0.0, 0.0, 0.0]]);
    }

    #[test]
    fn negative_only_picks_only_negatives_at_random() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..40 {
            let (end, start, mut m) = case();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            assert_eq!(
                ap_remove(&mut m, &end, &start, 1, ApVariant::NegativeOnly, &mut rng),
                1
            );
            for l in 0..2 {
                for i in 0..4 {
                    if m[l][i] == 0.0 && !(l == 1 && i == 2) {
                        assert!(end[l][i] < 0.0);
                        seen.insert((l, i));
                    }
                }
            }
        }
        // Random, not by change: all four negatives get picked over 40 seeds.
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn off_removes_nothing() {
        let (end, start, mut m) = case();
        let before = m.clone();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            ap_remove(&mut m, &end, &start, 3, ApVariant::Off, &mut rng),
            0
        );
        assert_eq!(m, before);
    }
}
