//! The image classifiers used for pruning experiments, built from the functions in
//! [`super::layers`]. A model is a list of [`Op`]s over a flat list of named [`Param`]s; every
//! prunable tensor (linear and conv weights, never biases or batch-norm parameters) carries a 0/1
//! mask, and the invariant "a masked weight is exactly 0" is kept by [`Net::apply_masks`] and the
//! optimiser.
//!
//! Architectures (weights Kaiming-normal, `std = √(2 / fan_in)`; biases and β zero; γ one):
//! - `lenet-300-100`: flatten → 300 → 100 → classes, ReLU between (LeCun et al.; Frankle & Carbin).
//! - `lenet-5`: a modern LeNet-5 (LeCun et al. 1998 with ReLU and max pooling, as in PyTorch's
//!   examples): 5×5 conv 6 (padding 2) → pool → 5×5 conv 16 → pool → 120 → 84 → classes, ReLU
//!   after every layer but the last; the smallest conv net here (61,470 prunable weights on 28×28).
//! - `conv-2/4/6`: Frankle & Carbin's VGG-like nets: pairs of 3×3 convs (64, 128, 256 channels)
//!   each pair followed by 2×2 max pooling, then 256 → 256 → classes.
//! - `resnet-20`: He et al.'s CIFAR ResNet (16/32/64 channels, 3 blocks per stage, BatchNorm);
//!   shortcuts that change shape are 1×1 conv + BN (as in OpenLTH), global average pooling.
//! - `vgg-11/16/19`: CIFAR VGG with BatchNorm (OpenLTH's configurations: four max pools), global
//!   average pooling, one linear layer 512 → classes.

use std::collections::HashMap;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::layers;
use super::{NnError, Result};

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    #[serde(rename = "lenet-300-100")]
    Lenet300100,
    #[serde(rename = "lenet-5")]
    Lenet5,
    #[serde(rename = "conv-2")]
    Conv2,
    #[serde(rename = "conv-4")]
    Conv4,
    #[serde(rename = "conv-6")]
    Conv6,
    #[serde(rename = "resnet-20")]
    Resnet20,
    #[serde(rename = "vgg-11")]
    Vgg11,
    #[serde(rename = "vgg-16")]
    Vgg16,
    #[serde(rename = "vgg-19")]
    Vgg19,
}

impl Arch {
    /// All architectures, in the order the CLI lists them.
    pub const ALL: [Arch; 9] = [
        Arch::Lenet300100,
        Arch::Lenet5,
        Arch::Conv2,
        Arch::Conv4,
        Arch::Conv6,
        Arch::Resnet20,
        Arch::Vgg11,
        Arch::Vgg16,
        Arch::Vgg19,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Lenet300100 => "lenet-300-100",
            Arch::Lenet5 => "lenet-5",
            Arch::Conv2 => "conv-2",
            Arch::Conv4 => "conv-4",
            Arch::Conv6 => "conv-6",
            Arch::Resnet20 => "resnet-20",
            Arch::Vgg11 => "vgg-11",
            Arch::Vgg16 => "vgg-16",
            Arch::Vgg19 => "vgg-19",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self> {
        Arch::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| NnError::UnknownArch(s.to_string()))
    }
}

/// Shape of one input image and the number of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

/// A trainable tensor. `mask` is `Some` exactly for prunable tensors.
pub struct Param {
    pub name: String,
    pub var: Var,
    pub mask: Option<Tensor>,
}

impl Param {
    pub fn prunable(&self) -> bool {
        self.mask.is_some()
    }
}

/// Running statistics of one batch-norm layer.
pub(crate) struct BnState {
    pub(crate) gamma: usize,
    pub(crate) beta: usize,
    pub(crate) mean: Tensor,
    pub(crate) var: Tensor,
}

/// Whether a forward pass trains (batch statistics, running-stat updates) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Receives every ReLU output of a forward pass (used for dead-neuron-rate probes).
pub trait ReluProbe {
    /// `index` is the ReLU's position in [`Net::relu_names`]; `out` its output (batch first).
    fn observe(&mut self, index: usize, out: &Tensor) -> Result<()>;
}

