//! Unit tests of the SAE core: allocation invariants (property tests), finite-difference
//! gradient checks of every loss, and the aux_zipf properties.

use super::allocation::{
    self, capacities, capacities_for_budget, AllocInput, Allocation, Capacity, FeatureChoice,
    JumpRelu, Matching, MutualChoice, TopK,
};
use super::config::AuxNorm;
use super::loss::{aux_select, AuxK, AuxLoss, AuxZipf, FeatureStats};
use super::params::SaeParams;
use super::reference::{forward_backward, AuxTerm, Selections};
use candle_core::DType;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A B×F matrix with many zeros and some exact ties.
fn act_matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..12, 1usize..20).prop_flat_map(|(b, f)| {
        let cell = prop_oneof![3 => Just(0.0f32), 1 => Just(0.5f32), 6 => 0.0f32..3.0];
        (Just(b), Just(f), prop::collection::vec(cell, b * f))
    })
}

fn run(rule: &dyn Allocation, a: &[f32], b: usize, f: usize) -> Matching {
    let density = vec![0.0; f];
    let mut m = Matching::default();
    rule.select(
        &AllocInput {
            a,
            b,
            f,
            density: &density,
            step: 0,
        },
        &mut m,
    );
    m
}

fn selected_set(m: &Matching) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..m.b)
        .flat_map(|i| m.row(i).iter().map(move |&j| (i, j as usize)))
        .collect();
    v.sort();
    v
}

proptest! {
    #[test]
    fn topk_exactly_min_k_positives_per_row((b, f, a) in act_matrix(), k in 1usize..8) {
        let m = run(&TopK { k }, &a, b, f);
        for i in 0..b {
            let row = &a[i * f..(i + 1) * f];
            let pos = row.iter().filter(|&&v| v > 0.0).count();
            prop_assert_eq!(m.row(i).len(), k.min(pos));
            // Every selected value ≥ every unselected positive value in the row.
            let min_sel = m.row(i).iter().map(|&j| row[j as usize]).fold(f32::INFINITY, f32::min);
            for (j, &v) in row.iter().enumerate() {
                if !m.row(i).contains(&(j as u32)) {
                    prop_assert!(v <= min_sel);
                }
            }
            prop_assert!(m.row(i).iter().all(|&j| row[j as usize] > 0.0));
        }
    }

    #[test]
    fn mutual_choice_takes_the_kb_largest((b, f, a) in act_matrix(), k in 1usize..6) {
        let m = run(&MutualChoice { k, token_cap: None }, &a, b, f);
        let pos = a.iter().filter(|&&v| v > 0.0).count();
        prop_assert_eq!(m.nnz(), (k * b).min(pos));
        // The selected set is the kB largest (ties to the lower flat index).
        let mut idx: Vec<usize> = (0..a.len()).filter(|&i| a[i] > 0.0).collect();
        idx.sort_by(|&x, &y| a[y].total_cmp(&a[x]).then(x.cmp(&y)));
        idx.truncate(k * b);
        let mut want: Vec<(usize, usize)> = idx.iter().map(|&i| (i / f, i % f)).collect();
        want.sort();
        prop_assert_eq!(selected_set(&m), want);
    }

    #[test]
    fn feature_choice_respects_capacities((b, f, a) in act_matrix(), k in 1usize..6, zipf in any::<bool>(), step in 0u64..1000) {
        let cap = if zipf { Capacity::Zipf { alpha: 1.0, beta: 1.0 } } else { Capacity::Uniform };
        let density: Vec<f32> = (0..f).map(|j| ((j * 7) % 5) as f32 / 10.0).collect();
        let caps = capacities(&cap, k, b, f, &density, step);
        prop_assert_eq!(caps.iter().sum::<usize>(), (k * b).min(f * b));
        prop_assert!(caps.iter().all(|&m| m <= b));
        let rule = FeatureChoice { k, capacity: cap, capacity_factor: 1.0, token_cap: None };
        let mut m = Matching::default();
        rule.select(&AllocInput { a: &a, b, f, density: &density, step }, &mut m);
        let counts = m.per_feature_counts();
        for j in 0..f {
            let pos = (0..b).filter(|&i| a[i * f + j] > 0.0).count();
            prop_assert_eq!(counts[j] as usize, caps[j].min(pos));
        }
        prop_assert!(m.nnz() <= k * b);
    }
}

