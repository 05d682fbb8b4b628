//! Measurement helpers shared by the benchmarks (`sparsa bench …`): medians of repeated timings
//! and the process's peak resident set. Nothing here asserts a time.

use std::time::Instant;

/// The median of `v` (the upper one of an even count); NaN when `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Run `f` `reps` times (at least once) and return the median wall time in seconds.
pub fn time_median<E>(reps: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    let mut ts = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

/// The peak resident set (VmHWM) of this process in MB, if /proc is readable.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset VmHWM to the current resident set (Linux: write 5 to /proc/self/clear_refs); false
/// where the kernel does not allow it. The heap's free memory is handed back to the system first
/// (glibc's `malloc_trim`): otherwise what an earlier measurement freed but the allocator kept
/// counts as resident (Conv-6 measured after VGG-19 in one process read 628–645 MB, alone 280).
pub fn reset_peak_rss() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_and_nan_for_none() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(vec![]).is_nan());
        let mut n = 0;
        let t = time_median::<()>(0, || {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert!(t >= 0.0 && n == 1);
    }
}
