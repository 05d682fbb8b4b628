//! LAMP (Lee et al. 2021): within a layer, sort alive weights by w² ascending; the score of
//! weight u is `w_u² / Σ_{v ≥ u} w_v²` (the sum over the weights of the same layer whose magnitude
//! is at least |w_u|, in sorted order). Scores are compared globally.
use crate::nn::models::Net;
use crate::prune::{mask, Result};

/// LAMP scores of `weights` restricted to alive entries (dead entries score 0).
pub fn layer_scores(weights: &[f32], mask: &[f32]) -> Vec<f32> {
    let mut idx: Vec<usize> = (0..weights.len()).filter(|&i| mask[i] != 0.0).collect();
    idx.sort_by(|&a, &b| {
        (weights[a] * weights[a])
            .total_cmp(&(weights[b] * weights[b]))
            .then(a.cmp(&b))
    });
    let mut out = vec![0f32; weights.len()];
    let mut suffix = 0f64;
    for &i in idx.iter().rev() {
        let w2 = (weights[i] as f64) * (weights[i] as f64);
        suffix += w2;
        out[i] = if suffix > 0.0 {
            (w2 / suffix) as f32
        } else {
            0.0
        };
    }
    out
}

/// LAMP scores for every prunable tensor of `net`.
pub fn scores(net: &Net, masks: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    Ok(mask::host_weights(net)?
        .iter()
        .zip(masks)
        .map(|(w, m)| layer_scores(w, m))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::method::tests_support::tiny_net;

    #[test]
    fn lamp_by_hand() {
        // Layer 1 weights [1, -2, 0.5, 3]: squares 1, 4, 0.25, 9 → sorted 0.25, 1, 4, 9 (sum 14.25).
        // scores: 0.5 → 0.25/14.25, 1 → 1/14, -2 → 4/13, 3 → 9/9.
        let net = tiny_net();
        let m = mask::host_masks(&net).unwrap();
        let s = scores(&net, &m).unwrap();
        let want = [1.0 / 14.0, 4.0 / 13.0, 0.25 / 14.25, 1.0];
        for (a, b) in s[0].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Layer 2 weights [1, -4, 2, 0.5]: squares sorted 0.25, 1, 4, 16 (sum 21.25).
        let want = [1.0 / 21.0, 1.0, 4.0 / 20.0, 0.25 / 21.25];
        for (a, b) in s[1].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // A pruned entry is ignored by the sums.
        let s2 = layer_scores(&[1.0, -2.0, 0.5, 3.0], &[1.0, 1.0, 0.0, 1.0]);
        assert!((s2[0] as f64 - 1.0 / 14.0).abs() < 1e-6);
        assert_eq!(s2[2], 0.0);
    }
}
