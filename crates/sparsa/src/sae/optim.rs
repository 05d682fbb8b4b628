//! Adam (β1 0.9, β2 0.999, ε 6.25e-10 by default) with the decoder-norm handling of
//! `shared/spec/sae.md`: before the step, remove from each decoder row's gradient its component
//! along the row; after the step, renormalise each row to unit norm.

use super::params::SaeParams;
use rayon::prelude::*;

/// Gradients in the same layout as [`SaeParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl Grads {
    pub fn global_norm(&self) -> f64 {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
            .iter()
            .map(|v| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    }
    fn scale(&mut self, s: f32) {
        for v in [
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ] {
            v.iter_mut().for_each(|x| *x *= s);
        }
    }
}

/// First and second moments, per parameter, in [`SaeParams`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    pub m: [Vec<f32>; 4],
    pub v: [Vec<f32>; 4],
    /// Steps taken (for bias correction).
    pub t: u64,
}

/// Hyper-parameters of one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 = off.
    pub clip: f64,
}

impl Adam {
    pub fn new(p: &SaeParams) -> Self {
        let z = |n: usize| vec![0f32; n];
        Adam {
            m: [
                z(p.w_enc.len()),
                z(p.b_enc.len()),
                z(p.w_dec.len()),
                z(p.b_dec.len()),
            ],
            v: [
                z(p.w_enc.len()),
                z(p.b_enc.len()),
                z(p.w_dec.len()),
                z(p.b_dec.len()),
            ],
            t: 0,
        }
    }

    /// One optimiser step including decoder-gradient projection and renormalisation.
    pub fn step(&mut self, p: &mut SaeParams, mut g: Grads, h: AdamStep) {
        project_decoder_grad(&p.w_dec, &mut g.w_dec, p.d);
        if h.clip > 0.0 {
            let n = g.global_norm();
            if n > h.clip {
                g.scale((h.clip / n) as f32);
            }
        }
        self.t += 1;
        let bc1 = 1.0 - h.beta1.powi(self.t as i32);
        let bc2 = 1.0 - h.beta2.powi(self.t as i32);
        let step_size = (h.lr / bc1) as f32;
        let (b1, b2, eps) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32);
        let bc2_sqrt = bc2.sqrt() as f32;
        let params = [&mut p.w_enc, &mut p.b_enc, &mut p.w_dec, &mut p.b_dec];
        let grads = [&g.w_enc, &g.b_enc, &g.w_dec, &g.b_dec];
        for (((w, g), m), v) in params
            .into_iter()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            w.par_chunks_mut(4096)
                .zip(g.par_chunks(4096))
                .zip(m.par_chunks_mut(4096))
                .zip(v.par_chunks_mut(4096))
                .for_each(|(((w, g), m), v)| {
                    for i in 0..w.len() {
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        w[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                    }
                });
        }
        p.normalize_decoder();
    }
}

/// g_j ← g_j − (g_j·w_j) w_j for unit decoder rows w_j.
pub fn project_decoder_grad(w_dec: &[f32], g_dec: &mut [f32], d: usize) {
    g_dec
        .par_chunks_mut(d)
        .zip(w_dec.par_chunks(d))
        .for_each(|(g, w)| {
            let dot: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
            g.iter_mut().zip(w).for_each(|(g, &w)| *g -= dot * w);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn projection_removes_parallel_component_and_rows_stay_unit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut p = SaeParams::init_tied(6, 5, vec![0.0; 6], &mut rng);
        let mut g = p.w_dec.clone(); // fully parallel gradient
        project_decoder_grad(&p.w_dec, &mut g, 6);
        assert!(g.iter().all(|x| x.abs() < 1e-6));
        let grads = Grads {
            w_enc: vec![0.1; 30],
            b_enc: vec![0.1; 5],
            w_dec: (0..30).map(|i| (i as f32).sin()).collect(),
            b_dec: vec![0.1; 6],
        };
        let mut adam = Adam::new(&p);
        let h = AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 6.25e-10,
            clip: 0.0,
        };
        adam.step(&mut p, grads, h);
        for row in p.w_dec.chunks(6) {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5);
        }
    }
}
