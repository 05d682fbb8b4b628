//! Deterministic parallel reductions: the input is cut into fixed-size chunks (independent of
//! the thread count), each reduced in order, and the partial results combined in chunk order.

use rayon::prelude::*;

/// Rows per chunk of the row reductions.
const ROWS: usize = 64;

/// Column sums of a row-major n×d matrix, accumulated in f64 then rounded to f32:
/// out_l = Σ_i v_il.
pub fn column_sums_f64(v: &[f32], d: usize) -> Vec<f64> {
    if d == 0 {
        return Vec::new();
    }
    let parts: Vec<Vec<f64>> = v
        .par_chunks(ROWS * d)
        .map(|c| {
            let mut s = vec![0f64; d];
            for row in c.chunks_exact(d) {
                s.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
            }
            s
        })
        .collect();
    let mut out = vec![0f64; d];
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, p)| *o += p);
    }
    out
}

/// Σ‖v_i − v̄‖² over the rows of a row-major n×d matrix, in f64 (v̄ the row mean).
/// Same quantity as [`crate::sae::reference::total_variance`], computed in parallel.
pub fn total_variance(v: &[f32], d: usize) -> f64 {
    if d == 0 || v.len() < d {
        return 0.0;
    }
    let n = v.len() / d;
    let mut mean = column_sums_f64(v, d);
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let parts: Vec<f64> = v
        .par_chunks(ROWS * d)
        .map(|c| {
            c.chunks_exact(d)
                .map(|row| {
                    row.iter()
                        .zip(&mean)
                        .map(|(&x, m)| (x as f64 - m).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_variance_matches_reference() {
        let d = 7;
        let v: Vec<f32> = (0..d * 300)
            .map(|i| ((i * 37 % 101) as f32).sin() * 3.0 + 1.0)
            .collect();
        let want = crate::sae::reference::total_variance(&v, d);
        let got = total_variance(&v, d);
        assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        assert_eq!(total_variance(&[], 3), 0.0);
    }
}
