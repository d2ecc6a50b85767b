//! Video files: mp4 (H.264), gif and png frame sequences, chosen by the output extension.
//!
//! Writers take [`VideoFrames`] (RGB24) and a frame rate: all at once ([`write_video`]) or in chunks
//! while they are produced ([`VideoSink`], which encodes mp4 on a background thread; `write_video` is
//! a sink fed one chunk at a time). Every file is written atomically (a temporary file in the
//! destination directory, then a rename), so a crash never leaves a half-written video.
//! Readers exist so tests (and `vdit compare`) can check what was written.
//!
//! A writer never replaces a file vdit did not write: by default an existing output is replaced
//! only if its sidecar (`out.mp4.json`) lists it; [`Replace`] says otherwise (`--overwrite`, or a
//! report that lists the file). See [`crate::ownership`].
//!
//! Format notes:
//! - mp4: H.264 (openh264, Constrained Baseline, BT.601 limited range) muxed and read by the `mp4`
//!   crate ([`mp4`] says why that crate). H.264 4:2:0 needs even dimensions: odd widths/heights are **padded** by repeating the
//!   last column/row, so the mp4 is up to one pixel wider/taller than the input. Lossy.
//! - gif: one palette per frame (NeuQuant), frame delays in 1/100 s spread so the total duration is
//!   exact (16 fps → delays 6,6,7,6,...). Lossy in colour.
//! - png: `-o out.png` writes `out_00000.png`, `out_00001.png`, ... next to it (one file per frame,
//!   frame numbers from 0, five digits); each file carries the frame rate in a `vdit-fps` text chunk
//!   (which also marks it as vdit's). The sequence is moved into place as a whole and replaces every
//!   earlier frame of the pattern ([`png_seq`] says how). Lossless.

mod gif_file;
pub mod h264;
pub mod mp4;
mod png_seq;
mod sink;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use crate::ownership::Replace;
pub use png_seq::{existing_frames, png_frame_path};
pub use sink::VideoSink;

/// Frame rate of Wan2.1 videos, the default for every writer.
pub const DEFAULT_FPS: u32 = 16;
/// Highest frame rate the writers accept (the MP4 media timescale is `fps * 1000`).
pub const MAX_FPS: u32 = 1000;

/// Decoded or generated video: RGB24 frames, row-major, `width * height * 3` bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrames {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
}

/// A video read back from a file, with the frame rate the file declares.
#[derive(Debug, Clone)]
pub struct ReadVideo {
    pub video: VideoFrames,
    pub fps: f64,
}

