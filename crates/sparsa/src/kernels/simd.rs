//! The widest vector instructions the hand-written kernels use: the CPU's, capped by the
//! environment variable `SPARSA_SIMD`.
//!
//! | `SPARSA_SIMD` | kernels that run |
//! |---|---|
//! | unset, `auto` or `avx512` | the CPU's widest: AVX-512F, else AVX2 with FMA, else portable |
//! | `avx2` | AVX2 with FMA even where AVX-512F is present (else portable) |
//! | `portable` | no hand-written vector kernels: the portable loops, and for the `nn` engine the im2col / GEMM and Winograd paths |
//!
//! The cap is how one machine runs every build of the kernels: CI runs the `nn` and SAE parity
//! tests again under `SPARSA_SIMD=avx2` and `=portable`, so the 8-lane and portable builds are
//! checked on AVX-512 machines too. It is read, and met with the CPU's features, once per
//! process. The bf16 products have their own switch
//! (`SPARSA_BF16_KERNEL`, [`super::bf16`]); `gemm`'s kernels are not capped.

use std::sync::OnceLock;

/// A cap on the kernels' instruction set, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// No hand-written vector kernels.
    Portable,
    /// AVX2 with FMA (8-lane vectors) at most.
    Avx2,
    /// AVX-512F (16-lane vectors) at most: no cap.
    Avx512,
}

impl Simd {
    /// The cap a value of `SPARSA_SIMD` asks for (`None`, empty or `auto`: no cap).
    pub fn parse(value: Option<&str>) -> Result<Simd, String> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") | Some("avx512") => Ok(Simd::Avx512),
            Some("avx2") => Ok(Simd::Avx2),
            Some("portable") => Ok(Simd::Portable),
            Some(other) => Err(format!(
                "SPARSA_SIMD={other:?}: expected avx512, avx2, portable or auto"
            )),
        }
    }

    /// [`Simd::parse`] of the `SPARSA_SIMD` environment variable (the CLI checks it at start-up
    /// and refuses a bad value).
    pub fn from_env() -> Result<Simd, String> {
        Simd::parse(std::env::var("SPARSA_SIMD").ok().as_deref())
    }
}

/// The cap in force: `SPARSA_SIMD`, read once. A bad value is reported once on stderr and
/// ignored (the library has no error path here; the CLI refuses it before any work).
pub fn cap() -> Simd {
    static CAP: OnceLock<Simd> = OnceLock::new();
    *CAP.get_or_init(|| {
        Simd::from_env().unwrap_or_else(|e| {
            eprintln!("warning: {e}; the CPU's widest kernels run");
            Simd::Avx512
        })
    })
}

/// The set the kernels run: the CPU's widest, at most the cap; decided once.
fn level() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| cap().min(cpu()))
}

/// The widest set this CPU has.
fn cpu() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Every AVX-512F CPU also has AVX2 and FMA.
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
    }
    Simd::Portable
}

/// Whether the kernels' 16-lane AVX-512F builds run: the CPU has AVX-512F and the cap allows it.
#[inline]
pub fn avx512() -> bool {
    level() >= Simd::Avx512
}

/// Whether the kernels' 8-lane AVX2 + FMA builds may run: the CPU has both and the cap allows
/// it (true on AVX-512 CPUs too; the tests run both builds there).
#[inline]
pub fn avx2_fma() -> bool {
    level() >= Simd::Avx2
}

#[cfg(test)]
mod tests {
    use super::Simd;

    #[test]
    fn values_parse_and_bad_ones_are_named() {
        assert_eq!(Simd::parse(None), Ok(Simd::Avx512));
        assert_eq!(Simd::parse(Some(" auto ")), Ok(Simd::Avx512));
        assert_eq!(Simd::parse(Some("avx2")), Ok(Simd::Avx2));
        assert_eq!(Simd::parse(Some("portable")), Ok(Simd::Portable));
        let err = Simd::parse(Some("sse9")).unwrap_err();
        assert!(err.contains("SPARSA_SIMD") && err.contains("sse9"), "{err}");
        assert!(Simd::Portable < Simd::Avx2 && Simd::Avx2 < Simd::Avx512);
    }
}
