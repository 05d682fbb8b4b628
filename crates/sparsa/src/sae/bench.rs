//! What `sparsa bench sae` times: the encoder product alone (f32 through gemm, through candle,
//! and in bf16 as the fast step runs it) and whole training steps of the fast and reference
//! paths, on one synthetic batch reused for every step. The CLI chooses the grid and prints;
//! nothing here asserts a time.

use super::config::{Architecture, AuxKind, Matmul, RunConfig};
use super::fast::Phases;
use super::train::{StepMetrics, Trainer};
use super::SaeError;
use crate::data::activations::BatchSource;
use crate::data::synthetic::{SyntheticConfig, SyntheticSource};
use crate::kernels::aligned::Aligned;
use crate::kernels::bf16::{Bf16Gemm, Bf16Kernel};
use crate::kernels::matmul;
use crate::util::bench::{median, time_median};
use std::time::Instant;

/// The problem size: d_in, d_sae, tokens per batch, k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub d: usize,
    pub f: usize,
    pub b: usize,
    pub k: usize,
}

impl Shape {
    /// Floating-point operations of the encoder product (2·B·d·F).
    pub fn product_flops(&self) -> f64 {
        2.0 * self.b as f64 * self.d as f64 * self.f as f64
    }
}

/// The training configuration the benchmark times: synthetic data of width d, one warm-up
/// step, dead-feature and density windows of one and ten batches, the given architecture,
/// auxiliary loss and encoder precision, on the fast path or (`reference`) the reference one.
/// Errors name the impossible setting (k > d_sae, …).
pub fn config(
    s: Shape,
    arch: Architecture,
    aux: AuxKind,
    matmul: Matmul,
    reference: bool,
) -> Result<RunConfig, SaeError> {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = {f}
k = {k}
[aux]
kind = "{aux}"
dead_tokens = {b}
density_window_tokens = {dw}
[train]
batch_size = {b}
steps = 1000000
warmup_steps = 1
seed = 0
init_sample = {b}
reference = {reference}
matmul = "{matmul}"
[data.synthetic]
d = {d}
n_features = {nf}
seed = 1
"#,
        arch = arch.name(),
        aux = aux.name(),
        matmul = matmul.name(),
        f = s.f,
        k = s.k,
        b = s.b,
        d = s.d,
        dw = 10 * s.b,
        nf = 4 * s.d,
    );
    RunConfig::from_toml(&text, &[], "bench config")
}

/// One synthetic batch (B × d) and a deterministic weight matrix (F × d) for the product
/// timings.
pub fn inputs(s: Shape) -> Result<(Vec<f32>, Vec<f32>), SaeError> {
    let mut src = SyntheticSource::new(SyntheticConfig::new(s.d, 4 * s.d, 1))?;
    let mut data = vec![0f32; s.b * s.d];
    src.next_batch(&mut data)?;
    let w = (0..s.f * s.d)
        .map(|i| ((i as f32) * 0.618).fract() - 0.5)
        .collect();
    Ok((data, w))
}

/// An output for the product on whole cache lines, as the fast step's pre-activations.
fn product_output(s: Shape) -> Aligned<f32> {
    let mut c = Aligned::default();
    c.resize(s.b * s.f);
    c
}

/// Median seconds of X·Wᵀ in f32 through gemm into a reused output (after one warm-up).
pub fn time_product(s: Shape, data: &[f32], w: &[f32], reps: usize) -> f64 {
    let mut c = product_output(s);
    matmul::matmul_abt(data, w, &mut c, s.b, s.f, s.d);
    let t = time_median::<()>(reps, || {
        matmul::matmul_abt(data, w, &mut c, s.b, s.f, s.d);
        Ok(())
    });
    t.unwrap_or(f64::NAN)
}

/// Median seconds of the same product through candle's `Tensor::matmul` (a fresh output each
/// call, as candle allocates).
pub fn time_product_candle(
    s: Shape,
    data: &[f32],
    w: &[f32],
    reps: usize,
) -> Result<f64, SaeError> {
    let mut c = vec![0f32; s.b * s.f];
    Ok(time_median(reps, || {
        matmul::matmul_abt_candle(data, w, &mut c, s.b, s.f, s.d)
    })?)
}

/// Median seconds of the bf16 product as the fast step runs it: round and pack X and W, then
/// the product with + b_enc and ReLU fused (after one warm-up). `None` when the CPU cannot run
/// `kernel`.
pub fn time_product_bf16(
    s: Shape,
    data: &[f32],
    w: &[f32],
    kernel: Bf16Kernel,
    reps: usize,
) -> Option<f64> {
    let mut c = product_output(s);
    let bias = vec![0.01f32; s.f];
    let mut g = Bf16Gemm::new(kernel)?;
    let mut run = || -> Result<(), ()> {
        g.pack_b(w, s.f, s.d);
        g.pack_a(data, s.b, s.d);
        g.product(&mut c, Some(&bias), true);
        Ok(())
    };
    run().ok()?;
    time_median(reps, run).ok()
}

