//! Prompt-faithfulness analyser for the synthetic world of the shipped model (`scripts/train/`):
//! coloured shapes moving left/right/up/down, growing, shrinking or standing still, on a plain or
//! textured background. Deterministic pixel statistics, no learned model.
//!
//! Per frame:
//! 1. Background: the median colour (per channel) of the frame's border ring. A textured background
//!    (stripes or checker of two tones) shows up on the border as a second colour group: border pixels
//!    far from the median, if they are at least [`AnalyserConfig::second_tone_fraction`] of the border,
//!    give a second background colour (their median).
//! 2. Foreground: pixels farther than a threshold (RGB Euclidean) from every background colour. The
//!    threshold is [`AnalyserConfig::min_foreground_distance`], raised to 1.5× the spread of the border
//!    pixels around their background colour plus 10, so noisy backgrounds do not leak in.
//! 3. Objects: 8-connected foreground components of at least `max(min_area_pixels,
//!    min_area_fraction · W · H)` pixels; colour = the palette entry nearest to the mean RGB of the
//!    component's core, the half of its pixels farthest from the background (edge pixels are mixed
//!    with the background, more so in soft generated clips).
//!
//! Over the clip: the object count is the most frequent per-frame count (ties: the smaller). Objects
//! are tracked from the first frame showing that count, forwards and backwards, by palette colour and
//! nearest centroid. Motion of a track from its first to its last sighting: the centroid displacement,
//! as a fraction of the frame width (x) or height (y); above [`AnalyserConfig::motion_fraction`] it is
//! left/right/up/down (the larger axis); else the area ratio last/first against
//! [`AnalyserConfig::growth_ratio`] gives growing/shrinking; else still.
//!
//! A clip passes only when what it shows holds through the clip, not just at its ends or in most
//! frames: the captioned object count must be seen in at least [`AnalyserConfig::count_consistency`]
//! of the frames (spurious fragments flickering in and out fail it), and an object captioned as
//! moving or still must keep its size within [`AnalyserConfig::size_stability`] (largest over
//! smallest of its area, each a median of five sightings): a shape that collapses to half its size
//! mid-clip and regrows is broken, even if it ends where it should.

use std::fmt;

use serde::Serialize;

use crate::video::{VideoError, VideoFrames};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("caption {caption:?}: {reason}")]
    Caption { caption: String, reason: String },

    #[error(transparent)]
    Video(#[from] VideoError),

    #[error("invalid analyser setting: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// The fixed palette of the synthetic world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaletteColour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl PaletteColour {
    pub const ALL: [Self; 8] = [
        Self::Red,
        Self::Green,
        Self::Blue,
        Self::Yellow,
        Self::Purple,
        Self::Orange,
        Self::White,
        Self::Black,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Self::Red => [220, 40, 40],
            Self::Green => [40, 180, 60],
            Self::Blue => [40, 80, 220],
            Self::Yellow => [230, 210, 40],
            Self::Purple => [150, 60, 200],
            Self::Orange => [240, 140, 30],
            Self::White => [240, 240, 240],
            Self::Black => [25, 25, 25],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Red => "red",
            Self::Green => "green",
            Self::Blue => "blue",
            Self::Yellow => "yellow",
            Self::Purple => "purple",
            Self::Orange => "orange",
            Self::White => "white",
            Self::Black => "black",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Palette entry nearest (RGB Euclidean) to `rgb`.
    pub fn nearest(rgb: [f64; 3]) -> Self {
        let dist = |c: Self| colour_distance(rgb, c.rgb().map(f64::from));
        Self::ALL
            .into_iter()
            .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
            .expect("palette is not empty")
    }
}

impl fmt::Display for PaletteColour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Motion {
    Left,
    Right,
    Up,
    Down,
    Growing,
    Shrinking,
    Still,
}

impl fmt::Display for Motion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Left => "moving left",
            Self::Right => "moving right",
            Self::Up => "moving up",
            Self::Down => "moving down",
            Self::Growing => "growing",
            Self::Shrinking => "shrinking",
            Self::Still => "standing still",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// The caption says nothing about the background.
    Unspecified,
    Plain(PaletteColour),
    Textured,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionObject {
    pub colour: PaletteColour,
    /// Shape word as written (circle, square, triangle, ...): not checked by the analyser.
    pub shape: String,
    pub motion: Motion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    pub objects: Vec<CaptionObject>,
    pub background: Background,
}

/// Parses a caption of the synthetic world's grammar:
/// `a <colour> <shape> (moving <left|right|up|down> | growing | shrinking | standing still)`,
/// objects joined by ` and `, optionally ending in ` on a <colour> background` or
/// ` on a textured background`. Case-insensitive; "an" is accepted for "a"; a final period is ignored.
pub fn parse_caption(text: &str) -> Result<Caption> {
    let fail = |reason: String| EvalError::Caption {
        caption: text.to_string(),
        reason,
    };
    let lower = text.trim().trim_end_matches('.').to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let (object_words, background) = split_background(&words).map_err(fail)?;
    let mut objects = Vec::new();
    for part in object_words.split(|&w| w == "and") {
        objects.push(parse_object(part).map_err(fail)?);
    }
    Ok(Caption {
        objects,
        background,
    })
}

fn split_background<'a>(
    words: &'a [&'a str],
) -> std::result::Result<(&'a [&'a str], Background), String> {
    match words {
        [head @ .., "on", "a" | "an", tone, "background"] => {
            let background = match *tone {
                "textured" => Background::Textured,
                colour => Background::Plain(
                    PaletteColour::from_name(colour)
                        .ok_or_else(|| format!("unknown background colour '{colour}'"))?,
                ),
            };
            Ok((head, background))
        }
        _ => Ok((words, Background::Unspecified)),
    }
}

