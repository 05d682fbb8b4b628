//! Zipf laws over feature ranks: ρ_r ≈ C·(r + β)^−α with r ∈ 1..F the rank by density.
//!
//! Fitting (project choice): take the features with positive density, ranked descending, keep
//! the first `head` share of them, and for each β on a fixed grid fit log ρ = log C − α·log(r+β)
//! by least squares; keep the β with the best R².

/// A fitted (or given) Zipf law.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZipfFit {
    pub alpha: f64,
    pub beta: f64,
    pub log_c: f64,
    /// Coefficient of determination of the log–log fit (NaN when not fitted).
    pub r2: f64,
}

/// β values tried by [`fit`].
pub const BETA_GRID: [f64; 10] = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

/// Feature indices ordered by density descending (ties: lower index first).
pub fn rank_order(density: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..density.len()).collect();
    order.sort_by(|&i, &j| density[j].total_cmp(&density[i]).then(i.cmp(&j)));
    order
}

/// Least-squares fit over the head of the rank curve; `None` with fewer than 3 usable points.
/// `betas`: the β values to try (use `&[b]` to fix β).
pub fn fit(density: &[f32], head: f64, betas: &[f64]) -> Option<ZipfFit> {
    let order = rank_order(density);
    let positive: Vec<f64> = order
        .iter()
        .map(|&j| density[j] as f64)
        .take_while(|&d| d > 0.0)
        .collect();
    let n = ((positive.len() as f64 * head).ceil() as usize).min(positive.len());
    if n < 3 {
        return None;
    }
    let ys: Vec<f64> = positive[..n].iter().map(|d| d.ln()).collect();
    let mut best: Option<ZipfFit> = None;
    for &beta in betas {
        let xs: Vec<f64> = (1..=n).map(|r| (r as f64 + beta).ln()).collect();
        let mx = xs.iter().sum::<f64>() / n as f64;
        let my = ys.iter().sum::<f64>() / n as f64;
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let syy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
        if sxx <= 0.0 {
            continue;
        }
        let slope = sxy / sxx;
        let log_c = my - slope * mx;
        let r2 = if syy > 0.0 {
            (sxy * sxy) / (sxx * syy)
        } else {
            1.0
        };
        let cand = ZipfFit {
            alpha: -slope,
            beta,
            log_c,
            r2,
        };
        if best.is_none_or(|b| cand.r2 > b.r2) {
            best = Some(cand);
        }
    }
    best
}

/// Target densities τ_r = C·(r + β)^−α for ranks r = 1..=f, scaled so Σ τ = `total`.
pub fn targets(f: usize, alpha: f64, beta: f64, total: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=f).map(|r| (r as f64 + beta).powf(-alpha)).collect();
    let s: f64 = raw.iter().sum();
    raw.iter().map(|x| x / s * total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_clean_power_law() {
        let f = 500;
        // density of feature j at rank j+1 with alpha 1.2, beta 5 (permuted indices).
        let mut d = vec![0f32; f];
        for r in 1..=f {
            d[(r * 7) % f] = (2.0 * (r as f64 + 5.0).powf(-1.2)) as f32;
        }
        let fit = fit(&d, 1.0, &BETA_GRID).unwrap();
        assert!((fit.alpha - 1.2).abs() < 0.01, "{fit:?}");
        assert_eq!(fit.beta, 5.0);
        assert!(fit.r2 > 0.999);
    }

    #[test]
    fn targets_sum_to_total() {
        let t = targets(100, 1.0, 2.0, 7.5);
        assert!((t.iter().sum::<f64>() - 7.5).abs() < 1e-9);
        assert!(t.windows(2).all(|w| w[0] >= w[1]));
    }
}
