//! The page of `sparsa sae report`: summary (configuration, final metrics in both forms),
//! training curves from `metrics.jsonl`, the log10 density histogram and the rank–density plot
//! with its fitted Zipf law, the per-token L0 histogram, and (with an activation store) the
//! feature dashboards with an index and a search-by-id box.

use super::dashboards::{Dashboard, Dashboards};
use super::html::{escape, figure, note, table, Page, Section};
use super::plot::{histogram, l0_shares, line_chart, log_thin, Bars, HistChart, Line, LineChart};
use super::ReportError;
use crate::sae::io::SaeModel;
use crate::sae::metrics::{eval_rows, EvalReport};
use crate::sae::zipf;
use std::path::Path;

/// The metric log written by `sparsa sae train` (one JSON object per line).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The held-out evaluation written by `sparsa sae train` (a list of evaluation reports).
pub const EVAL_FILE: &str = "eval.json";

/// The lines of `dir/metrics.jsonl` (empty when the file is missing; unreadable lines are
/// skipped, as a run interrupted mid-write may leave a partial last line).
pub fn read_metrics(dir: &Path) -> Result<Vec<serde_json::Value>, ReportError> {
    let p = dir.join(METRICS_FILE);
    match std::fs::read_to_string(&p) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ReportError::File {
            path: p,
            what: format!("cannot read ({e})"),
        }),
    }
}

/// The evaluation reports of `dir/eval.json`, if present and readable.
pub fn read_evals(dir: &Path) -> Option<Vec<EvalReport>> {
    let text = std::fs::read_to_string(dir.join(EVAL_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Everything the page shows.
pub struct SaeReport<'a> {
    /// Page title (e.g. the SAE directory).
    pub title: String,
    pub model: &'a SaeModel,
    /// Lines of metrics.jsonl.
    pub metrics: &'a [serde_json::Value],
    /// Final evaluation, one report per form.
    pub evals: &'a [EvalReport],
    /// Where the evaluation comes from (shown under the table).
    pub eval_note: String,
    pub dashboards: Option<&'a Dashboards>,
}

fn summary(r: &SaeReport) -> Section {
    let m = r.model;
    let mut rows = vec![vec!["setting".to_string(), "value".to_string()]];
    rows.push(vec![
        "architecture".into(),
        format!(
            "{} (exported as {})",
            m.meta.trained_architecture.name(),
            m.export_architecture()
        ),
    ]);
    rows.push(vec![
        "d_in × d_sae".into(),
        format!("{} × {}", m.params.d, m.params.f),
    ]);
    if let Ok(serde_json::Value::Object(meta)) = serde_json::to_value(&m.meta) {
        for (k, v) in meta {
            if k == "trained_architecture" {
                continue;
            }
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "—".into(),
                v => v.to_string(),
            };
            rows.push(vec![k, s]);
        }
    }
    let mut body = String::from("<h3>Configuration</h3>\n");
    body.push_str(&table(&rows));
    body.push_str("<h3>Final metrics</h3>\n");
    if r.evals.is_empty() {
        body.push_str(&note(
            "No evaluation: this directory has no eval.json and no data was given to evaluate on.",
        ));
    } else {
        let t = eval_rows(r.evals);
        body.push_str(&table(&t));
        body.push_str(&note(&r.eval_note));
    }
    Section {
        id: "summary".into(),
        title: "Summary".into(),
        body,
    }
}

fn series(metrics: &[serde_json::Value], field: &str) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter_map(|m| Some((m.get("tokens")?.as_f64()?, m.get(field)?.as_f64()?)))
        .collect()
}

fn small_line(title: &str, y: &str, lines: Vec<Line>, log_y: bool) -> Result<String, ReportError> {
    Ok(line_chart(&LineChart {
        title: title.into(),
        x_label: "training tokens".into(),
        y_label: y.into(),
        lines,
        log_x: false,
        log_y,
        size: (420, 280),
    })?)
}

