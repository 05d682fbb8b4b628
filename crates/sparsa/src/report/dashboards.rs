//! Feature dashboards: one streaming pass over an activation store, then the few rows each
//! chosen feature needs.
//!
//! The pass ([`scan`]) reads the store in file order, `batch` rows at a time, encodes each batch
//! once and applies both forms of the SAE: the inference form (per token: TopK, or JumpReLU with
//! the exported thresholds) gives each feature's activations, and the training form (the batch
//! rule) only its per-token L0. Per feature it keeps the firing count, an activation histogram of
//! fixed size ([`ActHist`]) and the `top_n` largest activations with their rows ([`TopN`]), so
//! memory is O(batch·F + F·top_n) whatever the number of rows.
//!
//! Afterwards [`select_features`] picks the dashboards from the measured densities and
//! [`contexts`] rebuilds each top row's context from the store's token ids, document ids and
//! positions, re-encoding only those rows to shade every token by the feature's activation.

use super::ReportError;
use crate::data::store::{RowSource, StoreReader};
use crate::lm::Unembedding;
use crate::sae::allocation::Matching;
use crate::sae::io::SaeModel;
use crate::sae::metrics::{rule_for, Form};
use crate::util::progress::{Cancel, Progress};
use rand::seq::index::sample;
use rand::SeedableRng;

/// The `n` largest (activation, row) pairs seen so far; ties keep the earlier row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopN {
    items: Vec<(f32, u64)>,
    /// Index of the smallest kept item (valid when `items` is full).
    min_at: usize,
}

impl TopN {
    /// Offer `(act, row)`; rows must arrive in increasing order (then ties favour the earlier).
    pub fn push(&mut self, n: usize, act: f32, row: u64) {
        if self.items.len() < n {
            self.items.push((act, row));
            if self.items.len() == n {
                self.refresh_min();
            }
        } else if n > 0 && act > self.items[self.min_at].0 {
            self.items[self.min_at] = (act, row);
            self.refresh_min();
        }
    }

    fn refresh_min(&mut self) {
        // The smallest activation; among equals the latest row is the one to evict.
        self.min_at = (0..self.items.len())
            .min_by(|&a, &b| {
                let (x, y) = (self.items[a], self.items[b]);
                x.0.total_cmp(&y.0).then(y.1.cmp(&x.1))
            })
            .unwrap_or(0);
    }

    /// The kept pairs, largest activation first (ties: lower row first).
    pub fn sorted(&self) -> Vec<(f32, u64)> {
        let mut v = self.items.clone();
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        v
    }
}

/// A histogram of positive activations with a fixed number of bins over [0, bins·width): when a
/// value falls past the end, adjacent bins are merged pairwise and the width doubles, so the
/// counts stay exact and the memory fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct ActHist {
    pub counts: Vec<u32>,
    /// Bin width; 0 until the first value.
    pub width: f32,
}

impl ActHist {
    pub fn new(bins: usize) -> Self {
        ActHist {
            counts: vec![0; bins.max(2).next_multiple_of(2)],
            width: 0.0,
        }
    }

    pub fn add(&mut self, v: f32) {
        if !(v > 0.0 && v.is_finite()) {
            return;
        }
        let nb = self.counts.len();
        if self.width == 0.0 {
            // The first value lands in the middle of the range.
            self.width = 2.0 * v / nb as f32;
        }
        while v >= self.width * nb as f32 {
            for i in 0..nb / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[nb / 2..].iter_mut().for_each(|c| *c = 0);
            self.width *= 2.0;
        }
        let b = ((v / self.width) as usize).min(nb - 1);
        self.counts[b] += 1;
    }

    /// (edges, counts) up to the last non-empty bin.
    pub fn trimmed(&self) -> (Vec<f64>, Vec<f64>) {
        let last = self
            .counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(1, |i| i + 1);
        let edges = (0..=last).map(|i| i as f64 * self.width as f64).collect();
        let counts = self.counts[..last].iter().map(|&c| c as f64).collect();
        (edges, counts)
    }
}

/// Settings of the pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanConfig {
    /// Contexts kept per feature.
    pub top_n: usize,
    /// Rows per batch (the batch rule of the training form sees batches of this size).
    pub batch: usize,
    /// Read at most this many rows (from the start).
    pub max_rows: Option<u64>,
    /// Bins of each feature's activation histogram.
    pub hist_bins: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            top_n: 12,
            batch: 4096,
            max_rows: None,
            hist_bins: 40,
        }
    }
}

