//! Video files: write each format, read it back, and check frame count, size, fps and pixels.

use std::path::Path;

use candle_core::{Device, Tensor};
use vdit_pipeline::video::{
    check_writable, frames_from_tensor, png_frame_path, read_video, write_video, Replace,
    VideoError, VideoFormat, VideoFrames, VideoSink,
};

/// A test clip with smooth gradients and a moving disc, so both flat areas and edges are coded.
fn test_clip(width: u32, height: u32, frames: usize) -> VideoFrames {
    let (w, h) = (width as usize, height as usize);
    let frames = (0..frames)
        .map(|t| {
            let mut rgb = Vec::with_capacity(w * h * 3);
            let cx = 8.0 + t as f32 * (w as f32 - 16.0) / frames.max(2) as f32;
            let cy = h as f32 / 2.0;
            for y in 0..h {
                for x in 0..w {
                    let inside = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < 36.0;
                    if inside {
                        rgb.extend_from_slice(&[220, 40, 40]);
                    } else {
                        rgb.extend_from_slice(&[
                            (40 + x * 150 / w) as u8,
                            (60 + y * 120 / h) as u8,
                            (90 + (t * 5) % 60) as u8,
                        ]);
                    }
                }
            }
            rgb
        })
        .collect();
    VideoFrames::new(width, height, frames).unwrap()
}

/// PSNR over the region both videos share (the mp4 may be padded by one column/row).
fn psnr_on_overlap(a: &VideoFrames, b: &VideoFrames) -> f64 {
    let (w, h) = (
        a.width.min(b.width) as usize,
        a.height.min(b.height) as usize,
    );
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (fa, fb) in a.frames.iter().zip(&b.frames) {
        for y in 0..h {
            for x in 0..w * 3 {
                let d = fa[y * a.width as usize * 3 + x] as f64
                    - fb[y * b.width as usize * 3 + x] as f64;
                sum += d * d;
                n += 1;
            }
        }
    }
    10.0 * (255.0f64 * 255.0 / (sum / n as f64)).log10()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn mp4_round_trip_keeps_count_size_fps_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let clip = test_clip(64, 48, 17);
    let written = write_video(&path, &clip, 16).unwrap();
    assert_eq!(written, vec![path.clone()]);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp");

    let back = read_video(&path).unwrap();
    assert_eq!(back.video.frame_count(), 17);
    assert_eq!((back.video.width, back.video.height), (64, 48));
    assert!((back.fps - 16.0).abs() < 1e-9, "fps {}", back.fps);
    // H.264 at QP <= 32 on a smooth synthetic clip: well above 30 dB.
    let psnr = psnr_on_overlap(&clip, &back.video);
    eprintln!("mp4 round trip PSNR {psnr:.2} dB, {} bytes", bytes.len());
    assert!(psnr > 30.0, "PSNR {psnr}");
    // No temporary file is left behind next to the output, and the file is not private.
    assert_eq!(files_in(dir.path()), vec!["clip.mp4"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
    }
}

#[test]
fn mp4_demuxer_reads_the_sample_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_video(&path, &test_clip(32, 32, 40), 10).unwrap();
    let track = vdit_pipeline::video::mp4::demux(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(track.samples.len(), 40);
    assert_eq!(track.timescale, 10_000);
    assert!(track.sample_durations.iter().all(|&d| d == 1000));
    // Each group of pictures (2 s: 20 frames at 10 fps) starts with an IDR picture, and only
    // those are keyframes.
    let keyframes: Vec<usize> = (0..40).filter(|&i| track.keyframes[i]).collect();
    assert_eq!(keyframes, vec![0, 20]);
    assert_eq!(track.sps[0] & 0x1f, 7);
    assert_eq!(track.pps[0] & 0x1f, 8);
    assert!((track.fps() - 10.0).abs() < 1e-9);
}

#[test]
fn mp4_pads_odd_sizes_to_even() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let clip = test_clip(33, 21, 3);
    write_video(&path, &clip, 16).unwrap();
    let back = read_video(&path).unwrap();
    assert_eq!((back.video.width, back.video.height), (34, 22));
    assert_eq!(back.video.frame_count(), 3);
    let psnr = psnr_on_overlap(&clip, &back.video);
    eprintln!("odd-size mp4 PSNR {psnr:.2} dB");
    // Lower than the 64x48 clip: on a 33x21 frame the saturated disc's edges, where 4:2:0 chroma
    // subsampling blurs colour, are a large share of the pixels (measured 26.2 dB).
    assert!(psnr > 24.0, "PSNR {psnr}");
}

