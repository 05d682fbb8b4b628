//! The encoder product C (m×n) = A (m×k) · Bᵀ, with B stored n×k row-major (B = W_enc, one row
//! per feature). `gemm` is called with the same strides and arguments as candle 0.11's CPU
//! matmul (`lhs.matmul(&rhs.t())`), so the result is bit-identical to the reference path's
//! pre-activations; what it saves is candle's fresh zeroed output buffer per call (B×F floats,
//! 400 MB at the default size) and the tensor copies around it.

use gemm::{gemm, Parallelism};

/// Which dense-product implementation to use (the benchmark compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulImpl {
    /// `gemm` crate called directly into a reused buffer (the fast path's choice).
    Gemm,
    /// candle's `Tensor::matmul` (the reference path's product), copied into the buffer.
    Candle,
}

/// C = A·Bᵀ: `a` m×k row-major, `b` n×k row-major, `c` m×n row-major (overwritten).
/// Runs on the current rayon pool's threads.
///
/// # Panics
/// If a slice length does not match its shape (an internal invariant; the raw product below
/// must never read or write out of bounds).
pub fn matmul_abt(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    assert!(
        a.len() == m * k && b.len() == n * k && c.len() == m * n,
        "matmul_abt: shape mismatch"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserted lengths bound every access: A is read at rows < m (stride k) and
    // columns < k, Bᵀ as the k×n view of `b` (row stride 1, column stride k), C written at
    // rows < m (stride n), columns < n.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// The same product through candle (`Tensor::matmul` of A and the transposed view of B),
/// copied into `c`. For the benchmark's comparison and tests.
pub fn matmul_abt_candle(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) -> candle_core::Result<()> {
    use candle_core::{Device, Tensor};
    let at = Tensor::from_slice(a, (m, k), &Device::Cpu)?;
    let bt = Tensor::from_slice(b, (n, k), &Device::Cpu)?;
    let out = at.matmul(&bt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    c.copy_from_slice(&out);
    Ok(())
}

/// Dispatch on [`MatmulImpl`].
pub fn matmul_abt_with(
    which: MatmulImpl,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) -> candle_core::Result<()> {
    match which {
        MatmulImpl::Gemm => {
            matmul_abt(a, b, c, m, n, k);
            Ok(())
        }
        MatmulImpl::Candle => matmul_abt_candle(a, b, c, m, n, k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gemm_is_bit_identical_to_candle_and_close_to_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(m, n, k) in &[
            (7usize, 13usize, 5usize),
            (64, 200, 48),
            (1, 3, 1),
            (33, 1, 17),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut c1 = vec![f32::NAN; m * n];
            let mut c2 = vec![0f32; m * n];
            matmul_abt(&a, &b, &mut c1, m, n, k);
            matmul_abt_candle(&a, &b, &mut c2, m, n, k).unwrap();
            assert_eq!(c1, c2, "{m}x{n}x{k}");
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| a[i * k + t] as f64 * b[j * k + t] as f64)
                        .sum();
                    assert!(
                        (c1[i * n + j] as f64 - want).abs() < 1e-4,
                        "{m}x{n}x{k} at {i},{j}"
                    );
                }
            }
        }
    }
}