#[derive(Clone)]
pub(crate) enum Op {
    Flatten,
    Linear {
        w: usize,
        b: Option<usize>,
    },
    Conv {
        w: usize,
        b: Option<usize>,
        stride: usize,
        pad: usize,
    },
    Bn(usize),
    Relu(usize),
    MaxPool(usize),
    GlobalAvgPool,
    /// `relu(main(x) + shortcut(x))`; an empty shortcut is the identity.
    Residual {
        main: Vec<Op>,
        shortcut: Vec<Op>,
        relu: usize,
    },
}

/// A classifier: parameters, batch-norm state, and the op list that forms its forward pass.
pub struct Net {
    pub arch: Arch,
    pub input: InputSpec,
    pub params: Vec<Param>,
    bns: Vec<BnState>,
    ops: Vec<Op>,
    relu_names: Vec<String>,
    /// Batch-norm running-statistics momentum (PyTorch convention: new = (1−m)·old + m·batch).
    pub bn_momentum: f64,
    pub bn_eps: f64,
}

struct Builder {
    params: Vec<Param>,
    bns: Vec<BnState>,
    relus: Vec<String>,
    rng: rand_chacha::ChaCha8Rng,
    dtype: DType,
}

impl Builder {
    fn new(seed: u64, dtype: DType) -> Self {
        Builder {
            params: Vec::new(),
            bns: Vec::new(),
            relus: Vec::new(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            dtype,
        }
    }

    /// The finished network; batch-norm momentum 0.1 and ε 1e-5 (PyTorch's defaults).
    fn finish(self, arch: Arch, input: InputSpec, ops: Vec<Op>) -> Net {
        Net {
            arch,
            input,
            params: self.params,
            bns: self.bns,
            ops,
            relu_names: self.relus,
            bn_momentum: 0.1,
            bn_eps: 1e-5,
        }
    }

    fn kaiming(&mut self, shape: &[usize], fan_in: usize) -> Result<Tensor> {
        let std = (2.0 / fan_in as f64).sqrt();
        let normal = Normal::new(0.0, std).map_err(|e| NnError::Config {
            field: "init",
            msg: e.to_string(),
        })?;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| normal.sample(&mut self.rng) as f32)
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(self.dtype)?)
    }

    fn push(&mut self, name: String, t: Tensor, prunable: bool) -> Result<usize> {
        let mask = if prunable { Some(t.ones_like()?) } else { None };
        self.params.push(Param {
            name,
            var: Var::from_tensor(&t)?,
            mask,
        });
        Ok(self.params.len() - 1)
    }

    fn linear(&mut self, name: &str, fan_in: usize, out: usize) -> Result<Op> {
        let w = self.kaiming(&[out, fan_in], fan_in)?;
        let w = self.push(format!("{name}.weight"), w, true)?;
        let b = Tensor::zeros(out, self.dtype, &Device::Cpu)?;
        let b = self.push(format!("{name}.bias"), b, false)?;
        Ok(Op::Linear { w, b: Some(b) })
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> Result<Op> {
        let w = self.kaiming(&[cout, cin, k, k], cin * k * k)?;
        let w = self.push(format!("{name}.weight"), w, true)?;
        let b = if bias {
            let b = Tensor::zeros(cout, self.dtype, &Device::Cpu)?;
            Some(self.push(format!("{name}.bias"), b, false)?)
        } else {
            None
        };
        Ok(Op::Conv { w, b, stride, pad })
    }

    fn bn(&mut self, name: &str, c: usize) -> Result<Op> {
        let d = &Device::Cpu;
        let gamma = self.push(
            format!("{name}.weight"),
            Tensor::ones(c, self.dtype, d)?,
            false,
        )?;
        let beta = self.push(
            format!("{name}.bias"),
            Tensor::zeros(c, self.dtype, d)?,
            false,
        )?;
        self.bns.push(BnState {
            gamma,
            beta,
            mean: Tensor::zeros(c, self.dtype, d)?,
            var: Tensor::ones(c, self.dtype, d)?,
        });
        Ok(Op::Bn(self.bns.len() - 1))
    }

    fn relu(&mut self, name: &str) -> Op {
        self.relus.push(name.to_string());
        Op::Relu(self.relus.len() - 1)
    }
}