/// What the pass measured.
#[derive(Debug, Clone)]
pub struct Scan {
    pub rows: u64,
    /// Per feature: rows on which the inference form fired it.
    pub counts: Vec<u64>,
    pub top: Vec<TopN>,
    pub hists: Vec<ActHist>,
    /// Per-token L0 histograms: `[n]` = rows with n active features.
    pub l0_inference: Vec<u64>,
    pub l0_training: Vec<u64>,
    /// Name of the training form's rule and of the inference form's rule.
    pub training_rule: String,
    pub inference_rule: String,
}

impl Scan {
    /// Firing density per feature (inference form).
    pub fn density(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.counts.iter().map(|&c| (c as f64 / n) as f32).collect()
    }
}

fn bump(h: &mut Vec<u64>, v: usize) {
    if h.len() <= v {
        h.resize(v + 1, 0);
    }
    h[v] += 1;
}

/// One streaming pass over `reader` (see the module doc). `None` when cancelled.
pub fn scan(
    model: &SaeModel,
    reader: &mut StoreReader,
    cfg: &ScanConfig,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Option<Scan>, ReportError> {
    let (d, f) = (model.params.d, model.params.f);
    if reader.d() != d {
        return Err(crate::sae::SaeError::Width {
            data: reader.d(),
            sae: d,
        }
        .into());
    }
    let total = cfg
        .max_rows
        .map_or(reader.n_rows(), |m| m.min(reader.n_rows()));
    let batch = cfg.batch.max(1);
    let inference = rule_for(model, Form::Inference)?;
    let training = rule_for(model, Form::Training)?;
    let mut s = Scan {
        rows: 0,
        counts: vec![0; f],
        top: vec![TopN::default(); f],
        hists: vec![ActHist::new(cfg.hist_bins); f],
        l0_inference: Vec::new(),
        l0_training: Vec::new(),
        training_rule: training.name().to_string(),
        inference_rule: inference.name().to_string(),
    };
    let mut x = vec![0f32; batch * d];
    let (mut mi, mut mt) = (Matching::default(), Matching::default());
    progress.set_total(total);
    let mut step = 0u64;
    while s.rows < total {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let n = ((total - s.rows) as usize).min(batch);
        reader.read_rows(s.rows, &mut x[..n * d])?;
        let a = model.params.encode_pre(&x[..n * d], n)?;
        let input = crate::sae::allocation::AllocInput {
            a: &a,
            b: n,
            f,
            density: &model.density,
            step,
        };
        inference.select(&input, &mut mi);
        training.select(&input, &mut mt);
        step += 1;
        for i in 0..n {
            let row = s.rows + i as u64;
            let cols = mi.row(i);
            bump(&mut s.l0_inference, cols.len());
            bump(&mut s.l0_training, mt.row(i).len());
            for &j in cols {
                let j = j as usize;
                let v = a[i * f + j];
                s.counts[j] += 1;
                s.hists[j].add(v);
                s.top[j].push(cfg.top_n, v, row);
            }
        }
        s.rows += n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    Ok(Some(s))
}

/// Why a feature has a dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Among the densest.
    Dense,
    /// A seeded random sample of the features that fired.
    Random,
    /// Fired, but among the rarest.
    Rare,
    /// Never fired on the scanned rows.
    Dead,
    /// Asked for (`--features`).
    Requested,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Dense => "top density",
            Group::Random => "random sample",
            Group::Rare => "under-used",
            Group::Dead => "dead",
            Group::Requested => "requested",
        }
    }
}

/// How many dashboards of each kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub dense: usize,
    pub random: usize,
    pub rare: usize,
    pub dead: usize,
    pub requested: Vec<usize>,
    pub seed: u64,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            dense: 12,
            random: 12,
            rare: 6,
            dead: 3,
            requested: Vec::new(),
            seed: 0,
        }
    }
}

/// Requested features must exist in an SAE of `f` features (callers check before a scan).
pub fn check_requested(requested: &[usize], f: usize) -> Result<(), ReportError> {
    match requested.iter().find(|&&j| j >= f) {
        Some(j) => Err(ReportError::Input(format!(
            "--features {j}: the SAE has {f} features, numbered 0 to {}",
            f.saturating_sub(1)
        ))),
        None => Ok(()),
    }
}