#[test]
fn gif_round_trip_keeps_count_size_and_duration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.gif");
    let clip = test_clip(40, 30, 17);
    write_video(&path, &clip, 16).unwrap();
    let back = read_video(&path).unwrap();
    assert_eq!(back.video.frame_count(), 17);
    assert_eq!((back.video.width, back.video.height), (40, 30));
    // 17 frames at 16 fps last round(106.25) = 106 cs: 16.04 fps.
    assert!(
        (back.fps - 17.0 * 100.0 / 106.0).abs() < 1e-9,
        "fps {}",
        back.fps
    );
    // A 256-colour palette per frame on smooth gradients: measured 30.6 dB.
    let psnr = psnr_on_overlap(&clip, &back.video);
    eprintln!("gif round trip PSNR {psnr:.2} dB");
    assert!(psnr > 28.0, "PSNR {psnr}");
}

#[test]
fn png_sequence_round_trip_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let clip = test_clip(20, 12, 3);
    let written = write_video(&path, &clip, 24).unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(
        files_in(dir.path()),
        vec!["out_00000.png", "out_00001.png", "out_00002.png"]
    );
    assert_eq!(png_frame_path(&path, 7), dir.path().join("out_00007.png"));
    let back = read_video(&path).unwrap();
    assert_eq!(back.video, clip);
    assert_eq!(back.fps, 24.0);
}

