//! The summary of a run directory: accuracy per sparsity level for each method with and without
//! AP (mean ± sample standard deviation over seeds), dead-neuron rates, CSVs of
//! accuracy-vs-sparsity and DNR-vs-sparsity per layer (and per epoch), paired AP − off statistics
//! with t-based 95 % confidence intervals over seeds, and SVG plots ([`super::plots`]).
//!
//! "Accuracy" of a round is the test accuracy at the end of its training (not the best epoch:
//! picking the best epoch on the test set would leak it).
//!
//! Statistics: seeds are the independent units. Per round, the paired difference
//! `acc(variant, seed) − acc(off, seed)` (same initialisation and batches) gets a mean and a CI
//! over seeds. The rounds of one seed are one chain of masks, so they are not independent: the
//! summary first averages each seed's paired differences over the last N rounds, then takes the
//! CI over those per-seed averages ([`last_rounds_summary`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::ap::ApVariant;
use super::identity::IdentityRecord;
use super::layout::RunLayout;
use super::plots::{self, Chart, Panel, Point, Series};
use super::runner::{load_records, ExperimentConfig, RoundRecord};
use super::stats::MeanCi;
use super::{config_err, io_err, Result};
use crate::util::fs::atomic_write;

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// (method, scope, AP variant).
pub type Key = (String, String, String);

fn key(r: &RoundRecord) -> Key {
    (
        r.cell.method.name().to_string(),
        format!("{:?}", r.cell.scope).to_lowercase(),
        r.cell.ap.name().to_string(),
    )
}

/// Aggregated numbers of one (method, scope, AP, round) over seeds.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub method: String,
    pub scope: String,
    pub ap: String,
    pub round: usize,
    pub sparsity: f64,
    pub seeds: usize,
    pub acc: (f64, f64),
    pub train_dnr: (f64, f64),
    pub test_dnr: (f64, f64),
    pub test_static: (f64, f64),
}

/// Aggregate the records over seeds.
pub fn aggregate(records: &[RoundRecord]) -> Vec<Aggregate> {
    let mut groups: BTreeMap<(Key, usize), Vec<&RoundRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((key(r), r.round)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((k, round), rs)| {
            let f = |g: &dyn Fn(&RoundRecord) -> f64| {
                mean_std(&rs.iter().map(|r| g(r)).collect::<Vec<_>>())
            };
            Aggregate {
                method: k.0,
                scope: k.1,
                ap: k.2,
                round,
                sparsity: f(&|r| r.global_sparsity).0,
                seeds: rs.len(),
                acc: f(&|r| r.final_test_acc),
                train_dnr: f(&|r| r.final_train_dnr.global_dynamic),
                test_dnr: f(&|r| r.final_test_dnr.global_dynamic),
                test_static: f(&|r| r.final_test_dnr.global_static.unwrap_or(f64::NAN)),
            }
        })
        .collect()
}

/// Per (method, scope, AP variant ≠ off, seed, round): `acc(variant) − acc(off)` for the same
/// seed (same initialisation and batches). Rounds where either side is unfinished are absent.
pub fn paired_differences(records: &[RoundRecord]) -> BTreeMap<(Key, u64, usize), f64> {
    let mut off: BTreeMap<(String, String, u64, usize), f64> = BTreeMap::new();
    for r in records.iter().filter(|r| r.cell.ap == ApVariant::Off) {
        let k = key(r);
        off.insert((k.0, k.1, r.cell.seed, r.round), r.final_test_acc);
    }
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| r.cell.ap != ApVariant::Off) {
        let k = key(r);
        if let Some(base) = off.get(&(k.0.clone(), k.1.clone(), r.cell.seed, r.round)) {
            out.insert((k, r.cell.seed, r.round), r.final_test_acc - base);
        }
    }
    out
}

/// Paired differences against AP off per (method, scope, AP variant ≠ off, round): mean, sample
/// std and t-based 95 % CI over seeds.
pub fn paired_deltas(records: &[RoundRecord]) -> BTreeMap<(Key, usize), MeanCi> {
    let mut diffs: BTreeMap<(Key, usize), Vec<f64>> = BTreeMap::new();
    for ((k, _, round), d) in paired_differences(records) {
        diffs.entry((k, round)).or_default().push(d);
    }
    diffs
        .into_iter()
        .map(|(k, v)| (k, MeanCi::of(&v)))
        .collect()
}

