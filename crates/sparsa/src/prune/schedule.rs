//! Sparsity schedules and the pruning step of a round.
//!
//! Targets are computed in closed form from the dense counts so rounding never accumulates:
//! after iterative round r at rate p, `keep = round(N · (1 − p)^r)` globally, or
//! `keep_l = round(N_l · (1 − p)^r)` for each layer with a per-layer scope. A one-shot target of
//! sparsity s keeps `round(N · (1 − s))`.
//!
//! With AP in a round (global scope only: AP's threshold is global), with A weights alive at the
//! start: AP removes `n_ap = round(p_ap · A)` and the base method the rest of the round's share.
//! Order (project choice): the base method prunes first, AP then picks among the survivors; if
//! fewer than `n_ap` candidates exist (too few negative weights) the base method removes the
//! shortfall, so the total always matches the schedule.

use rand::Rng;

use super::ap::{self, ApVariant};
use super::mask;
use super::method::{self, Method, Scope, ScoreContext};
use super::{config_err, Result};
use crate::nn::models::Net;

/// `round(total · density)`.
pub fn keep_count(total: usize, density: f64) -> usize {
    (total as f64 * density).round() as usize
}

/// Density after `round` iterative rounds at `rate`: (1 − rate)^round.
pub fn iterative_density(rate: f64, round: usize) -> f64 {
    (1.0 - rate).powi(round as i32)
}

/// How many weights a round removed and by whom.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RoundCounts {
    pub base_removed: usize,
    pub ap_removed: usize,
}

/// Everything one pruning step needs.
pub struct PruneStep<'a> {
    pub method: Method,
    pub scope: Scope,
    /// Target density after the step (of the dense counts).
    pub density: f64,
    pub ap: ApVariant,
    /// AP's share of the remaining weights (e.g. 0.02).
    pub ap_rate: f64,
    /// Prunable weights at the start of the round's training (for AP's |w_end − w_start|).
    pub w_start: Option<&'a [Vec<f32>]>,
    pub ctx: &'a ScoreContext<'a>,
}

/// Compute new host masks for `net` (weights at the end of training, current masks) so the
/// target density is met exactly. The net is not changed.
pub fn prune_step<R: Rng>(
    net: &Net,
    step: &PruneStep,
    rng: &mut R,
) -> Result<(Vec<Vec<f32>>, RoundCounts)> {
    let current = mask::host_masks(net)?;
    let sizes: Vec<usize> = current.iter().map(Vec::len).collect();
    let total: usize = sizes.iter().sum();
    let keep = keep_count(total, step.density);
    let keep_layer: Vec<usize> = sizes.iter().map(|&n| keep_count(n, step.density)).collect();
    let alive = mask::alive(&current);
    if step.ap == ApVariant::Off {
        let masks = method::prune_masks(
            net,
            step.method,
            step.scope,
            keep,
            &keep_layer,
            step.ctx,
            rng,
        )?;
        let removed = alive - mask::alive(&masks);
        return Ok((
            masks,
            RoundCounts {
                base_removed: removed,
                ap_removed: 0,
            },
        ));
    }
    if step.scope != Scope::Global {
        return Err(config_err(
            "prune.scope",
            "AP uses one threshold across layers: use scope = \"global\" with AP",
        ));
    }
    let w_start = step
        .w_start
        .ok_or_else(|| config_err("prune.ap", "AP needs the weights at the start of the round"))?;
    let n_total = alive.saturating_sub(keep);
    let n_ap = ((step.ap_rate * alive as f64).round() as usize).min(n_total);
    let mut masks = method::prune_masks(
        net,
        step.method,
        Scope::Global,
        keep + n_ap,
        &[],
        step.ctx,
        rng,
    )?;
    let base1 = alive - mask::alive(&masks);
    let w_end = mask::host_weights(net)?;
    let ap_removed = ap::ap_remove(&mut masks, &w_end, w_start, n_ap, step.ap, rng);
    let mut base_removed = base1;
    if ap_removed < n_ap {
        // Too few candidates: the base method takes the shortfall.
        let mut tmp = net_with_masks(net, &masks)?;
        let m2 = method::prune_masks(&tmp, step.method, Scope::Global, keep, &[], step.ctx, rng)?;
        base_removed += mask::alive(&masks) - mask::alive(&m2);
        masks = m2;
        tmp.params.clear();
    }
    Ok((
        masks,
        RoundCounts {
            base_removed,
            ap_removed,
        },
    ))
}

