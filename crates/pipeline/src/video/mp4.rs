//! A minimal MP4 (ISO BMFF) muxer and demuxer for one H.264 video track.
//!
//! Written file: `ftyp`, then `moov` (placed before the media data so players can start at once),
//! then `mdat` holding every sample in one chunk. Sample table: `stsd` (`avc1` + `avcC` from the
//! SPS/PPS, `colr` nclx BT.601), `stts` (constant frame duration), `stss` (key frames), `stsc`,
//! `stsz`, `stco`. The demuxer reads what this muxer writes and also the general cases of the same
//! boxes (several chunks, `co64`, several `stts` entries), which is what the tests need.

pub use super::track::{H264Stream, Mp4Track};
use super::{Result, VideoError, MAX_FPS};

/// Time units per second of the movie header (durations in milliseconds).
const MOVIE_TIMESCALE: u32 = 1000;
/// Media time units per frame; the media timescale is `fps * FRAME_TICKS`.
const FRAME_TICKS: u32 = 1000;

/// Muxes `stream` as an MP4 at a constant `fps`.
pub fn mux(stream: &H264Stream, fps: u32) -> Result<Vec<u8>> {
    if !(1..=MAX_FPS).contains(&fps) {
        return Err(VideoError::InvalidFrames(format!(
            "fps {fps} is outside 1..={MAX_FPS}"
        )));
    }
    if stream.samples.is_empty() {
        return Err(VideoError::InvalidFrames("no frames".into()));
    }
    if stream.sps.len() < 4
        || stream.pps.is_empty()
        || stream.sps.len() > 0xffff
        || stream.pps.len() > 0xffff
    {
        return Err(VideoError::Codec("missing or oversized SPS/PPS".into()));
    }
    if stream.width > 0xffff || stream.height > 0xffff {
        return Err(VideoError::InvalidFrames(format!(
            "{}x{} is too large",
            stream.width, stream.height
        )));
    }
    let media_bytes: u64 = stream.samples.iter().map(|s| s.data.len() as u64).sum();
    if media_bytes + (1 << 20) > u64::from(u32::MAX) {
        return Err(VideoError::InvalidFrames(format!(
            "{media_bytes} bytes of H.264 is more than a 32-bit MP4 holds"
        )));
    }
    let mut ftyp = Vec::new();
    write_box(&mut ftyp, b"ftyp", |b| {
        b.extend_from_slice(b"isom");
        put_u32(b, 512);
        for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
            b.extend_from_slice(brand);
        }
    });
    // The chunk offset depends on the size of moov, which does not depend on the offset's value.
    let moov_len = build_moov(stream, fps, 0).len();
    let media_start = (ftyp.len() + moov_len + 8) as u32;
    let moov = build_moov(stream, fps, media_start);

    let mut out = ftyp;
    out.extend_from_slice(&moov);
    put_u32(&mut out, (media_bytes + 8) as u32);
    out.extend_from_slice(b"mdat");
    for sample in &stream.samples {
        out.extend_from_slice(&sample.data);
    }
    Ok(out)
}

