//! PNG frame sequences: `out.png` names the sequence `out_00000.png`, `out_00001.png`, ...

use std::path::{Path, PathBuf};

use super::{write_atomic, ReadVideo, Result, VideoError, VideoFrames};

/// tEXt keyword under which each frame records the sequence's frame rate.
const FPS_KEYWORD: &str = "vdit-fps";

/// Path of frame `index` of the sequence named by `path` (`dir/out.png` → `dir/out_00007.png`).
pub fn png_frame_path(path: &Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
    path.with_file_name(format!("{stem}_{index:05}.png"))
}

pub(super) fn write(path: &Path, video: &VideoFrames, fps: u32) -> Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(video.frames.len());
    for (index, rgb) in video.frames.iter().enumerate() {
        let frame_path = png_frame_path(path, index);
        let png_err = |e: png::EncodingError| VideoError::Codec(format!("png: {e}"));
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, video.width, video.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .add_text_chunk(FPS_KEYWORD.into(), fps.to_string())
            .map_err(png_err)?;
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        write_atomic(&frame_path, &bytes)?;
        written.push(frame_path);
    }
    Ok(written)
}

/// Reads `out_00000.png`, `out_00001.png`, ... until the first missing number.
pub(super) fn read(path: &Path) -> Result<ReadVideo> {
    let mut frames = Vec::new();
    let mut size = None;
    let mut fps = 0.0;
    loop {
        let frame_path = png_frame_path(path, frames.len());
        if !frame_path.is_file() {
            break;
        }
        let malformed = |reason: String| VideoError::Malformed {
            path: frame_path.clone(),
            format: "png",
            reason,
        };
        let file = std::fs::File::open(&frame_path).map_err(|source| VideoError::Io {
            path: frame_path.clone(),
            source,
        })?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|e| malformed(e.to_string()))?;
        if let Some(text) = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .find(|t| t.keyword == FPS_KEYWORD)
        {
            fps = text
                .text
                .trim()
                .parse()
                .map_err(|_| malformed(format!("bad fps '{}'", text.text)))?;
        }
        let mut buf = vec![
            0;
            reader
                .output_buffer_size()
                .ok_or_else(|| malformed("image too large".into()))?
        ];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| malformed(e.to_string()))?;
        buf.truncate(info.buffer_size());
        let rgb = match info.color_type {
            png::ColorType::Rgb => buf,
            png::ColorType::Rgba => buf
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
            png::ColorType::GrayscaleAlpha => buf.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
            other => return Err(malformed(format!("unsupported colour type {other:?}"))),
        };
        let this_size = (info.width, info.height);
        let (w0, h0) = *size.get_or_insert(this_size);
        if (w0, h0) != this_size {
            return Err(malformed(format!(
                "size {}x{} differs from frame 0's {w0}x{h0}",
                this_size.0, this_size.1
            )));
        }
        frames.push(rgb);
    }
    let (width, height) = size.ok_or_else(|| VideoError::Malformed {
        path: png_frame_path(path, 0),
        format: "png",
        reason: "no such file (the sequence is empty)".into(),
    })?;
    Ok(ReadVideo {
        video: VideoFrames::new(width, height, frames)?,
        fps,
    })
}
