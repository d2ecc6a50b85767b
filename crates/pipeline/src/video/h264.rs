//! H.264 elementary streams through openh264 (bundled Cisco source): RGB24 frames in, one access unit
//! per frame out, as the MP4 muxer wants them (parameter sets apart, NAL units length-prefixed).
//! This file knows nothing of containers: `mp4` imports it, never the other way round.

use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode, VuiConfig,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp};

use super::{Result, VideoError, VideoFrames, MAX_FPS};

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_IDR_SLICE: u8 = 5;

/// One access unit: NAL units, each prefixed by its length as a big-endian u32 (MP4 `avcC` style).
#[derive(Debug, Clone)]
pub struct H264Sample {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

fn codec_err(what: &str, e: impl std::fmt::Display) -> VideoError {
    VideoError::Codec(format!("{what}: {e}"))
}

/// A frame-at-a-time H.264 encoder: RGB24 frames in (all of one size), one access unit out per frame,
/// with the parameter sets kept apart for the container's `avcC`. Odd sizes are padded to even by
/// repeating the last column/row.
pub struct H264Encoder {
    encoder: Encoder,
    /// Input size.
    width: usize,
    height: usize,
    /// Coded size: the input size rounded up to even numbers.
    coded_width: usize,
    coded_height: usize,
    fps: u32,
    frames_encoded: usize,
    /// Sequence and picture parameter set NAL units, without start codes (known after frame 0).
    sps: Vec<u8>,
    pps: Vec<u8>,
    padded: Vec<u8>,
}

impl H264Encoder {
    /// An encoder for `width`x`height` frames at `fps`.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(VideoError::InvalidFrames(format!(
                "size {width}x{height} has a zero side"
            )));
        }
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(VideoError::InvalidFrames(format!(
                "fps {fps} is outside 1..={MAX_FPS}"
            )));
        }
        let (width, height) = (width as usize, height as usize);
        let (coded_width, coded_height) = (width.next_multiple_of(2), height.next_multiple_of(2));
        if coded_width > 3840 || coded_height > 3840 || coded_width.min(coded_height) > 2160 {
            return Err(VideoError::InvalidFrames(format!(
                "{width}x{height} is larger than H.264 level 5.2 allows (3840x2160)"
            )));
        }
        // Quality-driven rate control with a generous bitrate: generated clips are short, so size matters
        // less than detail. No frame skipping: the muxer needs exactly one sample per frame (openh264 warns
        // once on stderr that it cannot then hold the bitrate, which is what we want).
        let pixels_per_second = (coded_width * coded_height) as u64 * u64::from(fps);
        let bitrate = (pixels_per_second / 2).clamp(500_000, 50_000_000) as u32;
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .rate_control_mode(RateControlMode::Quality)
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(fps * 4))
            .num_threads(1)
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| codec_err("cannot create the encoder", e))?;
        Ok(Self {
            encoder,
            width,
            height,
            coded_width,
            coded_height,
            fps,
            frames_encoded: 0,
            sps: Vec::new(),
            pps: Vec::new(),
            padded: Vec::new(),
        })
    }

    /// Coded size: the input size rounded up to even numbers.
    pub fn coded_size(&self) -> (u32, u32) {
        (self.coded_width as u32, self.coded_height as u32)
    }

    /// The latest sequence and picture parameter sets; `None` before the first frame.
    pub fn parameter_sets(&self) -> Option<(&[u8], &[u8])> {
        (self.sps.len() >= 4 && !self.pps.is_empty()).then(|| (&self.sps[..], &self.pps[..]))
    }

    /// Encodes the next frame (`width * height * 3` bytes of RGB24).
    pub fn encode_frame(&mut self, rgb: &[u8]) -> Result<H264Sample> {
        let index = self.frames_encoded;
        if rgb.len() != self.width * self.height * 3 {
            return Err(VideoError::InvalidFrames(format!(
                "frame {index} has {} bytes, expected {} ({}x{} RGB24)",
                rgb.len(),
                self.width * self.height * 3,
                self.width,
                self.height
            )));
        }
        let (coded_w, coded_h) = (self.coded_width, self.coded_height);
        let rgb = pad_to_even(rgb, self.width, self.height, &mut self.padded);
        let yuv = YUVBuffer::from_vec(rgb_to_i420(rgb, coded_w, coded_h), coded_w, coded_h);
        let millis = index as u64 * 1000 / u64::from(self.fps);
        // The first frame initialises the C encoder, which prints its frame-skip warning (see `new`).
        let quiet = (index == 0).then(QuietStderr::new);
        let bitstream = self
            .encoder
            .encode_at(&yuv, Timestamp::from_millis(millis))
            .map_err(|e| codec_err(&format!("frame {index}"), e))?;
        drop(quiet);
        let mut sample = H264Sample {
            data: Vec::new(),
            keyframe: false,
        };
        for layer in (0..bitstream.num_layers()).filter_map(|l| bitstream.layer(l)) {
            for nal in (0..layer.nal_count()).filter_map(|n| layer.nal_unit(n)) {
                let nal = strip_start_code(nal);
                let Some(&header) = nal.first() else { continue };
                match header & 0x1f {
                    NAL_SPS => self.sps = nal.to_vec(),
                    NAL_PPS => self.pps = nal.to_vec(),
                    kind => {
                        sample.keyframe |= kind == NAL_IDR_SLICE;
                        sample
                            .data
                            .extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.data.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.data.is_empty() {
            return Err(VideoError::Codec(format!(
                "the encoder produced no picture for frame {index}"
            )));
        }
        if self.parameter_sets().is_none() {
            return Err(VideoError::Codec("the encoder produced no SPS/PPS".into()));
        }
        self.frames_encoded += 1;
        Ok(sample)
    }
}

/// Decodes an H.264 track (parameter sets and length-prefixed samples, as an MP4 holds them) into
/// RGB24 frames (BT.601 limited range, as encoded).
pub fn decode(sps: &[u8], pps: &[u8], samples: &[Vec<u8>]) -> Result<VideoFrames> {
    let mut decoder = Decoder::new().map_err(|e| codec_err("cannot create the decoder", e))?;
    let mut frames = Vec::with_capacity(samples.len());
    let mut size = None;
    let mut collect = |yuv: &openh264::decoder::DecodedYUV<'_>| {
        let (w, h) = yuv.dimensions();
        size = Some((w as u32, h as u32));
        frames.push(i420_to_rgb(yuv, w, h));
    };

    let mut annexb = Vec::new();
    for nal in [sps, pps] {
        annexb.extend_from_slice(&[0, 0, 0, 1]);
        annexb.extend_from_slice(nal);
    }
    decoder
        .decode(&annexb)
        .map_err(|e| codec_err("parameter sets", e))?;
    for (index, sample) in samples.iter().enumerate() {
        annexb.clear();
        length_prefixed_to_annexb(sample, &mut annexb)
            .map_err(|reason| VideoError::Codec(format!("sample {index}: {reason}")))?;
        if let Some(yuv) = decoder
            .decode(&annexb)
            .map_err(|e| codec_err(&format!("sample {index}"), e))?
        {
            collect(&yuv);
        }
    }
    for yuv in decoder
        .flush_remaining()
        .map_err(|e| codec_err("flush", e))?
    {
        collect(&yuv);
    }
    let (width, height) = size.ok_or_else(|| VideoError::Codec("no frame decoded".into()))?;
    VideoFrames::new(width, height, frames)
}

/// NAL unit without its Annex-B start code (00 00 01 or 00 00 00 01).
fn strip_start_code(nal: &[u8]) -> &[u8] {
    let zeros = nal.iter().take_while(|&&b| b == 0).count();
    if zeros >= 2 && nal.get(zeros) == Some(&1) {
        &nal[zeros + 1..]
    } else {
        nal
    }
}

fn length_prefixed_to_annexb(sample: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated NAL length".into());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let nal = rest
            .get(4..4 + len)
            .ok_or_else(|| format!("NAL of {len} bytes overruns the sample"))?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        rest = &rest[4 + len..];
    }
    Ok(())
}

/// `frame` itself when the size is even, else a copy padded by repeating the last column and row.
fn pad_to_even<'a>(frame: &'a [u8], width: usize, height: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
    if (width | height) & 1 == 0 {
        return frame;
    }
    let (pw, ph) = (width.next_multiple_of(2), height.next_multiple_of(2));
    buf.clear();
    for y in 0..ph {
        let row = &frame[y.min(height - 1) * width * 3..][..width * 3];
        buf.extend_from_slice(row);
        if pw > width {
            buf.extend_from_slice(&row[(width - 1) * 3..]);
        }
    }
    buf
}