/// The summary over the last rounds for one (method, scope, AP variant ≠ off).
#[derive(Debug, Clone)]
pub struct LastRounds {
    pub key: Key,
    /// The rounds averaged (inclusive).
    pub rounds: (usize, usize),
    /// (seed, mean paired difference over those rounds) for every seed with all of them.
    pub per_seed: Vec<(u64, f64)>,
    /// Seeds left out because a round in the range is unfinished on either side.
    pub incomplete_seeds: Vec<u64>,
    /// Mean and CI over the per-seed means.
    pub ci: MeanCi,
}

/// For each (method, scope, AP variant ≠ off): each seed's paired difference averaged over the
/// `n_last` rounds `last_round − n_last + 1 ..= last_round`, then the mean and 95 % CI over seeds.
/// This counts each seed once, whatever the number of rounds (rounds of one seed are correlated).
pub fn last_rounds_summary(
    records: &[RoundRecord],
    last_round: usize,
    n_last: usize,
) -> Vec<LastRounds> {
    let first = (last_round + 1).saturating_sub(n_last.max(1));
    let diffs = paired_differences(records);
    let mut keys: Vec<Key> = diffs.keys().map(|(k, _, _)| k.clone()).collect();
    keys.dedup();
    let mut seeds: Vec<u64> = records.iter().map(|r| r.cell.seed).collect();
    seeds.sort();
    seeds.dedup();
    keys.into_iter()
        .map(|k| {
            let mut per_seed = Vec::new();
            let mut incomplete_seeds = Vec::new();
            for &seed in &seeds {
                let v: Vec<f64> = (first..=last_round)
                    .filter_map(|r| diffs.get(&(k.clone(), seed, r)).copied())
                    .collect();
                if v.len() == last_round + 1 - first {
                    per_seed.push((seed, v.iter().sum::<f64>() / v.len() as f64));
                } else {
                    incomplete_seeds.push(seed);
                }
            }
            let ci = MeanCi::of(&per_seed.iter().map(|p| p.1).collect::<Vec<_>>());
            LastRounds {
                key: k,
                rounds: (first, last_round),
                per_seed,
                incomplete_seeds,
                ci,
            }
        })
        .collect()
}

/// `+m [lo, hi]` in percentage points (of a fraction), or `+m [n=1]` without an interval.
pub fn fmt_ci_pp(c: &MeanCi) -> String {
    if c.half_width.is_finite() {
        format!(
            "{:+.2} [{:+.2}, {:+.2}]",
            100.0 * c.mean,
            100.0 * c.lo(),
            100.0 * c.hi()
        )
    } else {
        format!("{:+.2} [no CI]", 100.0 * c.mean)
    }
}

/// The summary as table rows (first row is the header): one row per round; per (method, AP)
/// the test accuracy (%) mean ± std, the paired difference to AP off (percentage points), and the
/// training-window dynamic DNR (%) mean.
pub fn summary_rows_with_deltas(
    aggs: &[Aggregate],
    deltas: &BTreeMap<(Key, usize), MeanCi>,
) -> Vec<Vec<String>> {
    let mut rows = summary_rows(aggs);
    let mut keys: Vec<Key> = deltas.keys().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return rows;
    }
    for k in &keys {
        rows[0].push(format!("{} AP {} − off (pp) [95 % CI]", k.0, k.2));
    }
    for row in rows.iter_mut().skip(1) {
        let round: usize = row[0].parse().unwrap_or(usize::MAX);
        for k in &keys {
            row.push(match deltas.get(&(k.clone(), round)) {
                Some(c) => format!("{} (n={})", fmt_ci_pp(c), c.n),
                None => "-".into(),
            });
        }
    }
    rows
}