/// An existing file vdit did not write is refused and left as it was; one its sidecar lists is
/// replaced (tests/no_data_loss.rs has the other cases).
#[test]
fn existing_output_is_replaced_only_if_vdit_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.gif");
    std::fs::write(&path, b"old contents").unwrap();
    let err = write_video(&path, &test_clip(16, 16, 2), 16).unwrap_err();
    assert!(matches!(err, VideoError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    assert_eq!(files_in(dir.path()), vec!["clip.gif"]);

    std::fs::write(
        dir.path().join("clip.gif.json"),
        r#"{"vdit_version": "0.1.0", "files": ["clip.gif"]}"#,
    )
    .unwrap();
    write_video(&path, &test_clip(16, 16, 2), 16).unwrap();
    assert_eq!(read_video(&path).unwrap().video.frame_count(), 2);
    assert_eq!(files_in(dir.path()), vec!["clip.gif", "clip.gif.json"]);
}

#[test]
fn check_writable_reports_bad_paths_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        check_writable(&dir.path().join("a.mp4")).unwrap(),
        VideoFormat::Mp4
    );
    assert_eq!(
        check_writable(&dir.path().join("a.GIF")).unwrap(),
        VideoFormat::Gif
    );
    assert_eq!(
        check_writable(&dir.path().join("a.png")).unwrap(),
        VideoFormat::PngSequence
    );
    assert_eq!(
        files_in(dir.path()),
        Vec::<String>::new(),
        "the probe file must be removed"
    );

    let err = check_writable(&dir.path().join("a.avi")).unwrap_err();
    assert!(matches!(err, VideoError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains(".mp4, .gif or .png"), "{err}");

    let err = check_writable(&dir.path().join("missing/a.mp4")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let as_dir = dir.path().join("x.mp4");
    std::fs::create_dir(&as_dir).unwrap();
    let err = check_writable(&as_dir).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    // The same error from the writer itself.
    let err = write_video(&dir.path().join("missing/a.gif"), &test_clip(8, 8, 1), 16).unwrap_err();
    assert!(matches!(err, VideoError::Io { .. }), "{err}");
}

/// A directory nobody can create files in, root included (so the test means something in CI
/// containers that run as root, where permission bits are ignored): /proc.
#[cfg(target_os = "linux")]
#[test]
fn check_writable_rejects_a_directory_without_write_access() {
    let err = check_writable(Path::new("/proc/vdit-test.mp4")).unwrap_err();
    assert!(matches!(err, VideoError::NotWritable { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot create a file in /proc"),
        "{err}"
    );
}

#[test]
fn invalid_frames_and_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let short = VideoFrames {
        width: 4,
        height: 4,
        frames: vec![vec![0; 47]],
    };
    let err = write_video(&dir.path().join("a.mp4"), &short, 16).unwrap_err();
    assert!(
        err.to_string()
            .contains("frame 0 has 47 bytes, expected 48"),
        "{err}"
    );
    let empty = VideoFrames {
        width: 4,
        height: 4,
        frames: vec![],
    };
    assert!(write_video(&dir.path().join("a.gif"), &empty, 16).is_err());
    assert!(write_video(&dir.path().join("a.gif"), &test_clip(8, 8, 1), 0).is_err());
    let err = write_video(&dir.path().join("a.mp4"), &test_clip(8, 8, 1), 1001).unwrap_err();
    assert!(
        err.to_string().contains("fps 1001 is outside 1..=1000"),
        "{err}"
    );

    let bad = dir.path().join("bad.mp4");
    std::fs::write(&bad, b"\0\0\0\x10ftypisom\0\0\0\0garbage").unwrap();
    let err = read_video(&bad).unwrap_err();
    assert!(matches!(err, VideoError::Malformed { .. }), "{err}");
    let bad = dir.path().join("bad.gif");
    std::fs::write(&bad, b"GIF89a").unwrap();
    assert!(matches!(
        read_video(&bad).unwrap_err(),
        VideoError::Malformed { .. }
    ));
    let err = read_video(&dir.path().join("none.png")).unwrap_err();
    assert!(err.to_string().contains("none_00000.png"), "{err}");
}

#[test]
fn frames_from_tensor_maps_minus_one_one_to_bytes() {
    // [3, T=2, H=1, W=3]; channel c, time t, column x.
    let values: Vec<f32> = vec![
        -1.0,
        0.0,
        1.0,
        /* r t0 */ -2.0,
        2.0,
        0.5, /* r t1 */
        0.0,
        0.0,
        0.0,
        /* g t0 */ -0.5,
        f32::NAN,
        1.0, /* g t1 */
        1.0,
        -1.0,
        0.25,
        /* b t0 */ 0.0,
        0.0,
        0.0, /* b t1 */
    ];
    let video = Tensor::from_vec(values, (3, 2, 1, 3), &Device::Cpu).unwrap();
    let frames = frames_from_tensor(&video).unwrap();
    assert_eq!(
        (frames.width, frames.height, frames.frame_count()),
        (3, 1, 2)
    );
    // (x + 1) / 2 * 255, rounded: 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191, 0.25 -> 159.375 -> 159.
    assert_eq!(
        frames.frames[0],
        vec![0, 128, 255, 128, 128, 0, 255, 128, 159]
    );
    assert_eq!(
        frames.frames[1],
        vec![0, 64, 128, 255, 0, 128, 191, 255, 128]
    );

    let batched = video.unsqueeze(0).unwrap();
    assert_eq!(frames_from_tensor(&batched).unwrap(), frames);
    let wrong = Tensor::zeros((4, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = frames_from_tensor(&wrong).unwrap_err();
    assert!(err.to_string().contains("expected [3, T, H, W]"), "{err}");
}

/// Independent check with a real ffmpeg: it must demux and decode our mp4 without a single error and
/// see the size, frame rate and frame count we wrote. Needs an ffmpeg binary, so it is ignored by
/// default: `FFMPEG=/path/to/ffmpeg cargo test --workspace --release --test video_io -- --ignored`.
#[test]
#[ignore = "needs an ffmpeg binary in $FFMPEG"]
fn ffmpeg_decodes_our_mp4() {
    let ffmpeg = std::env::var("FFMPEG").expect("set FFMPEG to an ffmpeg binary");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let clip = test_clip(96, 64, 33);
    write_video(&path, &clip, 16).unwrap();
    let probe = std::process::Command::new(&ffmpeg)
        .args(["-hide_banner", "-i"])
        .arg(&path)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&probe.stderr);
    assert!(
        info.contains("h264") && info.contains("96x64") && info.contains("16 fps"),
        "{info}"
    );
    let decode = std::process::Command::new(&ffmpeg)
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
    assert_eq!(decode.stdout.len(), 33 * 96 * 64 * 3);
    let decoded = VideoFrames::new(
        96,
        64,
        decode
            .stdout
            .chunks_exact(96 * 64 * 3)
            .map(<[u8]>::to_vec)
            .collect(),
    )
    .unwrap();
    let psnr = psnr_on_overlap(&clip, &decoded);
    eprintln!("ffmpeg-decoded PSNR {psnr:.2} dB");
    assert!(psnr > 28.0, "PSNR {psnr}");
}

/// Our reader on a file it did not write: libx264 Constrained Baseline muxed by ffmpeg (moov after
/// mdat, edit list, SEI), compared with ffmpeg's own decode (scripts/reference/gen_video_fixtures.py).
#[test]
fn reads_an_mp4_muxed_by_ffmpeg() {
    #[derive(serde::Deserialize)]
    struct Meta {
        width: u32,
        height: u32,
        fps: f64,
        frames: usize,
    }
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/video"
    ));
    let meta: Meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ffmpeg_baseline.json")).unwrap())
            .unwrap();
    let ours = read_video(&dir.join("ffmpeg_baseline.mp4")).unwrap();
    assert_eq!(
        (ours.video.width, ours.video.height),
        (meta.width, meta.height)
    );
    assert_eq!(ours.video.frame_count(), meta.frames);
    assert!((ours.fps - meta.fps).abs() < 1e-9, "fps {}", ours.fps);

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.join("ffmpeg_baseline_decoded.png")).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut strip = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut strip).unwrap();
    let frame_len = (meta.width * meta.height * 3) as usize;
    let reference = VideoFrames::new(
        meta.width,
        meta.height,
        strip.chunks_exact(frame_len).map(<[u8]>::to_vec).collect(),
    )
    .unwrap();
    // Same bitstream, two decoders: only the YUV->RGB conversions differ (measured 49.6 dB).
    let psnr = psnr_on_overlap(&reference, &ours.video);
    assert!(psnr > 40.0, "PSNR {psnr}");
}