fn parse_object(words: &[&str]) -> std::result::Result<CaptionObject, String> {
    let (colour, shape, rest) = match words {
        ["a" | "an", colour, shape, rest @ ..] => (*colour, *shape, rest),
        _ => {
            return Err(format!(
                "expected 'a <colour> <shape> <motion>', got '{}'",
                words.join(" ")
            ))
        }
    };
    let colour = PaletteColour::from_name(colour).ok_or_else(|| {
        let names: Vec<&str> = PaletteColour::ALL.iter().map(|c| c.name()).collect();
        format!("unknown colour '{colour}' (known: {})", names.join(", "))
    })?;
    let motion = match rest {
        ["moving", "left"] => Motion::Left,
        ["moving", "right"] => Motion::Right,
        ["moving", "up"] => Motion::Up,
        ["moving", "down"] => Motion::Down,
        ["growing"] => Motion::Growing,
        ["shrinking"] => Motion::Shrinking,
        ["standing", "still"] => Motion::Still,
        _ => {
            return Err(format!(
            "unknown motion '{}' (moving left|right|up|down, growing, shrinking, standing still)",
            rest.join(" ")
        ))
        }
    };
    Ok(CaptionObject {
        colour,
        shape: shape.to_string(),
        motion,
    })
}

/// Thresholds of the analyser; the defaults suit 128×128 and 256×256 clips of the synthetic world.
#[derive(Debug, Clone)]
pub struct AnalyserConfig {
    /// Minimum RGB distance from every background colour for a pixel to be foreground.
    pub min_foreground_distance: f64,
    /// Share of the border that must form a second colour group for a textured background.
    pub second_tone_fraction: f64,
    /// Smallest object, as a fraction of the frame area.
    pub min_area_fraction: f64,
    /// Smallest object in pixels (whatever the frame size).
    pub min_area_pixels: usize,
    /// Centroid displacement (fraction of the frame side) that counts as motion.
    pub motion_fraction: f64,
    /// Area ratio last/first above which an object grows (below the inverse it shrinks).
    pub growth_ratio: f64,
    /// Share of the frames that must show the clip's object count for the count to hold.
    pub count_consistency: f64,
    /// Largest over smallest area (medians of five sightings) that an object captioned as moving
    /// or still may show; growing and shrinking objects are exempt.
    pub size_stability: f64,
}

impl Default for AnalyserConfig {
    fn default() -> Self {
        Self {
            min_foreground_distance: 60.0,
            second_tone_fraction: 0.2,
            min_area_fraction: 0.002,
            min_area_pixels: 6,
            motion_fraction: 0.08,
            growth_ratio: 1.3,
            // Calibrated on the vdit-tiny compare clips (scripts/gpu/results/cpu_compare_*):
            // dense clips show their count in 0.90-1.00 of the frames and a size range of
            // 1.3-1.4; the broken RainFusion 0.8 clip of vdit-tiny v3 (PSNR 21.9 dB, the circle
            // halves and regrows) 1.9, the 0.9 clip of v4 (fragments) its count in 0.53.
            count_consistency: 2.0 / 3.0,
            size_stability: 1.6,
        }
    }
}

