//! One file or directory per top-level subcommand (`sae/` and `bench/` are directories), plus
//! `inputs`: the model and corpus resolution several of them share.
pub mod activations;
pub mod bench;
pub mod fetch;
pub mod inputs;
pub mod lm;
pub mod prune;
pub mod sae;
