//! The trainer's numbers against values computed by hand or recomputed independently:
//! the learning-rate schedule, the learned JumpReLU thresholds (per-feature EMA and global),
//! the input-scaling fold of the export, the evaluation metrics on a tiny fixed example, and
//! aux_zipf = aux_k through a whole training step when the Zipf target is flat.

mod cases;
use sparsa::data::activations::{BatchSource, DataError};
use sparsa::sae::allocation::{self, AllocInput, Matching};
use sparsa::sae::config::{Architecture, RunConfig};
use sparsa::sae::io::{SaeMeta, SaeModel};
use sparsa::sae::metrics::{evaluate, Form};
use sparsa::sae::params::SaeParams;
use sparsa::sae::train::{DataSpec, Trainer};
use sparsa::util::progress::{Cancel, NoProgress};

fn cfg(arch: &str, aux: &str) -> RunConfig {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = 48
k = 3
[aux]
kind = "{aux}"
dead_tokens = 128
density_window_tokens = 1024
[train]
batch_size = 64
steps = 12
lr = 3e-3
warmup_steps = 3
seed = 4
init_sample = 512
log_every = 1
[data]
synthetic = {{ d = 10, n_features = 30, seed = 6 }}
"#
    );
    RunConfig::from_toml(&text, &[], "test").unwrap()
}

fn trainer(c: &RunConfig) -> (Trainer, Box<dyn BatchSource>) {
    let data = DataSpec::open(c).unwrap();
    let t = Trainer::new(c.clone(), data.d(), &data.init_sample(c).unwrap()).unwrap();
    let src = data.training_source(c, 0).unwrap();
    (t, src)
}

