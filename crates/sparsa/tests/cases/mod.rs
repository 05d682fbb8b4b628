//! Table-driven tests: every case runs, and all failures are reported together, so one failing
//! case does not hide the others.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `check` on every case; a case fails when `check` panics (its assertions). After all ran,
/// panic with each failing case and its message.
#[allow(dead_code)] // each test crate uses what it needs
pub fn each<C: Debug>(cases: impl IntoIterator<Item = C>, mut check: impl FnMut(&C)) {
    let mut failures = Vec::new();
    let mut n = 0;
    for c in cases {
        n += 1;
        if let Some(msg) = failure(|| check(&c)) {
            failures.push(format!("{c:?}: {msg}"));
        }
    }
    report(n, failures);
}

/// [`each`] for cases that are not `Debug` (closures, say): each is reported by its name.
#[allow(dead_code)]
pub fn each_named<T>(cases: Vec<(&str, T)>, mut check: impl FnMut(&T)) {
    let n = cases.len();
    let failures = cases
        .iter()
        .filter_map(|(name, c)| failure(|| check(c)).map(|msg| format!("{name}: {msg}")))
        .collect();
    report(n, failures);
}

/// The panic message of `f`, if it panicked.
fn failure(f: impl FnOnce()) -> Option<String> {
    catch_unwind(AssertUnwindSafe(f)).err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn report(n: usize, failures: Vec<String>) {
    assert!(n > 0, "no cases ran");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}
