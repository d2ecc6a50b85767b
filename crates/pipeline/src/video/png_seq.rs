//! PNG frame sequences: `out.png` names the sequence `out_00000.png`, `out_00001.png`, ...
//!
//! A sequence is written as a whole: the frames go into a hidden temporary folder beside the
//! target (`.vdit-tmp-<pid>-out.png-…`, see [`crate::ownership`]) while they are produced, and
//! only at [`PngSequenceWriter::finish`] are they moved into place. Then every existing frame of
//! the pattern `out_<digits>.png` is removed first, frame 0 first, and the new frames are renamed
//! in, frame 0 last: at every moment a reader finds the old sequence, no frame 0 (no sequence),
//! or the whole new one; never a short clip that looks complete or a mix of two runs. A run
//! killed before `finish` leaves only the temporary folder, which the next run removes.
//!
//! Frames are vdit's when they carry the `vdit-fps` text chunk; others of the pattern are
//! replaced or removed only with [`Replace::Always`] (`--overwrite`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{parent_dir, ReadVideo, Result, VideoError, VideoFrames};
use crate::ownership::{remove_stale_temps, temp_prefix, Replace};

/// tEXt keyword under which each frame records the sequence's frame rate.
const FPS_KEYWORD: &str = "vdit-fps";

/// Path of frame `index` of the sequence named by `path` (`dir/out.png` → `dir/out_00007.png`).
pub fn png_frame_path(path: &Path, index: usize) -> PathBuf {
    path.with_file_name(format!("{}_{index:05}.png", sequence_stem(path)))
}

fn sequence_stem(path: &Path) -> &str {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame")
}

/// Every file already in the directory that belongs to the sequence `path` (`out_` + digits +
/// `.png`, at least five digits), with its frame number, in frame order.
pub fn existing_frames(path: &Path) -> Vec<(usize, PathBuf)> {
    let stem = format!("{}_", sequence_stem(path));
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return Vec::new();
    };
    let mut frames: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let digits = name.to_str()?.strip_prefix(&stem)?.strip_suffix(".png")?;
            if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits.parse().ok()?, path.with_file_name(name)))
        })
        .collect();
    frames.sort();
    frames
}

/// Whether the png file at `path` carries vdit's `vdit-fps` chunk (only its header is read).
pub fn written_by_vdit(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.read_info().is_ok_and(|reader| {
        reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .any(|t| t.keyword == FPS_KEYWORD)
    })
}

/// The existing files of the sequence `path` that `replace` does not allow to replace or remove:
/// with [`Replace::IfListedIn`], the frames without vdit's chunk that the record does not list.
pub fn foreign_frames(path: &Path, replace: &Replace) -> Vec<PathBuf> {
    if *replace == Replace::Always {
        return Vec::new();
    }
    existing_frames(path)
        .into_iter()
        .map(|(_, frame)| frame)
        .filter(|frame| !written_by_vdit(frame) && !replace.allows(frame))
        .collect()
}

/// The error for a sequence whose pattern holds files vdit may not replace.
fn refuse(path: &Path, foreign: &[PathBuf], replace: &Replace) -> VideoError {
    VideoError::Foreign {
        path: path.to_path_buf(),
        reason: format!(
            "{} ({} file{} of the sequence's pattern {}_NNNNN.png)",
            replace.refusal(&foreign[0]),
            foreign.len(),
            if foreign.len() == 1 { "" } else { "s" },
            sequence_stem(path)
        ),
    }
}

/// Streams frames into a temporary folder and moves the whole sequence into place at `finish`.
pub(super) struct PngSequenceWriter {
    path: PathBuf,
    fps: u32,
    replace: Replace,
    /// Removed with its contents when the writer is dropped without `finish`.
    temp: tempfile::TempDir,
    frames: usize,
}

impl PngSequenceWriter {
    /// Refuses a sequence whose pattern holds files `replace` does not allow to replace, removes
    /// the temporary folders of killed runs, and creates this run's.
    pub(super) fn create(path: &Path, fps: u32, replace: Replace) -> Result<Self> {
        let foreign = foreign_frames(path, &replace);
        if !foreign.is_empty() {
            return Err(refuse(path, &foreign, &replace));
        }
        let dir = parent_dir(path);
        remove_stale_temps(dir);
        let temp = tempfile::Builder::new()
            .prefix(&temp_prefix(path))
            .tempdir_in(dir)
            .map_err(|source| VideoError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            fps,
            replace,
            temp,
            frames: 0,
        })
    }

    /// Encodes `video`'s frames into the temporary folder as the next frames of the sequence.
    pub(super) fn push(&mut self, video: &VideoFrames) -> Result<()> {
        for rgb in &video.frames {
            let bytes = encode_frame(video.width, video.height, rgb, self.fps)?;
            let name = png_frame_path(&self.path, self.frames);
            let temp_path = self
                .temp
                .path()
                .join(name.file_name().expect("a frame name"));
            let io = |source| VideoError::Io {
                path: name.clone(),
                source,
            };
            let mut file = std::fs::File::create(&temp_path).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            self.frames += 1;
        }
        Ok(())
    }

    /// Moves the sequence into place (see the module docs) and returns its frames in order.
    pub(super) fn finish(self) -> Result<Vec<PathBuf>> {
        let foreign = foreign_frames(&self.path, &self.replace);
        if !foreign.is_empty() {
            return Err(refuse(&self.path, &foreign, &self.replace));
        }
        let io = |path: &Path, source| VideoError::Io {
            path: path.to_path_buf(),
            source,
        };
        // The old sequence goes first, frame 0 first: an interrupted removal leaves no frame 0.
        for (_, old) in existing_frames(&self.path) {
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&old, e)),
            }
        }
        let targets: Vec<PathBuf> = (0..self.frames)
            .map(|i| png_frame_path(&self.path, i))
            .collect();
        // Frame 0 last: until it is in place, no sequence is there to be read.
        for target in targets.iter().rev() {
            let from = self
                .temp
                .path()
                .join(target.file_name().expect("a frame name"));
            std::fs::rename(&from, target).map_err(|e| io(target, e))?;
        }
        // The folder is empty now; dropping `temp` removes it.
        Ok(targets)
    }
}

/// One RGB24 frame as a png file's bytes, with the frame rate in a `vdit-fps` text chunk.
fn encode_frame(width: u32, height: u32, rgb: &[u8], fps: u32) -> Result<Vec<u8>> {
    let png_err = |e: png::EncodingError| VideoError::Codec(format!("png: {e}"));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk(FPS_KEYWORD.into(), fps.to_string())
        .map_err(png_err)?;
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(bytes)
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