/// The summary as table rows (first row is the header): one row per round; per (method, AP)
/// the test accuracy (%) mean ± std, and the training-window dynamic DNR (%) mean.
pub fn summary_rows(aggs: &[Aggregate]) -> Vec<Vec<String>> {
    let mut cols: Vec<Key> = aggs
        .iter()
        .map(|a| (a.method.clone(), a.scope.clone(), a.ap.clone()))
        .collect();
    cols.sort();
    cols.dedup();
    let mut rounds: Vec<usize> = aggs.iter().map(|a| a.round).collect();
    rounds.sort();
    rounds.dedup();
    let mut header = vec!["round".to_string(), "sparsity %".to_string()];
    for c in &cols {
        header.push(format!("{} AP {} acc %", c.0, c.2));
    }
    for c in &cols {
        header.push(format!("{} AP {} DNR %", c.0, c.2));
    }
    let mut rows = vec![header];
    for &r in &rounds {
        let at: Vec<Option<&Aggregate>> = cols
            .iter()
            .map(|c| {
                aggs.iter()
                    .find(|a| a.round == r && a.method == c.0 && a.scope == c.1 && a.ap == c.2)
            })
            .collect();
        let sp = at
            .iter()
            .flatten()
            .map(|a| a.sparsity)
            .next()
            .unwrap_or(f64::NAN);
        let mut row = vec![r.to_string(), format!("{:.1}", 100.0 * sp)];
        for a in &at {
            row.push(match a {
                Some(a) => format!(
                    "{:.2} ± {:.2} (n={})",
                    100.0 * a.acc.0,
                    100.0 * a.acc.1,
                    a.seeds
                ),
                None => "-".into(),
            });
        }
        for a in &at {
            row.push(match a {
                Some(a) => format!("{:.1}", 100.0 * a.train_dnr.0),
                None => "-".into(),
            });
        }
        rows.push(row);
    }
    rows
}

/// Write the CSVs into `out` and return their paths.
pub fn write_csvs(records: &[RoundRecord], out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    Ok(vec![
        write(out, "accuracy_vs_sparsity.csv", &accuracy_csv(records))?,
        write(
            out,
            "accuracy_per_seed.csv",
            &accuracy_per_seed_csv(records),
        )?,
        write(out, "dnr_vs_sparsity.csv", &dnr_csv(records))?,
        write(out, "dnr_per_epoch.csv", &dnr_per_epoch_csv(records))?,
    ])
}

/// Mean and spread of accuracy and DNR per (method, scope, ap, round) over seeds.
fn accuracy_csv(records: &[RoundRecord]) -> String {
    let aggs = aggregate(records);
    let mut s = String::from("method,scope,ap,round,sparsity,seeds,acc_mean,acc_std,train_dnr_mean,train_dnr_std,test_dnr_mean,test_static_dead_mean\n");
    for a in &aggs {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
            a.method,
            a.scope,
            a.ap,
            a.round,
            a.sparsity,
            a.seeds,
            a.acc.0,
            a.acc.1,
            a.train_dnr.0,
            a.train_dnr.1,
            a.test_dnr.0,
            a.test_static.0
        );
    }
    s
}

/// One row per (cell, round): accuracy, loss and the pruning counts.
fn accuracy_per_seed_csv(records: &[RoundRecord]) -> String {
    let mut s = String::from(
        "method,scope,ap,seed,round,sparsity,test_acc,test_loss,base_removed,ap_removed\n",
    );
    for r in records {
        let k = key(r);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.6},{:.6},{:.6},{},{}",
            k.0,
            k.1,
            k.2,
            r.cell.seed,
            r.round,
            r.global_sparsity,
            r.final_test_acc,
            r.final_test_loss,
            r.counts.base_removed,
            r.counts.ap_removed
        );
    }
    s
}

