//! Pruning scores: each method gives a score per weight; the lowest-scoring alive weights are
//! removed by [`super::mask`]. One file per method; [`Method`] is the registry.
//!
//! In an iterative schedule every method scores the network at the end of the round's training,
//! under its current masks. For SNIP and SynFlow, defined by their papers at initialisation in
//! one shot, this iterative form is a project choice: SNIP takes |w · ∂L/∂w| at the trained
//! weights on the same `snip_batches` batches each round; SynFlow runs its `synflow_iterations`
//! score-and-prune steps inside each round, from the round's alive count down to its target.

pub mod lamp;
pub mod magnitude;
pub mod random;
pub mod snip;
pub mod synflow;

use candle_core::Tensor;
use rand::Rng;

use super::mask;
use super::Result;
use crate::nn::models::Net;

/// A pruning method (the registry key used in configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Random,
    Magnitude,
    Lamp,
    Snip,
    Synflow,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Random => "random",
            Method::Magnitude => "magnitude",
            Method::Lamp => "lamp",
            Method::Snip => "snip",
            Method::Synflow => "synflow",
        }
    }

    /// Whether the method supports a per-layer scope (LAMP, SNIP and SynFlow are global).
    pub fn allows_layer_scope(self) -> bool {
        matches!(self, Method::Random | Method::Magnitude)
    }
}

/// Whether a threshold is shared by all layers or applied per layer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Global,
    Layer,
}

impl Scope {
    /// The name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Layer => "layer",
        }
    }
}

/// What scoring may need besides the network.
pub struct ScoreContext<'a> {
    /// Batches (inputs, labels) for SNIP.
    pub batches: &'a [(Tensor, Tensor)],
    /// SynFlow's number of score-and-prune iterations.
    pub synflow_iterations: usize,
}

/// Prune `net`'s current masks with `method` so that the target counts are met exactly: globally
/// `keep` alive weights, or per layer `keep_per_layer[l]` when `scope` is [`Scope::Layer`].
/// Returns the new host masks (the net is not changed).
pub fn prune_masks<R: Rng>(
    net: &Net,
    method: Method,
    scope: Scope,
    keep: usize,
    keep_per_layer: &[usize],
    ctx: &ScoreContext,
    rng: &mut R,
) -> Result<Vec<Vec<f32>>> {
    let mut masks = mask::host_masks(net)?;
    if method == Method::Synflow {
        return synflow::prune(net, keep, ctx.synflow_iterations);
    }
    let scores = match method {
        Method::Random => random::scores(&masks, rng),
        Method::Magnitude => magnitude::scores(net)?,
        Method::Lamp => lamp::scores(net, &masks)?,
        Method::Snip => snip::scores(net, ctx.batches)?,
        Method::Synflow => unreachable_synflow()?,
    };
    match scope {
        Scope::Global => {
            mask::prune_to_global(&mut masks, &scores, keep);
        }
        Scope::Layer => {
            mask::prune_to_per_layer(&mut masks, &scores, keep_per_layer);
        }
    }
    Ok(masks)
}

fn unreachable_synflow() -> Result<Vec<Vec<f32>>> {
    Err(super::config_err(
        "method",
        "SynFlow is handled by synflow::prune",
    ))
}

/// A hand-checkable network shared by the method tests: input (1, 1, 2), fc1 2→2 with
/// W1 = [[1, −2], [0.5, 3]], ReLU, fc2 2→2 with W2 = [[1, −4], [2, 0.5]], zero biases.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::nn::models::{InputSpec, Net};
    use candle_core::{DType, Device, Tensor};

    pub fn tiny_net() -> Net {
        let input = InputSpec {
            channels: 1,
            height: 1,
            width: 2,
            classes: 2,
        };
        let net = Net::mlp(input, &[2], 0, DType::F32).unwrap();
        let w1 = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        let w2 = Tensor::new(&[[1.0f32, -4.0], [2.0, 0.5]], &Device::Cpu).unwrap();
        net.params[0].var.set(&w1).unwrap();
        net.params[2].var.set(&w2).unwrap();
        net
    }

    /// x = [1, 1], label 0: h_pre = [−1, 3.5], h = [0, 3.5], z = [−14, 1.75],
    /// ∂L/∂z = [p0 − 1, 1 − p0] with p0 = 1/(1 + e^15.75);
    /// ∂L/∂W2 = ∂L/∂z hᵀ; ∂L/∂h = W2ᵀ ∂L/∂z = [d0 + 2 d1, −4 d0 + 0.5 d1], unit 0 is dead,
    /// ∂L/∂W1 = [[0, 0], [g, g]] with g = −4 d0 + 0.5 d1; score = |w · ∂L/∂w|.
    pub fn snip_by_hand() -> Vec<Vec<f32>> {
        let p0 = 1.0 / (1.0 + 15.75f64.exp());
        let (d0, d1) = (p0 - 1.0, 1.0 - p0);
        let g = -4.0 * d0 + 0.5 * d1;
        vec![
            vec![0.0, 0.0, (0.5 * g) as f32, (3.0 * g).abs() as f32],
            vec![
                0.0,
                (4.0 * 3.5 * d0).abs() as f32,
                0.0,
                (0.5 * 3.5 * d1) as f32,
            ],
        ]
    }

    /// |θ|, input ones: h = [3, 3.5], R = Σ z; ∂R/∂W2[i][j] = h_j, ∂R/∂h = |W2|ᵀ 1 = [3, 4.5],
    /// ∂R/∂W1[i][j] = ∂R/∂h_i · 1; score = |θ · ∂R/∂θ|.
    pub fn synflow_by_hand() -> Vec<Vec<f64>> {
        vec![vec![3.0, 6.0, 2.25, 13.5], vec![3.0, 14.0, 6.0, 1.75]]
    }
}