fn line(label: &str, points: Vec<(f64, f64)>, color: usize, dashed: bool) -> Line {
    Line {
        label: label.into(),
        points,
        dashed,
        color,
    }
}

fn curves(metrics: &[serde_json::Value]) -> Result<Section, ReportError> {
    let mut body = String::new();
    if metrics.is_empty() {
        body.push_str(&note("No metrics.jsonl in this directory (it is written by `sparsa sae train` and `sparsa sae lm-compare`)."));
    } else {
        body.push_str("<div class=\"grid\">\n");
        let fvu = series(metrics, "fvu");
        body.push_str(&figure(
            "curve-fvu",
            &small_line("FVU", "FVU (log)", vec![line("FVU", fvu, 0, false)], true)?,
            "Fraction of variance unexplained on each logged training batch.",
        ));
        let mean = series(metrics, "l0_mean");
        let std = series(metrics, "l0_std");
        let band = |s: f64| -> Vec<(f64, f64)> {
            mean.iter()
                .zip(&std)
                .map(|(&(x, m), &(_, sd))| (x, m + s * sd))
                .collect()
        };
        let l0 = vec![
            line("mean", mean.clone(), 0, false),
            line("mean ± std", band(1.0), 1, true),
            line("", band(-1.0), 1, true),
        ];
        body.push_str(&figure(
            "curve-l0",
            &small_line("L0 per token", "active features", l0, false)?,
            "Mean and standard deviation over the tokens of each logged batch (training form).",
        ));
        let dead: Vec<(f64, f64)> = series(metrics, "dead_frac")
            .into_iter()
            .map(|(x, y)| (x, 100.0 * y))
            .collect();
        body.push_str(&figure(
            "curve-dead",
            &small_line(
                "Dead features",
                "dead %",
                vec![line("dead %", dead, 2, false)],
                false,
            )?,
            "Share of features that have not fired within the auxiliary loss's dead window.",
        ));
        let aux = series(metrics, "aux_loss");
        body.push_str(&figure(
            "curve-aux",
            &small_line(
                "Auxiliary loss",
                "aux loss",
                vec![line("aux", aux, 3, false)],
                false,
            )?,
            "The auxiliary loss (aux_k or aux_zipf) before its coefficient; 0 without one.",
        ));
        let lr = series(metrics, "lr");
        body.push_str(&figure(
            "curve-lr",
            &small_line("Learning rate", "lr", vec![line("lr", lr, 4, false)], false)?,
            "Warm-up, constant, then linear decay.",
        ));
        body.push_str("</div>\n");
    }
    Ok(Section {
        id: "curves".into(),
        title: "Training curves".into(),
        body,
    })
}

/// Bin edges of the log10 density histogram: −8 … 0 in quarter decades.
fn density_edges() -> Vec<f64> {
    (0..=32).map(|i| -8.0 + 0.25 * i as f64).collect()
}

fn log10_counts(density: &[f32], edges: &[f64]) -> (Vec<f64>, usize) {
    let mut c = vec![0f64; edges.len() - 1];
    let mut dead = 0;
    for &r in density {
        if r <= 0.0 {
            dead += 1;
            continue;
        }
        let v = (r as f64).log10();
        let b = (((v - edges[0]) / 0.25).floor().max(0.0) as usize).min(c.len() - 1);
        c[b] += 1.0;
    }
    (c, dead)
}

fn density_section(r: &SaeReport) -> Result<Section, ReportError> {
    let mut sets: Vec<(String, Vec<f32>)> = Vec::new();
    if r.model.density.iter().any(|&x| x > 0.0) {
        sets.push((
            "training (sparsity.safetensors)".into(),
            r.model.density.clone(),
        ));
    }
    if let Some(d) = r.dashboards {
        sets.push((
            format!("on {} ({} rows)", d.store, d.scan.rows),
            d.scan.density(),
        ));
    }
    let mut body = String::new();
    match sets.last() {
        None => body.push_str(&note(
            "No densities: sparsity.safetensors is missing or all zero, and no data was scanned.",
        )),
        Some((label, d)) => {
            body.push_str("<div class=\"grid\">\n");
            body.push_str(&density_histogram(&sets)?);
            // Rank–density with the fitted law, for the last set (the data when given).
            body.push_str(&rank_density_figure(label, d)?);
            body.push_str("</div>\n");
        }
    }
    Ok(Section {
        id: "density".into(),
        title: "Feature density".into(),
        body,
    })
}