impl AnalyserConfig {
    fn validate(&self) -> Result<()> {
        let ok = self.min_foreground_distance > 0.0
            && (0.0..1.0).contains(&self.second_tone_fraction)
            && (0.0..1.0).contains(&self.min_area_fraction)
            && self.motion_fraction > 0.0
            && self.growth_ratio > 1.0
            && (0.0..=1.0).contains(&self.count_consistency)
            && self.size_stability >= 1.0;
        if ok {
            Ok(())
        } else {
            Err(EvalError::Config(format!("{self:?}")))
        }
    }
}

/// One connected foreground component in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blob {
    pub area: usize,
    /// Centroid in pixels, (x, y), y downwards.
    pub centroid: (f64, f64),
    pub mean_rgb: [f64; 3],
    pub colour: PaletteColour,
}

/// An object followed through the clip.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectTrack {
    /// Most frequent palette colour over the sightings.
    pub colour: PaletteColour,
    pub first_frame: usize,
    pub last_frame: usize,
    pub first: Blob,
    pub last: Blob,
    pub sightings: usize,
    pub motion: Motion,
    /// Largest over smallest area over the sightings, each a median of five consecutive ones.
    pub size_range: f64,
    /// `size_range` is within [`AnalyserConfig::size_stability`].
    pub size_stable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipAnalysis {
    pub object_count: usize,
    /// Share of the frames that show `object_count` objects.
    pub count_share: f64,
    /// `count_share` reaches [`AnalyserConfig::count_consistency`].
    pub count_stable: bool,
    pub objects: Vec<ObjectTrack>,
    /// Objects found in each frame.
    pub blobs_per_frame: Vec<Vec<Blob>>,
    /// Background colour(s) of frame 0: one for a plain background, two for a textured one.
    pub background: Vec<[f64; 3]>,
}

/// Whether a clip shows what its caption says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    /// Every captioned object was found with its colour.
    pub colour_ok: bool,
    /// Every captioned object was found moving as captioned (matched by colour when possible).
    pub motion_ok: bool,
    /// As many objects were found as the caption names.
    pub count_ok: bool,
}

/// Share of clips that pass each check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub clips: usize,
    pub colour: f64,
    pub motion: f64,
    pub count: f64,
}

/// Analyses `frames` and scores them against `caption` with the default thresholds.
pub fn score(caption: &str, frames: &VideoFrames) -> Result<Score> {
    let caption = parse_caption(caption)?;
    let analysis = analyse(frames, &AnalyserConfig::default())?;
    Ok(score_analysis(&caption, &analysis))
}

/// Accuracy over many scored clips (each field the fraction of clips passing).
pub fn accuracy(scores: &[Score]) -> Accuracy {
    let share = |f: fn(&Score) -> bool| {
        if scores.is_empty() {
            0.0
        } else {
            scores.iter().filter(|s| f(s)).count() as f64 / scores.len() as f64
        }
    };
    Accuracy {
        clips: scores.len(),
        colour: share(|s| s.colour_ok),
        motion: share(|s| s.motion_ok),
        count: share(|s| s.count_ok),
    }
}

/// Matches captioned objects to tracks (same colour and motion first, then same colour, then any
/// remaining track, largest first) and scores the match.
pub fn score_analysis(caption: &Caption, analysis: &ClipAnalysis) -> Score {
    let mut used = vec![false; analysis.objects.len()];
    let mut matched: Vec<Option<usize>> = vec![None; caption.objects.len()];
    type Rule = fn(&CaptionObject, &ObjectTrack) -> bool;
    let rules: [Rule; 3] = [
        |c, t| c.colour == t.colour && c.motion == t.motion,
        |c, t| c.colour == t.colour,
        |_, _| true,
    ];
    // Tracks by decreasing size, so the "any remaining" rule takes the most salient object.
    let mut order: Vec<usize> = (0..analysis.objects.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(analysis.objects[i].first.area));
    for rule in rules {
        for (ci, object) in caption.objects.iter().enumerate() {
            if matched[ci].is_some() {
                continue;
            }
            if let Some(&ti) = order
                .iter()
                .find(|&&ti| !used[ti] && rule(object, &analysis.objects[ti]))
            {
                used[ti] = true;
                matched[ci] = Some(ti);
            }
        }
    }
    let all = |check: fn(&CaptionObject, &ObjectTrack) -> bool| {
        caption
            .objects
            .iter()
            .zip(&matched)
            .all(|(c, m)| m.is_some_and(|ti| check(c, &analysis.objects[ti])))
    };
    // Growing and shrinking change size by definition; anything else must keep it.
    let keeps_size = |c: &CaptionObject, t: &ObjectTrack| {
        matches!(c.motion, Motion::Growing | Motion::Shrinking) || t.size_stable
    };
    Score {
        colour_ok: all(|c, t| c.colour == t.colour),
        motion_ok: all(|c, t| c.motion == t.motion) && all(keeps_size),
        count_ok: analysis.object_count == caption.objects.len() && analysis.count_stable,
    }
}

