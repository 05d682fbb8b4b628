//! Throughput of the image classifiers, as `sparsa bench prune` prints it: one model at one
//! sparsity (global magnitude pruning at initialisation unless another method or a per-layer
//! scope is asked for), random inputs of the model's usual shape, a warm-up step and then timed
//! training steps (forward, backward, masked SGD) and evaluation passes, on the fused engine or
//! the candle reference.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use rand::SeedableRng;

use super::method::{self, Method, Scope, ScoreContext};
use super::{config_err, mask, Result};
use crate::nn::fast::{Counting, FastNet};
use crate::nn::layers;
use crate::nn::models::{Arch, InputSpec, Mode, Net};
use crate::nn::optim::{Sgd, SgdConfig};

/// The input a model is usually trained on: 28×28×1 (MNIST-like) for LeNet and Conv-2/4/6,
/// 32×32×3 (CIFAR-like) for ResNet and VGG; 10 classes.
pub fn usual_input(arch: Arch) -> InputSpec {
    let (channels, side) = match arch {
        Arch::Lenet300100 | Arch::Lenet5 | Arch::Conv2 | Arch::Conv4 | Arch::Conv6 => (1, 28),
        _ => (3, 32),
    };
    InputSpec {
        channels,
        height: side,
        width: side,
        classes: 10,
    }
}

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchSpec {
    /// Images per step.
    pub batch: usize,
    /// Timed training steps and evaluation passes (each after one untimed warm-up).
    pub steps: usize,
    /// Time the candle reference path instead of the fused engine.
    pub reference: bool,
    /// The engine's sparse-kernel threshold ([`FastNet::with_sparse_threshold`]); `None`: its
    /// default.
    pub sparse_below: Option<f64>,
    /// The same for convolutions ([`FastNet::with_sparse_conv_threshold`]).
    pub sparse_conv_below: Option<f64>,
    /// Output channels above which 3×3 convolutions run the Winograd kernels
    /// ([`FastNet::with_winograd_above`]); `None`: the engine's default.
    pub winograd_above: Option<usize>,
    /// How the model is pruned to the sparsity.
    pub pruning: BenchPruning,
}

/// How the benchmark prunes a model at initialisation: which method scores the weights and
/// whether the count is met over the whole net or in every layer. The sparsity's distribution
/// over the layers decides what the sparse kernels can save: global magnitude at initialisation
/// keeps Conv-4's conv2–conv4 at 16–32 % density (conv1 at 90 %) for 95 % overall, a per-layer
/// scope keeps every layer at 5 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchPruning {
    /// Magnitude, LAMP, random or SynFlow (SNIP needs training batches: refused).
    pub method: Method,
    pub scope: Scope,
}

impl Default for BenchPruning {
    fn default() -> Self {
        BenchPruning {
            method: Method::Magnitude,
            scope: Scope::Global,
        }
    }
}

/// SynFlow's score-and-prune iterations in the benchmark (its paper's 100).
const SYNFLOW_ITERATIONS: usize = 100;

/// Seconds per timed step.
#[derive(Debug, Clone)]
pub struct BenchTimes {
    pub input: InputSpec,
    /// Parameters of the model (masked ones included).
    pub params: usize,
    pub train: Vec<f64>,
    pub eval: Vec<f64>,
    /// Weight density of each masked linear layer, and whether it ran the sparse kernels
    /// (empty on the reference path).
    pub linear: Vec<(f64, bool)>,
    /// The same for the masked convolutions.
    pub conv: Vec<(f64, bool)>,
    /// The kernels each convolution ran ([`FastNet::conv_kernels`]; empty on the reference
    /// path).
    pub conv_kernels: Vec<&'static str>,
}

