//! MP4 (ISO BMFF) files holding one H.264 video track, written and read through the `mp4` crate.
//!
//! Why `mp4` 0.14 and not `muxide` 0.5, measured on the same openh264 stream (81 frames of 832x480,
//! 500,223 bytes of H.264), release build, both read back through this module and openh264:
//! - both write an `avcC` from openh264's SPS/PPS that the `mp4` reader and openh264 accept (81 frames,
//!   832x480, 41.2 dB against the input); both add about 1 KB of boxes (501,246 vs 501,239 bytes at
//!   16 fps); muxing takes about a millisecond either way (0.4-4.6 ms vs 0.9-1.2 ms), nothing next to
//!   the 1.6-1.8 s of encoding;
//! - sample timing: here we choose the media timescale (`fps * 1000`, 1000 ticks a frame), exact at
//!   every frame rate; muxide fixes 90 kHz and takes seconds as `f64`: at 7 fps it reads back as
//!   7.000004 fps;
//! - it reads as well as writes, so read-back tests and `vdit compare` use one maintained parser
//!   instead of our own demuxer; muxide writes only;
//! - it writes each sample to the file as it comes (`mdat` first, `moov` at the end), so a streamed
//!   video never sits whole in memory; muxide's fast-start layout keeps every sample until `finish`;
//! - cost: `mp4` adds three small crates (mp4, num-rational, num-integer; byteorder, bytes and
//!   thiserror 1 were already in the tree); muxide would add one, but needs Rust 1.86 (the workspace
//!   says 1.85).
//!
//! The file is not fast-start (`moov` after `mdat`): every player reads it, only progressive download
//! in a browser must wait for the end. The colour description lives in the SPS's VUI (BT.601 limited).
//!
//! The crate's reader is not hardened against damaged files: a child box whose size is smaller than
//! its header makes it seek back to that box and loop forever, and it unwraps in places. So [`demux`]
//! first walks the box tree the reader will walk and rejects such sizes ([`check_box_sizes`]), then
//! turns any panic inside the reader into an error.

use std::io::{Cursor, Seek, Write};

use super::h264::H264Sample;
use super::{Result, VideoError, MAX_FPS};

/// Time units per second of the movie header (durations in milliseconds).
const MOVIE_TIMESCALE: u32 = 1000;
/// Media time units per frame; the media timescale is `fps * FRAME_TICKS`, so every frame rate is exact.
const FRAME_TICKS: u32 = 1000;
/// The one track of the files we write.
const TRACK_ID: u32 = 1;

fn mux_err(e: ::mp4::Error) -> VideoError {
    match e {
        ::mp4::Error::IoError(source) => VideoError::Codec(format!("mp4 muxer: {source}")),
        other => VideoError::Codec(format!("mp4 muxer: {other}")),
    }
}

/// Writes an MP4 sample by sample: the media data goes to `out` as it comes, the sample table at
/// [`Mp4Muxer::finish`].
pub struct Mp4Muxer<W: Write + Seek> {
    writer: ::mp4::Mp4Writer<W>,
    fps: u32,
    track_added: bool,
    samples: u64,
}

