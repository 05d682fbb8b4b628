//! Synthetic ground truth: a toy model of superposition (`shared/spec/sae.md`).
//!
//! A dictionary G of N unit vectors in R^d (N > d: superposition). Sample s draws a complexity
//! multiplier λ_s log-uniform in [1/spread, spread]; feature i is present with probability
//! min(1, λ_s·p_i), p_i ∝ (i+1)^−ζ (Zipf) scaled so Σ p_i = `mean_active`; present features get
//! positive magnitudes uniform in [mag_min, mag_max]; x = Σ c_i g_i + Gaussian noise. The number of
//! present features therefore varies strongly across samples, which is where adaptive allocation
//! matters. Row r is generated from its own counter-based stream (seed, r): any row is
//! reproducible and skipping is O(1).

use super::activations::{BatchSource, DataError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// `[data.synthetic]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Width of each sample.
    pub d: usize,
    /// Ground-truth features N.
    pub n_features: usize,
    /// Expected present features per sample before the complexity multiplier.
    #[serde(default = "default_mean_active")]
    pub mean_active: f64,
    /// Zipf exponent ζ of the feature probabilities.
    #[serde(default = "default_zipf")]
    pub zipf_exponent: f64,
    /// Complexity multipliers λ are log-uniform in [1/spread, spread] (1 = no variation).
    #[serde(default = "default_spread")]
    pub complexity_spread: f64,
    #[serde(default = "default_mag_min")]
    pub magnitude_min: f64,
    #[serde(default = "default_mag_max")]
    pub magnitude_max: f64,
    /// Standard deviation of the additive Gaussian noise per coordinate.
    #[serde(default = "default_noise")]
    pub noise_std: f64,
    /// Seed of the dictionary and the samples.
    #[serde(default)]
    pub seed: u64,
}

fn default_mean_active() -> f64 {
    4.0
}
fn default_zipf() -> f64 {
    0.5
}
fn default_spread() -> f64 {
    3.0
}
fn default_mag_min() -> f64 {
    0.5
}
fn default_mag_max() -> f64 {
    1.5
}
fn default_noise() -> f64 {
    0.01
}

impl SyntheticConfig {
    /// A configuration with the given sizes and defaults elsewhere.
    pub fn new(d: usize, n_features: usize, seed: u64) -> Self {
        SyntheticConfig {
            d,
            n_features,
            mean_active: default_mean_active(),
            zipf_exponent: default_zipf(),
            complexity_spread: default_spread(),
            magnitude_min: default_mag_min(),
            magnitude_max: default_mag_max(),
            noise_std: default_noise(),
            seed,
        }
    }

    fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Invalid(format!("[data.synthetic] {m}")));
        if self.d == 0 || self.n_features == 0 {
            return bad("d and n_features must be at least 1".into());
        }
        if !(self.mean_active > 0.0 && self.mean_active <= self.n_features as f64) {
            return bad(format!(
                "mean_active = {} must be in (0, n_features]",
                self.mean_active
            ));
        }
        if self.complexity_spread.is_nan() || self.complexity_spread < 1.0 {
            return bad(format!(
                "complexity_spread = {} must be ≥ 1",
                self.complexity_spread
            ));
        }
        if !(self.magnitude_min > 0.0 && self.magnitude_max >= self.magnitude_min) {
            return bad("magnitudes need 0 < magnitude_min ≤ magnitude_max".into());
        }
        if !(self.noise_std >= 0.0 && self.zipf_exponent >= 0.0) {
            return bad("noise_std and zipf_exponent must be ≥ 0".into());
        }
        Ok(())
    }
}

/// An endless, seekable stream of synthetic samples.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    cfg: SyntheticConfig,
    /// Ground-truth dictionary, N×d row-major, unit rows.
    dict: Vec<f32>,
    /// Base presence probabilities p_i.
    p: Vec<f64>,
    next_row: u64,
}

impl SyntheticSource {
    pub fn new(cfg: SyntheticConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let (d, n) = (cfg.d, cfg.n_features);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(u64::MAX);
        let mut dict = vec![0f32; n * d];
        for row in dict.chunks_mut(d) {
            loop {
                for v in row.iter_mut() {
                    *v = rng.sample::<f32, _>(StandardNormal);
                }
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 1e-6 {
                    row.iter_mut().for_each(|v| *v /= norm);
                    break;
                }
            }
        }
        let raw: Vec<f64> = (0..n)
            .map(|i| ((i + 1) as f64).powf(-cfg.zipf_exponent))
            .collect();
        let s: f64 = raw.iter().sum();
        let p = raw.iter().map(|r| r / s * cfg.mean_active).collect();
        Ok(SyntheticSource {
            cfg,
            dict,
            p,
            next_row: 0,
        })
    }

    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    /// The ground-truth dictionary, N×d row-major with unit rows.
    pub fn dictionary(&self) -> &[f32] {
        &self.dict
    }

    /// Rows handed out so far.
    pub fn rows_read(&self) -> u64 {
        self.next_row
    }

    /// Continue as if `rows` rows had been read.
    pub fn skip_rows(&mut self, rows: u64) {
        self.next_row += rows;
    }

