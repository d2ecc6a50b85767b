//! The PyTorch RainFusion mask that trains and probes the shipped model
//! (`scripts/train/rainfusion_torch.py`, used by `train.py --sparse-train` and
//! `scripts/eval/sparse_probe.py`) is the engine's: same token permutation, same block mask from
//! the same q and k. Fixtures: `scripts/reference/gen_rainfusion_torch_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rainfusion::layout::{dense_tail_tokens, TokenPermutation, Window};
use rainfusion::{predict_block_mask, VideoLayout};

const CASES: [(&str, Window); 3] = [
    ("tile_13x16x16_b128_s08", Window::Tile),
    ("st_13x16x16_b128_s05", Window::Spatiotemporal),
    ("tile_5x16x16_b64_s09", Window::Tile),
];

fn fixtures() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/rainfusion_torch/masks.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn torch_emulation_has_the_engines_permutation_and_block_mask() {
    let fx = fixtures();
    for (name, window) in CASES {
        let get = |key: &str| fx[&format!("{name}.{key}")].clone();
        let grid = get("grid").to_vec1::<i64>().unwrap();
        let (frames, height, width, block) = (
            grid[0] as usize,
            grid[1] as usize,
            grid[2] as usize,
            grid[3] as usize,
        );
        let sparsity = get("sparsity").to_vec1::<f64>().unwrap()[0];
        let layout = VideoLayout::new(frames, height, width);

        let perm = TokenPermutation::for_layout(&layout, window, true).unwrap();
        let expected_order: Vec<u32> = get("forward")
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|o| o as u32)
            .collect();
        assert_eq!(perm.forward, expected_order, "{name}: token order differs");

        let q = perm.apply(&get("q")).unwrap(); // [B, H, L, D] permuted
        let k = perm.apply(&get("k")).unwrap();
        let mask =
            predict_block_mask(&q, &k, block, sparsity, dense_tail_tokens(&layout, true)).unwrap();
        let expected = get("mask").to_dtype(DType::U32).unwrap(); // [B, H, nb, nb] 0/1
        let (b, h, nb, _) = expected.dims4().unwrap(); // rows in (b, h, query block) order
        let rows = expected
            .reshape((b * h * nb, nb))
            .unwrap()
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(mask.num_rows(), rows.len(), "{name}: row count");
        let differing = rows
            .iter()
            .enumerate()
            .filter(|(r, want)| {
                let kept: Vec<u32> = (0..nb as u32)
                    .filter(|&kb| want[kb as usize] == 1)
                    .collect();
                mask.row_at(*r) != kept.as_slice()
            })
            .count();
        assert_eq!(differing, 0, "{name}: {differing} query-block rows differ");
    }
}
