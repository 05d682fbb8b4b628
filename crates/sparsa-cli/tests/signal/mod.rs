//! Shared by the Ctrl-C tests: wait for a child to reach a state, then send it SIGINT.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// Poll `ready` every 50 ms (failing after 120 s with "`what` never happened"), wait `settle`
/// more, send SIGINT to `child`, and return its output.
#[cfg(unix)]
pub fn interrupt_when(
    child: Child,
    what: &str,
    ready: impl Fn() -> bool,
    settle: Duration,
) -> Output {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what} never happened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(settle);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    child.wait_with_output().unwrap()
}
