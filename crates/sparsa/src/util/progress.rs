//! Progress reporting without printing: the library calls a [`Progress`], the CLI draws it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A sink for progress of long work. Units are whatever the caller says (tokens, images, steps).
pub trait Progress: Send + Sync {
    /// Total units expected (may be called again if the estimate changes).
    fn set_total(&self, _total: u64) {}
    /// Units done so far (absolute position).
    fn set_position(&self, _pos: u64) {}
    /// Advance by `n` units.
    fn inc(&self, _n: u64) {}
    /// A short status message (e.g. current loss).
    fn message(&self, _msg: &str) {}
    /// Work finished.
    fn finish(&self) {}
}

/// A progress sink that ignores everything (tests, library use).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// A cooperative cancellation flag (set by Ctrl-C in the CLI); long loops poll it and stop cleanly,
/// saving a checkpoint where they have one.
#[derive(Debug, Default, Clone)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
