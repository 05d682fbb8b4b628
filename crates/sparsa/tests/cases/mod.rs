//! Table-driven tests: every case runs, and all failures are reported together, so one failing
//! case does not hide the others.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `check` on every case; a case fails when `check` panics (its assertions). After all ran,
/// panic with each failing case and its message.
pub fn each<C: Debug>(cases: impl IntoIterator<Item = C>, mut check: impl FnMut(&C)) {
    let mut failures = Vec::new();
    let mut n = 0;
    for c in cases {
        n += 1;
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&c))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{c:?}: {msg}"));
        }
    }
    assert!(n > 0, "no cases ran");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}