fn build_moov(stream: &H264Stream, fps: u32, media_start: u32) -> Vec<u8> {
    let frames = stream.samples.len() as u32;
    let media_timescale = fps * FRAME_TICKS;
    let media_duration = frames * FRAME_TICKS;
    let movie_duration = (u64::from(frames) * u64::from(MOVIE_TIMESCALE) / u64::from(fps)) as u32;
    let mut out = Vec::new();
    write_box(&mut out, b"moov", |b| {
        write_full_box(b, b"mvhd", 0, 0, |b| {
            put_u32(b, 0); // creation time
            put_u32(b, 0); // modification time
            put_u32(b, MOVIE_TIMESCALE);
            put_u32(b, movie_duration);
            put_u32(b, 0x0001_0000); // rate 1.0
            put_u16(b, 0x0100); // volume 1.0
            b.extend_from_slice(&[0; 10]);
            put_identity_matrix(b);
            b.extend_from_slice(&[0; 24]); // pre_defined
            put_u32(b, 2); // next track id
        });
        write_box(b, b"trak", |b| {
            write_full_box(b, b"tkhd", 0, 0x3, |b| {
                put_u32(b, 0);
                put_u32(b, 0);
                put_u32(b, 1); // track id
                put_u32(b, 0);
                put_u32(b, movie_duration);
                b.extend_from_slice(&[0; 8]);
                put_u16(b, 0); // layer
                put_u16(b, 0); // alternate group
                put_u16(b, 0); // volume (video: 0)
                put_u16(b, 0);
                put_identity_matrix(b);
                put_u32(b, stream.width << 16); // 16.16 fixed point
                put_u32(b, stream.height << 16);
            });
            write_box(b, b"mdia", |b| {
                write_full_box(b, b"mdhd", 0, 0, |b| {
                    put_u32(b, 0);
                    put_u32(b, 0);
                    put_u32(b, media_timescale);
                    put_u32(b, media_duration);
                    put_u16(b, 0x55c4); // language "und"
                    put_u16(b, 0);
                });
                write_full_box(b, b"hdlr", 0, 0, |b| {
                    put_u32(b, 0);
                    b.extend_from_slice(b"vide");
                    b.extend_from_slice(&[0; 12]);
                    b.extend_from_slice(b"VideoHandler\0");
                });
                write_box(b, b"minf", |b| {
                    write_full_box(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                    write_box(b, b"dinf", |b| {
                        write_full_box(b, b"dref", 0, 0, |b| {
                            put_u32(b, 1);
                            // flag 1: the media data is in this file.
                            write_full_box(b, b"url ", 0, 1, |_| {});
                        });
                    });
                    write_sample_table(b, stream, media_start);
                });
            });
        });
    });
    out
}

fn write_sample_table(b: &mut Vec<u8>, stream: &H264Stream, media_start: u32) {
    let frames = stream.samples.len() as u32;
    write_box(b, b"stbl", |b| {
        write_full_box(b, b"stsd", 0, 0, |b| {
            put_u32(b, 1);
            write_box(b, b"avc1", |b| {
                b.extend_from_slice(&[0; 6]);
                put_u16(b, 1); // data reference index
                b.extend_from_slice(&[0; 16]);
                put_u16(b, stream.width as u16);
                put_u16(b, stream.height as u16);
                put_u32(b, 0x0048_0000); // 72 dpi
                put_u32(b, 0x0048_0000);
                put_u32(b, 0);
                put_u16(b, 1); // frames per sample
                let mut name = [0u8; 32];
                let label = b"vdit H.264";
                name[0] = label.len() as u8;
                name[1..=label.len()].copy_from_slice(label);
                b.extend_from_slice(&name);
                put_u16(b, 0x0018); // depth: colour, no alpha
                put_u16(b, 0xffff); // pre_defined = -1
                write_box(b, b"avcC", |b| {
                    write_avc_config(b, &stream.sps, &stream.pps)
                });
                write_box(b, b"colr", |b| {
                    b.extend_from_slice(b"nclx");
                    // SMPTE 170M (BT.601) primaries, transfer, matrix; limited range.
                    put_u16(b, 6);
                    put_u16(b, 6);
                    put_u16(b, 6);
                    b.push(0);
                });
            });
        });
        write_full_box(b, b"stts", 0, 0, |b| {
            put_u32(b, 1);
            put_u32(b, frames);
            put_u32(b, FRAME_TICKS);
        });
        let keyframes: Vec<u32> = (1..=frames)
            .filter(|&n| stream.samples[n as usize - 1].keyframe)
            .collect();
        write_full_box(b, b"stss", 0, 0, |b| {
            put_u32(b, keyframes.len() as u32);
            keyframes.iter().for_each(|&n| put_u32(b, n));
        });
        write_full_box(b, b"stsc", 0, 0, |b| {
            put_u32(b, 1);
            put_u32(b, 1); // first chunk
            put_u32(b, frames); // all samples in one chunk
            put_u32(b, 1); // sample description index
        });
        write_full_box(b, b"stsz", 0, 0, |b| {
            put_u32(b, 0);
            put_u32(b, frames);
            stream
                .samples
                .iter()
                .for_each(|s| put_u32(b, s.data.len() as u32));
        });
        write_full_box(b, b"stco", 0, 0, |b| {
            put_u32(b, 1);
            put_u32(b, media_start);
        });
    });
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1).
fn write_avc_config(b: &mut Vec<u8>, sps: &[u8], pps: &[u8]) {
    let profile = sps[1];
    b.push(1); // configuration version
    b.extend_from_slice(&sps[1..4]); // profile, compatibility flags, level
    b.push(0xfc | 3); // NAL lengths are 4 bytes
    b.push(0xe0 | 1); // one SPS
    put_u16(b, sps.len() as u16);
    b.extend_from_slice(sps);
    b.push(1); // one PPS
    put_u16(b, pps.len() as u16);
    b.extend_from_slice(pps);
    if matches!(profile, 100 | 110 | 122 | 144) {
        b.extend_from_slice(&[0xfc | 1, 0xf8, 0xf8, 0]); // 4:2:0, 8-bit, no SPS extensions
    }
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_identity_matrix(b: &mut Vec<u8>) {
    for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put_u32(b, v);
    }
}

fn write_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn write_full_box(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    write_box(out, kind, |b| {
        put_u32(b, (u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(b);
    });
}

// ---------------------------------------------------------------------------------------------
// Demuxer

type Parse<T> = std::result::Result<T, String>;

/// Big-endian cursor over a box body; every read is bounds-checked.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bytes(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("box truncated (wanted {n} bytes at {})", self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Parse<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Parse<u16> {
        Ok(u16::from_be_bytes(self.bytes(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_be_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().unwrap()))
    }

    /// Version byte and 24 flag bits of a full box.
    fn full_box_header(&mut self) -> Parse<(u8, u32)> {
        let word = self.u32()?;
        Ok(((word >> 24) as u8, word & 0x00ff_ffff))
    }
}

/// The child boxes of `data`, as (type, body).
fn children(data: &[u8]) -> Parse<Vec<([u8; 4], &[u8])>> {
    let mut out = Vec::new();
    let mut c = Cursor::new(data);
    while c.pos < data.len() {
        let start = c.pos;
        let size32 = c.u32()?;
        let kind: [u8; 4] = c.bytes(4)?.try_into().unwrap();
        let size = match size32 {
            0 => (data.len() - start) as u64, // extends to the end
            1 => c.u64()?,
            n => u64::from(n),
        };
        let header = (c.pos - start) as u64;
        let end = (start as u64).checked_add(size);
        if size < header || end.is_none_or(|end| end > data.len() as u64) {
            return Err(format!(
                "box '{}' has a bad size {size}",
                String::from_utf8_lossy(&kind)
            ));
        }
        out.push((kind, &data[c.pos..start + size as usize]));
        c.pos = start + size as usize;
    }
    Ok(out)
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Parse<&'a [u8]> {
    children(data)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, body)| body)
        .ok_or_else(|| format!("missing '{}' box", String::from_utf8_lossy(kind)))
}

