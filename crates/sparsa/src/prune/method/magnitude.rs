//! Magnitude pruning: score = |w|.
use crate::nn::models::Net;
use crate::prune::{mask, Result};

/// |w| per prunable weight.
pub fn scores(net: &Net) -> Result<Vec<Vec<f32>>> {
    Ok(mask::host_weights(net)?
        .into_iter()
        .map(|w| w.into_iter().map(f32::abs).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::method::tests_support::tiny_net;

    #[test]
    fn magnitude_scores_are_abs_weights() {
        let net = tiny_net();
        let s = scores(&net).unwrap();
        assert_eq!(s, vec![vec![1.0, 2.0, 0.5, 3.0], vec![1.0, 4.0, 2.0, 0.5]]);
    }
}
