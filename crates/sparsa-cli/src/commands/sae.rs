//! `sparsa sae …`
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SaeCommand {}

pub fn run(cmd: SaeCommand) -> anyhow::Result<()> {
    match cmd {}
}
