//! `train.matmul = "bf16"`: a whole (short) synthetic training run in bf16 ends at the f32
//! run's held-out FVU within 2 % (the issue's test; the full-size check on real activations is
//! in docs/sae.md), and a machine or a forced choice without a bf16 kernel falls back to f32
//! and says so. The kernel against an f64 product is tested in `kernels::bf16`; the bf16 fast
//! step against the bf16 reference step in `sae_fast_parity`.

use sparsa::sae::config::{Matmul, RunConfig};
use sparsa::sae::metrics::{evaluate, Form};
use sparsa::sae::train::{resolve_matmul, DataSpec, RunEnd, Trainer};
use sparsa::util::progress::{Cancel, NoProgress};

fn cfg(arch: &str, matmul: &str) -> RunConfig {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = 256
k = 6
[aux]
kind = "aux_k"
dead_tokens = 4096
[train]
batch_size = 256
steps = 400
lr = 4e-3
warmup_steps = 20
seed = 11
init_sample = 2048
log_every = 100
matmul = "{matmul}"
[data]
synthetic = {{ d = 64, n_features = 200, seed = 3 }}
"#
    );
    RunConfig::from_toml(&text, &[], "test").unwrap()
}

/// Train for the configured steps; held-out FVU and dead share (training form).
fn train(c: &RunConfig) -> (Trainer, f64, f64) {
    let data = DataSpec::open(c).unwrap();
    let mut t = Trainer::new(c.clone(), data.d(), &data.init_sample(c).unwrap()).unwrap();
    let mut src = data.training_source(c, 0).unwrap();
    let end = t
        .run(
            src.as_mut(),
            None,
            &NoProgress,
            &Cancel::new(),
            None,
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(end, RunEnd::Finished);
    let mut eval = data.eval_source(c, 8192).unwrap();
    let r = evaluate(
        &t.model(),
        Form::Training,
        eval.as_mut(),
        1024,
        8192,
        &NoProgress,
    )
    .unwrap();
    (t, r.fvu, r.dead_frac)
}

#[test]
fn a_bf16_run_reaches_the_f32_runs_fvu() {
    for arch in ["topk", "mutual_choice"] {
        let (t32, fvu32, dead32) = train(&cfg(arch, "f32"));
        let (t16, fvu16, dead16) = train(&cfg(arch, "bf16"));
        assert_eq!(t32.encoder_product(), "f32");
        if let Some(why) = t16.matmul_fallback() {
            eprintln!("skipped ({arch}): {why}");
            return;
        }
        assert!(t16.encoder_product().starts_with("bf16 ("));
        // The runs differ (the product is rounded) …
        assert_ne!(
            t32.params.w_enc, t16.params.w_enc,
            "{arch}: bf16 changed nothing"
        );
        // … and end at the same quality.
        let rel = (fvu16 - fvu32).abs() / fvu32;
        eprintln!("{arch}: held-out FVU f32 {fvu32:.5} bf16 {fvu16:.5} ({:+.2} %), dead {dead32:.3} vs {dead16:.3}", 100.0 * (fvu16 - fvu32) / fvu32);
        assert!(
            fvu32 < 0.5,
            "{arch}: the f32 run did not learn (FVU {fvu32})"
        );
        assert!(rel <= 0.02, "{arch}: bf16 FVU {fvu16} vs f32 {fvu32}");
    }
}

#[test]
fn without_a_bf16_kernel_the_product_falls_back_to_f32_and_says_so() {
    // Forced fallback (what a CPU without AMX-BF16 and AVX512-BF16 gets).
    let (kernel, why) = resolve_matmul(Matmul::Bf16, Some("none")).unwrap();
    assert!(kernel.is_none());
    assert!(why.unwrap().contains("runs in f32"));
    // f32 by config: no kernel, nothing to say.
    assert_eq!(
        resolve_matmul(Matmul::F32, Some("amx")).unwrap(),
        (None, None)
    );
    // A preference that names no kernel is a configuration error naming the variable.
    let err = resolve_matmul(Matmul::Bf16, Some("fp8")).unwrap_err();
    assert!(err.to_string().contains("SPARSA_BF16_KERNEL"), "{err}");
    // Left to choose, bf16 runs on a kernel exactly when the machine has one.
    let (auto, note) = resolve_matmul(Matmul::Bf16, None).unwrap();
    assert_eq!(auto.is_some(), note.is_none());
}
