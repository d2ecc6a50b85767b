//! The image preprocessing of transformers' `CLIPImageProcessor` (PIL backend) with the settings
//! of the Wan2.1 I2V image processor: shortest side to 224 with PIL's bicubic filter, centre crop
//! 224 × 224, 1/255, normalised with CLIP's mean and std.
//!
//! The resampling is PIL's own algorithm (Pillow `Resample.c`): separable, horizontal pass then
//! vertical, the bicubic kernel with a = −0.5 widened by the scale factor when shrinking (PIL's
//! antialiasing), coefficients normalised per output pixel then rounded to 22-bit fixed point, and
//! each pass rounded and clamped to u8. Measured on the fixtures (tests/fixtures/i2v, a 260 × 240
//! image shrunk and a 150 × 100 one enlarged): every u8 equals PIL's (maximum difference 0), and
//! the normalised pixels match transformers' to f32 rounding (relative error ≤ 1e-7).
//!
//! transformers 5 picks a torchvision backend for `CLIPImageProcessor` when torchvision is
//! installed (torchvision's antialiased bicubic, another kernel without the u8 rounding between
//! steps), so a diffusers run there sees slightly different pixels; that difference was not
//! measured (the fixtures were made without torchvision, with the PIL backend). Wan's own code (`wan/modules/clip.py`) resizes
//! straight to 224 × 224 without a crop; diffusers' pipeline, which this follows, crops.

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// CLIP's normalisation (OpenAI's dataset statistics, used by LAION's models too).
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Side of the square the vision tower reads.
pub const CLIP_IMAGE_SIZE: usize = 224;

/// An RGB8 image (`rgb` row-major, 3 bytes per pixel, `width × height` pixels) → pixel values
/// [1, 3, 224, 224] f32 on `device`, as `CLIPImageProcessor` makes them for Wan2.1 I2V.
pub fn preprocess(width: usize, height: usize, rgb: &[u8], device: &Device) -> Result<Tensor> {
    check_image(width, height, rgb)?;
    let (new_width, new_height) = shortest_side_size(width, height, CLIP_IMAGE_SIZE);
    let resized = resize_bicubic(width, height, rgb, new_width, new_height)?;
    // Centre crop: the offset rounds down, as transformers' `center_crop`.
    let (top, left) = (
        (new_height - CLIP_IMAGE_SIZE) / 2,
        (new_width - CLIP_IMAGE_SIZE) / 2,
    );
    let plane = CLIP_IMAGE_SIZE * CLIP_IMAGE_SIZE;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..CLIP_IMAGE_SIZE {
        for x in 0..CLIP_IMAGE_SIZE {
            let src = ((top + y) * new_width + left + x) * 3;
            for c in 0..3 {
                // In f64 (transformers rescales and normalises u8 in float64), rounded once.
                let value = resized[src + c] as f64 * (1.0 / 255.0);
                out[c * plane + y * CLIP_IMAGE_SIZE + x] =
                    ((value - CLIP_MEAN[c]) / CLIP_STD[c]) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(
        out,
        (1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE),
        device,
    )?)
}

/// (width, height) with the shorter side `target` and the longer scaled to keep the aspect
/// ratio, truncated (transformers' `get_resize_output_image_size` without `default_to_square`).
pub fn shortest_side_size(width: usize, height: usize, target: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // int(target * long / short): an exact product, one correctly rounded division, truncation.
    let scaled_long = ((target * long) as f64 / short as f64) as usize;
    if width <= height {
        (target, scaled_long)
    } else {
        (scaled_long, target)
    }
}

/// PIL's bicubic resize of an RGB8 image (`Image.resize(size, Image.BICUBIC)`), bit for bit.
pub fn resize_bicubic(
    width: usize,
    height: usize,
    rgb: &[u8],
    new_width: usize,
    new_height: usize,
) -> Result<Vec<u8>> {
    check_image(width, height, rgb)?;
    if new_width == 0 || new_height == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot resize to {new_width}×{new_height}"
        )));
    }
    // PIL skips a pass whose size does not change (no box offset here).
    let horizontal = if new_width != width {
        let coeffs = Coefficients::new(width, new_width);
        let mut out = vec![0u8; new_width * height * 3];
        for y in 0..height {
            let row = &rgb[y * width * 3..(y + 1) * width * 3];
            for x in 0..new_width {
                let (start, weights) = coeffs.taps(x);
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, w) in weights.iter().enumerate() {
                        acc += row[(start + i) * 3 + c] as i64 * *w as i64;
                    }
                    out[(y * new_width + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        rgb.to_vec()
    };
    if new_height == height {
        return Ok(horizontal);
    }
    let coeffs = Coefficients::new(height, new_height);
    let mut out = vec![0u8; new_width * new_height * 3];
    for y in 0..new_height {
        let (start, weights) = coeffs.taps(y);
        for x in 0..new_width * 3 {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (i, w) in weights.iter().enumerate() {
                acc += horizontal[(start + i) * new_width * 3 + x] as i64 * *w as i64;
            }
            out[y * new_width * 3 + x] = clip8(acc);
        }
    }
    Ok(out)
}

fn check_image(width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(ModelError::InvalidInput(format!(
            "an RGB8 image of {width}×{height} needs {} bytes, got {}",
            width * height * 3,
            rgb.len()
        )));
    }
    Ok(())
}

/// Fixed-point bits of PIL's 8-bit resampling coefficients (32 − 8 − 2).
const PRECISION_BITS: u32 = 22;

/// Rounds a fixed-point sum to u8 (the rounding half was added up front) and clamps.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's bicubic kernel (a = −0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel of one axis: the first input pixel it reads and its fixed-point
/// weights, computed as PIL's `precompute_coeffs` and `normalize_coeffs_8bpc` do.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        let scale = in_size as f64 / out_size as f64;
        // Shrinking widens the kernel by the scale (antialiasing); enlarging keeps it.
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        // PIL multiplies by the reciprocal (a division would round differently).
        let inverse_scale = 1.0 / filter_scale;
        let mut starts = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; negatives are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inverse_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    // C's (int) of ±0.5 added: round half away from zero.
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            starts.push(xmin);
            weights.push(fixed);
        }
        Self { starts, weights }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        (self.starts[out], &self.weights[out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_shortest_side() {
        assert_eq!(shortest_side_size(260, 240, 224), (242, 224));
        assert_eq!(shortest_side_size(150, 100, 224), (336, 224));
        assert_eq!(shortest_side_size(832, 480, 224), (388, 224));
        assert_eq!(shortest_side_size(480, 832, 224), (224, 388));
        assert_eq!(shortest_side_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn resizing_to_the_same_size_changes_nothing_and_a_flat_image_stays_flat() {
        let rgb: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic(5, 4, &rgb, 5, 4).unwrap(), rgb);
        let flat = vec![77u8; 31 * 17 * 3];
        let out = resize_bicubic(31, 17, &flat, 12, 40).unwrap();
        assert!(out.iter().all(|&v| v == 77));
        assert!(resize_bicubic(5, 4, &rgb[1..], 5, 4).is_err());
    }
}
