//! `pareto.png`: speed-up (x) against PSNR (y) of each setting against the baseline, drawn
//! with plotters onto an RGB canvas of our own and encoded as PNG.
//!
//! plotters' bitmap backend and its font rasterisers are not among this workspace's
//! dependencies, and the machines vdit runs on need not have any font installed. So the canvas
//! implements plotters' `DrawingBackend` itself (pixels with alpha blending; lines, circles and
//! the mesh come from plotters' pixel rasteriser) and draws text from a glyph table compiled into
//! the binary (`glyphs.bin`, made by `scripts/fonts/rasterize_glyphs.py` from DejaVu Sans Mono;
//! licence in `GLYPHS-LICENSE.txt`).

use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// One setting on the plot.
#[derive(Debug, Clone)]
pub struct ParetoPoint {
    pub label: String,
    /// Baseline median denoise time / the setting's.
    pub speedup: f64,
    pub psnr_db: f64,
}

/// Width and height of the plot, pixels.
const SIZE: (u32, u32) = (960, 640);

/// The characters of `glyphs.bin`, in order (printable ASCII, then a few the labels use).
const GLYPH_CHARS: &str = concat!(
    " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`",
    "abcdefghijklmnopqrstuvwxyz{|}~×—∞"
);
/// One glyph's cell, pixels: 8-bit coverage, row by row.
const GLYPH_W: usize = 12;
const GLYPH_H: usize = 24;
/// The font size (plotters' text size, pixels) the cells were rendered at.
const GLYPH_FONT_SIZE: f64 = 20.0;
static GLYPHS: &[u8] = include_bytes!("glyphs.bin");

/// The coverage cell of `c` (`?` for a character the table lacks).
fn glyph(c: char) -> &'static [u8] {
    let index = GLYPH_CHARS
        .chars()
        .position(|g| g == c)
        .or_else(|| GLYPH_CHARS.chars().position(|g| g == '?'))
        .expect("? is in the table");
    let cell = GLYPH_W * GLYPH_H;
    &GLYPHS[index * cell..(index + 1) * cell]
}

/// An RGB24 canvas plotters draws on.
struct Canvas<'a> {
    width: u32,
    height: u32,
    /// `[height, width, 3]` RGB.
    rgb: &'a mut [u8],
}

/// The canvas never fails; plotters wants an error type anyway.
#[derive(Debug)]
struct CanvasError;

impl std::fmt::Display for CanvasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("canvas error")
    }
}

impl std::error::Error for CanvasError {}

/// Pixel size (width of one character, height of a line) of text at `font_size`.
fn text_cell(font_size: f64) -> (f64, f64) {
    let scale = font_size / GLYPH_FONT_SIZE;
    (GLYPH_W as f64 * scale, GLYPH_H as f64 * scale)
}

