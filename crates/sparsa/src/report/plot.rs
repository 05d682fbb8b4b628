//! The report's plots, drawn with plotters' SVG backend: line charts (linear or log axes) and
//! histograms with overlaid series. Log axes are drawn as linear axes over log10 of the data
//! with power-of-ten tick labels, so one code path serves every combination.

use crate::prune::plots::color;
use plotters::prelude::*;

/// A plot that cannot be drawn (a bug or empty data, never user input).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw plot `{title}`: {msg}")]
pub struct PlotError {
    pub title: String,
    pub msg: String,
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (fits, references).
    pub dashed: bool,
    /// Colour index (see [`crate::prune::plots::color`]).
    pub color: usize,
}

/// A line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    pub log_x: bool,
    pub log_y: bool,
    pub size: (u32, u32),
}

/// Bars of one series over the shared bins of a [`HistChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub label: String,
    pub counts: Vec<f64>,
    pub color: usize,
}

/// A histogram: `edges` has one more entry than each series' `counts`; several series are
/// overlaid with transparency.
#[derive(Debug, Clone, PartialEq)]
pub struct HistChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub edges: Vec<f64>,
    pub bars: Vec<Bars>,
    pub size: (u32, u32),
}

/// "1", "10", "0.01", "1e-5" for integer powers; empty for the ticks in between.
fn pow10_label(v: f64) -> String {
    let k = v.round();
    if (v - k).abs() > 1e-6 {
        return String::new();
    }
    let k = k as i32;
    match k {
        0..=4 => format!("{}", 10f64.powi(k)),
        -3..=-1 => format!("{}", 10f64.powi(k)),
        _ => format!("1e{k}"),
    }
}

fn plain_label(v: f64) -> String {
    let a = v.abs();
    // Ticks computed as sums of floats land a rounding error away from zero.
    if a < 1e-12 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Three significant digits, trailing zeros dropped.
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn bounds(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// Render a line chart as an SVG element.
pub fn line_chart(c: &LineChart) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Debug| PlotError {
        title: c.title.clone(),
        msg: format!("{e:?}"),
    };
    let tx = |v: f64| if c.log_x { v.log10() } else { v };
    let ty = |v: f64| if c.log_y { v.log10() } else { v };
    let keep = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!c.log_x || x > 0.0) && (!c.log_y || y > 0.0)
    };
    let lines: Vec<(&Line, Vec<(f64, f64)>)> = c
        .lines
        .iter()
        .map(|l| {
            let pts = l
                .points
                .iter()
                .filter(|p| keep(p))
                .map(|&(x, y)| (tx(x), ty(y)))
                .collect();
            (l, pts)
        })
        .collect();
    let all = || lines.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = bounds(all().map(|p| p.0)).ok_or_else(|| err(&"no finite points"))?;
    let (y0, y1) = bounds(all().map(|p| p.1)).ok_or_else(|| err(&"no finite points"))?;
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, c.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut ch = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(38)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        // Log axes spanning under two decades label every tick with its value.
        let log_label = |dense: bool| {
            move |v: &f64| {
                if dense {
                    plain_label(10f64.powf(*v))
                } else {
                    pow10_label(*v)
                }
            }
        };
        let (lx, ly) = (log_label(x1 - x0 < 2.0), log_label(y1 - y0 < 2.0));
        let (is_lx, is_ly) = (c.log_x, c.log_y);
        let fx = move |v: &f64| if is_lx { lx(v) } else { plain_label(*v) };
        let fy = move |v: &f64| if is_ly { ly(v) } else { plain_label(*v) };
        ch.configure_mesh()
            .x_desc(c.x_label.as_str())
            .y_desc(c.y_label.as_str())
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| err(&e))?;
        for (l, pts) in &lines {
            let col = color(l.color);
            let style = col.stroke_width(2);
            let anno = if l.dashed {
                ch.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                    .map_err(|e| err(&e))?
            } else {
                ch.draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(|e| err(&e))?
            };
            if !l.label.is_empty() {
                anno.label(l.label.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], col.stroke_width(2))
                });
            }
        }
        if c.lines.iter().any(|l| !l.label.is_empty()) {
            legend(&mut ch).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Render a histogram as an SVG element.
pub fn histogram(c: &HistChart) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Debug| PlotError {
        title: c.title.clone(),
        msg: format!("{e:?}"),
    };
    if c.edges.len() < 2 || c.bars.iter().any(|b| b.counts.len() + 1 != c.edges.len()) {
        return Err(err(&"edges and counts do not match"));
    }
    let (x0, x1) = (c.edges[0], c.edges[c.edges.len() - 1]);
    let ymax = c
        .bars
        .iter()
        .flat_map(|b| b.counts.iter().copied())
        .fold(0f64, f64::max)
        .max(1e-12)
        * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, c.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut ch = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(38)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, 0f64..ymax)
            .map_err(|e| err(&e))?;
        ch.configure_mesh()
            .x_desc(c.x_label.as_str())
            .y_desc(c.y_label.as_str())
            .x_label_formatter(&|v| plain_label(*v))
            .y_label_formatter(&|v| plain_label(*v))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| err(&e))?;
        let alpha = if c.bars.len() > 1 { 0.45 } else { 0.8 };
        for b in &c.bars {
            let col = color(b.color);
            let rects = b
                .counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0.0)
                .map(|(i, &n)| {
                    Rectangle::new(
                        [(c.edges[i], 0.0), (c.edges[i + 1], n)],
                        col.mix(alpha).filled(),
                    )
                });
            let anno = ch.draw_series(rects).map_err(|e| err(&e))?;
            if !b.label.is_empty() {
                anno.label(b.label.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.mix(alpha).filled())
                });
            }
        }
        if c.bars.iter().any(|b| !b.label.is_empty()) {
            legend(&mut ch).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// At most about `n` points of a curve over x ≥ 1, evenly spaced in log x (the first point of
/// each log bin, plus the last), so a rank plot over many features stays a small SVG.
pub fn log_thin(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    let Some(&(x_last, _)) = points.last() else {
        return Vec::new();
    };
    let span = x_last.max(1.0).ln().max(1e-9);
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut last_bin = None;
    for &p in points {
        let bin = (p.0.max(1.0).ln() / span * n as f64) as i64;
        if last_bin != Some(bin) {
            out.push(p);
            last_bin = Some(bin);
        }
    }
    if out.last() != points.last() {
        out.push(points[points.len() - 1]);
    }
    out
}

/// The legend box both chart kinds draw (upper right, translucent white).
fn legend<'a, DB, CT>(
    ch: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 11))
        .draw()
}

