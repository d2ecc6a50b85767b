//! The token permutation and the first-frame sink on the token grids of the Wan2.2 models at
//! their default sizes: TI2V-5B at 1280×704×121 (×16 VAE, patch 2: 31 × 22 × 40 tokens) and one
//! A14B expert at 1280×720×81 (×8 VAE, patch 2: 21 × 45 × 80). Both grids are ragged (22 and 45
//! rows are not multiples of 8), so the leftover rows follow the whole tiles of each window.

use candle_core::{Device, Tensor};
use rainfusion::layout::{dense_tail_tokens, TokenPermutation, Window};
use rainfusion::VideoLayout;

/// (name, frames, height, width) in tokens.
const GRIDS: [(&str, usize, usize, usize); 2] = [
    ("ti2v-5b 1280x704x121", 31, 22, 40),
    ("a14b 1280x720x81", 21, 45, 80),
];

fn layout(frames: usize, height: usize, width: usize) -> VideoLayout {
    VideoLayout {
        frames,
        height,
        width,
        text_tokens: 0,
    }
}

#[test]
fn permutation_round_trips_exactly_on_wan22_grids() {
    for (name, frames, height, width) in GRIDS {
        let layout = layout(frames, height, width);
        let tokens = layout.total_tokens();
        let x = Tensor::randn(0f32, 1.0, (1, 1, tokens, 2), &Device::Cpu).unwrap();
        for window in [Window::Tile, Window::Spatiotemporal] {
            let permutation = TokenPermutation::for_layout(&layout, window, true).unwrap();
            assert_eq!(permutation.len(), tokens, "{name} {window}");
            let back = permutation
                .restore(&permutation.apply(&x).unwrap())
                .unwrap();
            let diff = (back - &x)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name} {window}: restore(apply(x)) != x");
        }
    }
}

#[test]
fn first_frame_is_the_dense_tail_on_wan22_grids() {
    for (name, frames, height, width) in GRIDS {
        let layout = layout(frames, height, width);
        let frame_tokens = height * width;
        assert_eq!(dense_tail_tokens(&layout, true), frame_tokens, "{name}");
        for window in [Window::Tile, Window::Spatiotemporal] {
            let forward = TokenPermutation::for_layout(&layout, window, true)
                .unwrap()
                .forward;
            let tail: Vec<u32> = forward[forward.len() - frame_tokens..].to_vec();
            let frame0: Vec<u32> = (0..frame_tokens as u32).collect();
            assert_eq!(tail, frame0, "{name} {window}: frame 0 is not the tail");
        }
    }
}

#[test]
fn whole_tiles_of_each_window_are_compact_on_wan22_grids() {
    for (name, frames, height, width) in GRIDS {
        let layout = layout(frames, height, width);
        let frame_tokens = height * width;
        let tiles_per_frame = (height / 8) * (width / 8);
        for (window, group) in [(Window::Tile, 1), (Window::Spatiotemporal, 2)] {
            let forward = TokenPermutation::for_layout(&layout, window, true)
                .unwrap()
                .forward;
            // The body (frames 1..) in chunks of `group` frames; each chunk starts with its whole
            // tiles, 64·group tokens each, then its leftover rows and columns.
            let mut position = 0;
            for chunk_start in (1..frames).step_by(group) {
                let chunk_frames = group.min(frames - chunk_start);
                let chunk_tokens = chunk_frames * frame_tokens;
                let window_tokens = 64 * chunk_frames;
                let tiled = tiles_per_frame * window_tokens;
                for tile in forward[position..position + tiled].chunks(window_tokens) {
                    let place = |o: &u32| {
                        let o = *o as usize;
                        (o / frame_tokens, (o % frame_tokens) / width, o % width)
                    };
                    let (f_min, r_min, c_min) = tile.iter().map(place).min().unwrap();
                    let fs: Vec<usize> = tile.iter().map(|o| place(o).0).collect();
                    let rs: Vec<usize> = tile.iter().map(|o| place(o).1).collect();
                    let cs: Vec<usize> = tile.iter().map(|o| place(o).2).collect();
                    let span = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
                    assert!(
                        fs.iter()
                            .all(|&f| f >= chunk_start && f < chunk_start + chunk_frames),
                        "{name} {window}: a window leaves its frames (first frame {f_min})"
                    );
                    assert!(
                        span(&rs) < 8 && span(&cs) < 8,
                        "{name} {window}: window at row {r_min}, column {c_min} is not 8x8"
                    );
                }
                position += chunk_tokens;
            }
            assert_eq!(position + frame_tokens, forward.len(), "{name} {window}");
        }
    }
}
