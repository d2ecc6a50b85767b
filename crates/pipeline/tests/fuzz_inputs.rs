//! Byte-mutation and random-input fuzzing (proptest) of what vdit-pipeline reads and writes: the
//! video writers' inputs (frames of any size and content, fps, tensors with NaN/inf and odd shapes),
//! the files the readers get back (mutated mp4, gif and png), a model folder's defaults file
//! (`vdit.json`) and the registry's TOML entries. Nothing may panic: every bad input is an `Err`.
//!
//! Cases per target: `VDIT_FUZZ_CASES` (default 64 here, the video targets encode real files);
//! `scripts/fuzz.sh` runs many more.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use vdit_pipeline::registry::{ModelDefaults, Registry};
use vdit_pipeline::video::{frames_from_tensor, read_video, write_video, VideoFrames, VideoSink};

fn cases(default: u32) -> u32 {
    std::env::var("VDIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// Counts the cases run, printed by each target (scripts/fuzz.sh reads the lines).
struct Executions(&'static str, AtomicU64);

impl Executions {
    const fn new(name: &'static str) -> Self {
        Self(name, AtomicU64::new(0))
    }
    fn tick(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
    fn report(&self) {
        eprintln!(
            "fuzz {}: {} executions",
            self.0,
            self.1.load(Ordering::Relaxed)
        );
    }
}

static WRITERS: Executions = Executions::new("video writers");
static READERS: Executions = Executions::new("video readers (mutated files)");
static TENSORS: Executions = Executions::new("frames from tensors");
static SINK: Executions = Executions::new("video sink chunks");
static DEFAULTS: Executions = Executions::new("model defaults file");
static REGISTRY: Executions = Executions::new("registry entry");

/// Frames of a random size (odd sizes included), count and content.
fn frames() -> impl Strategy<Value = (u32, u32, Vec<Vec<u8>>)> {
    (1u32..=24, 1u32..=24, 1usize..=5, any::<u64>()).prop_map(|(w, h, n, seed)| {
        let len = (w * h * 3) as usize;
        let mut state = seed | 1;
        let frames = (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        // xorshift: cheap varied bytes
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect()
            })
            .collect();
        (w, h, frames)
    })
}

fn fps() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1u32..=60, 1 => Just(0u32), 1 => Just(241u32), 1 => any::<u32>()]
}

#[test]
fn fuzz_video_writers() {
    let dir = tempfile::tempdir().unwrap();
    proptest!(config(48), |((w, h, frames) in frames(), fps in fps(), ext in prop::sample::select(vec!["mp4", "gif", "png"]))| {
        WRITERS.tick();
        // A folder per case: a png sequence over an older, longer one is another matter
        // (stale frames), tested with the writers.
        let case_dir = dir.path().join(WRITERS.1.load(Ordering::Relaxed).to_string());
        std::fs::create_dir(&case_dir).unwrap();
        let path = case_dir.join(format!("out.{ext}"));
        let Ok(video) = VideoFrames::new(w, h, frames) else { return Ok(()); };
        if write_video(&path, &video, fps).is_ok() {
            let back = read_video(&path);
            prop_assert!(back.is_ok(), "{ext} {w}x{h}: cannot read back: {:?}", back.err());
            let back = back.unwrap().video;
            prop_assert_eq!(back.frames.len(), video.frames.len());
        }
    });
    WRITERS.report();
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop_oneof![Just(0u32), Just(1), Just(u32::MAX), Just(1 << 31), any::<u32>()])
            .prop_map(|(p, v)| Mutation::Splice(p, v)),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Overwrite(p, b) => {
                if !bytes.is_empty() {
                    bytes[p % n] = b;
                }
            }
            Mutation::Insert(p, b) => bytes.insert(p % (bytes.len() + 1), b),
            Mutation::Delete(p) => {
                if !bytes.is_empty() {
                    bytes.remove(p % n);
                }
            }
            Mutation::Truncate(p) => bytes.truncate(p % (bytes.len() + 1)),
            Mutation::Splice(p, v) => {
                let i = p % n;
                // Big-endian: the box sizes of mp4 and most PNG/GIF fields a reader trusts.
                for (k, b) in v.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
        }
    }
    bytes
}