fn vgg_cfg(arch: Arch) -> &'static [usize] {
    // 0 marks a 2×2 max pool.
    match arch {
        Arch::Vgg11 => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512],
        Arch::Vgg16 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512,
        ],
        _ => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512,
            512,
        ],
    }
}

impl Net {
    /// Build `arch` for `input`, initialised from `seed`, in `dtype` (f32 for training; f64 for
    /// gradient checks and SynFlow).
    pub fn new(arch: Arch, input: InputSpec, seed: u64, dtype: DType) -> Result<Net> {
        let mut b = Builder::new(seed, dtype);
        let InputSpec {
            channels: c,
            height: h,
            width: w,
            classes,
        } = input;
        let ops = match arch {
            Arch::Lenet300100 => mlp_ops(&mut b, c * h * w, &[300, 100], classes)?,
            Arch::Lenet5 => lenet5_ops(&mut b, arch, input)?,
            Arch::Conv2 | Arch::Conv4 | Arch::Conv6 => conv_ops(&mut b, arch, input)?,
            Arch::Resnet20 => resnet20_ops(&mut b, input)?,
            Arch::Vgg11 | Arch::Vgg16 | Arch::Vgg19 => vgg_ops(&mut b, arch, input)?,
        };
        Ok(b.finish(arch, input, ops))
    }

    /// A LeNet-style MLP with custom hidden widths (LeNet-300-100 is `hidden = [300, 100]`); its
    /// `arch` reads `lenet-300-100` as the family name. Used for small hand-checked tests.
    pub fn mlp(input: InputSpec, hidden: &[usize], seed: u64, dtype: DType) -> Result<Net> {
        let mut b = Builder::new(seed, dtype);
        let ops = mlp_ops(
            &mut b,
            input.channels * input.height * input.width,
            hidden,
            input.classes,
        )?;
        Ok(b.finish(Arch::Lenet300100, input, ops))
    }

    /// The op list (for the fused engine, [`super::fast`]).
    pub(crate) fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Batch-norm layers: parameter indices and running statistics.
    pub(crate) fn bn_states(&self) -> &[BnState] {
        &self.bns
    }

    /// Replace the running statistics of batch-norm layer `i`.
    pub(crate) fn set_bn_running(&mut self, i: usize, mean: Tensor, var: Tensor) {
        self.bns[i].mean = mean;
        self.bns[i].var = var;
    }

    /// Names of the ReLU layers, in forward order (the indices a [`ReluProbe`] sees).
    pub fn relu_names(&self) -> &[String] {
        &self.relu_names
    }

    /// Forward pass of a batch (N, C, H, W) to logits (N, classes).
    pub fn forward(
        &mut self,
        x: &Tensor,
        mode: Mode,
        probe: Option<&mut dyn ReluProbe>,
    ) -> Result<Tensor> {
        let dims = x.dims();
        let InputSpec {
            channels: c,
            height: h,
            width: w,
            ..
        } = self.input;
        if dims.len() != 4 || dims[1] != c || dims[2] != h || dims[3] != w {
            return Err(NnError::InputShape {
                arch: self.arch.to_string(),
                got: dims.to_vec(),
                c,
                h,
                w,
            });
        }
        let mut ctx = Ctx {
            params: &self.params,
            bns: &mut self.bns,
            mode,
            probe,
            momentum: self.bn_momentum,
            eps: self.bn_eps,
        };
        run_ops(&self.ops, x.clone(), &mut ctx)
    }

    /// Set every masked weight to exactly zero (`w ← w ⊙ m`).
    pub fn apply_masks(&self) -> Result<()> {
        for p in &self.params {
            if let Some(m) = &p.mask {
                p.var.set(&(p.var.as_tensor() * m)?)?;
            }
        }
        Ok(())
    }

    /// Indices of the prunable parameters.
    pub fn prunable(&self) -> Vec<usize> {
        (0..self.params.len())
            .filter(|&i| self.params[i].prunable())
            .collect()
    }