impl Canvas<'_> {
    fn blend(&mut self, (x, y): BackendCoord, color: BackendColor, coverage: f64) {
        if x < 0 || y < 0 || x >= self.width as i32 || y >= self.height as i32 {
            return;
        }
        let alpha = (color.alpha * coverage).clamp(0.0, 1.0);
        if alpha <= 0.0 {
            return;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        let (r, g, b) = color.rgb;
        for (channel, value) in self.rgb[i..i + 3].iter_mut().zip([r, g, b]) {
            *channel = (*channel as f64 * (1.0 - alpha) + value as f64 * alpha).round() as u8;
        }
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = CanvasError;

    fn get_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<CanvasError>> {
        Ok(())
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<CanvasError>> {
        Ok(())
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<CanvasError>> {
        self.blend(point, color, 1.0);
        Ok(())
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<CanvasError>> {
        let (w, h) = text_cell(style.size());
        Ok((
            (w * text.chars().count() as f64).ceil() as u32,
            h.ceil() as u32,
        ))
    }

    /// Each glyph cell scaled to the text size by averaging the cell's pixels under each output
    /// pixel, placed at the anchor and turned by the style's rotation.
    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<CanvasError>> {
        let color = style.color();
        let (char_w, line_h) = text_cell(style.size());
        let scale = char_w / GLYPH_W as f64;
        let (width, height) = self.estimate_text_size(text, style)?;
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -(width as i32) / 2,
            HPos::Right => -(width as i32),
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -(height as i32) / 2,
            VPos::Bottom => -(height as i32),
        };
        let transform = style.transform();
        let out_w = char_w.ceil() as usize;
        let out_h = line_h.ceil() as usize;
        for (n, c) in text.chars().enumerate() {
            let cell = glyph(c);
            let left = (n as f64 * char_w).round() as i32;
            for oy in 0..out_h {
                let (sy0, sy1) = source_span(oy, scale, GLYPH_H);
                for ox in 0..out_w {
                    let (sx0, sx1) = source_span(ox, scale, GLYPH_W);
                    let mut sum = 0u32;
                    let mut count = 0u32;
                    for sy in sy0..sy1 {
                        for sx in sx0..sx1 {
                            sum += cell[sy * GLYPH_W + sx] as u32;
                            count += 1;
                        }
                    }
                    if sum == 0 {
                        continue;
                    }
                    let coverage = sum as f64 / (255.0 * count as f64);
                    let (x, y) = transform.transform(left + ox as i32 + dx, oy as i32 + dy);
                    self.blend((pos.0 + x, pos.1 + y), color, coverage);
                }
            }
        }
        Ok(())
    }
}

/// The source pixels `[start, end)` under output pixel `out` of a cell `len` long scaled by
/// `scale` (at least one pixel, inside the cell).
fn source_span(out: usize, scale: f64, len: usize) -> (usize, usize) {
    let start = ((out as f64 / scale).floor() as usize).min(len - 1);
    let end = (((out + 1) as f64 / scale).ceil() as usize).clamp(start + 1, len);
    (start, end)
}

/// The points no other point beats on both axes, by increasing speed-up.
pub fn pareto_front(points: &[ParetoPoint]) -> Vec<usize> {
    let dominated = |i: usize| {
        points.iter().enumerate().any(|(j, q)| {
            let p = &points[i];
            j != i
                && q.speedup >= p.speedup
                && q.psnr_db >= p.psnr_db
                && (q.speedup > p.speedup || q.psnr_db > p.psnr_db)
        })
    };
    let mut front: Vec<usize> = (0..points.len()).filter(|&i| !dominated(i)).collect();
    front.sort_by(|&a, &b| points[a].speedup.total_cmp(&points[b].speedup));
    front
}

/// The plot as PNG bytes: one labelled dot per point, the Pareto front joined by a line, a
/// dashed line at speed-up 1 (the baseline's time), and `title` and `footnote` (what was not
/// plotted) as text.
pub fn pareto_png(points: &[ParetoPoint], title: &str, footnote: &str) -> Result<Vec<u8>, String> {
    let (width, height) = SIZE;
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    draw(
        Canvas {
            width,
            height,
            rgb: &mut rgb,
        },
        points,
        title,
        footnote,
    )
    .map_err(|e| format!("pareto.png: {e}"))?;
    encode_png(width, height, &rgb)
}

fn draw(
    canvas: Canvas<'_>,
    points: &[ParetoPoint],
    title: &str,
    footnote: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas.into_drawing_area();
    root.fill(&WHITE)?;
    let lines = wrap(footnote, FOOTNOTE_CHARS);
    let (plot, foot) = root.split_vertically(SIZE.1 - 8 - 20 * lines.len() as u32);
    for (i, line) in lines.iter().enumerate() {
        foot.draw(&Text::new(
            line.clone(),
            (12, 2 + 20 * i as i32),
            ("sans-serif", 15).into_font().color(&BLACK.mix(0.7)),
        ))?;
    }
    let (x_range, y_range) = ranges(points);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    chart
        .configure_mesh()
        .x_desc("speed-up vs baseline (×, denoise time)")
        .y_desc("PSNR vs baseline (dB)")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(BLACK.mix(0.06))
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;
    if x_range.start <= 1.0 && 1.0 <= x_range.end {
        chart.draw_series(DashedLineSeries::new(
            [(1.0, y_range.start), (1.0, y_range.end)],
            6,
            4,
            BLACK.mix(0.4).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            "baseline time",
            (1.0, y_range.end),
            ("sans-serif", 14).into_font().color(&BLACK.mix(0.6)),
        )))?;
    }
    let front = pareto_front(points);
    let front_colour = RGBColor(200, 60, 40);
    chart.draw_series(LineSeries::new(
        front
            .iter()
            .map(|&i| (points[i].speedup, points[i].psnr_db)),
        front_colour.stroke_width(2),
    ))?;
    let right_edge = chart.plotting_area().get_pixel_range().0.end;
    for (i, p) in points.iter().enumerate() {
        let colour = if front.contains(&i) {
            front_colour
        } else {
            RGBColor(40, 80, 180)
        };
        // A label that would run past the plot's right edge goes to the left of its dot.
        let label_w = (text_cell(LABEL_SIZE).0 * p.label.chars().count() as f64).ceil() as i32;
        let (x, _) = chart.backend_coord(&(p.speedup, p.psnr_db));
        let dx = if x + 8 + label_w > right_edge {
            -8 - label_w
        } else {
            8
        };
        chart.draw_series(std::iter::once(
            EmptyElement::at((p.speedup, p.psnr_db))
                + Circle::new((0, 0), 5, colour.filled())
                + Text::new(p.label.clone(), (dx, -18), ("sans-serif", LABEL_SIZE)),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Text size of the points' labels.
const LABEL_SIZE: f64 = 14.0;

/// Characters of one footnote line (15 px text across the plot's width).
const FOOTNOTE_CHARS: usize = 100;

/// `text` broken at spaces into lines of at most `width` characters (a longer word alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Axis ranges around the points, with a margin; speed-up 1 always inside.
fn ranges(points: &[ParetoPoint]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let fold = |f: fn(&ParetoPoint) -> f64| {
        points
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x_lo, x_hi) = fold(|p| p.speedup);
    let (y_lo, y_hi) = fold(|p| p.psnr_db);
    if points.is_empty() {
        return (0.5..2.0, 0.0..60.0);
    }
    let (x_lo, x_hi) = (x_lo.min(1.0), x_hi.max(1.0));
    let x_pad = ((x_hi - x_lo) * 0.12).max(0.05);
    let y_pad = ((y_hi - y_lo) * 0.12).max(1.0);
    // Room on the right for the last point's label.
    (
        (x_lo - x_pad)..(x_hi + 2.5 * x_pad),
        (y_lo - y_pad)..(y_hi + y_pad),
    )
}

/// RGB24 pixels as PNG bytes.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let png_err = |e: png::EncodingError| format!("png: {e}");
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(label: &str, speedup: f64, psnr_db: f64) -> ParetoPoint {
        ParetoPoint {
            label: label.into(),
            speedup,
            psnr_db,
        }
    }

    #[test]
    fn the_front_keeps_only_undominated_points() {
        let points = [
            point("a", 1.2, 40.0),
            point("b", 1.5, 35.0),
            point("c", 1.4, 30.0), // beaten by b on both
            point("d", 2.0, 31.0),
        ];
        assert_eq!(pareto_front(&points), [0, 1, 3]);
    }

    #[test]
    fn footnotes_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefg h", 3), ["abcdefg", "h"]);
    }

    #[test]
    fn the_glyph_table_matches_its_character_list() {
        assert_eq!(
            GLYPHS.len(),
            GLYPH_CHARS.chars().count() * GLYPH_W * GLYPH_H
        );
        // A space has no ink; a letter has some.
        assert!(glyph(' ').iter().all(|&v| v == 0));
        assert!(glyph('A').iter().any(|&v| v > 200));
        assert_eq!(glyph('€'), glyph('?'));
    }

    #[test]
    fn the_plot_is_a_png_with_ink_on_it() {
        let points = [
            point("rainfusion 0.8", 1.25, 38.5),
            point("magcache 0.12", 2.1, 44.3),
        ];
        let png = pareto_png(&points, "title", "not plotted: none").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), SIZE);
        let dark = pixels
            .chunks(3)
            .filter(|p| p.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 1000, "{dark} dark pixels");
        // The front's colour is there (the line and the dots).
        assert!(pixels.chunks(3).any(|p| p == [200, 60, 40]));
    }
}