fn net_with_masks(net: &Net, masks: &[Vec<f32>]) -> Result<Net> {
    let mut copy = net.to_dtype(net.params[0].var.dtype())?;
    // Keep the end-of-training weights (set_host_masks zeroes the newly pruned ones only).
    mask::set_host_masks(&mut copy, masks)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::models::{Arch, InputSpec};
    use candle_core::DType;
    use rand::SeedableRng;

    fn lenet() -> Net {
        let input = InputSpec {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        Net::new(Arch::Lenet300100, input, 7, DType::F32).unwrap()
    }

    #[test]
    fn iterative_rounds_hit_the_schedule_exactly() {
        let ctx = ScoreContext {
            batches: &[],
            synflow_iterations: 1,
        };
        for (method, scope) in [
            (Method::Magnitude, Scope::Global),
            (Method::Magnitude, Scope::Layer),
            (Method::Random, Scope::Layer),
            (Method::Lamp, Scope::Global),
        ] {
            let mut net = lenet();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            for round in 1..=4 {
                let density = iterative_density(0.2, round);
                let step = PruneStep {
                    method,
                    scope,
                    density,
                    ap: ApVariant::Off,
                    ap_rate: 0.0,
                    w_start: None,
                    ctx: &ctx,
                };
                let (m, _) = prune_step(&net, &step, &mut rng).unwrap();
                mask::set_host_masks(&mut net, &m).unwrap();
                let layers = mask::layer_sparsity(&net).unwrap();
                let total: usize = layers.iter().map(|l| l.total).sum();
                let kept: usize = layers.iter().map(|l| l.kept).sum();
                assert_eq!(kept, keep_count(total, density), "{method:?} round {round}");
                if scope == Scope::Layer {
                    for l in &layers {
                        assert_eq!(l.kept, keep_count(l.total, density), "{}", l.name);
                    }
                }
            }
        }
    }

    #[test]
    fn ap_round_splits_the_share_exactly() {
        let ctx = ScoreContext {
            batches: &[],
            synflow_iterations: 1,
        };
        let mut net = lenet();
        let start = mask::host_weights(&net).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        // Pretend training moved every weight by a small amount proportional to its index.
        let moved: Vec<Vec<f32>> = start
            .iter()
            .map(|w| {
                w.iter()
                    .enumerate()
                    .map(|(i, v)| v + 1e-6 * (i % 97) as f32)
                    .collect()
            })
            .collect();
        for (k, &pi) in net.prunable().iter().enumerate() {
            let p = &net.params[pi];
            let t = candle_core::Tensor::from_slice(
                moved[k].as_slice(),
                p.var.dims(),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            p.var.set(&t).unwrap();
        }
        let alive0 = mask::alive(&mask::host_masks(&net).unwrap());
        let step = PruneStep {
            method: Method::Magnitude,
            scope: Scope::Global,
            density: 0.8,
            ap: ApVariant::On,
            ap_rate: 0.02,
            w_start: Some(&start),
            ctx: &ctx,
        };
        let (m, counts) = prune_step(&net, &step, &mut rng).unwrap();
        assert_eq!(mask::alive(&m), keep_count(alive0, 0.8));
        assert_eq!(counts.ap_removed, (0.02 * alive0 as f64).round() as usize);
        assert_eq!(
            counts.base_removed + counts.ap_removed,
            alive0 - keep_count(alive0, 0.8)
        );
        // The base method alone, at its share, gives a superset of the final mask; the difference
        // (AP's picks) holds only weights negative at the end of training.
        let n_ap = counts.ap_removed;
        let base = method::prune_masks(
            &net,
            Method::Magnitude,
            Scope::Global,
            keep_count(alive0, 0.8) + n_ap,
            &[],
            &ctx,
            &mut rng,
        )
        .unwrap();
        let mut diff = 0;
        for l in 0..m.len() {
            for i in 0..m[l].len() {
                if base[l][i] == 1.0 && m[l][i] == 0.0 {
                    assert!(moved[l][i] < 0.0);
                    diff += 1;
                }
                assert!(!(base[l][i] == 0.0 && m[l][i] == 1.0));
            }
        }
        assert_eq!(diff, n_ap);
        mask::set_host_masks(&mut net, &m).unwrap();
    }

    /// Set the prunable weights of `net` to `w`.
    fn set_weights(net: &Net, w: &[Vec<f32>]) {
        for (k, &pi) in net.prunable().iter().enumerate() {
            let p = &net.params[pi];
            let t = candle_core::Tensor::from_slice(
                w[k].as_slice(),
                p.var.dims(),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            p.var.set(&t).unwrap();
        }
    }

    #[test]
    fn ap_on_lamp_prunes_its_share_from_negative_least_changed_survivors() {
        let ctx = ScoreContext {
            batches: &[],
            synflow_iterations: 1,
        };
        let mut net = lenet();
        // A round already pruned: 20 % by magnitude, so LAMP sees existing masks.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (m0, _) = prune_step(
            &net,
            &PruneStep {
                method: Method::Magnitude,
                scope: Scope::Global,
                density: 0.8,
                ap: ApVariant::Off,
                ap_rate: 0.0,
                w_start: None,
                ctx: &ctx,
            },
            &mut rng,
        )
        .unwrap();
        mask::set_host_masks(&mut net, &m0).unwrap();
        let start = mask::host_weights(&net).unwrap();
        // "Training": every weight moves by a pseudo-random amount of either sign.
        let moved: Vec<Vec<f32>> = start
            .iter()
            .enumerate()
            .map(|(l, w)| {
                w.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let h = (i * 2654435761 + l * 97) % 1000;
                        v + (h as f32 / 1000.0 - 0.5) * 0.02
                    })
                    .collect()
            })
            .collect();
        set_weights(&net, &moved);
        let alive0 = mask::alive(&m0);
        let share = alive0 - keep_count(266_200, 0.64);
        let step = PruneStep {
            method: Method::Lamp,
            scope: Scope::Global,
            density: 0.64,
            ap: ApVariant::On,
            ap_rate: 0.02,
            w_start: Some(&start),
            ctx: &ctx,
        };
        let (m, counts) = prune_step(&net, &step, &mut rng).unwrap();
        let n_ap = (0.02 * alive0 as f64).round() as usize;
        assert_eq!(counts.ap_removed, n_ap);
        assert_eq!(counts.base_removed + counts.ap_removed, share);
        assert_eq!(mask::alive(&m), keep_count(266_200, 0.64));
        // LAMP alone at its own share leaves a superset; AP's picks are the difference.
        let lamp = method::prune_masks(
            &net,
            Method::Lamp,
            Scope::Global,
            keep_count(266_200, 0.64) + n_ap,
            &[],
            &ctx,
            &mut rng,
        )
        .unwrap();
        let change = |l: usize, i: usize| (moved[l][i] - start[l][i]).abs();
        let (mut picked, mut max_picked, mut min_kept_neg) = (0, 0f32, f32::INFINITY);
        for l in 0..m.len() {
            for i in 0..m[l].len() {
                assert!(!(lamp[l][i] == 0.0 && m[l][i] == 1.0), "AP never restores");
                if lamp[l][i] == 1.0 && m[l][i] == 0.0 {
                    assert!(moved[l][i] < 0.0, "AP picked a non-negative weight");
                    picked += 1;
                    max_picked = max_picked.max(change(l, i));
                } else if m[l][i] == 1.0 && moved[l][i] < 0.0 {
                    min_kept_neg = min_kept_neg.min(change(l, i));
                }
            }
        }
        assert_eq!(picked, n_ap);
        // One threshold across layers: no surviving negative weight changed less than a pick.
        assert!(max_picked <= min_kept_neg, "{max_picked} > {min_kept_neg}");
        // AP picked across more than one layer (the threshold is global, not per layer).
        let per_layer: Vec<usize> = (0..m.len())
            .map(|l| {
                (0..m[l].len())
                    .filter(|&i| lamp[l][i] == 1.0 && m[l][i] == 0.0)
                    .count()
            })
            .collect();
        assert!(
            per_layer.iter().filter(|&&c| c > 0).count() >= 2,
            "{per_layer:?}"
        );
    }
}
