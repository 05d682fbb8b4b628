//! The exit-code policy as a shell sees it: 0 success, 1 runtime error, 2 usage or
//! configuration error, 130 interrupted after saving; a closed stdout ends quietly.

mod images;
mod signal;

use std::process::{Command, Stdio};
use std::time::Duration;

const SMOKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../configs/prune/smoke.toml"
);

fn sparsa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sparsa"))
}

fn code(args: &[&str]) -> (Option<i32>, String) {
    let out = sparsa().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_kind_of_failure_has_its_code() {
    // Table-driven: every case runs and all failures are reported together.
    let cases: &[(&str, &[&str], i32, &str)] = &[
        (
            "unknown flag (usage)",
            &["sae", "compare", "--no-such-flag"],
            2,
            "--no-such-flag",
        ),
        (
            "bad flag value (usage)",
            &["sae", "eval", "--sae", "x", "--data", "y", "--batch", "0"],
            2,
            "--batch",
        ),
        (
            "bad config value",
            &["sae", "compare", "--set", "sae.k=0"],
            2,
            "sae.k",
        ),
        (
            "a --set value of the wrong type names the override, not the file",
            &["sae", "compare", "--set", "train.lr=abc"],
            2,
            "--set train.lr",
        ),
        (
            "a prune --set value of the wrong type names the override",
            &[
                "prune",
                "run",
                "--config",
                SMOKE,
                "--set",
                "prune.rate=abc",
                "--out",
                "/tmp/sparsa-never",
            ],
            2,
            "--set prune.rate",
        ),
        (
            "impossible config",
            &["sae", "compare", "--set", "sae.k=100000"],
            2,
            "exceeds",
        ),
        (
            "absurd init sample",
            &[
                "sae",
                "compare",
                "--set",
                "train.init_sample=1000000000000000000",
            ],
            2,
            "init_sample",
        ),
        (
            "init sample larger than memory",
            &["sae", "compare", "--set", "train.init_sample=100000000000"],
            2,
            "init_sample",
        ),
        (
            "batch of one row",
            &["sae", "compare", "--set", "train.batch_size=1"],
            2,
            "batch_size",
        ),
        (
            "missing file (runtime)",
            &[
                "sae",
                "eval",
                "--sae",
                "/nonexistent-sae",
                "--data",
                "x.npy",
            ],
            1,
            "nonexistent-sae",
        ),
        (
            "unknown key from prune run --set",
            &[
                "prune",
                "run",
                "--config",
                SMOKE,
                "--set",
                "train.nope=1",
                "--out",
                "/tmp/sparsa-never",
            ],
            2,
            "nope",
        ),
        (
            "bad value from prune run --set",
            &[
                "prune",
                "run",
                "--config",
                SMOKE,
                "--set",
                "prune.seeds=[]",
                "--out",
                "/tmp/sparsa-never",
            ],
            2,
            "prune.seeds",
        ),
        (
            "bad --rows form (usage)",
            &["sae", "eval", "--sae", "x", "--data", "y", "--rows", "abc"],
            2,
            "--rows",
        ),
        (
            "bad --sizes entry (usage)",
            &["bench", "sae", "--sizes", "8x"],
            2,
            "D_INxD_SAE",
        ),
        (
            "k above a size's d_sae, refused before any timing",
            &["bench", "sae", "--sizes", "8x16,4x2", "-k", "4"],
            2,
            "4x2",
        ),
        (
            "zero timed steps (usage)",
            &["bench", "sae", "--steps", "0"],
            2,
            "--steps",
        ),
        (
            "negative dense-auxiliary switch (usage)",
            &["bench", "sae", "--aux-dense-above=-0.5"],
            2,
            "non-negative",
        ),
        (
            "bench lm batch 0 (usage)",
            &["bench", "lm", "--batch", "0"],
            2,
            "positive",
        ),
        (
            "bench prune with an unknown entry in a spaced list",
            &["bench", "prune", "--arch", "conv-4, bogus"],
            2,
            "bogus",
        ),
        (
            "bench prune by SNIP (needs training batches)",
            &["bench", "prune", "--arch", "conv-4", "--method", "snip"],
            2,
            "snip needs training batches",
        ),
        (
            "bench prune: LAMP per layer",
            &[
                "bench", "prune", "--arch", "conv-4", "--method", "lamp", "--scope", "layer",
            ],
            2,
            "lamp is a global method",
        ),
        (
            "bench prune: unknown scope",
            &["bench", "prune", "--scope", "net"],
            2,
            "give global or layer",
        ),
        ("unknown asset (usage)", &["fetch", "bogus"], 2, "bogus"),
        (
            "no candidates (usage)",
            &["lm", "top", "-k", "0", "hi"],
            2,
            "-k",
        ),
        (
            "ablation batch 0 (usage)",
            &["lm", "ablate", "--store", "x", "--batch", "0"],
            2,
            "--batch",
        ),
        (
            "missing run directory (runtime)",
            &["prune", "report", "/nonexistent-run"],
            1,
            "nonexistent-run",
        ),
        (
            "missing config file (runtime)",
            &[
                "sae",
                "train",
                "--config",
                "/nonexistent.toml",
                "--out",
                "/tmp/sparsa-never",
            ],
            1,
            "nonexistent.toml",
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, want, needle) in cases {
        let (got, err) = code(args);
        if got != Some(*want) || !err.contains(needle) || err.contains("panicked") {
            failures.push(format!(
                "{what}: exit {got:?} (want {want}), stderr:\n{err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // The table is printed at the end; the reader is gone by then.
    let mut child = sparsa()
        .args([
            "sae",
            "compare",
            "--variants",
            "topk",
            "--set",
            "train.steps=20",
            "--set",
            "train.batch_size=64",
            "--set",
            "sae.d_sae=16",
            "--set",
            "sae.k=2",
            "--set",
            "data.synthetic.d=8",
            "--set",
            "data.synthetic.n_features=16",
            "--set",
            "train.init_sample=64",
            "--eval-tokens",
            "64",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[cfg(unix)]
#[test]
fn sigint_during_sae_train_saves_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = sparsa()
        .args([
            "sae",
            "train",
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../configs/sae/synthetic.toml"
            ),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=1000000",
            "--set",
            "train.batch_size=64",
            "--set",
            "sae.d_sae=32",
            "--set",
            "train.init_sample=256",
            "--set",
            "train.log_every=1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has logged a step, then interrupt.
    let res = signal::interrupt_when(
        child,
        "training start",
        || out.join("metrics.jsonl").exists(),
        Duration::from_millis(200),
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    // The checkpoint is whole: it loads and evaluates.
    let (c, e) = code(&[
        "sae",
        "eval",
        "--sae",
        out.to_str().unwrap(),
        "--data",
        "/nonexistent.npy",
    ]);
    assert_eq!(c, Some(1));
    assert!(
        e.contains("nonexistent.npy") && !e.contains("cfg.json"),
        "the SAE did not load: {e}"
    );
    assert!(out.join("trainer_state.json").exists());
}

#[cfg(unix)]
#[test]
fn sigint_during_prune_run_saves_and_exits_130_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    images::write_images(&data, 2048, 256);
    let cfg = dir.path().join("long.toml");
    // Two rounds (dense, then one pruned), each long enough to be interrupted in.
    std::fs::write(
        &cfg,
        "name = \"long\"\n[data]\ndataset = \"mnist\"\n[model]\narch = \"lenet-300-100\"\n\
         [train]\nepochs = 60\nbatch_size = 64\nlr = 0.05\n[prune]\nschedule = \"iterative\"\n\
         methods = [\"magnitude\"]\nrate = 0.5\nrounds = 1\nap = [\"off\"]\nseeds = [0]\n",
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let args = [
        "prune",
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-report",
    ];
    let round = |r: usize| -> Option<std::path::PathBuf> {
        let run = std::fs::read_dir(&runs).ok()?.next()?.ok()?.path();
        Some(run.join(format!(
            "cells/magnitude-global-ap_off-seed0/round_{r:02}/metrics.json"
        )))
    };
    let child = sparsa()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt during round 1, once round 0 is saved.
    let res = signal::interrupt_when(
        child,
        "round 0's record",
        || round(0).is_some_and(|p| p.is_file()),
        Duration::from_millis(100),
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(err.contains("resume") && !err.contains("panicked"), "{err}");
    let r0 = round(0).unwrap();
    let saved = std::fs::read(&r0).unwrap();
    assert!(
        !round(1).unwrap().is_file(),
        "round 1 finished before the interrupt"
    );

    // The saved round reads back: the report shows it and says the run is incomplete.
    let run = r0.ancestors().nth(4).unwrap().to_path_buf();
    let rep = sparsa()
        .args(["prune", "report", run.to_str().unwrap()])
        .output()
        .unwrap();
    let (rep_out, rep_err) = (
        String::from_utf8_lossy(&rep.stdout),
        String::from_utf8_lossy(&rep.stderr),
    );
    assert_eq!(rep.status.code(), Some(0), "{rep_err}");
    assert!(
        format!("{rep_out}{rep_err}").contains("incomplete"),
        "{rep_out}{rep_err}"
    );

    // The same command resumes: round 0 is kept as saved and round 1 is trained.
    let again = sparsa().args(args).output().unwrap();
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{again_err}");
    assert_eq!(std::fs::read(&r0).unwrap(), saved, "round 0 was recomputed");
    assert!(round(1).unwrap().is_file(), "{again_err}");
}

#[test]
fn mismatched_train_and_test_images_fail_before_a_run_directory_exists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    images::write_images(&data, 256, 64);
    // Test images of 7×8 pixels beside 8×8 training images.
    let img = vec![100u8; 64 * 7 * 8];
    std::fs::write(
        data.join("t10k-images-idx3-ubyte"),
        sparsa::data::idx::encode_idx(&[64, 7, 8], &img),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let (c, e) = code(&[
        "prune",
        "run",
        "--config",
        SMOKE,
        "--out",
        runs.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(1), "{e}");
    assert!(e.contains("1×8×8") && e.contains("1×7×8"), "{e}");
    assert!(!runs.exists(), "a run directory was left behind");
}

#[test]
fn old_bench_spellings_still_run_and_say_they_are_deprecated() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "prune",
                "bench",
                "--arch",
                "lenet-300-100",
                "--steps",
                "1",
                "--batch",
                "8",
                "--sparsity",
                "0",
            ],
            "sparsa bench prune",
        ),
        (
            &["lm", "bench", "--model", "/nonexistent.gguf"],
            "sparsa bench lm",
        ),
    ];
    let mut failures = Vec::new();
    for (args, new) in cases {
        let (c, e) = code(args);
        // The note comes first; `lm bench` then fails on the missing model (1).
        let want = if args[0] == "lm" { 1 } else { 0 };
        let ok = c == Some(want) && e.contains("deprecated") && e.contains(new);
        if !ok {
            failures.push(format!("{args:?}: exit {c:?}, stderr:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn list_flags_accept_spaces_after_commas() {
    let cases: &[&[&str]] = &[
        &[
            "bench",
            "sae",
            "--arch",
            "topk, mutual_choice",
            "--aux",
            "none, aux_k",
        ],
        &[
            "bench",
            "sae",
            "--matmul",
            "f32, bf16",
            "--sizes",
            "8x16, 4x8",
        ],
        &["bench", "prune", "--arch", "conv-4, lenet-300-100"],
        &[
            "sae",
            "compare",
            "--variants",
            "topk+aux_k, mutual_choice + aux_zipf",
        ],
    ];
    let mut failures = Vec::new();
    for args in cases {
        // Values met before `--help` are parsed and validated; `--help` then stops.
        let mut argv = args.to_vec();
        argv.push("--help");
        let (c, e) = code(&argv);
        if c != Some(0) {
            failures.push(format!("{args:?}: exit {c:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_bad_simd_cap_is_a_usage_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = sparsa()
        .env("SPARSA_SIMD", "sse9")
        .args(["prune", "run", "--config", SMOKE, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "stderr:\n{err}");
    assert!(err.contains("SPARSA_SIMD=\"sse9\""), "stderr:\n{err}");
    assert!(!out.exists(), "no run directory is made");
}
