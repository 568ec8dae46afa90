//! Training metrics and the loss graph.
//!
//! A [`LossCurve`] is what every provider reports, whether it comes from
//! OpenAI's metrics events, Bedrock's `step_wise_training_metrics.csv` or our
//! own trainer. With the `plot` feature it renders itself to SVG and PNG: the
//! loss graph shown in a model's summary.

use serde::{Deserialize, Serialize};

/// The metrics of one optimizer step. Everything but the step is optional
/// because providers report different subsets.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossPoint {
    /// The optimizer step (1-based, as providers number them).
    pub step: u64,
    /// The (fractional) epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Training loss at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation loss, at the steps where it was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Training token accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_accuracy: Option<f64>,
    /// Validation token accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_token_accuracy: Option<f64>,
    /// The learning rate used at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
}

impl LossPoint {
    /// A point with only a training loss.
    pub fn train(step: u64, loss: f64) -> Self {
        Self { step, train_loss: Some(loss), ..Self::default() }
    }

    /// Fills this point's missing fields from `other` (same step).
    fn fill_from(&mut self, other: &LossPoint) {
        fn fill(a: &mut Option<f64>, b: Option<f64>) {
            if b.is_some() {
                *a = b;
            }
        }
        fill(&mut self.epoch, other.epoch);
        fill(&mut self.train_loss, other.train_loss);
        fill(&mut self.validation_loss, other.validation_loss);
        fill(&mut self.token_accuracy, other.token_accuracy);
        fill(&mut self.validation_token_accuracy, other.validation_token_accuracy);
        fill(&mut self.learning_rate, other.learning_rate);
    }
}

/// Loss over training steps, sorted by step, one point per step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LossCurve {
    points: Vec<LossPoint>,
}

impl LossCurve {
    /// An empty curve.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a point; a point for a step already present updates that step's
    /// fields (providers report training and validation loss separately).
    pub fn upsert(&mut self, point: LossPoint) {
        match self.points.binary_search_by_key(&point.step, |p| p.step) {
            Ok(i) => self.points[i].fill_from(&point),
            Err(i) => self.points.insert(i, point),
        }
    }

    /// The points, by step.
    pub fn points(&self) -> &[LossPoint] {
        &self.points
    }

    /// Whether there is no point.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The number of steps recorded.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether any validation loss was recorded.
    pub fn has_validation(&self) -> bool {
        self.points.iter().any(|p| p.validation_loss.is_some())
    }

    /// `(step, train loss)` pairs.
    pub fn train_series(&self) -> Vec<(u64, f64)> {
        self.points.iter().filter_map(|p| Some((p.step, p.train_loss?))).collect()
    }

    /// `(step, validation loss)` pairs.
    pub fn validation_series(&self) -> Vec<(u64, f64)> {
        self.points.iter().filter_map(|p| Some((p.step, p.validation_loss?))).collect()
    }

    /// The last training loss.
    pub fn last_train_loss(&self) -> Option<f64> {
        self.points.iter().rev().find_map(|p| p.train_loss)
    }

    /// The step with the lowest validation loss, and that loss.
    pub fn best_validation(&self) -> Option<(u64, f64)> {
        self.validation_series().into_iter().min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl FromIterator<LossPoint> for LossCurve {
    fn from_iter<I: IntoIterator<Item = LossPoint>>(iter: I) -> Self {
        let mut curve = Self::new();
        for p in iter {
            curve.upsert(p);
        }
        curve
    }
}

#[cfg(feature = "plot")]
pub use plot::PlotOptions;

#[cfg(feature = "plot")]
mod plot {
    use std::path::Path;
    use std::sync::OnceLock;

    use plotters::prelude::*;

    use super::LossCurve;
    use crate::error::{Error, Result};

    /// How a loss graph is drawn.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PlotOptions {
        /// The title above the plot.
        pub title: String,
        /// Width in pixels.
        pub width: u32,
        /// Height in pixels.
        pub height: u32,
    }

    impl Default for PlotOptions {
        fn default() -> Self {
            Self { title: "Loss".into(), width: 800, height: 480 }
        }
    }

    impl PlotOptions {
        /// Default size with the given title.
        pub fn titled(title: impl Into<String>) -> Self {
            Self { title: title.into(), ..Self::default() }
        }
    }

    /// Plotters' ab_glyph text needs a registered font; we embed DejaVu Sans
    /// so rendering never depends on the fonts a machine happens to have.
    fn ensure_font() -> Result<()> {
        static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
        REGISTERED
            .get_or_init(|| {
                plotters::style::register_font(
                    "sans-serif",
                    FontStyle::Normal,
                    dejavu::sans::regular(),
                )
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_owned())
            })
            .clone()
            .map_err(|message| Error::Other { message, source: None })
    }

