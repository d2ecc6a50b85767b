//! Input images: read from png, jpeg or webp, the video size they imply, and the resize (and
//! crop) to that size.
//!
//! ```text
//! file ──decode──► RGB8 ──fit to W×H (stretch, or cover + centre crop)──► [1, 3, H, W] in [-1, 1]
//! ```
//!
//! Sizes. With `--size` the video has that size. Without, it keeps the image's aspect ratio at
//! the model's pixel budget (the width × height of its default size), each side a multiple of
//! the family's pixel multiple: Wan2.1's `image2video.py` rule (each side floored to the
//! multiple) for the I2V families, Wan2.2's `best_output_size` (width-first or height-first,
//! whichever keeps the ratio better) for TI2V-5B.
//!
//! Resampling. diffusers' `VideoProcessor.preprocess` resizes a PIL image to the video's size
//! with PIL's Lanczos filter (its default `resize_mode`, which stretches); Wan2.2's TI2V resizes
//! with Lanczos to cover the size and crops about the centre. We use the `image` crate's
//! Lanczos-3, which has the same kernel and the same support widening when shrinking, but
//! computes in f32 and rounds and clamps once, where PIL keeps clamped 8-bit integers between its
//! horizontal and vertical passes and uses fixed-point weights. Measured on a 90×60 image
//! (crates/pipeline/tests/image_resize.rs): about a fifth of the bytes differ, by 0.2 levels of
//! 255 on average, at most 2 levels shrinking and 6 enlarging (where Lanczos overshoots and PIL
//! clamps between passes). An image already at the video's size is resampled by neither, so the
//! parity tests use one.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Result, VditError};
use crate::family::ImageFit;

/// An input image as decoded, with what the sidecar records of it.
#[derive(Debug, Clone)]
pub struct InputImage {
    pub rgb: RgbImage,
    pub record: ImageRecord,
}

/// What a run records of an input image (the sidecar's `settings.image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    pub path: PathBuf,
    /// The image's own size, before any resize.
    pub width: u32,
    pub height: u32,
    /// Of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// Reads and decodes the image at `path` (png, jpeg or webp, any colour type, converted to
