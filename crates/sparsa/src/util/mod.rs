//! Small shared helpers: atomic file writes, progress reporting, cancellation.
pub mod fs;
pub mod progress;
