//! `sparsa bench …`: performance figures (a command, not a test: nothing here asserts a time).
//! One place for every benchmark: `bench sae`, `bench lm`, `bench prune` (the last two run the
//! code of `lm` and `prune`; `sparsa lm bench` and `sparsa prune bench` remain as hidden aliases).
//!
//! `sparsa bench sae` prints one JSON line per (size, architecture, auxiliary loss, encoder
//! precision): the encoder product alone in f32 and in bf16 with their shares of the measured
//! f32 FMA and bf16 product peaks, the full fast step, step / f32 product, the reference step,
//! and peak RSS — all measured in the same run, so the ratios are comparable even on a busy
//! machine — then a summary table of the ratios.

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use sparsa::data::activations::BatchSource;
use sparsa::data::synthetic::{SyntheticConfig, SyntheticSource};
use sparsa::kernels::bf16::{Bf16Gemm, Bf16Kernel};
use sparsa::kernels::{matmul, peak};
use sparsa::sae::config::{Matmul, RunConfig};
use sparsa::sae::fast::Phases;
use sparsa::sae::train::{StepMetrics, Trainer};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// SAE training step: encoder matmul vs full fast step vs reference step, per architecture
    /// and auxiliary loss. One JSON line per configuration on stdout; progress on stderr.
    Sae(SaeBenchArgs),
    /// Language-model forward speed (tokens/s) on corpus text, full model and up to a hook.
    Lm(super::lm::BenchArgs),
    /// Image classifiers: training and evaluation images/s and peak RSS per model and global
    /// magnitude sparsity, on random inputs of the model's usual shape (28×28×1 for LeNet and
    /// Conv-2/4/6, 32×32×3 for ResNet and VGG). One JSON line per row, then a table; compare
    /// with `bench/torch_cnn.py` run alternately in the same sitting.
    Prune(super::prune::BenchArgs),
}

#[derive(Args, Debug)]
pub struct SaeBenchArgs {
    /// Sizes as D_INxD_SAE, comma separated (default: 768x24576 and SmolLM2's 576x9216).
    #[arg(long, value_delimiter = ',', default_value = "768x24576,576x9216")]
    sizes: Vec<String>,
    /// Tokens per batch B.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// k (TopK per token; k·B total budget for Mutual and Feature Choice).
    #[arg(short, long, default_value_t = 32)]
    k: usize,
    /// Architectures to time (comma separated).
    #[arg(
        long = "arch",
        alias = "archs",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(
            ["topk", "mutual_choice", "batch_topk", "feature_choice"]
        ),
        default_value = "topk,mutual_choice,feature_choice"
    )]
    archs: Vec<String>,
    /// Auxiliary losses to time (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(["none", "aux_k", "aux_zipf"]),
        default_value = "none,aux_k,aux_zipf"
    )]
    aux: Vec<String>,
    /// Timed fast steps per configuration (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Timed encoder products (the median is reported).
    #[arg(long, default_value_t = 3)]
    matmul_reps: usize,
    /// Timed reference steps per architecture (aux none; 0 = skip the reference path).
    #[arg(long, default_value_t = 1)]
    reference_steps: usize,
    /// Encoder-product precisions to time the step with (comma separated; `train.matmul`).
    /// bf16 needs AMX-BF16 or AVX512-BF16 (`SPARSA_BF16_KERNEL` picks one); without either
    /// it is reported as unavailable and skipped.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(["f32", "bf16"]),
        default_value = "f32,bf16"
    )]
    matmul: Vec<String>,
}

