//! End-to-end: the experiment runner on a small synthetic IDX dataset the test writes. Covers the
//! hashed run directory, exact sparsity per round, resuming after an interruption, one-shot
//! methods, the report CSVs, and configuration errors.

mod cases;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use sparsa::data::idx::encode_idx;
use sparsa::prune::report;
use sparsa::prune::runner::{
    load_dataset, load_records, prepare_run_dir, run_experiment, run_identity, ExperimentConfig,
    RunContext,
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

/// The run directory for `cfg` under `out`, with the identity of the data in `data`.
fn prep(cfg: &ExperimentConfig, out: &Path, data: &Path) -> PathBuf {
    let id = run_identity(&cfg.data, data).unwrap();
    prepare_run_dir(cfg, out, &id, false).unwrap().0
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
    let run_dir = prep(&cfg, out.path(), data.path());
    assert!(run_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("t-"));
    assert_eq!(run_dir, prep(&cfg, out.path(), data.path()));

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
    let partial = report::Report::load(&run_dir, 2).unwrap();
    assert!(!partial.completeness.is_complete());
    let w = partial.warnings().join("\n");
    assert!(
        w.contains(&format!("{} of 12 rounds finished", done_before.len())),
        "{w}"
    );
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
    // Round 0 is shared, so every paired difference there is exactly 0 (one seed: no CI).
    assert!(rows[1][10].starts_with("+0.00 [no CI]"), "{:?}", rows[1]);
    // The full report: complete, paired rows per variant and round, plots written.
    let full = report::Report::load(&run_dir, 2).unwrap();
    assert!(full.completeness.is_complete() && full.warnings().is_empty());
    assert_eq!(full.paired_rows().len(), 1 + 3 * 3);
    assert_eq!(full.last_rounds.len(), 3);
    assert_eq!(full.last_rounds[0].rounds, (1, 2));
    // Restricted to seeds: the only seed gives the same report; an unknown seed is an error.
    let one = report::Report::load_seeds(&run_dir, 2, &[0]).unwrap();
    assert_eq!(one.records.len(), 12);
    assert!(report::Report::load_seeds(&run_dir, 2, &[9])
        .err()
        .unwrap()
        .to_string()
        .contains("seed 9"));
    let plots = report::write_plots(&recs2, &out.path().join("plots")).unwrap();
    let names: Vec<String> = plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "accuracy_vs_remaining.svg",
            "paired_difference.svg",
            "dnr_vs_sparsity_magnitude_global.svg"
        ]
    );
    let dnr_svg = std::fs::read_to_string(&plots[2]).unwrap();
    assert!(dnr_svg.contains("relu1") && dnr_svg.contains("global dynamic DNR"));
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
    let run_dir = prep(&cfg, out.path(), data.path());
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
    let e = bad(
        "schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 2\nreset = \"reinit\"\nrewind_step = 3",
    );
    assert!(
        e.contains("prune.rewind_step") && e.contains("reinit"),
        "{e}"
    );
    let e = bad("schedule = \"oneshot\"\nmethods = [\"magnitude\"]\nsparsities = [0.5]\nap = [\"off\"]\nreset = \"reinit\"");
    assert!(e.contains("prune.reset"), "{e}");
    let e = bad("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 2\nbogus_input = 1");
    assert!(e.contains("bogus_input"), "{e}");
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
        let run_dir = prep(&cfg, out.path(), data.path());
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
    let run_dir = prep(&cfg, out.path(), data.path());
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

#[test]
fn run_names_cannot_escape_out() {
    cases::each(["../../x", "/tmp/x", "a/b", ".hidden", "a\\b"], |&bad| {
        let mut cfg = config("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 1");
        cfg.name = bad.into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("`name`"), "{bad}: {e}");
        let data = tempfile::tempdir().unwrap();
        write_dataset(data.path(), 16, 8);
        let out = tempfile::tempdir().unwrap();
        let id = run_identity(&cfg.data, data.path()).unwrap();
        assert!(prepare_run_dir(&cfg, out.path(), &id, true).is_err());
    });
    let mut cfg = config("schedule = \"iterative\"\nmethods = [\"magnitude\"]\nrounds = 1");
    cfg.name = "fmnist-lenet_v2.1".into();
    cfg.validate().unwrap();
}

#[test]
fn identity_refuses_other_data_and_the_flag_overrides() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_dataset(a.path(), 64, 16);
    write_dataset(b.path(), 64, 24);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude"]
