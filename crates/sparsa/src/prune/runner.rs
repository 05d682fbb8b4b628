//! Experiment grids: methods × AP variants × seeds, each pruned over rounds, written to a run
//! directory named by a hash of the configuration so a rerun resumes (finished rounds are
//! skipped) or reuses the results.
//!
//! Layout of `<out>/<name>-<hash12>/`:
//! ```text
//! config.toml                      the canonical configuration
//! identity.json                    sparsa version, run format, data fingerprint (see identity)
//! cells/<method>-<scope>-ap_<variant>-seed<k>/
//!   rewind.safetensors             θ at the rewind step (with batch-norm statistics)
//!   round_<rr>/epochs.jsonl        one line of EpochMetrics per epoch
//!   round_<rr>/masks.safetensors   the masks this round trained with
//!   round_<rr>/weights.safetensors the state at the end of the round's training
//!   round_<rr>/metrics.json        RoundRecord; written last, marks the round finished
//! ```
//! Every file is written atomically. Round 0 is the dense network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::ap::ApVariant;
use super::dnr::DnrReport;
use super::identity::{self, IdentityCheck, RunIdentity};
use super::layout::RunLayout;
use super::mask::{self, LayerSparsity};
use super::method::{Method, Scope, ScoreContext};
use super::schedule::{self, PruneStep, RoundCounts};
use super::train::{self, EpochMetrics, TrainConfig, TrainJob};
use super::{config_err, io_err, PruneError, Result};
use crate::data::cifar::{cifar_files, load_cifar_dir, CifarKind};
use crate::data::idx::{load_mnist_dir, mnist_files, ImageSet, InputRange};
use crate::nn::models::{Arch, InputSpec, Net};
use crate::util::fs::atomic_write;
use crate::util::progress::{Cancel, Progress};

/// The image datasets a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dataset {
    #[serde(rename = "fashion-mnist")]
    FashionMnist,
    #[serde(rename = "mnist")]
    Mnist,
    #[serde(rename = "cifar10")]
    Cifar10,
    #[serde(rename = "cifar100")]
    Cifar100,
}

/// `[data]`: which dataset and where (a directory of IDX or CIFAR binary files).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: Dataset,
    /// Directory with the files; for Fashion-MNIST it may be omitted (the CLI fetches it).
    /// Not part of the run hash (paths differ between machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Use only the first n training / test examples (0 = all).
    #[serde(default)]
    pub train_subset: usize,
    #[serde(default)]
    pub test_subset: usize,
    /// The input range: `normalize` (default), `unit` ([0, 1]) or `normalize-nonneg`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub input: InputRange,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
}

/// The pruning schedule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Train → prune `rate` of the remaining → rewind → repeat for `rounds` rounds.
    Iterative,
    /// For each target sparsity separately: prune once (at init or after dense training) → train.
    Oneshot,
}

/// Where the survivors of an iterative round restart from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    /// θ at `rewind_step` of the dense round (the lottery-ticket reset at step 0).
    #[default]
    Rewind,
    /// A fresh seeded random initialisation every round (the AP reference code's default
    /// `prune_type`); masks still compound.
    Reinit,
}

/// When a one-shot schedule prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OneshotAt {
    #[default]
    Init,
    Trained,
}

fn d_rate() -> f64 {
    0.2
}
fn d_ap_rate() -> f64 {
    0.02
}
fn d_ap() -> Vec<ApVariant> {
    vec![ApVariant::Off, ApVariant::On]
}
fn d_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}
fn d_one() -> usize {
    1
}
fn d_synflow() -> usize {
    100
}

/// `[prune]`: the grid and the schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    pub schedule: ScheduleKind,
    pub methods: Vec<Method>,
    #[serde(default)]
    pub scope: Scope,
    /// Iterative: share of the remaining weights removed per round.
    #[serde(default = "d_rate")]
    pub rate: f64,
    /// Iterative: number of pruning rounds (after the dense round 0).
    #[serde(default)]
    pub rounds: usize,
    /// Rewind to θ at this optimiser step (0 = original initialisation).
    #[serde(default)]
    pub rewind_step: usize,
    /// Iterative: `rewind` (default) or `reinit`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reset: Reset,
    /// One-shot: the target sparsities.
    #[serde(default)]
    pub sparsities: Vec<f64>,
    #[serde(default)]
    pub oneshot_at: OneshotAt,
    /// AP variants to run (iterative only).
    #[serde(default = "d_ap")]
    pub ap: Vec<ApVariant>,
    /// AP's share p_ap of the remaining weights per round.
    #[serde(default = "d_ap_rate")]
    pub ap_rate: f64,
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default = "d_one")]
    pub snip_batches: usize,
    #[serde(default = "d_synflow")]
    pub synflow_iterations: usize,
}

