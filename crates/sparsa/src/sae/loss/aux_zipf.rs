//! aux_zipf (project's reconstruction of Ayonrinde 2024's generalisation of aux_k): features
//! below a Zipf target density are under-used and help reconstruct the residual, in proportion
//! to how far below target they are.
//!
//! Rank features by running density ρ (descending), r_j ∈ 1..F. Target τ_r = C·(r + β)^−α with C
//! such that Σ_r τ_r = Σ_j ρ_j (the mean L0). Under-use u_j = clamp(1 − ρ_j/τ_{r_j}, 0, 1), and
//! u_j = 1 for dead features. α and β are configured or fitted ([`crate::sae::zipf::fit`]); if a
//! fit is impossible (fewer than 3 live features) the fallback is α = 1, β = 0 (project choice).

use super::{AuxLoss, AuxWeights, FeatureStats, DEAD_FIRST};
use crate::sae::config::{AuxConfig, ZipfParam};
use crate::sae::zipf;

#[derive(Debug, Clone)]
pub struct AuxZipf {
    pub alpha: ZipfParam,
    pub beta: ZipfParam,
    pub fit_head: f64,
    /// Mark dead features [`DEAD_FIRST`] so the selection serves them before under-used ones.
    pub dead_first: bool,
}

impl AuxZipf {
    pub fn from_config(cfg: &AuxConfig) -> Self {
        AuxZipf {
            alpha: cfg.zipf_alpha,
            beta: cfg.zipf_beta,
            fit_head: cfg.zipf_fit_head,
            dead_first: cfg.zipf_dead_first,
        }
    }

    /// The (α, β, R²) in effect for these densities.
    pub fn law(&self, density: &[f32]) -> (f64, f64, f64) {
        match (self.alpha, self.beta) {
            (ZipfParam::Value(a), ZipfParam::Value(b)) => (a, b, f64::NAN),
            (alpha, beta) => {
                let betas: Vec<f64> = match beta {
                    ZipfParam::Value(b) => vec![b],
                    ZipfParam::Fit => zipf::BETA_GRID.to_vec(),
                };
                match zipf::fit(density, self.fit_head, &betas) {
                    Some(fit) => {
                        let a = match alpha {
                            ZipfParam::Value(a) => a,
                            ZipfParam::Fit => fit.alpha.max(0.0),
                        };
                        (a, fit.beta, fit.r2)
                    }
                    None => (
                        match alpha {
                            ZipfParam::Value(a) => a,
                            ZipfParam::Fit => 1.0,
                        },
                        match beta {
                            ZipfParam::Value(b) => b,
                            ZipfParam::Fit => 0.0,
                        },
                        f64::NAN,
                    ),
                }
            }
        }
    }
}

impl AuxLoss for AuxZipf {
    fn name(&self) -> &'static str {
        "aux_zipf"
    }
    fn weights(&self, stats: &FeatureStats) -> AuxWeights {
        let f = stats.density.len();
        let (alpha, beta, r2) = self.law(stats.density);
        let total: f64 = stats.density.iter().map(|&d| d as f64).sum();
        let tau = zipf::targets(f, alpha, beta, total);
        let order = zipf::rank_order(stats.density);
        let mut u = vec![0f32; f];
        for (rank0, &j) in order.iter().enumerate() {
            u[j] = if stats.dead[j] {
                if self.dead_first {
                    DEAD_FIRST
                } else {
                    1.0
                }
            } else if tau[rank0] > 0.0 {
                (1.0 - stats.density[j] as f64 / tau[rank0]).clamp(0.0, 1.0) as f32
            } else {
                0.0
            };
        }
        AuxWeights {
            u,
            zipf_alpha: Some(alpha),
            zipf_beta: Some(beta),
            zipf_r2: Some(r2),
        }
    }
}