/// Runs the analyser over a clip.
pub fn analyse(video: &VideoFrames, cfg: &AnalyserConfig) -> Result<ClipAnalysis> {
    video.validate()?;
    cfg.validate()?;
    let (w, h) = (video.width as usize, video.height as usize);
    let min_area = cfg
        .min_area_pixels
        .max((cfg.min_area_fraction * (w * h) as f64).ceil() as usize);
    let mut background = Vec::new();
    let mut blobs_per_frame = Vec::with_capacity(video.frames.len());
    for (t, frame) in video.frames.iter().enumerate() {
        let model = BackgroundModel::estimate(frame, w, h, cfg);
        if t == 0 {
            background = model.colours.clone();
        }
        let distance: Vec<f64> = frame
            .chunks_exact(3)
            .map(|p| model.distance(rgb_f64(p)))
            .collect();
        let mask: Vec<bool> = distance.iter().map(|&d| d > model.threshold).collect();
        blobs_per_frame.push(connected_blobs(frame, &mask, &distance, w, h, min_area));
    }

    let object_count = modal_count(&blobs_per_frame);
    let objects = track_objects(&blobs_per_frame, object_count, w, h, cfg);
    let count_share = blobs_per_frame
        .iter()
        .filter(|b| b.len() == object_count)
        .count() as f64
        / blobs_per_frame.len().max(1) as f64;
    Ok(ClipAnalysis {
        object_count,
        count_share,
        count_stable: count_share >= cfg.count_consistency,
        objects,
        blobs_per_frame,
        background,
    })
}

fn rgb_f64(p: &[u8]) -> [f64; 3] {
    [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]
}

fn colour_distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_colour(pixels: &[[f64; 3]]) -> [f64; 3] {
    std::array::from_fn(|c| median(&mut pixels.iter().map(|p| p[c]).collect::<Vec<_>>()))
}

/// One or two background colours and the foreground distance threshold of one frame.
struct BackgroundModel {
    colours: Vec<[f64; 3]>,
    threshold: f64,
}

impl BackgroundModel {
    fn estimate(frame: &[u8], w: usize, h: usize, cfg: &AnalyserConfig) -> Self {
        // Border ring, two pixels thick where the frame allows.
        let ring = 2.min(w / 2).min(h / 2).max(1);
        let border: Vec<[f64; 3]> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| x < ring || y < ring || x >= w - ring || y >= h - ring)
            .map(|(x, y)| rgb_f64(&frame[(y * w + x) * 3..][..3]))
            .collect();
        let first = median_colour(&border);
        let far: Vec<[f64; 3]> = border
            .iter()
            .copied()
            .filter(|&p| colour_distance(p, first) > cfg.min_foreground_distance / 2.0)
            .collect();
        let mut colours = vec![first];
        if far.len() as f64 >= cfg.second_tone_fraction * border.len() as f64 {
            colours.push(median_colour(&far));
        }
        let mut model = Self {
            colours,
            threshold: cfg.min_foreground_distance,
        };
        // Spread of the border around its own background colours (noise, texture detail).
        let mut spread: Vec<f64> = border.iter().map(|&p| model.distance(p)).collect();
        spread.sort_by(f64::total_cmp);
        let p90 = spread[(spread.len() * 9 / 10).min(spread.len() - 1)];
        model.threshold = model.threshold.max(1.5 * p90 + 10.0);
        model
    }

    fn distance(&self, p: [f64; 3]) -> f64 {
        self.colours
            .iter()
            .map(|&c| colour_distance(p, c))
            .fold(f64::INFINITY, f64::min)
    }
}