rounds = 1
ap = ["off"]
seeds = [0]"#,
    );
    let (tr, te) = load_dataset(&cfg.data, a.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prep(&cfg, out.path(), a.path());
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    // Same config, other data directory: refused, naming the file that differs and the flag.
    let id_b = run_identity(&cfg.data, b.path()).unwrap();
    let e = prepare_run_dir(&cfg, out.path(), &id_b, false).unwrap_err();
    assert!(matches!(e, PruneError::IdentityMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("--allow-identity-mismatch"),
        "{msg}"
    );
    // The flag continues and the directory records the second identity.
    let (dir2, check) = prepare_run_dir(&cfg, out.path(), &id_b, true).unwrap();
    assert_eq!(dir2, run_dir);
    assert!(matches!(
        check,
        sparsa::prune::identity::IdentityCheck::MismatchAllowed(_)
    ));
    let rec = sparsa::prune::identity::IdentityRecord::read(&run_dir)
        .unwrap()
        .unwrap();
    assert_eq!(rec.mixed_in, vec![id_b]);
    // The original data still matches.
    let id_a = run_identity(&cfg.data, a.path()).unwrap();
    assert_eq!(
        prepare_run_dir(&cfg, out.path(), &id_a, false).unwrap().1,
        sparsa::prune::identity::IdentityCheck::Matches
    );
}

/// The digest of the state round `round` of `cell_dir` should start from, rebuilt independently
/// of the runner: the network initialised from `init_seed` (or the saved rewind state), under the
/// round's saved masks.
fn rebuilt_start_digest(cell_dir: &Path, round: usize, init_seed: u64, use_rewind: bool) -> String {
    use sparsa::nn::models::{Arch, InputSpec, Net};
    use sparsa::prune::mask;
    let input = InputSpec {
        channels: 1,
        height: 8,
        width: 8,
        classes: 10,
    };
    let mut net = Net::new(Arch::Lenet300100, input, init_seed, candle_core::DType::F32).unwrap();
    if use_rewind {
        let rw = candle_core::safetensors::load(
            cell_dir.join("rewind.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        net.load_state(&rw).unwrap();
    }
    let masks = candle_core::safetensors::load(
        cell_dir.join(format!("round_{round:02}/masks.safetensors")),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    net.set_masks(&masks).unwrap();
    sparsa::prune::runner::masked_digest(
        &mask::host_weights(&net).unwrap(),
        &mask::host_masks(&net).unwrap(),
    )
}

fn host_masks_of(cell_dir: &Path, round: usize) -> Vec<Vec<f32>> {
    let m = candle_core::safetensors::load(
        cell_dir.join(format!("round_{round:02}/masks.safetensors")),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = m.keys().collect();
    names.sort();
    names
        .iter()
        .map(|n| m[*n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
// Rounds index several parallel lists (records, seeds, saved masks).
#[allow(clippy::needless_range_loop)]
fn reinit_draws_a_fresh_initialisation_each_round_and_masks_compound() {
    use sparsa::prune::runner::{init_seed, Reset};
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 128, 32);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude"]
rounds = 3
reset = "reinit"
ap = ["on"]
seeds = [5]"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prep(&cfg, out.path(), data.path());
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    let recs = load_records(&run_dir).unwrap();
    assert_eq!(recs.len(), 4);
    let cell = run_dir.join("cells/magnitude-global-ap_on-seed5");
    let seeds: Vec<u64> = (0..4).map(|r| init_seed(5, r, Reset::Reinit)).collect();
    assert_eq!(seeds[0], 5);
    for r in 0..4 {
        // The runner started round r from the initialisation drawn with seed r.
        assert_eq!(
            recs[r].start_digest,
            rebuilt_start_digest(&cell, r, seeds[r], false),
            "round {r}"
        );
        if r > 0 {
            assert_ne!(seeds[r], seeds[r - 1]);
            // … which differs from the previous round's initialisation under the same masks.
            assert_ne!(
                recs[r].start_digest,
                rebuilt_start_digest(&cell, r, seeds[r - 1], false),
                "round {r}"
            );
            // Masks compound: nothing pruned earlier comes back.
            let (prev, now) = (host_masks_of(&cell, r - 1), host_masks_of(&cell, r));
            for (p, n) in prev.iter().zip(&now) {
                assert!(p.iter().zip(n).all(|(a, b)| *b <= *a));
            }
            // AP's w_start was the previous round's true start state.
            assert_eq!(
                recs[r].ap_start_digest.as_deref(),
                Some(recs[r - 1].start_digest.as_str())
            );
        }
    }
}

#[test]
// Rounds index several parallel lists (records, seeds, saved masks).
#[allow(clippy::needless_range_loop)]
fn ap_w_start_is_the_rounds_true_start_state() {
    // Late rewinding makes the start of round 0 (the initialisation) differ from the start of
    // every later round (θ after 4 steps), so a w_start taken from the wrong state shows.
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 256, 32);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude", "lamp"]
rounds = 3
rewind_step = 4
ap = ["on"]
seeds = [0]"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prep(&cfg, out.path(), data.path());
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    for method in ["magnitude", "lamp"] {
        let mut recs: Vec<_> = load_records(&run_dir)
            .unwrap()
            .into_iter()
            .filter(|r| r.cell.method.name() == method)
            .collect();
        recs.sort_by_key(|r| r.round);
        assert_eq!(recs.len(), 4);
        let cell = run_dir.join(format!("cells/{method}-global-ap_on-seed0"));
        assert_eq!(
            recs[0].start_digest,
            rebuilt_start_digest(&cell, 0, 0, false)
        );
        assert!(recs[0].ap_start_digest.is_none());
        for r in 1..4 {
            assert_eq!(
                recs[r].start_digest,
                rebuilt_start_digest(&cell, r, 0, true),
                "{method} round {r}"
            );
            // What AP measured |w_end − w_start| against is the state round r − 1 started from:
            // the initialisation for round 0, the rewind state afterwards.
            let want = rebuilt_start_digest(&cell, r - 1, 0, r - 1 > 0);
            assert_eq!(
                recs[r].ap_start_digest.as_deref(),
                Some(want.as_str()),
                "{method} round {r}"
            );
            assert!(recs[r].counts.ap_removed > 0);
        }
        // The two start states differ, so the check above can fail.
        assert_ne!(
            rebuilt_start_digest(&cell, 1, 0, true),
            rebuilt_start_digest(&cell, 1, 0, false)
        );
    }
}

#[test]
fn iterative_snip_and_synflow_ride_with_ap_and_hit_the_schedule() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 64, 16);
    let cfg = config(
        r#"schedule = "iterative"
methods = ["lamp", "synflow", "snip"]
rounds = 2
ap = ["off", "on"]
seeds = [0]
synflow_iterations = 4"#,
    );
    let (tr, te) = load_dataset(&cfg.data, data.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run_dir = prep(&cfg, out.path(), data.path());
    let ctx = RunContext {
        train: &tr,
        test: &te,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    };
    run_experiment(&cfg, &run_dir, &ctx).unwrap();
    let recs = load_records(&run_dir).unwrap();
    assert_eq!(recs.len(), 3 * 2 * 3);
    for r in &recs {
        let total: usize = r.layers.iter().map(|l| l.total).sum();
        let kept: usize = r.layers.iter().map(|l| l.kept).sum();
        assert_eq!(
            kept,
            keep_count(total, 0.8f64.powi(r.round as i32)),
            "{:?}",
            r.cell
        );
        if r.round > 0 && r.cell.ap == sparsa::prune::ap::ApVariant::On {
            let alive_before = keep_count(total, 0.8f64.powi(r.round as i32 - 1));
            assert_eq!(
                r.counts.ap_removed,
                (0.02 * alive_before as f64).round() as usize,
                "{:?}",
                r.cell
            );
        }
    }
}

#[test]
fn cells_can_be_split_between_processes() {
    use sparsa::prune::ap::ApVariant;
    use sparsa::prune::runner::select_cells;
    let cfg = config(
        r#"schedule = "iterative"
methods = ["magnitude", "lamp"]
rounds = 1
ap = ["off", "on"]
seeds = [0, 1, 2]"#,
    );
    assert_eq!(select_cells(&cfg, &[], &[]).unwrap(), cfg.cells());
    let a = select_cells(&cfg, &[0, 2], &[]).unwrap();
    assert_eq!(a.len(), 2 * 2 * 2);
    assert!(a.iter().all(|c| c.seed != 1));
    let b = select_cells(&cfg, &[1], &[ApVariant::On]).unwrap();
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|c| c.seed == 1 && c.ap == ApVariant::On));
    // Seed-major order: a grid stopped early holds complete pairs for its first seeds.
    let all = cfg.cells();
    assert!(all[..4].iter().all(|c| c.seed == 0));
    let e = select_cells(&cfg, &[7], &[]).unwrap_err().to_string();
    assert!(e.contains("seed 7"), "{e}");
    let e = select_cells(&cfg, &[], &[ApVariant::ChangeOnly])
        .unwrap_err()
        .to_string();
    assert!(e.contains("change-only"), "{e}");
}

/// `--set` overrides (`ExperimentConfig::from_toml_file_with`): applied before validation, part
/// of the run's identity (its hash), and a bad key or value is named.
#[test]
fn overrides_apply_before_validation_and_change_the_identity() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prune/smoke.toml");
    let base = ExperimentConfig::from_toml_file(&path).unwrap();
    let set = |ov: &[&str]| {
        let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::from_toml_file_with(&path, &ov)
    };
    let c = set(&["train.epochs=2", "prune.seeds=[7]"]).unwrap();
    assert_eq!(c.train.epochs, 2);
    assert_eq!(c.prune.seeds, vec![7]);
    assert_ne!(c.hash().unwrap(), base.hash().unwrap());
    assert_eq!(set(&[]).unwrap().hash().unwrap(), base.hash().unwrap());
    let e = set(&["train.nope=1"]).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let e = set(&["prune.seeds=[]"]).unwrap_err().to_string();
    assert!(e.contains("prune.seeds"), "{e}");
    let e = set(&["novalue"]).unwrap_err().to_string();
    assert!(e.contains("key=value"), "{e}");
}