    fn plot_error<E: std::error::Error + Send + Sync + 'static>(
        e: DrawingAreaErrorKind<E>,
    ) -> Error {
        Error::Other { message: format!("drawing the loss graph failed: {e}"), source: None }
    }

    const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
    const VALID_COLOR: RGBColor = RGBColor(255, 127, 14);

    fn draw<DB: DrawingBackend>(
        curve: &LossCurve,
        opts: &PlotOptions,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        let train = curve.train_series();
        let valid = curve.validation_series();
        let all = train.iter().chain(valid.iter()).filter(|(_, l)| l.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (u64::MAX, 0u64, f64::INFINITY, f64::NEG_INFINITY);
        for &(s, l) in all {
            x0 = x0.min(s);
            x1 = x1.max(s);
            y0 = y0.min(l);
            y1 = y1.max(l);
        }
        if x1 <= x0 {
            x1 = x0 + 1;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let (y0, y1) = ((y0 - pad).max(0.0_f64.min(y0)), y1 + pad);

        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&opts.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style(("sans-serif", 13))
            .draw()?;
        let finite =
            |s: &[(u64, f64)]| s.iter().copied().filter(|(_, l)| l.is_finite()).collect::<Vec<_>>();
        chart
            .draw_series(LineSeries::new(finite(&train), TRAIN_COLOR.stroke_width(2)))?
            .label("training loss")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], TRAIN_COLOR.stroke_width(2))
            });
        if !valid.is_empty() {
            let valid = finite(&valid);
            chart
                .draw_series(LineSeries::new(valid.clone(), VALID_COLOR.stroke_width(2)))?
                .label("validation loss")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], VALID_COLOR.stroke_width(2))
                });
            chart
                .draw_series(valid.into_iter().map(|p| Circle::new(p, 3, VALID_COLOR.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()
    }

    impl LossCurve {
        fn check_plottable(&self) -> Result<()> {
            if self
                .train_series()
                .iter()
                .chain(self.validation_series().iter())
                .any(|(_, l)| l.is_finite())
            {
                Ok(())
            } else {
                Err(Error::invalid("the loss curve has no finite loss to plot"))
            }
        }

        /// The loss graph as an SVG document: training loss, and validation
        /// loss when there is any.
        pub fn render_svg(&self, opts: &PlotOptions) -> Result<String> {
            self.check_plottable()?;
            ensure_font()?;
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (opts.width, opts.height))
                    .into_drawing_area();
                draw(self, opts, root).map_err(plot_error)?;
            }
            Ok(svg)
        }

        /// The loss graph as a PNG image.
        pub fn render_png(&self, opts: &PlotOptions) -> Result<Vec<u8>> {
            self.check_plottable()?;
            ensure_font()?;
            let (w, h) = (opts.width, opts.height);
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                draw(self, opts, root).map_err(plot_error)?;
            }
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, w, h);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let encode =
                |e: png::EncodingError| Error::other("encoding the loss graph as PNG failed", e);
            let mut writer = encoder.write_header().map_err(encode)?;
            writer.write_image_data(&rgb).map_err(encode)?;
            writer.finish().map_err(encode)?;
            Ok(out)
        }

        /// Writes the loss graph to `path`, as SVG or PNG by its extension.
        /// The file is written whole to a temporary name first and then
        /// renamed, so a reader never sees half a graph.
        pub fn save_plot(&self, path: impl AsRef<Path>, opts: &PlotOptions) -> Result<()> {
            let path = path.as_ref();
            let bytes = match path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("svg") => self.render_svg(opts)?.into_bytes(),
                Some("png") => self.render_png(opts)?,
                _ => {
                    return Err(Error::invalid_at(
                        crate::Location::file(path.display().to_string()),
                        "a loss graph is saved as .svg or .png",
                    ));
                }
            };
            let tmp = path.with_extension(format!(
                "{}.tmp",
                path.extension().and_then(|e| e.to_str()).unwrap_or_default()
            ));
            std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve() -> LossCurve {
        let mut c: LossCurve = (1..=20).map(|s| LossPoint::train(s, 2.0 / s as f64)).collect();
        for s in [5, 10, 15, 20] {
            c.upsert(LossPoint {
                step: s,
                validation_loss: Some(2.5 / s as f64),
                ..LossPoint::default()
            });
        }
        c
    }

    #[test]
    fn upsert_merges_by_step() {
        let c = curve();
        assert_eq!(c.len(), 20);
        assert!(c.has_validation());
        let p10 = c.points()[9];
        assert_eq!(p10.step, 10);
        assert_eq!(p10.train_loss, Some(0.2));
        assert_eq!(p10.validation_loss, Some(0.25));
        assert_eq!(c.best_validation(), Some((20, 0.125)));
        assert_eq!(c.last_train_loss(), Some(0.1));
        // Out-of-order insertion keeps the steps sorted.
        let c: LossCurve =
            [LossPoint::train(3, 1.0), LossPoint::train(1, 3.0), LossPoint::train(2, 2.0)]
                .into_iter()
                .collect();
        assert_eq!(c.points().iter().map(|p| p.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn serde_round_trip() {
        let c = curve();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<LossCurve>(&json).unwrap(), c);
    }

    #[cfg(feature = "plot")]
    #[test]
    fn renders_svg_with_both_series_and_labels() {
        let svg = curve().render_svg(&PlotOptions::titled("my model")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in ["my model", "training loss", "validation loss", "step", "loss"] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Each series is drawn once as a line and once as its legend sample.
        assert_eq!(svg.matches(r##"stroke="#1F77B4""##).count(), 2, "training series");
        assert_eq!(svg.matches(r##"stroke="#FF7F0E""##).count(), 2, "validation series");
        let train_only: LossCurve = (1..=5).map(|s| LossPoint::train(s, 1.0)).collect();
        let svg = train_only.render_svg(&PlotOptions::default()).unwrap();
        assert!(!svg.contains("validation loss"));
        assert!(!svg.contains(r##"stroke="#FF7F0E""##));
    }

    #[cfg(feature = "plot")]
    #[test]
    fn renders_png_with_ink() {
        let opts = PlotOptions { width: 320, height: 200, ..PlotOptions::default() };
        let png_bytes = curve().render_png(&opts).unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (320, 200));
        let px = |i: usize| (buf[i * 3], buf[i * 3 + 1], buf[i * 3 + 2]);
        let n = (info.width * info.height) as usize;
        let orange = (0..n).filter(|&i| px(i) == (255, 127, 14)).count();
        let blue = (0..n).filter(|&i| px(i) == (31, 119, 180)).count();
        let dark = (0..n)
            .filter(|&i| {
                let (r, g, b) = px(i);
                r < 60 && g < 60 && b < 60
            })
            .count();
        assert!(orange > 50 && blue > 50, "series drawn: orange {orange}, blue {blue}");
        assert!(dark > 200, "text and axes drawn with the embedded font: {dark} dark pixels");
    }

    #[cfg(feature = "plot")]
    #[test]
    fn empty_or_nan_curves_are_refused_and_save_picks_format() {
        assert!(LossCurve::new().render_svg(&PlotOptions::default()).is_err());
        let nan: LossCurve = [LossPoint::train(1, f64::NAN)].into_iter().collect();
        assert!(nan.render_png(&PlotOptions::default()).is_err());
        let dir = tempfile::tempdir().unwrap();
        curve().save_plot(dir.path().join("loss.svg"), &PlotOptions::default()).unwrap();
        curve().save_plot(dir.path().join("loss.png"), &PlotOptions::default()).unwrap();
        assert!(curve().save_plot(dir.path().join("loss.gif"), &PlotOptions::default()).is_err());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["loss.png", "loss.svg"]);
    }
}