/// Per layer (and global) dynamic and static dead-neuron rates at each round's end.
fn dnr_csv(records: &[RoundRecord]) -> String {
    let mut s = String::from("method,scope,ap,seed,round,sparsity,layer,units,layer_sparsity,train_dynamic_dnr,test_dynamic_dnr,test_static_dead\n");
    for r in records {
        let k = key(r);
        for (i, l) in r.final_test_dnr.layers.iter().enumerate() {
            let train = r
                .final_train_dnr
                .layers
                .get(i)
                .map(|x| x.dynamic)
                .unwrap_or(f64::NAN);
            // In a sequential net (every prunable layer but the last feeds one ReLU) the layer
            // feeding ReLU i is prunable layer i; otherwise (ResNet) the column is NaN.
            let sequential = r.layers.len() == r.final_test_dnr.layers.len() + 1;
            let lsp = if sequential {
                r.layers.get(i).map(|x| x.sparsity()).unwrap_or(f64::NAN)
            } else {
                f64::NAN
            };
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.6},{},{},{:.6},{:.6},{:.6},{:.6}",
                k.0,
                k.1,
                k.2,
                r.cell.seed,
                r.round,
                r.global_sparsity,
                l.name,
                l.units,
                lsp,
                train,
                l.dynamic,
                l.static_dead.unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.6},global,{},{:.6},{:.6},{:.6},{:.6}",
            k.0,
            k.1,
            k.2,
            r.cell.seed,
            r.round,
            r.global_sparsity,
            r.final_test_dnr
                .layers
                .iter()
                .map(|l| l.units)
                .sum::<usize>(),
            r.global_sparsity,
            r.final_train_dnr.global_dynamic,
            r.final_test_dnr.global_dynamic,
            r.final_test_dnr.global_static.unwrap_or(f64::NAN)
        );
    }
    s
}

/// Per epoch and layer: the training dynamic dead-neuron rate.
fn dnr_per_epoch_csv(records: &[RoundRecord]) -> String {
    let mut s = String::from(
        "method,scope,ap,seed,round,epoch,test_acc,train_loss,layer,train_dynamic_dnr\n",
    );
    for r in records {
        let k = key(r);
        for e in &r.epochs {
            let prefix = format!(
                "{},{},{},{},{},{},{:.6},{:.6}",
                k.0, k.1, k.2, r.cell.seed, r.round, e.epoch, e.test_acc, e.train_loss
            );
            for l in &e.train_dnr.layers {
                let _ = writeln!(s, "{prefix},{},{:.6}", l.name, l.dynamic);
            }
            let _ = writeln!(s, "{prefix},global,{:.6}", e.train_dnr.global_dynamic);
        }
    }
    s
}

fn write(dir: &Path, name: &str, s: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    atomic_write(&p, s.as_bytes()).map_err(io_err(&p))?;
    Ok(p)
}

/// Load a run directory and build the summary rows.
pub fn report(run_dir: &Path) -> Result<(Vec<RoundRecord>, Vec<Vec<String>>)> {
    let records = load_records(run_dir)?;
    let rows = summary_rows_with_deltas(&aggregate(&records), &paired_deltas(&records));
    Ok((records, rows))
}

/// How much of the configured grid has finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Completeness {
    pub expected_rounds: usize,
    pub finished_rounds: usize,
    /// (cell directory name, finished rounds, rounds per cell) for every unfinished cell.
    pub unfinished: Vec<(String, usize, usize)>,
}

impl Completeness {
    pub fn is_complete(&self) -> bool {
        self.unfinished.is_empty()
    }
}

/// Compare the records with the grid `cfg` describes.
pub fn completeness(cfg: &ExperimentConfig, records: &[RoundRecord]) -> Completeness {
    let per_cell = cfg.rounds_per_cell();
    let cells = cfg.cells();
    let mut unfinished = Vec::new();
    let mut finished_rounds = 0;
    for c in &cells {
        let n = records.iter().filter(|r| r.cell == *c).count();
        finished_rounds += n;
        if n < per_cell {
            unfinished.push((c.dir_name(), n, per_cell));
        }
    }
    Completeness {
        expected_rounds: cells.len() * per_cell,
        finished_rounds,
        unfinished,
    }
}

/// Everything `sparsa prune report` shows for a run directory.
pub struct Report {
    pub config: ExperimentConfig,
    pub records: Vec<RoundRecord>,
    pub identity: Option<IdentityRecord>,
    pub completeness: Completeness,
    /// Accuracy / DNR / paired difference per round (first row is the header).
    pub rows: Vec<Vec<String>>,
    pub deltas: BTreeMap<(Key, usize), MeanCi>,
    pub last_rounds: Vec<LastRounds>,
}

impl Report {
    /// Read `run_dir`; the summary averages the last `n_last` rounds of the configured schedule.
    pub fn load(run_dir: &Path, n_last: usize) -> Result<Report> {
        Self::load_seeds(run_dir, n_last, &[])
    }