/// The features to draw, each once, in the order requested → dense → random → rare → dead.
pub fn select_features(
    density: &[f32],
    sel: &Selection,
) -> Result<Vec<(usize, Group)>, ReportError> {
    let f = density.len();
    let mut out: Vec<(usize, Group)> = Vec::new();
    let mut taken = vec![false; f];
    let mut take = |j: usize, g: Group, out: &mut Vec<(usize, Group)>| {
        if !taken[j] {
            taken[j] = true;
            out.push((j, g));
        }
    };
    check_requested(&sel.requested, f)?;
    for &j in &sel.requested {
        take(j, Group::Requested, &mut out);
    }
    let order = crate::sae::zipf::rank_order(density);
    let live: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&j| density[j] > 0.0)
        .collect();
    for &j in live.iter().take(sel.dense) {
        take(j, Group::Dense, &mut out);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(sel.seed);
    let mut pick: Vec<usize> = sample(&mut rng, live.len(), sel.random.min(live.len()))
        .into_iter()
        .map(|i| live[i])
        .collect();
    pick.sort_unstable();
    for j in pick {
        take(j, Group::Random, &mut out);
    }
    for &j in live.iter().rev().take(sel.rare) {
        take(j, Group::Rare, &mut out);
    }
    for j in (0..f).filter(|&j| density[j] <= 0.0).take(sel.dead) {
        take(j, Group::Dead, &mut out);
    }
    Ok(out)
}

/// One top-activating context: its tokens with the feature's activation on each.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Store row of the maximum (the row the top-N list holds).
    pub row: u64,
    /// The activation recorded by the pass.
    pub act: f32,
    pub doc: Option<u32>,
    /// (token id, activation) in order.
    pub tokens: Vec<(Option<u32>, f32)>,
    /// Index of `row` in `tokens`.
    pub max_index: usize,
}

/// The context around each of `top`'s rows for feature `j`: up to `before` earlier and `after`
/// later rows of the same context (same document, consecutive positions), re-encoded in the
/// inference form.
pub fn contexts(
    model: &SaeModel,
    reader: &mut StoreReader,
    j: usize,
    top: &[(f32, u64)],
    before: usize,
    after: usize,
) -> Result<Vec<Context>, ReportError> {
    let (d, f) = (model.params.d, model.params.f);
    let rule = rule_for(model, Form::Inference)?;
    let mut out = Vec::with_capacity(top.len());
    for &(act, row) in top {
        let start = row.saturating_sub(before as u64);
        let end = (row + after as u64 + 1).min(reader.n_rows());
        let src = reader.read_sources(start, (end - start) as usize)?;
        let at = (row - start) as usize;
        let same = |a: &RowSource, b: &RowSource| {
            a.doc == b.doc
                && match (a.position, b.position) {
                    (Some(p), Some(q)) => q == p + 1,
                    _ => true,
                }
        };
        let mut lo = at;
        while lo > 0 && same(&src[lo - 1], &src[lo]) {
            lo -= 1;
        }
        let mut hi = at + 1;
        while hi < src.len() && same(&src[hi - 1], &src[hi]) {
            hi += 1;
        }
        let n = hi - lo;
        let mut x = vec![0f32; n * d];
        reader.read_rows(start + lo as u64, &mut x)?;
        let a = model.params.encode_pre(&x, n)?;
        let mut m = Matching::default();
        rule.select(
            &crate::sae::allocation::AllocInput {
                a: &a,
                b: n,
                f,
                density: &model.density,
                step: 0,
            },
            &mut m,
        );
        let tokens = (0..n)
            .map(|i| {
                let v = if m.row(i).binary_search(&(j as u32)).is_ok() {
                    a[i * f + j]
                } else {
                    0.0
                };
                (src[lo + i].token, v)
            })
            .collect();
        out.push(Context {
            row,
            act,
            doc: src[at].doc,
            tokens,
            max_index: at - lo,
        });
    }
    Ok(out)
}

/// (token id, logit) pairs.
pub type Logits = Vec<(u32, f32)>;

/// The `n` vocabulary entries a decoder direction promotes most and suppresses most:
/// (descending, ascending).
pub fn logit_lens(unembed: &Unembedding, direction: &[f32], n: usize) -> (Logits, Logits) {
    let logits = unembed.logit_lens(direction);
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let top = idx
        .iter()
        .take(n)
        .map(|&i| (i, logits[i as usize]))
        .collect();
    let bottom = idx
        .iter()
        .rev()
        .take(n)
        .map(|&i| (i, logits[i as usize]))
        .collect();
    (top, bottom)
}

