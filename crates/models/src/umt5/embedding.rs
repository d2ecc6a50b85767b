//! The token embedding of a umT5 encoder: a plain table, or GGUF blocks of which only the rows of
//! the prompt's tokens are dequantised.
//!
//! umT5-XXL's table is 256384 × 4096: 2.1 GB in bf16, 4.2 GB in f32, 1.1 GB at Q8_0. A prompt
//! reads at most 512 of its rows, so a GGUF table stays in its blocks, in host memory (the rows
//! are picked by copying their bytes, which no GPU kernel needs to do).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;
use crate::wan::layers::WeightSource;
use crate::weights::WeightFiles;

/// The token embedding [vocab_size, d_model].
#[derive(Debug, Clone)]
pub(crate) enum TokenEmbedding {
    /// In the load dtype, on the encoder's device.
    Dense(Tensor),
    /// GGUF blocks on the CPU, one row = `d_model / block size` whole blocks.
    Quantized(Arc<QTensor>),
}

impl TokenEmbedding {
    /// Reads `shared.weight` (canonical name; `file_key` is its name in the file): kept in blocks
    /// when it is stored block-quantised with whole blocks per row, else through `src` in `dtype`.
    pub(crate) fn load(
        files: &WeightFiles,
        file_key: &str,
        src: &WeightSource,
        shape: (usize, usize),
        dtype: DType,
    ) -> Result<Self> {
        let (vocab, dim) = shape;
        let quantized = files.load_quantized(file_key, Some(&Shape::from(shape)), &Device::Cpu)?;
        Ok(match quantized {
            Some(q) if dim.is_multiple_of(q.dtype().block_size()) => Self::Quantized(Arc::new(q)),
            _ => Self::Dense(src.get("shared.weight", &[vocab, dim], dtype)?),
        })
    }

    /// The GGUF type of the table when it is kept in blocks.
    pub(crate) fn quantized_type(&self) -> Option<GgmlDType> {
        match self {
            Self::Quantized(q) => Some(q.dtype()),
            Self::Dense(_) => None,
        }
    }

    /// ids [N] u32 (checked against the vocabulary by the caller) → rows [N, d_model] f32 on
    /// `device`.
    pub(crate) fn rows(&self, ids: &Tensor, device: &Device) -> Result<Tensor> {
        let table = match self {
            Self::Dense(table) => return Ok(table.index_select(ids, 0)?.to_dtype(DType::F32)?),
            Self::Quantized(table) => table,
        };
        let (_, dim) = table.shape().dims2()?;
        let kind = table.dtype();
        let row_bytes = dim / kind.block_size() * kind.type_size();
        let ids = ids.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
        let blocks = table.data()?;
        // candle reads blocks from a buffer aligned for their fields (f16/f32 scales): gather
        // into u64 words, viewed as bytes.
        let len = ids.len() * row_bytes;
        let mut words = vec![0u64; len.div_ceil(8)];
        // SAFETY: any byte pattern is a valid u8, and the view covers `len` ≤ 8 · words.len()
        // bytes of `words`, which it borrows mutably for its whole life.
        let gathered =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
        for (row, &id) in gathered.chunks_exact_mut(row_bytes).zip(&ids) {
            let start = id as usize * row_bytes;
            row.copy_from_slice(&blocks[start..start + row_bytes]);
        }
        let storage = QStorage::from_data(Cow::Borrowed(gathered), &Device::Cpu, kind)?;
        let rows = QTensor::new(storage, (ids.len(), dim))?.dequantize(&Device::Cpu)?;
        Ok(rows.to_dtype(DType::F32)?.to_device(device)?)
    }
}