    /// [`Self::load`] restricted to the cells of `seeds` (all seeds when empty); completeness is
    /// then judged against those seeds' cells.
    pub fn load_seeds(run_dir: &Path, n_last: usize, seeds: &[u64]) -> Result<Report> {
        let mut records = load_records(run_dir)?;
        records.retain(|r| seeds.is_empty() || seeds.contains(&r.cell.seed));
        let cfg_path = RunLayout::new(run_dir).config();
        let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
        let mut config: ExperimentConfig =
            toml::from_str(&text).map_err(|e| super::PruneError::Corrupt {
                path: cfg_path.clone(),
                msg: e.to_string(),
            })?;
        if let Some(s) = seeds.iter().find(|s| !config.prune.seeds.contains(s)) {
            return Err(config_err(
                "seeds",
                format!(
                    "seed {s} is not in the run's prune.seeds {:?}",
                    config.prune.seeds
                ),
            ));
        }
        if !seeds.is_empty() {
            config.prune.seeds.retain(|s| seeds.contains(s));
        }
        let deltas = paired_deltas(&records);
        let rows = summary_rows_with_deltas(&aggregate(&records), &deltas);
        let last_round = config.rounds_per_cell().saturating_sub(1);
        Ok(Report {
            completeness: completeness(&config, &records),
            identity: IdentityRecord::read(run_dir)?,
            last_rounds: last_rounds_summary(&records, last_round, n_last),
            config,
            records,
            rows,
            deltas,
        })
    }

    /// The per-round paired differences as table rows (first row is the header).
    pub fn paired_rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![vec![
            "method".to_string(),
            "AP variant".to_string(),
            "round".to_string(),
            "sparsity %".to_string(),
            "seeds".to_string(),
            "AP − off (pp)".to_string(),
            "95 % CI (pp)".to_string(),
            "CI excludes 0".to_string(),
        ]];
        let sparsity = round_sparsity(&self.records);
        for ((k, round), c) in &self.deltas {
            rows.push(vec![
                k.0.clone(),
                k.2.clone(),
                round.to_string(),
                sparsity
                    .get(round)
                    .map(|s| format!("{:.2}", 100.0 * s))
                    .unwrap_or_default(),
                c.n.to_string(),
                format!("{:+.2}", 100.0 * c.mean),
                if c.half_width.is_finite() {
                    format!("[{:+.2}, {:+.2}]", 100.0 * c.lo(), 100.0 * c.hi())
                } else {
                    "-".into()
                },
                match c.sign() {
                    1 => "yes, > 0",
                    -1 => "yes, < 0",
                    _ => "no",
                }
                .to_string(),
            ]);
        }
        rows
    }

    /// Warnings a reader must see: an unfinished grid, a directory with mixed identities.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = &self.completeness;
        if !c.is_complete() {
            let cells: Vec<String> = c
                .unfinished
                .iter()
                .map(|(n, f, t)| format!("{n} {f}/{t}"))
                .collect();
            out.push(format!(
                "the run is incomplete: {} of {} rounds finished; unfinished cells: {}",
                c.finished_rounds,
                c.expected_rounds,
                cells.join(", ")
            ));
        }
        match &self.identity {
            None => out.push(
                "no identity.json: made by a sparsa without run identities (code and data \
                 unknown)"
                    .into(),
            ),
            Some(id) if !id.mixed_in.is_empty() => out.push(format!(
                "results were mixed from {} identities (--allow-identity-mismatch)",
                1 + id.mixed_in.len()
            )),
            _ => {}
        }
        out
    }
}

/// Mean global sparsity per round over all records.
fn round_sparsity(records: &[RoundRecord]) -> BTreeMap<usize, f64> {
    let mut v: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in records {
        v.entry(r.round).or_default().push(r.global_sparsity);
    }
    v.into_iter()
        .map(|(k, s)| (k, s.iter().sum::<f64>() / s.len() as f64))
        .collect()
}

