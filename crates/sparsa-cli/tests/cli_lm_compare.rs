//! End-to-end on the real model (fetched into the cache): the README's main job at a tiny size.

use std::process::Command;

#[test]
fn lm_compare_runs_end_to_end_and_sae_eval_reports_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let run = |args: &[&str]| {
        let r = Command::new(env!("CARGO_BIN_EXE_sparsa"))
            .args(args)
            .output()
            .unwrap();
        let (so, se) = (
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        );
        assert!(r.status.success(), "sparsa {args:?} failed:\n{se}");
        so
    };
    let stdout = run(&[
        "sae",
        "lm-compare",
        "--out",
        o,
        "--tokens",
        "3072",
        "--lm-sequences",
        "2",
        "--epochs",
        "1",
        "--variants",
        "topk+aux_k,mutual_choice+aux_zipf",
        "--set",
        "sae.d_sae=576",
        "--set",
        "sae.k=8",
        "--set",
        "data.holdout_tokens=1024",
        "--set",
        "train.batch_size=256",
        "--set",
        "train.init_sample=1024",
    ]);
    for needle in [
        "topk + aux_k",
        "mutual_choice + aux_zipf",
        "inference",
        "CE clean",
        "CE spliced",
        "recovered (zero)",
        "KL",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
    // The store and SAE directories are reusable: evaluate one SAE on the store with sae eval.
    let sae = out.join("mutual_choice+aux_zipf");
    let store = out.join("activations");
    let stdout = run(&[
        "sae",
        "eval",
        "--sae",
        sae.to_str().unwrap(),
        "--data",
        store.to_str().unwrap(),
        "--tokens",
        "1024",
        "--batch",
        "256",
        "--lm-sequences",
        "2",
    ]);
    assert!(
        stdout.contains("CE spliced")
            && stdout.contains("training")
            && stdout.contains("inference"),
        "{stdout}"
    );
}
