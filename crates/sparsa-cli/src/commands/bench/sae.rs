//! `sparsa bench sae` prints one JSON line per (size, architecture, auxiliary loss, encoder
//! precision): the encoder product alone in f32 and in bf16 with their shares of the measured
//! f32 FMA and bf16 product peaks, the full fast step, step / f32 product, the reference step,
//! and peak RSS — all measured in the same run, so the ratios are comparable even on a busy
//! machine — then a summary table of the ratios. The timings are `sparsa::sae::bench`.

use crate::ui;
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sparsa::kernels::bf16::Bf16Kernel;
use sparsa::kernels::peak;
use sparsa::sae::bench::{self as sb, FastRun, Shape};
use sparsa::sae::config::{Architecture, AuxKind, Matmul};
use sparsa::sae::fast::Phases;
use sparsa::util::bench::{median, peak_rss_mb, reset_peak_rss};
use std::collections::HashMap;

#[derive(Args, Debug)]
pub struct SaeBenchArgs {
    /// Sizes as D_INxD_SAE, comma separated (default: 768x24576 and SmolLM2's 576x9216).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "768x24576,576x9216")]
    sizes: Vec<(usize, usize)>,
    /// Tokens per batch B.
    #[arg(long, default_value_t = 4096, value_parser = ui::positive)]
    batch: usize,
    /// k (TopK per token; k·B total budget for Mutual and Feature Choice); at most every
    /// size's d_sae.
    #[arg(short, long, default_value_t = 32, value_parser = ui::positive)]
    k: usize,
    /// Architectures to time, comma separated: topk, mutual_choice (alias batch_topk),
    /// feature_choice.
    #[arg(
        long = "arch",
        alias = "archs",
        value_delimiter = ',',
        default_value = "topk,mutual_choice,feature_choice"
    )]
    archs: Vec<Architecture>,
    /// Auxiliary losses to time, comma separated: none, aux_k, aux_zipf.
    #[arg(long, value_delimiter = ',', default_value = "none,aux_k,aux_zipf")]
    aux: Vec<AuxKind>,
    /// Timed fast steps per configuration (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = ui::positive)]
    steps: usize,
    /// Rounds over the configurations: each round times every configuration once (a fresh
    /// trainer, `--steps` steps), and a configuration's step is the median (the upper one of an
    /// even count) of all its rounds' steps, so that the machine's drift over the minutes of a
    /// run falls on every configuration alike (step / no-aux step). The encoder products are
    /// timed once, before the rounds, and the reference steps after them.
    #[arg(long, default_value_t = 1, value_parser = ui::positive)]
    rounds: usize,
    /// Timed encoder products (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = ui::positive)]
    matmul_reps: usize,
    /// Timed reference steps per architecture (aux none; 0 = skip the reference path).
    #[arg(long, default_value_t = 1)]
    reference_steps: usize,
    /// Encoder-product precisions to time the step with, comma separated: f32, bf16
    /// (`train.matmul`). bf16 needs AMX-BF16 or AVX512-BF16 (`SPARSA_BF16_KERNEL` picks one);
    /// without either it is reported as unavailable and skipped.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    matmul: Vec<Matmul>,
    /// Run the auxiliary loss as dense products over the features whose pairs fill at least
    /// this share of their column (0: every feature, above 1: none; default: the trainer's
    /// `AUX_DENSE_ABOVE`, 0.25). For measuring the switch.
    #[arg(long, value_parser = ui::non_negative)]
    aux_dense_above: Option<f64>,
}