/// Quarter-decade histogram of log10 density, one bar series per set, with the never-fired
/// counts in the caption.
fn density_histogram(sets: &[(String, Vec<f32>)]) -> Result<String, ReportError> {
    let edges = density_edges();
    let mut bars = Vec::new();
    let mut dead_note = Vec::new();
    for (i, (label, d)) in sets.iter().enumerate() {
        let (c, dead) = log10_counts(d, &edges);
        dead_note.push(format!("{label}: {dead} of {} never fired", d.len()));
        bars.push(Bars {
            label: label.clone(),
            counts: c,
            color: i,
        });
    }
    Ok(figure(
        "density-hist",
        &histogram(&HistChart {
            title: "log10 feature density".into(),
            x_label: "log10(firing density)".into(),
            y_label: "features".into(),
            edges,
            bars,
            size: (560, 340),
        })?,
        &format!(
            "Features by how often they fire (quarter-decade bins); {}.",
            dead_note.join("; ")
        ),
    ))
}

/// Density against rank on log–log axes with the fitted Zipf law ("" when nothing fires).
fn rank_density_figure(label: &str, d: &[f32]) -> Result<String, ReportError> {
    let order = zipf::rank_order(d);
    let pts: Vec<(f64, f64)> = order
        .iter()
        .enumerate()
        .map(|(r, &j)| ((r + 1) as f64, d[j] as f64))
        .filter(|p| p.1 > 0.0)
        .collect();
    let pts = log_thin(&pts, 500);
    if pts.is_empty() {
        return Ok(String::new());
    }
    let fit = zipf::fit(d, 0.5, &zipf::BETA_GRID);
    let mut lines = vec![line(&format!("density ({label})"), pts.clone(), 0, false)];
    let caption = match fit {
        Some(z) => {
            let law: Vec<(f64, f64)> = pts
                .iter()
                .map(|&(r, _)| (r, (z.log_c - z.alpha * (r + z.beta).ln()).exp()))
                .collect();
            lines.push(line(
                &format!("Zipf fit α={:.2} β={}", z.alpha, z.beta),
                law,
                1,
                true,
            ));
            format!(
                "Density against rank (log–log), {label}. Fitted law ρ_r = C·(r+β)^−α over the \
                 densest half of the firing features: α = {:.3}, β = {}, R² = {:.3}.",
                z.alpha, z.beta, z.r2
            )
        }
        None => format!(
            "Density against rank (log–log), {label}. Too few firing features to fit a Zipf law."
        ),
    };
    Ok(figure(
        "rank-density",
        &line_chart(&LineChart {
            title: "Rank–density (log–log) with Zipf fit".into(),
            x_label: "rank".into(),
            y_label: "density".into(),
            lines,
            log_x: true,
            log_y: true,
            size: (560, 340),
        })?,
        &caption,
    ))
}

