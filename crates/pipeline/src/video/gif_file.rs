//! Animated GIF: a palette per frame (NeuQuant), looping forever.

use std::path::Path;

use gif::{ColorOutput, DecodeOptions, Encoder, Frame, Repeat};

use super::{ReadVideo, Result, VideoError, VideoFrames};

/// NeuQuant sampling factor: 1 is best and slowest, 30 fastest. 10 is the usual compromise.
const QUANTISER_SPEED: i32 = 10;

/// Delay of frame `i` in 1/100 s. GIF delays are whole centiseconds, so 16 fps (6.25 cs) cannot be
/// one constant; frame `i` ends at round(100 (i+1) / fps), so the clip's total duration stays exact.
fn frame_delay(i: usize, fps: u32) -> u16 {
    let end = |n: usize| (n as f64 * 100.0 / f64::from(fps)).round() as i64;
    (end(i + 1) - end(i)).clamp(1, i64::from(u16::MAX)) as u16
}

pub(super) fn encode(video: &VideoFrames, fps: u32) -> Result<Vec<u8>> {
    let (w, h) = (video.width, video.height);
    if w > u32::from(u16::MAX) || h > u32::from(u16::MAX) {
        return Err(VideoError::InvalidFrames(format!(
            "{w}x{h} is too large for GIF (65535 max)"
        )));
    }
    let gif_err = |e: gif::EncodingError| VideoError::Codec(format!("gif: {e}"));
    let mut bytes = Vec::new();
    {
        let mut encoder = Encoder::new(&mut bytes, w as u16, h as u16, &[]).map_err(gif_err)?;
        encoder.set_repeat(Repeat::Infinite).map_err(gif_err)?;
        for (i, rgb) in video.frames.iter().enumerate() {
            let mut frame = Frame::from_rgb_speed(w as u16, h as u16, rgb, QUANTISER_SPEED);
            frame.delay = frame_delay(i, fps);
            encoder.write_frame(&frame).map_err(gif_err)?;
        }
    }
    Ok(bytes)
}

pub(super) fn decode(path: &Path, bytes: &[u8]) -> Result<ReadVideo> {
    let malformed = |reason: String| VideoError::Malformed {
        path: path.to_path_buf(),
        format: "gif",
        reason,
    };
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::RGBA);
    let mut decoder = options
        .read_info(bytes)
        .map_err(|e| malformed(e.to_string()))?;
    let (w, h) = (usize::from(decoder.width()), usize::from(decoder.height()));
    // Frames may cover part of the screen; compose them onto a canvas (disposal: keep).
    let mut canvas = vec![0u8; w * h * 3];
    let mut frames = Vec::new();
    let mut centiseconds = 0u64;
    while let Some(frame) = decoder
        .read_next_frame()
        .map_err(|e| malformed(e.to_string()))?
    {
        centiseconds += u64::from(frame.delay);
        let (left, top) = (usize::from(frame.left), usize::from(frame.top));
        let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
        if left + fw > w || top + fh > h {
            return Err(malformed(format!(
                "frame {} lies outside the screen",
                frames.len()
            )));
        }
        for y in 0..fh {
            for x in 0..fw {
                let src = &frame.buffer[(y * fw + x) * 4..][..4];
                if src[3] != 0 {
                    let dst = ((top + y) * w + left + x) * 3;
                    canvas[dst..dst + 3].copy_from_slice(&src[..3]);
                }
            }
        }
        frames.push(canvas.clone());
    }
    let fps = if centiseconds == 0 {
        0.0
    } else {
        frames.len() as f64 * 100.0 / centiseconds as f64
    };
    let video =
        VideoFrames::new(w as u32, h as u32, frames).map_err(|e| malformed(e.to_string()))?;
    Ok(ReadVideo { video, fps })
}
