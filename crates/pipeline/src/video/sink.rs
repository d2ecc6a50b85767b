//! A video writer that takes frames in chunks while they are produced (the VAE decodes a few frames
//! at a time) and encodes them on a background thread, so the H.264 encode overlaps the decode.
//!
//! mp4 streams: each pushed chunk goes over a bounded channel to the encoder thread. That thread
//! hands the frames to group encoders: each run of [`GOP_SECONDS`] of frames (an IDR picture and
//! the P pictures after it) is encoded by an encoder of its own on a thread of its own, so several
//! groups encode at once, and the encoded groups are appended, in order, to a temporary file in
//! the destination directory. One H.264 encoder takes about 15-40 ms a frame at 832x480, more than
//! the GPU decode's ≈ 18 ms: with one encoder the whole run waited ≈ 0.8 s for it after the decode
//! (scripts/gpu/NOTES.md, "The decode stage, split"). gif buffers the frames
//! and encodes them at [`VideoSink::finish`]; png encodes each frame into a temporary folder as it
//! comes. Whatever the format, the output appears only at `finish`, by renames; a sink dropped (or
//! failed) before that removes its temporary file or folder and leaves whatever was at the path
//! untouched. A file at the path that vdit did not write is refused at `create` (see [`Replace`]).

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tempfile::NamedTempFile;

use super::h264::{H264Encoder, H264Sample};
use super::mp4::Mp4Muxer;
use super::png_seq::PngSequenceWriter;
use super::{
    check_replaceable, gif_file, parent_dir, persist_temp, Result, VideoError, VideoFormat,
    VideoFrames, MAX_FPS,
};
use crate::ownership::{remove_stale_temps, temp_prefix, Replace};

/// Chunks queued for the encoder before `push` waits: at most 4 chunks of up to 4 frames are held
/// (about 19 MB at 832x480), and a producer faster than the encoder is slowed down, not buffered.
const QUEUED_CHUNKS: usize = 4;

/// Seconds of frames per group of pictures: each group starts with an IDR picture and is encoded
/// by an encoder of its own, in parallel with the other groups.
pub const GOP_SECONDS: u32 = 2;

/// Environment variable: the most groups encoded at once (default: the CPU's threads less one,
/// at most 8). `1` encodes one group at a time.
pub const MP4_THREADS_ENV: &str = "VDIT_MP4_THREADS";

/// Groups encoded at once: [`MP4_THREADS_ENV`], else the CPU's threads less one (1 to 8).
fn parallel_groups() -> usize {
    let from_env = std::env::var(MP4_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    from_env.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .clamp(1, 8)
    })
}

/// Buffer between the muxer and the temporary file: samples arrive in ~1 s chunks, the sample table
/// as many small writes.
const FILE_BUFFER: usize = 1 << 20;

enum ToEncoder {
    /// RGB24 frames of `width`x`height`.
    Frames {
        width: u32,
        height: u32,
        frames: Vec<Vec<u8>>,
    },
    Finish,
}

/// Streams frames into a video file; see the module docs.
///
/// ```no_run
/// # use vdit_pipeline::video::{VideoSink, VideoFrames};
/// # fn chunks() -> Vec<VideoFrames> { vec![] }
/// let mut sink = VideoSink::create("out.mp4".as_ref(), 16)?;
/// for chunk in chunks() {
///     sink.push(chunk)?; // returns once the chunk is queued
/// }
/// let written = sink.finish()?; // encodes what is left, then renames into place
/// # Ok::<(), vdit_pipeline::video::VideoError>(())
/// ```
pub struct VideoSink {
    path: PathBuf,
    format: VideoFormat,
    fps: u32,
    /// What to do with a file already at `path` (checked again just before the rename).
    replace: Replace,
    /// Frame size, fixed by the first chunk.
    size: Option<(u32, u32)>,
    frames_pushed: usize,
    state: State,
}

