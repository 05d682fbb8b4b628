//! `sparsa prune …`: run pruning grids, report them, and measure training throughput.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use sparsa::prune::ap::ApVariant;
use sparsa::prune::identity::IdentityCheck;
use sparsa::prune::report;
use sparsa::prune::runner::{self, Dataset, ExperimentConfig, RunContext};

use crate::ui;

#[derive(Subcommand, Debug)]
pub enum PruneCommand {
    /// Run (or resume) an experiment grid: methods × AP variants × seeds, each over its pruning
    /// rounds. Results go to <out>/<name>-<hash of the config>/; rerunning resumes.
    Run {
        /// The experiment TOML (see configs/prune/).
        #[arg(long, short)]
        config: PathBuf,
        /// Override a config value, e.g. --set train.epochs=5 --set 'prune.seeds=[0, 1]'
        /// (repeatable; the run directory's hash covers the result).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Root directory for run directories.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Dataset directory (overrides `data.dir`). Fashion-MNIST is fetched when neither is set.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Do not print the summary table when done.
        #[arg(long)]
        no_report: bool,
        /// Continue a run directory whose recorded identity (sparsa version, run format, data
        /// files) differs from this run's. The directory then records that it is mixed.
        #[arg(long)]
        allow_identity_mismatch: bool,
        /// Run only the cells of these seeds (comma-separated; default: all). Processes given
        /// disjoint seeds can share one run directory.
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// Run only the cells of these AP variants (comma-separated: off, on, change-only,
        /// negative-only; default: all).
        #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.trim().parse::<ApVariant>())]
        ap: Vec<ApVariant>,
    },
    /// Print the summary of a run directory (accuracy per sparsity with and without AP, mean ±
    /// std over seeds; the paired AP − off difference per round with its t-based 95 % CI over
    /// seeds; a summary over the last rounds that counts each seed once) and write CSVs, SVG
    /// plots (accuracy and DNR versus remaining weights) and report.html (one self-contained
    /// page with the plots, DNR over epochs and the tables). Says when the run is incomplete.
    Report {
        /// A run directory (printed by `sparsa prune run`).
        run_dir: PathBuf,
        /// Where to write the CSVs and plots (default: <run_dir>/report).
        #[arg(long, alias = "csv-dir")]
        out_dir: Option<PathBuf>,
        /// The summary averages each seed's paired differences over this many last rounds.
        #[arg(long, default_value_t = 5, value_parser = ui::positive)]
        last: usize,
        /// Do not write the SVG plots.
        #[arg(long)]
        no_plots: bool,
        /// Report only these seeds (comma-separated; default: all), e.g. the seeds whose AP-off
        /// and AP-on cells both finished.
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
    },
    /// Deprecated alias of `sparsa bench prune` (kept for one release).
    #[command(hide = true)]
    Bench(super::bench::prune::BenchArgs),
}

pub fn run(cmd: PruneCommand) -> anyhow::Result<()> {
    match cmd {
        PruneCommand::Run {
            config,
            set,
            out,
            data_dir,
            no_report,
            allow_identity_mismatch,
            seeds,
            ap,
        } => run_grid(
            &config,
            &set,
            &out,
            data_dir,
            !no_report,
            allow_identity_mismatch,
            &seeds,
            &ap,
        ),
        PruneCommand::Report {
            run_dir,
            out_dir,
            last,
            no_plots,
            seeds,
        } => print_report(&run_dir, out_dir, last, !no_plots, &seeds),
        PruneCommand::Bench(a) => {
            ui::deprecated("sparsa prune bench", "sparsa bench prune");
            super::bench::prune::bench(a)
        }
    }
}

/// The Fashion-MNIST directory, fetched into the cache (Debian's `dataset-fashion-mnist`) when
/// missing.
pub fn fashion_mnist_dir() -> anyhow::Result<PathBuf> {
    sparsa::data::fetch::ensure(sparsa::data::fetch::Asset::FashionMnist)
        .context("fetching Fashion-MNIST (or pass --data-dir with the IDX files)")
}

