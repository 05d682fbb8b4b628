//! One file per top-level subcommand.
pub mod prune;
pub mod sae;
