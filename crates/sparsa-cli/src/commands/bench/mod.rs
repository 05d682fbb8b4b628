//! `sparsa bench …`: performance figures (a command, not a test: nothing here asserts a time).
//! One place for every benchmark: `bench sae`, `bench lm`, `bench prune`; the measurement loops
//! are in the library (`sparsa::sae::bench`, `sparsa::lm::bench`, `sparsa::prune::bench`), this
//! module chooses the grid and prints. `sparsa lm bench` and `sparsa prune bench` remain for one
//! release as hidden, deprecated aliases.

pub mod lm;
pub mod prune;
pub mod sae;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// SAE training step: encoder matmul vs full fast step vs reference step, per architecture
    /// and auxiliary loss. One JSON line per configuration on stdout; progress on stderr.
    Sae(sae::SaeBenchArgs),
    /// Language-model forward speed (tokens/s) on corpus text, full model and up to a hook.
    Lm(lm::BenchArgs),
    /// Image classifiers: training and evaluation images/s and peak RSS per model and sparsity
    /// (pruned at initialisation, global magnitude by default), on random inputs of the model's usual shape (28×28×1 for LeNet and
    /// Conv-2/4/6, 32×32×3 for ResNet and VGG). One JSON line per row, then a table; compare
    /// with `bench/torch_cnn.py` run alternately in the same sitting.
    Prune(prune::BenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Sae(a) => sae::run(a),
        BenchCommand::Lm(a) => lm::bench(&a),
        BenchCommand::Prune(a) => prune::bench(a),
    }
}
