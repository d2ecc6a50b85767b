//! The prompt-faithfulness analyser on clips rendered here: discs and squares of the palette moving
//! over plain and textured backgrounds, with and without noise, including clips that must fail.

use vdit_pipeline::eval::{
    accuracy, analyse, parse_caption, score, AnalyserConfig, Background, Motion, PaletteColour,
    Score,
};
use vdit_pipeline::video::VideoFrames;

const SIZE: usize = 128;
const FRAMES: usize = 17;

#[derive(Clone, Copy)]
enum Shape {
    Disc,
    Square,
}

#[derive(Clone, Copy)]
struct Object {
    shape: Shape,
    colour: [u8; 3],
    /// Centre and radius (half side) at the first and the last frame; linear in between.
    start: (f32, f32, f32),
    end: (f32, f32, f32),
}

#[derive(Clone, Copy)]
enum Backdrop {
    Plain([u8; 3]),
    Stripes([u8; 3], [u8; 3]),
    Checker([u8; 3], [u8; 3]),
}

fn lerp(a: f32, b: f32, s: f32) -> f32 {
    a + (b - a) * s
}

/// Renders `objects` over `backdrop`; `noise` adds a deterministic ±noise per channel.
fn render(objects: &[Object], backdrop: Backdrop, noise: i32) -> VideoFrames {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next_noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if noise == 0 {
            0
        } else {
            (state % (2 * noise as u64 + 1)) as i32 - noise
        }
    };
    let frames = (0..FRAMES)
        .map(|t| {
            let s = t as f32 / (FRAMES - 1) as f32;
            let mut rgb = Vec::with_capacity(SIZE * SIZE * 3);
            for y in 0..SIZE {
                for x in 0..SIZE {
                    let mut px = match backdrop {
                        Backdrop::Plain(c) => c,
                        Backdrop::Stripes(a, b) => {
                            if (x / 8) % 2 == 0 {
                                a
                            } else {
                                b
                            }
                        }
                        Backdrop::Checker(a, b) => {
                            if (x / 8 + y / 8) % 2 == 0 {
                                a
                            } else {
                                b
                            }
                        }
                    };
                    for o in objects {
                        let cx = lerp(o.start.0, o.end.0, s);
                        let cy = lerp(o.start.1, o.end.1, s);
                        let r = lerp(o.start.2, o.end.2, s);
                        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                        let inside = match o.shape {
                            Shape::Disc => dx * dx + dy * dy <= r * r,
                            Shape::Square => dx.abs() <= r && dy.abs() <= r,
                        };
                        if inside {
                            px = o.colour;
                        }
                    }
                    rgb.extend(px.map(|c| (c as i32 + next_noise()).clamp(0, 255) as u8));
                }
            }
            rgb
        })
        .collect();
    VideoFrames::new(SIZE as u32, SIZE as u32, frames).unwrap()
}

fn disc(colour: PaletteColour, start: (f32, f32, f32), end: (f32, f32, f32)) -> Object {
    Object {
        shape: Shape::Disc,
        colour: colour.rgb(),
        start,
        end,
    }
}

/// A single object of `colour` doing `motion`, from the middle of the frame.
fn moving(colour: PaletteColour, motion: Motion) -> Object {
    let c = SIZE as f32 / 2.0;
    let (start, end) = match motion {
        Motion::Left => ((c + 30.0, c, 12.0), (c - 30.0, c, 12.0)),
        Motion::Right => ((c - 30.0, c, 12.0), (c + 30.0, c, 12.0)),
        Motion::Up => ((c, c + 30.0, 12.0), (c, c - 30.0, 12.0)),
        Motion::Down => ((c, c - 30.0, 12.0), (c, c + 30.0, 12.0)),
        Motion::Growing => ((c, c, 8.0), (c, c, 20.0)),
        Motion::Shrinking => ((c, c, 20.0), (c, c, 8.0)),
        Motion::Still => ((c, c, 12.0), (c, c, 12.0)),
    };
    disc(colour, start, end)
}

const MUTED_A: [u8; 3] = [120, 112, 100];
const MUTED_B: [u8; 3] = [150, 140, 128];
const ALL_OK: Score = Score {
    colour_ok: true,
    motion_ok: true,
    count_ok: true,
};