enum State {
    Mp4(EncoderThread),
    /// The gif is encoded at `finish` into this temporary file.
    Gif(NamedTempFile, Vec<Vec<u8>>),
    Png(PngSequenceWriter),
    /// An error was returned; every later call says so.
    Failed(String),
    Finished,
}

struct EncoderThread {
    to_encoder: SyncSender<ToEncoder>,
    /// Set by `drop`: the thread stops at the next frame instead of encoding what is queued.
    cancel: Arc<AtomicBool>,
    /// Returns the finished temporary file (after `Finish`) or the first error.
    handle: JoinHandle<Result<NamedTempFile>>,
}

impl VideoSink {
    /// A writer for `path` (format from its extension, as [`super::write_video`]) at `fps`. An
    /// existing output is replaced only if its sidecar lists it ([`Self::create_replacing`] for
    /// another rule).
    pub fn create(path: &Path, fps: u32) -> Result<Self> {
        Self::create_replacing(path, fps, Replace::for_output(path, false))
    }

    /// A writer for `path` at `fps` that treats a file already there as `replace` says.
    /// Checks before anything is encoded: fps, extension, not a directory, the existing output
    /// may be replaced, and a temporary file (png: folder) can be created next to `path` (mp4
    /// and gif keep it and write into it). Temporaries of killed runs in that directory are
    /// removed.
    pub fn create_replacing(path: &Path, fps: u32, replace: Replace) -> Result<Self> {
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(VideoError::InvalidFrames(format!(
                "fps {fps} is outside 1..={MAX_FPS}"
            )));
        }
        let format = VideoFormat::from_path(path)?;
        if path.is_dir() {
            return Err(VideoError::NotWritable {
                path: path.to_path_buf(),
                reason: "it is a directory".into(),
            });
        }
        check_replaceable(path, &replace)?;
        let state = match format {
            VideoFormat::Mp4 => {
                remove_stale_temps(parent_dir(path));
                State::Mp4(EncoderThread::spawn(path, create_temp(path)?, fps)?)
            }
            VideoFormat::Gif => {
                remove_stale_temps(parent_dir(path));
                State::Gif(create_temp(path)?, Vec::new())
            }
            VideoFormat::PngSequence => {
                State::Png(PngSequenceWriter::create(path, fps, replace.clone())?)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            fps,
            replace,
            size: None,
            frames_pushed: 0,
            state,
        })
    }

    pub fn format(&self) -> VideoFormat {
        self.format
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames accepted so far.
    pub fn frames_pushed(&self) -> usize {
        self.frames_pushed
    }

    /// Queues `chunk` (any number of frames, all the size of the first chunk). For mp4 this returns
    /// as soon as the encoder thread has room for the chunk; an error the encoder met on an earlier
    /// chunk is returned here (or by `finish`).
    pub fn push(&mut self, chunk: VideoFrames) -> Result<()> {
        chunk.validate()?;
        let size = (chunk.width, chunk.height);
        if *self.size.get_or_insert(size) != size {
            let (w, h) = self.size.unwrap_or(size);
            return Err(VideoError::InvalidFrames(format!(
                "chunk of {}x{} frames after {w}x{h} frames",
                size.0, size.1
            )));
        }
        let frames = chunk.frames.len();
        match &mut self.state {
            State::Mp4(thread) => {
                // A finished thread has met an error: report it now rather than after more work.
                let sent = !thread.handle.is_finished()
                    && thread
                        .to_encoder
                        .send(ToEncoder::Frames {
                            width: size.0,
                            height: size.1,
                            frames: chunk.frames,
                        })
                        .is_ok();
                if !sent {
                    return Err(self.fail_from_thread());
                }
            }
            State::Gif(_, buffered) => buffered.extend(chunk.frames),
            State::Png(writer) => {
                if let Err(e) = writer.push(&chunk) {
                    self.state = State::Failed(e.to_string());
                    return Err(e);
                }
            }
            State::Failed(reason) => {
                let reason = reason.clone();
                return Err(self.earlier_failure(reason));
            }
            State::Finished => unreachable!("finish consumes the sink"),
        }
        self.frames_pushed += frames;
        Ok(())
    }

    /// Encodes what is still queued, finalises the file and moves it into place. Returns the files
    /// written (one for mp4/gif, one per frame for png).
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if let State::Failed(reason) = &self.state {
            return Err(self.earlier_failure(reason.clone()));
        }
        if self.frames_pushed == 0 {
            return Err(VideoError::InvalidFrames("no frames".into()));
        }
        let (width, height) = self.size.expect("frames were pushed");
        let path = self.path.clone();
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Mp4(thread) => {
                let _ = thread.to_encoder.send(ToEncoder::Finish);
                let temp = thread.join()?;
                // Something may have appeared at the path during the encode.
                check_replaceable(&path, &self.replace)?;
                persist_temp(temp, &path)?;
                Ok(vec![path])
            }
            State::Gif(mut temp, frames) => {
                let bytes = gif_file::encode(&VideoFrames::new(width, height, frames)?, self.fps)?;
                temp.write_all(&bytes).map_err(|source| VideoError::Io {
                    path: path.clone(),
                    source,
                })?;
                check_replaceable(&path, &self.replace)?;
                persist_temp(temp, &path)?;
                Ok(vec![path])
            }
            State::Png(writer) => writer.finish(),
            State::Failed(_) | State::Finished => unreachable!("checked above"),
        }
    }

    /// Joins the (failed) encoder thread and returns its error; the sink is failed from now on.
    fn fail_from_thread(&mut self) -> VideoError {
        let error = match std::mem::replace(&mut self.state, State::Finished) {
            State::Mp4(thread) => match thread.join() {
                Err(e) => e,
                // Cannot happen: the thread only returns Ok after `Finish`, which `finish` sends.
                Ok(_) => VideoError::Codec("the encoder stopped early".into()),
            },
            _ => unreachable!("only an mp4 sink has an encoder thread"),
        };
        self.state = State::Failed(error.to_string());
        error
    }

    fn earlier_failure(&self, reason: String) -> VideoError {
        VideoError::NotWritable {
            path: self.path.clone(),
            reason: format!("this writer already failed: {reason}"),
        }
    }
}

