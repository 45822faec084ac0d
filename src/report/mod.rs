//! Figures for `mnemo report`: loss curves (one panel per stage) and accuracy-matrix
//! heatmaps, drawn with plotters into PNG or SVG (chosen by the file extension) and written
//! atomically. Text uses an embedded DejaVu Sans, so no system fonts are needed.

use crate::checkpoint::AtomicFile;
use crate::error::{MnemoError, Result};
use crate::metrics::continual::AccuracyMatrix;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

mod curves;
pub use curves::{stage_curves, StageCurves};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONTS: Once = Once::new();

fn register_fonts() {
    FONTS.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bytes are a valid TrueType font shipped with the crate.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, an x-axis label and its curves.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(MnemoError::InvalidParameter {
            detector: "report".into(),
            parameter: "output".into(),
            reason: format!(
                "{}: the figure's name must end in .png or .svg",
                path.display()
            ),
        }),
    }
}

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> MnemoError + '_ {
    move |e| {
        MnemoError::io(
            path,
            std::io::Error::other(format!("drawing the figure: {e:?}")),
        )
    }
}

/// A figure that can draw itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Renders `fig` onto a `w`×`h` canvas and writes it to `path` (PNG or SVG) atomically.
fn render(path: &Path, w: u32, h: u32, fig: &impl Figure) -> Result<()> {
    register_fonts();
    let bytes = match format_of(path)? {
        Format::Png => {
            let mut buf = vec![255u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                fig.draw(&root, path)?;
                root.present().map_err(draw_err(path))?;
            }
            let mut png = Vec::new();
            image::ImageEncoder::write_image(
                image::codecs::png::PngEncoder::new(&mut png),
                &buf,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(draw_err(path))?;
            png
        }
        Format::Svg => {
            let mut s = String::new();
            {
                let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
                fig.draw(&root, path)?;
                root.present().map_err(draw_err(path))?;
            }
            s.into_bytes()
        }
    };
    let mut f = AtomicFile::create(path)?;
    f.write_all(&bytes)?;
    f.commit()
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols), cols)
}

fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    panels: &[Panel],
    path: &Path,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err(path))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(draw_err(path))?;
    let (rows, cols) = grid(panels.len());
    // One y range for every panel, so stages compare at a glance.
    let ys: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.curves.iter().flat_map(|c| c.points.iter().map(|q| q.1)))
        .filter(|&y| plottable(y))
        .collect();
    let (ymin, ymax) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let (ymin, ymax) = if ymin.is_finite() {
        let pad = ((ymax - ymin) * 0.05).max(1e-6);
        ((ymin - pad).min(0.0f64.max(ymin - pad)), ymax + pad)
    } else {
        (0.0, 1.0)
    };
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let xs: Vec<f64> = panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|q| q.0))
            .filter(|&x| plottable(x))
            .collect();
        let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let xmax = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (xmin, xmax) = if xmin.is_finite() {
            if xmax > xmin {
                (xmin, xmax)
            } else {
                (xmin - 0.5, xmax + 0.5)
            }
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(xmin..xmax, ymin..ymax)
            .map_err(draw_err(path))?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{}", x.round() as i64)
                } else {
                    format!("{x:.1}")
                }
            })
            .y_desc(panel.y_label.as_str())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err(path))?;
        for (k, c) in panel.curves.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .copied()
                .filter(|p| plottable(p.0) && plottable(p.1))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(draw_err(path))?
                .label(c.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            if pts.len() <= 30 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw_err(path))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err(path))?;
    }
    Ok(())
}

struct PanelsFigure<'a>(&'a str, &'a [Panel]);

impl Figure for PanelsFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_panels(root, self.0, self.1, path)
    }
}

/// The values an axis is fitted to: finite and within ±10^15 (points beyond are drawn
/// outside the plot area, clipped), so ±1e308 neither overflows the range nor makes the
/// tick search run for ever.
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= 1e15
}

