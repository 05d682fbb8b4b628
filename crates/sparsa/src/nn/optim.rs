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
//!
//! Fast path: for contiguous f32 CPU tensors the whole update is one fused loop over the weight
//! storage, in place ([`FusedSgd`]), with the momentum buffer on the host; the tensor-op path is
//! the reference it is tested against (and the path for other dtypes).

use std::sync::Mutex;

use crate::kernels::with_f32;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};

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
    host: Vec<Option<Vec<f32>>>,
    /// Use the fused in-place path where possible (on by default).
    pub fused: bool,
}

/// The fused in-place update of one f32 weight tensor (see the module docs for the formula).
struct FusedSgd<'a> {
    grad: &'a [f32],
    mask: Option<&'a [f32]>,
    buf: Mutex<&'a mut Vec<f32>>,
    first: bool,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
}

impl InplaceOp1 for FusedSgd<'_> {
    fn name(&self) -> &'static str {
        "fused-masked-sgd"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(w) = storage else {
            candle_core::bail!("fused SGD needs f32 weights")
        };
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused SGD needs contiguous weights")
        };
        let w = &mut w[o0..o1];
        let mut guard = self
            .buf
            .lock()
            .map_err(|_| candle_core::Error::Msg("momentum buffer lock poisoned".into()))?;
        let buf: &mut Vec<f32> = &mut guard;
        if w.len() != self.grad.len() || buf.len() != w.len() {
            candle_core::bail!("fused SGD: size mismatch");
        }
        let (lr, mu, wd, first) = (self.lr, self.momentum, self.weight_decay, self.first);
        match self.mask {
            Some(m) => {
                for i in 0..w.len() {
                    let g = (self.grad[i] + wd * w[i]) * m[i];
                    let v = if first { g } else { (mu * buf[i] + g) * m[i] };
                    buf[i] = v;
                    w[i] = (w[i] - lr * v) * m[i];
                }
            }
            None => {
                for i in 0..w.len() {
                    let g = self.grad[i] + wd * w[i];
                    let v = if first { g } else { mu * buf[i] + g };
                    buf[i] = v;
                    w[i] -= lr * v;
                }
            }
        }
        Ok(())
    }
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
            host: Vec::new(),
            fused: true,
        })
    }

    /// Forget the momentum buffers.
    pub fn reset(&mut self) {
        self.buffers.clear();
        self.host.clear();
    }

    /// Try the fused in-place update of parameter `k`; `Ok(false)` when it does not apply.
    fn fused_step(
        &mut self,
        k: usize,
        w: &Tensor,
        g: &Tensor,
        mask: Option<&Tensor>,
        lr: f64,
    ) -> Result<bool> {
        if w.dtype() != DType::F32 || !w.device().is_cpu() || !w.is_contiguous() {
            return Ok(false);
        }
        let n = w.elem_count();
        let first = self.host[k].is_none();
        let buf = self.host[k].get_or_insert_with(|| vec![0f32; n]);
        let SgdConfig {
            momentum,
            weight_decay,
        } = self.config;
        let mask_f32 = match mask {
            Some(m) if m.dtype() == DType::F32 && m.is_contiguous() => Some(m),
            Some(_) => return Ok(false),
            None => None,
        };
        let run = |grad: &[f32], mslice: Option<&[f32]>, buf: &mut Vec<f32>| -> Result<()> {
            let op = FusedSgd {
                grad,
                mask: mslice,
                buf: Mutex::new(buf),
                first: first || momentum == 0.0,
                lr: lr as f32,
                momentum: momentum as f32,
                weight_decay: weight_decay as f32,
            };
            w.inplace_op1(&op)?;
            Ok(())
        };
        let done = with_f32(g, |grad| match mask_f32 {
            Some(m) => with_f32(m, |ms| run(grad, Some(ms), buf)),
            None => Some(run(grad, None, buf)),
        });
        match done {
            Some(Some(r)) => {
                r?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// One update with learning rate `lr` from the gradients of a backward pass.
    pub fn step(&mut self, net: &Net, grads: &GradStore, lr: f64) -> Result<()> {
        if self.buffers.len() != net.params.len() {
            self.buffers = vec![None; net.params.len()];
            self.host = vec![None; net.params.len()];
        }
        let SgdConfig {
            momentum,
            weight_decay,
        } = self.config;
        for (k, p) in net.params.iter().enumerate() {
            let w = p.var.as_tensor();
            let Some(g) = grads.get(w) else { continue };
            if self.fused
                && self.buffers[k].is_none()
                && self.fused_step(k, w, g, p.mask.as_ref(), lr)?
            {
                continue;
            }
            let buf = &mut self.buffers[k];
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
            let w = p
                .var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let w0 = before[&p.name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            match &p.mask {
                Some(m) => {
                    let m = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for i in 0..w.len() {
                        if m[i] == 0.0 {
                            assert!(w[i] == 0.0, "{} [{i}] = {}", p.name, w[i]);
                        }
                    }
                    let kept = (0..w.len()).filter(|&i| m[i] == 1.0).count();
                    let moved = (0..w.len())
                        .filter(|&i| m[i] == 1.0 && w[i] != w0[i])
                        .count();
                    assert!(
                        moved * 10 >= kept * 9,
                        "{}: only {moved}/{kept} moved",
                        p.name
                    );
                }
                None => assert!(w.iter().zip(&w0).any(|(a, b)| a != b), "{}", p.name),
            }
        }
    }

    #[test]
    fn fused_path_matches_tensor_path() {
        let input = InputSpec {
            channels: 1,
            height: 4,
            width: 4,
            classes: 3,
        };
        let make = || {
            let mut n = Net::mlp(input, &[5], 9, DType::F32).unwrap();
            let mut masks = n.masks();
            // The pattern depends on the name, not on the map's (random) iteration order.
            for (name, m) in masks.iter_mut() {
                let j = name.len();
                let v: Vec<f32> = (0..m.elem_count())
                    .map(|i| ((i + j) % 3 != 0) as u8 as f32)
                    .collect();
                *m = Tensor::from_vec(v, m.dims(), &Device::Cpu).unwrap();
            }
            n.set_masks(&masks).unwrap();
            n
        };
        let (mut a, mut b) = (make(), make());
        let mut oa = Sgd::new(SgdConfig::default()).unwrap();
        let mut ob = Sgd::new(SgdConfig::default()).unwrap();
        ob.fused = false;
        for step in 0..5 {
            let x = Tensor::randn(0f32, 1.0, (4, 1, 4, 4), &Device::Cpu).unwrap();
            let y = Tensor::new(&[0u32, 1, 2, (step % 3) as u32], &Device::Cpu).unwrap();
            for (net, opt) in [(&mut a, &mut oa), (&mut b, &mut ob)] {
                let l = crate::nn::layers::cross_entropy(
                    &net.forward(&x, Mode::Train, None).unwrap(),
                    &y,
                )
                .unwrap();
                let g = l.backward().unwrap();
                opt.step(net, &g, 0.1).unwrap();
            }
        }
        let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
        for (k, v) in &sa {
            let d = (v - &sb[k])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{k}: {d}");
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