impl<W: Write + Seek> Mp4Muxer<W> {
    /// Writes the file header to `out`; the track is described by [`Mp4Muxer::add_h264_track`].
    pub fn new(out: W, fps: u32) -> Result<Self> {
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(VideoError::InvalidFrames(format!(
                "fps {fps} is outside 1..={MAX_FPS}"
            )));
        }
        let brand = |b: &[u8; 4]| ::mp4::FourCC::from(*b);
        let config = ::mp4::Mp4Config {
            major_brand: brand(b"isom"),
            minor_version: 512,
            compatible_brands: vec![
                brand(b"isom"),
                brand(b"iso2"),
                brand(b"avc1"),
                brand(b"mp41"),
            ],
            timescale: MOVIE_TIMESCALE,
        };
        let writer = ::mp4::Mp4Writer::write_start(out, &config).map_err(mux_err)?;
        Ok(Self {
            writer,
            fps,
            track_added: false,
            samples: 0,
        })
    }

    pub fn has_track(&self) -> bool {
        self.track_added
    }

    /// Describes the H.264 track: coded size and parameter sets (known once frame 0 is encoded).
    pub fn add_h264_track(
        &mut self,
        width: u32,
        height: u32,
        sps: &[u8],
        pps: &[u8],
    ) -> Result<()> {
        if self.track_added {
            return Err(VideoError::Codec(
                "mp4 muxer: the track is already described".into(),
            ));
        }
        if width > 0xffff || height > 0xffff {
            return Err(VideoError::InvalidFrames(format!(
                "{width}x{height} is too large"
            )));
        }
        if sps.len() < 4 || pps.is_empty() {
            return Err(VideoError::Codec("missing SPS/PPS".into()));
        }
        let track = ::mp4::TrackConfig {
            track_type: ::mp4::TrackType::Video,
            timescale: self.fps * FRAME_TICKS,
            language: "und".into(),
            media_conf: ::mp4::MediaConfig::AvcConfig(::mp4::AvcConfig {
                width: width as u16,
                height: height as u16,
                seq_param_set: sps.to_vec(),
                pic_param_set: pps.to_vec(),
            }),
        };
        self.writer.add_track(&track).map_err(mux_err)?;
        self.track_added = true;
        Ok(())
    }

    /// Appends the next frame's access unit; frames are one `1 / fps` apart.
    pub fn write_sample(&mut self, sample: &H264Sample) -> Result<()> {
        if !self.track_added {
            return Err(VideoError::Codec("mp4 muxer: no track described".into()));
        }
        let sample = ::mp4::Mp4Sample {
            start_time: self.samples * u64::from(FRAME_TICKS),
            duration: FRAME_TICKS,
            rendering_offset: 0,
            is_sync: sample.keyframe,
            bytes: ::mp4::Bytes::copy_from_slice(&sample.data),
        };
        self.writer
            .write_sample(TRACK_ID, &sample)
            .map_err(mux_err)?;
        self.samples += 1;
        Ok(())
    }

    /// Writes the sample table and returns `out`.
    pub fn finish(mut self) -> Result<W> {
        if self.samples == 0 {
            return Err(VideoError::InvalidFrames("no frames".into()));
        }
        self.writer.write_end().map_err(mux_err)?;
        Ok(self.writer.into_writer())
    }
}

/// The H.264 video track of an MP4 file.
#[derive(Debug, Clone)]
pub struct Mp4Track {
    pub width: u32,
    pub height: u32,
    /// Media time units per second.
    pub timescale: u32,
    /// Duration of each sample, in media time units.
    pub sample_durations: Vec<u32>,
    /// Samples: length-prefixed NAL units (4-byte lengths).
    pub samples: Vec<Vec<u8>>,
    pub keyframes: Vec<bool>,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
}

impl Mp4Track {
    /// Mean frame rate: samples per second of track duration.
    pub fn fps(&self) -> f64 {
        let total: u64 = self.sample_durations.iter().map(|&d| u64::from(d)).sum();
        if total == 0 {
            return 0.0;
        }
        self.samples.len() as f64 * f64::from(self.timescale) / total as f64
    }
}

/// Reads the first H.264 video track of an MP4 file. Damaged files give an error, never a panic.
pub fn demux(file: &[u8]) -> std::result::Result<Mp4Track, String> {
    // The panic hook is process-wide, so it is left alone: a caught panic still prints its message.
    std::panic::catch_unwind(|| demux_unguarded(file))
        .unwrap_or_else(|_| Err("damaged file (the mp4 reader panicked)".into()))
}

