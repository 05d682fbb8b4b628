//! SGD with momentum and weight decay that keeps pruned weights exactly zero.
//!
//! For each parameter with gradient `g`, weight `w`, mask `m` (all ones for unprunable tensors):
//! ```text
//! g ← (g + λ·w) ⊙ m
//! v ← μ·v + g          (v = g on the first step, as PyTorch)
//! v ← v ⊙ m
//! w ← (w − η·v) ⊙ m
//! ```
//! Masking the gradient, the momentum buffer and the weight means a pruned weight stays 0 even if a
//! mask changes between steps; [`Sgd::reset`] drops the momentum (done between pruning rounds).

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::models::Net;
use super::{NnError, Result};

/// Hyper-parameters of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }
}

/// Masked SGD with momentum; one momentum buffer per parameter of the [`Net`] it steps.
pub struct Sgd {
    pub config: SgdConfig,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Sgd> {
        if !(0.0..1.0).contains(&config.momentum) {
            return Err(NnError::Config {
                field: "momentum",
                msg: format!("{} is outside [0, 1)", config.momentum),
            });
        }
        if !(config.weight_decay >= 0.0 && config.weight_decay.is_finite()) {
            return Err(NnError::Config {
                field: "weight_decay",
                msg: format!("{} must be a finite value ≥ 0", config.weight_decay),
            });
        }
        Ok(Sgd {
            config,
            buffers: Vec::new(),
        })
    }

    /// Forget the momentum buffers.
    pub fn reset(&mut self) {
        self.buffers.clear();
    }

    /// One update with learning rate `lr` from the gradients of a backward pass.
    pub fn step(&mut self, net: &Net, grads: &GradStore, lr: f64) -> Result<()> {
        if self.buffers.len() != net.params.len() {
            self.buffers = vec![None; net.params.len()];
        }
        let SgdConfig {
            momentum,
            weight_decay,
        } = self.config;
        for (p, buf) in net.params.iter().zip(self.buffers.iter_mut()) {
            let w = p.var.as_tensor();
            let Some(g) = grads.get(w) else { continue };
            let mut g = if weight_decay > 0.0 {
                (g + (w * weight_decay)?)?
            } else {
                g.clone()
            };
            if let Some(m) = &p.mask {
                g = (g * m)?;
            }
            let mut v = match buf.take() {
                Some(v) if momentum > 0.0 => ((v * momentum)? + g)?,
                _ => g,
            };
            if let Some(m) = &p.mask {
                v = (v * m)?;
            }
            let mut nw = (w - (&v * lr)?)?;
            if let Some(m) = &p.mask {
                nw = (nw * m)?;
            }
            p.var.set(&nw)?;
            *buf = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::models::{Arch, InputSpec, Mode};
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    #[test]
    fn masked_weights_stay_zero_and_unmasked_move() {
        let input = InputSpec {
            channels: 1,
            height: 8,
            width: 8,
            classes: 4,
        };
        let mut net = Net::new(Arch::Conv2, input, 3, DType::F32).unwrap();
        // Prune a random half of every prunable tensor.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut masks = net.masks();
        for m in masks.values_mut() {
            let v: Vec<f32> = (0..m.elem_count())
                .map(|_| if rng.random_bool(0.5) { 1.0 } else { 0.0 })
                .collect();
            *m = Tensor::from_vec(v, m.dims(), &Device::Cpu).unwrap();
        }
        net.set_masks(&masks).unwrap();
        let before = net.state().unwrap();
        let mut opt = Sgd::new(SgdConfig::default()).unwrap();
        for step in 0..30 {
            let x = Tensor::randn(0f32, 1.0, (8, 1, 8, 8), &Device::Cpu).unwrap();
            let y: Vec<u32> = (0..8).map(|i| ((i + step) % 4) as u32).collect();
            let y = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
            let logits = net.forward(&x, Mode::Train, None).unwrap();
            let loss = crate::nn::layers::cross_entropy(&logits, &y).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&net, &grads, 0.05).unwrap();
        }
        for p in &net.params {
            let w = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let w0 = before[&p.name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            match &p.mask {
                Some(m) => {
                    let m = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for i in 0..w.len() {
                        if m[i] == 0.0 {
                            assert!(w[i] == 0.0, "{} [{i}] = {}", p.name, w[i]);
                        }
                    }
                    let kept = (0..w.len()).filter(|&i| m[i] == 1.0).count();
                    let moved = (0..w.len()).filter(|&i| m[i] == 1.0 && w[i] != w0[i]).count();
                    assert!(moved * 10 >= kept * 9, "{}: only {moved}/{kept} moved", p.name);
                }
                None => assert!(w.iter().zip(&w0).any(|(a, b)| a != b), "{}", p.name),
            }
        }
    }

    #[test]
    fn bad_momentum_is_rejected() {
        assert!(Sgd::new(SgdConfig {
            momentum: 1.5,
            weight_decay: 0.0
        })
        .is_err());
    }
}
