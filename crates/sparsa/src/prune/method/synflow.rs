//! SynFlow (Tanaka et al. 2020): data-free iterative synaptic-flow pruning. With every parameter
//! replaced by its absolute value (batch norm in evaluation mode), the all-ones input gives
//! `R = 1ᵀ f(1; |θ|)`; each weight scores `|θ ⊙ ∂R/∂θ|`. Over n iterations the kept count follows
//! the exponential schedule `keep_k = round(N · (keep/N)^(k/n))`, re-scoring after each prune.
//! Computed in f64; scores are compared as ln(score) so huge products neither overflow nor tie.
use candle_core::{DType, Tensor};

use crate::nn::models::{Mode, Net};
use crate::prune::{mask, Result};

/// SynFlow scores of the current network (abs-linearised, f64), as ln(score) in f32.
pub fn scores(net: &Net) -> Result<Vec<Vec<f32>>> {
    let mut lin = net.to_dtype(DType::F64)?;
    for p in &lin.params {
        p.var.set(&p.var.as_tensor().abs()?)?;
    }
    lin.apply_masks()?;
    let i = lin.input;
    let ones = Tensor::ones(
        (1, i.channels, i.height, i.width),
        DType::F64,
        &candle_core::Device::Cpu,
    )?;
    let r = lin.forward(&ones, Mode::Eval, None)?.sum_all()?;
    let grads = r.backward()?;
    let mut out = Vec::new();
    for k in lin.prunable() {
        let w = lin.params[k].var.as_tensor();
        let s = match grads.get(w) {
            Some(g) => (w * g)?.abs()?,
            None => w.zeros_like()?,
        };
        out.push(
            s.flatten_all()?
                .to_vec1::<f64>()?
                .into_iter()
                .map(|v| v.ln() as f32)
                .collect(),
        );
    }
    Ok(out)
}

/// Prune `net`'s masks to exactly `keep` alive weights with `iterations` SynFlow rounds; returns
/// the new host masks (the net is not changed).
pub fn prune(net: &Net, keep: usize, iterations: usize) -> Result<Vec<Vec<f32>>> {
    let mut work = net.to_dtype(net.params[0].var.dtype())?;
    let mut masks = mask::host_masks(&work)?;
    let start = mask::alive(&masks);
    let iterations = iterations.max(1);
    let ratio = keep as f64 / start.max(1) as f64;
    for k in 1..=iterations {
        let target = if k == iterations {
            keep
        } else {
            (start as f64 * ratio.powf(k as f64 / iterations as f64)).round() as usize
        };
        let s = scores(&work)?;
        mask::prune_to_global(&mut masks, &s, target);
        mask::set_host_masks(&mut work, &masks)?;
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::method::tests_support::tiny_net;

    #[test]
    fn synflow_by_hand() {
        // The hand computation is in tests_support::synflow_by_hand.
        let net = tiny_net();
        let s = scores(&net).unwrap();
        let want = crate::prune::method::tests_support::synflow_by_hand();
        for (a, b) in s.iter().flatten().zip(want.iter().flatten()) {
            assert!(((a.exp() as f64) - b).abs() < 1e-4, "{} vs {b}", a.exp());
        }
    }

    #[test]
    fn synflow_prunes_exactly() {
        let net = tiny_net();
        let m = prune(&net, 3, 10).unwrap();
        assert_eq!(mask::alive(&m), 3);
    }
}