fn next(src: &mut Box<dyn BatchSource>, rows: usize) -> Vec<f32> {
    let mut x = vec![0f32; rows * src.d()];
    assert_eq!(src.next_batch(&mut x).unwrap(), rows);
    x
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Linear warm-up over `warmup_steps`, constant, then linear decay to 0 over the last
/// `decay_fraction` of the steps; the rate a step reports is the rate it used.
#[test]
fn learning_rate_schedule_matches_hand_values() {
    // 10 steps, warm-up 3, decay over the last 20 % (from step index 8).
    let mut c = cfg("topk", "none");
    c.train.steps = 10;
    c.train.lr = Some(1e-3);
    c.train.warmup_steps = 3;
    c.train.decay_fraction = 0.2;
    let want = [1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
    let (mut t, mut src) = trainer(&c);
    let mut seen = Vec::new();
    t.run(
        src.as_mut(),
        None,
        &NoProgress,
        &Cancel::new(),
        None,
        &mut |m| {
            seen.push(m.lr);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 10);
    for (i, (&got, &w)) in seen.iter().zip(&want).enumerate() {
        assert!(
            rel(got, 1e-3 * w) < 1e-12,
            "step {i}: lr {got}, want {}",
            1e-3 * w
        );
    }

    // 8 steps, warm-up 2, decay over the last half (from step 4): 4/4, 3/4, 2/4, 1/4.
    c.train.steps = 8;
    c.train.warmup_steps = 2;
    c.train.decay_fraction = 0.5;
    let (t, _) = trainer(&c);
    let want = [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25];
    for (i, &w) in want.iter().enumerate() {
        assert!(rel(t.lr_at(i as u64), 1e-3 * w) < 1e-12, "step {i}");
    }

    // No warm-up, no decay: constant. Default rate 2e-4 / √(F / 2^14): F = 4·2^14 → 1e-4.
    c.train.warmup_steps = 0;
    c.train.decay_fraction = 0.0;
    c.train.lr = None;
    c.sae.d_sae = 4 * 16384;
    assert!(rel(c.lr(), 1e-4) < 1e-12);
    c.sae.d_sae = 48;
    c.train.lr = Some(1e-3);
    let (t, _) = trainer(&c);
    for i in 0..8 {
        assert_eq!(t.lr_at(i), 1e-3);
    }
}

/// θ_j after each step equals the EMA, recomputed here from the step's own matching, of one ulp
/// below feature j's smallest selected activation (first observation taken as is; features
/// never selected stay +∞); the global θ likewise over all features.
#[test]
fn learned_thresholds_follow_the_ema_of_each_steps_matching() {
    let grid = ["mutual_choice", "feature_choice"]
        .into_iter()
        .flat_map(|a| [false, true].map(move |r| (a, r)));
    cases::each(grid, |&(arch, reference)| {
        let mut c = cfg(arch, "aux_k");
        c.train.reference = reference;
        let what = format!("{arch} reference={reference}");
        let (mut t, mut src) = trainer(&c);
        let ema = c.sae.threshold_ema as f32;
        let f = c.sae.d_sae;
        let mut theta = vec![f32::INFINITY; f];
        let mut global = f32::INFINITY;
        let update = |th: &mut f32, obs: f32| {
            let obs = obs.next_down();
            *th = if th.is_finite() {
                ema * *th + (1.0 - ema) * obs
            } else {
                obs
            };
        };
        for step in 0..6 {
            let before = t.params.clone();
            let density = t.density();
            let mut x = next(&mut src, c.train.batch_size);
            t.step(&mut x).unwrap(); // x is now the scaled batch the trainer saw
            let b = c.train.batch_size;
            let a = before.encode_pre(&x, b).unwrap();
            let rule = allocation::build(&c.sae, None).unwrap();
            let mut m = Matching::default();
            rule.select(
                &AllocInput {
                    a: &a,
                    b,
                    f,
                    density: &density,
                    step: 0,
                },
                &mut m,
            );
            let mut min_sel = vec![f32::INFINITY; f];
            for i in 0..b {
                for &j in m.row(i) {
                    min_sel[j as usize] = min_sel[j as usize].min(a[i * f + j as usize]);
                }
            }
            for (th, &obs) in theta.iter_mut().zip(&min_sel) {
                if obs.is_finite() {
                    update(th, obs);
                }
            }
            let gmin = min_sel.iter().copied().fold(f32::INFINITY, f32::min);
            update(&mut global, gmin);
            let fired = (0..f).filter(|&j| min_sel[j].is_finite()).count();
            assert!(fired > 5, "{what}: only {fired} features fired");
            for (j, (&got, &want)) in t.state.thresholds.iter().zip(&theta).enumerate() {
                assert_eq!(
                    got.is_finite(),
                    want.is_finite(),
                    "{what} step {step} feature {j}: {got} vs {want}"
                );
                if got.is_finite() {
                    assert_eq!(got, want, "{what} step {step} feature {j}");
                }
            }
            assert_eq!(
                t.state.global_threshold, global,
                "{what} step {step}: global"
            );
        }
        // The export uses them as the configured mode says.
        assert_eq!(t.model().thresholds.unwrap(), t.state.thresholds);
        t.cfg.sae.threshold_mode = sparsa::sae::config::ThresholdMode::Global;
        assert_eq!(
            t.model().thresholds.unwrap(),
            vec![t.state.global_threshold; f]
        );
    });
}

/// Rows handed out from memory.
struct Rows {
    d: usize,
    x: Vec<f32>,
    at: usize,
}

impl BatchSource for Rows {
    fn d(&self) -> usize {
        self.d
    }
    fn next_batch(&mut self, out: &mut [f32]) -> Result<usize, DataError> {
        let n = (out.len() / self.d).min((self.x.len() - self.at) / self.d);
        out[..n * self.d].copy_from_slice(&self.x[self.at..self.at + n * self.d]);
        self.at += n * self.d;
        Ok(n)
    }
}

/// The exported SAE (input scaling folded into the weights, raw inputs) has the trainer's FVU
/// (scaled inputs, unfolded weights) on the same rows, within 1e-5 relative.
#[test]
fn folded_export_has_the_trainers_fvu() {
    cases::each(["topk", "mutual_choice", "feature_choice"], |&arch| {
        let c = cfg(arch, "aux_k");
        let (mut t, mut src) = trainer(&c);
        for _ in 0..8 {
            let mut x = next(&mut src, c.train.batch_size);
            t.step(&mut x).unwrap();
        }
        assert!(
            (t.scale - 1.0).abs() > 0.05,
            "scale {} folds nothing",
            t.scale
        );
        let x = next(&mut src, c.train.batch_size);
        let model = t.model();
        let mut rows = Rows {
            d: t.d(),
            x: x.clone(),
            at: 0,
        };
        let b = c.train.batch_size;
        let exported =
            evaluate(&model, Form::Training, &mut rows, b, b as u64, &NoProgress).unwrap();
        let m = t.step(&mut x.clone()).unwrap(); // FVU before this step's update
        assert!(
            rel(exported.fvu, m.fvu) < 1e-5,
            "{arch}: exported FVU {} vs trainer {}",
            exported.fvu,
            m.fvu
        );
        assert_eq!(exported.l0_mean, m.l0_mean, "{arch}");
    });
}

/// A tiny SAE whose metrics are worked out by hand (d = 2, F = 4, TopK k = 1, no biases):
/// features 0, 1 read and write the axes, feature 2 reads −(x₁+x₂) and writes (−0.6, −0.8),
/// feature 3 never fires.
///
/// | x | A | chosen | x̂ | ‖x − x̂‖² | ‖x̂‖² | x̂·x | cos |
/// |---|---|---|---|---|---|---|---|
/// | (3, 1) | (3, 1, 0, 0) | 0 | (3, 0) | 1 | 9 | 9 | 3/√10 |
/// | (1, 2) | (1, 2, 0, 0) | 1 | (0, 2) | 1 | 4 | 4 | 2/√5 |
/// | (−1, −2) | (0, 0, 3, 0) | 2 | (−1.8, −2.4) | 0.8 | 9 | 6.6 | 2.2/√5 |
/// | (−2, 0) | (0, 0, 2, 0) | 2 | (−1.2, −1.6) | 3.2 | 4 | 2.4 | 0.6 |
/// | (0, 0) | 0 | — | (0, 0) | 0 | 0 | 0 | 0 |
///
/// Σ‖x − x̂‖² = 6, x̄ = (0.2, 0.2), Σ‖x − x̄‖² = 24 − 5·0.08 = 23.6: FVU = 6/23.6, MSE = 6/10;
/// L0 = (1, 1, 1, 1, 0): mean 0.8, std 0.4, max 1, zero share 0.2; densities (0.2, 0.2, 0.4, 0):
/// dead 1/4, dense (> 0.1) 3/4; γ = 26/22; log10 densities −0.699 (bin [−1, −0.5), twice) and
/// −0.398 (bin [−0.5, 0)), one never fired.
#[test]
fn evaluation_metrics_match_hand_computation() {
    let model = SaeModel {
        params: SaeParams {
            d: 2,
            f: 4,
            w_enc: vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 0.0, 0.0],
            b_enc: vec![0.0, 0.0, 0.0, -1.0],
            w_dec: vec![1.0, 0.0, 0.0, 1.0, -0.6, -0.8, 1.0, 0.0],
            b_dec: vec![0.0, 0.0],
        },
        thresholds: None,
        meta: SaeMeta {
            trained_architecture: Architecture::TopK,
            k: 1,
            ..Default::default()
        },
        density: vec![0.0; 4],
    };
    let x = vec![3.0, 1.0, 1.0, 2.0, -1.0, -2.0, -2.0, 0.0, 0.0, 0.0];
    for batch in [5, 2] {
        let mut rows = Rows {
            d: 2,
            x: x.clone(),
            at: 0,
        };
        let r = evaluate(&model, Form::Inference, &mut rows, batch, 100, &NoProgress).unwrap();
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() < 1e-6,
                "batch {batch}: {what} = {got}, by hand {want}"
            )
        };
        assert_eq!(r.tokens, 5);
        close(r.fvu, 6.0 / 23.6, "FVU");
        close(r.mse, 0.6, "MSE");
        let cos = (3.0 / 10f64.sqrt() + 2.0 / 5f64.sqrt() + 2.2 / 5f64.sqrt() + 0.6) / 5.0;
        close(r.cosine, cos, "cosine");
        close(r.l0_mean, 0.8, "L0 mean");
        close(r.l0_std, 0.4, "L0 std");
        assert_eq!(r.l0_max, 1);
        close(r.l0_zero_frac, 0.2, "L0 = 0 share");
        close(r.dead_frac, 0.25, "dead share");
        close(r.dense_frac, 0.75, "dense share");
        close(r.rel_bias, 26.0 / 22.0, "relative bias");
        assert_eq!(r.density, vec![0.2, 0.2, 0.4, 0.0]);
        let hist = &r.log10_density_hist;
        assert_eq!(hist.len(), 17);
        assert_eq!(hist[0], (None, 1), "never fired");
        for (edge, n) in &hist[1..] {
            let want = match edge {
                Some(e) if (*e - -1.0).abs() < 1e-12 => 2,
                Some(e) if (*e - -0.5).abs() < 1e-12 => 1,
                _ => 0,
            };
            assert_eq!(*n, want, "bin {edge:?}");
        }
    }
}