/// One output line.
#[derive(Debug, Serialize)]
struct Line {
    d: usize,
    f: usize,
    b: usize,
    k: usize,
    arch: String,
    aux: String,
    /// The step's encoder product: `f32` or `bf16 (<kernel>)`.
    matmul: String,
    threads: usize,
    fma_isa: &'static str,
    fma_peak_gflops: f64,
    matmul_impl: &'static str,
    /// Encoder product X·W_encᵀ alone in f32 (gemm into a reused buffer), median seconds.
    matmul_s: f64,
    matmul_gflops: f64,
    matmul_share_of_peak: f64,
    /// The same product through candle's Tensor::matmul (fresh output each call), median.
    matmul_candle_s: f64,
    /// The bf16 product as the step runs it (round and pack both operands, product with
    /// + b_enc and ReLU fused), median seconds; null without a bf16 kernel.
    matmul_bf16_s: Option<f64>,
    matmul_bf16_gflops: Option<f64>,
    /// The bf16 product's kernel and its measured instruction peak over all threads.
    bf16_kernel: Option<&'static str>,
    bf16_peak_gflops: Option<f64>,
    matmul_bf16_share_of_bf16_peak: Option<f64>,
    /// bf16 product / f32 product.
    matmul_bf16_over_f32: Option<f64>,
    /// Full fast training step (Trainer::step), median seconds.
    step_s: f64,
    /// step_s / the f32 product (matmul_s), whatever the step's own precision.
    step_over_matmul: f64,
    /// step_s / the same architecture's and precision's step without an auxiliary loss.
    step_over_no_aux: Option<f64>,
    /// Whether the auxiliary loss ran in the timed steps.
    aux_active: bool,
    /// Matched pairs per step (main + auxiliary).
    matches_main: usize,
    matches_aux: usize,
    /// Phase times of the last timed step.
    phases: Phases,
    /// (Sum of the phases) / (the encoder product inside that same step, in its precision):
    /// the step/matmul
    /// ratio with both measured back to back, less exposed to load from other processes than
    /// step_over_matmul (whose two figures are seconds apart).
    step_over_matmul_same_step: f64,
    /// Reference step (dense autograd) of this architecture, aux none; null if not measured.
    reference_step_s: Option<f64>,
    reference_over_fast: Option<f64>,
    /// Peak resident set (VmHWM) of the fast path for this size, MB (reset per size when the
    /// kernel allows it).
    peak_rss_mb: Option<f64>,
    /// VmHWM after the reference steps too.
    peak_rss_with_reference_mb: Option<f64>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Sae(a) => sae(a),
        BenchCommand::Lm(a) => super::lm::bench(&a),
        BenchCommand::Prune(a) => super::prune::bench(a),
    }
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (d, f) = s
        .split_once('x')
        .with_context(|| format!("--sizes entry `{s}`: expected D_INxD_SAE, e.g. 768x24576"))?;
    let d: usize = d
        .trim()
        .parse()
        .with_context(|| format!("--sizes entry `{s}`: bad d_in"))?;
    let f: usize = f
        .trim()
        .parse()
        .with_context(|| format!("--sizes entry `{s}`: bad d_sae"))?;
    if d == 0 || f == 0 {
        return Err(ui::Usage(format!("--sizes entry `{s}`: sizes must be positive")).into());
    }
    Ok((d, f))
}

/// VmHWM of this process in MB, if /proc is readable.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs).
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

fn run_config(
    d: usize,
    f: usize,
    a: &SaeBenchArgs,
    arch: &str,
    aux: &str,
    reference: bool,
) -> Result<RunConfig> {
    let b = a.batch;
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
[data.synthetic]
d = {d}
n_features = {nf}
seed = 1
"#,
        k = a.k,
        dw = 10 * b,
        nf = 4 * d,
    );
    Ok(RunConfig::from_toml(&text, &[], "bench config")?)
}

/// The bf16 kernel the bench uses (`None` with a note when there is none or bf16 is not asked
/// for), and its measured instruction peak.
fn bf16_setup(a: &SaeBenchArgs) -> Result<Option<(Bf16Kernel, peak::Bf16Peak)>> {
    if !a.matmul.iter().any(|m| m == "bf16") {
        return Ok(None);
    }
    let Some(kernel) = Bf16Kernel::from_env().map_err(ui::Usage)? else {
        eprintln!(
            "bf16: no AMX-BF16 or AVX512-BF16 kernel here (or SPARSA_BF16_KERNEL=none): skipped"
        );
        return Ok(None);
    };
    let pk = peak::measure_bf16(kernel, 200_000, 3).context("bf16 peak")?;
    eprintln!(
        "bf16 product peak: {:.1} GFLOP/s ({})",
        pk.gflops,
        kernel.name()
    );
    Ok(Some((kernel, pk)))
}

