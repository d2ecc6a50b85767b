//! Classifier-free guidance, computed in f32 (like the original Wan2.1; diffusers does it in the
//! transformer's dtype).

use candle_core::{DType, Tensor};

use crate::error::{Result, VditError};

/// v = v_uncond + scale·(v_cond − v_uncond), all in f32.
pub fn guide(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    let cond = cond.to_dtype(DType::F32)?;
    let uncond = uncond.to_dtype(DType::F32)?;
    Ok((&uncond + (cond - &uncond)?.affine(scale, 0.0)?)?)
}

/// Splits a batched model output `[2B, ...]` (conditional half first, as the pipeline stacks
/// them) and guides it: → `[B, ...]` f32.
pub fn guide_batched(velocity: &Tensor, scale: f64) -> Result<Tensor> {
    let batch = velocity.dim(0)?;
    if batch % 2 != 0 {
        return Err(VditError::Sampling(format!(
            "guidance needs a batch of conditional and unconditional halves, got batch {batch}"
        )));
    }
    let half = batch / 2;
    guide(
        &velocity.narrow(0, 0, half)?,
        &velocity.narrow(0, half, half)?,
        scale,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn batched_guidance_matches_the_formula() -> Result<()> {
        let dev = Device::Cpu;
        let cond = Tensor::new(&[[1.0f32, -2.0], [0.5, 4.0]], &dev)?;
        let uncond = Tensor::new(&[[0.0f32, 1.0], [2.5, -1.0]], &dev)?;
        let batched = Tensor::cat(&[&cond, &uncond], 0)?.reshape((2, 1, 2, 2))?;
        let guided = guide_batched(&batched, 5.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = cond.flatten_all()?.to_vec1::<f32>()?;
        let u = uncond.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..4 {
            assert_eq!(guided[i], u[i] + 5.0 * (c[i] - u[i]));
        }
        Ok(())
    }

    #[test]
    fn odd_batch_is_an_error() {
        let v = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(guide_batched(&v, 5.0).is_err());
    }
}
