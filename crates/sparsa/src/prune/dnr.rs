//! Dead-neuron-rate probes. A unit (a linear layer's output, or a conv layer's channel × position)
//! is dead on a sample when its ReLU output is exactly 0.
//!
//! - Dynamic DNR of a layer: the mean over the samples seen of (dead units / U).
//! - Global DNR: the unit-count-weighted mean over layers, `Σ_l dead_l / Σ_l U_l · samples`.
//! - Static dead rate: the share of units dead on every sample seen.

use candle_core::{DType, Tensor};

use crate::nn::fast::ReluCount;
use crate::nn::models::ReluProbe;

/// Dead-neuron statistics of one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerDnr {
    pub name: String,
    pub units: usize,
    /// Dynamic DNR over the window.
    pub dynamic: f64,
    /// Static dead rate (when tracked).
    pub static_dead: Option<f64>,
}

/// Per-layer and global dead-neuron statistics over a window.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DnrReport {
    pub layers: Vec<LayerDnr>,
    pub global_dynamic: f64,
    pub global_static: Option<f64>,
    pub samples: u64,
}

#[derive(Default, Clone)]
struct Acc {
    units: usize,
    dead: f64,
    samples: u64,
    /// Per unit: samples on which it was dead (for the static rate).
    per_unit: Option<Vec<u64>>,
}

/// A [`ReluProbe`] that accumulates dead counts per layer (and per unit for the static rate).
pub struct DnrProbe {
    names: Vec<String>,
    acc: Vec<Acc>,
    track_static: bool,
}

impl DnrProbe {
    /// A probe for the ReLU layers `names`; `track_static` keeps per-unit counts too.
    pub fn new(names: &[String], track_static: bool) -> Self {
        DnrProbe {
            names: names.to_vec(),
            acc: vec![Acc::default(); names.len()],
            track_static,
        }
    }

    /// Forget everything seen (start a new window).
    pub fn reset(&mut self) {
        self.acc = vec![Acc::default(); self.names.len()];
    }

    /// The statistics of the current window.
    pub fn report(&self) -> crate::nn::Result<DnrReport> {
        let mut layers = Vec::with_capacity(self.acc.len());
        let (mut dead, mut units_seen, mut sdead, mut sunits) = (0f64, 0f64, 0f64, 0f64);
        let mut samples = 0;
        for (name, a) in self.names.iter().zip(&self.acc) {
            samples = samples.max(a.samples);
            let denom = (a.units as f64) * (a.samples as f64);
            let dynamic = if denom > 0.0 { a.dead / denom } else { 0.0 };
            dead += a.dead;
            units_seen += denom;
            let static_dead = match (&a.per_unit, self.track_static) {
                (Some(pu), true) => {
                    let all = pu.iter().filter(|&&c| c == a.samples).count();
                    sdead += all as f64;
                    sunits += a.units as f64;
                    Some(all as f64 / a.units.max(1) as f64)
                }
                _ => None,
            };
            layers.push(LayerDnr {
                name: name.clone(),
                units: a.units,
                dynamic,
                static_dead,
            });
        }
        Ok(DnrReport {
            layers,
            global_dynamic: if units_seen > 0.0 {
                dead / units_seen
            } else {
                0.0
            },
            global_static: if self.track_static && sunits > 0.0 {
                Some(sdead / sunits)
            } else {
                None
            },
            samples,
        })
    }
}

impl DnrProbe {
    /// Add the counts of the fused engine's ReLU passes ([`crate::nn::fast::FastNet::take_counts`]),
    /// one entry per ReLU layer. Per-unit counts are in the engine's channels-last unit order, so a
    /// window should take its counts from one path only (the static rate depends only on the
    /// number of always-dead units, not their order).
    pub fn add_counts(&mut self, counts: &[ReluCount]) {
        for (a, c) in self.acc.iter_mut().zip(counts) {
            if c.samples == 0 {
                continue;
            }
            a.units = c.units;
            a.samples += c.samples;
            a.dead += c.dead as f64;
            if self.track_static && c.per_unit.len() == c.units {
                match &mut a.per_unit {
                    Some(p) if p.len() == c.units => {
                        p.iter_mut().zip(&c.per_unit).for_each(|(p, c)| *p += c)
                    }
                    _ => a.per_unit = Some(c.per_unit.clone()),
                }
            }
        }
    }

