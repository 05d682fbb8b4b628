//! End-to-end: the experiment runner on a small synthetic IDX dataset the test writes. Covers the
//! hashed run directory, exact sparsity per round, resuming after an interruption, one-shot
//! methods, the report CSVs, and configuration errors.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use sparsa::data::idx::encode_idx;
use sparsa::prune::report;
use sparsa::prune::runner::{
    load_dataset, load_records, prepare_run_dir, run_experiment, ExperimentConfig, RunContext,
};
use sparsa::prune::schedule::keep_count;
use sparsa::prune::PruneError;
use sparsa::util::progress::{Cancel, NoProgress, Progress};

/// 8×8 images of 4 classes: a bright 4×4 block in quadrant `class`, plus noise.
fn write_dataset(dir: &Path, n_train: usize, n_test: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut img = Vec::with_capacity(n * 64);
        let mut lab = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 4;
            lab.push(c as u8);
            for y in 0..8 {
                for x in 0..8 {
                    let q = (y / 4) * 2 + x / 4;
                    let base = if q == c { 180 } else { 40 };
                    img.push((base + rng.random_range(0..60)) as u8);
                }
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[n, 8, 8], &img),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[n], &lab),
        )
        .unwrap();
    }
}

fn config(extra_prune: &str) -> ExperimentConfig {
    config_arch("lenet-300-100", extra_prune)
}

fn config_arch(arch: &str, extra_prune: &str) -> ExperimentConfig {
    let text = format!(
        r#"
name = "t"
[data]
dataset = "mnist"
[model]
arch = "{arch}"
[train]
epochs = 2
batch_size = 32
lr = 0.05
[prune]
{extra_prune}
"#
    );
    let cfg: ExperimentConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Counts progress and cancels after `limit` steps.
struct CancelAfter {
    n: AtomicU64,
    limit: u64,
    cancel: Cancel,
}
impl Progress for CancelAfter {
    fn inc(&self, k: u64) {
        if self.n.fetch_add(k, Ordering::SeqCst) + k >= self.limit {
            self.cancel.cancel();
        }
    }
}

#[test]
fn iterative_grid_runs_resumes_and_reports() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 256, 64);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude"]
rate = 0.2
rounds = 2
ap = ["off", "on", "change-only", "negative-only"]
seeds = [0]"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prepare_run_dir(&cfg, out.path()).unwrap();
    assert!(run_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("t-"));
    assert_eq!(run_dir, prepare_run_dir(&cfg, out.path()).unwrap());

    // Interrupt part-way: 16 steps per round (8 per epoch), 3 rounds per cell, 4 cells = 192
    // steps; stop at 30.
    let cancel = Cancel::new();
    let p = CancelAfter {
        n: AtomicU64::new(0),
        limit: 30,
        cancel: cancel.clone(),
    };
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &p,
        cancel: &cancel,
    };
    let r = run_experiment(&cfg, &run_dir, &ctx);
    assert!(matches!(r, Err(PruneError::Cancelled)), "{r:?}");
    let done_before = load_records(&run_dir).unwrap();
    assert!(!done_before.is_empty() && done_before.len() < 12);
    let first = run_dir.join("cells/magnitude-global-ap_off-seed0/round_00/metrics.json");
    let mtime = std::fs::metadata(&first).unwrap().modified().unwrap();

    // Resume: finished rounds are not recomputed, the rest complete.
    let counter = CancelAfter {
        n: AtomicU64::new(0),
        limit: u64::MAX,
        cancel: Cancel::new(),
    };
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &counter,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        mtime
    );
    let steps = counter.n.load(Ordering::SeqCst);
    // Exactly the unfinished rounds are trained again (an interrupted round restarts).
    assert_eq!(steps, 192 - 16 * done_before.len() as u64);
    let recs = load_records(&run_dir).unwrap();
    assert_eq!(recs.len(), 12);

    // Exact global sparsity and AP's share per round.
    for r in &recs {
        let total: usize = r.layers.iter().map(|l| l.total).sum();
        let kept: usize = r.layers.iter().map(|l| l.kept).sum();
        assert_eq!(
            kept,
            keep_count(total, 0.8f64.powi(r.round as i32)),
            "{:?}",
            r.cell
        );
        if r.round > 0 {
            let alive_before = keep_count(total, 0.8f64.powi(r.round as i32 - 1));
            let want_ap = match r.cell.ap {
                sparsa::prune::ap::ApVariant::Off => 0,
                _ => (0.02 * alive_before as f64).round() as usize,
            };
            assert_eq!(r.counts.ap_removed, want_ap);
            assert_eq!(
                r.counts.ap_removed + r.counts.base_removed,
                alive_before - kept
            );
        }
        assert_eq!(r.epochs.len(), 2);
    }
    // Round 0 is the same dense training in every AP cell (same seed).
    let r0: Vec<f64> = recs
        .iter()
        .filter(|r| r.round == 0)
        .map(|r| r.final_test_acc)
        .collect();
    assert!(r0.windows(2).all(|w| w[0] == w[1]), "{r0:?}");
    // The task is easy: the dense net learns it.
    assert!(r0[0] > 0.9, "{r0:?}");

    // Report: table and CSVs.
    let (recs2, rows) = report::report(&run_dir).unwrap();
    assert_eq!(recs2.len(), 12);
    assert_eq!(rows.len(), 1 + 3);
    // round, sparsity, 4 accuracy columns, 4 DNR columns, 3 paired-difference columns.
    assert_eq!(rows[0].len(), 2 + 2 * 4 + 3);
    // Round 0 is shared, so every paired difference there is exactly 0.
    assert!(rows[1][10].starts_with("+0.00 ± 0.00"), "{:?}", rows[1]);
    let csv_dir = out.path().join("csv");
    let files = report::write_csvs(&recs2, &csv_dir).unwrap();
    assert_eq!(files.len(), 4);
    let acc = std::fs::read_to_string(csv_dir.join("accuracy_vs_sparsity.csv")).unwrap();
    assert_eq!(acc.lines().count(), 1 + 4 * 3);
    let dnr = std::fs::read_to_string(csv_dir.join("dnr_vs_sparsity.csv")).unwrap();
    // 12 rounds × (2 ReLU layers + global).
    assert_eq!(dnr.lines().count(), 1 + 12 * 3);
    assert!(dnr.lines().nth(1).unwrap().contains("relu1"));
}

