//! Quality metrics for `vdit compare` (sparse attention against dense, same seed): PSNR and SSIM of the
//! decoded frames, cosine similarity of the final latents, and a side-by-side video of the two.
//!
//! Definitions (so numbers can be reproduced elsewhere):
//! - PSNR: `10 log10(255² / MSE)` with the MSE pooled over every frame, pixel and RGB channel of the
//!   clip (identical clips give +inf). [`psnr_per_frame`] gives the same per frame.
//! - SSIM: Wang et al. 2004 on BT.601 luma `Y = 0.299 R + 0.587 G + 0.114 B` (not rounded, 0..255),
//!   an 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, population (not sample)
//!   statistics, averaged over every window position that lies fully inside the frame, then averaged
//!   over frames. This equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
//!   use_sample_covariance=False, data_range=255)` on the luma plane. Frames must be at least 11×11.
//! - Latent cosine similarity: `<a, b> / (|a| |b|)` over all elements, accumulated in f64.

use candle_core::{DType, Device, Tensor};

use crate::video::VideoFrames;

const SSIM_WINDOW: usize = 11;
const SSIM_SIGMA: f64 = 1.5;
const SSIM_K1: f64 = 0.01;
const SSIM_K2: f64 = 0.03;
const DATA_RANGE: f64 = 255.0;