fn l0_section(r: &SaeReport) -> Result<Section, ReportError> {
    let mut hists: Vec<(String, &[u64])> = Vec::new();
    for e in r.evals.iter().filter(|e| !e.l0_hist.is_empty()) {
        hists.push((
            format!("{} form ({}), evaluation", e.form.name(), e.rule),
            e.l0_hist.as_slice(),
        ));
    }
    if let Some(d) = r.dashboards {
        hists.push((
            format!("training form ({}), {}", d.scan.training_rule, d.store),
            d.scan.l0_training.as_slice(),
        ));
        hists.push((
            format!("inference form ({}), {}", d.scan.inference_rule, d.store),
            d.scan.l0_inference.as_slice(),
        ));
    }
    let mut body = String::new();
    if hists.is_empty() {
        body.push_str(&note(
            "No per-token L0: pass --data STORE (or keep the run's eval.json).",
        ));
    } else {
        body.push_str("<div class=\"grid\">\n");
        // One plot per source (evaluation / scanned store), forms overlaid.
        let groups: Vec<&str> = if r.dashboards.is_some() && hists.len() > 2 {
            vec!["evaluation", "store"]
        } else {
            vec!["all"]
        };
        for (gi, g) in groups.iter().enumerate() {
            let part: Vec<(String, &[u64])> = hists
                .iter()
                .enumerate()
                .filter(|(i, _)| match *g {
                    "evaluation" => *i < hists.len() - 2,
                    "store" => *i >= hists.len() - 2,
                    _ => true,
                })
                .map(|(_, h)| h.clone())
                .collect();
            body.push_str(&figure(
                &format!("l0-hist-{gi}"),
                &l0_shares("Active features per token", &part)?,
                "Per-token L0. TopK gives every token exactly k; the batch rules (Mutual/Feature Choice) and their JumpReLU form spend more features on some tokens than on others.",
            ));
        }
        body.push_str("</div>\n");
    }
    Ok(Section {
        id: "l0".into(),
        title: "Per-token L0".into(),
        body,
    })
}

/// Shade of a token: orange with opacity activation / the feature's maximum.
fn shade(act: f32, max: f32) -> Option<String> {
    (act > 0.0 && max > 0.0).then(|| {
        let a = (act / max).clamp(0.08, 1.0);
        format!("background: rgba(255, 128, 0, {a:.3})")
    })
}

fn visible(tok: &str) -> String {
    tok.replace('\n', "↵").replace('\t', "⇥")
}

fn dashboard_html(d: &Dashboard, rows: u64) -> Result<String, ReportError> {
    let density = d.count as f64 / rows.max(1) as f64;
    let mut h = format!(
        "<article class=\"feature\" id=\"f-{id}\" data-feature=\"{id}\">\n<h3>Feature {id} <span class=\"note\">— {group}; density {dens:.3e} ({count} of {rows} rows)</span></h3>\n",
        id = d.feature,
        group = d.group.name(),
        dens = density,
        count = d.count,
    );
    if d.count == 0 {
        h.push_str(&note(
            "Never fired on the scanned rows: no contexts and no activation histogram.",
        ));
    }
    h.push_str("<div class=\"cols\">\n");
    if d.count > 0 {
        let (edges, counts) = d.hist.trimmed();
        h.push_str(&figure(
            &format!("act-hist-{}", d.feature),
            &histogram(&HistChart {
                title: format!("Activations of feature {}", d.feature),
                x_label: "activation (when firing)".into(),
                y_label: "rows".into(),
                edges,
                bars: vec![Bars {
                    label: String::new(),
                    counts,
                    color: 0,
                }],
                size: (360, 200),
            })?,
            "",
        ));
    }
    if !d.promoted.is_empty() {
        h.push_str("<div class=\"logits\"><table><tr><th>promoted</th><th>logit</th><th>suppressed</th><th>logit</th></tr>\n");
        for (p, s) in d.promoted.iter().zip(&d.suppressed) {
            h.push_str(&format!(
                "<tr><td class=\"pos\">{}</td><td>{:+.3}</td><td class=\"neg\">{}</td><td>{:+.3}</td></tr>\n",
                escape(&visible(&p.0)),
                p.1,
                escape(&visible(&s.0)),
                s.1
            ));
        }
        h.push_str("</table><p class=\"note\">Logit lens: W_U·(g ⊙ W_dec row).</p></div>\n");
    }
    h.push_str("</div>\n");
    if !d.contexts.is_empty() {
        let max = d.contexts.iter().map(|c| c.0.act).fold(0f32, f32::max);
        h.push_str("<div class=\"contexts\">\n");
        for (c, text) in &d.contexts {
            h.push_str(&format!(
                "<div class=\"ctx\" data-row=\"{}\"><span class=\"act\">{:.3}</span>",
                c.row, c.act
            ));
            for (i, ((_, a), t)) in c.tokens.iter().zip(text).enumerate() {
                let class = if i == c.max_index { "tok max" } else { "tok" };
                match shade(*a, max) {
                    Some(style) => h.push_str(&format!(
                        "<span class=\"{class}\" style=\"{style}\" title=\"{a:.3}\">{}</span>",
                        escape(&visible(t))
                    )),
                    None => h.push_str(&format!(
                        "<span class=\"{class}\">{}</span>",
                        escape(&visible(t))
                    )),
                }
            }
            h.push_str("</div>\n");
        }
        h.push_str("</div>\n");
    }
    h.push_str("</article>\n");
    Ok(h)
}

