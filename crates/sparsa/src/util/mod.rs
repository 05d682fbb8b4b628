//! Small shared helpers: atomic file writes, progress reporting, cancellation, config overrides,
//! benchmark timing.
pub mod bench;
pub mod fs;
pub mod progress;
pub mod toml_set;
