//! Coded video as the H.264 encoder and decoder ([`super::h264`]) and the MP4 muxer and demuxer
//! ([`super::mp4`]) pass it between them: the types both sides need, so neither imports the other.

/// An encoded video: the parameter sets and one sample (access unit) per frame.
#[derive(Debug, Clone)]
pub struct H264Stream {
    /// Coded size: the input size rounded up to even numbers.
    pub width: u32,
    pub height: u32,
    /// Sequence parameter set NAL unit, without start code.
    pub sps: Vec<u8>,
    /// Picture parameter set NAL unit, without start code.
    pub pps: Vec<u8>,
    pub samples: Vec<H264Sample>,
}

/// One access unit: NAL units, each prefixed by its length as a big-endian u32 (MP4 `avcC` style).
#[derive(Debug, Clone)]
pub struct H264Sample {
    pub data: Vec<u8>,
    pub keyframe: bool,
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