    /// Every tensor that defines the model's function: parameters by name plus batch-norm running
    /// statistics (`<bn>.running_mean`, `<bn>.running_var`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(p.name.clone(), p.var.as_tensor().copy()?);
        }
        for bn in &self.bns {
            let base = self.params[bn.gamma]
                .name
                .trim_end_matches(".weight")
                .to_string();
            out.insert(format!("{base}.running_mean"), bn.mean.copy()?);
            out.insert(format!("{base}.running_var"), bn.var.copy()?);
        }
        Ok(out)
    }

    /// Load tensors saved by [`Net::state`]. Missing names or shape mismatches are errors.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |name: &str, like: &Tensor| -> Result<Tensor> {
            let t = state.get(name).ok_or_else(|| NnError::Config {
                field: "state",
                msg: format!("tensor `{name}` is missing from the saved state"),
            })?;
            if t.dims() != like.dims() {
                return Err(NnError::Config {
                    field: "state",
                    msg: format!(
                        "tensor `{name}` has shape {:?}, the model expects {:?}",
                        t.dims(),
                        like.dims()
                    ),
                });
            }
            Ok(t.to_dtype(like.dtype())?)
        };
        for p in &self.params {
            let t = get(&p.name, p.var.as_tensor())?;
            p.var.set(&t)?;
        }
        for i in 0..self.bns.len() {
            let base = self.params[self.bns[i].gamma]
                .name
                .trim_end_matches(".weight")
                .to_string();
            self.bns[i].mean = get(&format!("{base}.running_mean"), &self.bns[i].mean)?;
            self.bns[i].var = get(&format!("{base}.running_var"), &self.bns[i].var)?;
        }
        Ok(())
    }

    /// Masks of the prunable tensors by parameter name.
    pub fn masks(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .filter_map(|p| p.mask.as_ref().map(|m| (p.name.clone(), m.clone())))
            .collect()
    }

    /// Replace masks (by name) and zero the pruned weights.
    pub fn set_masks(&mut self, masks: &HashMap<String, Tensor>) -> Result<()> {
        for p in &mut self.params {
            if let Some(m) = &mut p.mask {
                let new = masks.get(&p.name).ok_or_else(|| NnError::Config {
                    field: "masks",
                    msg: format!("mask `{}` is missing", p.name),
                })?;
                if new.dims() != m.dims() {
                    return Err(NnError::Config {
                        field: "masks",
                        msg: format!(
                            "mask `{}` has shape {:?}, expected {:?}",
                            p.name,
                            new.dims(),
                            m.dims()
                        ),
                    });
                }
                *m = new.to_dtype(m.dtype())?;
            }
        }
        self.apply_masks()
    }

    /// A copy of this network in another dtype (same weights, masks and running statistics).
    pub fn to_dtype(&self, dtype: DType) -> Result<Net> {
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            params.push(Param {
                name: p.name.clone(),
                // `copy` so the new net never shares storage with this one (the optimiser and
                // `Var::set` write in place).
                var: Var::from_tensor(&p.var.as_tensor().to_dtype(dtype)?.copy()?)?,
                mask: match &p.mask {
                    Some(m) => Some(m.to_dtype(dtype)?),
                    None => None,
                },
            });
        }
        let mut bns = Vec::with_capacity(self.bns.len());
        for b in &self.bns {
            bns.push(BnState {
                gamma: b.gamma,
                beta: b.beta,
                mean: b.mean.to_dtype(dtype)?,
                var: b.var.to_dtype(dtype)?,
            });
        }
        Ok(Net {
            arch: self.arch,
            input: self.input,
            params,
            bns,
            ops: self.ops.clone(),
            relu_names: self.relu_names.clone(),
            bn_momentum: self.bn_momentum,
            bn_eps: self.bn_eps,
        })
    }
}