/// The reader must turn any damaged file into an error, never a panic (the `mp4` crate's panics are
/// caught; their messages may still print).
#[test]
fn damaged_mp4_files_never_panic_the_demuxer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_video(&path, &test_clip(32, 32, 4), 16).unwrap();
    let good = std::fs::read(&path).unwrap();
    assert!(vdit_pipeline::video::mp4::demux(&good).is_ok());
    let mut rejected = 0;
    for cut in (0..good.len()).step_by(7) {
        rejected += vdit_pipeline::video::mp4::demux(&good[..cut]).is_err() as usize;
    }
    // Every cut loses samples or boxes: all truncations must be rejected.
    assert_eq!(rejected, good.len().div_ceil(7));
    // Corrupt every byte of the boxes (the sample table follows the media data) in turn, with a few
    // patterns.
    let moov = good.windows(4).position(|w| w == b"moov").unwrap() - 4;
    for i in (0..32).chain(moov..good.len()) {
        for value in [0x00, 0xff, 0x7f, good[i] ^ 0x01] {
            let mut bad = good.clone();
            bad[i] = value;
            let _ = vdit_pipeline::video::mp4::demux(&bad);
        }
    }
}

/// Timing, not a check: `write_video` of 81 frames of 832x480 (a Wan2.1 480p clip), release build:
/// `cargo test --release -p vdit --test video_io -- --ignored --nocapture time_`.
#[test]
#[ignore = "timing only"]
fn time_write_video_81_frames_832x480() {
    let dir = tempfile::tempdir().unwrap();
    let clip = test_clip(832, 480, 81);
    for run in 0..2 {
        let path = dir.path().join(format!("t{run}.mp4"));
        let start = std::time::Instant::now();
        write_video(&path, &clip, 16).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&path).unwrap().len();
        eprintln!("write_video 81x832x480 mp4: {secs:.3} s, {bytes} bytes");
    }
}