    /// Raw counts per layer: (units, samples, dead) — for exact comparisons in tests.
    pub fn counts(&self) -> Vec<(usize, u64, u64)> {
        self.acc
            .iter()
            .map(|a| (a.units, a.samples, a.dead as u64))
            .collect()
    }
}

impl ReluProbe for DnrProbe {
    fn observe(&mut self, index: usize, out: &Tensor) -> crate::nn::Result<()> {
        let Some(a) = self.acc.get_mut(index) else {
            return Ok(());
        };
        let n = out.dim(0)?;
        let dead = out.detach().eq(0.0)?.to_dtype(DType::F32)?;
        a.units = out.elem_count() / n.max(1);
        a.samples += n as u64;
        if self.track_static {
            let per = dead.sum(0)?.flatten_all()?;
            a.dead += per.sum_all()?.to_scalar::<f32>()? as f64;
            let per: Vec<u64> = per.to_vec1::<f32>()?.iter().map(|&c| c as u64).collect();
            match &mut a.per_unit {
                Some(p) => p.iter_mut().zip(&per).for_each(|(p, c)| *p += c),
                None => a.per_unit = Some(per),
            }
        } else {
            a.dead += dead.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dnr_on_crafted_outputs() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut p = DnrProbe::new(&names, true);
        // Layer a: 3 samples × 4 units. Unit 0 dead on all; unit 1 dead on sample 0 only.
        let a = Tensor::new(
            &[
                [0.0f32, 0.0, 1.0, 2.0],
                [0.0, 3.0, 1.0, 2.0],
                [0.0, 1.0, 0.5, 0.1],
            ],
            &Device::Cpu,
        )
        .unwrap();
        // Layer b: conv-shaped (3, 1, 1, 2): units are positions; position 1 dead on 2 samples.
        let b = Tensor::new(
            &[[[[1.0f32, 0.0]]], [[[2.0, 0.0]]], [[[3.0, 1.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        p.observe(0, &a).unwrap();
        p.observe(1, &b).unwrap();
        let r = p.report().unwrap();
        // Dynamic: a = (2 + 1 + 1) / 12 = 1/3; b = 2 / 6 = 1/3.
        assert!((r.layers[0].dynamic - 4.0 / 12.0).abs() < 1e-12);
        assert!((r.layers[1].dynamic - 2.0 / 6.0).abs() < 1e-12);
        // Static: a has 1 of 4 units dead on every sample; b none.
        assert_eq!(r.layers[0].static_dead, Some(0.25));
        assert_eq!(r.layers[1].static_dead, Some(0.0));
        // Global: unit-weighted. Dynamic (4 + 2) / (12 + 6); static 1 / 6.
        assert!((r.global_dynamic - 6.0 / 18.0).abs() < 1e-12);
        assert!((r.global_static.unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.layers[1].units, 2);
    }

    #[test]
    fn static_and_dynamic_differ_when_death_rotates() {
        // Every sample kills a different half of the units: dynamic DNR ½, yet no unit is dead
        // on every sample, so the static rate is 0. A unit dead everywhere makes both agree.
        let mut p = DnrProbe::new(&["x".to_string()], true);
        let t = Tensor::new(&[[0.0f32, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        p.observe(0, &t).unwrap();
        let r = p.report().unwrap();
        assert!((r.layers[0].dynamic - 0.5).abs() < 1e-12);
        assert_eq!(r.layers[0].static_dead, Some(0.0));
        p.reset();
        let t = Tensor::new(&[[0.0f32, 1.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        p.observe(0, &t).unwrap();
        let r = p.report().unwrap();
        assert!((r.layers[0].dynamic - 0.5).abs() < 1e-12);
        assert_eq!(r.layers[0].static_dead, Some(0.5));
    }
}