/// LeNet-5: 5×5 conv 6 (padding 2), pool, 5×5 conv 16, pool, 120, 84, classes.
fn lenet5_ops(b: &mut Builder, arch: Arch, input: InputSpec) -> Result<Vec<Op>> {
    let InputSpec {
        channels: c,
        height: h,
        width: w,
        classes,
    } = input;
    let mut ops = Vec::new();
    // conv1 keeps the size (padding 2), conv2 shrinks it by 4, each pool halves it.
    let hh = (h / 2).saturating_sub(4) / 2;
    let ww = (w / 2).saturating_sub(4) / 2;
    if hh == 0 || ww == 0 {
        return Err(NnError::Config {
            field: "input",
            msg: format!("{h}×{w} input is too small for {arch} (at least 12×12)"),
        });
    }
    ops.push(b.conv("conv1", c, 6, 5, 1, 2, true)?);
    ops.push(b.relu("relu1"));
    ops.push(Op::MaxPool(2));
    ops.push(b.conv("conv2", 6, 16, 5, 1, 0, true)?);
    ops.push(b.relu("relu2"));
    ops.push(Op::MaxPool(2));
    ops.push(Op::Flatten);
    ops.push(b.linear("fc1", 16 * hh * ww, 120)?);
    ops.push(b.relu("relu_fc1"));
    ops.push(b.linear("fc2", 120, 84)?);
    ops.push(b.relu("relu_fc2"));
    ops.push(b.linear("fc3", 84, classes)?);
    Ok(ops)
}

/// Conv-2/4/6 (Frankle & Carbin): pairs of 3×3 convs (64, 128, 256) with a 2×2 max pool after
/// each pair, then 256, 256, classes.
fn conv_ops(b: &mut Builder, arch: Arch, input: InputSpec) -> Result<Vec<Op>> {
    let InputSpec {
        channels: c,
        height: h,
        width: w,
        classes,
    } = input;
    let mut ops = Vec::new();
    let pairs = match arch {
        Arch::Conv2 => 1,
        Arch::Conv4 => 2,
        _ => 3,
    };
    let (mut cin, mut hh, mut ww) = (c, h, w);
    let mut li = 0;
    for p in 0..pairs {
        let cout = 64 << p;
        for _ in 0..2 {
            li += 1;
            ops.push(b.conv(&format!("conv{li}"), cin, cout, 3, 1, 1, true)?);
            ops.push(b.relu(&format!("relu{li}")));
            cin = cout;
        }
        ops.push(Op::MaxPool(2));
        hh /= 2;
        ww /= 2;
    }
    if hh == 0 || ww == 0 {
        return Err(NnError::Config {
            field: "input",
            msg: format!("{h}×{w} input is too small for {arch}"),
        });
    }
    ops.push(Op::Flatten);
    ops.push(b.linear("fc1", cin * hh * ww, 256)?);
    ops.push(b.relu("relu_fc1"));
    ops.push(b.linear("fc2", 256, 256)?);
    ops.push(b.relu("relu_fc2"));
    ops.push(b.linear("fc3", 256, classes)?);
    Ok(ops)
}

/// ResNet-20: a 3×3 stem, three stages of three basic blocks (16, 32, 64 channels, stride 2 at
/// each later stage's first block, 1×1 projection shortcuts), global average pool, classes.
fn resnet20_ops(b: &mut Builder, input: InputSpec) -> Result<Vec<Op>> {
    let InputSpec {
        channels: c,
        classes,
        ..
    } = input;
    let mut ops = Vec::new();
    ops.push(b.conv("conv", c, 16, 3, 1, 1, false)?);
    ops.push(b.bn("bn", 16)?);
    ops.push(b.relu("relu"));
    let mut cin = 16;
    for (s, &cout) in [16usize, 32, 64].iter().enumerate() {
        for blk in 0..3 {
            let stride = if s > 0 && blk == 0 { 2 } else { 1 };
            let p = format!("stage{}.block{}", s + 1, blk);
            let main = vec![
                b.conv(&format!("{p}.conv1"), cin, cout, 3, stride, 1, false)?,
                b.bn(&format!("{p}.bn1"), cout)?,
                b.relu(&format!("{p}.relu1")),
                b.conv(&format!("{p}.conv2"), cout, cout, 3, 1, 1, false)?,
                b.bn(&format!("{p}.bn2"), cout)?,
            ];
            let shortcut = if stride != 1 || cin != cout {
                vec![
                    b.conv(&format!("{p}.shortcut"), cin, cout, 1, stride, 0, false)?,
                    b.bn(&format!("{p}.shortcut_bn"), cout)?,
                ]
            } else {
                Vec::new()
            };
            b.relus.push(format!("{p}.relu2"));
            let relu = b.relus.len() - 1;
            ops.push(Op::Residual {
                main,
                shortcut,
                relu,
            });
            cin = cout;
        }
    }
    ops.push(Op::GlobalAvgPool);
    ops.push(b.linear("fc", 64, classes)?);
    Ok(ops)
}

