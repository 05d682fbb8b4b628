//! One file per top-level subcommand.
pub mod sae;