/// Boxes whose children the crate's reader visits in a loop, and where those children start in the
/// body (after the version/flags and entry count of `stsd` and `dref`, after the 78 bytes of fields
/// of a visual sample entry).
fn children_offset(kind: &[u8; 4]) -> Option<usize> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"udta" | b"edts" | b"mvex"
        | b"moof" | b"traf" => Some(0),
        b"stsd" | b"dref" => Some(8),
        b"avc1" | b"avc3" | b"hev1" | b"vp09" => Some(78),
        _ => None,
    }
}

/// Every box in `data` (and, recursively, in the containers the reader descends into) has a size that
/// covers at least its header and fits in its parent. Only a top-level box may say size 0 ("to the end").
fn check_box_sizes(data: &[u8], top_level: bool) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < 8 {
            return Err(format!("truncated box header at byte {pos}"));
        }
        let kind: [u8; 4] = rest[4..8].try_into().expect("4 bytes");
        let name = String::from_utf8_lossy(&kind).into_owned();
        let (size, header): (u64, usize) =
            match u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) {
                0 if top_level => (rest.len() as u64, 8),
                1 if rest.len() >= 16 => (
                    u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes")),
                    16,
                ),
                n => (u64::from(n), 8),
            };
        if size < header as u64 || size > rest.len() as u64 {
            return Err(format!("box '{name}' at byte {pos} has a bad size {size}"));
        }
        let size = size as usize;
        if let Some(offset) = children_offset(&kind) {
            let body = &rest[header..size];
            let children = body
                .get(offset..)
                .ok_or_else(|| format!("box '{name}' at byte {pos} is truncated"))?;
            check_box_sizes(children, false)?;
        }
        pos += size;
    }
    Ok(())
}

fn demux_unguarded(file: &[u8]) -> std::result::Result<Mp4Track, String> {
    check_box_sizes(file, true)?;
    let err = |e: ::mp4::Error| e.to_string();
    let mut reader =
        ::mp4::Mp4Reader::read_header(Cursor::new(file), file.len() as u64).map_err(err)?;
    let (track_id, track) = reader
        .tracks()
        .iter()
        .filter(|(_, t)| matches!(t.track_type(), Ok(::mp4::TrackType::Video)))
        .min_by_key(|(id, _)| **id)
        .ok_or("no video track")?;
    let track_id = *track_id;
    let avc1 = track
        .trak
        .mdia
        .minf
        .stbl
        .stsd
        .avc1
        .as_ref()
        .ok_or_else(|| match track.box_type() {
            Ok(kind) => format!("codec '{kind}' is not H.264"),
            Err(e) => e.to_string(),
        })?;
    if avc1.avcc.length_size_minus_one & 3 != 3 {
        return Err("only 4-byte NAL lengths are supported".into());
    }
    let sps = avc1
        .avcc
        .sequence_parameter_sets
        .first()
        .ok_or("avcC has no SPS")?
        .bytes
        .clone();
    let pps = avc1
        .avcc
        .picture_parameter_sets
        .first()
        .ok_or("avcC has no PPS")?
        .bytes
        .clone();
    let (width, height) = (u32::from(track.width()), u32::from(track.height()));
    let timescale = track.timescale();
    if timescale == 0 {
        return Err("media timescale is 0".into());
    }
    let count = track.sample_count();
    let mut samples = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut sample_durations = Vec::with_capacity(samples.capacity());
    let mut keyframes = Vec::with_capacity(samples.capacity());
    for sample_id in 1..=count {
        let sample = reader
            .read_sample(track_id, sample_id)
            .map_err(err)?
            .ok_or_else(|| format!("sample {sample_id} of {count} is missing"))?;
        sample_durations.push(sample.duration);
        keyframes.push(sample.is_sync);
        samples.push(sample.bytes.to_vec());
    }
    Ok(Mp4Track {
        width,
        height,
        timescale,
        sample_durations,
        samples,
        keyframes,
        sps,
        pps,
    })
}