proptest! {
    /// Capacity factor c: the kB largest (value, then lower flat index) of the per-column top
    /// c·m_j selections, against brute force.
    #[test]
    fn feature_choice_with_a_capacity_factor_keeps_the_largest_widened_selections(
        (b, f, a) in act_matrix(), k in 1usize..4, step in 0u64..50, c in prop_oneof![Just(1.0f64), Just(2.0), Just(3.5)]
    ) {
        let density = vec![0f32; f];
        let rule = FeatureChoice { k, capacity: Capacity::Uniform, capacity_factor: c, token_cap: None };
        let mut m = Matching::default();
        rule.select(&AllocInput { a: &a, b, f, density: &density, step }, &mut m);
        let widened = ((k * b) as f64 * c).round() as usize;
        let caps = capacities_for_budget(&Capacity::Uniform, widened, b, f, &density, step);
        let mut cand = Vec::new();
        for (j, &cap) in caps.iter().enumerate() {
            let mut rows: Vec<usize> = (0..b).filter(|&i| a[i * f + j] > 0.0).collect();
            rows.sort_by(|&x, &y| a[y * f + j].total_cmp(&a[x * f + j]).then(x.cmp(&y)));
            rows.truncate(cap);
            cand.extend(rows.into_iter().map(|i| (i, j)));
        }
        cand.sort_by(|&(i, j), &(p, q)| a[p * f + q].total_cmp(&a[i * f + j]).then((i * f + j).cmp(&(p * f + q))));
        cand.truncate(k * b);
        cand.sort();
        prop_assert!(m.nnz() <= k * b);
        prop_assert_eq!(selected_set(&m), cand);
    }
}

/// Greedy in value order (descending, ties to the lower flat index): keep a candidate while its
/// token holds fewer than `cap`, until `budget` are kept. The brute-force reference of the token
/// cap.
fn greedy_capped(
    a: &[f32],
    f: usize,
    mut cand: Vec<(usize, usize)>,
    budget: usize,
    cap: usize,
) -> Vec<(usize, usize)> {
    cand.sort_by(|&(i, j), &(p, q)| {
        a[p * f + q]
            .total_cmp(&a[i * f + j])
            .then((i * f + j).cmp(&(p * f + q)))
    });
    let mut held = std::collections::HashMap::new();
    let mut kept = Vec::new();
    for (i, j) in cand {
        let h = held.entry(i).or_insert(0usize);
        if kept.len() < budget && *h < cap {
            *h += 1;
            kept.push((i, j));
        }
    }
    kept.sort();
    kept
}

proptest! {
    /// Mutual Choice with a token cap: the greedy selection over all positive entries (which is
    /// the exact best under a cap on tokens alone), against brute force; no token exceeds the
    /// cap, and a cap of k is TopK.
    #[test]
    fn mutual_choice_with_a_token_cap_is_the_capped_greedy((b, f, a) in act_matrix(), k in 1usize..5, c in prop_oneof![Just(1.0f64), Just(1.5), Just(2.0), Just(4.0)]) {
        let cap = allocation::token_cap(k, c).unwrap();
        let m = run(&MutualChoice { k, token_cap: Some(cap) }, &a, b, f);
        let cand: Vec<(usize, usize)> = (0..a.len()).filter(|&i| a[i] > 0.0).map(|i| (i / f, i % f)).collect();
        prop_assert_eq!(selected_set(&m), greedy_capped(&a, f, cand, k * b, cap));
        prop_assert!(m.l0_per_row().iter().all(|&n| n <= cap));
        if c == 1.0 {
            prop_assert_eq!(m, run(&TopK { k }, &a, b, f));
        }
    }

    /// Feature Choice with a token cap: the per-column top c·m_j selections, kept greedily in
    /// value order while the token holds fewer than the cap, against brute force.
    #[test]
    fn feature_choice_with_a_token_cap_is_the_capped_greedy(
        (b, f, a) in act_matrix(), k in 1usize..4, step in 0u64..50, c in prop_oneof![Just(1.0f64), Just(2.0)], tc in prop_oneof![Just(1.0f64), Just(1.5), Just(3.0)]
    ) {
        let density = vec![0f32; f];
        let cap = allocation::token_cap(k, tc).unwrap();
        let rule = FeatureChoice { k, capacity: Capacity::Uniform, capacity_factor: c, token_cap: Some(cap) };
        let mut m = Matching::default();
        rule.select(&AllocInput { a: &a, b, f, density: &density, step }, &mut m);
        let widened = ((k * b) as f64 * c).round() as usize;
        let caps = capacities_for_budget(&Capacity::Uniform, widened, b, f, &density, step);
        let mut cand = Vec::new();
        for (j, &mj) in caps.iter().enumerate() {
            let mut rows: Vec<usize> = (0..b).filter(|&i| a[i * f + j] > 0.0).collect();
            rows.sort_by(|&x, &y| a[y * f + j].total_cmp(&a[x * f + j]).then(x.cmp(&y)));
            rows.truncate(mj);
            cand.extend(rows.into_iter().map(|i| (i, j)));
        }
        prop_assert_eq!(selected_set(&m), greedy_capped(&a, f, cand, k * b, cap));
        prop_assert!(m.l0_per_row().iter().all(|&n| n <= cap));
    }
}