/// The f32 and bf16 encoder products of one size, median seconds.
struct Products {
    f32_s: f64,
    candle_s: f64,
    bf16_s: Option<f64>,
}

fn sae(a: SaeBenchArgs) -> Result<()> {
    let sizes: Vec<(usize, usize)> = a
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_>>()?;
    if a.batch == 0 {
        return Err(ui::Usage("--batch must be at least 1".to_string()).into());
    }
    let threads = rayon::current_num_threads();
    eprintln!("measuring the FMA peak on {threads} threads…");
    let pk = peak::measure(20_000_000, 3);
    eprintln!("FMA peak: {:.1} GFLOP/s ({})", pk.gflops, pk.isa.name());
    let bf16 = bf16_setup(&a)?;
    let b = a.batch;
    let mut lines = Vec::new();
    for (d, f) in sizes {
        reset_peak_rss();
        // Data: one synthetic batch, reused (copied) for every step.
        let mut src = SyntheticSource::new(SyntheticConfig::new(d, 4 * d, 1))?;
        let mut data = vec![0f32; b * d];
        src.next_batch(&mut data)?;
        let w: Vec<f32> = (0..f * d)
            .map(|i| ((i as f32) * 0.618).fract() - 0.5)
            .collect();
        eprintln!("{d}x{f}: timing the encoder product ({b}×{d} · {d}×{f})…");
        let f32_s = time_product(&a, &data, &w, f, d, false)?;
        let bf16_s = match bf16 {
            Some((kernel, _)) => Some(time_product_bf16(&a, &data, &w, f, d, kernel)?),
            None => None,
        };
        let fast = time_fast_steps(&a, &data, d, f, f32_s, bf16.is_some())?;
        let rss_fast = peak_rss_mb();
        // candle's product (allocates its own output each call).
        let candle_s = time_product(&a, &data, &w, f, d, true)?;
        drop(w);
        let refs = time_reference_steps(&a, &data, d, f)?;
        let rss_all = peak_rss_mb();
        let products = Products {
            f32_s,
            candle_s,
            bf16_s,
        };
        let rss = (rss_fast, rss_all);
        for run in &fast {
            let line = line(&a, (d, f), run, &fast, &products, (pk, bf16), &refs, rss);
            println!("{}", serde_json::to_string(&line)?);
            lines.push(line);
        }
    }
    print_summary(&lines);
    Ok(())
}

/// One output line from a timed fast run and the figures of its size.
#[allow(clippy::too_many_arguments)] // one line's inputs, all measured by the caller
fn line(
    a: &SaeBenchArgs,
    (d, f): (usize, usize),
    run: &FastRun,
    all: &[FastRun],
    products: &Products,
    (pk, bf16): (peak::FmaPeak, Option<(Bf16Kernel, peak::Bf16Peak)>),
    refs: &std::collections::HashMap<String, f64>,
    (rss_fast, rss_all): (Option<f64>, Option<f64>),
) -> Line {
    let b = a.batch;
    let flops = 2.0 * b as f64 * d as f64 * f as f64;
    let reference = refs
        .get(&run.arch)
        .copied()
        .filter(|_| run.aux == "none" && run.matmul == "f32");
    let no_aux = all
        .iter()
        .find(|r| r.arch == run.arch && r.matmul == run.matmul && r.aux == "none")
        .map(|r| run.step / r.step);
    let bf16_gflops = products.bf16_s.map(|s| flops / s / 1e9);
    let ph = run.phases;
    Line {
        d,
        f,
        b,
        k: a.k,
        aux_active: run.metrics.aux_loss != 0.0,
        arch: run.arch.clone(),
        aux: run.aux.clone(),
        matmul: run.matmul.clone(),
        threads: pk.threads,
        fma_isa: pk.isa.name(),
        fma_peak_gflops: pk.gflops,
        matmul_impl: "gemm",
        matmul_s: products.f32_s,
        matmul_gflops: flops / products.f32_s / 1e9,
        matmul_share_of_peak: flops / products.f32_s / 1e9 / pk.gflops,
        matmul_candle_s: products.candle_s,
        matmul_bf16_s: products.bf16_s,
        matmul_bf16_gflops: bf16_gflops,
        bf16_kernel: bf16.map(|(k, _)| k.name()),
        bf16_peak_gflops: bf16.map(|(_, p)| p.gflops),
        matmul_bf16_share_of_bf16_peak: bf16_gflops.zip(bf16).map(|(g, (_, p))| g / p.gflops),
        matmul_bf16_over_f32: products.bf16_s.map(|s| s / products.f32_s),
        step_s: run.step,
        step_over_matmul: run.step / products.f32_s,
        step_over_no_aux: no_aux,
        matches_main: run.matches.0,
        matches_aux: run.matches.1,
        phases: ph,
        step_over_matmul_same_step: (ph.encode + ph.select + ph.decode + ph.backward + ph.adam)
            / ph.matmul,
        reference_step_s: reference,
        reference_over_fast: reference.map(|r| r / run.step),
        peak_rss_mb: rss_fast,
        peak_rss_with_reference_mb: rss_all,
    }
}