/// `clip`'s frames in chunks of the given sizes, cycling (e.g. the VAE's 1 then 4, 4, ...).
fn chunks_of(clip: &VideoFrames, sizes: &[usize]) -> Vec<VideoFrames> {
    let mut out = Vec::new();
    let mut start = 0;
    for &n in sizes.iter().cycle() {
        if start >= clip.frames.len() {
            break;
        }
        let end = (start + n).min(clip.frames.len());
        out.push(
            VideoFrames::new(clip.width, clip.height, clip.frames[start..end].to_vec()).unwrap(),
        );
        start = end;
    }
    out
}

#[test]
fn streaming_in_chunks_writes_the_same_files_as_write_video() {
    let dir = tempfile::tempdir().unwrap();
    let clip = test_clip(48, 32, 13);
    for ext in ["mp4", "gif", "png"] {
        let whole = dir.path().join(format!("whole.{ext}"));
        let whole_files = write_video(&whole, &clip, 16).unwrap();
        for sizes in [&[1usize][..], &[1, 4], &[3, 2]] {
            let name = format!("chunked_{}.{ext}", sizes.len() * 10 + sizes[0]);
            let streamed = dir.path().join(&name);
            let mut sink = VideoSink::create(&streamed, 16).unwrap();
            assert_eq!(sink.format(), VideoFormat::from_path(&streamed).unwrap());
            for chunk in chunks_of(&clip, sizes) {
                sink.push(chunk).unwrap();
            }
            assert_eq!(sink.frames_pushed(), 13);
            let streamed_files = sink.finish().unwrap();
            assert_eq!(streamed_files.len(), whole_files.len());
            // Same encoder settings, same frames: byte-identical files (openh264 runs one thread).
            for (a, b) in whole_files.iter().zip(&streamed_files) {
                assert!(
                    std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
                    "{} differs from {}",
                    b.display(),
                    a.display()
                );
            }
        }
    }
    let back = read_video(&dir.path().join("chunked_11.mp4")).unwrap();
    assert_eq!(back.video.frame_count(), 13);
    // A 48x32 clip: the disc's edges are a large share of the pixels (measured 30.0 dB).
    let psnr = psnr_on_overlap(&clip, &back.video);
    eprintln!("streamed 48x32 mp4 PSNR {psnr:.2} dB");
    assert!(psnr > 25.0, "PSNR {psnr}");
}

#[test]
fn an_encoder_error_in_the_thread_is_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.mp4");
    std::fs::write(&path, b"what was there before").unwrap();
    // 3842 columns is more than H.264 level 5.2 allows: the encoder thread refuses it when it creates
    // the encoder for the first frame, after `push` has returned.
    let wide = VideoFrames::new(3842, 2, vec![vec![0; 3842 * 2 * 3]; 2]).unwrap();
    // --overwrite: the file may be replaced, but only by a finished video.
    let mut sink = VideoSink::create_replacing(&path, 16, Replace::Always).unwrap();
    let mut errors = Vec::new();
    for _ in 0..20 {
        if let Err(e) = sink.push(wide.clone()) {
            errors.push(e);
            break;
        }
    }
    errors.extend(sink.finish().err());
    let first = errors.first().expect("the encoder error must surface");
    assert!(first.to_string().contains("level 5.2"), "{first}");
    // Whatever failed, the old file is untouched and no temporary file is left.
    assert_eq!(std::fs::read(&path).unwrap(), b"what was there before");
    assert_eq!(files_in(dir.path()), vec!["wide.mp4"]);

    // A chunk of another size is refused at once.
    let mut sink = VideoSink::create(&dir.path().join("b.mp4"), 16).unwrap();
    sink.push(test_clip(16, 16, 1)).unwrap();
    let err = sink.push(test_clip(18, 16, 1)).unwrap_err();
    assert!(
        err.to_string().contains("18x16 frames after 16x16"),
        "{err}"
    );
    // No frames at all is an error too.
    let err = VideoSink::create(&dir.path().join("c.gif"), 16)
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(err.to_string().contains("no frames"), "{err}");
}