#[test]
fn uniform_capacities_spend_the_whole_budget() {
    let c = capacities(&Capacity::Uniform, 3, 10, 7, &[0.0; 7], 0);
    assert_eq!(c.iter().sum::<usize>(), 30);
    assert!(c.iter().all(|&m| m == 4 || m == 5));
    let z = capacities(
        &Capacity::Zipf {
            alpha: 1.0,
            beta: 0.0,
        },
        4,
        16,
        8,
        &[0.1, 0.9, 0.0, 0.2, 0.3, 0.0, 0.05, 0.5],
        0,
    );
    assert_eq!(z.iter().sum::<usize>(), 64);
    assert!(z[1] >= z[7] && z[7] >= z[4], "{z:?}");
}

/// With F > kB, uniform capacities of ⌊kB/F⌋ = 0 would lock out every feature that never gets
/// the remainder. The remainder rotates: through the rule itself (all pre-activations positive),
/// every feature is selected at least once within F/(kB) + 1 batches.
#[test]
fn feature_choice_selects_every_feature_over_a_window_when_f_exceeds_kb() {
    for (k, b, f) in [
        (2usize, 8usize, 100usize),
        (1, 16, 37),
        (3, 5, 64),
        (1, 1, 9),
    ] {
        assert!(f > k * b);
        let rule = FeatureChoice {
            k,
            capacity: Capacity::Uniform,
            capacity_factor: 1.0,
            token_cap: None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(f as u64);
        let density = vec![0f32; f];
        let window = f / (k * b) + 1;
        for first in [0u64, 7, 1_000_003] {
            let mut seen = vec![false; f];
            for step in first..first + window as u64 {
                let a: Vec<f32> = (0..b * f)
                    .map(|_| rand::Rng::random_range(&mut rng, 0.01f32..1.0))
                    .collect();
                let mut m = Matching::default();
                let input = AllocInput {
                    a: &a,
                    b,
                    f,
                    density: &density,
                    step,
                };
                rule.select(&input, &mut m);
                assert_eq!(m.nnz(), k * b, "the whole budget is spent");
                for &j in &m.cols {
                    seen[j as usize] = true;
                }
            }
            let missing: Vec<usize> = (0..f).filter(|&j| !seen[j]).collect();
            assert!(
                missing.is_empty(),
                "k {k} B {b} F {f}: features never selected in {window} batches from {first}: {missing:?}"
            );
        }
    }
}

/// Zipf capacities: every batch spends exactly the budget, and over many batches each feature's
/// mean capacity approaches its exact (fractional) share, so tail features whose floor is 0 are
/// still selectable.
#[test]
fn zipf_capacities_rotate_fractional_shares() {
    let (k, b, f) = (2usize, 8usize, 64usize);
    let density: Vec<f32> = (0..f).map(|j| 1.0 / (1.0 + j as f32)).collect();
    let cap = Capacity::Zipf {
        alpha: 1.0,
        beta: 0.0,
    };
    let steps = 4000u64;
    let mut mean = vec![0f64; f];
    for step in 0..steps {
        let m = capacities(&cap, k, b, f, &density, step);
        assert_eq!(m.iter().sum::<usize>(), k * b);
        for j in 0..f {
            mean[j] += m[j] as f64 / steps as f64;
        }
    }
    // Exact shares: (r)^-1 normalised to kB over ranks 1..F (no feature reaches the cap B = 8
    // except rank 1: 16 / H_64 ≈ 3.38, so none is capped).
    let h: f64 = (1..=f).map(|r| 1.0 / r as f64).sum();
    for j in 0..f {
        let exact = (k * b) as f64 / ((j + 1) as f64 * h);
        assert!(
            (mean[j] - exact).abs() < 0.02,
            "feature {j}: mean capacity {} vs exact share {exact}",
            mean[j]
        );
        assert!(mean[j] > 0.0, "feature {j} was never given a capacity");
    }
}

/// Thresholds learned on one batch (one ulp below each feature's smallest selected activation,
/// as the trainer stores them) reproduce a batch-dependent rule's selection on that batch
/// exactly (tolerance: 0 differing entries), except at exact ties crossing the cut, which this
/// continuous case does not have.
#[test]
fn jumprelu_with_learned_thresholds_reproduces_batch_rules() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (b, f) = (64, 40);
    let a: Vec<f32> = (0..b * f)
        .map(|_| {
            let v: f32 = rand::Rng::random_range(&mut rng, -1.0..2.0);
            v.max(0.0)
        })
        .collect();
    let rules: Vec<Box<dyn Allocation>> = vec![
        Box::new(MutualChoice {
            k: 3,
            token_cap: None,
        }),
        Box::new(FeatureChoice {
            k: 3,
            capacity: Capacity::Uniform,
            capacity_factor: 1.0,
            token_cap: None,
        }),
        Box::new(FeatureChoice {
            k: 3,
            capacity: Capacity::Zipf {
                alpha: 0.8,
                beta: 2.0,
            },
            capacity_factor: 1.0,
            token_cap: None,
        }),
        Box::new(FeatureChoice {
            k: 3,
            capacity: Capacity::Uniform,
            capacity_factor: 2.5,
            token_cap: None,
        }),
    ];
    for rule in rules {
        let m = run(rule.as_ref(), &a, b, f);
        let mut theta = vec![f32::INFINITY; f];
        for i in 0..b {
            for &j in m.row(i) {
                theta[j as usize] = theta[j as usize].min(a[i * f + j as usize]);
            }
        }
        let theta: Vec<f32> = theta.iter().map(|t| t.next_down()).collect();
        let jm = run(&JumpRelu { thresholds: theta }, &a, b, f);
        assert_eq!(selected_set(&jm), selected_set(&m), "rule {}", rule.name());
    }
}