#[test]
fn a_red_disc_moving_right_on_blue_passes() {
    let clip = render(
        &[moving(PaletteColour::Red, Motion::Right)],
        Backdrop::Plain(PaletteColour::Blue.rgb()),
        0,
    );
    let analysis = analyse(&clip, &AnalyserConfig::default()).unwrap();
    assert_eq!(analysis.object_count, 1);
    let object = &analysis.objects[0];
    assert_eq!(object.colour, PaletteColour::Red);
    assert_eq!(object.motion, Motion::Right);
    assert_eq!(
        (object.first_frame, object.last_frame, object.sightings),
        (0, FRAMES - 1, FRAMES)
    );
    // Centroid travels 60 px to the right.
    let dx = object.last.centroid.0 - object.first.centroid.0;
    assert!((dx - 60.0).abs() < 1.0, "dx {dx}");
    assert_eq!(analysis.background.len(), 1);
    let bg = analysis.background[0];
    assert_eq!(bg, PaletteColour::Blue.rgb().map(f64::from));
    let caption = "a red circle moving right on a blue background";
    assert_eq!(score(caption, &clip).unwrap(), ALL_OK);
}

#[test]
fn every_colour_and_motion_is_recognised_on_every_background() {
    let motions = [
        Motion::Left,
        Motion::Right,
        Motion::Up,
        Motion::Down,
        Motion::Growing,
        Motion::Shrinking,
        Motion::Still,
    ];
    let mut scores = Vec::new();
    for (i, colour) in PaletteColour::ALL.into_iter().enumerate() {
        let motion = motions[i % motions.len()];
        // A plain background of another palette colour, and both textures.
        let plain = PaletteColour::ALL[(i + 3) % 8];
        for (backdrop, words) in [
            (
                Backdrop::Plain(plain.rgb()),
                format!("on a {plain} background"),
            ),
            (
                Backdrop::Stripes(MUTED_A, MUTED_B),
                "on a textured background".to_string(),
            ),
            (
                Backdrop::Checker(MUTED_B, MUTED_A),
                "on a textured background".to_string(),
            ),
        ] {
            let clip = render(&[moving(colour, motion)], backdrop, 0);
            let caption = format!("a {colour} circle {motion} {words}");
            let got = score(&caption, &clip).unwrap();
            assert_eq!(
                got,
                ALL_OK,
                "{caption}: {:?}",
                analyse(&clip, &AnalyserConfig::default()).unwrap().objects
            );
            scores.push(got);
        }
    }
    let acc = accuracy(&scores);
    assert_eq!(
        (acc.clips, acc.colour, acc.motion, acc.count),
        (24, 1.0, 1.0, 1.0)
    );
}

#[test]
fn noise_does_not_change_the_verdict() {
    for (colour, motion) in [
        (PaletteColour::Yellow, Motion::Down),
        (PaletteColour::Purple, Motion::Shrinking),
    ] {
        let clip = render(
            &[moving(colour, motion)],
            Backdrop::Checker(MUTED_A, MUTED_B),
            20,
        );
        let caption = format!("a {colour} square {motion} on a textured background");
        assert_eq!(score(&caption, &clip).unwrap(), ALL_OK, "{caption}");
    }
}

#[test]
fn two_objects_are_counted_coloured_and_tracked() {
    let objects = [
        disc(PaletteColour::Red, (90.0, 40.0, 10.0), (40.0, 40.0, 10.0)),
        Object {
            shape: Shape::Square,
            colour: PaletteColour::Blue.rgb(),
            start: (40.0, 100.0, 9.0),
            end: (40.0, 70.0, 9.0),
        },
    ];
    let clip = render(&objects, Backdrop::Plain(PaletteColour::Black.rgb()), 0);
    let analysis = analyse(&clip, &AnalyserConfig::default()).unwrap();
    assert_eq!(analysis.object_count, 2);
    let caption = "a red circle moving left and a blue square moving up on a black background";
    assert_eq!(score(caption, &clip).unwrap(), ALL_OK);
    // The order of objects in the caption does not matter.
    let swapped = "a blue square moving up and a red circle moving left";
    assert_eq!(score(swapped, &clip).unwrap(), ALL_OK);
    // Right objects, wrong motion for one of them.
    let wrong = "a red circle moving left and a blue square moving down";
    let got = score(wrong, &clip).unwrap();
    assert_eq!(
        got,
        Score {
            colour_ok: true,
            motion_ok: false,
            count_ok: true
        }
    );
}

