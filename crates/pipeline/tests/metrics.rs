//! Metrics against hand-computable cases and a numpy reference (scripts/reference/gen_metrics_fixtures.py).

use candle_core::{Device, Tensor};
use vdit_pipeline::metrics::{
    cosine_similarity, frame_quality, luma, psnr, psnr_per_frame, side_by_side, ssim,
    ssim_per_frame, MetricsError, DIVIDER_WIDTH,
};
use vdit_pipeline::video::VideoFrames;

fn constant_clip(width: u32, height: u32, frames: usize, rgb: [u8; 3]) -> VideoFrames {
    let frame: Vec<u8> = rgb
        .iter()
        .copied()
        .cycle()
        .take((width * height * 3) as usize)
        .collect();
    VideoFrames::new(width, height, vec![frame; frames]).unwrap()
}

fn rel_close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-12)
}

#[test]
fn psnr_of_a_constant_offset_is_20_log10_255_over_d() {
    let a = constant_clip(16, 12, 3, [100, 100, 100]);
    for d in [1u8, 5, 40] {
        let b = constant_clip(16, 12, 3, [100 + d, 100 - d, 100 + d]);
        let want = 20.0 * (255.0 / f64::from(d)).log10();
        let got = psnr(&a, &b).unwrap();
        assert!(rel_close(got, want, 1e-12), "d={d}: {got} vs {want}");
    }
    assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
}

#[test]
fn psnr_pools_the_error_over_frames() {
    // Frame 0 identical, frame 1 off by 10 everywhere: pooled MSE 50, per-frame MSE 0 and 100.
    let a = constant_clip(8, 8, 2, [50, 60, 70]);
    let mut b = a.clone();
    b.frames[1].iter_mut().for_each(|v| *v += 10);
    let pooled = psnr(&a, &b).unwrap();
    assert!(rel_close(
        pooled,
        10.0 * (255.0f64 * 255.0 / 50.0).log10(),
        1e-12
    ));
    let per = psnr_per_frame(&a, &b).unwrap();
    assert_eq!(per[0], f64::INFINITY);
    assert!(rel_close(
        per[1],
        10.0 * (255.0f64 * 255.0 / 100.0).log10(),
        1e-12
    ));
}

#[test]
fn ssim_of_identical_and_of_flat_frames() {
    let a = constant_clip(16, 16, 2, [10, 200, 30]);
    assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
    // Flat frames: no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a² + mu_b² + C1).
    let b = constant_clip(16, 16, 2, [100, 100, 100]);
    let (mu_a, mu_b) = (luma(&[10, 200, 30])[0], 100.0);
    let c1 = (0.01f64 * 255.0).powi(2);
    let want = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1);
    let got = ssim(&a, &b).unwrap();
    assert!(rel_close(got, want, 1e-9), "{got} vs {want}");
    assert!(rel_close(
        mu_a,
        0.299 * 10.0 + 0.587 * 200.0 + 0.114 * 30.0,
        1e-12
    ));
}

#[test]
fn ssim_drops_for_an_inverted_pattern() {
    // A checkerboard against its inverse: same means, perfectly anti-correlated, so SSIM < 0.
    let (w, h) = (16u32, 16u32);
    let frame = |invert: bool| -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let on = ((i % w) + (i / w)) % 2 == 0;
                let v = if on != invert { 200 } else { 50 };
                [v, v, v]
            })
            .collect()
    };
    let a = VideoFrames::new(w, h, vec![frame(false)]).unwrap();
    let b = VideoFrames::new(w, h, vec![frame(true)]).unwrap();
    let s = ssim(&a, &b).unwrap();
    assert!(s < -0.9, "{s}");
}

