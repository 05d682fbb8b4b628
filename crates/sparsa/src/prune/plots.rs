//! Line charts with confidence bands, rendered to self-contained SVG strings (plotters' SVG
//! backend; no fonts, scripts or network resources are referenced beyond a generic `sans-serif`
//! family name). Independent of the pruning types: callers build [`Chart`]s from their data, so a
//! report page can embed the same SVG the files hold.
//!
//! Every chart has a logarithmic x axis (remaining weights: pruning is geometric, so rounds are
//! evenly spaced in log scale) and one panel per [`Panel`], each with series of mean ± interval.

use plotters::prelude::*;

/// One x position of a series: the mean and the interval drawn as a band (lo = hi = mean when
/// there is no interval).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// A named line with its band.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// One sub-plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// A figure: a title, shared axis labels, and panels laid out in a grid of `columns` columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
    /// Draw a horizontal line at y = 0 (for differences).
    pub zero_line: bool,
    /// Size of one panel in pixels.
    pub panel_size: (u32, u32),
}

/// Errors from drawing (a bug or an empty/invalid chart, never user input).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw chart `{title}`: {msg}")]
pub struct PlotError {
    pub title: String,
    pub msg: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The colour of series `i` (stable, so the same variant keeps its colour across charts).
pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn finite_bounds(panel: &Panel) -> Option<(f64, f64, f64, f64)> {
    let mut b = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in panel.series.iter().flat_map(|s| &s.points) {
        if !(p.x.is_finite() && p.x > 0.0 && p.mean.is_finite()) {
            continue;
        }
        b.0 = b.0.min(p.x);
        b.1 = b.1.max(p.x);
        for y in [p.mean, p.lo, p.hi] {
            if y.is_finite() {
                b.2 = b.2.min(y);
                b.3 = b.3.max(y);
            }
        }
    }
    (b.0 <= b.1).then_some(b)
}

/// Format a remaining-weights tick: 100, 10, 1, 0.1 … without trailing zeros.
fn tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Render `chart` as an SVG document.
pub fn render_svg(chart: &Chart) -> Result<String, PlotError> {
    let err = |msg: String| PlotError {
        title: chart.title.clone(),
        msg,
    };
    if chart.panels.is_empty() {
        return Err(err("\"no panels\"".into()));
    }
    let cols = chart.columns.clamp(1, chart.panels.len());
    let rows = chart.panels.len().div_ceil(cols);
    let (pw, ph) = chart.panel_size;
    let size = (pw * cols as u32, ph * rows as u32 + 30);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(debug).map_err(err)?;
        let root = root
            .titled(&chart.title, ("sans-serif", 18))
            .map_err(debug)
            .map_err(err)?;
        let areas = root.split_evenly((rows, cols));
        for (area, panel) in areas.iter().zip(&chart.panels) {
            draw_panel(area, chart, panel).map_err(err)?;
        }
        root.present().map_err(debug).map_err(err)?;
    }
    Ok(svg)
}

/// A plotters error as the message [`PlotError`] carries.
fn debug(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Axes<'a, 'b> = ChartContext<
    'b,
    SVGBackend<'a>,
    Cartesian2d<LogCoord<f64>, plotters::coord::types::RangedCoordf64>,
>;

/// One panel: axes fitted to its finite points (with the zero line when the chart asks), a band
/// and a line per series, and the legend. A panel with no finite point is left empty.
fn draw_panel(area: &Area<'_>, chart: &Chart, panel: &Panel) -> Result<(), String> {
    let Some((x0, x1, mut y0, mut y1)) = finite_bounds(panel) else {
        return Ok(());
    };
    if chart.zero_line {
        y0 = y0.min(0.0);
        y1 = y1.max(0.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = (x0 / 1.15, x1 * 1.15);
    let mut c = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(debug)?;
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&|v| tick(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(debug)?;
    if chart.zero_line {
        c.draw_series(LineSeries::new(
            [(x0, 0.0), (x1, 0.0)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(debug)?;
    }
    for (i, s) in panel.series.iter().enumerate() {
        draw_series(&mut c, s, color(i))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(debug)?;
    Ok(())
}

/// One series: its interval band (where at least two points have finite bounds), the mean line
/// with its legend entry, and a dot per point. Points off the log axis or with a non-finite mean
/// are left out.
fn draw_series(c: &mut Axes<'_, '_>, s: &Series, col: RGBColor) -> Result<(), String> {
    let pts: Vec<&Point> = s
        .points
        .iter()
        .filter(|p| p.x.is_finite() && p.x > 0.0 && p.mean.is_finite())
        .collect();
    let bounded = |p: &&&Point| p.lo.is_finite() && p.hi.is_finite();
    let band: Vec<(f64, f64)> = pts
        .iter()
        .filter(bounded)
        .map(|p| (p.x, p.lo))
        .chain(pts.iter().rev().filter(bounded).map(|p| (p.x, p.hi)))
        .collect();
    if band.len() >= 4 {
        c.draw_series(std::iter::once(Polygon::new(band, col.mix(0.18))))
            .map_err(debug)?;
    }
    c.draw_series(LineSeries::new(
        pts.iter().map(|p| (p.x, p.mean)),
        col.stroke_width(2),
    ))
    .map_err(debug)?
    .label(s.label.as_str())
    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], col.stroke_width(2)));
    c.draw_series(
        pts.iter()
            .map(|p| Circle::new((p.x, p.mean), 2, col.filled())),
    )
    .map_err(debug)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(zero: bool) -> Chart {
        let pts = |off: f64| {
            (0..6)
                .map(|r| {
                    let x = 100.0 * 0.8f64.powi(r);
                    Point {
                        x,
                        mean: off + r as f64,
                        lo: off + r as f64 - 0.5,
                        hi: off + r as f64 + 0.5,
                    }
                })
                .collect()
        };
        Chart {
            title: "t".into(),
            x_label: "remaining weights % (log)".into(),
            y_label: "acc %".into(),
            panels: vec![
                Panel {
                    title: "relu1".into(),
                    series: vec![
                        Series {
                            label: "AP off".into(),
                            points: pts(0.0),
                        },
                        Series {
                            label: "AP on".into(),
                            points: pts(1.0),
                        },
                    ],
                },
                Panel {
                    title: "global".into(),
                    series: vec![Series {
                        label: "AP off".into(),
                        points: pts(-3.0),
                    }],
                },
            ],
            columns: 2,
            zero_line: zero,
            panel_size: (400, 300),
        }
    }

    #[test]
    fn renders_self_contained_svg() {
        let svg = render_svg(&chart(true)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for s in [
            "AP off",
            "AP on",
            "relu1",
            "global",
            "remaining weights % (log)",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        // No external resources (fonts, images, scripts).
        for bad in ["href", "<image", "<script", "url(", "@import"] {
            assert!(!svg.contains(bad), "{bad}");
        }
        // Bands are drawn as polygons, one per series.
        assert_eq!(svg.matches("<polygon").count(), 3);
    }

    #[test]
    fn empty_chart_is_an_error() {
        let mut c = chart(false);
        c.panels.clear();
        assert!(render_svg(&c).is_err());
    }
}