/// The model (seed 0) pruned to `sparsity` % by `pruning` (masks on every prunable tensor;
/// with a per-layer scope every tensor keeps its share, rounded).
pub fn pruned_model(arch: Arch, sparsity: f64, pruning: BenchPruning) -> Result<Net> {
    let BenchPruning { method, scope } = pruning;
    if method == Method::Snip {
        return Err(config_err(
            "method",
            "snip scores need training batches; the benchmark prunes by magnitude, lamp, random or synflow",
        ));
    }
    if scope == Scope::Layer && !method.allows_layer_scope() {
        return Err(config_err(
            "scope",
            format!(
                "{} is a global method; a per-layer scope takes magnitude or random",
                method.name()
            ),
        ));
    }
    let mut net = Net::new(arch, usual_input(arch), 0, DType::F32)?;
    if sparsity > 0.0 {
        let share = 1.0 - sparsity / 100.0;
        let masks = mask::host_masks(&net)?;
        let total: usize = masks.iter().map(|m| m.len()).sum();
        let keep = (share * total as f64).round() as usize;
        let per_layer: Vec<usize> = masks
            .iter()
            .map(|m| (share * m.len() as f64).round() as usize)
            .collect();
        let ctx = ScoreContext {
            batches: &[],
            synflow_iterations: SYNFLOW_ITERATIONS,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let masks = method::prune_masks(&net, method, scope, keep, &per_layer, &ctx, &mut rng)?;
        mask::set_host_masks(&mut net, &masks)?;
    }
    Ok(net)
}

/// Time `spec.steps` training steps and evaluation passes of `arch` at `sparsity` %; `tick` is
/// called after every step (warm-ups included: 2·steps + 2 calls).
pub fn time_model(
    arch: Arch,
    sparsity: f64,
    spec: BenchSpec,
    tick: &dyn Fn(),
) -> Result<BenchTimes> {
    let input = usual_input(arch);
    let mut net = pruned_model(arch, sparsity, spec.pruning)?;
    let params = net
        .params
        .iter()
        .map(|p| p.var.as_tensor().elem_count())
        .sum();
    let batch = spec.batch;
    let xs: Vec<f32> = Tensor::randn(
        0f32,
        1.0,
        batch * input.channels * input.height * input.width,
        &Device::Cpu,
    )?
    .to_vec1()?;
    let ys: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    // Run `f` steps + 1 times, timing all but the first.
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<Vec<f64>> {
        let mut t = Vec::with_capacity(spec.steps);
        for s in 0..=spec.steps {
            let t0 = Instant::now();
            f()?;
            if s > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
            tick();
        }
        Ok(t)
    };
    if spec.reference {
        let shape = (batch, input.channels, input.height, input.width);
        let x = Tensor::from_slice(&xs, shape, &Device::Cpu)?;
        let y = Tensor::from_slice(&ys, batch, &Device::Cpu)?;
        let mut opt = Sgd::new(SgdConfig::default())?;
        let train = timed(&mut || {
            let logits = net.forward(&x, Mode::Train, None)?;
            let grads = layers::cross_entropy(&logits, &y)?.backward()?;
            opt.step(&net, &grads, 0.01)?;
            Ok(())
        })?;
        let eval = timed(&mut || {
            net.forward(&x, Mode::Eval, None)?.to_vec2::<f32>()?;
            Ok(())
        })?;
        return Ok(BenchTimes {
            input,
            params,
            train,
            eval,
            linear: Vec::new(),
            conv: Vec::new(),
            conv_kernels: Vec::new(),
        });
    }
    let mut fast = FastNet::<f32>::from_net(&net, SgdConfig::default())?;
    if let Some(t) = spec.sparse_below {
        fast = fast.with_sparse_threshold(t);
    }
    if let Some(t) = spec.sparse_conv_below {
        fast = fast.with_sparse_conv_threshold(t);
    }
    if let Some(c) = spec.winograd_above {
        fast = fast.with_winograd_above(c);
    }
    let (linear, conv) = (fast.linear_densities(), fast.conv_densities());
    let conv_kernels = fast.conv_kernels();
    fast.set_counting(Counting::Dynamic);
    let train = timed(&mut || {
        fast.train_step(&xs, &ys, 0.01)?;
        Ok(())
    })?;
    let eval = timed(&mut || {
        fast.forward(&xs, batch, Mode::Eval)?;
        Ok(())
    })?;
    Ok(BenchTimes {
        input,
        params,
        train,
        eval,
        linear,
        conv,
        conv_kernels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn times_both_paths_and_reports_the_pruned_layers() {
        for reference in [false, true] {
            let ticks = Cell::new(0);
            let spec = BenchSpec {
                batch: 8,
                steps: 2,
                reference,
                sparse_below: None,
                sparse_conv_below: None,
                winograd_above: None,
                pruning: BenchPruning::default(),
            };
            let t = time_model(Arch::Lenet300100, 95.0, spec, &|| {
                ticks.set(ticks.get() + 1)
            })
            .unwrap();
            assert_eq!(ticks.get(), 2 * 2 + 2, "a tick per step, warm-ups included");
            assert_eq!((t.train.len(), t.eval.len()), (2, 2));
            assert!(t.train.iter().chain(&t.eval).all(|&s| s > 0.0));
            assert_eq!(t.params, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10);
            assert_eq!(t.input, usual_input(Arch::Lenet300100));
            if reference {
                assert!(t.linear.is_empty());
            } else {
                // 95 % global magnitude sparsity leaves fc1 below the sparse threshold.
                assert_eq!(t.linear.len(), 3);
                assert!(t.linear[0].1 && t.linear[0].0 < 0.1, "{:?}", t.linear);
            }
        }
        let kept = |net: &Net| -> f64 {
            let m = mask::host_masks(net).unwrap();
            let n: usize = m.iter().map(|m| m.len()).sum();
            m.iter().flatten().filter(|&&v| v != 0.0).count() as f64 / n as f64
        };
        let global = BenchPruning::default();
        assert!((kept(&pruned_model(Arch::Lenet300100, 90.0, global).unwrap()) - 0.1).abs() < 1e-3);
        assert_eq!(
            kept(&pruned_model(Arch::Lenet300100, 0.0, global).unwrap()),
            1.0
        );
    }

    /// Every method the benchmark takes meets the sparsity; a per-layer scope meets it in every
    /// layer, while global magnitude leaves the layers uneven; SNIP and a per-layer LAMP are
    /// refused with the field named.
    #[test]
    fn pruning_methods_and_scopes_meet_the_sparsity() {
        let densities = |net: &Net| -> (f64, Vec<f64>) {
            let m = mask::host_masks(net).unwrap();
            let alive = |m: &[f32]| m.iter().filter(|&&v| v != 0.0).count();
            let n: usize = m.iter().map(|m| m.len()).sum();
            let all = m.iter().map(|m| alive(m)).sum::<usize>() as f64 / n as f64;
            (
                all,
                m.iter().map(|m| alive(m) as f64 / m.len() as f64).collect(),
            )
        };
        let arch = Arch::Lenet300100;
        for method in [
            Method::Magnitude,
            Method::Lamp,
            Method::Random,
            Method::Synflow,
        ] {
            let net = pruned_model(
                arch,
                90.0,
                BenchPruning {
                    method,
                    scope: Scope::Global,
                },
            );
            let (all, _) = densities(&net.unwrap());
            assert!((all - 0.1).abs() < 1e-3, "{method:?}: density {all}");
        }
        for method in [Method::Magnitude, Method::Random] {
            let net = pruned_model(
                arch,
                90.0,
                BenchPruning {
                    method,
                    scope: Scope::Layer,
                },
            );
            let (_, layers) = densities(&net.unwrap());
            assert!(
                layers.iter().all(|d| (d - 0.1).abs() < 1e-3),
                "{method:?}: {layers:?}"
            );
        }
        let (_, layers) = densities(&pruned_model(arch, 90.0, BenchPruning::default()).unwrap());
        assert!(layers.iter().any(|d| (d - 0.1).abs() > 0.05), "{layers:?}");
        for (method, scope, field) in [
            (Method::Snip, Scope::Global, "method"),
            (Method::Lamp, Scope::Layer, "scope"),
        ] {
            let Err(e) = pruned_model(arch, 90.0, BenchPruning { method, scope }) else {
                panic!("{method:?} {scope:?} accepted");
            };
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