// BT.601 limited-range conversions (what the VUI and the `colr` box declare), rounded to nearest.
// openh264's own converters truncate, which biases every pixel by 1-4 levels.

/// RGB24 (even width and height) to planar I420: full-resolution Y, 2x2-averaged Cb and Cr.
fn rgb_to_i420(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let (cw, ch) = (width / 2, height / 2);
    let mut yuv = vec![0u8; width * height + 2 * cw * ch];
    let (luma, chroma) = yuv.split_at_mut(width * height);
    let (cb_plane, cr_plane) = chroma.split_at_mut(cw * ch);
    let px = |x: usize, y: usize| {
        let i = (y * width + x) * 3;
        [
            f32::from(rgb[i]),
            f32::from(rgb[i + 1]),
            f32::from(rgb[i + 2]),
        ]
    };
    let to_byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    for y in 0..height {
        for x in 0..width {
            let [r, g, b] = px(x, y);
            luma[y * width + x] = to_byte(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0);
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let mut sum = [0.0f32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(2 * cx + dx, 2 * cy + dy);
                (0..3).for_each(|c| sum[c] += p[c] * 0.25);
            }
            let [r, g, b] = sum;
            cb_plane[cy * cw + cx] =
                to_byte(128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0);
            cr_plane[cy * cw + cx] = to_byte(128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0);
        }
    }
    yuv
}