#[test]
fn one_shot_methods_hit_their_targets() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 64, 32);
    let cfg = config(
        r#"schedule = "oneshot"
methods = ["random", "magnitude", "lamp", "snip", "synflow"]
sparsities = [0.5, 0.9]
ap = ["off"]
seeds = [1]
synflow_iterations = 5"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prepare_run_dir(&cfg, out.path()).unwrap();
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    let recs = load_records(&run_dir).unwrap();
    assert_eq!(recs.len(), 5 * 3);
    for r in &recs {
        let total: usize = r.layers.iter().map(|l| l.total).sum();
        let kept: usize = r.layers.iter().map(|l| l.kept).sum();
        let want = [1.0, 0.5, 0.1][r.round];
        assert_eq!(
            kept,
            keep_count(total, want),
            "{:?} round {}",
            r.cell.method,
            r.round
        );
    }
}

#[test]
fn bad_configs_name_the_field() {
    let bad = |extra: &str| {
        let text = format!(
            "[data]\ndataset = \"mnist\"\n[model]\narch = \"lenet-300-100\"\n[train]\nepochs = 1\nbatch_size = 8\nlr = 0.1\n[prune]\n{extra}\n"
        );
        match toml::from_str::<ExperimentConfig>(&text) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().unwrap_err().to_string(),
        }
    };
    let e = bad("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 2\nbogus = 1");
    assert!(e.contains("bogus"), "{e}");
    let e = bad("schedule = \"iterative\"\nmethods = [\"snip\"]\nrounds = 2");
    assert!(e.contains("prune.methods") && e.contains("oneshot"), "{e}");
    let e =
        bad("schedule = \"oneshot\"\nmethods = [\"magnitude\"]\nsparsities = [0.5]\nap = [\"on\"]");
    assert!(e.contains("prune.ap"), "{e}");
    let e = bad("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 0");
    assert!(e.contains("prune.rounds"), "{e}");
    let e = bad("schedule = \"iterative\"\nmethods = [\"lamp\"]\nrounds = 1\nscope = \"layer\"");
    assert!(e.contains("prune.scope"), "{e}");
    let e = bad("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 1\nrate = 1.5");
    assert!(e.contains("prune.rate"), "{e}");
    // A missing data directory names the files it looked for.
    let cfg = config("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 1");
    let e = load_dataset(&cfg.data, Path::new("/nonexistent/dir"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
}

#[test]
fn conv_and_resnet_prune_with_ap_and_learn() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 128, 64);
    for arch in ["conv-2", "resnet-20"] {
        let cfg = config_arch(
            arch,
            r#"schedule = "iterative"
methods = ["magnitude"]
rounds = 1
ap = ["on"]
seeds = [0]"#,
        );
        let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let run_dir = prepare_run_dir(&cfg, out.path()).unwrap();
        let ctx = RunContext {
            train: &tr,
            test: &te,
            progress: &NoProgress,
            cancel: &Cancel::new(),
        };
        run_experiment(&cfg, &run_dir, &ctx).unwrap();
        let recs = load_records(&run_dir).unwrap();
        assert_eq!(recs.len(), 2);
        let r1 = &recs[1];
        let total: usize = r1.layers.iter().map(|l| l.total).sum();
        let kept: usize = r1.layers.iter().map(|l| l.kept).sum();
        assert_eq!(kept, keep_count(total, 0.8), "{arch}");
        assert!(r1.counts.ap_removed > 0, "{arch}");
        // Batch-norm parameters are never pruned: only conv and linear weights carry masks.
        assert!(r1.layers.iter().all(|l| l.name.contains("conv")
            || l.name.contains("fc")
            || l.name.contains("shortcut")));
        let e = &recs[0].epochs;
        assert!(
            e[1].train_loss < e[0].train_loss || e[1].test_acc > 0.9,
            "{arch}: {e:?}"
        );
    }
}

