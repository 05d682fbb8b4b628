//! Mutual Choice (Ayonrinde 2024), identical in rule to BatchTopK (Bussmann et al. 2024): the
//! kB largest entries of the whole B×F matrix, with no per-token or per-feature cap.

use super::{AllocInput, Allocation, Matching};
use crate::sae::select::global_kth_positive;
use rayon::prelude::*;

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
            Some((t, _above, ties_left)) => {
                // Per token in parallel: entries > t, and entries == t (ties, rare) flagged;
                // then ties are granted in flat-index order.
                let rows: Vec<(Vec<u32>, bool)> = input
                    .a
                    .par_chunks(f)
                    .map(|row| {
                        let mut sel = Vec::new();
                        let mut tie = false;
                        for (c, chunk) in row.chunks(16).enumerate() {
                            if !chunk.iter().fold(false, |acc, &v| acc | (v >= t)) {
                                continue;
                            }
                            for (o, &v) in chunk.iter().enumerate() {
                                if v >= t {
                                    sel.push((c * 16 + o) as u32);
                                    tie |= v == t;
                                }
                            }
                        }
                        (sel, tie)
                    })
                    .collect();
                let mut ties_left = ties_left;
                for (i, (sel, tie)) in rows.into_iter().enumerate() {
                    if tie {
                        let row = &input.a[i * f..(i + 1) * f];
                        for j in sel {
                            let v = row[j as usize];
                            if v > t {
                                out.cols.push(j);
                            } else if ties_left > 0 {
                                out.cols.push(j);
                                ties_left -= 1;
                            }
                        }
                    } else {
                        out.cols.extend_from_slice(&sel);
                    }
                    out.end_row();
                }
            }
        }
    }
}
