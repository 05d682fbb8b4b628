//! End-to-end: the `sparsa sae` commands as a user runs them.

use std::process::Command;

fn sparsa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsa"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TINY: &[&str] = &[
    "--set",
    "train.steps=30",
    "--set",
    "train.batch_size=128",
    "--set",
    "sae.d_sae=32",
    "--set",
    "sae.k=3",
    "--set",
    "data.synthetic.d=12",
    "--set",
    "data.synthetic.n_features=24",
    "--set",
    "train.init_sample=256",
];

#[test]
fn compare_prints_the_table() {
    let mut args = vec![
        "sae",
        "compare",
        "--eval-tokens",
        "512",
        "--variants",
        "topk+aux_k,mutual_choice+aux_zipf,feature_choice+aux_k",
    ];
    args.extend_from_slice(TINY);
    let (ok, out, err) = sparsa(&args);
    assert!(ok, "{err}");
    for needle in [
        "variant",
        "FVU",
        "dead %",
        "MMCS",
        "topk + aux_k",
        "mutual_choice + aux_zipf",
        "feature_choice + aux_k",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn train_resume_eval_export() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, include_str!("../../../configs/sae/synthetic.toml")).unwrap();
    let out = dir.path().join("run");
    let (o, c) = (out.to_str().unwrap(), cfg.to_str().unwrap());
    let mut args = vec![
        "sae",
        "train",
        "--config",
        c,
        "--out",
        o,
        "--eval-tokens",
        "512",
        "--set",
        "sae.architecture=feature_choice",
    ];
    args.extend_from_slice(TINY);
    let (ok, stdout, err) = sparsa(&args);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("inference") && stdout.contains("jumprelu"),
        "{stdout}"
    );
    for f in [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
        "eval.json",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["architecture"], "jumprelu");
    assert_eq!(cfg_json["d_in"], 12);
    assert_eq!(cfg_json["d_sae"], 32);

    // A line logged after the last checkpoint (as a kill -9 would leave it) is dropped on
    // resume, so no step is logged twice. Resume of a finished run has nothing left to do but
    // succeeds.
    let metrics = out.join("metrics.jsonl");
    let before = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, format!("{before}{{\"step\": 999999}}\n")).unwrap();
    let (ok, _, err) = sparsa(&[
        "sae",
        "train",
        "--out",
        o,
        "--resume",
        "--eval-tokens",
        "256",
    ]);
    assert!(ok, "{err}");
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(!steps.is_empty() && !steps.contains(&999999), "{steps:?}");
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "steps repeat: {steps:?}"
    );

    // A fresh run refuses a non-empty --out: a finished run, or any other files.
    let mut again = vec!["sae", "train", "--config", c, "--out", o];
    again.extend_from_slice(TINY);
    let (ok, _, err) = sparsa(&again);
    assert!(
        !ok && err.contains("--resume") && err.contains("not empty"),
        "{err}"
    );
    // A validation failure leaves no --out behind.
    let never = dir.path().join("never");
    let (ok, _, err) = sparsa(&[
        "sae",
        "train",
        "--config",
        c,
        "--out",
        never.to_str().unwrap(),
        "--set",
        "sae.k=0",
    ]);
    assert!(!ok && err.contains("sae.k"), "{err}");
    assert!(
        !never.exists(),
        "a failed validation left {}",
        never.display()
    );

    let exp = dir.path().join("exp");
    let (ok, stdout, err) = sparsa(&[
        "sae",
        "export",
        "--checkpoint",
        o,
        "--out",
        exp.to_str().unwrap(),
        "--threshold-mode",
        "global",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("jumprelu"), "{stdout}");

    // Evaluate the exported SAE on a .npy file of the right width.
    let npy = dir.path().join("x.npy");
    let rows = 300;
    let data: Vec<f32> = (0..rows * 12)
        .map(|i| ((i * 13 % 17) as f32) / 8.0 - 1.0)
        .collect();
    sparsa::data::npy::write_npy_f32(&npy, rows, 12, &data).unwrap();
    let (ok, stdout, err) = sparsa(&[
        "sae",
        "eval",
        "--sae",
        exp.to_str().unwrap(),
        "--data",
        npy.to_str().unwrap(),
        "--batch",
        "100",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("training") && stdout.contains("inference"),
        "{stdout}"
    );
    // A synthetic run holds nothing out: `--rows held-out` says so.
    let (ok, _, err) = sparsa(&[
        "sae",
        "eval",
        "--sae",
        exp.to_str().unwrap(),
        "--data",
        npy.to_str().unwrap(),
        "--rows",
        "held-out",
    ]);
    assert!(!ok);
    assert!(
        err.contains("records no held-out rows") && !err.contains("panicked"),
        "{err}"
    );

    // Trained on that file with a spread holdout, `sae eval --rows held-out` evaluates exactly
    // the rows the training's own final evaluation used.
    let run2 = dir.path().join("run2");
    let cfg2 = dir.path().join("run2.toml");
    std::fs::write(
        &cfg2,
        format!(
            "[sae]\narchitecture = \"topk\"\nd_sae = 32\nk = 3\n[train]\nsteps = 20\n\
             batch_size = 64\ninit_sample = 256\n[data]\npath = {:?}\nholdout_tokens = 90\n\
             holdout_chunks = 5\n",
            npy.to_str().unwrap()
        ),
    )
    .unwrap();
    let args = [
        "sae",
        "train",
        "--config",
        cfg2.to_str().unwrap(),
        "--out",
        run2.to_str().unwrap(),
    ];
    let (ok, _, err) = sparsa(&args);
    assert!(ok, "{err}");
    let json = dir.path().join("heldout.json");
    let (ok, _, err) = sparsa(&[
        "sae",
        "eval",
        "--sae",
        run2.to_str().unwrap(),
        "--data",
        npy.to_str().unwrap(),
        "--rows",
        "held-out",
        "--form",
        "training",
        "--batch",
        "7",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (mine, trained) = (read(json), read(run2.join("eval.json")));
    assert_eq!(mine[0]["tokens"], 90);
    assert_eq!(trained[0]["tokens"], 90);
    let (a, b) = (
        mine[0]["fvu"].as_f64().unwrap(),
        trained[0]["fvu"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-6 * b.abs(),
        "held-out FVU {a} vs training's {b}"
    );
}

/// Trained with `data.exclude_positions`, the SAE records the positions and `sae eval` leaves
/// the same rows out (so `--rows held-out` reproduces the training's own evaluation);
/// `--all-positions` keeps them, and data that cannot name positions is refused.
#[test]
fn eval_leaves_out_the_positions_training_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let (n, d) = (600usize, 12usize);
    let data: Vec<f32> = (0..n * d)
        .map(|i| ((i * 13 % 17) as f32) / 8.0 - 1.0)
        .collect();
    let pos: Vec<u32> = (0..n).map(|i| (i % 10) as u32 + 1).collect();
    sparsa::data::activations::write_store_with_positions(
        &store,
        d,
        sparsa::data::activations::Elem::F32,
        &[&data[..300 * d], &data[300 * d..]],
        Some(&[&pos[..300], &pos[300..]]),
    )
    .unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sae]\narchitecture = \"mutual_choice\"\nd_sae = 32\nk = 3\n[train]\nsteps = 20\n\
             batch_size = 64\ninit_sample = 256\n[data]\npath = {:?}\nholdout_tokens = 100\n\
             holdout_chunks = 5\nexclude_positions = [1]\n",
            store.to_str().unwrap()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let (ok, _, err) = sparsa(&[
        "sae",
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        read(&run.join("cfg.json"))["sparsa"]["exclude_positions"],
        serde_json::json!([1])
    );
    let eval = |extra: &[&str], json: &std::path::Path| {
        let mut args = vec![
            "sae",
            "eval",
            "--sae",
            run.to_str().unwrap(),
            "--data",
            store.to_str().unwrap(),
            "--rows",
            "held-out",
            "--form",
            "training",
            "--batch",
            "64",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        sparsa(&args)
    };
    let (j1, j2) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let (ok, stdout, err) = eval(&[], &j1);
    assert!(ok, "{err}");
    assert!(stdout.contains("positions [1] left out"), "{stdout}");
    let (mine, trained) = (read(&j1), read(&run.join("eval.json")));
    // 100 held-out rows, one in ten at position 1.
    assert_eq!(mine[0]["tokens"], 90);
    assert_eq!(trained[0]["tokens"], 90);
    let (a, b) = (
        mine[0]["fvu"].as_f64().unwrap(),
        trained[0]["fvu"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-6 * b.abs(),
        "held-out FVU {a} vs training's {b}"
    );
    let (ok, _, err) = eval(&["--all-positions"], &j2);
    assert!(ok, "{err}");
    assert_eq!(read(&j2)[0]["tokens"], 100);

    // A .npy file records no positions: refused, with the way out named.
    let npy = dir.path().join("x.npy");
    sparsa::data::npy::write_npy_f32(&npy, n, d, &data).unwrap();
    let (ok, _, err) = sparsa(&[
        "sae",
        "eval",
        "--sae",
        run.to_str().unwrap(),
        "--data",
        npy.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--all-positions") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, _, err) = sparsa(&[
        "sae",
        "train",
        "--config",
        "/nonexistent.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent.toml") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = sparsa(&["sae", "compare", "--set", "sae.k=0"]);
    assert!(!ok);
    assert!(
        err.contains("sae.k must be at least 1") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = sparsa(&["sae", "compare", "--set", "sae.k=100000"]);
    assert!(!ok);
    assert!(
        err.contains("exceeds") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = sparsa(&[
        "sae",
        "eval",
        "--sae",
        dir.path().to_str().unwrap(),
        "--data",
        "x.npy",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cfg.json") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = sparsa(&["sae", "train", "--out", out.to_str().unwrap(), "--resume"]);
    assert!(!ok);
    assert!(
        err.contains("nothing to resume") && !err.contains("panicked"),
        "{err}"
    );
}

/// `sparsa bench sae` at a tiny size: one JSON row per configuration, then the table; with
/// `--rounds 2` every configuration's step is the median of both rounds' steps, and the ratio to
/// the no-aux step is taken between those medians.
#[test]
fn bench_sae_rounds_pool_every_rounds_steps() {
    let (ok, out, err) = sparsa(&[
        "bench",
        "sae",
        "--sizes",
        "16x64",
        "--batch",
        "64",
        "-k",
        "4",
        "--steps",
        "3",
        "--rounds",
        "2",
        "--reference-steps",
        "0",
        "--arch",
        "topk,mutual_choice",
        "--aux",
        "none,aux_k",
        "--matmul",
        "f32",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for r in &rows {
        assert_eq!(r["timed_steps"], 6, "{r}");
        assert!(r["step_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    for arch in ["topk", "mutual_choice"] {
        let step = |aux: &str| {
            rows.iter()
                .find(|r| r["arch"] == arch && r["aux"] == aux)
                .map(|r| {
                    (
                        r["step_s"].as_f64().unwrap(),
                        r["step_over_no_aux"].as_f64(),
                    )
                })
                .unwrap()
        };
        let ((none, _), (aux, ratio)) = (step("none"), step("aux_k"));
        assert!(
            (ratio.unwrap() - aux / none).abs() < 1e-9 * (aux / none),
            "{arch}"
        );
    }
    assert_eq!(err.matches(", round 2:").count(), 4, "{err}");
    assert!(out.contains("| topk | aux_k |"), "{out}");
}