fn optional_child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Parse<Option<&'a [u8]>> {
    Ok(children(data)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, body)| body))
}

/// Reads the first H.264 video track of an MP4 file.
pub fn demux(file: &[u8]) -> Parse<Mp4Track> {
    let moov = child(file, b"moov")?;
    let mut video_mdia = None;
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        let mdia = child(trak, b"mdia")?;
        let mut hdlr = Cursor::new(child(mdia, b"hdlr")?);
        hdlr.full_box_header()?;
        hdlr.u32()?;
        if hdlr.bytes(4)? == b"vide" {
            video_mdia = Some(mdia);
            break;
        }
    }
    let mdia = video_mdia.ok_or("no video track")?;

    let mut mdhd = Cursor::new(child(mdia, b"mdhd")?);
    let (version, _) = mdhd.full_box_header()?;
    mdhd.bytes(if version == 1 { 16 } else { 8 })?;
    let timescale = mdhd.u32()?;
    if timescale == 0 {
        return Err("media timescale is 0".into());
    }

    let stbl = child(child(mdia, b"minf")?, b"stbl")?;
    let (width, height, sps, pps) = read_sample_description(child(stbl, b"stsd")?)?;

    let sizes = read_sample_sizes(child(stbl, b"stsz")?)?;
    let count = sizes.len();
    let sample_durations = read_durations(child(stbl, b"stts")?, count)?;
    let chunk_offsets = match optional_child(stbl, b"stco")? {
        Some(stco) => read_table(stco, |c| c.u32().map(u64::from))?,
        None => read_table(child(stbl, b"co64")?, |c| c.u64())?,
    };
    let stsc = read_table(child(stbl, b"stsc")?, |c| {
        Ok((c.u32()?, c.u32()?, c.u32()?))
    })?;
    let offsets = sample_offsets(&sizes, &chunk_offsets, &stsc)?;
    let keyframes = match optional_child(stbl, b"stss")? {
        // No stss: every sample is a sync sample.
        None => vec![true; count],
        Some(stss) => {
            let mut keys = vec![false; count];
            for n in read_table(stss, |c| c.u32())? {
                *keys
                    .get_mut((n as usize).wrapping_sub(1))
                    .ok_or(format!("stss names sample {n} of {count}"))? = true;
            }
            keys
        }
    };
    let samples = offsets
        .iter()
        .zip(&sizes)
        .map(|(&offset, &size)| {
            let end = offset
                .checked_add(u64::from(size))
                .filter(|&e| e <= file.len() as u64);
            end.map(|end| file[offset as usize..end as usize].to_vec())
                .ok_or_else(|| format!("sample at {offset} (+{size}) is outside the file"))
        })
        .collect::<Parse<Vec<_>>>()?;
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