const SEARCH_JS: &str = r#"(function () {
  var form = document.getElementById('search-form');
  if (!form) return;
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var v = document.getElementById('search-id').value.trim();
    var el = document.getElementById('f-' + v);
    var msg = document.getElementById('search-msg');
    if (el) {
      msg.textContent = '';
      el.scrollIntoView();
      el.classList.add('flash');
      setTimeout(function () { el.classList.remove('flash'); }, 1500);
    } else {
      msg.textContent = 'feature ' + v + ' has no dashboard in this report';
    }
  });
})();"#;

fn features_section(d: &Dashboards) -> Result<Section, ReportError> {
    let mut body = note(&format!(
        "{} dashboards from one pass over {} ({} rows, inference form: {}). Each context shows up to {} tokens before and {} after the maximum (outlined), shaded by the feature's activation.",
        d.features.len(),
        d.store,
        d.scan.rows,
        d.scan.inference_rule,
        super::dashboards::CONTEXT_WINDOW.0,
        super::dashboards::CONTEXT_WINDOW.1
    ));
    body.push_str("<form class=\"search\" id=\"search-form\"><label>Feature id <input id=\"search-id\" type=\"number\" min=\"0\"></label> <button type=\"submit\">Go</button><span id=\"search-msg\"></span></form>\n");
    let mut index = String::from("<div class=\"table-wrap\"><table id=\"feature-index\">\n<tr><th>feature</th><th>group</th><th>density</th><th>max activation</th></tr>\n");
    for f in &d.features {
        let dens = f.count as f64 / d.scan.rows.max(1) as f64;
        let max = f
            .contexts
            .first()
            .map_or("—".to_string(), |c| format!("{:.3}", c.0.act));
        index.push_str(&format!(
            "<tr><td><a href=\"#f-{id}\">{id}</a></td><td>{}</td><td>{dens:.3e}</td><td>{max}</td></tr>\n",
            f.group.name(),
            id = f.feature
        ));
    }
    index.push_str("</table></div>\n");
    body.push_str(&index);
    for f in &d.features {
        body.push_str(&dashboard_html(f, d.scan.rows)?);
    }
    Ok(Section {
        id: "features".into(),
        title: "Feature dashboards".into(),
        body,
    })
}

/// The whole page.
pub fn render(r: &SaeReport) -> Result<String, ReportError> {
    let m = r.model;
    let mut page = Page {
        title: format!("SAE report: {}", r.title),
        subtitle: format!(
            "{} SAE, d_in {}, d_sae {}, k {}, {} steps, {} tokens",
            m.meta.trained_architecture.name(),
            m.params.d,
            m.params.f,
            m.meta.k,
            m.meta.steps,
            m.meta.tokens_seen
        ),
        sections: vec![
            summary(r),
            curves(r.metrics)?,
            density_section(r)?,
            l0_section(r)?,
        ],
        script: String::new(),
    };
    match r.dashboards {
        Some(d) => {
            page.sections.push(features_section(d)?);
            page.script = SEARCH_JS.to_string();
        }
        None => page.sections.push(Section {
            id: "features".into(),
            title: "Feature dashboards".into(),
            body: note("No dashboards: pass --data STORE (an activation store) to draw them."),
        }),
    }
    Ok(page.render())
}