#[test]
fn shipped_configs_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prune");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            ExperimentConfig::from_toml_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn late_rewinding_resumes_the_schedule_at_step_t() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 256, 64);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude"]
rounds = 2
rewind_step = 4
ap = ["off"]
seeds = [0]"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prepare_run_dir(&cfg, out.path()).unwrap();
    let counter = CancelAfter {
        n: AtomicU64::new(0),
        limit: u64::MAX,
        cancel: Cancel::new(),
    };
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &counter,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    // Round 0 trains 16 steps; rounds 1 and 2 resume at step 4: 12 steps each.
    assert_eq!(counter.n.load(Ordering::SeqCst), 16 + 12 + 12);
    let recs = load_records(&run_dir).unwrap();
    for r in &recs {
        let steps: Vec<usize> = r.epochs.iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![8, 16], "round {}", r.round);
    }
    // The rewind point is the state after 4 steps, not the initialisation.
    let rewind = candle_core::safetensors::load(
        run_dir.join("cells/magnitude-global-ap_off-seed0/rewind.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let init = sparsa::nn::models::Net::new(
        sparsa::nn::models::Arch::Lenet300100,
        sparsa::nn::models::InputSpec {
            channels: 1,
            height: 8,
            width: 8,
            classes: 10,
        },
        0,
        candle_core::DType::F32,
    )
    .unwrap()
    .state()
    .unwrap();
    let d = (&rewind["fc1.weight"] - &init["fc1.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0);
}
