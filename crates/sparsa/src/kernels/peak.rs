//! The machine's fused-multiply-add peak, measured: every thread of the current rayon pool
//! runs a register-only loop of independent FMAs (16 accumulators, enough to cover the FMA
//! latency on two ports), and the figure is total FLOPs (2 per lane per FMA) / wall time.
//! [`measure_bf16`] does the same for the bf16 product instructions (AMX tiles, `vdpbf16ps`).

use crate::kernels::bf16::Bf16Kernel;
use std::time::Instant;

/// Which vector width the measurement used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FmaIsa {
    Avx512,
    Avx2,
    Scalar,
}

impl FmaIsa {
    pub fn name(self) -> &'static str {
        match self {
            FmaIsa::Avx512 => "avx512f",
            FmaIsa::Avx2 => "avx2+fma",
            FmaIsa::Scalar => "scalar",
        }
    }
    /// f32 lanes per FMA instruction.
    pub fn lanes(self) -> usize {
        match self {
            FmaIsa::Avx512 => 16,
            FmaIsa::Avx2 => 8,
            FmaIsa::Scalar => 1,
        }
    }
}

/// A measured peak.
#[derive(Debug, Clone, Copy)]
pub struct FmaPeak {
    pub isa: FmaIsa,
    pub threads: usize,
    /// GFLOP/s over all threads (an FMA counts 2 FLOPs per lane).
    pub gflops: f64,
}

const ACC: usize = 16;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn loop_avx512(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); ACC];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn loop_avx2(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(seed); ACC];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for r in acc {
        s = _mm256_add_ps(s, r);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn loop_scalar(iters: u64, seed: f32) -> f32 {
    let mut acc = [seed; ACC];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = r.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// The widest FMA instruction set this CPU has.
pub fn best_isa() -> FmaIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return FmaIsa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return FmaIsa::Avx2;
        }
    }
    FmaIsa::Scalar
}

fn run(isa: FmaIsa, iters: u64, seed: f32) -> f32 {
    match isa {
        // SAFETY: `best_isa` only returns an ISA the CPU supports.
        #[cfg(target_arch = "x86_64")]
        FmaIsa::Avx512 => unsafe { loop_avx512(iters, seed) },
        #[cfg(target_arch = "x86_64")]
        FmaIsa::Avx2 => unsafe { loop_avx2(iters, seed) },
        _ => loop_scalar(iters, seed),
    }
}

/// Measure the FMA peak on all threads of the current rayon pool: `iters` loop iterations per
/// thread (each 16 FMAs), best of `reps` runs.
pub fn measure(iters: u64, reps: usize) -> FmaPeak {
    let isa = best_isa();
    let threads = rayon::current_num_threads();
    let mut best = 0f64;
    for rep in 0..reps.max(1) {
        let t0 = Instant::now();
        let sums = rayon::broadcast(|ctx| run(isa, iters, 1.0 + ctx.index() as f32 + rep as f32));
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        let flops = (threads as u64 * iters * ACC as u64 * isa.lanes() as u64 * 2) as f64;
        best = best.max(flops / secs / 1e9);
    }
    FmaPeak {
        isa,
        threads,
        gflops: best,
    }
}

/// A measured bf16 product peak.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Peak {
    pub kernel: Bf16Kernel,
    pub threads: usize,
    /// GFLOP/s over all threads (a product counts 2 FLOPs).
    pub gflops: f64,
}

/// Measure the bf16 product peak of `kernel` on all threads of the current rayon pool:
/// `rounds` rounds per thread of independent register- or tile-only products, best of `reps`
/// runs. `None` when the CPU cannot run the kernel. On this project's Sapphire Rapids machine
/// `vdpbf16ps` issues at half the f32 FMA rate (≈ 105 against ≈ 210 GFLOP/s per core), and
/// AMX reaches ≈ 2,900 GFLOP/s per core.
pub fn measure_bf16(kernel: Bf16Kernel, rounds: u64, reps: usize) -> Option<Bf16Peak> {
    if !kernel.supported() {
        return None;
    }
    let threads = rayon::current_num_threads();
    let mut best = 0f64;
    for rep in 0..reps.max(1) {
        let t0 = Instant::now();
        let sums = rayon::broadcast(|ctx| kernel.peak_round(rounds, (ctx.index() + rep) as f32));
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        best = best.max(threads as f64 * rounds as f64 * kernel.flops_per_round() / secs / 1e9);
    }
    Some(Bf16Peak {
        kernel,
        threads,
        gflops: best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_peak_is_positive_where_a_kernel_runs() {
        for k in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
            match measure_bf16(k, 1000, 1) {
                Some(p) => assert!(p.gflops.is_finite() && p.gflops > 0.0, "{}", k.name()),
                None => assert!(!k.supported()),
            }
        }
    }

    #[test]
    fn peak_is_positive_and_finite() {
        let p = measure(1000, 1);
        assert!(p.gflops.is_finite() && p.gflops > 0.0);
        assert!(p.threads >= 1);
    }
}
