//! Masks on the host: per prunable tensor a flat `Vec<f32>` of 0/1 in the order of
//! [`Net::prunable`], plus exact-count selection of the lowest scores.
//!
//! Selection sorts alive weights by (score, tensor index, element index), so ties break the same
//! way every time and exactly the requested number is removed.

use std::cmp::Ordering;

use candle_core::Tensor;

use super::Result;
use crate::nn::models::Net;

/// Kept/total counts of one prunable tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerSparsity {
    pub name: String,
    pub total: usize,
    pub kept: usize,
}

impl LayerSparsity {
    /// Share of weights pruned: 1 − kept / total.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.kept as f64 / self.total.max(1) as f64
    }
}

/// Global sparsity over the given layers: 1 − Σ kept / Σ total.
pub fn global_sparsity(layers: &[LayerSparsity]) -> f64 {
    let t: usize = layers.iter().map(|l| l.total).sum();
    let k: usize = layers.iter().map(|l| l.kept).sum();
    1.0 - k as f64 / t.max(1) as f64
}

/// The masks of `net`'s prunable tensors as flat host vectors.
pub fn host_masks(net: &Net) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for i in net.prunable() {
        if let Some(m) = &net.params[i].mask {
            out.push(
                m.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
    }
    Ok(out)
}

/// The prunable weights of `net` as flat host vectors.
pub fn host_weights(net: &Net) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for i in net.prunable() {
        let w = net.params[i].var.as_tensor();
        out.push(
            w.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// Install host masks into `net` (and zero the pruned weights).
pub fn set_host_masks(net: &mut Net, masks: &[Vec<f32>]) -> Result<()> {
    let idx = net.prunable();
    let mut map = std::collections::HashMap::new();
    for (k, &i) in idx.iter().enumerate() {
        let p = &net.params[i];
        let like = p.var.as_tensor();
        let t = Tensor::from_slice(masks[k].as_slice(), like.dims(), like.device())?
            .to_dtype(like.dtype())?;
        map.insert(p.name.clone(), t);
    }
    net.set_masks(&map)?;
    Ok(())
}

/// Per-layer kept/total counts of `net`.
pub fn layer_sparsity(net: &Net) -> Result<Vec<LayerSparsity>> {
    let masks = host_masks(net)?;
    Ok(net
        .prunable()
        .iter()
        .zip(masks)
        .map(|(&i, m)| LayerSparsity {
            name: net.params[i].name.clone(),
            total: m.len(),
            kept: m.iter().filter(|&&v| v != 0.0).count(),
        })
        .collect())
}

/// Number of alive (mask 1) entries.
pub fn alive(masks: &[Vec<f32>]) -> usize {
    masks
        .iter()
        .map(|m| m.iter().filter(|&&v| v != 0.0).count())
        .sum()
}

fn cmp_entry(a: &(f32, u32, u32), b: &(f32, u32, u32)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// Remove the `n` lowest-scoring entries among those alive and `eligible` across all tensors (one
/// global threshold). NaN scores sort last (never pruned first). Returns how many were removed
/// (fewer than `n` only when fewer are eligible).
pub fn remove_lowest(
    masks: &mut [Vec<f32>],
    scores: &[Vec<f32>],
    n: usize,
    eligible: &dyn Fn(usize, usize) -> bool,
) -> usize {
    let mut cand: Vec<(f32, u32, u32)> = Vec::new();
    for (l, (m, s)) in masks.iter().zip(scores).enumerate() {
        for (i, (&mv, &sv)) in m.iter().zip(s).enumerate() {
            if mv != 0.0 && eligible(l, i) {
                let sv = if sv.is_nan() { f32::INFINITY } else { sv };
                cand.push((sv, l as u32, i as u32));
            }
        }
    }
    let n = n.min(cand.len());
    if n == 0 {
        return 0;
    }
    if n < cand.len() {
        cand.select_nth_unstable_by(n - 1, cmp_entry);
    }
    for &(_, l, i) in &cand[..n] {
        masks[l as usize][i as usize] = 0.0;
    }
    n
}

/// Prune globally so that exactly `keep` entries stay alive (if fewer are alive, nothing changes).
pub fn prune_to_global(masks: &mut [Vec<f32>], scores: &[Vec<f32>], keep: usize) -> usize {
    let n = alive(masks).saturating_sub(keep);
    remove_lowest(masks, scores, n, &|_, _| true)
}

/// Prune each tensor separately so that tensor `l` keeps exactly `keep[l]` entries.
pub fn prune_to_per_layer(masks: &mut [Vec<f32>], scores: &[Vec<f32>], keep: &[usize]) -> usize {
    let mut removed = 0;
    for l in 0..masks.len() {
        let alive_l = masks[l].iter().filter(|&&v| v != 0.0).count();
        let n = alive_l.saturating_sub(keep[l]);
        removed += remove_lowest(masks, scores, n, &|ll, _| ll == l);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn removes_lowest_globally_with_ties_by_position() {
        let mut m = vec![vec![1.0; 3], vec![1.0; 2]];
        let s = vec![vec![0.5, 0.1, 0.3], vec![0.1, 0.9]];
        assert_eq!(prune_to_global(&mut m, &s, 3), 2);
        assert_eq!(m, vec![vec![1.0, 0.0, 1.0], vec![0.0, 1.0]]);
    }

    proptest! {
        #[test]
        fn global_and_per_layer_counts_are_exact(
            sizes in proptest::collection::vec(1usize..50, 1..5),
            frac in 0.0f64..1.0,
            seed in 0u64..1000,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let scores: Vec<Vec<f32>> = sizes.iter().map(|&n| (0..n).map(|_| rng.random_range(0..5) as f32).collect()).collect();
            let total: usize = sizes.iter().sum();
            let keep = (total as f64 * frac).round() as usize;
            let mut m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
            prune_to_global(&mut m, &scores, keep);
            prop_assert_eq!(alive(&m), keep);
            // Every pruned score ≤ every kept score.
            let maxp = m.iter().zip(&scores).flat_map(|(m, s)| m.iter().zip(s).filter(|(mv, _)| **mv == 0.0).map(|(_, s)| *s)).fold(f32::MIN, f32::max);
            let mink = m.iter().zip(&scores).flat_map(|(m, s)| m.iter().zip(s).filter(|(mv, _)| **mv != 0.0).map(|(_, s)| *s)).fold(f32::MAX, f32::min);
            prop_assert!(maxp <= mink);
            let keeps: Vec<usize> = sizes.iter().map(|&n| (n as f64 * frac).round() as usize).collect();
            let mut m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
            prune_to_per_layer(&mut m, &scores, &keeps);
            for (l, k) in keeps.iter().enumerate() {
                prop_assert_eq!(m[l].iter().filter(|&&v| v != 0.0).count(), *k);
            }
        }
    }
}