/// Width of the divider between the two halves of [`side_by_side`] (even, so H.264 needs no padding).
pub const DIVIDER_WIDTH: u32 = 2;
const DIVIDER_GREY: u8 = 128;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("videos differ: {0}")]
    Mismatch(String),

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error(transparent)]
    Video(#[from] crate::video::VideoError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, MetricsError>;

/// Both videos valid, with the same size and frame count.
fn check_same_shape(a: &VideoFrames, b: &VideoFrames) -> Result<()> {
    a.validate()?;
    b.validate()?;
    if (a.width, a.height, a.frames.len()) != (b.width, b.height, b.frames.len()) {
        return Err(MetricsError::Mismatch(format!(
            "{}x{}x{} frames against {}x{}x{} frames",
            a.width,
            a.height,
            a.frames.len(),
            b.width,
            b.height,
            b.frames.len()
        )));
    }
    Ok(())
}

fn squared_error(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

fn psnr_from_mse(mse: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (DATA_RANGE * DATA_RANGE / mse).log10()
    }
}

/// PSNR in dB of the whole clip (MSE pooled over all frames); +inf when identical.
pub fn psnr(a: &VideoFrames, b: &VideoFrames) -> Result<f64> {
    check_same_shape(a, b)?;
    let total: f64 = a
        .frames
        .iter()
        .zip(&b.frames)
        .map(|(x, y)| squared_error(x, y))
        .sum();
    let values = (a.frames.len() * a.frame_len()) as f64;
    Ok(psnr_from_mse(total / values))
}

/// PSNR in dB of each frame.
pub fn psnr_per_frame(a: &VideoFrames, b: &VideoFrames) -> Result<Vec<f64>> {
    check_same_shape(a, b)?;
    let values = a.frame_len() as f64;
    Ok(a.frames
        .iter()
        .zip(&b.frames)
        .map(|(x, y)| psnr_from_mse(squared_error(x, y) / values))
        .collect())
}

/// BT.601 luma of an RGB24 frame, 0..255, unrounded.
pub fn luma(rgb: &[u8]) -> Vec<f64> {
    rgb.chunks_exact(3)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

/// Mean SSIM of the clip: the mean of [`ssim_per_frame`].
pub fn ssim(a: &VideoFrames, b: &VideoFrames) -> Result<f64> {
    let per_frame = ssim_per_frame(a, b)?;
    Ok(per_frame.iter().sum::<f64>() / per_frame.len() as f64)
}

/// SSIM of each frame's luma (see the module notes for the exact definition).
pub fn ssim_per_frame(a: &VideoFrames, b: &VideoFrames) -> Result<Vec<f64>> {
    check_same_shape(a, b)?;
    let (w, h) = (a.width as usize, a.height as usize);
    if w < SSIM_WINDOW || h < SSIM_WINDOW {
        return Err(MetricsError::InvalidInput(format!(
            "SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {w}x{h}"
        )));
    }
    let kernel = gaussian_kernel();
    Ok(a.frames
        .iter()
        .zip(&b.frames)
        .map(|(x, y)| ssim_plane(&luma(x), &luma(y), w, h, &kernel))
        .collect())
}

/// Normalised 1-D Gaussian taps; the 2-D window is their outer product.
fn gaussian_kernel() -> [f64; SSIM_WINDOW] {
    let radius = (SSIM_WINDOW / 2) as f64;
    let mut taps = [0.0; SSIM_WINDOW];
    for (i, t) in taps.iter_mut().enumerate() {
        let d = i as f64 - radius;
        *t = (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = taps.iter().sum();
    taps.map(|t| t / sum)
}

/// Gaussian-weighted local means of `plane` over every full window ("valid" positions):
/// `[(h - 10) x (w - 10)]`, computed separably (rows, then columns).
fn filter_valid(plane: &[f64], w: usize, h: usize, kernel: &[f64; SSIM_WINDOW]) -> Vec<f64> {
    let (ow, oh) = (w - SSIM_WINDOW + 1, h - SSIM_WINDOW + 1);
    let mut rows = vec![0.0; h * ow];
    for y in 0..h {
        for x in 0..ow {
            let src = &plane[y * w + x..][..SSIM_WINDOW];
            rows[y * ow + x] = src.iter().zip(kernel).map(|(v, k)| v * k).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = kernel
                .iter()
                .enumerate()
                .map(|(i, k)| rows[(y + i) * ow + x] * k)
                .sum();
        }
    }
    out
}

fn ssim_plane(x: &[f64], y: &[f64], w: usize, h: usize, kernel: &[f64; SSIM_WINDOW]) -> f64 {
    let c1 = (SSIM_K1 * DATA_RANGE).powi(2);
    let c2 = (SSIM_K2 * DATA_RANGE).powi(2);
    let product = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * b).collect::<Vec<_>>();
    let mu_x = filter_valid(x, w, h, kernel);
    let mu_y = filter_valid(y, w, h, kernel);
    let e_xx = filter_valid(&product(x, x), w, h, kernel);
    let e_yy = filter_valid(&product(y, y), w, h, kernel);
    let e_xy = filter_valid(&product(x, y), w, h, kernel);
    let n = mu_x.len();
    let total: f64 = (0..n)
        .map(|i| {
            let (mx, my) = (mu_x[i], mu_y[i]);
            let var_x = e_xx[i] - mx * mx;
            let var_y = e_yy[i] - my * my;
            let cov = e_xy[i] - mx * my;
            ((2.0 * mx * my + c1) * (2.0 * cov + c2))
                / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
        })
        .sum();
    total / n as f64
}

/// Frame-level agreement of a clip with a reference clip (`vdit compare`: sparse against dense).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameQuality {
    /// [`psnr`] in dB (+inf when identical).
    pub psnr_db: f64,
    /// [`ssim`], mean over frames.
    pub ssim: f64,
}

/// PSNR and SSIM of `test` against `reference` (same size and frame count).
pub fn frame_quality(reference: &VideoFrames, test: &VideoFrames) -> Result<FrameQuality> {
    Ok(FrameQuality {
        psnr_db: psnr(reference, test)?,
        ssim: ssim(reference, test)?,
    })
}

/// Cosine similarity of two tensors of the same shape (e.g. final latents `[B,16,F,H,W]`).
pub fn cosine_similarity(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(MetricsError::Mismatch(format!(
            "latent shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let values = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (a, b) = (values(a)?, values(b)?);
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if !(dot.is_finite() && norm_a.is_finite() && norm_b.is_finite()) {
        return Err(MetricsError::InvalidInput(
            "latents contain NaN or infinity".into(),
        ));
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        return Err(MetricsError::InvalidInput(
            "cosine similarity of an all-zero tensor is undefined".into(),
        ));
    }
    Ok(dot / (norm_a.sqrt() * norm_b.sqrt()))
}

/// `left | divider | right` frame by frame (dense on the left, sparse on the right in `vdit compare`).
/// Both clips need the same height and frame count; the divider is [`DIVIDER_WIDTH`] grey columns.
pub fn side_by_side(left: &VideoFrames, right: &VideoFrames) -> Result<VideoFrames> {
    left.validate()?;
    right.validate()?;
    if left.height != right.height || left.frames.len() != right.frames.len() {
        return Err(MetricsError::Mismatch(format!(
            "side by side needs equal heights and frame counts: {}x{}x{} frames against {}x{}x{} frames",
            left.width,
            left.height,
            left.frames.len(),
            right.width,
            right.height,
            right.frames.len()
        )));
    }
    let width = left.width + DIVIDER_WIDTH + right.width;
    let (lw, rw) = (left.width as usize * 3, right.width as usize * 3);
    let divider = vec![DIVIDER_GREY; DIVIDER_WIDTH as usize * 3];
    let frames = left
        .frames
        .iter()
        .zip(&right.frames)
        .map(|(l, r)| {
            let mut out = Vec::with_capacity(width as usize * left.height as usize * 3);
            for (lrow, rrow) in l.chunks_exact(lw).zip(r.chunks_exact(rw)) {
                out.extend_from_slice(lrow);
                out.extend_from_slice(&divider);
                out.extend_from_slice(rrow);
            }
            out
        })
        .collect();
    Ok(VideoFrames::new(width, left.height, frames)?)
}
