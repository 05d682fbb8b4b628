//! Random pruning: i.i.d. uniform scores, so the removed set is a uniform random subset.
use rand::Rng;

/// A uniform [0, 1) score per entry.
pub fn scores<R: Rng>(masks: &[Vec<f32>], rng: &mut R) -> Vec<Vec<f32>> {
    masks
        .iter()
        .map(|m| m.iter().map(|_| rng.random::<f32>()).collect())
        .collect()
}
