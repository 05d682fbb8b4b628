//! Mutual Choice (Ayonrinde 2024), identical in rule to BatchTopK (Bussmann et al. 2024): the
//! kB largest entries of the whole B×F matrix, with no per-token or per-feature cap.

use super::{AllocInput, Allocation, Matching};
use crate::sae::select::global_kth_positive;

/// Global selection of the k·B largest positive entries (ties: lower flat index wins).
#[derive(Debug, Clone)]
pub struct MutualChoice {
    pub k: usize,
}

impl Allocation for MutualChoice {
    fn name(&self) -> &'static str {
        "mutual_choice"
    }
    fn batch_dependent(&self) -> bool {
        true
    }
    fn select(&self, input: &AllocInput, out: &mut Matching) {
        let (b, f) = (input.b, input.f);
        let budget = self.k * b;
        out.reset(b, f);
        match global_kth_positive(input.a, budget) {
            None => {
                for row in input.a.chunks(f) {
                    out.cols.extend(
                        row.iter()
                            .enumerate()
                            .filter(|(_, &v)| v > 0.0)
                            .map(|(j, _)| j as u32),
                    );
                    out.end_row();
                }
            }
            Some((t, _above, mut ties_left)) => {
                for row in input.a.chunks(f) {
                    for (j, &v) in row.iter().enumerate() {
                        if v > t {
                            out.cols.push(j as u32);
                        } else if v == t && ties_left > 0 {
                            out.cols.push(j as u32);
                            ties_left -= 1;
                        }
                    }
                    out.end_row();
                }
            }
        }
    }
}
