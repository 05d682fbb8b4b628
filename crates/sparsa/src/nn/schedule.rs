//! Learning-rate schedules: linear warm-up followed by step or cosine decay.
//!
//! With base rate η, warm-up W steps and T total steps, at step s:
//! - warm-up (s < W): η · (s + 1) / W
//! - step: η · γ^(number of milestones ≤ s/T), milestones given as fractions of training
//! - cosine: η · ½ (1 + cos(π · (s − W) / (T − W)))
//! - constant: η

use super::{NnError, Result};

/// The decay after warm-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Step { milestones: Vec<f64>, gamma: f64 },
    Cosine,
}

/// A learning-rate schedule over a fixed number of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn new(base: f64, warmup_steps: usize, total_steps: usize, decay: Decay) -> Result<Self> {
        if !(base > 0.0 && base.is_finite()) {
            return Err(NnError::Config {
                field: "lr",
                msg: format!("{base} must be a positive finite number"),
            });
        }
        if let Decay::Step { milestones, gamma } = &decay {
            if milestones.iter().any(|m| !(0.0..=1.0).contains(m))
                || gamma.is_nan()
                || *gamma <= 0.0
            {
                return Err(NnError::Config {
                    field: "milestones",
                    msg: "milestones are fractions of training in [0, 1] and gamma > 0".into(),
                });
            }
        }
        Ok(LrSchedule {
            base,
            warmup_steps,
            total_steps: total_steps.max(1),
            decay,
        })
    }

    /// The learning rate at `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match &self.decay {
            Decay::Constant => self.base,
            Decay::Step { milestones, gamma } => {
                let frac = step as f64 / self.total_steps as f64;
                let k = milestones.iter().filter(|&&m| frac >= m).count();
                self.base * gamma.powi(k as i32)
            }
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule::new(0.1, 10, 110, Decay::Cosine).unwrap();
        assert!((s.at(0) - 0.01).abs() < 1e-12);
        assert!((s.at(9) - 0.1).abs() < 1e-12);
        assert!((s.at(10) - 0.1).abs() < 1e-12);
        assert!((s.at(60) - 0.05).abs() < 1e-12);
        assert!(s.at(109) < 0.001);
    }

    #[test]
    fn step_decay() {
        let d = Decay::Step {
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
        };
        let s = LrSchedule::new(1.0, 0, 100, d).unwrap();
        assert_eq!(s.at(49), 1.0);
        assert!((s.at(50) - 0.1).abs() < 1e-12);
        assert!((s.at(80) - 0.01).abs() < 1e-12);
    }
}