/// The ratios the targets are stated in, one row per line.
fn print_summary(lines: &[Line]) {
    let mut sizes: Vec<(usize, usize)> = lines.iter().map(|l| (l.d, l.f)).collect();
    sizes.dedup();
    for (d, f) in sizes {
        let Some(first) = lines.iter().find(|l| (l.d, l.f) == (d, f)) else {
            continue;
        };
        println!();
        println!(
            "{d}×{f}, B {}: f32 product {:.3} s ({:.0} GFLOP/s, {:.0} % of the f32 FMA peak)",
            first.b,
            first.matmul_s,
            first.matmul_gflops,
            100.0 * first.matmul_share_of_peak
        );
        if let (Some(s), Some(g), Some(share), Some(k)) = (
            first.matmul_bf16_s,
            first.matmul_bf16_gflops,
            first.matmul_bf16_share_of_bf16_peak,
            first.bf16_kernel,
        ) {
            println!(
                "{d}×{f}: bf16 product {s:.3} s ({g:.0} GFLOP/s, {:.0} % of the {k} peak) = {:.2}× the f32 product",
                100.0 * share,
                s / first.matmul_s
            );
        }
        println!(
            "| arch | aux | matmul | step s | step / f32 product | step / no-aux step | aux active |"
        );
        println!("|---|---|---|---|---|---|---|");
        for l in lines.iter().filter(|l| (l.d, l.f) == (d, f)) {
            println!(
                "| {} | {} | {} | {:.3} | {:.2} | {} | {} |",
                l.arch,
                l.aux,
                l.matmul,
                l.step_s,
                l.step_over_matmul,
                l.step_over_no_aux
                    .map_or("–".to_string(), |r| format!("{r:.2}")),
                if l.aux == "none" {
                    "–"
                } else if l.aux_active {
                    "yes"
                } else {
                    "no"
                }
            );
        }
    }
}

/// Median seconds of the bf16 encoder product as the fast step runs it: round and pack X and
/// W, product with + b_enc and ReLU fused.
fn time_product_bf16(
    a: &SaeBenchArgs,
    data: &[f32],
    w: &[f32],
    f: usize,
    d: usize,
    kernel: Bf16Kernel,
) -> Result<f64> {
    let b = a.batch;
    let mut c = vec![0f32; b * f];
    let bias = vec![0.01f32; f];
    let mut g = Bf16Gemm::new(kernel).context("bf16 kernel not supported")?;
    let mut run = || {
        g.pack_b(w, f, d);
        g.pack_a(data, b, d);
        g.product(&mut c, Some(&bias), true);
        Ok(())
    };
    run()?;
    time(a.matmul_reps, run)
}

