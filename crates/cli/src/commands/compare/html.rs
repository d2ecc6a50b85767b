//! `compare.html`: the report's table and a strip of frames per setting, in one file that needs
//! nothing else to open (the frames are PNG data URIs).

use std::fmt::Write as _;

use vdit_pipeline::video::VideoFrames;

use super::pareto::encode_png;

/// Frames shown per setting, evenly spaced from the first to the last.
pub const STRIP_FRAMES: usize = 6;
/// Frames wider than this are shrunk by a whole factor (box filter) to keep the page small.
const MAX_THUMB_WIDTH: u32 = 192;

/// One setting's row of frames on the page.
pub struct FrameStrip {
    pub label: String,
    /// Which frames (indices into the video).
    pub indices: Vec<usize>,
    /// Each frame as a `data:image/png;base64,...` URI.
    pub images: Vec<String>,
}

/// `count` frame indices evenly spaced over `frames` frames, the first and the last included.
pub fn strip_indices(frames: usize, count: usize) -> Vec<usize> {
    match (frames, count) {
        (0, _) | (_, 0) => Vec::new(),
        (1, _) | (_, 1) => vec![0],
        _ => {
            let mut indices: Vec<usize> = (0..count)
                .map(|i| ((i * (frames - 1)) as f64 / (count - 1) as f64).round() as usize)
                .collect();
            indices.dedup();
            indices
        }
    }
}

impl FrameStrip {
    /// [`STRIP_FRAMES`] frames of `video`, shrunk and encoded.
    pub fn new(label: &str, video: &VideoFrames) -> Result<Self, String> {
        let indices = strip_indices(video.frames.len(), STRIP_FRAMES);
        let factor = video.width.div_ceil(MAX_THUMB_WIDTH).max(1);
        let images = indices
            .iter()
            .map(|&i| {
                let (w, h, rgb) = shrink(video.width, video.height, &video.frames[i], factor);
                Ok(format!(
                    "data:image/png;base64,{}",
                    base64(&encode_png(w, h, &rgb)?)
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            label: label.to_string(),
            indices,
            images,
        })
    }
}

/// `rgb` (`width`×`height` RGB24) averaged over `factor`×`factor` boxes (edges: partial boxes).
fn shrink(width: u32, height: u32, rgb: &[u8], factor: u32) -> (u32, u32, Vec<u8>) {
    if factor <= 1 {
        return (width, height, rgb.to_vec());
    }
    let (w, h) = (width.div_ceil(factor), height.div_ceil(factor));
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for oy in 0..h {
        for ox in 0..w {
            let mut sum = [0u32; 3];
            let mut n = 0;
            for y in oy * factor..((oy + 1) * factor).min(height) {
                for x in ox * factor..((ox + 1) * factor).min(width) {
                    let i = 3 * (y * width + x) as usize;
                    for c in 0..3 {
                        sum[c] += rgb[i + c] as u32;
                    }
                    n += 1;
                }
            }
            out.extend(sum.map(|s| ((s + n / 2) / n) as u8));
        }
    }
    (w, h, out)
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page: `title`, the paragraphs of `intro`, a table (`header` cells, then `rows`, all plain
/// text, escaped here) and one strip of frames per setting.
pub fn page(
    title: &str,
    intro: &[String],
    header: &[&str],
    rows: &[Vec<String>],
    strips: &[FrameStrip],
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>\nbody {{ font-family: sans-serif; margin: 2em; }}\n\
         table {{ border-collapse: collapse; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}\n\
         th:first-child, td:first-child {{ text-align: left; }}\n\
         .strip {{ display: flex; gap: 4px; align-items: flex-start; }}\n\
         .strip figure {{ margin: 0; font-size: 0.8em; text-align: center; }}\n\
         img {{ min-width: 128px; height: auto; image-rendering: pixelated; }}\n</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
    for paragraph in intro {
        let _ = writeln!(html, "<p>{}</p>", escape(paragraph));
    }
    html.push_str("<table>\n<tr>");
    for cell in header {
        let _ = write!(html, "<th>{}</th>", escape(cell));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n<h2>Frames</h2>\n");
    for strip in strips {
        let _ = writeln!(
            html,
            "<h3>{}</h3>\n<div class=\"strip\">",
            escape(&strip.label)
        );
        for (index, image) in strip.indices.iter().zip(&strip.images) {
            let _ = writeln!(
                html,
                "<figure><img src=\"{image}\" alt=\"{} frame {index}\"><figcaption>frame {index}</figcaption></figure>",
                escape(&strip.label)
            );
        }
        html.push_str("</div>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn strips_span_the_video() {
        assert_eq!(strip_indices(17, 6), [0, 3, 6, 10, 13, 16]);
        assert_eq!(strip_indices(3, 6), [0, 1, 2]);
        assert_eq!(strip_indices(1, 6), [0]);
        assert!(strip_indices(0, 6).is_empty());
    }

    #[test]
    fn shrinking_averages_boxes() {
        // 3×1 pixels shrunk by 2: the first two averaged, the third alone.
        let rgb = [0, 0, 0, 100, 100, 100, 50, 60, 70];
        assert_eq!(shrink(3, 1, &rgb, 2), (2, 1, vec![50, 50, 50, 50, 60, 70]));
    }

    #[test]
    fn text_is_escaped() {
        let html = page("t", &[], &["a<b"], &[vec!["\"x\" & y".into()]], &[]);
        assert!(html.contains("a&lt;b") && html.contains("&quot;x&quot; &amp; y"));
    }
}
