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
                  130 interrupted (any state saved first; rerun to resume)."
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
    /// The language model on its own: info, tokenize, next-token top-k, ablation.
    #[command(subcommand)]
    Lm(commands::lm::LmCommand),
    /// Pruning with dead-neuron tracking and Activate-while-Pruning: run, report.
    #[command(subcommand)]
    Prune(commands::prune::PruneCommand),
    /// Performance figures: `sparsa bench sae`, `bench lm`, `bench prune`.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Exit status: 0 success, 1 runtime error, 2 usage or configuration error, 130 interrupted
/// (after the checkpoint or finished work, if any, was saved; rerun to resume).
fn main() -> std::process::ExitCode {
    ui::quiet_on_closed_pipe();
    let cli = Cli::parse();
    ui::init_logging(cli.verbose);
    main_thread_in_pool();
    if let Err(e) = sparsa::kernels::simd::Simd::from_env() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
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

/// Make the main thread one of rayon's global workers (`use_current_thread`, same thread count
/// as the default pool: `RAYON_NUM_THREADS` or every core). The engines' parallel passes called
/// from it then run inside the pool instead of being handed to it and waited for: one hand-off
/// per pass cost LeNet-300-100 15–35 % of its training and 30–45 % of its evaluation speed
/// (measured, docs/pruning.md). Fails only if the global pool already exists, which it cannot
/// at start-up; the default pool then serves as before.
fn main_thread_in_pool() {
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
    {
        tracing::debug!("main thread not in the global pool: {e}");
    }
}

#[cfg(test)]
mod surface {
    //! The CLI's surface rules, checked over every subcommand: one name per concept, list flags
    //! whose shown default can be passed back verbatim, long forms for short flags.
    use super::Cli;
    use clap::CommandFactory;

    fn walk(cmd: &clap::Command, path: &str, f: &mut dyn FnMut(&str, &clap::Arg)) {
        for a in cmd.get_arguments() {
            f(path, a);
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), f);
        }
    }

    #[test]
    fn flags_follow_the_surface_rules() {
        // Names that mean the same thing everywhere (the second form is only an alias).
        let renamed = [
            ("batch-size", "batch"),
            ("archs", "arch"),
            ("sequences", "lm-sequences"),
        ];
        let mut problems = Vec::new();
        walk(&Cli::command(), "sparsa", &mut |path, a| {
            let id = a.get_id().as_str();
            if let Some(long) = a.get_long() {
                for (old, new) in renamed {
                    if long == old {
                        problems.push(format!("{path} --{long}: call it --{new}"));
                    }
                }
            }
            if a.get_short().is_some() && a.get_long().is_none() {
                problems.push(format!("{path} -{}: no long form", a.get_short().unwrap()));
            }
            // A list flag must show its default as one comma-separated value: clap renders
            // several default values separated by spaces, which the flag does not accept.
            if a.get_value_delimiter().is_some() && a.get_default_values().len() > 1 {
                problems.push(format!(
                    "{path} {id}: default shown space-separated; give one comma-joined default"
                ));
            }
        });
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// Every comma-separated default, passed back verbatim, parses.
    #[test]
    fn shown_list_defaults_parse_back() {
        let mut cases = Vec::new();
        walk(&Cli::command(), "sparsa", &mut |path, a| {
            if a.get_value_delimiter().is_some() {
                if let (Some(long), [d]) = (a.get_long(), a.get_default_values()) {
                    cases.push((
                        path.to_string(),
                        long.to_string(),
                        d.to_string_lossy().to_string(),
                    ));
                }
            }
        });
        assert!(cases.len() >= 4, "list flags with defaults: {cases:?}");
        for (path, long, d) in cases {
            let mut argv: Vec<String> = path.split(' ').map(String::from).collect();
            argv.push(format!("--{long}"));
            argv.push(d.clone());
            if let Err(e) = Cli::command().try_get_matches_from(&argv) {
                // Subcommands with required arguments fail for those, never for this flag.
                let msg = e.to_string();
                assert!(
                    !msg.contains(&format!("--{long}")),
                    "{argv:?} rejected the shown default: {msg}"
                );
            }
        }
    }
}