/// One feature's dashboard, ready to draw.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub feature: usize,
    pub group: Group,
    /// Rows the inference form fired it on, of [`Scan::rows`].
    pub count: u64,
    pub hist: ActHist,
    /// Each context with its tokens' text.
    pub contexts: Vec<(Context, Vec<String>)>,
    /// Logit lens: (token text, logit), most promoted and most suppressed first.
    pub promoted: Vec<(String, f32)>,
    pub suppressed: Vec<(String, f32)>,
}

/// The dashboards of one store.
#[derive(Debug, Clone)]
pub struct Dashboards {
    /// What was scanned (shown on the page).
    pub store: String,
    pub scan: Scan,
    pub features: Vec<Dashboard>,
}

/// Tokens before and after the maximum shown in each context.
pub const CONTEXT_WINDOW: (usize, usize) = (24, 4);

/// Choose the features ([`select_features`]), rebuild their contexts and logit lens. `text`
/// turns a token id into its text; `lens` is the model's unembedding when it is available.
pub fn build(
    model: &SaeModel,
    reader: &mut StoreReader,
    scan: Scan,
    sel: &Selection,
    text: &dyn Fn(u32) -> String,
    lens: Option<&Unembedding>,
    store: String,
) -> Result<Dashboards, ReportError> {
    let chosen = select_features(&scan.density(), sel)?;
    let d = model.params.d;
    let mut features = Vec::with_capacity(chosen.len());
    for (j, group) in chosen {
        let top = scan.top[j].sorted();
        let ctx = contexts(model, reader, j, &top, CONTEXT_WINDOW.0, CONTEXT_WINDOW.1)?;
        let contexts = ctx
            .into_iter()
            .map(|c| {
                let t = c
                    .tokens
                    .iter()
                    .map(|(id, _)| id.map_or_else(|| "?".to_string(), text))
                    .collect();
                (c, t)
            })
            .collect();
        let (promoted, suppressed) = match lens {
            Some(u) if u.d == d => {
                let (p, s) = logit_lens(u, &model.params.w_dec[j * d..(j + 1) * d], 10);
                let named = |v: Vec<(u32, f32)>| -> Vec<(String, f32)> {
                    v.into_iter().map(|(i, l)| (text(i), l)).collect()
                };
                (named(p), named(s))
            }
            _ => (Vec::new(), Vec::new()),
        };
        features.push(Dashboard {
            feature: j,
            group,
            count: scan.counts[j],
            hist: scan.hists[j].clone(),
            contexts,
            promoted,
            suppressed,
        });
    }
    Ok(Dashboards {
        store,
        scan,
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_keeps_the_largest_and_the_earliest_on_ties() {
        let mut t = TopN::default();
        for (row, a) in [3.0, 1.0, 5.0, 5.0, 2.0, 4.0, 1.0].into_iter().enumerate() {
            t.push(3, a, row as u64);
        }
        assert_eq!(t.sorted(), vec![(5.0, 2), (5.0, 3), (4.0, 5)]);
        let mut t = TopN::default();
        for row in 0..5 {
            t.push(2, 1.0, row);
        }
        assert_eq!(t.sorted(), vec![(1.0, 0), (1.0, 1)]);
    }

    #[test]
    fn act_hist_counts_are_exact_after_merging() {
        let mut h = ActHist::new(8);
        let vals = [1.0f32, 0.5, 3.0, 9.0, 40.0, 2.0, 0.1];
        for v in vals {
            h.add(v);
        }
        assert_eq!(h.counts.iter().sum::<u32>() as usize, vals.len());
        assert!(h.width * 8.0 > 40.0);
        let (e, c) = h.trimmed();
        assert_eq!(e.len(), c.len() + 1);
    }

    #[test]
    fn selection_has_each_group_once() {
        let density = [0.5f32, 0.0, 0.1, 0.01, 0.2, 0.0, 0.001];
        let sel = Selection {
            dense: 2,
            random: 2,
            rare: 1,
            dead: 5,
            requested: vec![3],
            seed: 1,
        };
        let s = select_features(&density, &sel).unwrap();
        assert_eq!(s[0], (3, Group::Requested));
        assert_eq!(&s[1..3], &[(0, Group::Dense), (4, Group::Dense)]);
        let ids: Vec<usize> = s.iter().map(|x| x.0).collect();
        let mut u = ids.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), ids.len());
        assert!(s.contains(&(1, Group::Dead)) && s.contains(&(5, Group::Dead)));
        assert!(select_features(
            &density,
            &Selection {
                requested: vec![7],
                ..sel
            }
        )
        .is_err());
    }
}