/// Write `paired_differences.csv` (per round) and `paired_summary.csv` (last rounds, per seed
/// and over seeds) into `out`.
pub fn write_paired_csvs(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let sparsity = round_sparsity(&report.records);
    let mut s =
        String::from("method,scope,ap,round,sparsity,seeds,diff_mean,diff_std,ci95_lo,ci95_hi\n");
    for ((k, round), c) in &report.deltas {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{},{:.6},{:.6},{:.6},{:.6}",
            k.0,
            k.1,
            k.2,
            round,
            sparsity.get(round).copied().unwrap_or(f64::NAN),
            c.n,
            c.mean,
            c.sd,
            c.lo(),
            c.hi()
        );
    }
    let mut files = vec![write(out, "paired_differences.csv", &s)?];
    let mut s = String::from(
        "method,scope,ap,first_round,last_round,seed,mean_diff,seeds,ci95_lo,ci95_hi\n",
    );
    for l in &report.last_rounds {
        for (seed, d) in &l.per_seed {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{:.6},,,",
                l.key.0, l.key.1, l.key.2, l.rounds.0, l.rounds.1, seed, d
            );
        }
        let _ = writeln!(
            s,
            "{},{},{},{},{},all,{:.6},{},{:.6},{:.6}",
            l.key.0,
            l.key.1,
            l.key.2,
            l.rounds.0,
            l.rounds.1,
            l.ci.mean,
            l.ci.n,
            l.ci.lo(),
            l.ci.hi()
        );
    }
    files.push(write(out, "paired_summary.csv", &s)?);
    Ok(files)
}

fn point(x: f64, v: &[f64], scale: f64) -> Point {
    let c = MeanCi::of(v);
    let (lo, hi) = if c.half_width.is_finite() {
        (c.lo(), c.hi())
    } else {
        (c.mean, c.mean)
    };
    Point {
        x,
        mean: scale * c.mean,
        lo: scale * lo,
        hi: scale * hi,
    }
}

/// Order AP variants as off, on, then the ablations, so colours are stable across charts.
fn variant_rank(ap: &str) -> usize {
    ["off", "on", "change-only", "negative-only"]
        .iter()
        .position(|v| *v == ap)
        .unwrap_or(99)
}

fn sorted_keys<'a>(keys: impl Iterator<Item = &'a Key>) -> Vec<Key> {
    let mut v: Vec<Key> = keys.cloned().collect();
    v.sort_by(|a, b| (&a.0, &a.1, variant_rank(&a.2)).cmp(&(&b.0, &b.1, variant_rank(&b.2))));
    v.dedup();
    v
}

/// The report's charts, as (file name, chart): test accuracy vs remaining weights (log) per
/// method with one line per AP variant (mean ± 95 % CI over seeds); the paired AP − off
/// difference vs remaining weights; and per method the dynamic DNR (training window of the
/// round's last epoch) vs remaining weights, one panel per ReLU layer plus the global rate.
pub fn charts(records: &[RoundRecord]) -> Vec<(String, Chart)> {
    let data = ChartData::new(records);
    let mut out = vec![data.accuracy_chart()];
    out.extend(data.difference_chart());
    out.extend(data.methods.iter().map(|m| data.dnr_chart(m)));
    out
}

/// What the charts are drawn from: records grouped per (cell key, round), the cell keys and the
/// (method, scope) pairs in report order.
struct ChartData<'a> {
    records: &'a [RoundRecord],
    groups: BTreeMap<(Key, usize), Vec<&'a RoundRecord>>,
    keys: Vec<Key>,
    methods: Vec<(String, String)>,
}

const X_LABEL: &str = "remaining weights % (log scale)";

impl<'a> ChartData<'a> {
    fn new(records: &'a [RoundRecord]) -> Self {
        let mut groups: BTreeMap<(Key, usize), Vec<&RoundRecord>> = BTreeMap::new();
        for r in records {
            groups.entry((key(r), r.round)).or_default().push(r);
        }
        let keys = sorted_keys(groups.keys().map(|(k, _)| k));
        let mut methods: Vec<(String, String)> =
            keys.iter().map(|k| (k.0.clone(), k.1.clone())).collect();
        methods.dedup();
        ChartData {
            records,
            groups,
            keys,
            methods,
        }
    }

    /// Mean share of weights left (%) over a round's seeds.
    fn remaining(rs: &[&RoundRecord]) -> f64 {
        100.0 * (1.0 - rs.iter().map(|r| r.global_sparsity).sum::<f64>() / rs.len() as f64)
    }