impl std::fmt::Debug for VideoSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("fps", &self.fps)
            .field("size", &self.size)
            .field("frames_pushed", &self.frames_pushed)
            .finish_non_exhaustive()
    }
}

impl Drop for VideoSink {
    /// Without `finish`: stop the encoder, wait for it, and let the temporary file go (it deletes
    /// itself), so nothing partial is left and an existing file at the path is untouched.
    fn drop(&mut self) {
        if let State::Mp4(thread) = std::mem::replace(&mut self.state, State::Finished) {
            thread.cancel.store(true, Ordering::Relaxed);
            let EncoderThread {
                to_encoder, handle, ..
            } = thread;
            drop(to_encoder);
            let _ = handle.join();
        }
    }
}

impl EncoderThread {
    fn spawn(path: &Path, temp: NamedTempFile, fps: u32) -> Result<Self> {
        let (to_encoder, from_sink) = sync_channel::<ToEncoder>(QUEUED_CHUNKS);
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let out_path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("vdit-mp4-encoder".into())
            .spawn(move || {
                let mut stream = Mp4Stream::new(&out_path, temp, fps, cancelled.clone())?;
                for message in from_sink {
                    match message {
                        ToEncoder::Frames {
                            width,
                            height,
                            frames,
                        } => {
                            for frame in frames {
                                if cancelled.load(Ordering::Relaxed) {
                                    return Err(VideoError::Codec("cancelled".into()));
                                }
                                stream.encode(width, height, frame)?;
                            }
                        }
                        ToEncoder::Finish => return stream.finish(),
                    }
                }
                // The sink was dropped without `finish`: the temporary file is removed on return.
                Err(VideoError::Codec("the video was abandoned".into()))
            })
            .map_err(|source| VideoError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            to_encoder,
            cancel,
            handle,
        })
    }

    fn join(self) -> Result<NamedTempFile> {
        drop(self.to_encoder);
        join_thread(self.handle, "the encoder thread")
    }
}

