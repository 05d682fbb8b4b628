//! Sparsity statistics shared by the trainer's per-step metrics ([`super::train`]) and the
//! held-out evaluation report ([`super::metrics`]), so both compute L0, dead and dense shares the
//! same way.

/// A feature whose firing density is above this is counted as dense.
pub const DENSE_ABOVE: f32 = 0.1;

/// Running statistics of per-token L0 (active features per row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L0Stats {
    n: u64,
    sum: f64,
    sq: f64,
    max: usize,
    zero: u64,
    hist: Vec<u64>,
}

impl L0Stats {
    /// The statistics of `l0` (one entry per row).
    pub fn of(l0: &[usize]) -> Self {
        let mut s = Self::default();
        l0.iter().for_each(|&c| s.add(c));
        s
    }

    /// Count one row with `l0` active features.
    pub fn add(&mut self, l0: usize) {
        self.n += 1;
        self.sum += l0 as f64;
        self.sq += (l0 * l0) as f64;
        self.max = self.max.max(l0);
        self.zero += u64::from(l0 == 0);
        if self.hist.len() <= l0 {
            self.hist.resize(l0 + 1, 0);
        }
        self.hist[l0] += 1;
    }

    /// Rows counted.
    pub fn rows(&self) -> u64 {
        self.n
    }

    /// Mean L0 (0 with no rows).
    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    /// Population standard deviation of L0.
    pub fn std(&self) -> f64 {
        let m = self.mean();
        (self.sq / self.n.max(1) as f64 - m * m).max(0.0).sqrt()
    }

    /// Largest L0.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Share of rows with no active feature.
    pub fn zero_frac(&self) -> f64 {
        self.zero as f64 / self.n.max(1) as f64
    }

    /// Rows per L0 value (index = L0).
    pub fn hist(&self) -> &[u64] {
        &self.hist
    }
}

/// Share of `flags` that are set (0 for none).
pub fn share(flags: impl ExactSizeIterator<Item = bool>) -> f64 {
    let n = flags.len();
    flags.filter(|&x| x).count() as f64 / n.max(1) as f64
}

/// Share of features whose density is above [`DENSE_ABOVE`].
pub fn dense_frac(density: &[f32]) -> f64 {
    share(density.iter().map(|&r| r > DENSE_ABOVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let s = L0Stats::of(&[0, 2, 2, 4]);
        assert_eq!(s.rows(), 4);
        assert_eq!(s.mean(), 2.0);
        assert_eq!(s.std(), 2f64.sqrt()); // deviations −2, 0, 0, 2: variance 2
        assert_eq!(s.max(), 4);
        assert_eq!(s.zero_frac(), 0.25);
        assert_eq!(s.hist(), &[1, 0, 2, 0, 1]);
        let constant = L0Stats::of(&[32; 7]);
        assert_eq!(constant.std(), 0.0);
        assert_eq!(dense_frac(&[0.0, 0.05, 0.2, 0.11]), 0.5);
        assert_eq!(share([true, false, false].into_iter()), 1.0 / 3.0);
        assert_eq!(L0Stats::default().mean(), 0.0);
    }
}