fn small_params(d: usize, f: usize, seed: u64) -> SaeParams {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = SaeParams::init_tied(d, f, vec![0.0; d], &mut rng);
    // Untie and move away from the symmetric init so every gradient term is exercised.
    for (i, w) in p.w_enc.iter_mut().enumerate() {
        *w += 0.3 * ((i as f32) * 0.37).sin();
    }
    for (i, b) in p.b_enc.iter_mut().enumerate() {
        *b = 0.05 * ((i as f32) * 1.3).cos();
    }
    for (i, b) in p.b_dec.iter_mut().enumerate() {
        *b = 0.1 * ((i as f32) * 0.7).sin();
    }
    p
}

fn data(b: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b * d)
        .map(|_| rand::Rng::random_range(&mut rng, -1.5f32..1.5))
        .collect()
}

/// Central finite differences in f64 of the full loss with fixed selections, against the
/// autograd gradient, for every parameter tensor.
fn fd_check(rule: &dyn Allocation, aux_u: Option<Vec<f32>>, norm: AuxNorm) {
    let (b, d, f) = (12, 5, 9);
    let p = small_params(d, f, 1);
    let x = data(b, d, 2);
    let k_aux = 3;
    let density = vec![0.0; f];
    let mk_sel = |a: &[f32]| {
        let mut main = Matching::default();
        rule.select(
            &AllocInput {
                a,
                b,
                f,
                density: &density,
                step: 0,
            },
            &mut main,
        );
        let aux = aux_u.as_ref().map(|u| {
            let mut m = Matching::default();
            aux_select(a, b, f, u, k_aux, None, &mut m);
            m
        });
        Selections { main, aux }
    };
    let term = Some(AuxTerm {
        coeff: 0.7,
        norm,
        residual: None,
    });
    let (_, grads, sel, _) = forward_backward(&p, &x, b, DType::F64, term, true, mk_sel).unwrap();
    // The auxiliary target e = x − x̂ is a constant (detached): hold it fixed while differencing.
    let (_, xhat) = super::reference::reconstruct(&p, &x, b, &sel.main).unwrap();
    let e: Vec<f32> = x.iter().zip(&xhat).map(|(a, h)| a - h).collect();
    let grads = grads.unwrap();
    assert!(sel.main.nnz() > 0);
    if aux_u.is_some() {
        assert!(
            sel.aux.as_ref().unwrap().nnz() > 0,
            "aux selected nothing: the check would be vacuous"
        );
    }
    let loss_at = |q: &SaeParams| {
        let s = sel.clone();
        let term = Some(AuxTerm {
            coeff: 0.7,
            norm,
            residual: Some(&e),
        });
        forward_backward(q, &x, b, DType::F64, term, false, move |_| s)
            .unwrap()
            .0
            .total
    };
    type Field = fn(&mut SaeParams) -> &mut Vec<f32>;
    let fields: [(&str, Field, &Vec<f32>); 4] = [
        ("W_enc", |q| &mut q.w_enc, &grads.w_enc),
        ("b_enc", |q| &mut q.b_enc, &grads.b_enc),
        ("W_dec", |q| &mut q.w_dec, &grads.w_dec),
        ("b_dec", |q| &mut q.b_dec, &grads.b_dec),
    ];
    for (name, field, g) in fields {
        let n = field(&mut p.clone()).len();
        let mut max_err = 0f64;
        let mut max_g = 0f64;
        for (i, &gi) in g.iter().enumerate().take(n) {
            let mut qp = p.clone();
            let mut qm = p.clone();
            let eps = 1e-3f32;
            field(&mut qp)[i] += eps;
            field(&mut qm)[i] -= eps;
            let h = (field(&mut qp)[i] as f64) - (field(&mut qm)[i] as f64);
            let fd = (loss_at(&qp) - loss_at(&qm)) / h;
            max_err = max_err.max((fd - gi as f64).abs());
            max_g = max_g.max((gi as f64).abs());
        }
        assert!(
            max_g > 1e-4,
            "{name}: gradient is all zero, check is vacuous"
        );
        assert!(
            max_err <= 2e-3 * max_g.max(1.0),
            "{name}: max |fd - grad| = {max_err:e} (max |grad| {max_g:e})"
        );
    }
}