/// Spec property 1 through the loss of a whole training step: with a flat Zipf target (α = 0),
/// live features at or above it and dead features at u = 1, a step with aux_zipf computes the
/// same auxiliary loss and moves the weights exactly as a step with aux_k. With a non-flat
/// target (α = 1) the same state gives a different step, so the comparison has teeth.
#[test]
fn aux_zipf_step_equals_aux_k_step_when_the_target_is_flat() {
    let grid = ["topk", "mutual_choice"]
        .into_iter()
        .flat_map(|a| [false, true].map(move |r| (a, r)));
    cases::each(grid, |&(arch, reference)| {
        let what = format!("{arch} reference={reference}");
        let run = |aux: &str, alpha: f64| {
            let mut c = cfg(arch, aux);
            c.train.reference = reference;
            c.aux.zipf_alpha = sparsa::sae::config::ZipfParam::Value(alpha);
            c.aux.zipf_beta = sparsa::sae::config::ZipfParam::Value(0.0);
            let (mut t, mut src) = trainer(&c);
            // State: every third feature dead (never fired in dead_tokens), the others live
            // at densities all above the flat target Σρ/F.
            let f = c.sae.d_sae;
            for j in 0..f {
                let dead = j % 3 == 0;
                t.state.since_fired[j] = if dead { c.aux.dead_tokens } else { 0 };
                t.state.density_ema[j] = if dead {
                    0.0
                } else {
                    0.05 + 0.01 * (j % 5) as f32
                };
            }
            t.state.density_updates = 1_000_000;
            let mut x = next(&mut src, c.train.batch_size);
            let m = t.step(&mut x).unwrap();
            (m, t.params)
        };
        let (mk, pk) = run("aux_k", 0.0);
        let (mz, pz) = run("aux_zipf", 0.0);
        assert!(mk.aux_loss > 0.0, "{what}: aux_k did nothing");
        assert_eq!(mk.aux_eligible, 16, "{what}");
        assert_eq!(mz.aux_eligible, mk.aux_eligible, "{what}");
        assert!(
            rel(mz.aux_loss, mk.aux_loss) < 1e-12,
            "{what}: aux loss {} vs {}",
            mz.aux_loss,
            mk.aux_loss
        );
        assert_eq!(mz.loss, mk.loss, "{what}");
        assert_eq!(pz, pk, "{what}: the step moved the weights differently");
        let (mz1, pz1) = run("aux_zipf", 1.0);
        assert!(
            mz1.aux_eligible != mk.aux_eligible || pz1 != pk,
            "{what}: a Zipf target with α = 1 changed nothing"
        );
    });
}

