//! aux_k (Gao et al. 2024): the dead features reconstruct the residual. u_j = 1 if dead, else 0.

use super::{AuxLoss, AuxWeights, FeatureStats};

#[derive(Debug, Clone, Copy, Default)]
pub struct AuxK;

impl AuxLoss for AuxK {
    fn name(&self) -> &'static str {
        "aux_k"
    }
    fn weights(&self, stats: &FeatureStats) -> AuxWeights {
        AuxWeights {
            u: stats
                .dead
                .iter()
                .map(|&d| if d { 1.0 } else { 0.0 })
                .collect(),
            ..Default::default()
        }
    }
}