    /// The cell keys of one (method, scope).
    fn keys_of<'k>(&'k self, (m, sc): &'k (String, String)) -> impl Iterator<Item = &'k Key> {
        self.keys.iter().filter(move |k| &k.0 == m && &k.1 == sc)
    }

    /// One point per round of cell `k`: mean ± CI of `f` over its seeds, at the remaining weights.
    fn series(&self, k: &Key, f: &dyn Fn(&RoundRecord) -> Option<f64>) -> Series {
        let points = self
            .groups
            .iter()
            .filter(|((kk, _), _)| kk == k)
            .filter_map(|(_, rs)| {
                let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then(|| point(Self::remaining(rs), &v, 100.0))
            })
            .collect();
        Series {
            label: format!("AP {}", k.2),
            points,
        }
    }

    fn accuracy_chart(&self) -> (String, Chart) {
        let panels: Vec<Panel> = self
            .methods
            .iter()
            .map(|m| Panel {
                title: format!("{} ({})", m.0, m.1),
                series: self
                    .keys_of(m)
                    .map(|k| self.series(k, &|r| Some(r.final_test_acc)))
                    .collect(),
            })
            .collect();
        (
            "accuracy_vs_remaining.svg".to_string(),
            Chart {
                title: "Test accuracy vs remaining weights (mean ± 95 % CI over seeds)".into(),
                x_label: X_LABEL.into(),
                y_label: "test accuracy %".into(),
                columns: panels.len().min(2),
                panels,
                zero_line: false,
                panel_size: (640, 420),
            },
        )
    }

    /// AP − off per round for each AP arm (`None` when no method has both arms).
    fn difference_chart(&self) -> Option<(String, Chart)> {
        let diffs = paired_differences(self.records);
        let mut panels = Vec::new();
        for m in &self.methods {
            let mut series = Vec::new();
            for k in self.keys_of(m).filter(|k| k.2 != "off") {
                let mut by_round: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
                for ((kk, _, round), d) in &diffs {
                    if kk == k {
                        by_round.entry(*round).or_default().push(*d);
                    }
                }
                let points = by_round
                    .iter()
                    .filter_map(|(round, v)| {
                        let rs = self.groups.get(&(k.clone(), *round))?;
                        Some(point(Self::remaining(rs), v, 100.0))
                    })
                    .collect();
                series.push(Series {
                    label: format!("AP {} − off", k.2),
                    points,
                });
            }
            if !series.is_empty() {
                panels.push(Panel {
                    title: format!("{} ({})", m.0, m.1),
                    series,
                });
            }
        }
        (!panels.is_empty()).then(|| {
            (
                "paired_difference.svg".to_string(),
                Chart {
                    title: "Paired accuracy difference AP − off (mean ± 95 % CI over seeds)".into(),
                    x_label: X_LABEL.into(),
                    y_label: "difference (percentage points)".into(),
                    columns: panels.len().min(2),
                    panels,
                    zero_line: true,
                    panel_size: (640, 420),
                },
            )
        })
    }

