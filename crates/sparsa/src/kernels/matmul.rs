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

/// A row-major matrix operand of [`gemm_into`]: `data` holds `rows × cols` (of the stored
/// matrix); `t` reads it transposed, so the operand seen by the product is `cols × rows`.
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub t: bool,
}

impl<'a, T> Operand<'a, T> {
    /// The stored matrix as is.
    pub fn n(data: &'a [T], rows: usize, cols: usize) -> Self {
        Operand {
            data,
            rows,
            cols,
            t: false,
        }
    }
    /// The stored matrix transposed.
    pub fn t(data: &'a [T], rows: usize, cols: usize) -> Self {
        Operand {
            data,
            rows,
            cols,
            t: true,
        }
    }
    /// (rows, cols) of the operand as the product sees it.
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) of the operand as the product sees it.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// C (m×n, row-major) = A·B, or C += A·B when `accumulate`, for f32 or f64, on `gemm`'s
/// runtime-dispatched kernels. `threads` > 1 lets `gemm` split the product over the current
/// rayon pool; 1 runs it on the calling thread (the fused image-classifier engine calls it once
/// per cache-sized tile from its own parallel loop). For a fixed shape and thread setting the
/// result is bit-reproducible.
///
/// # Panics
/// If the operand shapes do not chain or a slice is shorter than its shape (an internal
/// invariant: the raw product below must never read or write out of bounds).
pub fn gemm_into<T: 'static + Copy + Default>(
    c: &mut [T],
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: bool,
    threads: usize,
    one: T,
) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert!(
        k == k2
            && a.data.len() >= a.rows * a.cols
            && b.data.len() >= b.rows * b.cols
            && c.len() >= m * n,
        "gemm_into: shape mismatch"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(T::default());
        }
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    // SAFETY: the asserted lengths bound every access: A is read at (i < m, t < k) through its
    // strides (row-major rows×cols storage, transposed or not), B at (t < k, j < n), C written
    // at rows < m (stride n), columns < n.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            one,
            one,
            false,
            false,
            false,
            par,
        );
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

    #[test]
    fn gemm_into_matches_naive_for_every_transpose_and_accumulates() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (m, n, k) = (9usize, 7usize, 13usize);
        let a: Vec<f64> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want: Vec<f64> = (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|t| a[(ij / n) * k + t] * b[t * n + ij % n])
                    .sum()
            })
            .collect();
        for threads in [1, 2] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let ao = if ta {
                    Operand::t(&at, k, m)
                } else {
                    Operand::n(&a, m, k)
                };
                let bo = if tb {
                    Operand::t(&bt, n, k)
                } else {
                    Operand::n(&b, k, n)
                };
                let mut c = vec![1.0f64; m * n];
                gemm_into(&mut c, ao, bo, true, threads, 1.0);
                for (x, w) in c.iter().zip(&want) {
                    assert!((x - 1.0 - w).abs() < 1e-12, "{ta} {tb}");
                }
                gemm_into(&mut c, ao, bo, false, threads, 1.0);
                for (x, w) in c.iter().zip(&want) {
                    assert!((x - w).abs() < 1e-12, "{ta} {tb}");
                }
            }
        }
    }
}
