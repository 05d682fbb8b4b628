//! The summary of a run directory: accuracy per sparsity level for each method with and without
//! AP (mean ± sample standard deviation over seeds), dead-neuron rates, and CSVs of
//! accuracy-vs-sparsity and DNR-vs-sparsity per layer (and per epoch).
//!
//! "Accuracy" of a round is the test accuracy at the end of its training (not the best epoch:
//! picking the best epoch on the test set would leak it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::runner::{load_records, RoundRecord};
use super::{io_err, Result};
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

type Key = (String, String, String); // method, scope, ap

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

/// Paired differences against AP off: for every (method, scope, AP variant ≠ off, round), the
/// mean ± std over seeds of `acc(variant) − acc(off)` for the same seed (same initialisation and
/// batches), with the number of pairs.
pub fn paired_deltas(records: &[RoundRecord]) -> BTreeMap<(Key, usize), (f64, f64, usize)> {
    let mut off: BTreeMap<(String, String, u64, usize), f64> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.cell.ap == super::ap::ApVariant::Off)
    {
        let k = key(r);
        off.insert((k.0, k.1, r.cell.seed, r.round), r.final_test_acc);
    }
    let mut diffs: BTreeMap<(Key, usize), Vec<f64>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.cell.ap != super::ap::ApVariant::Off)
    {
        let k = key(r);
        if let Some(base) = off.get(&(k.0.clone(), k.1.clone(), r.cell.seed, r.round)) {
            diffs
                .entry((k, r.round))
                .or_default()
                .push(r.final_test_acc - base);
        }
    }
    diffs
        .into_iter()
        .map(|(k, v)| {
            let (m, sd) = mean_std(&v);
            (k, (m, sd, v.len()))
        })
        .collect()
}

/// The summary as table rows (first row is the header): one row per round; per (method, AP)
/// the test accuracy (%) mean ± std, the paired difference to AP off (percentage points), and the
/// training-window dynamic DNR (%) mean.
pub fn summary_rows_with_deltas(
    aggs: &[Aggregate],
    deltas: &BTreeMap<(Key, usize), (f64, f64, usize)>,
) -> Vec<Vec<String>> {
    let mut rows = summary_rows(aggs);
    let mut keys: Vec<Key> = deltas.keys().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return rows;
    }
    for k in &keys {
        rows[0].push(format!("{} AP {} − off (pp)", k.0, k.2));
    }
    for row in rows.iter_mut().skip(1) {
        let round: usize = row[0].parse().unwrap_or(usize::MAX);
        for k in &keys {
            row.push(match deltas.get(&(k.clone(), round)) {
                Some((m, sd, n)) => format!("{:+.2} ± {:.2} (n={n})", 100.0 * m, 100.0 * sd),
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
    let aggs = aggregate(records);
    let mut files = Vec::new();
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
    files.push(write(out, "accuracy_vs_sparsity.csv", &s)?);

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
    files.push(write(out, "accuracy_per_seed.csv", &s)?);

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
    files.push(write(out, "dnr_vs_sparsity.csv", &s)?);

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
    files.push(write(out, "dnr_per_epoch.csv", &s)?);
    Ok(files)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