/// Line plots, one panel per entry of `panels`, in a grid.
pub fn plot_panels(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let (rows, cols) = grid(panels.len());
    let (w, h) = (420 * cols as u32 + 40, 320 * rows as u32 + 60);
    render(path, w, h, &PanelsFigure(title, panels))
}

/// Viridis-like ramp from dark blue (0) to yellow (1).
fn ramp(v: f64) -> RGBColor {
    const STOPS: [(f64, (f64, f64, f64)); 5] = [
        (0.0, (68.0, 1.0, 84.0)),
        (0.25, (59.0, 82.0, 139.0)),
        (0.5, (33.0, 145.0, 140.0)),
        (0.75, (94.0, 201.0, 98.0)),
        (1.0, (253.0, 231.0, 37.0)),
    ];
    let v = v.clamp(0.0, 1.0);
    let k = STOPS.iter().position(|s| s.0 >= v).unwrap_or(4).max(1);
    let (a, b) = (STOPS[k - 1], STOPS[k]);
    let t = (v - a.0) / (b.0 - a.0);
    let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
    RGBColor(
        mix(a.1 .0, b.1 .0),
        mix(a.1 .1, b.1 .1),
        mix(a.1 .2, b.1 .2),
    )
}

fn draw_matrices<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    mats: &[(String, AccuracyMatrix)],
    path: &Path,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err(path))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(draw_err(path))?;
    let (rows, cols) = grid(mats.len());
    for (area, (name, m)) in root.split_evenly((rows, cols)).iter().zip(mats) {
        let t = m.tasks;
        let stages: Vec<usize> = (0..m.r.len())
            .filter(|&i| m.r[i].iter().any(|v| v.is_some()))
            .collect();
        let n = stages.len();
        // Cells centred on integers: task j+1 at x = j, the first recorded stage at the top.
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..t as f64 - 0.5, -0.5..n as f64 - 0.5)
            .map_err(draw_err(path))?;
        let stage_names = stages.clone();
        let cell = |v: f64, len: usize| {
            let k = v.round();
            ((v - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < len).then_some(k as usize)
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("evaluated on task")
            .y_desc("after stage")
            .x_labels(2 * t + 1)
            .y_labels(2 * n + 1)
            .x_label_formatter(&|x| cell(*x, t).map(|j| (j + 1).to_string()).unwrap_or_default())
            .y_label_formatter(&|y| {
                cell(*y, n)
                    .map(|k| match stage_names[n - 1 - k] {
                        0 => "init".to_string(),
                        s => s.to_string(),
                    })
                    .unwrap_or_default()
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(draw_err(path))?;
        let (bx, by) = area.get_base_pixel();
        for (row, &stage) in stages.iter().enumerate() {
            let y = (n - 1 - row) as f64;
            for j in 0..t {
                let Some(v) = m.r[stage][j] else { continue };
                let x = j as f64;
                let (lo, hi) = ((x - 0.5, y - 0.5), (x + 0.5, y + 0.5));
                chart
                    .draw_series(std::iter::once(Rectangle::new([lo, hi], ramp(v).filled())))
                    .map_err(draw_err(path))?;
                let (px, py) = chart.backend_coord(&(x, y));
                let label = format!("{:.1}", 100.0 * v);
                let color = if v > 0.6 { BLACK } else { WHITE };
                let style = ("sans-serif", 14).into_font().color(&color).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                );
                area.draw(&Text::new(label, (px - bx, py - by), style))
                    .map_err(draw_err(path))?;
            }
        }
    }
    Ok(())
}

struct MatricesFigure<'a>(&'a str, &'a [(String, AccuracyMatrix)]);

impl Figure for MatricesFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_matrices(root, self.0, self.1, path)
    }
}