#[allow(clippy::too_many_arguments)]
fn run_grid(
    config: &Path,
    set: &[String],
    out: &Path,
    data_dir: Option<PathBuf>,
    show: bool,
    allow_identity_mismatch: bool,
    seeds: &[u64],
    aps: &[ApVariant],
) -> anyhow::Result<()> {
    let cfg = ExperimentConfig::from_toml_file_with(config, set)?;
    let cells = runner::select_cells(&cfg, seeds, aps)?;
    let dir = match data_dir.or_else(|| cfg.data.dir.clone()) {
        Some(d) => d,
        None => match cfg.data.dataset {
            Dataset::FashionMnist => fashion_mnist_dir()?,
            other => bail!(
                "{}: data.dir is not set and {other:?} cannot be fetched; set data.dir or pass --data-dir",
                config.display()
            ),
        },
    };
    let (train, test) = runner::load_dataset(&cfg.data, &dir)
        .with_context(|| format!("loading {:?} from {}", cfg.data.dataset, dir.display()))?;
    runner::check_against_data(&cfg, &train)?;
    let identity = runner::run_identity(&cfg.data, &dir)
        .with_context(|| format!("fingerprinting the data in {}", dir.display()))?;
    let (run_dir, check) = runner::prepare_run_dir(&cfg, out, &identity, allow_identity_mismatch)?;
    if let IdentityCheck::MismatchAllowed(diffs) = &check {
        eprintln!(
            "warning: {} was made with a different identity; continuing as asked \
             (--allow-identity-mismatch): {}",
            run_dir.display(),
            diffs.join("; ")
        );
    }
    eprintln!(
        "run directory: {} ({} cells × {} rounds, {} training / {} test images)",
        run_dir.display(),
        cells.len(),
        cfg.rounds_per_cell(),
        train.len(),
        test.len()
    );
    let bar = ui::Bar::new(0, "prune", "step");
    let cancel = ui::ctrl_c_cancel();
    let ctx = RunContext {
        train: &train,
        test: &test,
        progress: &bar,
        cancel: &cancel,
    };
    runner::run_cells(&cfg, &run_dir, &cells, &ctx)?;
    println!("{}", run_dir.display());
    if show {
        print_report(&run_dir, None, 5, true, &[])?;
    }
    Ok(())
}

fn print_report(
    run_dir: &Path,
    out_dir: Option<PathBuf>,
    last: usize,
    plots: bool,
    seeds: &[u64],
) -> anyhow::Result<()> {
    // The library's errors name the file or directory at fault.
    let rep = report::Report::load_seeds(run_dir, last, seeds)?;
    if rep.records.is_empty() {
        bail!("{} has no finished rounds yet", run_dir.display());
    }
    println!("{}", ui::table(&rep.rows));
    if !rep.deltas.is_empty() {
        println!("\nPaired differences AP − off per round (t-based 95 % CI over seeds):");
        println!("{}", ui::table(&rep.paired_rows()));
        println!(
            "Summary (each seed's mean paired difference over the last rounds, then over seeds):"
        );
        for l in &rep.last_rounds {
            let per_seed: Vec<String> = l
                .per_seed
                .iter()
                .map(|(s, d)| format!("seed {s}: {:+.2}", 100.0 * d))
                .collect();
            println!(
                "  {} AP {} − off, rounds {}–{}: {} pp over {} seeds ({}){}",
                l.key.0,
                l.key.2,
                l.rounds.0,
                l.rounds.1,
                report::fmt_ci_pp(&l.ci),
                l.ci.n,
                per_seed.join(", "),
                if l.incomplete_seeds.is_empty() {
                    String::new()
                } else {
                    format!("; seeds without all those rounds: {:?}", l.incomplete_seeds)
                }
            );
        }
    }
    let out = out_dir.unwrap_or_else(|| sparsa::prune::layout::RunLayout::new(run_dir).report());
    let mut files = report::write_csvs(&rep.records, &out)?;
    files.extend(report::write_paired_csvs(&rep, &out)?);
    if plots {
        files.extend(report::write_plots(&rep.records, &out)?);
    }
    let html = sparsa::report::prune::render(&rep, &run_dir.display().to_string())?;
    files.push(sparsa::report::write(&out.join("report.html"), &html)?);
    for f in files {
        println!("wrote {}", f.display());
    }
    for w in rep.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(())
}
