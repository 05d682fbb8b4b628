//! The HTML page of `sparsa prune report`: accuracy vs remaining weights per method × AP variant
//! (mean ± 95 % CI over seeds, log axis), the paired AP − off difference, dynamic DNR vs
//! remaining weights per layer and global, DNR over the epochs of each round, and the tables.

use super::html::{escape, figure, note, table, Page, Section};
use super::plot::{line_chart, Line, LineChart};
use super::ReportError;
use crate::prune::plots::render_svg;
use crate::prune::report::{charts, fmt_ci_pp, Report};
use crate::prune::runner::RoundRecord;
use std::collections::BTreeMap;

/// Global dynamic DNR (training batches) per epoch, averaged over seeds: one panel per method,
/// one line per (AP variant, round) so each round's epochs stand apart.
fn dnr_epochs_chart(records: &[RoundRecord]) -> Result<Vec<(String, String)>, ReportError> {
    // method → variant → round → epoch → values over seeds.
    type ByEpoch = BTreeMap<usize, Vec<f64>>;
    let mut m: BTreeMap<String, BTreeMap<String, BTreeMap<usize, ByEpoch>>> = BTreeMap::new();
    for r in records {
        let method = format!("{} ({:?})", r.cell.method.name(), r.cell.scope).to_lowercase();
        for e in &r.epochs {
            m.entry(method.clone())
                .or_default()
                .entry(r.cell.ap.name().to_string())
                .or_default()
                .entry(r.round)
                .or_default()
                .entry(e.epoch)
                .or_default()
                .push(100.0 * e.train_dnr.global_dynamic);
        }
    }
    let mut out = Vec::new();
    for (method, variants) in m {
        let mut lines = Vec::new();
        for (vi, (ap, rounds)) in variants.iter().enumerate() {
            for (ri, (round, epochs)) in rounds.iter().enumerate() {
                let n = epochs.len().max(1) as f64;
                let points = epochs
                    .iter()
                    .enumerate()
                    .map(|(k, (_, v))| {
                        (
                            *round as f64 + (k as f64 + 1.0) / n,
                            v.iter().sum::<f64>() / v.len() as f64,
                        )
                    })
                    .collect();
                lines.push(Line {
                    label: if ri == 0 {
                        format!("AP {ap}")
                    } else {
                        String::new()
                    },
                    points,
                    dashed: false,
                    color: vi,
                });
            }
        }
        let svg = line_chart(&LineChart {
            title: format!("{method}: global dynamic DNR per epoch"),
            x_label: "round (epochs within it)".into(),
            y_label: "DNR % (training batches)".into(),
            lines,
            log_x: false,
            log_y: false,
            size: (720, 360),
        })?;
        out.push((method, svg));
    }
    Ok(out)
}

/// The page for a loaded run directory; `title` names it.
pub fn render(rep: &Report, title: &str) -> Result<String, ReportError> {
    let mut sections = Vec::new();
    let c = &rep.completeness;
    let mut body = note(&format!(
        "{} of {} rounds finished{}.",
        c.finished_rounds,
        c.expected_rounds,
        if c.is_complete() {
            ""
        } else {
            " (incomplete run)"
        }
    ));
    for w in rep.warnings() {
        body.push_str(&note(&format!("warning: {w}")));
    }
    body.push_str(&table(&rep.rows));
    sections.push(Section {
        id: "rounds".into(),
        title: "Per-round table".into(),
        body,
    });

    let mut body = String::new();
    for (name, chart) in charts(&rep.records) {
        let svg = render_svg(&chart)?;
        let plot = name.trim_end_matches(".svg");
        body.push_str(&figure(plot, &svg, &chart.title));
    }
    sections.push(Section {
        id: "plots".into(),
        title: "Accuracy and DNR vs sparsity".into(),
        body,
    });

    let mut body = String::new();
    for (i, (method, svg)) in dnr_epochs_chart(&rep.records)?.iter().enumerate() {
        body.push_str(&figure(
            &format!("dnr-epochs-{i}"),
            svg,
            &format!("{method}: each segment is one round; mean over seeds."),
        ));
    }
    if body.is_empty() {
        body = note("No per-epoch records.");
    }
    sections.push(Section {
        id: "dnr-epochs".into(),
        title: "DNR over epochs".into(),
        body,
    });

    if !rep.deltas.is_empty() {
        let mut body = table(&rep.paired_rows());
        body.push_str("<ul>\n");
        for l in &rep.last_rounds {
            body.push_str(&format!(
                "<li>{} AP {} − off, rounds {}–{}: {} pp over {} seeds</li>\n",
                escape(&l.key.0),
                escape(&l.key.2),
                l.rounds.0,
                l.rounds.1,
                escape(&fmt_ci_pp(&l.ci)),
                l.ci.n
            ));
        }
        body.push_str("</ul>\n");
        sections.push(Section {
            id: "paired".into(),
            title: "Paired differences AP − off".into(),
            body,
        });
    }
    Ok(Page {
        title: format!("Pruning report: {title}"),
        subtitle: format!(
            "{:?} on {:?}: {} finished rounds",
            rep.config.model.arch,
            rep.config.data.dataset,
            rep.records.len()
        ),
        sections,
        script: String::new(),
    }
    .render())
}
