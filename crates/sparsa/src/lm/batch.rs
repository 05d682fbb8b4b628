//! Right-padded batches of token sequences.
//!
//! Sequences of different lengths are padded on the right to the longest one. Attention is
//! causal, so padding after a sequence's end never changes the model's outputs at its real
//! positions; consumers only read positions `< len`.

use super::{LmError, Result};
use candle_core::{Device, Tensor};

/// A batch of token sequences as one `[b, t]` u32 tensor plus each sequence's real length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids `[b, t]`, u32, right-padded with `pad_id`.
    pub ids: Tensor,
    /// Real length of each sequence (≤ t, ≥ 1).
    pub lengths: Vec<usize>,
    /// Padded length `t`.
    pub seq_len: usize,
}

impl Batch {
    /// Pad `seqs` on the right with `pad_id` to the longest length. Errors on an empty batch or
    /// an empty sequence.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32) -> Result<Self> {
        if seqs.is_empty() {
            return Err(LmError::Input("empty batch: no sequences".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(LmError::Input(format!(
                "sequence {i} of the batch is empty"
            )));
        }
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(pad_id, t - s.len()));
        }
        Ok(Self {
            ids: Tensor::from_vec(flat, (seqs.len(), t), &Device::Cpu)?,
            lengths: seqs.iter().map(Vec::len).collect(),
            seq_len: t,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Always false for a constructed batch (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Whether flattened position `i·t + j` is a real token (`j < len_i`).
    pub fn real_mask(&self) -> Vec<bool> {
        let mut m = Vec::with_capacity(self.len() * self.seq_len);
        for &l in &self.lengths {
            m.extend((0..self.seq_len).map(|j| j < l));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_and_records_lengths() {
        let b = Batch::new(&[vec![5, 6, 7], vec![8]], 0).unwrap();
        assert_eq!(
            b.ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 0, 0]]
        );
        assert_eq!(b.lengths, vec![3, 1]);
        assert_eq!(b.real_mask(), vec![true, true, true, true, false, false]);
    }

    #[test]
    fn rejects_empty() {
        assert!(Batch::new(&[], 0).is_err());
        assert!(Batch::new(&[vec![1], vec![]], 0).is_err());
    }
}
