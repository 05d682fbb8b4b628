//! One file per top-level subcommand.
pub mod bench;
pub mod sae;