#[test]
fn fuzz_video_readers() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|t| {
            (0..16 * 16 * 3)
                .map(|i| (i as u8).wrapping_mul(t + 1))
                .collect()
        })
        .collect();
    let video = VideoFrames::new(16, 16, frames).unwrap();
    for ext in ["mp4", "gif", "png"] {
        let path = dir.path().join(format!("seed.{ext}"));
        write_video(&path, &video, 8).unwrap();
        let first = match ext {
            "png" => vdit_pipeline::video::png_frame_path(&path, 0),
            _ => path.clone(),
        };
        seeds.push((ext, std::fs::read(first).unwrap()));
    }
    proptest!(config(96), |(which in 0usize..3, mutations in prop::collection::vec(mutation(), 1..6))| {
        READERS.tick();
        let (ext, seed) = &seeds[which];
        let path = dir.path().join(format!("fuzzed.{ext}"));
        let file = match *ext {
            "png" => vdit_pipeline::video::png_frame_path(&path, 0),
            _ => path.clone(),
        };
        std::fs::write(&file, mutate(seed, &mutations)).unwrap();
        let _ = read_video(&path);
    });
    READERS.report();
}

#[test]
fn fuzz_frames_from_tensor() {
    let special = prop_oneof![
        4 => -2.0f32..2.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
    ];
    let shape = prop_oneof![
        (1usize..=3, 0usize..=3, 0usize..=5, 0usize..=5).prop_map(|(c, t, h, w)| vec![c, t, h, w]),
        (1usize..=2, 1usize..=3, 0usize..=3, 0usize..=5, 0usize..=5)
            .prop_map(|(b, c, t, h, w)| vec![b, c, t, h, w]),
        prop::collection::vec(0usize..=4, 0..=6),
    ];
    proptest!(config(256), |(dims in shape, values in prop::collection::vec(special, 0..=400))| {
        TENSORS.tick();
        let count: usize = dims.iter().product();
        let data: Vec<f32> = (0..count).map(|i| values.get(i % values.len().max(1)).copied().unwrap_or(0.0)).collect();
        let Ok(tensor) = Tensor::from_vec(data, dims.as_slice(), &Device::Cpu) else { return Ok(()); };
        let _ = frames_from_tensor(&tensor);
    });
    TENSORS.report();
}

#[test]
fn fuzz_video_sink_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = (1u32..=8, 1u32..=8, 0usize..=3, any::<bool>());
    proptest!(config(48), |(chunks in prop::collection::vec(chunk, 0..5), fps in fps(), ext in prop::sample::select(vec!["mp4", "gif", "png"]))| {
        SINK.tick();
        let path = dir.path().join(format!("sink.{ext}"));
        let Ok(mut sink) = VideoSink::create(&path, fps) else { return Ok(()); };
        for (w, h, n, short) in chunks {
            let len = (w * h * 3) as usize - usize::from(short);
            let frames = vec![vec![128u8; len]; n];
            // Bypasses the checked constructor, as a caller with public fields can.
            let _ = sink.push(VideoFrames { width: w, height: h, frames });
        }
        let _ = sink.finish();
    });
    SINK.report();
}

#[test]
fn fuzz_model_defaults_file() {
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/vdit-tiny/vdit.json"
    ))
    .unwrap();
    proptest!(config(512), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        DEFAULTS.tick();
        let bytes = mutate(&seed, &mutations);
        let text = String::from_utf8_lossy(&bytes);
        match ModelDefaults::from_json_str(&text, Path::new("vdit.json")) {
            Ok(d) => prop_assert!(d.problems().is_empty()),
            // One line, naming the file.
            Err(e) => {
                let line = e.to_string();
                prop_assert!(!line.contains('\n') && line.contains("vdit.json"), "{}", line);
            }
        }
    });
    DEFAULTS.report();
}

#[test]
fn fuzz_registry_entry() {
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/wan2.1-t2v-1.3b.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    proptest!(config(256), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        REGISTRY.tick();
        std::fs::write(dir.path().join("entry.toml"), mutate(&seed, &mutations)).unwrap();
        if let Ok(registry) = Registry::load_dir(dir.path()) {
            for entry in registry.entries() {
                let _ = entry.location();
                let _ = entry.is_available();
            }
        }
    });
    REGISTRY.report();
}