/// Output container, chosen from the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    Mp4,
    Gif,
    PngSequence,
}

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("{path}: unknown video extension (use .mp4, .gif or .png)")]
    UnknownFormat { path: PathBuf },

    #[error("{path}: cannot write here: {reason}")]
    NotWritable { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is at the target that vdit did not write (and `--overwrite` was not given).
    #[error("{reason}")]
    Foreign { path: PathBuf, reason: String },

    #[error("invalid video: {0}")]
    InvalidFrames(String),

    #[error("H.264 codec: {0}")]
    Codec(String),

    #[error("{path}: not a readable {format} file: {reason}")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    #[error("frames tensor: {0}")]
    Tensor(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, VideoError>;

impl VideoFrames {
    /// Checked constructor: non-zero size, at least one frame, every frame `width*height*3` bytes.
    pub fn new(width: u32, height: u32, frames: Vec<Vec<u8>>) -> Result<Self> {
        let video = Self {
            width,
            height,
            frames,
        };
        video.validate()?;
        Ok(video)
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Bytes in one RGB24 frame.
    pub fn frame_len(&self) -> usize {
        // Saturating: no frame of that size exists, so an absurd size fails `validate`, never wraps.
        (self.width as usize)
            .saturating_mul(self.height as usize)
            .saturating_mul(3)
    }

    /// Checks the invariants every writer relies on (the fields are public, so anyone can break them).
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(VideoError::InvalidFrames(format!(
                "size {}x{} has a zero side",
                self.width, self.height
            )));
        }
        if self.frames.is_empty() {
            return Err(VideoError::InvalidFrames("no frames".into()));
        }
        let expected = self.frame_len();
        if let Some((i, f)) = self
            .frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.len() != expected)
        {
            return Err(VideoError::InvalidFrames(format!(
                "frame {i} has {} bytes, expected {expected} ({}x{} RGB24)",
                f.len(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }

    /// RGB of pixel (x, y) in frame `t`.
    pub fn pixel(&self, t: usize, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width as usize + x) * 3;
        let f = &self.frames[t];
        [f[i], f[i + 1], f[i + 2]]
    }
}

impl VideoFormat {
    /// Format from the extension of `path` (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("mp4") => Ok(Self::Mp4),
            Some("gif") => Ok(Self::Gif),
            Some("png") => Ok(Self::PngSequence),
            _ => Err(VideoError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Checks, before any compute, that a video can be written to `path`: known extension, an existing
/// directory, not a directory itself, and a file can be created in that directory. Whether a file
/// already there may be replaced is [`check_replaceable`]'s question.
pub fn check_writable(path: &Path) -> Result<VideoFormat> {
    let format = VideoFormat::from_path(path)?;
    let not_writable = |reason: String| VideoError::NotWritable {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        return Err(not_writable("it is a directory".into()));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(not_writable(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    // Probing with a real temporary file is the only reliable test (permissions, read-only mounts).
    tempfile::Builder::new()
        .prefix(&crate::ownership::temp_prefix(path))
        .tempfile_in(dir)
        .map_err(|e| not_writable(format!("cannot create a file in {}: {e}", dir.display())))?;
    Ok(format)
}

/// Checks, before any compute, that the outputs of a video at `path` (the file, or every frame of
/// a png sequence's pattern) may be written under `replace`: one error naming the first file
/// that may not be replaced.
pub fn check_replaceable(path: &Path, replace: &Replace) -> Result<()> {
    match VideoFormat::from_path(path)? {
        VideoFormat::PngSequence => {
            let foreign = png_seq::foreign_frames(path, replace);
            match foreign.first() {
                None => Ok(()),
                Some(first) => Err(VideoError::Foreign {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{} (one of {} such files of the sequence {})",
                        replace.refusal(first),
                        foreign.len(),
                        path.display()
                    ),
                }),
            }
        }
        _ if replace.allows(path) => Ok(()),
        _ => Err(VideoError::Foreign {
            path: path.to_path_buf(),
            reason: replace.refusal(path),
        }),
    }
}

/// Frames per chunk when [`write_video`] feeds its sink (the VAE's chunk size).
const WRITE_CHUNK_FRAMES: usize = 4;

/// Writes `video` to `path` in the format its extension names, at `fps` frames per second.
/// Returns the files written (one for mp4/gif, one per frame for png). The same code path as
/// streaming: a [`VideoSink`] fed the frames in chunks.
/// An existing output is replaced only if its sidecar lists it ([`write_video_replacing`] for
/// another rule).
pub fn write_video(path: &Path, video: &VideoFrames, fps: u32) -> Result<Vec<PathBuf>> {
    write_video_replacing(path, video, fps, Replace::for_output(path, false))
}

/// [`write_video`] with an explicit rule for a file already at `path`.
pub fn write_video_replacing(
    path: &Path,
    video: &VideoFrames,
    fps: u32,
    replace: Replace,
) -> Result<Vec<PathBuf>> {
    video.validate()?;
    let mut sink = VideoSink::create_replacing(path, fps, replace)?;
    for chunk in video.frames.chunks(WRITE_CHUNK_FRAMES) {
        sink.push(VideoFrames {
            width: video.width,
            height: video.height,
            frames: chunk.to_vec(),
        })?;
    }
    sink.finish()
}

/// Reads a video written by [`write_video`] (for png, pass the same `out.png` path).
pub fn read_video(path: &Path) -> Result<ReadVideo> {
    match VideoFormat::from_path(path)? {
        VideoFormat::Mp4 => {
            let bytes = read_file(path)?;
            let track = mp4::demux(&bytes).map_err(|reason| VideoError::Malformed {
                path: path.to_path_buf(),
                format: "mp4",
                reason,
            })?;
            let video = h264::decode(&track.sps, &track.pps, &track.samples)?;
            Ok(ReadVideo {
                video,
                fps: track.fps(),
            })
        }
        VideoFormat::Gif => gif_file::decode(path, &read_file(path)?),
        VideoFormat::PngSequence => png_seq::read(path),
    }
}

/// `video` as produced by the VAE, `[3, T, H, W]` (or `[1, 3, T, H, W]`) in [-1, 1], to RGB24 frames:
/// `round((x + 1) / 2 * 255)` clamped to 0..=255 (NaN becomes 0).
pub fn frames_from_tensor(video: &Tensor) -> Result<VideoFrames> {
    let bytes = rgb_bytes_tensor(video)?;
    let (_, h, w, _) = bytes.dims4()?;
    let bytes = vdit_models::readback::read_now(&bytes)
        .map_err(|e| VideoError::Tensor(format!("reading the frames back: {e}")))?;
    frames_from_bytes(w as u32, h as u32, &bytes)
}

/// [`frames_from_tensor`]'s bytes as a u8 tensor `[T, H, W, 3]` on the video's device (computed
/// there: a quarter of the bytes then cross to the host), for a caller that reads them back
/// itself (the decode stage, which overlaps the copy with the next chunk's decode).
pub fn rgb_bytes_tensor(video: &Tensor) -> Result<Tensor> {
    let video = match video.dims() {
        [1, 3, _, _, _] => video.squeeze(0)?,
        [3, _, _, _] => video.clone(),
        other => {
            return Err(VideoError::Tensor(format!(
                "expected [3, T, H, W] (or [1, 3, T, H, W]) in [-1, 1], got {other:?}"
            )))
        }
    };
    let (_, t, h, w) = video.dims4()?;
    if t == 0 || h == 0 || w == 0 {
        return Err(VideoError::Tensor(format!(
            "empty video {:?}",
            video.dims()
        )));
    }
    if video.device().is_cpu() {
        let bytes = rgb_bytes_on_host(&video)?;
        Ok(Tensor::from_vec(bytes, (t, h, w, 3), &Device::Cpu)?)
    } else {
        rgb_bytes_on_device(&video)
    }
}

/// RGB24 frames of `width`×`height` from their bytes, `[T, H, W, 3]` order.
pub fn frames_from_bytes(width: u32, height: u32, bytes: &[u8]) -> Result<VideoFrames> {
    let frame_len = width as usize * height as usize * 3;
    if frame_len == 0 || !bytes.len().is_multiple_of(frame_len) {
        return Err(VideoError::Tensor(format!(
            "{} bytes are not whole {width}x{height} RGB frames",
            bytes.len()
        )));
    }
    let frames = bytes.chunks_exact(frame_len).map(<[u8]>::to_vec).collect();
    VideoFrames::new(width, height, frames)
}

/// `[3, T, H, W]` → the RGB24 bytes of its frames, `[T, H, W, 3]` order, on the host.
fn rgb_bytes_on_host(video: &Tensor) -> Result<Vec<u8>> {
    let values = video
        .to_dtype(DType::F32)?
        .permute((1, 2, 3, 0))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let to_byte = |x: f32| ((x + 1.0) * 0.5 * 255.0).round().clamp(0.0, 255.0) as u8;
    Ok(values.into_iter().map(to_byte).collect())
}

/// [`rgb_bytes_on_host`] computed where the video is (a GPU): u8 `[T, H, W, 3]` there, so that
/// the host does no per-value work. The same operations in the same order (`x + 1`, `· 0.5`,
/// `· 255`, clamp, round), so the same bytes; the clamp sends NaN to 0 (candle's maximum is
/// fmax), as the cast on the host does.
fn rgb_bytes_on_device(video: &Tensor) -> Result<Tensor> {
    Ok((((video.to_dtype(DType::F32)? + 1.0)? * 0.5)? * 255.0)?
        .clamp(0f32, 255f32)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((1, 2, 3, 0))?
        .contiguous()?)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| VideoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes a finished temporary file (created next to `path`) readable, syncs it and renames it to `path`.
pub(crate) fn persist_temp(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    let io = |source| VideoError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Temporary files are created private (0600); a video should be readable like any new file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(perms).map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod byte_tests {
    use super::*;

    #[test]
    fn the_device_conversion_gives_the_host_bytes() {
        // Values around every rounding boundary, beyond [-1, 1], infinities and NaN, plus noise.
        let mut values: Vec<f32> = (-600..=600).map(|i| i as f32 / 510.0).collect();
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -3.0, 3.0, -0.0]);
        let noise = Tensor::randn(0f32, 0.7, 3 * 2 * 5 * 7, &Device::Cpu).unwrap();
        values.extend(noise.to_vec1::<f32>().unwrap());
        let pad = (3 * 2 * 5 * 7) - values.len() % (3 * 2 * 5 * 7);
        values.extend(std::iter::repeat_n(0.25, pad));
        let t = values.len() / (3 * 5 * 7);
        let video = Tensor::from_vec(values, (3, t, 5, 7), &Device::Cpu).unwrap();
        let host = rgb_bytes_on_host(&video).unwrap();
        let device = device_bytes(&video);
        assert_eq!(host.len(), device.len());
        let differing = host.iter().zip(&device).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "of {} bytes", host.len());
        // NaN is 0 on both
        let nan = Tensor::full(f32::NAN, (3, 1, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(device_bytes(&nan), vec![0, 0, 0]);
    }

    fn device_bytes(video: &Tensor) -> Vec<u8> {
        let bytes = rgb_bytes_on_device(video).unwrap();
        bytes.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    }
}
