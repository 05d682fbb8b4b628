//! `sparsa`: the command-line front end. It parses, reports and draws progress; the library
//! crate does the work and never prints.

mod commands;
mod ui;

use clap::{Parser, Subcommand};

/// Sparsity allocation in neural networks: adaptive-allocation sparse autoencoders (TopK,
/// Mutual Choice, Feature Choice; aux_k and aux_zipf) and pruning with Activate-while-Pruning.
#[derive(Parser, Debug)]
#[command(
    name = "sparsa",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Exit status: 0 success, 1 runtime error, 2 usage or configuration error, \
                  130 interrupted (state saved; rerun to resume)."
)]
struct Cli {
    /// More log output (repeat for more); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sparse autoencoders: train, evaluate, export, compare (synthetic and on SmolLM2).
    #[command(subcommand)]
    Sae(commands::sae::SaeCommand),
    /// Fetch the pinned models and data sets into the cache (idempotent).
    Fetch(commands::fetch::FetchArgs),
    /// Activation stores: extract a language model's activations over a corpus.
    #[command(subcommand)]
    Activations(commands::activations::ActivationsCommand),
    /// The language model on its own: info, tokenize, next-token top-k, speed.
    #[command(subcommand)]
    Lm(commands::lm::LmCommand),
    /// Pruning with dead-neuron tracking and Activate-while-Pruning: run, report, bench.
    #[command(subcommand)]
    Prune(commands::prune::PruneCommand),
    /// Performance figures (JSON lines): `sparsa bench sae`.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Exit status: 0 success, 1 runtime error, 2 usage or configuration error, 130 interrupted
/// (after the checkpoint or finished work was saved; rerun to resume).
fn main() -> std::process::ExitCode {
    ui::quiet_on_closed_pipe();
    let cli = Cli::parse();
    ui::init_logging(cli.verbose);
    let result = match cli.command {
        Command::Sae(cmd) => commands::sae::run(cmd),
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Activations(cmd) => commands::activations::run(cmd),
        Command::Lm(cmd) => commands::lm::run(cmd),
        Command::Prune(cmd) => commands::prune::run(cmd),
        Command::Bench(cmd) => commands::bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let code = ui::exit_code(&err);
            if code == 130 {
                eprintln!("{err:#}");
            } else {
                eprintln!("error: {err:#}");
            }
            std::process::ExitCode::from(code)
        }
    }
}
