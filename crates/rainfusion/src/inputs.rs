//! Input checks shared by the attention kernels and their dispatcher (a file of its own, so the
//! kernels do not import the dispatcher that calls them).

use candle_core::Tensor;

use crate::{Error, Result};

/// Checks q, k, v are `[B, H, L, D]` self-attention inputs of one shape on one device.
pub(crate) fn check_self_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    let mismatch = || Error::ShapeMismatch {
        q: q.shape().clone(),
        k: k.shape().clone(),
        v: v.shape().clone(),
    };
    let dims = q.dims4().map_err(|_| mismatch())?;
    if k.dims4().map_err(|_| mismatch())? != dims || v.dims4().map_err(|_| mismatch())? != dims {
        return Err(mismatch());
    }
    if !q.device().same_device(k.device()) || !q.device().same_device(v.device()) {
        return Err(Error::InvalidConfig(
            "q, k and v are on different devices".into(),
        ));
    }
    Ok(())
}