/// The result of a finished thread of ours; a panic becomes an error that carries its message.
fn join_thread<T>(handle: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    handle.join().unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(VideoError::Codec(format!("{what} panicked: {message}")))
    })
}

/// The encoder thread's state: the group encoders at work, oldest first, and the MP4 muxer
/// writing the finished groups into the temporary file.
struct Mp4Stream {
    path: PathBuf,
    fps: u32,
    /// Frames per group.
    group_frames: usize,
    /// Groups encoded at once at most.
    parallel: usize,
    frames_seen: usize,
    groups: VecDeque<GroupEncoder>,
    /// The first group's SPS and PPS, which the track holds; every group must produce the same.
    parameter_sets: Option<(Vec<u8>, Vec<u8>)>,
    cancel: Arc<AtomicBool>,
    muxer: Mp4Muxer<BufWriter<NamedTempFile>>,
}

/// One group of pictures being encoded on its own thread.
struct GroupEncoder {
    /// Frames to the group's thread; `None` once the group has all its frames.
    frames: Option<Sender<Vec<u8>>>,
    handle: JoinHandle<Result<EncodedGroup>>,
}

/// A group's samples, in order, and the parameter sets its encoder produced.
struct EncodedGroup {
    samples: Vec<H264Sample>,
    sps: Vec<u8>,
    pps: Vec<u8>,
    coded_size: (u32, u32),
}

impl GroupEncoder {
    /// A thread that encodes the `width`x`height` frames it is sent, from an IDR picture on.
    fn spawn(width: u32, height: u32, fps: u32, cancel: Arc<AtomicBool>) -> Result<Self> {
        let (frames, received) = channel::<Vec<u8>>();
        let handle = std::thread::Builder::new()
            .name("vdit-mp4-group".into())
            .spawn(move || {
                let mut encoder = H264Encoder::new(width, height, fps)?;
                let mut samples = Vec::new();
                for frame in received {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(VideoError::Codec("cancelled".into()));
                    }
                    samples.push(encoder.encode_frame(&frame)?);
                }
                let (sps, pps) = encoder
                    .parameter_sets()
                    .ok_or_else(|| VideoError::Codec("the encoder produced no SPS/PPS".into()))?;
                Ok(EncodedGroup {
                    sps: sps.to_vec(),
                    pps: pps.to_vec(),
                    coded_size: encoder.coded_size(),
                    samples,
                })
            })
            .map_err(|e| VideoError::Codec(format!("cannot start an encoder thread: {e}")))?;
        Ok(Self {
            frames: Some(frames),
            handle,
        })
    }

    /// Waits for the group (its frames all sent) and returns it.
    fn join(mut self) -> Result<EncodedGroup> {
        self.frames = None;
        join_thread(self.handle, "a group's encoder thread")
    }
}

impl Mp4Stream {
    fn new(path: &Path, temp: NamedTempFile, fps: u32, cancel: Arc<AtomicBool>) -> Result<Self> {
        let out = BufWriter::with_capacity(FILE_BUFFER, temp);
        Ok(Self {
            path: path.to_path_buf(),
            fps,
            group_frames: (fps * GOP_SECONDS).max(1) as usize,
            parallel: parallel_groups(),
            frames_seen: 0,
            groups: VecDeque::new(),
            parameter_sets: None,
            cancel,
            muxer: Mp4Muxer::new(out, fps).map_err(|e| with_path(e, path))?,
        })
    }