/// VGG-11/16/19 with batch norm: 3×3 convs per `vgg_cfg`, global average pool, classes.
fn vgg_ops(b: &mut Builder, arch: Arch, input: InputSpec) -> Result<Vec<Op>> {
    let InputSpec {
        channels: c,
        classes,
        ..
    } = input;
    let mut ops = Vec::new();
    let mut cin = c;
    let mut li = 0;
    for &v in vgg_cfg(arch) {
        if v == 0 {
            ops.push(Op::MaxPool(2));
            continue;
        }
        li += 1;
        ops.push(b.conv(&format!("conv{li}"), cin, v, 3, 1, 1, false)?);
        ops.push(b.bn(&format!("bn{li}"), v)?);
        ops.push(b.relu(&format!("relu{li}")));
        cin = v;
    }
    ops.push(Op::GlobalAvgPool);
    ops.push(b.linear("fc", 512, classes)?);
    Ok(ops)
}

fn mlp_ops(b: &mut Builder, fan_in: usize, hidden: &[usize], classes: usize) -> Result<Vec<Op>> {
    let mut ops = vec![Op::Flatten];
    let mut cin = fan_in;
    for (i, &h) in hidden.iter().enumerate() {
        ops.push(b.linear(&format!("fc{}", i + 1), cin, h)?);
        ops.push(b.relu(&format!("relu{}", i + 1)));
        cin = h;
    }
    ops.push(b.linear(&format!("fc{}", hidden.len() + 1), cin, classes)?);
    Ok(ops)
}

struct Ctx<'a, 'p> {
    params: &'a [Param],
    bns: &'a mut [BnState],
    mode: Mode,
    probe: Option<&'p mut dyn ReluProbe>,
    momentum: f64,
    eps: f64,
}

fn run_ops(ops: &[Op], mut x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    for op in ops {
        x = match op {
            Op::Flatten => x.flatten_from(1)?,
            Op::Linear { w, b } => layers::linear(
                &x,
                ctx.params[*w].var.as_tensor(),
                b.map(|b| ctx.params[b].var.as_tensor()),
            )?,
            Op::Conv { w, b, stride, pad } => layers::conv2d(
                &x,
                ctx.params[*w].var.as_tensor(),
                b.map(|b| ctx.params[b].var.as_tensor()),
                *stride,
                *pad,
            )?,
            Op::Bn(i) => {
                let bn = &mut ctx.bns[*i];
                let gamma = ctx.params[bn.gamma].var.as_tensor();
                let beta = ctx.params[bn.beta].var.as_tensor();
                match ctx.mode {
                    Mode::Train => {
                        let (y, st) = layers::batch_norm_train(&x, gamma, beta, ctx.eps)?;
                        // Running variance uses the unbiased estimate, as PyTorch does.
                        let n = (x.elem_count() / gamma.dim(0)?) as f64;
                        let unbiased = if n > 1.0 {
                            (st.var * (n / (n - 1.0)))?
                        } else {
                            st.var
                        };
                        let m = ctx.momentum;
                        bn.mean = ((&bn.mean * (1.0 - m))? + (st.mean * m)?)?;
                        bn.var = ((&bn.var * (1.0 - m))? + (unbiased * m)?)?;
                        y
                    }
                    Mode::Eval => {
                        layers::batch_norm_eval(&x, gamma, beta, &bn.mean, &bn.var, ctx.eps)?
                    }
                }
            }
            Op::Relu(i) => relu_probe(&x, *i, ctx)?,
            Op::MaxPool(k) => layers::max_pool(&x, *k)?,
            Op::GlobalAvgPool => layers::global_avg_pool(&x)?,
            Op::Residual {
                main,
                shortcut,
                relu,
            } => {
                let y = run_ops(main, x.clone(), ctx)?;
                let s = if shortcut.is_empty() {
                    x
                } else {
                    run_ops(shortcut, x, ctx)?
                };
                relu_probe(&(y + s)?, *relu, ctx)?
            }
        };
    }
    Ok(x)
}