/// `stsd` → coded size and the SPS/PPS of its `avc1` entry.
fn read_sample_description(stsd: &[u8]) -> Parse<(u32, u32, Vec<u8>, Vec<u8>)> {
    let mut c = Cursor::new(stsd);
    c.full_box_header()?;
    c.u32()?; // entry count
    let entries = children(&stsd[c.pos..])?;
    let (kind, avc1) = entries.first().ok_or("empty stsd")?;
    if !matches!(kind, b"avc1" | b"avc3") {
        return Err(format!(
            "codec '{}' is not H.264",
            String::from_utf8_lossy(kind)
        ));
    }
    let mut c = Cursor::new(avc1);
    c.bytes(24)?;
    let width = u32::from(c.u16()?);
    let height = u32::from(c.u16()?);
    c.bytes(50)?; // resolution, frame count, compressor name, depth, pre_defined
    let mut avcc = Cursor::new(child(&avc1[c.pos..], b"avcC")?);
    avcc.bytes(4)?; // version, profile, compatibility, level
    if avcc.u8()? & 3 != 3 {
        return Err("only 4-byte NAL lengths are supported".into());
    }
    let sps_count = avcc.u8()? & 0x1f;
    if sps_count == 0 {
        return Err("avcC has no SPS".into());
    }
    let len = avcc.u16()? as usize;
    let sps = avcc.bytes(len)?.to_vec();
    for _ in 1..sps_count {
        let len = avcc.u16()? as usize;
        avcc.bytes(len)?;
    }
    if avcc.u8()? == 0 {
        return Err("avcC has no PPS".into());
    }
    let len = avcc.u16()? as usize;
    let pps = avcc.bytes(len)?.to_vec();
    Ok((width, height, sps, pps))
}

fn read_sample_sizes(stsz: &[u8]) -> Parse<Vec<u32>> {
    let mut c = Cursor::new(stsz);
    c.full_box_header()?;
    let uniform = c.u32()?;
    let count = c.u32()? as usize;
    if uniform != 0 {
        return Ok(vec![uniform; count]);
    }
    if count > stsz.len() / 4 {
        return Err(format!("stsz claims {count} samples"));
    }
    (0..count).map(|_| c.u32()).collect()
}

fn read_durations(stts: &[u8], samples: usize) -> Parse<Vec<u32>> {
    let mut out = Vec::with_capacity(samples);
    for (count, delta) in read_table(stts, |c| Ok((c.u32()?, c.u32()?)))? {
        let take = (count as usize).min(samples - out.len());
        out.extend(std::iter::repeat_n(delta, take));
    }
    if out.len() != samples {
        return Err(format!("stts covers {} of {samples} samples", out.len()));
    }
    Ok(out)
}

/// A full box holding a u32 entry count and that many entries.
fn read_table<T>(body: &[u8], mut entry: impl FnMut(&mut Cursor) -> Parse<T>) -> Parse<Vec<T>> {
    let mut c = Cursor::new(body);
    c.full_box_header()?;
    let count = c.u32()? as usize;
    if count > body.len() {
        return Err(format!(
            "table claims {count} entries in {} bytes",
            body.len()
        ));
    }
    (0..count).map(|_| entry(&mut c)).collect()
}

/// File offset of every sample from the chunk offsets and the sample-to-chunk runs.
fn sample_offsets(sizes: &[u32], chunks: &[u64], stsc: &[(u32, u32, u32)]) -> Parse<Vec<u64>> {
    let mut offsets = Vec::with_capacity(sizes.len());
    for (chunk_index, &chunk_offset) in chunks.iter().enumerate() {
        let chunk_number = chunk_index as u32 + 1;
        // The run that applies is the last one starting at or before this chunk.
        let per_chunk = stsc
            .iter()
            .take_while(|(first, _, _)| *first <= chunk_number)
            .last()
            .map(|&(_, n, _)| n as usize)
            .ok_or("stsc does not cover chunk 1")?;
        let mut offset = chunk_offset;
        for _ in 0..per_chunk {
            let Some(&size) = sizes.get(offsets.len()) else {
                break;
            };
            offsets.push(offset);
            offset = offset.saturating_add(u64::from(size));
        }
    }
    if offsets.len() != sizes.len() {
        return Err(format!(
            "chunks hold {} of {} samples",
            offsets.len(),
            sizes.len()
        ));
    }
    Ok(offsets)
}