#[test]
fn gradients_match_finite_differences_topk_no_aux() {
    fd_check(&TopK { k: 3 }, None, AuxNorm::Nmse);
}

#[test]
fn gradients_match_finite_differences_mutual_choice_aux_k() {
    // aux_k: the last four features dead.
    let u = (0..9).map(|j| if j >= 5 { 1.0 } else { 0.0 }).collect();
    fd_check(
        &MutualChoice {
            k: 2,
            token_cap: None,
        },
        Some(u),
        AuxNorm::Nmse,
    );
}

#[test]
fn gradients_match_finite_differences_feature_choice_aux_zipf() {
    // aux_zipf: graded eligibilities, MSE normalisation.
    let u = vec![0.0, 0.2, 0.0, 0.9, 1.0, 0.5, 0.0, 0.3, 1.0];
    fd_check(
        &FeatureChoice {
            k: 2,
            capacity: Capacity::Uniform,
            capacity_factor: 1.0,
            token_cap: None,
        },
        Some(u),
        AuxNorm::Mse,
    );
}

#[test]
fn gradients_match_finite_differences_jumprelu() {
    fd_check(
        &JumpRelu {
            thresholds: vec![0.2; 9],
        },
        None,
        AuxNorm::Nmse,
    );
}

/// Spec property 1: with u ∈ {0, 1} (1 exactly for dead features), aux_zipf's selection and
/// loss equal aux_k's.
#[test]
fn aux_zipf_equals_aux_k_for_binary_underuse() {
    let (b, d, f) = (16, 6, 12);
    let p = small_params(d, f, 3);
    let x = data(b, d, 4);
    let dead: Vec<bool> = (0..f).map(|j| j % 3 == 0).collect();
    let u_k = AuxK
        .weights(&FeatureStats {
            density: &[0.1; 12],
            dead: &dead,
        })
        .u;
    // Densities at which aux_zipf's u is exactly {0, 1}: with a flat target (α = 0) every live
    // feature is above it and every dead one has u = 1.
    let density: Vec<f32> = (0..f).map(|j| if dead[j] { 0.0 } else { 1.0 }).collect();
    let zipf = AuxZipf {
        alpha: super::config::ZipfParam::Value(0.0),
        beta: super::config::ZipfParam::Value(0.0),
        fit_head: 0.5,
        dead_first: false,
    };
    let u_z = zipf
        .weights(&FeatureStats {
            density: &density,
            dead: &dead,
        })
        .u;
    assert!(u_z.iter().all(|&u| u == 0.0 || u == 1.0), "{u_z:?}");
    assert_eq!(u_z, u_k);
    let term = Some(AuxTerm {
        coeff: 1.0 / 32.0,
        norm: AuxNorm::Nmse,
        residual: None,
    });
    let loss_with = |u: &Vec<f32>| {
        let (losses, grads, _, _) = forward_backward(&p, &x, b, DType::F32, term, true, |a| {
            let mut main = Matching::default();
            TopK { k: 2 }.select(
                &AllocInput {
                    a,
                    b,
                    f,
                    density: &density,
                    step: 0,
                },
                &mut main,
            );
            let mut m = Matching::default();
            aux_select(a, b, f, u, 3, None, &mut m);
            Selections { main, aux: Some(m) }
        })
        .unwrap();
        (losses, grads.unwrap())
    };
    let (lk, gk) = loss_with(&u_k);
    let (lz, gz) = loss_with(&u_z);
    assert!(lk.aux > 0.0);
    assert!((lk.aux - lz.aux).abs() <= 1e-6 * lk.aux.abs());
    assert_eq!(gk, gz);
}