/// 8-connected components of `mask` with at least `min_area` pixels, largest first. `distance` is each
/// pixel's distance from the background; the colour is measured on the component's core (see
/// [`core_mean_colour`]).
fn connected_blobs(
    frame: &[u8],
    mask: &[bool],
    distance: &[f64],
    w: usize,
    h: usize,
    min_area: usize,
) -> Vec<Blob> {
    let mut seen = vec![false; mask.len()];
    let mut blobs = Vec::new();
    let mut stack = Vec::new();
    let mut members = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        members.clear();
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if members.len() < min_area {
            continue;
        }
        let n = members.len() as f64;
        let sx: f64 = members.iter().map(|&i| (i % w) as f64).sum();
        let sy: f64 = members.iter().map(|&i| (i / w) as f64).sum();
        let mean_rgb = core_mean_colour(frame, &mut members, distance);
        blobs.push(Blob {
            area: members.len(),
            centroid: (sx / n, sy / n),
            mean_rgb,
            colour: PaletteColour::nearest(mean_rgb),
        });
    }
    blobs.sort_by_key(|b| std::cmp::Reverse(b.area));
    blobs
}

/// Mean RGB of the half of the component farthest from the background. Edge pixels (anti-aliasing,
/// blur in generated clips) are mixtures with the background and would pull the mean towards it,
/// enough to turn yellow into orange or blue into purple on a soft clip.
fn core_mean_colour(frame: &[u8], members: &mut [usize], distance: &[f64]) -> [f64; 3] {
    members.sort_by(|&a, &b| distance[b].total_cmp(&distance[a]).then(a.cmp(&b)));
    let core = &members[..members.len().div_ceil(2)];
    let mut rgb = [0.0f64; 3];
    for &i in core {
        let p = rgb_f64(&frame[i * 3..][..3]);
        (0..3).for_each(|c| rgb[c] += p[c]);
    }
    rgb.map(|v| v / core.len() as f64)
}

/// Most frequent number of objects per frame; ties go to the smaller count.
fn modal_count(blobs_per_frame: &[Vec<Blob>]) -> usize {
    let max = blobs_per_frame.iter().map(Vec::len).max().unwrap_or(0);
    let mut frequency = vec![0usize; max + 1];
    blobs_per_frame.iter().for_each(|b| frequency[b.len()] += 1);
    // max_by_key keeps the last maximum, so scan counts from high to low.
    (0..=max).rev().max_by_key(|&n| frequency[n]).unwrap_or(0)
}

fn track_objects(
    blobs_per_frame: &[Vec<Blob>],
    count: usize,
    w: usize,
    h: usize,
    cfg: &AnalyserConfig,
) -> Vec<ObjectTrack> {
    let Some(anchor) = blobs_per_frame
        .iter()
        .position(|b| b.len() == count && count > 0)
    else {
        return Vec::new();
    };
    let diagonal = ((w * w + h * h) as f64).sqrt();
    // Sightings per track: (frame, blob).
    let mut tracks: Vec<Vec<(usize, Blob)>> = blobs_per_frame[anchor]
        .iter()
        .map(|&b| vec![(anchor, b)])
        .collect();
    let frames_forward = anchor + 1..blobs_per_frame.len();
    let frames_backward = (0..anchor).rev();
    for (frames, newest) in [
        (frames_forward.collect::<Vec<_>>(), true),
        (frames_backward.collect::<Vec<_>>(), false),
    ] {
        // The blob each track was last seen as, in this direction.
        let mut current: Vec<Blob> = tracks.iter().map(|s| s[0].1).collect();
        for t in frames {
            let blobs = &blobs_per_frame[t];
            // Cost: centroid distance as a share of the diagonal, plus 1 for a colour change.
            // A colour change is accepted only for a blob very close by (generated colours flicker).
            let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
            for (ti, prev) in current.iter().enumerate() {
                for (bi, blob) in blobs.iter().enumerate() {
                    let d = ((prev.centroid.0 - blob.centroid.0).powi(2)
                        + (prev.centroid.1 - blob.centroid.1).powi(2))
                    .sqrt()
                        / diagonal;
                    let cost = d + if prev.colour == blob.colour { 0.0 } else { 1.0 };
                    if cost < 1.15 {
                        pairs.push((cost, ti, bi));
                    }
                }
            }
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (mut track_done, mut blob_done) =
                (vec![false; current.len()], vec![false; blobs.len()]);
            for (_, ti, bi) in pairs {
                if track_done[ti] || blob_done[bi] {
                    continue;
                }
                track_done[ti] = true;
                blob_done[bi] = true;
                current[ti] = blobs[bi];
                if newest {
                    tracks[ti].push((t, blobs[bi]));
                } else {
                    tracks[ti].insert(0, (t, blobs[bi]));
                }
            }
        }
    }
    tracks
        .into_iter()
        .map(|sightings| summarise_track(&sightings, w, h, cfg))
        .collect()
}