/// Row ids (first column) of every row a finite source hands out, or the first `n` of an
/// endless one.
fn ids_of(src: &mut dyn BatchSource, n: usize) -> Vec<u64> {
    let d = src.d();
    let mut buf = vec![0f32; 50 * d];
    let mut ids = Vec::new();
    while ids.len() < n {
        let got = src.next_batch(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        ids.extend(buf[..got * d].chunks(d).map(|r| r[0] as u64));
    }
    ids.truncate(n);
    ids
}

/// The held-out rows of a file (spread and tail): the training stream, the init sample and the
/// calibration sample never see them, the evaluation source hands out exactly them, and the
/// exported SAE records them.
#[test]
fn held_out_rows_stay_out_of_training() {
    use sparsa::data::activations::{write_safetensors_2d, Elem};
    use sparsa::sae::config::{holdout_ranges, HoldoutSplit};
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (1000usize, 3usize);
    let data: Vec<f32> = (0..n).flat_map(|i| [i as f32, 0.5, -0.25]).collect();
    let path = dir.path().join("acts.safetensors");
    write_safetensors_2d(&path, "activations", n, d, &data, Elem::F32).unwrap();
    for split in ["spread", "tail"] {
        let text = format!(
            "[sae]\narchitecture = \"topk\"\nd_sae = 8\nk = 2\n[train]\nbatch_size = 50\n\
             steps = 1\ninit_sample = 2000\n[data]\npath = {:?}\nholdout_tokens = 100\n\
             holdout_split = \"{split}\"\nholdout_chunks = 7\nshuffle_buffer = 64\n",
            path.display().to_string()
        );
        let cfg = RunConfig::from_toml(&text, &[], "test").unwrap();
        let want = holdout_ranges(
            n as u64,
            100,
            cfg.data.holdout_split,
            cfg.data.holdout_chunks,
        );
        let held = |r: u64| want.iter().any(|&(a, b)| (a..b).contains(&r));
        assert_eq!(want.len(), if split == "tail" { 1 } else { 7 });
        assert_eq!(
            cfg.data.holdout_split == HoldoutSplit::Tail,
            split == "tail"
        );
        let spec = DataSpec::open(&cfg).unwrap();
        assert_eq!(spec.holdout(), &want[..]);

        let train = ids_of(&mut *spec.training_source(&cfg, 0).unwrap(), 2 * (n - 100));
        let mut epoch: Vec<u64> = train[..n - 100].to_vec();
        epoch.sort_unstable();
        let expect: Vec<u64> = (0..n as u64).filter(|&r| !held(r)).collect();
        assert_eq!(
            epoch, expect,
            "{split}: one training epoch = the non-held-out rows"
        );
        assert!(train.iter().all(|&r| !held(r)), "{split}");

        let sample = spec.init_sample(&cfg).unwrap();
        assert_eq!(
            sample.len(),
            (n - 100) * d,
            "{split}: init sample capped at training rows"
        );
        assert!(sample.chunks(d).all(|r| !held(r[0] as u64)), "{split}");
        let cal = ids_of(&mut *spec.calibration_source(&cfg, 500).unwrap(), 500);
        assert_eq!(cal.len(), 500);
        assert!(cal.iter().all(|&r| !held(r)), "{split}");

        let eval = ids_of(&mut *spec.eval_source(&cfg, 10_000).unwrap(), usize::MAX);
        let held_rows: Vec<u64> = (0..n as u64).filter(|&r| held(r)).collect();
        assert_eq!(
            eval, held_rows,
            "{split}: evaluation = the held-out rows in file order"
        );

        let t = Trainer::new(cfg.clone(), d, &sample).unwrap();
        assert_eq!(t.model().meta.holdout_rows, want, "{split}");
    }
}

/// A store of rows whose first column is the row id, in shards of `shard` rows, with a
/// `positions` tensor (contexts of 9 rows at positions 1..=9, as `activations extract` writes
/// them without the prefix row).
fn store_with_positions(dir: &std::path::Path, n: usize, d: usize, shard: usize) {
    use sparsa::data::activations::{write_store_with_positions, Elem};
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..d).map(move |j| if j == 0 { i as f32 } else { 0.5 }))
        .collect();
    let pos: Vec<u32> = (0..n).map(|i| (i % 9) as u32 + 1).collect();
    let parts: Vec<&[f32]> = data.chunks(shard * d).collect();
    let pos_parts: Vec<&[u32]> = pos.chunks(shard).collect();
    write_store_with_positions(dir, d, Elem::F32, &parts, Some(&pos_parts)).unwrap();
}