#[test]
fn wrong_colour_is_detected() {
    let clip = render(
        &[moving(PaletteColour::Red, Motion::Left)],
        Backdrop::Plain(PaletteColour::White.rgb()),
        0,
    );
    let got = score("a green circle moving left on a white background", &clip).unwrap();
    // The red disc is still found and still moves left: only the colour check fails.
    assert_eq!(
        got,
        Score {
            colour_ok: false,
            motion_ok: true,
            count_ok: true
        }
    );
    // Orange and red are neighbours in the palette: they must still be told apart.
    let got = score("an orange circle moving left", &clip).unwrap();
    assert!(!got.colour_ok);
}

#[test]
fn wrong_motion_and_wrong_count_are_detected() {
    let clip = render(
        &[moving(PaletteColour::Green, Motion::Up)],
        Backdrop::Stripes(MUTED_A, MUTED_B),
        0,
    );
    let got = score(
        "a green triangle moving down on a textured background",
        &clip,
    )
    .unwrap();
    assert_eq!(
        got,
        Score {
            colour_ok: true,
            motion_ok: false,
            count_ok: true
        }
    );
    let got = score("a green circle growing", &clip).unwrap();
    assert!(!got.motion_ok);
    let got = score(
        "a green circle moving up and a red square standing still",
        &clip,
    )
    .unwrap();
    assert_eq!(
        got,
        Score {
            colour_ok: false,
            motion_ok: false,
            count_ok: false
        }
    );
}

#[test]
fn an_empty_clip_fails_every_check() {
    let clip = render(&[], Backdrop::Plain(PaletteColour::Blue.rgb()), 10);
    let analysis = analyse(&clip, &AnalyserConfig::default()).unwrap();
    assert_eq!(analysis.object_count, 0);
    let got = score("a red circle moving left", &clip).unwrap();
    assert_eq!(
        got,
        Score {
            colour_ok: false,
            motion_ok: false,
            count_ok: false
        }
    );
}

