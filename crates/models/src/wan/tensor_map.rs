//! One walk over every tensor a transformer block holds, with what to do to each tensor left to
//! the caller: a block's `map_tensors` rebuilds the block from the mapped tensors. Copying a
//! streamed block to the compute device is one such map ([`ToDevice`], or the overlapped copier
//! of `block_stream` on CUDA); pinning a host block's memory is another (a map that returns each
//! tensor unchanged after registering its buffer).

use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{Device, Tensor};

use crate::error::Result;

/// What to make of each tensor of a block. Tensors come in a fixed order (the block's fields in
/// declaration order), so two walks over the same block meet the same tensors in the same order.
pub(crate) trait TensorMap {
    /// A dense tensor (weights, biases, norms, fp8 values and scales, LoRA factors).
    fn tensor(&mut self, t: &Tensor) -> Result<Tensor>;
    /// The GGUF blocks of a quantised linear weight.
    fn quantized(&mut self, q: &Arc<QTensor>) -> Result<Arc<QTensor>>;
}

/// A transformer block that can be streamed: rebuilt from `map` applied to every tensor it
/// holds ([`crate::wan::block_store::BlockStore`] keeps any such block; Wan's and HunyuanVideo
/// 1.5's blocks are).
pub(crate) trait StreamedBlock: Sized {
    fn map_block(&self, map: &mut dyn TensorMap) -> Result<Self>;
}

/// Every tensor copied to a device with candle's own copies (on the device's stream, in order
/// with the kernels that later read them): the synchronous streamed fetch.
pub(crate) struct ToDevice<'a>(pub(crate) &'a Device);

impl TensorMap for ToDevice<'_> {
    fn tensor(&mut self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_device(self.0)?)
    }

    fn quantized(&mut self, q: &Arc<QTensor>) -> Result<Arc<QTensor>> {
        Ok(Arc::new(qtensor_to_device(q, self.0)?))
    }
}

/// A copy of the GGUF blocks `q` on `device`: candle 0.11 has no `QTensor::to_device`, so the
/// raw blocks are read back (`QTensor::data`: borrowed on the CPU, a device→host copy on a GPU)
/// and built into a storage on `device` (`QStorage::from_data`, which on CUDA adds the row
/// padding its kernels read). The bytes are the same blocks; nothing is requantised.
pub(crate) fn qtensor_to_device(q: &QTensor, device: &Device) -> Result<QTensor> {
    let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
    Ok(QTensor::new(storage, q.shape().clone())?)
}