/// A whole experiment (one TOML file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default)]
    pub name: String,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub prune: PruneConfig,
}

impl ExperimentConfig {
    /// Parse and validate a TOML config; errors name the file and the field.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        Self::from_toml_file_with(path, &[])
    }

    /// [`ExperimentConfig::from_toml_file`] with `key=value` overrides (`train.epochs=5`,
    /// `prune.seeds=[0, 1]`) applied before validation; unknown keys are errors naming the key.
    pub fn from_toml_file_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let origin = path.display().to_string();
        let cfg: ExperimentConfig = crate::util::toml_set::parse(&text, overrides, &origin)
            .map_err(|f| PruneError::Config {
                field: f.field,
                msg: f.msg,
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check everything that can be checked before loading data.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        self.train.validate()?;
        let p = &self.prune;
        if p.methods.is_empty() {
            return Err(config_err("prune.methods", "list at least one method"));
        }
        if p.seeds.is_empty() {
            return Err(config_err("prune.seeds", "list at least one seed"));
        }
        if p.ap.is_empty() {
            return Err(config_err(
                "prune.ap",
                "list at least one AP variant (\"off\" for none)",
            ));
        }
        for m in &p.methods {
            if p.scope == Scope::Layer && !m.allows_layer_scope() {
                return Err(config_err(
                    "prune.scope",
                    format!("{} is global only; use scope = \"global\"", m.name()),
                ));
            }
        }
        match p.schedule {
            ScheduleKind::Iterative => {
                if !(p.rate > 0.0 && p.rate < 1.0) {
                    return Err(config_err("prune.rate", "must be in (0, 1)"));
                }
                if p.rounds == 0 {
                    return Err(config_err(
                        "prune.rounds",
                        "iterative pruning needs rounds ≥ 1",
                    ));
                }
                if p.reset == Reset::Reinit && p.rewind_step != 0 {
                    return Err(config_err(
                        "prune.rewind_step",
                        "reset = \"reinit\" starts every round from a fresh initialisation at \
                         step 0; set rewind_step = 0 (or use reset = \"rewind\")",
                    ));
                }
                if p.ap.iter().any(|a| *a != ApVariant::Off) {
                    if !(p.ap_rate > 0.0 && p.ap_rate <= p.rate) {
                        return Err(config_err("prune.ap_rate", "must be in (0, rate]"));
                    }
                    if p.scope != Scope::Global {
                        return Err(config_err(
                            "prune.scope",
                            "AP uses one threshold across layers: use scope = \"global\"",
                        ));
                    }
                }
            }
            ScheduleKind::Oneshot => {
                if p.reset != Reset::Rewind {
                    return Err(config_err(
                        "prune.reset",
                        "reset applies to iterative schedules; remove it for one-shot",
                    ));
                }
                if p.sparsities.is_empty() || p.sparsities.iter().any(|s| !(*s > 0.0 && *s < 1.0)) {
                    return Err(config_err(
                        "prune.sparsities",
                        "list target sparsities in (0, 1)",
                    ));
                }
                if p.ap.iter().any(|a| *a != ApVariant::Off) {
                    return Err(config_err(
                        "prune.ap",
                        "AP rides on an iterative schedule; use ap = [\"off\"] with one-shot",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The canonical TOML written into the run directory (without the machine-specific data dir).
    pub fn canonical(&self) -> Result<String> {
        let mut c = self.clone();
        c.data.dir = None;
        toml::to_string(&c).map_err(|e| config_err("config", e.to_string()))
    }

    /// First 12 hex digits of SHA-256 of [`Self::canonical`].
    pub fn hash(&self) -> Result<String> {
        let digest = Sha256::digest(self.canonical()?.as_bytes());
        Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
    }

    /// `<out>/<name>-<hash>` (or `<out>/<hash>` without a name).
    pub fn run_dir(&self, out: &Path) -> Result<PathBuf> {
        let h = self.hash()?;
        Ok(if self.name.is_empty() {
            out.join(h)
        } else {
            out.join(format!("{}-{h}", self.name))
        })
    }

    /// The (method, AP variant, seed) cells of the grid, seed-major: a grid stopped early holds
    /// complete pairs (every method and AP variant) for its first seeds.
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for &seed in &self.prune.seeds {
            for &method in &self.prune.methods {
                for &ap in &self.prune.ap {
                    out.push(Cell {
                        method,
                        scope: self.prune.scope,
                        ap,
                        seed,
                    });
                }
            }
        }
        out
    }

    /// Number of rounds per cell, dense round 0 included.
    pub fn rounds_per_cell(&self) -> usize {
        match self.prune.schedule {
            ScheduleKind::Iterative => self.prune.rounds + 1,
            ScheduleKind::Oneshot => self.prune.sparsities.len() + 1,
        }
    }

    /// Target density of round r.
    pub fn density(&self, round: usize) -> f64 {
        match self.prune.schedule {
            ScheduleKind::Iterative => schedule::iterative_density(self.prune.rate, round),
            ScheduleKind::Oneshot => {
                if round == 0 {
                    1.0
                } else {
                    1.0 - self.prune.sparsities[round - 1]
                }
            }
        }
    }
}

/// A run name becomes a directory name under `--out`: letters, digits, `.`, `_` and `-` only, not
/// starting with `.` (so `../x` or `/tmp/x` cannot write outside `--out`).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.starts_with('.') || !name.chars().all(ok_char) || name.len() > 100 {
        return Err(config_err(
            "name",
            format!(
                "`{name}` cannot name a run directory: use at most 100 letters, digits, `.`, `_` \
                 or `-`, not starting with `.`"
            ),
        ));
    }
    Ok(())
}

/// The seed of the initialisation round `round` of a cell starts from: the cell's seed, except
/// with `reinit`, where every round after the dense one draws a fresh initialisation from a seed
/// mixed from (cell seed, round) (SplitMix64 finaliser, so neighbouring rounds get unrelated
/// streams).
pub fn init_seed(cell_seed: u64, round: usize, reset: Reset) -> u64 {
    if reset == Reset::Rewind || round == 0 {
        return cell_seed;
    }
    let mut z = cell_seed ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One cell of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    pub method: Method,
    pub scope: Scope,
    pub ap: ApVariant,
    pub seed: u64,
}

impl Cell {
    pub fn dir_name(&self) -> String {
        let scope = match self.scope {
            Scope::Global => "global",
            Scope::Layer => "layer",
        };
        format!(
            "{}-{scope}-ap_{}-seed{}",
            self.method.name(),
            self.ap.name(),
            self.seed
        )
    }
}

/// The record of one finished round (`metrics.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundRecord {
    pub cell: Cell,
    pub round: usize,
    pub target_density: f64,
    pub global_sparsity: f64,
    pub layers: Vec<LayerSparsity>,
    pub counts: RoundCounts,
    pub final_test_acc: f64,
    pub final_test_loss: f64,
    /// Dynamic DNR over the last training epoch.
    pub final_train_dnr: DnrReport,
    /// Dynamic and static DNR on the test set after training.
    pub final_test_dnr: DnrReport,
    pub epochs: Vec<EpochMetrics>,
    /// SHA-256 (hex) of the prunable weights ⊙ masks the round's training started from, computed
    /// from the network handed to the trainer.
    #[serde(default)]
    pub start_digest: String,
    /// SHA-256 of the `w_start` AP was given when pruning to this round's masks (the previous
    /// round's start state, masked by the previous round's masks); `None` without AP.
    #[serde(default)]
    pub ap_start_digest: Option<String>,
}

/// SHA-256 (hex) of `w ⊙ m` over the prunable tensors, in order (f32 little-endian bytes).
pub fn masked_digest(weights: &[Vec<f32>], masks: &[Vec<f32>]) -> String {
    let mut h = Sha256::new();
    for (w, m) in weights.iter().zip(masks) {
        for (a, b) in w.iter().zip(m) {
            let v = if *b != 0.0 { *a } else { 0.0 };
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The files [`load_dataset`] reads from `dir` (for the run identity's data fingerprint).
pub fn data_files(cfg: &DataConfig, dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(match cfg.dataset {
        Dataset::FashionMnist | Dataset::Mnist => mnist_files(dir)?.to_vec(),
        Dataset::Cifar10 => cifar_files(dir, CifarKind::Cifar10)?,
        Dataset::Cifar100 => cifar_files(dir, CifarKind::Cifar100)?,
    })
}

/// This build's identity for the data in `dir`.
pub fn run_identity(cfg: &DataConfig, dir: &Path) -> Result<RunIdentity> {
    Ok(RunIdentity::current(identity::fingerprint_files(
        &data_files(cfg, dir)?,
    )?))
}

/// Load a dataset from its directory: (train, test), mapped to `cfg.input` with the training
/// statistics.
pub fn load_dataset(cfg: &DataConfig, dir: &Path) -> Result<(ImageSet, ImageSet)> {
    let (mut tr, mut te) = match cfg.dataset {
        Dataset::FashionMnist | Dataset::Mnist => load_mnist_dir(dir)?,
        Dataset::Cifar10 => load_cifar_dir(dir, CifarKind::Cifar10)?,
        Dataset::Cifar100 => load_cifar_dir(dir, CifarKind::Cifar100)?,
    };
    crate::data::idx::check_pair(dir, &tr, &te)?;
    if cfg.train_subset > 0 {
        tr.truncate(cfg.train_subset);
    }
    if cfg.test_subset > 0 {
        te.truncate(cfg.test_subset);
    }
    cfg.input.apply(&mut tr, &mut te);
    Ok((tr, te))
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut items: Vec<(&String, &Tensor)> = tensors.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(items, None).map_err(|e| PruneError::Corrupt {
        path: path.to_path_buf(),
        msg: format!("cannot serialise tensors: {e}"),
    })?;
    atomic_write(path, &bytes).map_err(io_err(path))
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| PruneError::Corrupt {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_vec_pretty(v).map_err(|e| config_err("json", e.to_string()))?;
    atomic_write(path, &s).map_err(io_err(path))
}

/// Read a finished round's record, if the round is finished.
pub fn read_record(path: &Path) -> Result<Option<RoundRecord>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| PruneError::Corrupt {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
}

/// Where everything the runner needs at run time comes from.
pub struct RunContext<'a> {
    pub train: &'a ImageSet,
    pub test: &'a ImageSet,
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
}

/// Create (or reopen) the run directory for `cfg` under `out`, write `config.toml`, and check
/// (or record) the run identity: a directory made with a different identity is refused unless
/// `allow_mismatch` ([`identity::check_or_record`]).
pub fn prepare_run_dir(
    cfg: &ExperimentConfig,
    out: &Path,
    id: &RunIdentity,
    allow_mismatch: bool,
) -> Result<(PathBuf, IdentityCheck)> {
    cfg.validate()?;
    let dir = cfg.run_dir(out)?;
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let p = RunLayout::new(&dir).config();
    let canon = cfg.canonical()?;
    match std::fs::read_to_string(&p) {
        Ok(existing) if existing == canon => {}
        Ok(_) => {
            return Err(PruneError::Corrupt {
                path: p,
                msg: "it does not match this configuration although the hash does".into(),
            })
        }
        Err(_) => atomic_write(&p, canon.as_bytes()).map_err(io_err(&p))?,
    }
    let check = identity::check_or_record(&dir, id, allow_mismatch)?;
    Ok((dir, check))
}

/// Run (or resume) every cell of the grid into `run_dir`.
pub fn run_experiment(cfg: &ExperimentConfig, run_dir: &Path, ctx: &RunContext) -> Result<()> {
    run_cells(cfg, run_dir, &cfg.cells(), ctx)
}

/// The cells of `cfg` whose seed is in `seeds` and whose AP variant is in `aps` (an empty list
/// selects all); a seed or variant the config does not list is an error. Lets several processes
/// share one run directory, each with its own cells.
pub fn select_cells(cfg: &ExperimentConfig, seeds: &[u64], aps: &[ApVariant]) -> Result<Vec<Cell>> {
    if let Some(s) = seeds.iter().find(|s| !cfg.prune.seeds.contains(s)) {
        return Err(config_err(
            "seeds",
            format!(
                "seed {s} is not in the config's prune.seeds {:?}",
                cfg.prune.seeds
            ),
        ));
    }
    if let Some(a) = aps.iter().find(|a| !cfg.prune.ap.contains(a)) {
        return Err(config_err(
            "ap",
            format!("AP variant {} is not in the config's prune.ap", a.name()),
        ));
    }
    Ok(cfg
        .cells()
        .into_iter()
        .filter(|c| seeds.is_empty() || seeds.contains(&c.seed))
        .filter(|c| aps.is_empty() || aps.contains(&c.ap))
        .collect())
}

/// The checks that need the training set's size (the rewind step must lie within training); run
/// them before creating a run directory.
pub fn check_against_data(cfg: &ExperimentConfig, train: &ImageSet) -> Result<()> {
    let total_steps = cfg.train.steps_per_epoch(train.len()) * cfg.train.epochs;
    if cfg.prune.rewind_step > total_steps {
        return Err(config_err(
            "prune.rewind_step",
            format!(
                "{} is past the end of training ({total_steps} steps)",
                cfg.prune.rewind_step
            ),
        ));
    }
    Ok(())
}

/// Run (or resume) the given cells of the grid into `run_dir`.
pub fn run_cells(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    cells: &[Cell],
    ctx: &RunContext,
) -> Result<()> {
    cfg.validate()?;
    let input = InputSpec {
        channels: ctx.train.channels,
        height: ctx.train.height,
        width: ctx.train.width,
        classes: ctx.train.classes,
    };
    check_against_data(cfg, ctx.train)?;
    let total_steps = cfg.train.steps_per_epoch(ctx.train.len()) * cfg.train.epochs;
    // Progress in optimiser steps over the remaining rounds.
    let mut remaining = 0u64;
    for c in cells {
        for r in 0..cfg.rounds_per_cell() {
            let done = RunLayout::new(run_dir).metrics(&c.dir_name(), r).is_file();
            if !done {
                remaining += (total_steps - round_start_step(cfg, r)) as u64;
            }
        }
    }
    ctx.progress.set_total(remaining);
    for cell in cells {
        run_cell(cfg, run_dir, *cell, input, ctx)?;
    }
    ctx.progress.finish();
    Ok(())
}

/// Where a round's training starts: the (pruned) network, the pruning counts, the AP start
/// digest and the optimiser step.
struct RoundStart {
    net: Net,
    counts: RoundCounts,
    ap_start_digest: Option<String>,
    start_step: usize,
}

fn run_cell(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    cell: Cell,
    input: InputSpec,
    ctx: &RunContext,
) -> Result<()> {
    let lay = RunLayout::new(run_dir);
    let dir = lay.cell(&cell.dir_name());
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let rounds = cfg.rounds_per_cell();
    let Some(first) = (0..rounds).find(|&r| !lay.metrics(&cell.dir_name(), r).is_file()) else {
        return Ok(());
    };
    let rewind_path = lay.rewind(&cell.dir_name());
    let mut rewind: Option<HashMap<String, Tensor>> = if rewind_path.is_file() {
        Some(load_tensors(&rewind_path)?)
    } else {
        None
    };
    if first > 0 && rewind.is_none() {
        return Err(PruneError::Corrupt {
            path: rewind_path,
            msg: "missing although round 0 finished".into(),
        });
    }
    for r in first..rounds {
        let rdir = lay.round(&cell.dir_name(), r);
        std::fs::create_dir_all(&rdir).map_err(io_err(&rdir))?;
        let start = if r == 0 {
            RoundStart {
                net: Net::new(cfg.model.arch, input, cell.seed, DType::F32)?,
                counts: RoundCounts::default(),
                ap_start_digest: None,
                start_step: 0,
            }
        } else {
            prune_round(cfg, &lay, cell, r, input, rewind.as_ref(), ctx)?
        };
        if let Some(st) = train_round(cfg, &lay, cell, r, start, ctx)? {
            save_tensors(&rewind_path, &st)?;
            rewind = Some(st);
        }
    }
    Ok(())
}

/// Prune for round `r ≥ 1`: take the base round's end (or a fresh initialisation for one-shot
/// pruning at init), score and prune it to the round's density (with AP if the cell says so),
/// and return the rewound (or re-initialised) network under the new masks.
fn prune_round(
    cfg: &ExperimentConfig,
    lay: &RunLayout,
    cell: Cell,
    r: usize,
    input: InputSpec,
    rewind: Option<&HashMap<String, Tensor>>,
    ctx: &RunContext,
) -> Result<RoundStart> {
    let rng_seed = cell.seed.wrapping_mul(1_000_003).wrapping_add(r as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed ^ 0xa11ce);
    let base_round = match cfg.prune.schedule {
        ScheduleKind::Iterative => Some(r - 1),
        ScheduleKind::Oneshot => match cfg.prune.oneshot_at {
            OneshotAt::Trained => Some(0),
            OneshotAt::Init => None,
        },
    };
    // The network to prune: the end of the base round, or a fresh initialisation.
    let (w_start, pruned_from) = match base_round {
        Some(b) => {
            let mut n = Net::new(cfg.model.arch, input, cell.seed, DType::F32)?;
            n.load_state(&load_tensors(&lay.weights(&cell.dir_name(), b))?)?;
            n.set_masks(&load_tensors(&lay.masks(&cell.dir_name(), b))?)?;
            // Weights at the start of that round's training, under its masks.
            let mut s = round_start(cfg, cell, b, input, rewind)?;
            s.set_masks(&n.masks())?;
            (Some(mask::host_weights(&s)?), n)
        }
        None => (
            None,
            Net::new(cfg.model.arch, input, cell.seed, DType::F32)?,
        ),
    };
    let batches = snip_batches(cfg, ctx.train, cell.seed)?;
    let sctx = ScoreContext {
        batches: &batches,
        synflow_iterations: cfg.prune.synflow_iterations,
    };
    let step = PruneStep {
        method: cell.method,
        scope: cell.scope,
        density: cfg.density(r),
        ap: cell.ap,
        ap_rate: cfg.prune.ap_rate,
        w_start: w_start.as_deref(),
        ctx: &sctx,
    };
    let (masks, counts) = schedule::prune_step(&pruned_from, &step, &mut rng)?;
    let mut ap_start_digest = None;
    if cell.ap != super::ap::ApVariant::Off {
        if let Some(ws) = &w_start {
            ap_start_digest = Some(masked_digest(ws, &mask::host_masks(&pruned_from)?));
        }
    }
    // Rewind, re-initialise or start from initialisation, with the new masks.
    let mut net = round_start(cfg, cell, r, input, rewind)?;
    mask::set_host_masks(&mut net, &masks)?;
    Ok(RoundStart {
        net,
        counts,
        ap_start_digest,
        start_step: round_start_step(cfg, r),
    })
}

/// Train round `r` from `start`, writing its masks, epoch log, weights and record (the record
/// last). Returns θ at the rewind step when round 0 captured it.
fn train_round(
    cfg: &ExperimentConfig,
    lay: &RunLayout,
    cell: Cell,
    r: usize,
    start: RoundStart,
    ctx: &RunContext,
) -> Result<Option<HashMap<String, Tensor>>> {
    let RoundStart {
        mut net,
        counts,
        ap_start_digest,
        start_step,
    } = start;
    let start_digest = masked_digest(&mask::host_weights(&net)?, &mask::host_masks(&net)?);
    save_tensors(&lay.masks(&cell.dir_name(), r), &net.masks())?;
    let mut log = String::new();
    let log_path = lay.epochs_log(&cell.dir_name(), r);
    let mut on_epoch = |m: &EpochMetrics| -> Result<()> {
        let line = serde_json::to_string(m).map_err(|e| config_err("json", e.to_string()))?;
        log.push_str(&line);
        log.push('\n');
        atomic_write(&log_path, log.as_bytes()).map_err(io_err(&log_path))
    };
    let outcome = train::train(
        &mut net,
        TrainJob {
            train: ctx.train,
            test: ctx.test,
            config: &cfg.train,
            data_seed: cell.seed.wrapping_mul(7919).wrapping_add(r as u64),
            start_step,
            capture_at: if r == 0 {
                Some(cfg.prune.rewind_step)
            } else {
                None
            },
            progress: ctx.progress,
            cancel: ctx.cancel,
            on_epoch: &mut on_epoch,
        },
    )?;
    let captured = if r == 0 {
        Some(
            outcome
                .captured
                .ok_or_else(|| config_err("prune.rewind_step", "state was not captured"))?,
        )
    } else {
        None
    };
    save_tensors(&lay.weights(&cell.dir_name(), r), &net.state()?)?;
    let layers = mask::layer_sparsity(&net)?;
    let last = outcome.epochs.last().cloned();
    let (final_test_acc, final_test_loss, final_train_dnr, final_test_dnr) = match &last {
        Some(m) => (
            m.test_acc,
            m.test_loss,
            m.train_dnr.clone(),
            m.test_dnr.clone(),
        ),
        None => {
            let (l, a, d) = train::evaluate(&mut net, ctx.test, cfg.train.eval_batch)?;
            (a, l, DnrReport::default(), d)
        }
    };
    let record = RoundRecord {
        cell,
        round: r,
        target_density: cfg.density(r),
        global_sparsity: mask::global_sparsity(&layers),
        layers,
        counts,
        final_test_acc,
        final_test_loss,
        final_train_dnr,
        final_test_dnr,
        epochs: outcome.epochs,
        start_digest,
        ap_start_digest,
    };
    write_json(&lay.metrics(&cell.dir_name(), r), &record)?;
    Ok(captured)
}

/// The state round `r` of `cell` starts training from, before its masks are applied: the
/// initialisation for round 0 and for one-shot pruning at initialisation, a fresh seeded
/// initialisation with `reinit`, otherwise θ at the rewind step (`rewind`, which round 0 captured;
/// the initialisation while it does not exist yet).
pub fn round_start(
    cfg: &ExperimentConfig,
    cell: Cell,
    r: usize,
    input: InputSpec,
    rewind: Option<&HashMap<String, Tensor>>,
) -> Result<Net> {
    let seed = init_seed(cell.seed, r, cfg.prune.reset);
    let mut net = Net::new(cfg.model.arch, input, seed, DType::F32)?;
    let from_init = r == 0
        || cfg.prune.reset == Reset::Reinit
        || cfg.prune.schedule == ScheduleKind::Oneshot && cfg.prune.oneshot_at == OneshotAt::Init;
    if !from_init {
        let rw = rewind.ok_or_else(|| {
            config_err(
                "prune.rewind_step",
                "the rewind state was not captured in round 0",
            )
        })?;
        net.load_state(rw)?;
    }
    Ok(net)
}

/// The optimiser step round `r` starts at (the learning-rate schedule resumes there).
fn round_start_step(cfg: &ExperimentConfig, r: usize) -> usize {
    let from_init = r == 0
        || cfg.prune.reset == Reset::Reinit
        || cfg.prune.schedule == ScheduleKind::Oneshot && cfg.prune.oneshot_at == OneshotAt::Init;
    if from_init {
        0
    } else {
        cfg.prune.rewind_step
    }
}

fn snip_batches(
    cfg: &ExperimentConfig,
    train: &ImageSet,
    seed: u64,
) -> Result<Vec<(Tensor, Tensor)>> {
    if !cfg.prune.methods.contains(&Method::Snip) {
        return Ok(Vec::new());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a1b);
    let mut idx: Vec<usize> = (0..train.len()).collect();
    rand::seq::SliceRandom::shuffle(idx.as_mut_slice(), &mut rng);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for k in 0..cfg.prune.snip_batches {
        let lo = (k * cfg.train.batch_size).min(idx.len());
        let hi = ((k + 1) * cfg.train.batch_size).min(idx.len());
        if lo == hi {
            break;
        }
        out.push(train.batch::<ChaCha8Rng>(&idx[lo..hi], None, &mut buf)?);
    }
    Ok(out)
}

/// Every finished round under a run directory.
pub fn load_records(run_dir: &Path) -> Result<Vec<RoundRecord>> {
    let lay = RunLayout::new(run_dir);
    let cells = lay.cells();
    if !run_dir.exists() {
        return Err(PruneError::Io {
            path: run_dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    if !lay.config().is_file() {
        return Err(config_err(
            "run_dir",
            format!("{} is not a run directory (no config.toml); pass the directory `sparsa prune run` printed", run_dir.display()),
        ));
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&cells) else {
        return Ok(out);
    };
    let mut cdirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    cdirs.sort();
    for c in cdirs {
        let Ok(rs) = std::fs::read_dir(&c) else {
            continue;
        };
        let mut rdirs: Vec<PathBuf> = rs
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        rdirs.sort();
        for r in rdirs {
            if let Some(rec) = read_record(&RunLayout::metrics_in(&r))? {
                out.push(rec);
            }
        }
    }
    Ok(out)
}
