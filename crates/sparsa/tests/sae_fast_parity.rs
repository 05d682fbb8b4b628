//! The fused fast step (`sae::fast`) against the reference step (dense candle autograd + Adam):
//! same losses, gradients and parameters for every architecture × auxiliary loss, including
//! batches where some tokens have fewer positive pre-activations than k and some features fewer
//! than their capacity m_j; and bit-identical repeated runs on one thread.
//!
//! Tolerances: losses within 1e-5 relative; each parameter tensor within 1e-4 relative in
//! Frobenius norm (‖p_fast − p_ref‖ / ‖p_ref‖). Element-wise relative error is not meaningful
//! after Adam: its first update is ±lr·sign(g) for any non-zero g, so a gradient entry that is
//! zero up to rounding can move by 2·lr in one path and not the other.

mod cases;
use sparsa::data::activations::BatchSource;
use sparsa::data::synthetic::{SyntheticConfig, SyntheticSource};
use sparsa::sae::allocation::{self, AllocInput, Matching};
use sparsa::sae::config::{AuxNorm, RunConfig};
use sparsa::sae::fast::{AuxSpec, FastStep};
use sparsa::sae::loss::{aux_select, DEAD_FIRST};
use sparsa::sae::optim::Grads;
use sparsa::sae::params::SaeParams;
use sparsa::sae::reference::{self, AuxTerm, Losses, Selections};
use sparsa::sae::train::Trainer;

const D: usize = 16;
const F: usize = 128;
const B: usize = 48;
/// k·B = 96 < F: under Feature Choice's uniform capacities features 96.. get m_j = 0, so they
/// die and the auxiliary losses have work.
const K: usize = 2;

const ARCHS: [&str; 3] = ["topk", "mutual_choice", "feature_choice"];
const AUXES: [&str; 3] = ["none", "aux_k", "aux_zipf"];

fn cfg(arch: &str, aux: &str, reference: bool) -> RunConfig {
    cfg_with(arch, aux, reference, "f32")
}

fn cfg_with(arch: &str, aux: &str, reference: bool, matmul: &str) -> RunConfig {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = {F}
k = {K}
[aux]
kind = "{aux}"
dead_tokens = {B}
density_window_tokens = 480
[train]
batch_size = {B}
steps = 10
lr = 2e-3
warmup_steps = 2
seed = 5
init_sample = 256
reference = {reference}
matmul = "{matmul}"
[data.synthetic]
d = {D}
n_features = 40
seed = 9
"#
    );
    RunConfig::from_toml(&text, &[], "test").unwrap()
}

fn source() -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig::new(D, 40, 9)).unwrap()
}

/// Bias the encoder so that feature j % 7 == 0 can never fire (fewer positives than its
/// capacity), feature 1 fires on the "empty" tokens, and every other feature needs
/// signal to fire.
fn shape_biases(p: &mut SaeParams) {
    for (j, b) in p.b_enc.iter_mut().enumerate() {
        *b = if j % 7 == 0 {
            -1e3
        } else if j == 1 {
            0.3
        } else {
            -0.3
        };
    }
}

