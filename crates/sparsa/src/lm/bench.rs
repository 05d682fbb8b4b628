//! Timing for `sparsa bench lm`: the tokenizer, the full forward and the prefix up to a hook
//! (what extraction runs), and the logits to compare precisions with.

use super::llama::{Hook, Llama};
use super::tokenizer::Tokenizer;
use super::Result;
use candle_core::Tensor;
use std::time::Instant;

/// One precision's timings on one batch.
#[derive(Debug, Clone)]
pub struct ForwardTiming {
    /// Mean seconds of a full forward (every block + logits).
    pub full_s: f64,
    /// Mean seconds of the forward up to `hook`.
    pub prefix_s: f64,
    /// The full forward's logits, flattened `[b, t, vocab]`.
    pub logits: Vec<f32>,
}

/// Time `m` on `ids` (`[b, t]`): one warm-up, then the mean of `reps` runs of each pass.
pub fn time_forward(m: &Llama, ids: &Tensor, hook: Hook, reps: usize) -> Result<ForwardTiming> {
    let reps = reps.max(1);
    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        f()?;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    };
    let full_s = time(&|| m.forward(ids).map(|_| ()))?;
    let prefix_s = time(&|| m.run_to(ids, hook).map(|_| ()))?;
    let logits = m.forward(ids)?.flatten_all()?.to_vec1()?;
    Ok(ForwardTiming {
        full_s,
        prefix_s,
        logits,
    })
}

/// The tokenizer's speed over some texts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenizerTiming {
    pub texts: usize,
    pub bytes: usize,
    pub tokens: usize,
    pub secs: f64,
}

/// Encode every text once (no special tokens) and time it.
pub fn time_tokenizer<'a>(
    tok: &Tokenizer,
    texts: impl IntoIterator<Item = &'a str>,
) -> TokenizerTiming {
    let t = Instant::now();
    let (mut n, mut tokens, mut bytes) = (0, 0, 0);
    for text in texts {
        n += 1;
        tokens += tok.encode(text, false).len();
        bytes += text.len();
    }
    TokenizerTiming {
        texts: n,
        bytes,
        tokens,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// max |a − b| over two equally long slices (0 for empty ones).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_is_the_largest_gap() {
        assert_eq!(max_abs_diff(&[1.0, -2.0, 3.0], &[1.5, 1.0, 3.0]), 3.0);
        assert_eq!(max_abs_diff(&[], &[]), 0.0);
    }
}