/// Decoded I420 picture to RGB24, nearest-neighbour chroma upsampling.
fn i420_to_rgb(yuv: &impl YUVSource, width: usize, height: usize) -> Vec<u8> {
    let (y_stride, u_stride, v_stride) = yuv.strides();
    let (luma, cb_plane, cr_plane) = (yuv.y(), yuv.u(), yuv.v());
    let to_byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let l = 1.164_383 * (f32::from(luma[y * y_stride + x]) - 16.0);
            let cb = f32::from(cb_plane[(y / 2) * u_stride + x / 2]) - 128.0;
            let cr = f32::from(cr_plane[(y / 2) * v_stride + x / 2]) - 128.0;
            rgb.push(to_byte(l + 1.596_027 * cr));
            rgb.push(to_byte(l - 0.391_762 * cb - 0.812_968 * cr));
            rgb.push(to_byte(l + 2.017_232 * cb));
        }
    }
    rgb
}

/// Sends this process's stderr to /dev/null while alive (unix only; elsewhere a no-op).
///
/// openh264 prints a warning from inside its C initialisation; its trace-level option cannot
/// reach it because the crate applies that option only after initialising. One at a time in the
/// process (the groups of an mp4 start their encoders on several threads): a second one would
/// save the first's /dev/null as "stderr" and restore it.
struct QuietStderr {
    #[cfg(unix)]
    saved: Option<libc::c_int>,
    #[cfg(unix)]
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl QuietStderr {
    fn new() -> Self {
        #[cfg(unix)]
        {
            static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: plain descriptor calls; every descriptor opened here is closed or kept in
            // `saved` and restored by `drop`.
            unsafe {
                let saved = libc::dup(2);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if saved >= 0 && null >= 0 && libc::dup2(null, 2) >= 0 {
                    libc::close(null);
                    return Self {
                        saved: Some(saved),
                        _one_at_a_time: guard,
                    };
                }
                if saved >= 0 {
                    libc::close(saved);
                }
                if null >= 0 {
                    libc::close(null);
                }
            }
            Self {
                saved: None,
                _one_at_a_time: guard,
            }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

impl Drop for QuietStderr {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            // SAFETY: `saved` is the original stderr duplicated in `new`.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}
