//! The initial noise: seeded standard-normal latents, or a tensor loaded from a file.
//!
//! torch's Philox stream cannot reasonably be reproduced, so a seed gives the same video in
//! every vdit build and on every device (the noise is drawn on the CPU), but not the same video
//! as Python; for exact comparisons pass the Python noise with `--noise`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, VditError};

/// N(0, 1) latents of `shape`, f32, deterministic in `seed` (Box–Muller over a seeded StdRng).
pub fn seeded_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // u1 in (0, 1] keeps ln finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?)
}

/// The `noise` tensor of a safetensors file, checked against `shape` (a missing leading batch
/// dimension of 1 is added), as f32 on `device`.
pub fn load_noise(path: &Path, shape: &[usize], device: &Device) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| VditError::InvalidSetting(format!("--noise {}: {e}", path.display())))?;
    let noise = tensors.get("noise").ok_or_else(|| {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        VditError::InvalidSetting(format!(
            "--noise {}: no tensor named `noise` (it has: {names:?})",
            path.display()
        ))
    })?;
    let noise = if noise.rank() + 1 == shape.len() {
        noise.unsqueeze(0)?
    } else {
        noise.clone()
    };
    if noise.dims() != shape {
        return Err(VditError::InvalidSetting(format!(
            "--noise {}: tensor `noise` has shape {:?}, but these settings need {:?} \
             ([batch, channels, (frames-1)/4+1, height/8, width/8])",
            path.display(),
            noise.dims(),
            shape
        )));
    }
    Ok(noise.to_dtype(DType::F32)?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_deterministic_and_standard_normal() -> Result<()> {
        let shape = [1, 16, 3, 8, 10];
        let a = seeded_noise(42, &shape, &Device::Cpu)?;
        let b = seeded_noise(42, &shape, &Device::Cpu)?;
        let c = seeded_noise(43, &shape, &Device::Cpu)?;
        assert_eq!(a.dims(), &shape);
        let (a, b, c) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
            c.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // 3840 samples: mean within ~4 standard errors, variance within 10%.
        assert!(mean.abs() < 0.07, "mean {mean}");
        assert!((var - 1.0).abs() < 0.1, "variance {var}");
        Ok(())
    }

    #[test]
    fn loaded_noise_is_shape_checked() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noise.safetensors");
        let noise = seeded_noise(1, &[16, 2, 4, 6], &Device::Cpu)?;
        candle_core::safetensors::save(&[("noise".to_string(), noise.clone())].into(), &path)?;
        let loaded = load_noise(&path, &[1, 16, 2, 4, 6], &Device::Cpu)?;
        assert_eq!(
            loaded.squeeze(0)?.flatten_all()?.to_vec1::<f32>()?,
            noise.flatten_all()?.to_vec1::<f32>()?
        );
        let err = load_noise(&path, &[1, 16, 3, 4, 6], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[16, 2, 4, 6]") || err.contains("[1, 16, 2, 4, 6]"),
            "{err}"
        );
        let other = dir.path().join("other.safetensors");
        candle_core::safetensors::save(&[("latents".to_string(), noise)].into(), &other)?;
        let err = load_noise(&other, &[1, 16, 2, 4, 6], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no tensor named `noise`") && err.contains("latents"),
            "{err}"
        );
        Ok(())
    }
}
