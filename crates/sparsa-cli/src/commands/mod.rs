//! One file per top-level subcommand.
pub mod activations;
pub mod bench;
pub mod fetch;
pub mod inputs;
pub mod lm;
pub mod prune;
pub mod sae;
