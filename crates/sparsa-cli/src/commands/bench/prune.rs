//! `sparsa bench prune`: image classifiers' training and evaluation images/s and peak RSS per
//! model and sparsity, pruned at initialisation by global magnitude unless `--method` /
//! `--scope` say otherwise (the timing loop is `sparsa::prune::bench`).

use crate::ui;
use anyhow::Context;
use sparsa::nn::models::Arch;
use sparsa::prune::bench::BenchPruning;
use sparsa::prune::method::{Method, Scope};
use sparsa::util::bench::{median, peak_rss_mb, reset_peak_rss};

/// `--arch` entries, parsed by the library's `Arch: FromStr` (for clap's value_parser).
fn parse_arch(s: &str) -> Result<Arch, String> {
    s.trim()
        .parse()
        .map_err(|e: sparsa::nn::NnError| e.to_string())
}

/// `--method`: the pruning methods the benchmark can run at initialisation (SNIP needs training
/// batches).
fn parse_method(s: &str) -> Result<Method, String> {
    let s = s.trim();
    [Method::Magnitude, Method::Lamp, Method::Random, Method::Synflow]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| {
            format!(
                "`{s}`: the benchmark prunes by magnitude, lamp, random or synflow (snip needs training batches)"
            )
        })
}

/// `--scope`: global or layer.
fn parse_scope(s: &str) -> Result<Scope, String> {
    let s = s.trim();
    [Scope::Global, Scope::Layer]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("`{s}`: give global or layer"))
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let list: Vec<Arch> = if a.arch.is_empty() {
        Arch::ALL.to_vec()
    } else {
        a.arch.clone()
    };
    if let Some(bad) = a.sparsity.iter().find(|s| !(0.0..100.0).contains(*s)) {
        return Err(ui::Usage(format!("--sparsity {bad}: give percentages in [0, 100)")).into());
    }
    if a.scope == Scope::Layer && !a.method.allows_layer_scope() {
        return Err(ui::Usage(format!(
            "--scope layer: {} is a global method; a per-layer scope takes magnitude or random",
            a.method.name()
        ))
        .into());
    }
    let scope = a.scope.name();
    let pruning = format!("{} {scope}", a.method.name());
    let threads = if a.threads == 0 {
        rayon::current_num_threads()
    } else {
        a.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("building the thread pool")?;
    let engine = if a.reference {
        "reference (candle)"
    } else {
        "fused"
    };
    eprintln!(
        "engine: {engine}, batch {}, {threads} threads, {} timed steps (median), pruned by {pruning} at initialisation",
        a.batch, a.steps
    );
    let mut rows = vec![vec![
        "model".to_string(),
        "input".to_string(),
        "params".to_string(),
        "sparsity".to_string(),
        "train img/s".to_string(),
        "eval img/s".to_string(),
        "peak RSS MB".to_string(),
    ]];
    for arch in list {
        for &sp in &a.sparsity {
            let row = pool.install(|| bench_one(arch, sp, &a))?;
            println!(
                "{}",
                serde_json::json!({
                    "impl": if a.reference { "sparsa-reference" } else { "sparsa" },
                    "model": arch.name(), "batch": a.batch, "threads": threads,
                    "sparsity": sp, "method": a.method.name(), "scope": scope,
                    "train_img_s": row.train, "eval_img_s": row.eval,
                    "peak_rss_mb": row.rss,
                    "linear_density_sparse": row.linear,
                    "conv_density_sparse": row.conv,
                    "conv_kernels": row.conv_kernels,
                })
            );
            rows.push(vec![
                arch.name().to_string(),
                row.input,
                row.params.to_string(),
                // The dense row is not pruned: no method to name.
                if sp > 0.0 {
                    format!("{sp:.0} % {pruning}")
                } else {
                    format!("{sp:.0} %")
                },
                format!("{:.0}", row.train),
                format!("{:.0}", row.eval),
                row.rss
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    println!("{}", ui::table(&rows));
    Ok(())
}

/// Arguments of `sparsa bench prune`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Architectures to measure (comma separated; default: all).
    #[arg(long, alias = "archs", value_delimiter = ',', value_parser = parse_arch)]
    arch: Vec<Arch>,
    /// Images per step.
    #[arg(long, default_value_t = 128, value_parser = ui::positive)]
    batch: usize,
    /// Timed training and evaluation steps per model (after one warm-up step); the figure is
    /// the median step.
    #[arg(long, default_value_t = 10, value_parser = ui::positive)]
    steps: usize,
    /// Sparsities to measure, in percent (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0,90,98")]
    sparsity: Vec<f64>,
    /// Pruning method at initialisation: magnitude, lamp, random or synflow (100 iterations).
    #[arg(long, default_value = "magnitude", value_parser = parse_method)]
    method: Method,
    /// `global`: one threshold for the whole net (the sparsity's distribution over the layers
    /// is the method's); `layer`: every layer pruned to the sparsity (magnitude or random).
    #[arg(long, default_value = "global", value_parser = parse_scope)]
    scope: Scope,
    /// Threads (0: rayon's default, all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Time the candle reference path instead of the fused engine.
    #[arg(long)]
    reference: bool,
    /// Weight density below which a masked linear layer runs the sparse kernels (default: the
    /// engine's measured threshold; 0 = always dense, 2 = always sparse, to measure it).
    #[arg(long)]
    sparse_below: Option<f64>,
    /// A masked stride-1 convolution runs the sparse kernels when its weight density times
    /// the kernels' wasted-position factor is below this (default: the engine's measured
    /// threshold; 0 = always dense, 1 = always sparse).
    #[arg(long)]
    sparse_conv_below: Option<f64>,
    /// 3×3 stride-1 convolutions with more output channels than this run the Winograd kernels
    /// (default: the engine's measured switch; a huge value = never, to measure it).
    #[arg(long)]
    winograd_above: Option<usize>,
}

struct BenchRow {
    input: String,
    params: usize,
    train: f64,
    eval: f64,
    rss: Option<f64>,
    /// Weight density of each masked linear layer, and whether it ran the sparse kernels.
    linear: Vec<(f64, bool)>,
    /// The same for the masked convolutions.
    conv: Vec<(f64, bool)>,
    /// The kernels each convolution ran (sparse, winograd, direct, pointwise, im2col).
    conv_kernels: Vec<&'static str>,
}

fn bench_one(arch: Arch, sparsity: f64, a: &BenchArgs) -> anyhow::Result<BenchRow> {
    use sparsa::prune::bench::{time_model, BenchSpec};
    use sparsa::util::progress::Progress;
    reset_peak_rss();
    let label = format!("{} {sparsity:.0}%", arch.name());
    let bar = ui::Bar::new((2 * a.steps + 2) as u64, &label, "step");
    let spec = BenchSpec {
        batch: a.batch,
        steps: a.steps,
        reference: a.reference,
        sparse_below: a.sparse_below,
        sparse_conv_below: a.sparse_conv_below,
        winograd_above: a.winograd_above,
        pruning: BenchPruning {
            method: a.method,
            scope: a.scope,
        },
    };
    let t = time_model(arch, sparsity, spec, &|| bar.inc(1))?;
    bar.finish();
    let i = t.input;
    Ok(BenchRow {
        input: format!("{}×{}×{}", i.channels, i.height, i.width),
        params: t.params,
        train: a.batch as f64 / median(t.train),
        eval: a.batch as f64 / median(t.eval),
        rss: peak_rss_mb(),
        linear: t.linear,
        conv: t.conv,
        conv_kernels: t.conv_kernels,
    })
}
