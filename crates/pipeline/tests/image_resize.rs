//! vdit's image resize (the `image` crate's Lanczos-3) against PIL's Lanczos, which diffusers'
//! `VideoProcessor.preprocess` (stretch) and Wan2.2's TI2V (cover, then centre crop) use
//! (tests/fixtures/i2v_resize, from scripts/reference/gen_i2v_pipelines.py). The two filters are
//! the same kernel with the same support widening when shrinking; PIL keeps 8-bit integers
//! between its passes (clamped) and uses fixed-point weights, so about a fifth of the bytes differ,
//! by 0.2 levels on average and at most a few (printed). The bounds are what was measured on
//! these fixtures, with a level of margin.

use std::path::PathBuf;

use image::RgbImage;
use vdit_pipeline::family::ImageFit;
use vdit_pipeline::image_cond::{fit_image, read_image};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/i2v_resize")
        .join(name)
}

fn read(name: &str) -> RgbImage {
    read_image("--image", &fixture(name)).unwrap().rgb
}

/// (largest difference in levels, mean absolute difference in levels, share of bytes that differ).
fn difference(ours: &RgbImage, pil: &RgbImage) -> (u8, f64, f64) {
    assert_eq!(ours.dimensions(), pil.dimensions());
    let pairs = ours.as_raw().iter().zip(pil.as_raw());
    let diffs: Vec<u8> = pairs.map(|(a, b)| a.abs_diff(*b)).collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    let differ = diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64;
    (max, mean, differ)
}

#[test]
fn lanczos_matches_pil_within_a_few_levels() {
    let source = read("source.png");
    // (file, size, fit, largest difference allowed): measured 2 shrinking, 6 enlarging (where
    // Lanczos overshoots, PIL clamps its 8-bit intermediate after the first pass and we clamp
    // once at the end); each bound is the measurement plus a level.
    for (file, width, height, fit, bound) in [
        ("stretch_48x32.png", 48, 32, ImageFit::Stretch, 3),
        ("stretch_128x96.png", 128, 96, ImageFit::Stretch, 7),
        ("cover_crop_40x40.png", 40, 40, ImageFit::CoverAndCrop, 3),
    ] {
        let ours = fit_image(&source, width, height, fit);
        let (max, mean, differ) = difference(&ours, &read(file));
        println!(
            "{file}: largest difference {max} level(s) of 255, mean {mean:.3}, {:.1}% of bytes differ",
            differ * 100.0
        );
        assert!(max <= bound, "{file}: {max} levels");
        assert!(mean < 0.5, "{file}: mean {mean}");
    }
}