/// `data.exclude_positions`: rows at those in-context positions reach neither training, the init
/// sample, calibration nor evaluation (held-out rows stay held out), the SAE records the
/// positions, and data that cannot name positions is refused with a message saying why.
#[test]
fn excluded_positions_stay_out_of_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (1000usize, 3usize);
    store_with_positions(dir.path(), n, d, 400);
    let text = |path: &std::path::Path| {
        format!(
            "[sae]\narchitecture = \"topk\"\nd_sae = 8\nk = 2\n[train]\nbatch_size = 50\n\
             steps = 1\ninit_sample = 2000\n[data]\npath = {:?}\nholdout_tokens = 100\n\
             holdout_chunks = 4\nshuffle_buffer = 64\nexclude_positions = [1, 5]\n",
            path.display().to_string()
        )
    };
    let cfg = RunConfig::from_toml(&text(dir.path()), &[], "test").unwrap();
    let spec = DataSpec::open(&cfg).unwrap();
    let held = |r: u64| spec.holdout().iter().any(|&(a, b)| (a..b).contains(&r));
    let skipped = |r: u64| [1, 5].contains(&(r % 9 + 1));
    let train_rows: Vec<u64> = (0..n as u64).filter(|&r| !held(r) && !skipped(r)).collect();
    let eval_rows: Vec<u64> = (0..n as u64).filter(|&r| held(r) && !skipped(r)).collect();
    assert!(train_rows.len() < 800 && !eval_rows.is_empty());

    let mut epoch = ids_of(
        &mut *spec.training_source(&cfg, 0).unwrap(),
        train_rows.len(),
    );
    epoch.sort_unstable();
    assert_eq!(
        epoch, train_rows,
        "one training epoch = rows neither held out nor skipped"
    );
    let sample = spec.init_sample(&cfg).unwrap();
    assert_eq!(sample.len(), train_rows.len() * d);
    assert!(sample.chunks(d).all(|r| !skipped(r[0] as u64)));
    let cal = ids_of(&mut *spec.calibration_source(&cfg, 500).unwrap(), 500);
    assert!(cal.iter().all(|&r| !skipped(r) && !held(r)));
    let eval = ids_of(&mut *spec.eval_source(&cfg, 10_000).unwrap(), usize::MAX);
    assert_eq!(
        eval, eval_rows,
        "evaluation = the held-out rows minus the skipped ones"
    );
    let t = Trainer::new(cfg.clone(), d, &sample).unwrap();
    assert_eq!(t.model().meta.exclude_positions, vec![1, 5]);

    // A plain file and a store without positions cannot say where a row sits.
    let plain = dir.path().join("plain.safetensors");
    let data: Vec<f32> = vec![0.5; 300 * d];
    sparsa::data::activations::write_safetensors_2d(
        &plain,
        "activations",
        300,
        d,
        &data,
        sparsa::data::activations::Elem::F32,
    )
    .unwrap();
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    sparsa::data::activations::write_store(
        &bare,
        d,
        sparsa::data::activations::Elem::F32,
        &[&data],
    )
    .unwrap();
    for (path, says) in [(&plain, "plain file"), (&bare, "no `positions` tensor")] {
        let cfg = RunConfig::from_toml(&text(path), &[], "test").unwrap();
        let e = DataSpec::open(&cfg).err().expect("refused").to_string();
        assert!(e.contains(says), "{e}");
    }
}

/// A store left by an interrupted extraction (`complete: false`) is refused for training with a
/// message that says how to finish it; the same store marked complete trains.
#[test]
fn an_incomplete_store_is_refused() {
    use sparsa::data::activations::{write_store, Elem};
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (300usize, 3usize);
    let data: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32 - 3.0).collect();
    write_store(dir.path(), d, Elem::F32, &[&data]).unwrap();
    let mp = dir.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    let text = format!(
        "[sae]\narchitecture = \"topk\"\nd_sae = 8\nk = 2\n[train]\nbatch_size = 50\nsteps = 1\n\
         init_sample = 100\n[data]\npath = {:?}\n",
        dir.path().display().to_string()
    );
    let cfg = RunConfig::from_toml(&text, &[], "test").unwrap();
    for (complete, ok) in [(false, false), (true, true)] {
        m["complete"] = serde_json::Value::Bool(complete);
        std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
        match DataSpec::open(&cfg) {
            Ok(_) => assert!(ok, "an incomplete store was accepted"),
            Err(e) => {
                assert!(!ok, "a complete store was refused: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("incomplete") && msg.contains("activations extract"),
                    "{msg}"
                );
            }
        }
    }
}