#[test]
fn captions_parse_to_the_grammar() {
    let c = parse_caption(
        "A red circle moving left and an orange square growing on a black background.",
    )
    .unwrap();
    assert_eq!(c.objects.len(), 2);
    assert_eq!(
        (c.objects[0].colour, c.objects[0].motion),
        (PaletteColour::Red, Motion::Left)
    );
    assert_eq!(c.objects[0].shape, "circle");
    assert_eq!(
        (c.objects[1].colour, c.objects[1].motion),
        (PaletteColour::Orange, Motion::Growing)
    );
    assert_eq!(c.background, Background::Plain(PaletteColour::Black));
    let c = parse_caption("a white triangle standing still on a textured background").unwrap();
    assert_eq!(c.objects[0].motion, Motion::Still);
    assert_eq!(c.background, Background::Textured);
    let c = parse_caption("a yellow star shrinking").unwrap();
    assert_eq!(c.background, Background::Unspecified);

    for (bad, says) in [
        ("a pink circle moving left", "unknown colour 'pink'"),
        ("a red circle dancing", "unknown motion 'dancing'"),
        (
            "a red circle moving sideways",
            "unknown motion 'moving sideways'",
        ),
        (
            "red circle moving left",
            "expected 'a <colour> <shape> <motion>'",
        ),
        ("", "expected 'a <colour> <shape> <motion>'"),
        (
            "a red circle moving left on a plaid background",
            "unknown background colour 'plaid'",
        ),
        (
            "a red circle moving left and",
            "expected 'a <colour> <shape> <motion>'",
        ),
    ] {
        let err = parse_caption(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}

#[test]
fn bad_settings_and_frames_are_errors() {
    let clip = render(&[], Backdrop::Plain([0, 0, 0]), 0);
    let cfg = AnalyserConfig {
        growth_ratio: 0.5,
        ..AnalyserConfig::default()
    };
    assert!(analyse(&clip, &cfg).is_err());
    let broken = VideoFrames {
        width: 4,
        height: 4,
        frames: vec![vec![0; 5]],
    };
    assert!(score("a red circle moving left", &broken).is_err());
}

/// Box blur of radius `r` (a (2r+1)² window, clamped at the borders), separable: soft edges like
/// those of a generated clip.
fn box_blur(clip: &VideoFrames, r: usize) -> VideoFrames {
    let (w, h) = (clip.width as usize, clip.height as usize);
    let pass = |src: &[u8], along_x: bool| -> Vec<u8> {
        let mut out = vec![0u8; src.len()];
        for y in 0..h {
            for x in 0..w {
                let (lo, hi) = if along_x {
                    (x.saturating_sub(r), (x + r).min(w - 1))
                } else {
                    (y.saturating_sub(r), (y + r).min(h - 1))
                };
                for c in 0..3 {
                    let sum: u32 = (lo..=hi)
                        .map(|k| {
                            let (px, py) = if along_x { (k, y) } else { (x, k) };
                            u32::from(src[(py * w + px) * 3 + c])
                        })
                        .sum();
                    out[(y * w + x) * 3 + c] = (sum / (hi - lo + 1) as u32) as u8;
                }
            }
        }
        out
    };
    let frames = clip
        .frames
        .iter()
        .map(|f| pass(&pass(f, true), false))
        .collect();
    VideoFrames::new(clip.width, clip.height, frames).unwrap()
}

#[test]
fn blur_and_h264_compression_do_not_change_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    for (colour, motion, backdrop) in [
        (
            PaletteColour::Orange,
            Motion::Left,
            Backdrop::Stripes(MUTED_A, MUTED_B),
        ),
        (
            PaletteColour::Black,
            Motion::Growing,
            Backdrop::Plain(PaletteColour::Yellow.rgb()),
        ),
        (
            PaletteColour::White,
            Motion::Up,
            Backdrop::Checker(MUTED_A, MUTED_B),
        ),
    ] {
        let clip = box_blur(&render(&[moving(colour, motion)], backdrop, 8), 1);
        let path = dir.path().join("clip.mp4");
        // The same scratch file each time: replacing it is this test's own choice.
        let replace = vdit_pipeline::video::Replace::Always;
        vdit_pipeline::video::write_video_replacing(&path, &clip, 16, replace).unwrap();
        let decoded = vdit_pipeline::video::read_video(&path).unwrap().video;
        let caption = format!("a {colour} circle {motion}");
        assert_eq!(score(&caption, &decoded).unwrap(), ALL_OK, "{caption}");
    }
}

#[derive(serde::Deserialize)]
struct WorldClip {
    file: String,
    caption: String,
    frames: usize,
    size: usize,
}

/// Reads a PNG strip of `frames` square frames stacked vertically.
fn read_strip(path: &std::path::Path, frames: usize, size: usize) -> VideoFrames {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width as usize, info.height as usize),
        (size, size * frames)
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let frames = buf[..info.buffer_size()]
        .chunks_exact(size * size * 3)
        .map(<[u8]>::to_vec)
        .collect();
    VideoFrames::new(size as u32, size as u32, frames).unwrap()
}

fn training_world_clips(max_size: usize) -> Vec<(WorldClip, VideoFrames)> {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/eval_world"
    ));
    let clips: Vec<WorldClip> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("captions.json")).unwrap()).unwrap();
    clips
        .into_iter()
        .filter(|c| c.size <= max_size)
        .map(|c| {
            let video = read_strip(&dir.join(&c.file), c.frames, c.size);
            (c, video)
        })
        .collect()
}

/// Scores every clip with `transform` applied; returns the accuracy and a line per failing clip.
fn score_world(
    clips: &[(WorldClip, VideoFrames)],
    transform: impl Fn(&VideoFrames) -> VideoFrames,
) -> (vdit_pipeline::eval::Accuracy, Vec<String>) {
    let mut failures = Vec::new();
    let mut scores = Vec::new();
    for (clip, video) in clips {
        let video = transform(video);
        let got = score(&clip.caption, &video).unwrap();
        if got != ALL_OK {
            let analysis = analyse(&video, &AnalyserConfig::default()).unwrap();
            failures.push(format!(
                "{} {:?}: {got:?} {:?}",
                clip.file, clip.caption, analysis.objects
            ));
        }
        scores.push(got);
    }
    (accuracy(&scores), failures)
}

