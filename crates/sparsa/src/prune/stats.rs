//! Small-sample statistics for the pruning reports: mean, sample standard deviation and the
//! t-based 95 % confidence interval of a mean over seeds.
//!
//! For n values with mean m and sample standard deviation s, the interval is
//! `m ± t_{0.975, n−1} · s / √n`. Seeds are the independent units: every number fed here is one
//! per seed (a per-round paired difference, or a per-seed average over rounds), never one per
//! round of the same chain of masks.

/// Two-sided 95 % quantiles t_{0.975, ν} of Student's t for ν = 1 … 30.
const T975: [f64; 30] = [
    12.706_204_7,
    4.302_652_7,
    3.182_446_3,
    2.776_445_1,
    2.570_581_8,
    2.446_911_9,
    2.364_624_3,
    2.306_004_1,
    2.262_157_2,
    2.228_138_9,
    2.200_985_2,
    2.178_812_8,
    2.160_368_7,
    2.144_786_7,
    2.131_449_5,
    2.119_905_3,
    2.109_815_5,
    2.100_922_0,
    2.093_024_1,
    2.085_963_4,
    2.079_613_8,
    2.073_873_1,
    2.068_657_6,
    2.063_898_6,
    2.059_538_6,
    2.055_529_4,
    2.051_830_5,
    2.048_407_1,
    2.045_229_6,
    2.042_272_5,
];

/// t_{0.975, ν}: the table for ν ≤ 30, the Cornish–Fisher expansion around the normal quantile
/// beyond (error below 1e-5 there). NaN for ν = 0.
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => {
            let z = 1.959_963_984_540_054f64;
            let v = df as f64;
            let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
            z + (z3 + z) / (4.0 * v)
                + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
                + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v * v * v)
        }
    }
}

/// A mean over independent values with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); 0 for one value.
    pub sd: f64,
    /// Half-width t_{0.975, n−1} · sd / √n; NaN for fewer than two values.
    pub half_width: f64,
}

impl MeanCi {
    pub fn of(v: &[f64]) -> MeanCi {
        let n = v.len();
        if n == 0 {
            return MeanCi {
                n,
                mean: f64::NAN,
                sd: f64::NAN,
                half_width: f64::NAN,
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return MeanCi {
                n,
                mean,
                sd: 0.0,
                half_width: f64::NAN,
            };
        }
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n as f64 - 1.0);
        let sd = var.sqrt();
        MeanCi {
            n,
            mean,
            sd,
            half_width: t975(n - 1) * sd / (n as f64).sqrt(),
        }
    }

    pub fn lo(&self) -> f64 {
        self.mean - self.half_width
    }

    pub fn hi(&self) -> f64 {
        self.mean + self.half_width
    }

    /// Whether the interval lies entirely above 0 (+1), entirely below (−1), or covers 0 or is
    /// undefined (0).
    pub fn sign(&self) -> i8 {
        if self.lo() > 0.0 {
            1
        } else if self.hi() < 0.0 {
            -1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_matches_a_hand_computation() {
        // Paired differences over 5 seeds (pp): 0.3, −0.1, 0.4, 0.2, 0.0.
        // mean = 0.8 / 5 = 0.16; deviations 0.14, −0.26, 0.24, 0.04, −0.16;
        // squares 0.0196 + 0.0676 + 0.0576 + 0.0016 + 0.0256 = 0.172; var = 0.172 / 4 = 0.043;
        // sd = 0.207364…; half-width = 2.7764451 · 0.207364 / √5 = 0.257477…
        let c = MeanCi::of(&[0.3, -0.1, 0.4, 0.2, 0.0]);
        assert_eq!(c.n, 5);
        assert!((c.mean - 0.16).abs() < 1e-12);
        assert!((c.sd - 0.043f64.sqrt()).abs() < 1e-12);
        let hw = 2.776_445_1 * 0.043f64.sqrt() / 5f64.sqrt();
        assert!((c.half_width - hw).abs() < 1e-12);
        assert!((c.half_width - 0.257_477).abs() < 1e-6, "{}", c.half_width);
        assert!((c.lo() - (0.16 - 0.257_477)).abs() < 1e-6);
        assert_eq!(c.sign(), 0);
        // Three seeds: 1, 2, 3 → mean 2, sd 1, half-width 4.3026527 / √3 = 2.484138…
        let c = MeanCi::of(&[1.0, 2.0, 3.0]);
        assert!((c.half_width - 2.484_138).abs() < 1e-6);
        assert_eq!(c.sign(), 0);
        let c = MeanCi::of(&[-1.0, -1.1, -0.9, -1.05]);
        assert_eq!(c.sign(), -1);
        // One value: no interval.
        assert!(MeanCi::of(&[0.5]).half_width.is_nan());
        assert_eq!(MeanCi::of(&[0.5]).sign(), 0);
    }

    #[test]
    fn t_quantiles() {
        assert!((t975(4) - 2.776_445).abs() < 1e-6);
        // Beyond the table: t_{0.975, 40} = 2.021075, t_{0.975, 120} = 1.979930.
        assert!((t975(40) - 2.021_075).abs() < 2e-5, "{}", t975(40));
        assert!((t975(120) - 1.979_930).abs() < 2e-5, "{}", t975(120));
        // Continuous at the seam and decreasing.
        assert!(t975(31) < t975(30) && t975(31) > 2.03);
    }
}