fn summarise_track(
    sightings: &[(usize, Blob)],
    w: usize,
    h: usize,
    cfg: &AnalyserConfig,
) -> ObjectTrack {
    let (first_frame, first) = sightings[0];
    let (last_frame, last) = sightings[sightings.len() - 1];
    let mut votes = [0usize; PaletteColour::ALL.len()];
    for (_, blob) in sightings {
        votes[PaletteColour::ALL
            .iter()
            .position(|&c| c == blob.colour)
            .unwrap_or(0)] += 1;
    }
    // Ties go to the colour first in the palette order, to stay deterministic.
    let best = (0..votes.len())
        .rev()
        .max_by_key(|&i| votes[i])
        .unwrap_or(0);
    let size_range = size_range(sightings);
    ObjectTrack {
        size_range,
        size_stable: size_range <= cfg.size_stability,
        colour: PaletteColour::ALL[best],
        first_frame,
        last_frame,
        first,
        last,
        sightings: sightings.len(),
        motion: classify_motion(&first, &last, w, h, cfg),
    }
}

/// Largest over smallest of the track's area, each taken as the median of five consecutive
/// sightings so that one flickering frame does not count.
fn size_range(sightings: &[(usize, Blob)]) -> f64 {
    let areas: Vec<f64> = sightings.iter().map(|(_, b)| b.area as f64).collect();
    let window = 5.min(areas.len()).max(1);
    let smoothed: Vec<f64> = areas
        .windows(window)
        .map(|w| median(&mut w.to_vec()))
        .collect();
    let max = smoothed.iter().copied().fold(0.0, f64::max);
    let min = smoothed.iter().copied().fold(f64::INFINITY, f64::min);
    if min > 0.0 && min.is_finite() {
        max / min
    } else {
        1.0
    }
}

fn classify_motion(first: &Blob, last: &Blob, w: usize, h: usize, cfg: &AnalyserConfig) -> Motion {
    let dx = (last.centroid.0 - first.centroid.0) / w as f64;
    let dy = (last.centroid.1 - first.centroid.1) / h as f64;
    if dx.abs().max(dy.abs()) > cfg.motion_fraction {
        return match (dx.abs() >= dy.abs(), dx > 0.0, dy > 0.0) {
            (true, true, _) => Motion::Right,
            (true, false, _) => Motion::Left,
            (false, _, true) => Motion::Down,
            (false, _, false) => Motion::Up,
        };
    }
    let ratio = last.area as f64 / first.area as f64;
    if ratio > cfg.growth_ratio {
        Motion::Growing
    } else if ratio < 1.0 / cfg.growth_ratio {
        Motion::Shrinking
    } else {
        Motion::Still
    }
}

/// An object the analyser tracked through a clip.
#[derive(Debug, Clone, Serialize)]
pub struct FoundObject {
    pub colour: String,
    pub motion: String,
}

/// Whether one clip shows what its caption says, and what the analyser saw.
#[derive(Debug, Clone, Serialize)]
pub struct Faithfulness {
    pub colour_ok: bool,
    pub motion_ok: bool,
    pub count_ok: bool,
    /// Object count of the clip (most frequent per-frame count).
    pub objects_found: usize,
    pub found: Vec<FoundObject>,
}

impl Faithfulness {
    /// Analyses `frames` with the default thresholds and scores them against `caption`.
    pub fn measure(caption: &Caption, frames: &VideoFrames) -> Result<Self> {
        let analysis = analyse(frames, &AnalyserConfig::default())?;
        let score = score_analysis(caption, &analysis);
        Ok(Self {
            colour_ok: score.colour_ok,
            motion_ok: score.motion_ok,
            count_ok: score.count_ok,
            objects_found: analysis.object_count,
            found: analysis
                .objects
                .iter()
                .map(|o| FoundObject {
                    colour: o.colour.to_string(),
                    motion: o.motion.to_string(),
                })
                .collect(),
        })
    }

    /// The three checks as the analyser's score.
    pub fn score(&self) -> Score {
        Score {
            colour_ok: self.colour_ok,
            motion_ok: self.motion_ok,
            count_ok: self.count_ok,
        }
    }
}