/// Accuracy-matrix heatmaps (values in [0, 1], labelled in percent), one panel per matrix.
pub fn plot_matrices(path: &Path, title: &str, mats: &[(String, AccuracyMatrix)]) -> Result<()> {
    let (rows, cols) = grid(mats.len());
    let (w, h) = (440 * cols as u32 + 40, 380 * rows as u32 + 60);
    render(path, w, h, &MatricesFigure(title, mats))
}

/// One confusion matrix to draw: a title and its rows (true class) of counts per predicted
/// class.
#[derive(Clone, Debug)]
pub struct ConfusionPanel {
    pub title: String,
    pub rows: Vec<Vec<u64>>,
}

/// Up to this many classes each cell shows its count.
const CONFUSION_LABELLED: usize = 30;

fn draw_confusions<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    mats: &[ConfusionPanel],
    path: &Path,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err(path))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(draw_err(path))?;
    let (rows, cols) = grid(mats.len());
    for (area, m) in root.split_evenly((rows, cols)).iter().zip(mats) {
        let k = m.rows.len();
        // Class t's row at the top, as sklearn's ConfusionMatrixDisplay: true class i at
        // y = k − 1 − i, predicted class j at x = j.
        let mut chart = ChartBuilder::on(area)
            .caption(&m.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5..k as f64 - 0.5, -0.5..k as f64 - 0.5)
            .map_err(draw_err(path))?;
        let cell = |v: f64| {
            let r = v.round();
            ((v - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < k).then_some(r as usize)
        };
        // At most ~20 tick labels per axis.
        let every = k.div_ceil(20).max(1);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .x_labels(2 * k + 1)
            .y_labels(2 * k + 1)
            .x_label_formatter(&|x| {
                cell(*x)
                    .filter(|j| j % every == 0)
                    .map(|j| j.to_string())
                    .unwrap_or_default()
            })
            .y_label_formatter(&|y| {
                cell(*y)
                    .map(|r| k - 1 - r)
                    .filter(|i| i % every == 0)
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(draw_err(path))?;
        let (bx, by) = area.get_base_pixel();
        for (i, row) in m.rows.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let y = (k - 1 - i) as f64;
            for (j, &c) in row.iter().enumerate() {
                // Colour: the share of the true class's examples (its row), so classes of
                // different sizes read alike; rows without examples stay white.
                if total == 0 {
                    continue;
                }
                let share = c as f64 / total as f64;
                let x = j as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        ramp(share).filled(),
                    )))
                    .map_err(draw_err(path))?;
                if k <= CONFUSION_LABELLED {
                    let (px, py) = chart.backend_coord(&(x, y));
                    let color = if share > 0.6 { BLACK } else { WHITE };
                    let size = if k <= 12 { 14 } else { 10 };
                    let style = ("sans-serif", size).into_font().color(&color).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        ),
                    );
                    area.draw(&Text::new(c.to_string(), (px - bx, py - by), style))
                        .map_err(draw_err(path))?;
                }
            }
        }
    }
    Ok(())
}

struct ConfusionFigure<'a>(&'a str, &'a [ConfusionPanel]);

impl Figure for ConfusionFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_confusions(root, self.0, self.1, path)
    }
}

/// Confusion-matrix heatmaps, one panel per matrix: rows the true class (class 0 at the
/// top), columns the prediction, each cell coloured by its share of the row and, up to 30
/// classes, labelled with its count.
pub fn plot_confusions(path: &Path, title: &str, mats: &[ConfusionPanel]) -> Result<()> {
    let (rows, cols) = grid(mats.len());
    let side = mats.iter().map(|m| m.rows.len()).max().unwrap_or(1);
    // Cells of at least 8 pixels (counts need ~36 up to 12 classes).
    let cell = if side <= 12 {
        40
    } else {
        16usize.max(480 / side).min(24)
    };
    let panel = (cell * side + 120).clamp(360, 2400) as u32;
    let (w, h) = (panel * cols as u32 + 40, (panel + 20) * rows as u32 + 60);
    render(path, w, h, &ConfusionFigure(title, mats))
}