    /// Mean and standard deviation of the active features per row over rows `0..rows` (the
    /// ground-truth L0 a comparison is measured against); (0, 0) for no rows.
    pub fn active_features(&self, rows: u64) -> (f64, f64) {
        if rows == 0 {
            return (0.0, 0.0);
        }
        let mut row = vec![0f32; self.cfg.d];
        let (mut s1, mut s2) = (0f64, 0f64);
        for r in 0..rows {
            let l0 = self.sample_row(r, &mut row) as f64;
            s1 += l0;
            s2 += l0 * l0;
        }
        let m = s1 / rows as f64;
        (m, (s2 / rows as f64 - m * m).max(0.0).sqrt())
    }

    /// Sample row `r` into `out` (length d); returns the number of present features.
    pub fn sample_row(&self, r: u64, out: &mut [f32]) -> usize {
        let cfg = &self.cfg;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(r);
        let ln_s = cfg.complexity_spread.ln();
        let lambda = if ln_s > 0.0 {
            rng.random_range(-ln_s..=ln_s).exp()
        } else {
            1.0
        };
        out.iter_mut().for_each(|v| *v = 0.0);
        let mut present = 0;
        for (i, &p) in self.p.iter().enumerate() {
            let u: f64 = rng.random();
            if u < (lambda * p).min(1.0) {
                let mag = rng.random_range(cfg.magnitude_min..=cfg.magnitude_max) as f32;
                let g = &self.dict[i * cfg.d..(i + 1) * cfg.d];
                out.iter_mut().zip(g).for_each(|(o, &gv)| *o += mag * gv);
                present += 1;
            }
        }
        if cfg.noise_std > 0.0 {
            for v in out.iter_mut() {
                *v += cfg.noise_std as f32 * rng.sample::<f32, _>(StandardNormal);
            }
        }
        present
    }
}

impl BatchSource for SyntheticSource {
    fn d(&self) -> usize {
        self.cfg.d
    }
    fn next_batch(&mut self, out: &mut [f32]) -> Result<usize, DataError> {
        let d = self.cfg.d;
        let rows = out.len() / d;
        use rayon::prelude::*;
        let start = self.next_row;
        out[..rows * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, row)| {
                self.sample_row(start + i as u64, row);
            });
        self.next_row += rows as u64;
        Ok(rows)
    }
}

/// Mean max cosine similarity and recovery: for each ground-truth row g_i, the best cosine with
/// any learned decoder row; MMCS is their mean, `recovered` the share above `thresh` (0.9).
pub fn recovery(truth: &[f32], learned: &[f32], d: usize, thresh: f32) -> (f64, f64) {
    let unit = |v: &[f32]| -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / n).collect()
    };
    let learned: Vec<Vec<f32>> = learned.chunks(d).map(unit).collect();
    let mut sum = 0f64;
    let mut hit = 0usize;
    let n = truth.len() / d;
    for g in truth.chunks(d) {
        let g = unit(g);
        let best = learned
            .iter()
            .map(|l| l.iter().zip(&g).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::NEG_INFINITY, f32::max);
        sum += best as f64;
        if best > thresh {
            hit += 1;
        }
    }
    (sum / n.max(1) as f64, hit as f64 / n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_features_are_the_mean_and_spread_of_the_row_counts() {
        let s = SyntheticSource::new(SyntheticConfig::new(16, 64, 3)).unwrap();
        let mut row = vec![0f32; 16];
        let l0: Vec<f64> = (0..200).map(|r| s.sample_row(r, &mut row) as f64).collect();
        let m = l0.iter().sum::<f64>() / 200.0;
        let sd = (l0.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 200.0).sqrt();
        let (gm, gsd) = s.active_features(200);
        assert!(
            (gm - m).abs() < 1e-9 && (gsd - sd).abs() < 1e-9,
            "{gm} {gsd} vs {m} {sd}"
        );
        assert!(sd > 0.0);
        assert_eq!(s.active_features(0), (0.0, 0.0));
    }

    #[test]
    fn rows_are_reproducible_and_seekable() {
        let cfg = SyntheticConfig::new(16, 40, 3);
        let mut a = SyntheticSource::new(cfg.clone()).unwrap();
        let mut b = SyntheticSource::new(cfg).unwrap();
        let mut x = vec![0f32; 16 * 10];
        let mut y = vec![0f32; 16 * 5];
        a.next_batch(&mut x).unwrap();
        b.skip_rows(5);
        b.next_batch(&mut y).unwrap();
        assert_eq!(&x[16 * 5..], &y[..]);
    }

    #[test]
    fn counts_vary_and_average_near_target() {
        let mut cfg = SyntheticConfig::new(8, 100, 1);
        cfg.complexity_spread = 3.0;
        cfg.mean_active = 5.0;
        let s = SyntheticSource::new(cfg).unwrap();
        let mut row = vec![0f32; 8];
        let counts: Vec<usize> = (0..4000).map(|r| s.sample_row(r, &mut row)).collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        let var = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / counts.len() as f64;
        // E[λ] for log-uniform on [1/3, 3] is (3 - 1/3)/ln 9 ≈ 1.21.
        assert!(mean > 4.5 && mean < 7.5, "mean {mean}");
        // Much more spread than a Poisson-binomial with the same mean.
        assert!(var > 1.5 * mean, "var {var} mean {mean}");
    }

    #[test]
    fn recovery_of_itself_is_perfect() {
        let s = SyntheticSource::new(SyntheticConfig::new(8, 20, 2)).unwrap();
        let (mmcs, rec) = recovery(s.dictionary(), s.dictionary(), 8, 0.9);
        assert!((mmcs - 1.0).abs() < 1e-5);
        assert_eq!(rec, 1.0);
    }
}
