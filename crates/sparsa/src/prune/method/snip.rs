//! SNIP (Lee et al. 2019): connection sensitivity `|w · ∂L/∂w|`, with the gradient of the
//! cross-entropy summed over a few data batches, computed at initialisation.
use candle_core::Tensor;

use crate::nn::layers;
use crate::nn::models::{Mode, Net};
use crate::prune::{config_err, Result};

/// SNIP scores for every prunable tensor of `net` (the net itself is not changed: a copy runs
/// the batches so batch-norm statistics stay untouched).
pub fn scores(net: &Net, batches: &[(Tensor, Tensor)]) -> Result<Vec<Vec<f32>>> {
    if batches.is_empty() {
        return Err(config_err(
            "snip_batches",
            "SNIP needs at least one data batch",
        ));
    }
    let mut copy = net.to_dtype(net.params[0].var.dtype())?;
    let idx = copy.prunable();
    let mut acc: Vec<Option<Tensor>> = vec![None; idx.len()];
    for (x, y) in batches {
        let logits = copy.forward(x, Mode::Train, None)?;
        let loss = layers::cross_entropy(&logits, y)?;
        let grads = loss.backward()?;
        for (k, &i) in idx.iter().enumerate() {
            if let Some(g) = grads.get(copy.params[i].var.as_tensor()) {
                acc[k] = Some(match acc[k].take() {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    let mut out = Vec::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        let w = copy.params[i].var.as_tensor();
        let s = match &acc[k] {
            Some(g) => (w * g)?.abs()?,
            None => w.zeros_like()?,
        };
        out.push(
            s.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    copy.params.clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::method::tests_support::tiny_net;
    use candle_core::Device;

    #[test]
    fn snip_by_hand() {
        // The network and the hand computation of ∂L/∂w are in tests_support.
        let net = tiny_net();
        let x = Tensor::new(&[[[[1.0f32, 1.0]]]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let s = scores(&net, &[(x, y)]).unwrap();
        let want = crate::prune::method::tests_support::snip_by_hand();
        for (a, b) in s.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