/// Spec property 3: features at or above their target get no auxiliary gradient.
#[test]
fn features_at_target_get_no_aux_gradient() {
    let (b, d, f) = (16, 6, 12);
    let p = small_params(d, f, 6);
    let x = data(b, d, 7);
    let dead = vec![false; f];
    // Feature 0..4 well above a Zipf target, the rest far below.
    let density: Vec<f32> = (0..f).map(|j| if j < 4 { 0.5 } else { 0.001 }).collect();
    let zipf = AuxZipf {
        alpha: super::config::ZipfParam::Value(1.0),
        beta: super::config::ZipfParam::Value(1.0),
        fit_head: 0.5,
        dead_first: false,
    };
    let u = zipf
        .weights(&FeatureStats {
            density: &density,
            dead: &dead,
        })
        .u;
    assert!(u[..4].iter().all(|&v| v == 0.0), "{u:?}");
    assert!(u[4..].iter().all(|&v| v > 0.0), "{u:?}");
    // Aux loss alone (empty main matching) so every gradient is the auxiliary one.
    let term = Some(AuxTerm {
        coeff: 1.0,
        norm: AuxNorm::Nmse,
        residual: None,
    });
    let (losses, grads, _, _) = forward_backward(&p, &x, b, DType::F64, term, true, |a| {
        let mut m = Matching::default();
        aux_select(a, b, f, &u, 3, None, &mut m);
        let mut main = Matching::default();
        main.reset(b, f);
        (0..b).for_each(|_| main.end_row());
        Selections { main, aux: Some(m) }
    })
    .unwrap();
    assert!(losses.aux > 0.0);
    let g = grads.unwrap();
    for j in 0..f {
        let enc: f32 = g.w_enc[j * d..(j + 1) * d].iter().map(|v| v.abs()).sum();
        let dec: f32 = g.w_dec[j * d..(j + 1) * d].iter().map(|v| v.abs()).sum();
        if j < 4 {
            assert_eq!(
                enc + dec + g.b_enc[j].abs(),
                0.0,
                "feature {j} at target got aux gradient"
            );
        }
    }
    assert!(g.w_dec[4 * d..].iter().any(|v| *v != 0.0));
}

#[test]
fn registry_builds_every_rule() {
    use super::config::{Architecture, SaeConfig, ThresholdMode};
    for arch in [
        Architecture::TopK,
        Architecture::MutualChoice,
        Architecture::FeatureChoice,
        Architecture::JumpRelu,
    ] {
        let cfg = SaeConfig {
            architecture: arch,
            d_in: 4,
            d_sae: 8,
            k: 2,
            capacity: Capacity::Uniform,
            capacity_factor: 1.0,
            token_cap: 0.0,
            threshold_mode: ThresholdMode::Feature,
            threshold_ema: 0.9,
            threshold_source: Default::default(),
            calibration_tokens: 65_536,
        };
        let r = allocation::build(&cfg, Some(&[0.1; 8])).unwrap();
        assert_eq!(r.name(), arch.name());
    }
}
