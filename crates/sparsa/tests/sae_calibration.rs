//! Threshold calibration: on the calibration rows themselves, the JumpReLU inference form fires
//! each feature exactly as often as the training form selects it (per-feature mode), and its
//! total L0 equals the training form's (global mode).

use sparsa::sae::calibrate::{calibrate, deployable_model};
use sparsa::sae::config::{Architecture, RunConfig, ThresholdMode, ThresholdSource};
use sparsa::sae::io::SaeModel;
use sparsa::sae::metrics::{evaluate, Form};
use sparsa::sae::train::{DataSpec, Trainer};
use sparsa::util::progress::{Cancel, NoProgress};

const CAL_TOKENS: u64 = 8192;
const BATCH: usize = 512;

fn trained(arch: &str, extra: &[&str]) -> (Trainer, DataSpec) {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = 64
k = 4
calibration_tokens = {CAL_TOKENS}
[aux]
kind = "aux_k"
dead_tokens = 20000
density_window_tokens = 20000
[train]
batch_size = {BATCH}
steps = 200
lr = 4e-3
warmup_steps = 20
seed = 3
init_sample = 2048
[data.synthetic]
d = 24
n_features = 48
mean_active = 3.0
zipf_exponent = 0.6
complexity_spread = 2.0
noise_std = 0.01
seed = 11
"#
    );
    let set: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(&text, &set, "test").unwrap();
    let data = DataSpec::open(&cfg).unwrap();
    let sample = data.init_sample(&cfg).unwrap();
    let mut t = Trainer::new(cfg, data.d(), &sample).unwrap();
    let mut src = data.training_source(&t.cfg, 0).unwrap();
    t.run(
        src.as_mut(),
        None,
        &NoProgress,
        &Cancel::new(),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    (t, data)
}

/// Evaluate `model` in `form` on the calibration rows (in training-size batches).
fn on_calibration_rows(
    model: &SaeModel,
    form: Form,
    t: &Trainer,
    data: &DataSpec,
) -> sparsa::sae::metrics::EvalReport {
    let mut src = data.calibration_source(&t.cfg, CAL_TOKENS).unwrap();
    evaluate(model, form, src.as_mut(), BATCH, CAL_TOKENS, &NoProgress).unwrap()
}

fn check(arch: &str, extra: &[&str]) {
    let (t, data) = trained(arch, extra);
    let (model, cal) = deployable_model(&t, &data, &NoProgress).unwrap();
    let cal = cal.expect("batch-dependent rules are calibrated by default");
    assert_eq!(cal.tokens, CAL_TOKENS);
    assert_eq!(
        model.meta.threshold_calibration_tokens,
        Some(CAL_TOKENS),
        "the calibration is recorded in the SAE's metadata"
    );

    let train_form = on_calibration_rows(&model, Form::Training, &t, &data);
    let inference = on_calibration_rows(&model, Form::Inference, &t, &data);
    // The target is the training form's L0 on the same rows.
    assert!((train_form.l0_mean - cal.target_l0).abs() < 1e-9);
    let rel = (inference.l0_mean - cal.target_l0).abs() / cal.target_l0;
    assert!(
        rel < 1e-3,
        "{arch}: inference L0 {} vs training L0 {} on the calibration rows",
        inference.l0_mean,
        cal.target_l0
    );
    // Per feature: as many firings as training-form selections (continuous data: no ties).
    let n = CAL_TOKENS as f32;
    let mut off = 0usize;
    for j in 0..model.params.f {
        let fired = (inference.density[j] * n).round() as u64;
        if fired != cal.counts[j] {
            off += 1;
        }
    }
    assert!(
        off == 0,
        "{arch}: {off} features fire a different number of times than the training form selects them"
    );
    assert!((inference.dead_frac - train_form.dead_frac).abs() < 1e-12);

    // Global mode: one threshold, the same total L0.
    let mut g = model.clone();
    g.thresholds = Some(cal.thresholds(ThresholdMode::Global));
    let gi = on_calibration_rows(&g, Form::Inference, &t, &data);
    let rel = (gi.l0_mean - cal.target_l0).abs() / cal.target_l0;
    assert!(
        rel < 1e-3,
        "{arch} global: L0 {} vs {}",
        gi.l0_mean,
        cal.target_l0
    );

    // The calibrated thresholds differ from the running EMA ones (the test would be vacuous if
    // both gave the same numbers).
    assert_ne!(model.thresholds.as_ref(), Some(&t.state.thresholds));
}

#[test]
fn calibrated_mutual_choice_reproduces_the_training_form_on_the_calibration_rows() {
    check("mutual_choice", &[]);
}

#[test]
fn calibrated_feature_choice_reproduces_the_training_form_on_the_calibration_rows() {
    check("feature_choice", &[]);
    check("feature_choice", &["sae.capacity_factor=2"]);
}

#[test]
fn ema_source_keeps_the_running_thresholds_and_topk_is_not_calibrated() {
    let (t, data) = trained("mutual_choice", &["sae.threshold_source=\"ema\""]);
    assert_eq!(t.cfg.sae.threshold_source, ThresholdSource::Ema);
    let (model, cal) = deployable_model(&t, &data, &NoProgress).unwrap();
    assert!(cal.is_none());
    assert_eq!(model.thresholds.as_ref(), Some(&t.state.thresholds));
    assert_eq!(model.meta.threshold_calibration_tokens, None);

    let (t, data) = trained("topk", &[]);
    let (model, cal) = deployable_model(&t, &data, &NoProgress).unwrap();
    assert!(cal.is_none() && model.thresholds.is_none());
    assert_eq!(t.cfg.sae.architecture, Architecture::TopK);
    // Calibrating a TopK SAE directly is a clear error.
    let err = calibrate(
        &model,
        &mut || data.calibration_source(&t.cfg, 100),
        64,
        100,
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("mutual_choice and feature_choice"),
        "{err}"
    );
}

#[test]
fn the_calibration_sample_is_the_same_on_every_call() {
    let (t, data) = trained("mutual_choice", &["train.steps=5"]);
    let d = data.d();
    let read = || {
        let mut s = data.calibration_source(&t.cfg, 300).unwrap();
        let mut out = vec![0f32; 300 * d];
        let got = s.next_batch(&mut out).unwrap();
        assert_eq!(got, 300);
        assert_eq!(s.next_batch(&mut out).unwrap(), 0, "at most the asked rows");
        out
    };
    assert_eq!(read(), read());
}
