//! JumpReLU (inference form of the batch-dependent rules): z_ij = a_ij if a_ij > θ_j else 0.
//! Thresholds are learned during training (see `sae::train`); +∞ means "never fires".

use super::{AllocInput, Allocation, Matching};

/// Per-feature thresholds θ (length F).
#[derive(Debug, Clone)]
pub struct JumpRelu {
    pub thresholds: Vec<f32>,
}

impl Allocation for JumpRelu {
    fn name(&self) -> &'static str {
        "jumprelu"
    }
    fn batch_dependent(&self) -> bool {
        false
    }
    fn select(&self, input: &AllocInput, out: &mut Matching) {
        out.reset(input.b, input.f);
        for row in input.a.chunks(input.f) {
            for (j, (&v, &t)) in row.iter().zip(&self.thresholds).enumerate() {
                if v > t && v > 0.0 {
                    out.cols.push(j as u32);
                }
            }
            out.end_row();
        }
    }
}