#[test]
fn a_dropped_sink_leaves_no_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.mp4");
    std::fs::write(&kept, b"earlier video").unwrap();
    for name in ["new.mp4", "kept.mp4", "new.gif", "new.png"] {
        // --overwrite: kept.mp4 may be replaced, but only by a finished video.
        let mut sink =
            VideoSink::create_replacing(&dir.path().join(name), 16, Replace::Always).unwrap();
        for chunk in chunks_of(&test_clip(32, 32, 9), &[1, 4]) {
            sink.push(chunk).unwrap();
        }
        drop(sink);
        // `drop` waits for the encoder thread, so the temporary file is already gone.
        assert_eq!(files_in(dir.path()), vec!["kept.mp4"], "after {name}");
    }
    assert_eq!(std::fs::read(&kept).unwrap(), b"earlier video");
}

#[test]
fn the_sink_checks_the_path_before_any_frame() {
    let dir = tempfile::tempdir().unwrap();
    let err = VideoSink::create(&dir.path().join("missing/a.mp4"), 16).unwrap_err();
    assert!(matches!(err, VideoError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing/a.mp4"), "{err}");
    let as_dir = dir.path().join("x.mp4");
    std::fs::create_dir(&as_dir).unwrap();
    let err = VideoSink::create(&as_dir, 16).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(matches!(
        VideoSink::create(&dir.path().join("a.avi"), 16).unwrap_err(),
        VideoError::UnknownFormat { .. }
    ));
    let err = VideoSink::create(&dir.path().join("a.mp4"), 0).unwrap_err();
    assert!(err.to_string().contains("fps 0 is outside"), "{err}");
    assert_eq!(files_in(dir.path()), vec!["x.mp4"]);
}

/// Timing, not a check: the time the caller spends inside `push` while a producer hands over 81
/// frames of 832x480 in the VAE's chunks (1, then 4 at a time), with and without a pause between
/// chunks standing for the decode of the next chunk.
#[test]
#[ignore = "timing only"]
fn time_streaming_push_81_frames_832x480() {
    let dir = tempfile::tempdir().unwrap();
    let clip = test_clip(832, 480, 81);
    for decode_ms in [0u64, 150] {
        let path = dir.path().join(format!("s{decode_ms}.mp4"));
        let chunks = chunks_of(
            &clip,
            &[
                1, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
            ],
        );
        let start = std::time::Instant::now();
        let mut sink = VideoSink::create(&path, 16).unwrap();
        let mut in_push = std::time::Duration::ZERO;
        let mut longest = std::time::Duration::ZERO;
        for chunk in chunks {
            std::thread::sleep(std::time::Duration::from_millis(decode_ms));
            let t = std::time::Instant::now();
            sink.push(chunk).unwrap();
            in_push += t.elapsed();
            longest = longest.max(t.elapsed());
        }
        let t = std::time::Instant::now();
        sink.finish().unwrap();
        let in_finish = t.elapsed();
        eprintln!(
            "stream 81x832x480 mp4, {decode_ms} ms between chunks: total {:.3} s, in push {:.4} s \
             (longest {:.4} s), in finish {:.3} s",
            start.elapsed().as_secs_f64(),
            in_push.as_secs_f64(),
            longest.as_secs_f64(),
            in_finish.as_secs_f64()
        );
    }
}