/// RGB8; transparency is dropped). `flag` names it in the one-line error (`--image`).
pub fn read_image(flag: &str, path: &Path) -> Result<InputImage> {
    let bad = |reason: String| {
        // Decoder messages may span lines; the error stays one line.
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        VditError::InvalidSetting(format!("{flag} {}: {reason}", path.display()))
    };
    if !path.exists() {
        return Err(bad("no such file".into()));
    }
    if path.is_dir() {
        return Err(bad("is a directory, not an image file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| bad(format!("cannot read it ({e})")))?;
    let format = image::guess_format(&bytes).map_err(|_| {
        bad("not a png, jpeg or webp image (its first bytes are none of theirs)".into())
    })?;
    let decoded = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| bad(format!("cannot decode it as {format:?}: {e}")))?;
    let rgb = decoded.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(bad("the image is empty (0 pixels)".into()));
    }
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(InputImage {
        record: ImageRecord {
            path: path.to_path_buf(),
            width: rgb.width(),
            height: rgb.height(),
            sha256,
        },
        rgb,
    })
}

/// The video size (width, height) for an image of `image_width`×`image_height` when the user
/// gives none: the image's aspect ratio at about `pixel_budget` pixels, each side a positive
/// multiple of `multiple`, by the rule of the family's `fit` (see the module docs).
pub fn video_size_for_image(
    image_width: u32,
    image_height: u32,
    pixel_budget: u64,
    multiple: u32,
    fit: ImageFit,
) -> (u32, u32) {
    let area = pixel_budget as f64;
    let m = multiple as f64;
    let at_least_one = |v: f64| (v.max(m)) as u32;
    match fit {
        // Wan2.1 image2video.py: h = ⌊√(A·h/w) / m⌋·m, w = ⌊√(A·w/h) / m⌋·m; the square root
        // rounded to a whole pixel first, as diffusers' I2V example does, because Wan's own
        // floor of √(832·480·480/832) = 479.99999999999994 turns an 832×480 image into 832×464.
        ImageFit::Stretch => {
            let ratio = image_height as f64 / image_width as f64;
            let h = ((area * ratio).sqrt().round() / m).floor() * m;
            let w = ((area / ratio).sqrt().round() / m).floor() * m;
            (at_least_one(w), at_least_one(h))
        }
        // Wan2.2 best_output_size: flooring the width first or the height first, the other side
        // then fills the budget; the candidate closer to the image's ratio wins (ties: height
        // first).
        ImageFit::CoverAndCrop => {
            let ratio = image_width as f64 / image_height as f64;
            let ow = (area * ratio).sqrt();
            let oh = area / ow;
            let w1 = ((ow / m).floor() * m).max(m);
            let h1 = ((area / w1 / m).floor() * m).max(m);
            let h2 = ((oh / m).floor() * m).max(m);
            let w2 = ((area / h2 / m).floor() * m).max(m);
            let off = |w: f64, h: f64| {
                let r = w / h;
                (ratio / r).max(r / ratio)
            };
            if off(w1, h1) < off(w2, h2) {
                (w1 as u32, h1 as u32)
            } else {
                (w2 as u32, h2 as u32)
            }
        }
    }
}

/// `image` resized (and, for [`ImageFit::CoverAndCrop`], cropped about the centre) to
/// `width`×`height` with Lanczos-3. An image already of that size is returned as it is.
pub fn fit_image(image: &RgbImage, width: u32, height: u32, fit: ImageFit) -> RgbImage {
    let (iw, ih) = image.dimensions();
    if (iw, ih) == (width, height) {
        return image.clone();
    }
    match fit {
        ImageFit::Stretch => image::imageops::resize(image, width, height, FilterType::Lanczos3),
        ImageFit::CoverAndCrop => {
            // Wan2.2: scale so both sides cover the target, round each side, crop the middle.
            let scale = (width as f64 / iw as f64).max(height as f64 / ih as f64);
            let rw = ((iw as f64 * scale).round() as u32).max(width);
            let rh = ((ih as f64 * scale).round() as u32).max(height);
            let covered = image::imageops::resize(image, rw, rh, FilterType::Lanczos3);
            let (x, y) = ((rw - width) / 2, (rh - height) / 2);
            image::imageops::crop_imm(&covered, x, y, width, height).to_image()
        }
    }
}

/// RGB8 `[H, W, 3]` → `[1, 3, H, W]` f32 in [-1, 1] (v / 255 · 2 − 1, as diffusers' image
/// processor: to [0, 1], then normalised).
pub fn image_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let values: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
        .collect();
    Ok(
        Tensor::from_vec(values, (h as usize, w as usize, 3), device)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_keep_the_aspect_ratio_at_the_budget() {
        // A 16:9 photo on Wan2.1 I2V 480p (832·480 pixels, multiple 16).
        let (w, h) = video_size_for_image(1920, 1080, 832 * 480, 16, ImageFit::Stretch);
        assert_eq!((w, h), (832, 464));
        // A portrait one.
        let (w, h) = video_size_for_image(1080, 1920, 832 * 480, 16, ImageFit::Stretch);
        assert_eq!((w, h), (464, 832));
        // An image of the default's own ratio gets the default size.
        assert_eq!(
            video_size_for_image(832, 480, 832 * 480, 16, ImageFit::Stretch),
            (832, 480)
        );
        // TI2V-5B (1280·704 pixels, multiple 32): Wan2.2's rule.
        assert_eq!(
            video_size_for_image(1280, 704, 1280 * 704, 32, ImageFit::CoverAndCrop),
            (1280, 704)
        );
        // A square image: both candidates (928×960, 960×928) are as far from square; Wan2.2
        // keeps the height-first one.
        assert_eq!(
            video_size_for_image(1000, 1000, 1280 * 704, 32, ImageFit::CoverAndCrop),
            (960, 928)
        );
        // A side that would round to nothing gets one multiple (the other keeps its rule).
        assert_eq!(
            video_size_for_image(4000, 10, 64, 16, ImageFit::Stretch),
            (160, 16)
        );
    }

    #[test]
    fn fitting_keeps_an_image_of_the_right_size_and_crops_about_the_centre() {
        let image = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 7]));
        assert_eq!(fit_image(&image, 8, 4, ImageFit::Stretch), image);
        // Cover 4×4 from 8×4: no scaling (scale 1), the middle 4 columns.
        let cropped = fit_image(&image, 4, 4, ImageFit::CoverAndCrop);
        assert_eq!(cropped.dimensions(), (4, 4));
        assert_eq!(cropped.get_pixel(0, 0).0, [20, 0, 7]);
        assert_eq!(
            fit_image(&image, 4, 4, ImageFit::Stretch).dimensions(),
            (4, 4)
        );
    }

    #[test]
    fn image_tensor_is_channels_first_in_minus_one_to_one() {
        let image = RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([if x == 1 { 255 } else { 0 }, y as u8 * 255, 0])
        });
        let t = image_tensor(&image, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 2, 3]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // R plane: x = 1 is 1, others −1; G plane: row 1 is 1.
        assert_eq!(&v[..6], &[-1.0, 1.0, -1.0, -1.0, 1.0, -1.0]);
        assert_eq!(&v[6..12], &[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn unreadable_images_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_image("--image", &dir.path().join("nope.png")).unwrap_err();
        assert!(missing.to_string().contains("no such file"), "{missing}");
        let text = dir.path().join("notes.png");
        std::fs::write(&text, "hello\nworld").unwrap();
        let err = read_image("--image", &text).unwrap_err().to_string();
        assert!(err.contains("not a png, jpeg or webp"), "{err}");
        assert_eq!(err.lines().count(), 1);
        // A truncated png: the decoder's error, on one line.
        let png = dir.path().join("cut.png");
        let image = RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]));
        image.save(&png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_image("--last-image", &png).unwrap_err().to_string();
        assert!(err.starts_with("--last-image"), "{err}");
        assert_eq!(err.lines().count(), 1);
        // And a good one, with its hash.
        image.save(&png).unwrap();
        let read = read_image("--image", &png).unwrap();
        assert_eq!((read.record.width, read.record.height), (16, 16));
        assert_eq!(read.record.sha256.len(), 64);
        assert_eq!(read.rgb, image);
    }
}
