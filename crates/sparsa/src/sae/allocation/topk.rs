//! TopK (Gao et al. 2024): each token keeps its k largest pre-activations.

use super::{AllocInput, Allocation, Matching, RowRule};
use crate::sae::select::top_k_positive;
use rayon::prelude::*;

/// Per row: the k largest positive entries (exactly min(k, positives) per token).
#[derive(Debug, Clone)]
pub struct TopK {
    pub k: usize,
}

impl Allocation for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }
    fn batch_dependent(&self) -> bool {
        false
    }
    fn select(&self, input: &AllocInput, out: &mut Matching) {
        let (b, f) = (input.b, input.f);
        let rows: Vec<Vec<u32>> = input
            .a
            .par_chunks(f)
            .map_init(Vec::new, |scratch, row| {
                let mut sel = Vec::with_capacity(self.k);
                self.select_row(row, scratch, &mut sel);
                sel
            })
            .collect();
        debug_assert_eq!(rows.len(), b);
        out.from_rows(f, &rows);
    }
    fn by_row(&self) -> Option<&dyn RowRule> {
        Some(self)
    }
}

impl RowRule for TopK {
    fn select_row(&self, row: &[f32], scratch: &mut Vec<u64>, out: &mut Vec<u32>) {
        top_k_positive(row, self.k, scratch, out);
    }
}