#[derive(serde::Deserialize)]
struct Reference {
    width: u32,
    height: u32,
    a: Vec<Vec<u8>>,
    b: Vec<Vec<u8>>,
    psnr: f64,
    psnr_per_frame: Vec<f64>,
    ssim: f64,
    ssim_per_frame: Vec<f64>,
    latent_shape: Vec<usize>,
    latent_a: Vec<f32>,
    latent_b: Vec<f32>,
    cosine: f64,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/metrics/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn metrics_match_the_numpy_reference() {
    let r = reference();
    let a = VideoFrames::new(r.width, r.height, r.a).unwrap();
    let b = VideoFrames::new(r.width, r.height, r.b).unwrap();
    let got_psnr = psnr(&a, &b).unwrap();
    assert!(
        rel_close(got_psnr, r.psnr, 1e-10),
        "{got_psnr} vs {}",
        r.psnr
    );
    for (got, want) in psnr_per_frame(&a, &b)
        .unwrap()
        .iter()
        .zip(&r.psnr_per_frame)
    {
        assert!(rel_close(*got, *want, 1e-10), "{got} vs {want}");
    }
    for (got, want) in ssim_per_frame(&a, &b)
        .unwrap()
        .iter()
        .zip(&r.ssim_per_frame)
    {
        assert!(rel_close(*got, *want, 1e-9), "{got} vs {want}");
    }
    let got_ssim = ssim(&a, &b).unwrap();
    let both = frame_quality(&a, &b).unwrap();
    assert_eq!((both.psnr_db, both.ssim), (got_psnr, got_ssim));
    eprintln!(
        "psnr {got_psnr:.6} (ref {:.6}), ssim {got_ssim:.8} (ref {:.8})",
        r.psnr, r.ssim
    );
    assert!(rel_close(got_ssim, r.ssim, 1e-9));

    let la = Tensor::from_vec(r.latent_a, r.latent_shape.clone(), &Device::Cpu).unwrap();
    let lb = Tensor::from_vec(r.latent_b, r.latent_shape, &Device::Cpu).unwrap();
    let cos = cosine_similarity(&la, &lb).unwrap();
    assert!(rel_close(cos, r.cosine, 1e-9), "{cos} vs {}", r.cosine);
}

#[test]
fn cosine_similarity_hand_cases() {
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    let c = |a: &[f32], b: &[f32]| cosine_similarity(&t(a), &t(b)).unwrap();
    assert!((c(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
    assert!((c(&[1.0, 2.0, 3.0], &[-1.0, -2.0, -3.0]) + 1.0).abs() < 1e-12);
    assert!(c(&[1.0, 0.0], &[0.0, 5.0]).abs() < 1e-12);
    assert!((c(&[1.0, 1.0], &[1.0, 0.0]) - 0.5f64.sqrt()).abs() < 1e-12);
    // bf16 latents are accepted (converted to f32 first).
    let bf = t(&[1.0, 2.0]).to_dtype(candle_core::DType::BF16).unwrap();
    assert!((cosine_similarity(&bf, &t(&[1.0, 2.0])).unwrap() - 1.0).abs() < 1e-12);

    let err = cosine_similarity(&t(&[1.0, 2.0]), &t(&[1.0, 2.0, 3.0])).unwrap_err();
    assert!(matches!(err, MetricsError::Mismatch(_)), "{err}");
    let err = cosine_similarity(&t(&[0.0, 0.0]), &t(&[1.0, 2.0])).unwrap_err();
    assert!(err.to_string().contains("all-zero"), "{err}");
    assert!(cosine_similarity(&t(&[f32::NAN, 0.0]), &t(&[1.0, 2.0])).is_err());
}

#[test]
fn mismatched_or_tiny_videos_are_errors() {
    let a = constant_clip(16, 16, 2, [0, 0, 0]);
    let err = psnr(&a, &constant_clip(16, 16, 3, [0, 0, 0])).unwrap_err();
    assert!(
        err.to_string()
            .contains("16x16x2 frames against 16x16x3 frames"),
        "{err}"
    );
    assert!(ssim(&a, &constant_clip(16, 14, 2, [0, 0, 0])).is_err());
    let small = constant_clip(10, 16, 1, [0, 0, 0]);
    let err = ssim(&small, &small).unwrap_err();
    assert!(err.to_string().contains("at least 11x11"), "{err}");
}

#[test]
fn side_by_side_places_dense_left_and_sparse_right() {
    let left = constant_clip(4, 2, 2, [255, 0, 0]);
    let right = constant_clip(6, 2, 2, [0, 0, 255]);
    let both = side_by_side(&left, &right).unwrap();
    assert_eq!(
        (both.width, both.height, both.frame_count()),
        (4 + DIVIDER_WIDTH + 6, 2, 2)
    );
    for t in 0..2 {
        for y in 0..2 {
            assert_eq!(both.pixel(t, 0, y), [255, 0, 0]);
            assert_eq!(both.pixel(t, 3, y), [255, 0, 0]);
            assert_eq!(both.pixel(t, 4, y), [128, 128, 128]);
            assert_eq!(both.pixel(t, 4 + DIVIDER_WIDTH as usize, y), [0, 0, 255]);
            assert_eq!(both.pixel(t, both.width as usize - 1, y), [0, 0, 255]);
        }
    }
    let err = side_by_side(&left, &constant_clip(6, 3, 2, [0, 0, 0])).unwrap_err();
    assert!(matches!(err, MetricsError::Mismatch(_)), "{err}");
}