/// A batch whose rows 0, 5, 10, … are "empty" tokens: x = b_dec / scale, so that X − b_dec ≈ 0
/// and only feature 1 (1 < k) is positive on them.
fn batch(src: &mut SyntheticSource, p: &SaeParams, scale: f32) -> Vec<f32> {
    let mut x = vec![0f32; B * D];
    src.next_batch(&mut x).unwrap();
    for (i, row) in x.chunks_mut(D).enumerate() {
        if i % 5 == 0 {
            row.iter_mut()
                .zip(&p.b_dec)
                .for_each(|(v, &b)| *v = b / scale);
        }
    }
    x
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

fn rel_scalar(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn assert_params_close(fast: &SaeParams, slow: &SaeParams, tol: f64, what: &str) {
    for (name, a, b) in [
        ("W_enc", &fast.w_enc, &slow.w_enc),
        ("b_enc", &fast.b_enc, &slow.b_enc),
        ("W_dec", &fast.w_dec, &slow.w_dec),
        ("b_dec", &fast.b_dec, &slow.b_dec),
    ] {
        let r = rel(a, b);
        assert!(r <= tol, "{what}: {name} differs by {r:e} relative");
    }
}

fn trainers(arch: &str, aux: &str) -> (Trainer, Trainer) {
    trainers_with(arch, aux, "f32")
}

fn trainers_with(arch: &str, aux: &str, matmul: &str) -> (Trainer, Trainer) {
    let c_fast = cfg_with(arch, aux, false, matmul);
    let c_ref = cfg_with(arch, aux, true, matmul);
    let mut s = source();
    let mut sample = vec![0f32; 256 * D];
    s.next_batch(&mut sample).unwrap();
    let mut fast = Trainer::new(c_fast, D, &sample).unwrap();
    let mut slow = Trainer::new(c_ref, D, &sample).unwrap();
    shape_biases(&mut fast.params);
    shape_biases(&mut slow.params);
    assert_eq!(fast.params, slow.params);
    (fast, slow)
}

#[test]
fn ten_fast_steps_match_ten_reference_steps() {
    // The default switch of the dense auxiliary block, then all dense and all pairwise.
    for above in [None, Some(0.0), Some(f64::INFINITY)] {
        ten_steps("f32", above);
    }
}

/// With `train.matmul = "bf16"`: the fast step (bf16 kernel, + b_enc and ReLU fused) against
/// the reference step whose encoder product sees bf16-rounded X′ and W_enc, to the same
/// tolerances. Only the encoder product is rounded in either path, so they stay together.
#[test]
fn ten_bf16_fast_steps_match_ten_bf16_reference_steps() {
    let (probe, _) = trainers_with("topk", "none", "bf16");
    match probe.matmul_fallback() {
        Some(why) => eprintln!("skipped: {why}"),
        None => {
            assert!(probe.encoder_product().starts_with("bf16 ("));
            ten_steps("bf16", None);
        }
    }
}

/// Ten steps of every architecture × auxiliary loss on both paths; `aux_dense_above` forces
/// the switch of the dense auxiliary block (`None`: the default).
fn ten_steps(matmul: &str, aux_dense_above: Option<f64>) {
    let grid = ARCHS
        .iter()
        .flat_map(|&a| AUXES.iter().map(move |&x| (a, x)));
    cases::each(grid, |&(arch, aux)| {
        let what = format!("{arch}+{aux} {matmul} dense auxiliary from {aux_dense_above:?}");
        let (mut fast, mut slow) = trainers_with(arch, aux, matmul);
        if let Some(t) = aux_dense_above {
            fast.set_aux_dense_above(t);
        }
        let mut dense_steps = 0;
        let mut src = source();
        let mut aux_steps = 0;
        let mut short_rows = false;
        for step in 0..10 {
            let x = batch(&mut src, &slow.params, slow.scale);
            let mf = fast.step(&mut x.clone()).unwrap();
            let ms = slow.step(&mut x.clone()).unwrap();
            dense_steps += usize::from(fast.fast_aux_dense());
            let at = format!("{what} step {step}");
            assert!(
                rel_scalar(mf.loss, ms.loss) <= 1e-5,
                "{at}: loss {} vs {}",
                mf.loss,
                ms.loss
            );
            assert!(
                rel_scalar(mf.fvu, ms.fvu) <= 1e-5,
                "{at}: fvu {} vs {}",
                mf.fvu,
                ms.fvu
            );
            assert!(
                rel_scalar(mf.mse, ms.mse) <= 1e-5,
                "{at}: mse {} vs {}",
                mf.mse,
                ms.mse
            );
            if ms.aux_loss != 0.0 || mf.aux_loss != 0.0 {
                aux_steps += 1;
                assert!(
                    rel_scalar(mf.aux_loss, ms.aux_loss) <= 1e-5,
                    "{at}: aux {} vs {}",
                    mf.aux_loss,
                    ms.aux_loss
                );
            }
            assert_eq!(
                mf.l0_mean, ms.l0_mean,
                "{at}: the two paths selected differently"
            );
            assert_eq!(mf.l0_max, ms.l0_max, "{at}");
            short_rows |= arch == "topk" && ms.l0_mean < K as f64;
            assert_params_close(&fast.params, &slow.params, 1e-4, &at);
            assert_eq!(fast.state.since_fired, slow.state.since_fired, "{at}");
        }
        if aux != "none" {
            assert!(
                aux_steps >= 5,
                "{what}: the auxiliary loss ran on only {aux_steps} steps"
            );
        }
        match aux_dense_above {
            Some(0.0) => assert_eq!(dense_steps, aux_steps, "{what}: dense steps"),
            Some(_) => assert_eq!(dense_steps, 0, "{what}: dense steps"),
            None => {}
        }
        if arch == "topk" {
            assert!(short_rows, "{what}: no token had fewer than k positives");
        }
        let ma = &fast.state.adam;
        let sa = &slow.state.adam;
        assert_eq!(ma.t, sa.t);
        for i in 0..4 {
            assert!(
                rel(&ma.m[i], &sa.m[i]) <= 1e-4,
                "{what}: Adam m[{i}] {:e}",
                rel(&ma.m[i], &sa.m[i])
            );
            assert!(
                rel(&ma.v[i], &sa.v[i]) <= 1e-4,
                "{what}: Adam v[{i}] {:e}",
                rel(&ma.v[i], &sa.v[i])
            );
        }
    });
}

/// With `train.grad_clip` on (a clip far below the gradient norm, so every step is clipped) the
/// two paths still agree step by step, and the clip matters: the clipped run ends elsewhere than
/// an unclipped one.
#[test]
fn fast_matches_reference_with_grad_clip() {
    const CLIP: f64 = 1e-3;
    let grid = ARCHS
        .iter()
        .flat_map(|&a| ["none", "aux_k"].map(move |x| (a, x)));
    cases::each(grid, |&(arch, aux)| {
        let what = format!("{arch}+{aux} clip {CLIP}");
        let (mut fast, mut slow) = trainers(arch, aux);
        let (mut free, _) = trainers(arch, aux);
        fast.cfg.train.grad_clip = CLIP;
        slow.cfg.train.grad_clip = CLIP;
        let mut src = source();
        for step in 0..10 {
            let x = batch(&mut src, &slow.params, slow.scale);
            let mf = fast.step(&mut x.clone()).unwrap();
            let ms = slow.step(&mut x.clone()).unwrap();
            free.step(&mut x.clone()).unwrap();
            let at = format!("{what} step {step}");
            assert!(
                rel_scalar(mf.loss, ms.loss) <= 1e-5,
                "{at}: loss {} vs {}",
                mf.loss,
                ms.loss
            );
            assert_eq!(mf.l0_mean, ms.l0_mean, "{at}");
            assert_params_close(&fast.params, &slow.params, 1e-4, &at);
        }
        let moved = rel(&free.params.w_enc, &fast.params.w_enc);
        assert!(
            moved > 1e-3,
            "{what}: clipping changed the encoder by only {moved:e}; is it applied?"
        );
    });
}

/// One step's gradients, fast vs reference, on the same matchings; the batch has tokens with
/// fewer positives than k and features with fewer positives than their capacity. The
/// auxiliary loss runs pair by pair, as dense products over all its features, and split
/// (the features with many pairs dense, the others pair by pair).
#[test]
fn gradients_match_reference_on_short_rows_and_columns() {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Path {
        Pairwise,
        Dense,
        Split,
    }
    let mut settings = vec![(None, AuxNorm::Nmse, false, Path::Pairwise)];
    for path in [Path::Pairwise, Path::Dense, Path::Split] {
        settings.extend([
            (Some(0.5f32), AuxNorm::Nmse, false, path),
            (Some(0.5f32), AuxNorm::Nmse, true, path),
            (Some(1.0), AuxNorm::Mse, false, path),
        ]);
    }
    let grid = ARCHS
        .iter()
        .flat_map(|&a| settings.iter().map(move |&s| (a, s)));
    cases::each(grid, |&(arch, (aux, norm, exclude, path))| {
        let what = format!("{arch} aux {aux:?} {norm:?} exclude {exclude} {path:?}");
        let c = cfg(arch, "none", false);
        let (fast_t, _) = trainers(arch, "none");
        let p = fast_t.params.clone();
        let mut src = source();
        let mut x = batch(&mut src, &p, fast_t.scale);
        x.iter_mut().for_each(|v| *v *= fast_t.scale);
        let alloc = allocation::build(&c.sae, None).unwrap();
        let density: Vec<f32> = (0..F).map(|j| 1.0 / (1.0 + j as f32)).collect();
        // aux_k-like eligibility (0/1) or aux_zipf-like graded eligibility.
        let u: Vec<f32> = (0..F)
            .map(|j| match aux {
                Some(v) if v >= 1.0 => f32::from(j % 3 == 0),
                Some(v) => v * ((j % 4) as f32) / 3.0,
                None => 0.0,
            })
            .collect();
        let k_aux = 4;
        let mut fs = FastStep::new();
        fs.set_aux_dense_above(match path {
            Path::Pairwise => f64::INFINITY,
            Path::Dense => 0.0,
            // A feature joins the block with at least 3 pairs of the 48 tokens.
            Path::Split => 2.5 / B as f64,
        });
        let spec = aux.map(|_| AuxSpec {
            u: &u,
            k_aux,
            coeff: 1.0 / 32.0,
            norm,
            exclude_matched: exclude,
        });
        let lf = fs
            .forward_backward(&p, &x, B, alloc.as_ref(), &density, 0, spec)
            .unwrap();
        let gf = fs.dense_grads();

        let select = |a: &[f32]| {
            let mut main = Matching::default();
            alloc.select(
                &AllocInput {
                    a,
                    b: B,
                    f: F,
                    density: &density,
                    step: 0,
                },
                &mut main,
            );
            let auxm = aux.map(|_| {
                let mut m = Matching::default();
                aux_select(a, B, F, &u, k_aux, exclude.then_some(&main), &mut m);
                m
            });
            Selections { main, aux: auxm }
        };
        let term = AuxTerm {
            coeff: 1.0 / 32.0,
            norm,
            residual: None,
        };
        let (lr, gr, sel) = reference_step(&p, &x, B, term, select);

        assert_eq!(sel.main, fs.main, "{what}");
        if aux.is_some() {
            // TopK selects both matchings in one pass: the same auxiliary matching.
            assert_eq!(
                sel.aux.as_ref(),
                Some(&fs.aux),
                "{what}: auxiliary matching"
            );
        }
        // The construction gives short rows and short columns.
        let l0 = fs.main.l0_per_row();
        assert!(l0.iter().any(|&n| n < K), "{what}: no short row {l0:?}");
        let counts = fs.main.per_feature_counts();
        assert!(
            (0..F).filter(|j| j % 7 == 0).all(|j| counts[j] == 0),
            "{what}"
        );
        if aux.is_some() {
            assert!(fs.aux_active(), "{what}: auxiliary selection empty");
            let (block, rest) = fs.aux_dense_split();
            let ran = match (block, rest) {
                (0, _) => Path::Pairwise,
                (_, 0) => Path::Dense,
                _ => Path::Split,
            };
            assert_eq!(
                ran, path,
                "{what}: auxiliary path ({block} block features, {rest} rest)"
            );
            assert!(lr.aux > 0.0);
        }
        assert_step_matches(&what, (&lf, &gf), (&lr, &gr));
    });
}

/// The reference step (f32) on the matchings `select` makes, its decoder gradient projected as
/// the fast step's is.
fn reference_step(
    p: &SaeParams,
    x: &[f32],
    b: usize,
    term: AuxTerm,
    select: impl Fn(&[f32]) -> Selections,
) -> (Losses, Grads, Selections) {
    let (lr, gr, sel, _) =
        reference::forward_backward(p, x, b, candle_core::DType::F32, Some(term), true, select)
            .unwrap();
    let mut gr = gr.unwrap();
    sparsa::sae::optim::project_decoder_grad(&p.w_dec, &mut gr.w_dec, D);
    (lr, gr, sel)
}

/// One step's losses within 1e-5 relative, each gradient within 1e-5 relative in norm, and the
/// decoder/encoder rows exactly zero where the reference's are (untouched features).
fn assert_step_matches(what: &str, fast: (&Losses, &Grads), slow: (&Losses, &Grads)) {
    let ((lf, gf), (lr, gr)) = (fast, slow);
    for (name, a, b) in [
        ("rec", lf.rec, lr.rec),
        ("aux", lf.aux, lr.aux),
        ("total", lf.total, lr.total),
    ] {
        assert!(rel_scalar(a, b) <= 1e-5, "{what}: {name} {a} vs {b}");
    }
    for (name, a, b) in [
        ("W_enc", &gf.w_enc, &gr.w_enc),
        ("b_enc", &gf.b_enc, &gr.b_enc),
        ("W_dec", &gf.w_dec, &gr.w_dec),
        ("b_dec", &gf.b_dec, &gr.b_dec),
    ] {
        let r = rel(a, b);
        assert!(r <= 1e-5, "{what}: grad {name} differs by {r:e}");
        if name.starts_with('W') {
            for (row_f, row_r) in a.chunks(D).zip(b.chunks(D)) {
                if row_r.iter().all(|&v| v == 0.0) {
                    assert!(
                        row_f.iter().all(|&v| v == 0.0),
                        "{what}: {name} row should be zero"
                    );
                }
            }
        }
    }
}

/// The batch rules with few eligible features (at most a quarter: the selector's compact route,
/// as aux_k late in training and aux_zipf in the benchmark): the fast step's auxiliary matching
/// equals a brute-force selection on A (not the library's selector), and its losses and
/// gradients equal the reference step's; with and without skipping the main matches (some
/// eligible features are main matches too), with graded and with dead-first (tiered)
/// eligibilities; Mutual Choice with and without a token cap (B 512: its sampled route).
#[test]
fn batch_rules_with_few_eligible_features_match_a_brute_force_selection() {
    const BIG: usize = 512;
    let grid = [
        ("mutual_choice", 0.0),
        ("mutual_choice", 2.0),
        ("feature_choice", 0.0),
    ]
    .into_iter()
    .flat_map(|r| [(false, false), (true, false), (true, true)].map(move |s| (r, s)));
    cases::each(grid, |&((arch, cap), (exclude, tiered))| {
        let what = format!("{arch} cap {cap} exclude {exclude} tiered {tiered}");
        let mut c = cfg(arch, "none", false);
        c.sae.token_cap = cap;
        let alloc = allocation::build(&c.sae, None).unwrap();
        let (t, _) = trainers(arch, "none");
        let mut p = t.params.clone();
        // Some eligible features fire often, so that the main matching takes them too.
        for j in (3..F).step_by(24) {
            p.b_enc[j] += 1.0;
        }
        let mut x = vec![0f32; BIG * D];
        source().next_batch(&mut x).unwrap();
        x.iter_mut().for_each(|v| *v *= t.scale);
        let density: Vec<f32> = (0..F).map(|j| 1.0 / (1.0 + j as f32)).collect();
        // Every 8th feature eligible (F/8 ≤ F/4: the compact route), some of them dead-first.
        let u: Vec<f32> = (0..F)
            .map(|j| match j % 8 {
                3 if tiered && j % 16 == 3 => DEAD_FIRST,
                3 => 0.25 + (j % 5) as f32 / 8.0,
                _ => 0.0,
            })
            .collect();
        let k_aux = 5;
        let spec = AuxSpec {
            u: &u,
            k_aux,
            coeff: 1.0 / 32.0,
            norm: AuxNorm::Nmse,
            exclude_matched: exclude,
        };
        let mut fs = FastStep::new();
        let lf = fs
            .forward_backward(&p, &x, BIG, alloc.as_ref(), &density, 0, Some(spec))
            .unwrap();
        let gf = fs.dense_grads();
        assert!(fs.aux_active(), "{what}: no auxiliary pair");
        let both = fs.main.cols.iter().filter(|&&j| j % 8 == 3).count();
        assert!(both > 0, "{what}: no eligible feature in the main matching");
        let select = |a: &[f32]| {
            let mut main = Matching::default();
            let input = AllocInput {
                a,
                b: BIG,
                f: F,
                density: &density,
                step: 0,
            };
            alloc.select(&input, &mut main);
            // The auxiliary matching by brute force (not the library's selector): per token,
            // eligible positive entries off its main matches, dead-first ones (ranked by a_ij)
            // before the others (ranked by u_j·a_ij), ties to the lower index.
            let rows: Vec<Vec<u32>> = (0..BIG)
                .map(|i| {
                    let row = &a[i * F..(i + 1) * F];
                    let mut c: Vec<(bool, f32, u32)> = (0..F)
                        .filter(|&j| u[j] > 0.0 && row[j] > 0.0)
                        .filter(|&j| !(exclude && main.row(i).contains(&(j as u32))))
                        .map(|j| {
                            (
                                u[j] > 1.0,
                                if u[j] > 1.0 { row[j] } else { row[j] * u[j] },
                                j as u32,
                            )
                        })
                        .collect();
                    c.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.total_cmp(&x.1)).then(x.2.cmp(&y.2)));
                    let mut r: Vec<u32> = c.iter().take(k_aux).map(|e| e.2).collect();
                    r.sort_unstable();
                    r
                })
                .collect();
            let mut m = Matching::default();
            m.from_rows(F, &rows);
            Selections { main, aux: Some(m) }
        };
        let term = AuxTerm {
            coeff: 1.0 / 32.0,
            norm: AuxNorm::Nmse,
            residual: None,
        };
        let (lr, gr, sel) = reference_step(&p, &x, BIG, term, select);
        assert_eq!(sel.main, fs.main, "{what}");
        assert_eq!(
            sel.aux.as_ref(),
            Some(&fs.aux),
            "{what}: auxiliary matching"
        );
        if tiered {
            // The dead-first features are served first wherever they are positive.
            let served = fs.aux.cols.iter().filter(|&&j| j % 16 == 3).count();
            assert!(served > 0, "{what}: no dead-first feature served");
        }
        assert_step_matches(&what, (&lf, &gf), (&lr, &gr));
    });
}