/// ReLU with derivative 0 at 0 (PyTorch's convention and the fused engine's; candle's own
/// `relu` passes the gradient at exactly 0, which matters once pruning zeroes whole windows).
/// Negative inputs give −0.0, which counts as dead (`== 0`).
fn relu_probe(x: &Tensor, index: usize, ctx: &mut Ctx) -> Result<Tensor> {
    let y = (x * x.gt(0.0)?.to_dtype(x.dtype())?)?;
    if let Some(p) = ctx.probe.as_deref_mut() {
        p.observe(index, &y)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(c: usize, hw: usize) -> InputSpec {
        InputSpec {
            channels: c,
            height: hw,
            width: hw,
            classes: 10,
        }
    }

    #[test]
    fn every_arch_builds_and_runs() {
        let cases = [
            (Arch::Lenet300100, spec(1, 28), 266_200usize),
            (
                Arch::Lenet5,
                spec(1, 28),
                150 + 2400 + 48_000 + 10_080 + 840,
            ),
            (
                Arch::Lenet5,
                spec(3, 32),
                450 + 2400 + 69_120 + 10_080 + 840,
            ),
            (Arch::Conv2, spec(3, 32), 0),
            (Arch::Conv4, spec(1, 28), 0),
            (Arch::Conv6, spec(3, 32), 0),
            (Arch::Resnet20, spec(3, 32), 0),
            (Arch::Vgg11, spec(3, 32), 0),
        ];
        for (arch, input, prunable_count) in cases {
            let mut net = Net::new(arch, input, 0, DType::F32).unwrap();
            let x = Tensor::zeros(
                (2, input.channels, input.height, input.width),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            let y = net.forward(&x, Mode::Train, None).unwrap();
            assert_eq!(y.dims(), &[2, 10], "{arch}");
            let y = net.forward(&x, Mode::Eval, None).unwrap();
            assert_eq!(y.dims(), &[2, 10], "{arch}");
            if prunable_count > 0 {
                let n: usize = net
                    .prunable()
                    .iter()
                    .map(|&i| net.params[i].var.as_tensor().elem_count())
                    .sum();
                assert_eq!(n, prunable_count);
            }
        }
    }

    #[test]
    fn resnet20_has_the_expected_size() {
        let net = Net::new(Arch::Resnet20, spec(3, 32), 0, DType::F32).unwrap();
        let n: usize = net
            .params
            .iter()
            .map(|p| p.var.as_tensor().elem_count())
            .sum();
        // ≈0.27 M parameters (He et al.); 1×1 conv shortcuts add a few thousand.
        assert!((270_000..=280_000).contains(&n), "{n}");
        // 19 ReLUs: the stem and two per block.
        assert_eq!(net.relu_names().len(), 19);
    }

    #[test]
    fn wrong_input_shape_is_an_error() {
        let mut net = Net::new(Arch::Lenet300100, spec(1, 28), 0, DType::F32).unwrap();
        let x = Tensor::zeros((2, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            net.forward(&x, Mode::Eval, None),
            Err(NnError::InputShape { .. })
        ));
    }

    #[test]
    fn state_round_trips() {
        let a = Net::new(Arch::Resnet20, spec(3, 8), 1, DType::F32).unwrap();
        let mut b = Net::new(Arch::Resnet20, spec(3, 8), 2, DType::F32).unwrap();
        b.load_state(&a.state().unwrap()).unwrap();
        let sa = a.state().unwrap();
        let sb = b.state().unwrap();
        for (k, v) in &sa {
            let d = (v - &sb[k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
    }
}
