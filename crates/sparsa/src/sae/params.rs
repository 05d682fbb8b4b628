//! The autoencoder's weights and its two halves.
//!
//! Storage (row-major): `w_enc` F×d (row j = encoder of feature j), `b_enc` F, `w_dec` F×d
//! (row j = decoder direction of feature j, the spec's column j of W_dec), `b_dec` d.
//! Pre-activations A = ReLU((X − b_dec)·W_encᵀ + b_enc); X̂ = Z·W_dec + b_dec.

use super::allocation::Matching;
use super::SaeError;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct SaeParams {
    pub d: usize,
    pub f: usize,
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl SaeParams {
    /// Tied init: decoder rows random unit vectors, W_enc = W_decᵀ, b_enc = 0, b_dec given.
    pub fn init_tied<R: Rng>(d: usize, f: usize, b_dec: Vec<f32>, rng: &mut R) -> Self {
        let mut w_dec = vec![0f32; f * d];
        for row in w_dec.chunks_mut(d) {
            loop {
                row.iter_mut()
                    .for_each(|v| *v = rng.sample::<f32, _>(StandardNormal));
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if n > 1e-6 {
                    row.iter_mut().for_each(|v| *v /= n);
                    break;
                }
            }
        }
        SaeParams {
            d,
            f,
            w_enc: w_dec.clone(),
            b_enc: vec![0.0; f],
            w_dec,
            b_dec,
        }
    }

    /// A = ReLU((X − b_dec)·W_encᵀ + b_enc) for `b` rows of `x`, B×F row-major.
    pub fn encode_pre(&self, x: &[f32], b: usize) -> Result<Vec<f32>, SaeError> {
        let dev = Device::Cpu;
        let xt = Tensor::from_slice(x, (b, self.d), &dev)?;
        let bd = Tensor::from_slice(&self.b_dec, self.d, &dev)?;
        let we = Tensor::from_slice(&self.w_enc, (self.f, self.d), &dev)?;
        let be = Tensor::from_slice(&self.b_enc, self.f, &dev)?;
        let pre = xt
            .broadcast_sub(&bd)?
            .matmul(&we.t()?)?
            .broadcast_add(&be)?
            .relu()?;
        Ok(pre.flatten_all()?.to_vec1::<f32>()?)
    }

    /// X̂ = (A ⊙ M)·W_dec + b_dec, touching only the matched entries.
    pub fn decode_sparse(&self, a: &[f32], m: &Matching, out: &mut [f32]) {
        let (d, f) = (self.d, self.f);
        out.par_chunks_mut(d).enumerate().for_each(|(i, o)| {
            o.copy_from_slice(&self.b_dec);
            for &j in m.row(i) {
                let z = a[i * f + j as usize];
                let w = &self.w_dec[j as usize * d..(j as usize + 1) * d];
                o.iter_mut().zip(w).for_each(|(o, &w)| *o += z * w);
            }
        });
    }

    /// Rescale every decoder row to unit norm (rows of zero norm are left as they are).
    pub fn normalize_decoder(&mut self) {
        let d = self.d;
        self.w_dec.par_chunks_mut(d).for_each(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|v| *v /= n);
            }
        });
    }

    /// The name of the first parameter holding a NaN or infinity, if any.
    pub fn non_finite(&self) -> Option<&'static str> {
        [
            ("W_enc", &self.w_enc),
            ("b_enc", &self.b_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ]
        .into_iter()
        .find(|(_, v)| v.iter().any(|x| !x.is_finite()))
        .map(|(n, _)| n)
    }
}
