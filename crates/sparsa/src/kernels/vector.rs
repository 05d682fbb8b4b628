//! Small dense-vector kernels for the sparse decode and backward (rows of width d).
//!
//! `dot` (and `dot4`, four at once) keeps 32 independent lane accumulators and combines them in
//! a fixed order; `axpy` and the row sums `gather_sum` / `gather_rows_sum` add each row's
//! products lane by lane in row order. Every result is a fixed function of the inputs: the same
//! on every instruction set (the AVX-512 paths do the same per-lane multiplies and adds, never a
//! fused multiply-add) and every thread count.

const L: usize = 32;

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    combine(acc) + tail
}

#[inline(always)]
fn axpy_body(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_body(alpha, x, y)
}

/// Σ_l a_l·b_l over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { dot_avx512(a, b) };
    }
    dot_body(a, b)
}

/// y ← y + α·x over the common length.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { axpy_avx512(alpha, x, y) };
    }
    axpy_body(alpha, x, y)
}

/// [`dot`] of four rows with one vector: `[rows[0]·v, …, rows[3]·v]`, each bit-identical to
/// [`dot`] (the same 32-lane sums and combine). The AVX-512 path runs the four dots' eight
/// accumulator chains together, hiding the add latency a single dot waits on.
pub fn dot4(rows: [&[f32]; 4], v: &[f32]) -> [f32; 4] {
    let n = v.len();
    assert!(
        rows.iter().all(|r| r.len() == n),
        "dot4: rows of the vector's length"
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { dot4_avx512(rows, v) };
    }
    rows.map(|r| dot_body(r, v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot4_avx512(rows: [&[f32]; 4], v: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = v.len();
    let full = n / L * L;
    let mut lo = [_mm512_setzero_ps(); 4];
    let mut hi = [_mm512_setzero_ps(); 4];
    let mut c = 0;
    while c < full {
        let y0 = _mm512_loadu_ps(v.as_ptr().add(c));
        let y1 = _mm512_loadu_ps(v.as_ptr().add(c + 16));
        for r in 0..4 {
            let x0 = _mm512_loadu_ps(rows[r].as_ptr().add(c));
            let x1 = _mm512_loadu_ps(rows[r].as_ptr().add(c + 16));
            lo[r] = _mm512_add_ps(lo[r], _mm512_mul_ps(x0, y0));
            hi[r] = _mm512_add_ps(hi[r], _mm512_mul_ps(x1, y1));
        }
        c += L;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = [0f32; L];
        _mm512_storeu_ps(acc.as_mut_ptr(), lo[r]);
        _mm512_storeu_ps(acc.as_mut_ptr().add(16), hi[r]);
        let mut tail = 0f32;
        for (x, y) in rows[r][full..].iter().zip(&v[full..]) {
            tail += x * y;
        }
        out[r] = combine(acc) + tail;
    }
    out
}

/// The fixed pairwise combine of [`dot`]'s lane accumulators.
#[inline(always)]
fn combine(mut acc: [f32; L]) -> f32 {
    let mut w = L;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// Columns per call of [`gather_sum`]: 16 AVX-512 registers of accumulators.
pub const GATHER_TILE: usize = 256;

/// out[l] = Σ_t vals[t]·W[js[t]][c0 + l] for l < out.len() ≤ [`GATHER_TILE`], summed in the
/// order of `js` from 0 (W is row-major with rows of width d). Each lane's sum is the same
/// sequence of multiplies and adds as `out.fill(0)` then one [`axpy`] per row, so the result is
/// bit-identical to that; the AVX-512 path keeps the accumulators in registers and reads each
/// row's columns once.
pub fn gather_sum(w: &[f32], d: usize, c0: usize, js: &[u32], vals: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(
        n <= GATHER_TILE && c0 + n <= d,
        "gather_sum: columns {c0}..{} of {d}",
        c0 + n
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        let nz = n / 16;
        // SAFETY: the CPU supports AVX-512F (checked above); every row read is bounds-checked.
        unsafe {
            match nz {
                16 => gather_sum_avx512::<16>(w, d, c0, js, vals, out),
                15 => gather_sum_avx512::<15>(w, d, c0, js, vals, out),
                14 => gather_sum_avx512::<14>(w, d, c0, js, vals, out),
                13 => gather_sum_avx512::<13>(w, d, c0, js, vals, out),
                12 => gather_sum_avx512::<12>(w, d, c0, js, vals, out),
                11 => gather_sum_avx512::<11>(w, d, c0, js, vals, out),
                10 => gather_sum_avx512::<10>(w, d, c0, js, vals, out),
                9 => gather_sum_avx512::<9>(w, d, c0, js, vals, out),
                8 => gather_sum_avx512::<8>(w, d, c0, js, vals, out),
                7 => gather_sum_avx512::<7>(w, d, c0, js, vals, out),
                6 => gather_sum_avx512::<6>(w, d, c0, js, vals, out),
                5 => gather_sum_avx512::<5>(w, d, c0, js, vals, out),
                4 => gather_sum_avx512::<4>(w, d, c0, js, vals, out),
                3 => gather_sum_avx512::<3>(w, d, c0, js, vals, out),
                2 => gather_sum_avx512::<2>(w, d, c0, js, vals, out),
                1 => gather_sum_avx512::<1>(w, d, c0, js, vals, out),
                _ => {}
            }
        }
        let done = nz * 16;
        if done < n {
            let rest = &mut out[done..];
            rest.fill(0.0);
            for (&j, &v) in js.iter().zip(vals) {
                let r = j as usize * d + c0 + done;
                axpy(v, &w[r..r + rest.len()], rest);
            }
        }
        return;
    }
    out.fill(0.0);
    for (&j, &v) in js.iter().zip(vals) {
        let r = j as usize * d + c0;
        axpy_body(v, &w[r..r + n], out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_sum_avx512<const NZ: usize>(
    w: &[f32],
    d: usize,
    c0: usize,
    js: &[u32],
    vals: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); NZ];
    for (&j, &v) in js.iter().zip(vals) {
        let r = j as usize * d + c0;
        let row = &w[r..r + 16 * NZ];
        let va = _mm512_set1_ps(v);
        for (z, acc) in acc.iter_mut().enumerate() {
            // Multiply, then add (no fused multiply-add): the same rounding as `axpy`.
            let x = _mm512_loadu_ps(row.as_ptr().add(16 * z));
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(va, x));
        }
    }
    let out = &mut out[..16 * NZ];
    for (z, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * z), *acc);
    }
}

/// out[t] = W[js[t]]·v for rows of width v.len() of the row-major W, each bit-identical to
/// [`dot`]; four at a time through [`dot4`].
pub fn gather_dots(w: &[f32], js: &[u32], v: &[f32], out: &mut [f32]) {
    let d = v.len();
    let row = |j: u32| &w[j as usize * d..(j as usize + 1) * d];
    let mut quads = js.chunks_exact(4).zip(out.chunks_exact_mut(4));
    for (j4, o4) in &mut quads {
        o4.copy_from_slice(&dot4([row(j4[0]), row(j4[1]), row(j4[2]), row(j4[3])], v));
    }
    let done = js.len().min(out.len()) / 4 * 4;
    for (&j, o) in js[done..].iter().zip(&mut out[done..]) {
        *o = dot(row(j), v);
    }
}

/// out = Σ_t vals[t]·W[js[t]] for rows of width out.len() of the row-major W, by column tiles
/// of [`gather_sum`]: bit-identical to `out.fill(0)` then one [`axpy`] per row.
pub fn gather_rows_sum(w: &[f32], js: &[u32], vals: &[f32], out: &mut [f32]) {
    let d = out.len();
    for c0 in (0..d).step_by(GATHER_TILE) {
        let c1 = (c0 + GATHER_TILE).min(d);
        gather_sum(w, d, c0, js, vals, &mut out[c0..c1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_naive_and_generic() {
        for n in [0usize, 1, 5, 31, 32, 33, 100, 768] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot(&a, &b);
            assert!(
                (got as f64 - naive).abs() < 1e-4 * (1.0 + naive.abs()),
                "{n}"
            );
            assert_eq!(
                got.to_bits(),
                dot_body(&a, &b).to_bits(),
                "ISA-independent, n = {n}"
            );
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            for i in 0..n {
                assert_eq!(y[i], b[i] + 0.5 * a[i]);
            }
        }
    }

    /// `dot4` equals four `dot`s bit for bit, with and without a tail past the 32 lanes.
    #[test]
    fn dot4_equals_dot_bit_for_bit() {
        for n in [0usize, 5, 32, 45, 768, 770] {
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..n)
                        .map(|i| ((i * 13 + r * 7) % 29) as f32 / 9.0 - 1.5)
                        .collect()
                })
                .collect();
            let v: Vec<f32> = (0..n).map(|i| ((i * 5 % 17) as f32 - 8.0) / 3.0).collect();
            let got = dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &v);
            for r in 0..4 {
                assert_eq!(
                    got[r].to_bits(),
                    dot(&rows[r], &v).to_bits(),
                    "n {n}, row {r}"
                );
            }
        }
    }

    /// `gather_sum` equals zero-fill + one axpy per row bit for bit, for every tile width
    /// (whole registers and a scalar tail), column offset and the generic path.
    #[test]
    fn gather_sum_equals_axpy_rows_bit_for_bit() {
        let (d, f) = (300usize, 9usize);
        let w: Vec<f32> = (0..f * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let js = [3u32, 0, 8, 3, 5];
        let vals = [0.7f32, -1.3, 0.01, 2.5, -0.4];
        for (c0, n) in [
            (0usize, 256usize),
            (44, 256),
            (0, 17),
            (5, 16),
            (290, 10),
            (0, 0),
        ] {
            let mut want = vec![0f32; n];
            for (&j, &v) in js.iter().zip(&vals) {
                let r = j as usize * d + c0;
                axpy_body(v, &w[r..r + n], &mut want);
            }
            let mut got = vec![f32::NAN; n];
            gather_sum(&w, d, c0, &js, &vals, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "columns {c0}+{n}");
        }
    }
}