/// Ten fast steps; `aux_dense_above` sets the switch to the dense auxiliary products. Returns
/// the trainer and on how many steps the auxiliary loss ran dense.
fn run_fast(arch: &str, aux: &str, aux_dense_above: f64) -> (Trainer, usize) {
    let (mut t, _) = trainers(arch, aux);
    t.set_aux_dense_above(aux_dense_above);
    let mut src = source();
    let mut dense = 0;
    for _ in 0..10 {
        let p = t.params.clone();
        let mut x = batch(&mut src, &p, t.scale);
        t.step(&mut x).unwrap();
        dense += usize::from(t.fast_aux_dense());
    }
    (t, dense)
}

/// On one thread the fast path is bit-reproducible (the encoder product's summation order
/// depends on `gemm`'s blocking for a given thread count; every other reduction of the fast
/// step has a fixed order whatever the thread count).
#[test]
fn fast_path_on_one_thread_is_bit_identical_across_runs() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let grid = [
        ("topk", "aux_k"),
        ("mutual_choice", "aux_zipf"),
        ("feature_choice", "aux_zipf"),
    ]
    .into_iter()
    .flat_map(|c| [(c, f64::INFINITY), (c, 0.0), (c, 0.1)]);
    cases::each(grid, |&((arch, aux), above)| {
        let what = format!("{arch}+{aux} dense auxiliary from {above}");
        let (a, na) = pool.install(|| run_fast(arch, aux, above));
        let (b, _) = pool.install(|| run_fast(arch, aux, above));
        assert_eq!(a.params, b.params, "{what}");
        assert_eq!(a.state, b.state, "{what}");
        if above == 0.0 || above == f64::INFINITY {
            assert!((above == 0.0) == (na > 0), "{what}: {na} dense steps");
        }
    });
}