/// A `--sizes` entry `D_INxD_SAE` (for clap's value_parser: a bad entry is a usage error).
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}`: expected D_INxD_SAE with positive sizes, e.g. 768x24576");
    let (d, f) = s.trim().split_once('x').ok_or_else(bad)?;
    let d: usize = d.trim().parse().map_err(|_| bad())?;
    let f: usize = f.trim().parse().map_err(|_| bad())?;
    if d == 0 || f == 0 {
        return Err(bad());
    }
    Ok((d, f))
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
    /// Full fast training step (Trainer::step), median seconds over every round's steps.
    step_s: f64,
    /// Timed steps behind step_s (`--steps` × `--rounds`).
    timed_steps: usize,
    /// step_s / the f32 product (matmul_s), whatever the step's own precision.
    step_over_matmul: f64,
    /// step_s / the same architecture's and precision's step without an auxiliary loss.
    step_over_no_aux: Option<f64>,
    /// Whether the auxiliary loss ran in the timed steps.
    aux_active: bool,
    /// Matched pairs per step (main + auxiliary).
    matches_main: usize,
    matches_aux: usize,
    /// Features the auxiliary loss could use in the last timed step (aux_k: the dead ones).
    aux_eligible: usize,
    /// Whether the auxiliary loss ran as dense products over its features (not pair by pair).
    aux_dense: bool,
    /// Phase times, each the median over the last round's timed steps; `aux_products` is the
    /// part of decode and backward spent in the dense auxiliary block's four f32 products.
    phases: Phases,
    /// (Sum of the phases) / (the encoder product inside the same steps, in its precision):
    /// the step/matmul ratio with both measured in the same steps, less exposed to load from
    /// other processes than step_over_matmul (whose two figures are seconds apart).
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

/// The bf16 kernel the bench uses (`None` with a note when there is none or bf16 is not asked
/// for), and its measured instruction peak.
fn bf16_setup(a: &SaeBenchArgs) -> Result<Option<(Bf16Kernel, peak::Bf16Peak)>> {
    if !a.matmul.contains(&Matmul::Bf16) {
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

pub fn run(a: SaeBenchArgs) -> Result<()> {
    // Every size's configurations are checked before anything is timed.
    let shapes: Vec<Shape> = a
        .sizes
        .iter()
        .map(|&(d, f)| Shape {
            d,
            f,
            b: a.batch,
            k: a.k,
        })
        .collect();
    for s in &shapes {
        for &arch in &a.archs {
            for &aux in &a.aux {
                sb::config(*s, arch, aux, Matmul::F32, false)
                    .map_err(|e| ui::Usage(format!("bench configuration {}x{}: {e}", s.d, s.f)))?;
            }
        }
    }
    let threads = rayon::current_num_threads();
    eprintln!("measuring the FMA peak on {threads} threads…");
    let pk = peak::measure(20_000_000, 3);
    eprintln!("FMA peak: {:.1} GFLOP/s ({})", pk.gflops, pk.isa.name());
    let bf16 = bf16_setup(&a)?;
    let mut lines = Vec::new();
    for s in shapes {
        reset_peak_rss();
        let (data, w) = sb::inputs(s)?;
        let (b, d, f) = (s.b, s.d, s.f);
        let reps = a.matmul_reps;
        eprintln!("{d}x{f}: timing the encoder product ({b}×{d} · {d}×{f})…");
        let f32_s = sb::time_product(s, &data, &w, reps);
        let bf16_s = bf16.and_then(|(kernel, _)| sb::time_product_bf16(s, &data, &w, kernel, reps));
        let fast = time_fast_steps(&a, s, &data, f32_s, bf16.is_some())?;
        let rss_fast = peak_rss_mb();
        let candle_s = sb::time_product_candle(s, &data, &w, reps)?;
        drop(w);
        let refs = time_reference_steps(&a, s, &data)?;
        let rss_all = peak_rss_mb();
        let products = Products {
            f32_s,
            candle_s,
            bf16_s,
        };
        let rss = (rss_fast, rss_all);
        for run in &fast {
            let line = line(s, run, &fast, &products, (pk, bf16), &refs, rss);
            println!("{}", serde_json::to_string(&line)?);
            lines.push(line);
        }
    }
    print_summary(&lines);
    Ok(())
}

/// One timed (architecture, aux, precision) configuration.
struct Timed {
    arch: Architecture,
    aux: AuxKind,
    run: FastRun,
}

/// The fast training step of every (architecture, precision, aux) triple. bf16 runs only when
/// `bf16` (a kernel exists).
fn time_fast_steps(
    a: &SaeBenchArgs,
    s: Shape,
    data: &[f32],
    f32_product: f64,
    bf16: bool,
) -> Result<Vec<Timed>> {
    let mut out: Vec<Timed> = Vec::new();
    for round in 0..a.rounds {
        let mut at = 0;
        for &arch in &a.archs {
            for &matmul in a.matmul.iter().filter(|&&m| m == Matmul::F32 || bf16) {
                for &aux in &a.aux {
                    let label = format!("{}+{} {}", arch.name(), aux.name(), matmul.name());
                    let cfg = sb::config(s, arch, aux, matmul, false)?;
                    let run = sb::time_fast_run(cfg, data, s.d, a.steps, a.aux_dense_above)
                        .with_context(|| label.clone())?;
                    eprintln!(
                        "{}x{} {}+{} {}{}: step {:.3} s ({:.2}× the f32 product) aux loss {:.3e}",
                        s.d,
                        s.f,
                        arch.name(),
                        aux.name(),
                        run.matmul,
                        if a.rounds > 1 {
                            format!(", round {}", round + 1)
                        } else {
                            String::new()
                        },
                        run.step,
                        run.step / f32_product,
                        run.metrics.aux_loss
                    );
                    match out.get_mut(at) {
                        // Later rounds: all steps so far, the last round's phases and counts.
                        Some(t) => {
                            let steps = [&t.run.steps[..], &run.steps[..]].concat();
                            t.run = FastRun {
                                step: median(steps.clone()),
                                steps,
                                ..run
                            };
                        }
                        None => out.push(Timed { arch, aux, run }),
                    }
                    at += 1;
                }
            }
        }
    }
    Ok(out)
}

/// The reference (candle autograd) step per architecture, aux none; empty with
/// `--reference-steps 0`.
fn time_reference_steps(
    a: &SaeBenchArgs,
    s: Shape,
    data: &[f32],
) -> Result<HashMap<&'static str, f64>> {
    let mut refs = HashMap::new();
    if a.reference_steps == 0 {
        return Ok(refs);
    }
    for &arch in &a.archs {
        eprintln!(
            "{}x{} {}: timing the reference step…",
            s.d,
            s.f,
            arch.name()
        );
        let cfg = sb::config(s, arch, AuxKind::None, Matmul::F32, true)?;
        let r = sb::time_steps(cfg, data, s.d, a.reference_steps)?;
        eprintln!("{}x{} {}: reference step {r:.3} s", s.d, s.f, arch.name());
        refs.insert(arch.name(), r);
    }
    Ok(refs)
}

/// One output line from a timed fast run and the figures of its size.
#[allow(clippy::too_many_arguments)] // one line's inputs, all measured by the caller
fn line(
    s: Shape,
    t: &Timed,
    all: &[Timed],
    products: &Products,
    (pk, bf16): (peak::FmaPeak, Option<(Bf16Kernel, peak::Bf16Peak)>),
    refs: &HashMap<&'static str, f64>,
    (rss_fast, rss_all): (Option<f64>, Option<f64>),
) -> Line {
    let (d, f, b) = (s.d, s.f, s.b);
    let flops = s.product_flops();
    let run = &t.run;
    let reference = refs
        .get(t.arch.name())
        .copied()
        .filter(|_| t.aux == AuxKind::None && run.matmul == "f32");
    let no_aux = all
        .iter()
        .find(|r| r.arch == t.arch && r.run.matmul == run.matmul && r.aux == AuxKind::None)
        .map(|r| run.step / r.run.step);
    let bf16_gflops = products.bf16_s.map(|s| flops / s / 1e9);
    let ph = run.phases;
    Line {
        d,
        f,
        b,
        k: s.k,
        aux_active: run.metrics.aux_loss != 0.0,
        arch: t.arch.name().to_string(),
        aux: t.aux.name().to_string(),
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
        timed_steps: run.steps.len(),
        step_over_matmul: run.step / products.f32_s,
        step_over_no_aux: no_aux,
        matches_main: run.matches.0,
        matches_aux: run.matches.1,
        aux_eligible: run.metrics.aux_eligible,
        aux_dense: run.aux_dense,
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
            "| arch | aux | matmul | step s | step / f32 product | step / no-aux step | aux active | aux f32 products s |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for l in lines.iter().filter(|l| (l.d, l.f) == (d, f)) {
            println!(
                "| {} | {} | {} | {:.3} | {:.2} | {} | {} | {} |",
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
                },
                if l.aux_dense {
                    format!("{:.3}", l.phases.aux_products)
                } else {
                    "–".to_string()
                }
            );
        }
    }
}