    /// Hands one `width`x`height` frame to its group's encoder (the sink has checked that every
    /// chunk has the same size), starting a group every `group_frames` frames, and muxes the
    /// groups that are done.
    fn encode(&mut self, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
        if self.frames_seen.is_multiple_of(self.group_frames) {
            if let Some(last) = self.groups.back_mut() {
                last.frames = None;
            }
            while self.groups.len() >= self.parallel {
                self.mux_oldest()?;
            }
            let group = GroupEncoder::spawn(width, height, self.fps, self.cancel.clone())?;
            self.groups.push_back(group);
        }
        self.frames_seen += 1;
        let sent = self
            .groups
            .back()
            .and_then(|g| g.frames.as_ref())
            .is_some_and(|frames| frames.send(rgb).is_ok());
        if !sent {
            // The group's thread has stopped: its error comes out of the groups in order.
            while !self.groups.is_empty() {
                self.mux_oldest()?;
            }
            return Err(VideoError::Codec("an encoder stopped early".into()));
        }
        while self
            .groups
            .front()
            .is_some_and(|g| g.frames.is_none() && g.handle.is_finished())
        {
            self.mux_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest group and appends its samples (the first group's parameter sets
    /// start the track).
    fn mux_oldest(&mut self) -> Result<()> {
        let Some(group) = self.groups.pop_front() else {
            return Ok(());
        };
        let group = group.join()?;
        match &self.parameter_sets {
            None => {
                let (width, height) = group.coded_size;
                self.muxer
                    .add_h264_track(width, height, &group.sps, &group.pps)?;
                self.parameter_sets = Some((group.sps, group.pps));
            }
            Some((sps, pps)) if *sps != group.sps || *pps != group.pps => {
                return Err(VideoError::Codec(
                    "the group encoders produced different parameter sets".into(),
                ))
            }
            Some(_) => {}
        }
        for sample in &group.samples {
            self.muxer
                .write_sample(sample)
                .map_err(|e| with_path(e, &self.path))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<NamedTempFile> {
        while !self.groups.is_empty() {
            self.mux_oldest()?;
        }
        let io = |source| VideoError::Io {
            path: self.path.clone(),
            source,
        };
        let out = self.muxer.finish().map_err(|e| with_path(e, &self.path))?;
        out.into_inner().map_err(|e| io(e.into_error()))
    }
}

/// Muxer errors are writes to the temporary file: name the output they were for.
fn with_path(e: VideoError, path: &Path) -> VideoError {
    match e {
        VideoError::Codec(reason) => VideoError::NotWritable {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    }
}

/// A temporary file next to `path`, so the final rename stays on one filesystem.
fn create_temp(path: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .tempfile_in(parent_dir(path))
        .map_err(|source| VideoError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 frames of a moving gradient at `width`x`height`.
    fn frames(width: usize, height: usize) -> Vec<Vec<u8>> {
        (0..40)
            .map(|t| {
                (0..width * height)
                    .flat_map(|i| {
                        let (x, y) = (i % width, i / width);
                        [(x * 4 + t * 3) as u8, (y * 5) as u8, (x + y + t) as u8]
                    })
                    .collect()
            })
            .collect()
    }

    /// The bytes of an mp4 of `frames` at 4 fps (groups of 8 frames) with `parallel` groups
    /// encoded at once.
    fn encoded(frames: &[Vec<u8>], parallel: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.mp4");
        let temp = create_temp(&path).unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut stream = Mp4Stream::new(&path, temp, 4, cancel).unwrap();
        stream.parallel = parallel;
        for frame in frames {
            stream.encode(48, 32, frame.clone()).unwrap();
        }
        let temp = stream.finish().unwrap();
        std::fs::read(temp.path()).unwrap()
    }

    #[test]
    fn groups_encoded_at_once_make_the_same_file_as_one_at_a_time() {
        let frames = frames(48, 32);
        let one = encoded(&frames, 1);
        let three = encoded(&frames, 3);
        assert!(
            one == three,
            "the file depends on how many groups encode at once"
        );
        let track = super::super::mp4::demux(&three).unwrap();
        assert_eq!(track.samples.len(), 40);
        let keyframes: Vec<usize> = (0..40).filter(|&i| track.keyframes[i]).collect();
        assert_eq!(
            keyframes,
            vec![0, 8, 16, 24, 32],
            "an IDR picture opens each group"
        );
        let back = super::super::h264::decode(&track.sps, &track.pps, &track.samples).unwrap();
        assert_eq!(back.frame_count(), 40);
    }
}