/// Median seconds of the encoder product X·Wᵀ (`data` b×d, `w` f×d): gemm into a reused
/// buffer, or (`candle`) candle's Tensor::matmul with a fresh output each call.
fn time_product(
    a: &SaeBenchArgs,
    data: &[f32],
    w: &[f32],
    f: usize,
    d: usize,
    candle: bool,
) -> Result<f64> {
    let b = a.batch;
    let mut c = vec![0f32; b * f];
    if candle {
        return time(a.matmul_reps, || {
            Ok(matmul::matmul_abt_candle(data, w, &mut c, b, f, d)?)
        });
    }
    matmul::matmul_abt(data, w, &mut c, b, f, d);
    time(a.matmul_reps, || {
        matmul::matmul_abt(data, w, &mut c, b, f, d);
        Ok(())
    })
}

/// One (architecture, aux) timing of the fast step.
struct FastRun {
    arch: String,
    aux: String,
    /// The step's encoder product (`Trainer::encoder_product`).
    matmul: String,
    /// Median step, seconds.
    step: f64,
    metrics: StepMetrics,
    phases: Phases,
    matches: (usize, usize),
}

/// The fast training step of every (architecture, precision, aux) triple: two warm-up steps,
/// then the median of `a.steps`. bf16 runs only when `bf16` (a kernel exists).
fn time_fast_steps(
    a: &SaeBenchArgs,
    data: &[f32],
    d: usize,
    f: usize,
    mm_gemm: f64,
    bf16: bool,
) -> Result<Vec<FastRun>> {
    let mut out = Vec::new();
    for arch in &a.archs {
        for matmul in a.matmul.iter().filter(|m| *m == "f32" || bf16) {
            for aux in &a.aux {
                let mut cfg = run_config(d, f, a, arch, aux, false)?;
                cfg.train.matmul = if matmul == "bf16" {
                    Matmul::Bf16
                } else {
                    Matmul::F32
                };
                let run = time_fast_run(a, cfg, data, d, (arch, aux))
                    .with_context(|| format!("{arch}+{aux} {matmul}"))?;
                eprintln!(
                    "{d}x{f} {arch}+{aux} {}: step {:.3} s ({:.2}× the f32 product) aux loss {:.3e}",
                    run.matmul,
                    run.step,
                    run.step / mm_gemm,
                    run.metrics.aux_loss
                );
                out.push(run);
            }
        }
    }
    Ok(out)
}

/// Two warm-up steps of a trainer built from `cfg`, then the median of `a.steps`.
fn time_fast_run(
    a: &SaeBenchArgs,
    cfg: RunConfig,
    data: &[f32],
    d: usize,
    (arch, aux): (&str, &str),
) -> Result<FastRun> {
    let mut t = Trainer::new(cfg, d, data)?;
    let mut x = vec![0f32; data.len()];
    let mut ts = Vec::new();
    let mut m_last = None;
    for s in 0..2 + a.steps {
        x.copy_from_slice(data);
        let t0 = Instant::now();
        let m = t.step(&mut x)?;
        let dt = t0.elapsed().as_secs_f64();
        if s >= 2 {
            ts.push(dt);
        }
        m_last = Some(m);
    }
    Ok(FastRun {
        arch: arch.to_string(),
        aux: aux.to_string(),
        matmul: t.encoder_product(),
        step: median(ts),
        metrics: m_last.context("no step ran")?,
        phases: t.fast_phases(),
        matches: t.fast_matches(),
    })
}

/// The reference (candle autograd) step per architecture, aux none; empty with
/// `--reference-steps 0`.
fn time_reference_steps(
    a: &SaeBenchArgs,
    data: &[f32],
    d: usize,
    f: usize,
) -> Result<std::collections::HashMap<String, f64>> {
    let mut refs = std::collections::HashMap::new();
    if a.reference_steps == 0 {
        return Ok(refs);
    }
    for arch in &a.archs {
        eprintln!("{d}x{f} {arch}: timing the reference step…");
        let cfg = run_config(d, f, a, arch, "none", true)?;
        let mut t = Trainer::new(cfg, d, data)?;
        let mut x = vec![0f32; data.len()];
        let r = time(a.reference_steps, || {
            x.copy_from_slice(data);
            t.step(&mut x)?;
            Ok(())
        })?;
        eprintln!("{d}x{f} {arch}: reference step {r:.3} s");
        refs.insert(arch.clone(), r);
    }
    Ok(refs)
}