    /// Dynamic DNR per layer and globally against the remaining weights, for one method.
    fn dnr_chart(&self, method: &(String, String)) -> (String, Chart) {
        let (m, sc) = method;
        let mk: Vec<&Key> = self.keys_of(method).collect();
        let layer_names: Vec<String> = self
            .records
            .iter()
            .find(|r| r.cell.method.name() == m)
            .map(|r| {
                r.final_train_dnr
                    .layers
                    .iter()
                    .map(|l| l.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut panels: Vec<Panel> = layer_names
            .iter()
            .map(|name| Panel {
                title: format!("{name} dynamic DNR"),
                series: mk
                    .iter()
                    .map(|k| {
                        self.series(k, &|r| {
                            r.final_train_dnr
                                .layers
                                .iter()
                                .find(|l| &l.name == name)
                                .map(|l| l.dynamic)
                        })
                    })
                    .collect(),
            })
            .collect();
        panels.push(Panel {
            title: "global dynamic DNR".into(),
            series: mk
                .iter()
                .map(|k| self.series(k, &|r| Some(r.final_train_dnr.global_dynamic)))
                .collect(),
        });
        (
            format!("dnr_vs_sparsity_{m}_{sc}.svg"),
            Chart {
                title: format!(
                    "{m} ({sc}): dynamic dead-neuron rate over the last training epoch \
                     (mean ± 95 % CI over seeds)"
                ),
                x_label: X_LABEL.into(),
                y_label: "DNR %".into(),
                columns: panels.len().min(3),
                panels,
                zero_line: false,
                panel_size: (480, 360),
            },
        )
    }
}

/// Render [`charts`] into `out` as SVG files; returns their paths.
pub fn write_plots(records: &[RoundRecord], out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut files = Vec::new();
    for (name, chart) in charts(records) {
        let svg = plots::render_svg(&chart).map_err(|e| config_err("plot", e.to_string()))?;
        files.push(write(out, &name, &svg)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::method::{Method, Scope};
    use crate::prune::runner::Cell;

    fn rec(ap: ApVariant, seed: u64, round: usize, acc: f64) -> RoundRecord {
        RoundRecord {
            cell: Cell {
                method: Method::Magnitude,
                scope: Scope::Global,
                ap,
                seed,
            },
            round,
            target_density: 0.8f64.powi(round as i32),
            global_sparsity: 1.0 - 0.8f64.powi(round as i32),
            layers: Vec::new(),
            counts: Default::default(),
            final_test_acc: acc,
            final_test_loss: 0.0,
            final_train_dnr: Default::default(),
            final_test_dnr: Default::default(),
            epochs: Vec::new(),
            start_digest: String::new(),
            ap_start_digest: None,
        }
    }

    #[test]
    fn paired_statistics_by_hand() {
        // AP on − off per seed (rows) and round 0..=4 (columns).
        let d = [
            [0.0, 0.01, -0.02, 0.03, 0.01],
            [0.0, 0.00, 0.01, 0.02, 0.00],
            [0.0, -0.01, 0.00, -0.01, 0.03],
        ];
        let mut recs = Vec::new();
        for (seed, row) in d.iter().enumerate() {
            for (round, &x) in row.iter().enumerate() {
                recs.push(rec(ApVariant::Off, seed as u64, round, 0.8));
                recs.push(rec(ApVariant::On, seed as u64, round, 0.8 + x));
            }
        }
        let deltas = paired_deltas(&recs);
        // Round 3: 0.03, 0.02, −0.01 → mean 0.013333, sd = √((0.016667² + 0.006667² +
        // 0.023333²)/2) = 0.020817, half-width 4.3026527 · 0.020817 / √3 = 0.051712.
        let k = (
            "magnitude".to_string(),
            "global".to_string(),
            "on".to_string(),
        );
        let c = deltas[&(k.clone(), 3)];
        assert_eq!(c.n, 3);
        assert!((c.mean - 0.04 / 3.0).abs() < 1e-9);
        assert!((c.sd - 0.020_816_66).abs() < 1e-7, "{}", c.sd);
        assert!((c.half_width - 0.051_712).abs() < 1e-5, "{}", c.half_width);
        // Last 2 rounds (3, 4): per-seed means 0.02, 0.01, 0.01 → mean 0.013333, sd 0.005774,
        // half-width 4.3026527 · 0.005774 / √3 = 0.014342.
        let l = last_rounds_summary(&recs, 4, 2);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].rounds, (3, 4));
        let per: Vec<f64> = l[0].per_seed.iter().map(|p| p.1).collect();
        for (a, b) in per.iter().zip([0.02, 0.01, 0.01]) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!((l[0].ci.mean - 0.04 / 3.0).abs() < 1e-9);
        assert!(
            (l[0].ci.half_width - 0.014_342).abs() < 1e-5,
            "{:?}",
            l[0].ci
        );
        assert_eq!(l[0].ci.sign(), 0);
        // A seed missing a round of the range is left out, and named.
        recs.retain(|r| !(r.cell.seed == 2 && r.round == 4 && r.cell.ap == ApVariant::On));
        let l = last_rounds_summary(&recs, 4, 2);
        assert_eq!(l[0].incomplete_seeds, vec![2]);
        assert_eq!(l[0].ci.n, 2);
    }

    #[test]
    fn mean_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
