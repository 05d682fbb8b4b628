//! `sparsa bench …`: performance figures (a command, not a test: nothing here asserts a time).
//! One place for every benchmark: `bench sae`, `bench lm`, `bench prune` (the last two run the
//! code of `lm` and `prune`; `sparsa lm bench` and `sparsa prune bench` remain as hidden aliases).
//!
//! `sparsa bench sae` prints one JSON line per (size, architecture, auxiliary loss): the encoder
//! product alone and its share of the measured FMA peak, the full fast step, step/matmul, the
//! reference step, and peak RSS — all measured in the same run, so the ratios are comparable
//! even on a busy machine.

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use sparsa::data::activations::BatchSource;
use sparsa::data::synthetic::{SyntheticConfig, SyntheticSource};
use sparsa::kernels::{matmul, peak};
use sparsa::sae::config::RunConfig;
use sparsa::sae::fast::Phases;
use sparsa::sae::train::Trainer;
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
        default_value = "topk,mutual_choice,feature_choice"
    )]
    archs: Vec<String>,
    /// Auxiliary losses to time (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "none,aux_k,aux_zipf")]
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
    threads: usize,
    fma_isa: &'static str,
    fma_peak_gflops: f64,
    matmul_impl: &'static str,
    /// Encoder product X·W_encᵀ alone (gemm into a reused buffer), median seconds.
    matmul_s: f64,
    matmul_gflops: f64,
    matmul_share_of_peak: f64,
    /// The same product through candle's Tensor::matmul (fresh output each call), median.
    matmul_candle_s: f64,
    /// Full fast training step (Trainer::step), median seconds.
    step_s: f64,
    step_over_matmul: f64,
    /// Whether the auxiliary loss ran in the timed steps.
    aux_active: bool,
    /// Matched pairs per step (main + auxiliary).
    matches_main: usize,
    matches_aux: usize,
    /// Phase times of the last timed step.
    phases: Phases,
    /// (Sum of the phases) / (the encoder product inside that same step): the step/matmul
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
    let b = a.batch;
    for (d, f) in sizes {
        reset_peak_rss();
        // Data: one synthetic batch, reused (copied) for every step.
        let mut src = SyntheticSource::new(SyntheticConfig::new(d, 4 * d, 1))?;
        let mut data = vec![0f32; b * d];
        src.next_batch(&mut data)?;

        // Encoder product alone.
        let flops = 2.0 * b as f64 * d as f64 * f as f64;
        let (mm_gemm, mm_candle) = {
            let w: Vec<f32> = (0..f * d)
                .map(|i| ((i as f32) * 0.618).fract() - 0.5)
                .collect();
            let mut c = vec![0f32; b * f];
            matmul::matmul_abt(&data, &w, &mut c, b, f, d);
            eprintln!("{d}x{f}: timing the encoder product ({b}×{d} · {d}×{f})…");
            let g = time(a.matmul_reps, || {
                matmul::matmul_abt(&data, &w, &mut c, b, f, d);
                Ok(())
            })?;
            drop(c);
            (g, w)
        };
        let w = mm_candle;
        let mut fast_lines = Vec::new();
        for arch in &a.archs {
            for aux in &a.aux {
                let cfg = run_config(d, f, &a, arch, aux, false)?;
                let mut t = Trainer::new(cfg, d, &data).with_context(|| format!("{arch}+{aux}"))?;
                let mut x = vec![0f32; b * d];
                let mut ts = Vec::new();
                let mut m_last = None;
                for s in 0..2 + a.steps {
                    x.copy_from_slice(&data);
                    let t0 = Instant::now();
                    let m = t.step(&mut x)?;
                    let dt = t0.elapsed().as_secs_f64();
                    if s >= 2 {
                        ts.push(dt);
                    }
                    m_last = Some(m);
                }
                let step = median(ts);
                let m = m_last.context("no step ran")?;
                let ph = t.fast_phases();
                eprintln!(
                    "{d}x{f} {arch}+{aux}: step {step:.3} s ({:.2}× matmul) aux loss {:.3e}",
                    step / mm_gemm,
                    m.aux_loss
                );
                fast_lines.push((arch.clone(), aux.clone(), step, m, ph, t.fast_matches()));
            }
        }
        let rss_fast = peak_rss_mb();
        // candle's product (allocates its own output each call).
        let mut c = vec![0f32; b * f];
        let mm_candle = time(a.matmul_reps, || {
            Ok(matmul::matmul_abt_candle(&data, &w, &mut c, b, f, d)?)
        })?;
        drop(c);
        drop(w);
        // Reference step per architecture (aux none).
        let mut refs = std::collections::HashMap::new();
        if a.reference_steps > 0 {
            for arch in &a.archs {
                eprintln!("{d}x{f} {arch}: timing the reference step…");
                let cfg = run_config(d, f, &a, arch, "none", true)?;
                let mut t = Trainer::new(cfg, d, &data)?;
                let mut x = vec![0f32; b * d];
                let r = time(a.reference_steps, || {
                    x.copy_from_slice(&data);
                    t.step(&mut x)?;
                    Ok(())
                })?;
                eprintln!("{d}x{f} {arch}: reference step {r:.3} s");
                refs.insert(arch.clone(), r);
            }
        }
        let rss_all = peak_rss_mb();
        for (arch, aux, step, m, ph, matches) in fast_lines {
            let reference = refs.get(&arch).copied();
            let fast_none = step;
            let line = Line {
                d,
                f,
                b,
                k: a.k,
                arch: arch.clone(),
                aux: aux.clone(),
                threads,
                fma_isa: pk.isa.name(),
                fma_peak_gflops: pk.gflops,
                matmul_impl: "gemm",
                matmul_s: mm_gemm,
                matmul_gflops: flops / mm_gemm / 1e9,
                matmul_share_of_peak: flops / mm_gemm / 1e9 / pk.gflops,
                matmul_candle_s: mm_candle,
                step_s: step,
                step_over_matmul: step / mm_gemm,
                aux_active: m.aux_loss != 0.0,
                matches_main: matches.0,
                matches_aux: matches.1,
                phases: ph,
                step_over_matmul_same_step: (ph.encode
                    + ph.select
                    + ph.decode
                    + ph.backward
                    + ph.adam)
                    / ph.matmul,
                reference_step_s: if aux == "none" { reference } else { None },
                reference_over_fast: if aux == "none" {
                    reference.map(|r| r / fast_none)
                } else {
                    None
                },
                peak_rss_mb: rss_fast,
                peak_rss_with_reference_mb: rss_all,
            };
            println!("{}", serde_json::to_string(&line)?);
        }
    }
    Ok(())
}