/// Per-token L0 histograms overlaid, each normalised to the share of its tokens (the chart the
/// SAE report and the comparison page draw).
pub fn l0_shares(title: &str, hists: &[(String, &[u64])]) -> Result<String, PlotError> {
    let (edges, counts) = integer_bins(&hists.iter().map(|h| h.1).collect::<Vec<_>>(), 80);
    let bars = hists
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (h, c))| {
            let total = c.iter().sum::<f64>().max(1.0);
            Bars {
                label: h.0.clone(),
                counts: c.iter().map(|x| x / total).collect(),
                color: i,
            }
        })
        .collect();
    histogram(&HistChart {
        title: title.into(),
        x_label: "L0 (features active on the token)".into(),
        y_label: "share of tokens".into(),
        edges,
        bars,
        size: (640, 340),
    })
}

/// Integer-valued data (per-token L0) as histogram edges and counts: one bin per value when the
/// range is small, else `max_bins` equal bins of integer width.
pub fn integer_bins(hists: &[&[u64]], max_bins: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let len = hists.iter().map(|h| h.len()).max().unwrap_or(1).max(1);
    let width = len.div_ceil(max_bins.max(1)).max(1);
    let nb = len.div_ceil(width);
    let edges = (0..=nb).map(|i| (i * width) as f64 - 0.5).collect();
    let counts = hists
        .iter()
        .map(|h| {
            let mut c = vec![0f64; nb];
            for (v, &n) in h.iter().enumerate() {
                c[v / width] += n as f64;
            }
            c
        })
        .collect();
    (edges, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_without_resources() {
        let l = line_chart(&LineChart {
            title: "fvu".into(),
            x_label: "tokens".into(),
            y_label: "FVU".into(),
            lines: vec![Line {
                label: "a".into(),
                points: vec![(1.0, 0.5), (10.0, 0.2), (100.0, 0.1)],
                dashed: false,
                color: 0,
            }],
            log_x: true,
            log_y: true,
            size: (400, 300),
        })
        .unwrap();
        let h = histogram(&HistChart {
            title: "h".into(),
            x_label: "x".into(),
            y_label: "n".into(),
            edges: vec![0.0, 1.0, 2.0],
            bars: vec![Bars {
                label: "b".into(),
                counts: vec![3.0, 1.0],
                color: 1,
            }],
            size: (300, 200),
        })
        .unwrap();
        for svg in [&l, &h] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
            assert!(!svg.contains("href") && !svg.contains("url("));
        }
        assert_eq!(pow10_label(-2.0), "0.01");
        assert_eq!(pow10_label(-5.0), "1e-5");
        assert_eq!(pow10_label(-2.5), "");
        assert_eq!(plain_label(0.0025), "0.0025");
        assert_eq!(plain_label(12.5), "12.5");
        assert_eq!(plain_label(-2e-16), "0");
    }

    #[test]
    fn integer_bins_merge_wide_ranges() {
        let a = [1u64, 2, 3, 4, 5];
        let (e, c) = integer_bins(&[&a], 2);
        assert_eq!(e, vec![-0.5, 2.5, 5.5]);
        assert_eq!(c[0], vec![6.0, 9.0]);
    }
}