/// Clips rendered by the training world itself (scripts/train/world.py through
/// scripts/reference/gen_eval_world_fixtures.py): ground truth, so every check must pass.
#[test]
fn training_world_clips_score_perfectly() {
    let clips = training_world_clips(256);
    assert!(clips.len() >= 64);
    let (acc, failures) = score_world(&clips, VideoFrames::clone);
    eprintln!("training-world clips: {acc:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same clips blurred with a 9x9 box: far softer than the training data. Colours are measured on
/// the objects' cores, so they survive (a plain mean over the component turned 9 of 60 yellow/blue
/// objects orange/purple here).
#[test]
fn training_world_clips_survive_heavy_blur() {
    let clips = training_world_clips(128);
    let (acc, failures) = score_world(&clips, |v| box_blur(v, 4));
    eprintln!("training-world clips, 9x9 blur: {acc:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Frames `from..to` of `inner` spliced into `outer` (same size and length).
fn splice(outer: &VideoFrames, inner: &VideoFrames, from: usize, to: usize) -> VideoFrames {
    let mut frames = outer.frames.clone();
    frames[from..to].clone_from_slice(&inner.frames[from..to]);
    VideoFrames::new(outer.width, outer.height, frames).unwrap()
}

/// The broken RainFusion 0.8 clip of vdit-tiny v3 (scripts/gpu/results/cpu_compare_vdit-tiny-v3):
/// the circle moves right as captioned but collapses to half its area mid-clip and regrows. The
/// analyser used to pass it (it looked only at the ends); a shape that does not hold is not a
/// red circle moving right.
#[test]
fn a_shape_that_collapses_mid_clip_fails_motion() {
    let c = SIZE as f32 / 2.0;
    let whole = render(
        &[disc(
            PaletteColour::Red,
            (c - 30.0, c, 12.0),
            (c + 30.0, c, 12.0),
        )],
        Backdrop::Plain(PaletteColour::Yellow.rgb()),
        0,
    );
    // Same path, 0.7 of the radius (half the area) in the middle half of the clip.
    let collapsed = render(
        &[disc(
            PaletteColour::Red,
            (c - 30.0, c, 8.4),
            (c + 30.0, c, 8.4),
        )],
        Backdrop::Plain(PaletteColour::Yellow.rgb()),
        0,
    );
    let caption = "a red circle moving right on a yellow background";
    assert_eq!(score(caption, &whole).unwrap(), ALL_OK);
    let broken = splice(&whole, &collapsed, FRAMES / 4, 3 * FRAMES / 4);
    let s = score(caption, &broken).unwrap();
    assert!(s.colour_ok && s.count_ok && !s.motion_ok, "{s:?}");
    // A growing object changes size by definition and still passes.
    let growing = render(
        &[moving(PaletteColour::Red, Motion::Growing)],
        Backdrop::Plain(PaletteColour::Yellow.rgb()),
        0,
    );
    assert_eq!(
        score("a red circle growing on a yellow background", &growing).unwrap(),
        ALL_OK
    );
}

/// The 0.9 clip of vdit-tiny v4: fragments split off the object in about half of the frames. The
/// modal count is still one, but one object is not what the clip shows.
#[test]
fn fragments_in_many_frames_fail_the_count() {
    let c = SIZE as f32 / 2.0;
    let backdrop = Backdrop::Plain(PaletteColour::Blue.rgb());
    let one = render(&[moving(PaletteColour::Red, Motion::Right)], backdrop, 0);
    let fragment = disc(PaletteColour::Red, (c, c + 40.0, 4.0), (c, c + 40.0, 4.0));
    let two = render(
        &[moving(PaletteColour::Red, Motion::Right), fragment],
        backdrop,
        0,
    );
    let caption = "a red circle moving right on a blue background";
    // Fragments in every other frame: the count of one holds in about half of them.
    let mut flicker = one.clone();
    for t in (1..FRAMES).step_by(2) {
        flicker.frames[t] = two.frames[t].clone();
    }
    let s = score(caption, &flicker).unwrap();
    assert!(!s.count_ok, "{s:?}");
    // A fragment in one frame of many does not change the verdict.
    let mut once = one.clone();
    once.frames[FRAMES / 2] = two.frames[FRAMES / 2].clone();
    assert_eq!(score(caption, &once).unwrap(), ALL_OK);
}
