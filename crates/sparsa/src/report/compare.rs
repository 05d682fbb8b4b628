//! `compare.html` of `sparsa sae lm-compare`: the comparison table, and every variant's feature
//! densities and per-token L0 overlaid (held-out rows, training and inference forms).

use super::html::{figure, note, table, Page, Section};
use super::plot::{histogram, l0_shares, line_chart, log_thin, Bars, HistChart, Line, LineChart};
use super::ReportError;
use crate::sae::metrics::EvalReport;
use crate::sae::zipf;

/// One variant's held-out evaluations.
pub struct CompareVariant<'a> {
    pub label: String,
    pub training: &'a EvalReport,
    /// The inference form, when it differs from the training form.
    pub inference: Option<&'a EvalReport>,
}

fn l0_plot(name: &str, title: &str, hists: &[(String, &[u64])]) -> Result<String, ReportError> {
    Ok(figure(
        name,
        &l0_shares(title, hists)?,
        "Per-token L0 on the held-out rows, every variant overlaid.",
    ))
}

/// The page: `table` (first row the header) as printed, `notes` below it, then the plots.
pub fn render(
    title: &str,
    table_rows: &[Vec<String>],
    notes: &[String],
    variants: &[CompareVariant],
) -> Result<String, ReportError> {
    let sections = vec![
        table_section(table_rows, notes),
        density_section(variants)?,
        l0_section(variants)?,
    ];
    Ok(Page {
        title: title.into(),
        subtitle: format!("{} variants", variants.len()),
        sections,
        script: String::new(),
    }
    .render())
}

/// The comparison table and its notes.
fn table_section(table_rows: &[Vec<String>], notes: &[String]) -> Section {
    let mut body = table(table_rows);
    for n in notes {
        body.push_str(&note(n));
    }
    Section {
        id: "table".into(),
        title: "Comparison".into(),
        body,
    }
}

/// Held-out feature density: a quarter-decade histogram of log10 density (with the dead count
/// per variant) and the rank–density curve, both in the training form.
fn density_section(variants: &[CompareVariant]) -> Result<Section, ReportError> {
    let edges: Vec<f64> = (0..=32).map(|i| -8.0 + 0.25 * i as f64).collect();
    let mut bars = Vec::new();
    let mut lines = Vec::new();
    let mut dead = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let d = &v.training.density;
        let mut c = vec![0f64; edges.len() - 1];
        for &r in d.iter().filter(|&&r| r > 0.0) {
            let b = (((r as f64).log10() + 8.0) / 0.25).floor().max(0.0) as usize;
            let last = c.len() - 1;
            c[b.min(last)] += 1.0;
        }
        dead.push(format!(
            "{}: {} of {} dead",
            v.label,
            d.iter().filter(|&&r| r <= 0.0).count(),
            d.len()
        ));
        bars.push(Bars {
            label: v.label.clone(),
            counts: c,
            color: i,
        });
        let order = zipf::rank_order(d);
        lines.push(Line {
            label: v.label.clone(),
            points: log_thin(
                &order
                    .iter()
                    .enumerate()
                    .map(|(r, &j)| ((r + 1) as f64, d[j] as f64))
                    .filter(|p| p.1 > 0.0)
                    .collect::<Vec<_>>(),
                500,
            ),
            dashed: false,
            color: i,
        });
    }
    let mut body = String::from("<div class=\"grid\">\n");
    if !variants.is_empty() {
        body.push_str(&figure(
            "density-hist",
            &histogram(&HistChart {
                title: "log10 feature density (held-out, training form)".into(),
                x_label: "log10(firing density)".into(),
                y_label: "features".into(),
                edges,
                bars,
                size: (640, 360),
            })?,
            &format!("Quarter-decade bins; {}.", dead.join("; ")),
        ));
    }
    if lines.iter().any(|l| !l.points.is_empty()) {
        body.push_str(&figure(
            "rank-density",
            &line_chart(&LineChart {
                title: "Rank–density (log–log)".into(),
                x_label: "rank".into(),
                y_label: "density".into(),
                lines,
                log_x: true,
                log_y: true,
                size: (640, 360),
            })?,
            "Held-out firing density against rank, training form.",
        ));
    }
    body.push_str("</div>\n");
    Ok(Section {
        id: "density".into(),
        title: "Feature density".into(),
        body,
    })
}

/// Per-token L0 histograms, training form and (where evaluated) inference form.
fn l0_section(variants: &[CompareVariant]) -> Result<Section, ReportError> {
    let mut body = String::from("<div class=\"grid\">\n");
    let train: Vec<(String, &[u64])> = variants
        .iter()
        .filter(|v| !v.training.l0_hist.is_empty())
        .map(|v| (v.label.clone(), v.training.l0_hist.as_slice()))
        .collect();
    if !train.is_empty() {
        body.push_str(&l0_plot(
            "l0-training",
            "Per-token L0, training form",
            &train,
        )?);
    }
    let inf: Vec<(String, &[u64])> = variants
        .iter()
        .filter_map(|v| {
            v.inference
                .filter(|e| !e.l0_hist.is_empty())
                .map(|e| (v.label.clone(), e.l0_hist.as_slice()))
        })
        .collect();
    if !inf.is_empty() {
        body.push_str(&l0_plot(
            "l0-inference",
            "Per-token L0, inference form",
            &inf,
        )?);
    }
    body.push_str("</div>\n");
    Ok(Section {
        id: "l0".into(),
        title: "Per-token L0".into(),
        body,
    })
}