/// One timed run of the fast step.
#[derive(Debug, Clone)]
pub struct FastRun {
    /// The encoder product the step ran (`Trainer::encoder_product`: `f32` or `bf16 (kernel)`).
    pub matmul: String,
    /// Median step, seconds.
    pub step: f64,
    /// Every timed step, seconds, in order.
    pub steps: Vec<f64>,
    /// The last timed step's metrics (whether the auxiliary loss was active, …).
    pub metrics: StepMetrics,
    /// Phase times, each the median of its timed steps (so a phase's figure and the step's
    /// median need not come from the same step).
    pub phases: Phases,
    /// Matched pairs of the last step: (main, auxiliary).
    pub matches: (usize, usize),
    /// Whether the last step ran the auxiliary loss as dense products.
    pub aux_dense: bool,
}

/// Two warm-up steps of a trainer built from `cfg` on `data` (B × d, copied afresh for every
/// step), then the median of `steps` (at least one). `aux_dense_above` overrides the switch to
/// the dense auxiliary products ([`crate::sae::fast::AUX_DENSE_ABOVE`]).
pub fn time_fast_run(
    cfg: RunConfig,
    data: &[f32],
    d: usize,
    steps: usize,
    aux_dense_above: Option<f64>,
) -> Result<FastRun, SaeError> {
    let mut t = Trainer::new(cfg, d, data)?;
    if let Some(x) = aux_dense_above {
        t.set_aux_dense_above(x);
    }
    let mut x = vec![0f32; data.len()];
    let mut ts = Vec::new();
    let mut phases = Vec::new();
    let mut last = None;
    for s in 0..2 + steps.max(1) {
        x.copy_from_slice(data);
        let t0 = Instant::now();
        let m = t.step(&mut x)?;
        if s >= 2 {
            ts.push(t0.elapsed().as_secs_f64());
            phases.push(t.fast_phases());
        }
        last = Some(m);
    }
    Ok(FastRun {
        matmul: t.encoder_product(),
        step: median(ts.clone()),
        steps: ts,
        metrics: last.expect("at least one step ran"),
        phases: median_phases(&phases),
        matches: t.fast_matches(),
        aux_dense: t.fast_aux_dense(),
    })
}

/// Each phase's median over `all` (the upper one of an even count, as [`median`]).
fn median_phases(all: &[Phases]) -> Phases {
    let m = |f: fn(&Phases) -> f64| median(all.iter().map(f).collect());
    Phases {
        encode: m(|p| p.encode),
        matmul: m(|p| p.matmul),
        select: m(|p| p.select),
        decode: m(|p| p.decode),
        backward: m(|p| p.backward),
        adam: m(|p| p.adam),
        aux_products: m(|p| p.aux_products),
    }
}

/// Median seconds of `reps` steps of a trainer built from `cfg` (the reference path when
/// `cfg.train.reference`).
pub fn time_steps(cfg: RunConfig, data: &[f32], d: usize, reps: usize) -> Result<f64, SaeError> {
    let mut t = Trainer::new(cfg, d, data)?;
    let mut x = vec![0f32; data.len()];
    time_median(reps, || {
        x.copy_from_slice(data);
        t.step(&mut x).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_grid_runs_and_names_impossible_sizes() {
        let s = Shape {
            d: 16,
            f: 64,
            b: 32,
            k: 4,
        };
        let (data, w) = inputs(s).unwrap();
        assert!(time_product(s, &data, &w, 1) >= 0.0);
        assert!(time_product_candle(s, &data, &w, 1).unwrap() >= 0.0);
        for arch in [Architecture::TopK, Architecture::FeatureChoice] {
            let cfg = config(s, arch, AuxKind::AuxK, Matmul::F32, false).unwrap();
            let run = time_fast_run(cfg, &data, s.d, 1, None).unwrap();
            assert_eq!(run.matmul, "f32");
            assert!(run.step > 0.0 && run.matches.0 > 0);
            // The products are part of decode and backward (medians of the same steps: with
            // one timed step, of that step).
            let ph = run.phases;
            assert!(ph.aux_products >= 0.0 && ph.aux_products <= ph.decode + ph.backward);
            assert_eq!(ph.aux_products > 0.0, run.aux_dense, "{ph:?}");
            let cfg = config(s, arch, AuxKind::None, Matmul::F32, true).unwrap();
            assert!(time_steps(cfg, &data, s.d, 1).unwrap() > 0.0);
        }
        let big_k = Shape { k: 65, ..s };
        let e = config(big_k, Architecture::TopK, AuxKind::None, Matmul::F32, false);
        assert!(e.unwrap_err().to_string().contains("sae.k"));
    }
}
