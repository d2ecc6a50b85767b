//! Small building blocks of the Wan transformer: a weight source bound to a checkpoint's key
//! dialect, a linear layer, and the two norms (computed in f32 whatever the run dtype).
//!
//! A linear layer's weight is kept as stored when it is block-quantised (GGUF Q8_0, Q4_K, ...:
//! candle's quantised matmul reads the blocks; on a GPU, a layer with many rows is dequantised
//! on the device just before its GEMM) or `float8_e4m3fn` (cast to the run dtype and
//! scaled at each forward, one layer at a time); every other tensor is cast to the run dtype
//! (or f32) at load, a scaled fp8 one times its `scale_weight`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Shape, Tensor, D};

use crate::error::{ModelError, Result};
use crate::lora::{LoraMode, LoraSet};
use crate::wan::tensor_map::TensorMap;
use crate::weights::{KeyMap, RandomWeightFormat, RandomWeights, WeightFiles};

/// Reads tensors by canonical (diffusers) name from a checkpoint, in a requested dtype; or draws
/// them at random (benchmarks at the real size without a checkpoint); with LoRA updates applied.
pub(crate) struct WeightSource {
    origin: Origin,
    device: Device,
    lora: Option<Arc<LoraSet>>,
    /// Whether fp8 linear weights stay fp8 (cast at each forward); false: cast at load, like
    /// any other tensor (see [`Self::casting_fp8`]).
    keep_fp8: bool,
}

enum Origin {
    Checkpoint {
        files: Arc<WeightFiles>,
        keys: KeyMap,
    },
    /// Random weights, the linear ones stored as `format` says (benchmarks of each weight
    /// format). Dense values are drawn on `draw` (the compute device: drawing a 14B model's
    /// worth on the CPU would take minutes) and then moved to the source's device.
    Random {
        format: RandomWeightFormat,
        draw: Device,
    },
}

impl WeightSource {
    pub(crate) fn new(files: Arc<WeightFiles>, keys: KeyMap, device: Device) -> Self {
        Self {
            origin: Origin::Checkpoint { files, keys },
            device,
            lora: None,
            keep_fp8: true,
        }
    }

    /// Applies `lora` to every tensor read from here on (see [`crate::lora`]).
    pub(crate) fn with_lora(mut self, lora: Option<Arc<LoraSet>>) -> Self {
        self.lora = lora.filter(|l| !l.is_empty());
        self
    }

    /// The same weights (and LoRA) read onto `device` instead: streamed blocks are loaded
    /// straight to their home device (the host) with this, never through the compute device.
    pub(crate) fn on_device(&self, device: &Device) -> Self {
        Self {
            origin: match &self.origin {
                Origin::Checkpoint { files, keys } => Origin::Checkpoint {
                    files: files.clone(),
                    keys: keys.clone(),
                },
                Origin::Random { format, draw } => Origin::Random {
                    format: *format,
                    draw: draw.clone(),
                },
            },
            device: device.clone(),
            lora: self.lora.clone(),
            keep_fp8: self.keep_fp8,
        }
    }

    /// The same source with fp8 linear weights cast to the run dtype (times their scale) at
    /// load instead of kept as fp8: streamed blocks with `VDIT_STREAM_FP8=0` (twice the host
    /// memory and copy of fp8). Streaming them as fp8 failed on the H100 until the pinning of
    /// partial host pages was fixed (scripts/gpu/NOTES.md, "Pinning, fixed").
    pub(crate) fn casting_fp8(mut self) -> Self {
        self.keep_fp8 = false;
        self
    }

    /// Every tensor asked for is random (see [`RandomWeights`]).
    pub(crate) fn random(device: Device) -> Self {
        Self::random_stored(device, RandomWeightFormat::RunDtype)
    }

    /// Random weights, the linear ones stored as `format` says.
    pub(crate) fn random_stored(device: Device, format: RandomWeightFormat) -> Self {
        Self {
            origin: Origin::Random {
                format,
                draw: device.clone(),
            },
            device,
            lora: None,
            keep_fp8: true,
        }
    }

    /// The linear weight `key` [output, input] as stored when it stays stored at run time (GGUF
    /// blocks, fp8): `None` when it is to be cast to the run dtype like any other tensor.
    fn kept_weight(&self, key: &str, output: usize, input: usize) -> Result<Option<StoredWeight>> {
        let shape = Shape::from((output, input));
        match &self.origin {
            Origin::Checkpoint { files, keys } => {
                let file_key = keys.map(key);
                if let Some(q) = files.load_quantized(&file_key, Some(&shape), &self.device)? {
                    return Ok(Some(StoredWeight::Quantized(Arc::new(q))));
                }
                if self.keep_fp8 && files.stored_dtype(&file_key) == Some(DType::F8E4M3) {
                    let weight =
                        files.load(&file_key, Some(&shape), DType::F8E4M3, &self.device)?;
                    let scale = fp8_scale(files, &file_key, output, &self.device)?;
                    return Ok(Some(StoredWeight::Fp8 { weight, scale }));
                }
                Ok(None)
            }
            Origin::Random {
                format: RandomWeightFormat::Gguf(kind),
                ..
            } if input.is_multiple_of(kind.block_size()) => {
                // Every layer of a shape gets its own copy of one quantised random tensor:
                // quantising a 14B model's worth on the CPU took minutes per load (the H100
                // Q8_0 streaming row timed out at 240 s), and timings do not depend on the
                // values. The copy is made on the target device, as a load's would be.
                let q = quantized_random(&shape, *kind)?;
                Ok(Some(StoredWeight::Quantized(Arc::new(
                    crate::wan::tensor_map::qtensor_to_device(&q, &self.device)?,
                ))))
            }
            Origin::Random {
                format: RandomWeightFormat::Fp8Scaled,
                ..
            } if self.keep_fp8 => {
                // One fp8 tensor per shape, copied to every layer, as for GGUF blocks above.
                let values = fp8_random(&shape)?;
                let weight = if self.device.is_cpu() {
                    values.copy()?
                } else {
                    values.to_device(&self.device)?
                };
                // The values are N(0, 1); the scale brings them to the fan-in scaling of
                // `RandomWeights`, as a scaled fp8 file's `scale_weight` does.
                let scale = Tensor::full((input as f32).sqrt().recip(), (1, 1), &self.device)?;
                Ok(Some(StoredWeight::Fp8 {
                    weight,
                    scale: Some(scale),
                }))
            }
            Origin::Random { .. } => Ok(None),
        }
    }

    /// Loads `key` (canonical name) with the given shape, cast to `dtype`. Errors name the key
    /// as stored in the file, both shapes and the file (see `WeightFiles::load`).
    /// A LoRA update of the tensor is added first, in f32 (every kind of update).
    pub(crate) fn get(&self, key: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.get_patched(key, shape, dtype, true)
    }

    /// [`Self::get`], adding low-rank LoRA terms only if `with_low_rank` (full deltas always).
    fn get_patched(
        &self,
        key: &str,
        shape: &[usize],
        dtype: DType,
        with_low_rank: bool,
    ) -> Result<Tensor> {
        let shape = Shape::from(shape);
        let read = |dtype: DType| -> Result<Tensor> {
            Ok(match &self.origin {
                Origin::Checkpoint { files, keys } => {
                    let file_key = keys.map(key);
                    // A scaled fp8 tensor is its stored values times its `scale_weight`.
                    let rows = shape.dims().first().copied().unwrap_or(1);
                    match fp8_scale(files, &file_key, rows, &Device::Cpu)? {
                        Some(scale) => {
                            let values =
                                files.load(&file_key, Some(&shape), DType::F32, &Device::Cpu)?;
                            let values = values.reshape((rows, ()))?.broadcast_mul(&scale)?;
                            values
                                .reshape(&shape)?
                                .to_dtype(dtype)?
                                .to_device(&self.device)?
                        }
                        None => files.load(&file_key, Some(&shape), dtype, &self.device)?,
                    }
                }
                Origin::Random { draw, .. } => {
                    RandomWeights::tensor(key, &shape, dtype, draw)?.to_device(&self.device)?
                }
            })
        };
        let patch = self.lora.as_ref().and_then(|l| l.patch(key));
        let Some(delta) = patch
            .map(|p| p.delta(key, &shape, with_low_rank, &self.device))
            .transpose()?
            .flatten()
        else {
            return read(dtype);
        };
        // Merge in f32, then cast once: a bf16 add would round the update away.
        Ok((read(DType::F32)? + delta)?.to_dtype(dtype)?)
    }

    /// A linear layer `prefix.weight` [out, in] + `prefix.bias` [out], computing in `dtype`.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        dtype: DType,
    ) -> Result<Linear> {
        let (weight, adapter) = self.linear_weight(prefix, input, output, dtype)?;
        Ok(Linear {
            weight,
            bias: self.get(&format!("{prefix}.bias"), &[output], dtype)?,
            adapter,
            dtype,
        })
    }

    /// A bias-free linear layer `prefix.weight` [out, in] (umT5's projections), computing in
    /// `dtype`: the weight is kept or cast as in [`Self::linear`]. Its bias is zeros [out], so
    /// `forward` equals `matmul`; callers use `matmul`.
    pub(crate) fn linear_no_bias(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        dtype: DType,
    ) -> Result<Linear> {
        let (weight, adapter) = self.linear_weight(prefix, input, output, dtype)?;
        Ok(Linear {
            weight,
            bias: Tensor::zeros(output, dtype, &self.device)?,
            adapter,
            dtype,
        })
    }

    /// The weight `prefix.weight` [out, in] of a linear layer, kept as stored or read in `dtype`
    /// with any LoRA merged, and the unmerged LoRA factors of a runtime LoRA.
    fn linear_weight(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        dtype: DType,
    ) -> Result<(LinearWeight, Option<(Tensor, Tensor)>)> {
        let weight_key = format!("{prefix}.weight");
        let runtime = self
            .lora
            .as_ref()
            .is_some_and(|l| l.mode() == LoraMode::Runtime);
        let patch = self.lora.as_ref().and_then(|l| l.patch(&weight_key));
        let adapter = match patch {
            Some(patch) if runtime => {
                patch.adapter(&weight_key, output, input, dtype, &self.device)?
            }
            _ => None,
        };
        // What a LoRA adds to the weight itself (all of it when merged; full deltas always).
        let delta = || -> Result<Option<Tensor>> {
            let shape = Shape::from((output, input));
            Ok(patch
                .map(|p| p.delta(&weight_key, &shape, !runtime, &Device::Cpu))
                .transpose()?
                .flatten())
        };
        let dense = || -> Result<LinearWeight> {
            Ok(LinearWeight::Dense(self.get_patched(
                &weight_key,
                &[output, input],
                dtype,
                !runtime,
            )?))
        };
        let weight = match self.kept_weight(&weight_key, output, input)? {
            None => dense()?,
            // fp8 with a LoRA update merged into it: the sum is kept in the run dtype.
            Some(StoredWeight::Fp8 { weight, scale }) => match delta()? {
                Some(_) => dense()?,
                None => LinearWeight::Fp8 {
                    weight,
                    scale: scale.map(|s| s.to_dtype(dtype)).transpose()?,
                },
            },
            Some(StoredWeight::Quantized(q)) => {
                match delta()? {
                    None => LinearWeight::Quantized(q),
                    // A merged LoRA on blocks: dequantise, add, quantise again to the same type
                    // (one more rounding of the blocks; `--lora-mode runtime` avoids it).
                    Some(delta) => {
                        let merged = (q.dequantize(&Device::Cpu)? + delta)?;
                        let requantized = QTensor::quantize_onto(&merged, q.dtype(), &self.device)
                            .map_err(|e| {
                                ModelError::InvalidInput(format!(
                                    "merging a LoRA into the {:?} weight `{weight_key}`: {e}",
                                    q.dtype()
                                ))
                            })?;
                        LinearWeight::Quantized(Arc::new(requantized))
                    }
                }
            }
        };
        Ok((weight, adapter))
    }
}

/// A linear weight kept as stored (see [`WeightSource::kept_weight`]).
enum StoredWeight {
    Quantized(Arc<QTensor>),
    /// `float8_e4m3fn` values [out, in] and, for a scaled fp8 file, the scale: [1, 1] per
    /// tensor or [out, 1] per output row, f32.
    Fp8 {
        weight: Tensor,
        scale: Option<Tensor>,
    },
}

/// The weight of a [`Linear`].
#[derive(Debug, Clone)]
enum LinearWeight {
    /// [out, in] in the run dtype.
    Dense(Tensor),
    /// [out, in] GGUF blocks, multiplied by candle's quantised matmul.
    Quantized(Arc<QTensor>),
    /// [out, in] `float8_e4m3fn`, cast to the run dtype (and times the scale, [1, 1] or
    /// [out, 1] in the run dtype) at each forward: one layer at a time is ever dequantised.
    Fp8 {
        weight: Tensor,
        scale: Option<Tensor>,
    },
}

/// Random stored weights made once per key for the process and cloned after (see their use in
/// `kept_weight`): a process draws each shape's tensor once however many layers share it.
struct OncePerKey<K, V>(std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<K, V>>>);

impl<K: std::hash::Hash + Eq, V: Clone> OncePerKey<K, V> {
    const fn new() -> Self {
        Self(std::sync::OnceLock::new())
    }

    /// The value kept for `key`, made by `make` the first time.
    fn get(&self, key: K, make: impl FnOnce() -> Result<V>) -> Result<V> {
        let map = self.0.get_or_init(Default::default);
        if let Some(v) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(v.clone());
        }
        let v = make()?;
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, v.clone());
        Ok(v)
    }
}

/// A random `[out, in]` `float8_e4m3fn` tensor of N(0, 1) values on the CPU, one per shape.
fn fp8_random(shape: &Shape) -> Result<Tensor> {
    static MADE: OncePerKey<Vec<usize>, Tensor> = OncePerKey::new();
    MADE.get(shape.dims().to_vec(), || {
        Ok(Tensor::randn(0f32, 1.0, shape.clone(), &Device::Cpu)?.to_dtype(DType::F8E4M3)?)
    })
}

/// A random `[out, in]` weight quantised to `kind` on the CPU, one per shape and type.
fn quantized_random(shape: &Shape, kind: GgmlDType) -> Result<Arc<QTensor>> {
    static MADE: OncePerKey<(Vec<usize>, GgmlDType), Arc<QTensor>> = OncePerKey::new();
    MADE.get((shape.dims().to_vec(), kind), || {
        let name = format!("quantized.{}x{}", shape.dims()[0], shape.dims()[1]);
        let values = RandomWeights::tensor(&name, shape, DType::F32, &Device::Cpu)?;
        Ok(Arc::new(QTensor::quantize_onto(
            &values,
            kind,
            &Device::Cpu,
        )?))
    })
}

/// The `scale_weight` of a scaled fp8 tensor (ComfyUI's files: `<name>.scale_weight` next to
/// `<name>.weight`, one value per tensor, some converters one per output row), as [1, 1] or
/// [rows, 1] f32 on `device`; `None` when `file_key` is not stored as fp8 or has no scale.
fn fp8_scale(
    files: &WeightFiles,
    file_key: &str,
    rows: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    if files.stored_dtype(file_key) != Some(DType::F8E4M3) {
        return Ok(None);
    }
    let Some(scale_key) = file_key
        .strip_suffix("weight")
        .map(|stem| format!("{stem}scale_weight"))
        .filter(|k| files.contains(k))
    else {
        return Ok(None);
    };
    let scale = files.load(&scale_key, None, DType::F32, &Device::Cpu)?;
    let scale = match scale.elem_count() {
        1 => scale.reshape((1, 1))?,
        n if n == rows => scale.reshape((rows, 1))?,
        n => {
            return Err(ModelError::UnsupportedCheckpoint {
                files: files.files_description(),
                reason: format!(
                    "`{scale_key}` has {n} values; a scale per tensor (1) or per row ({rows}) \
                     was expected"
                ),
            })
        }
    };
    Ok(Some(scale.to_device(device)?))
}

/// `y = x·Wᵀ + b` over the last axis, computed in the run dtype (a quantised weight: candle's
/// quantised matmul in f32, the result cast to the run dtype); with a LoRA kept unmerged,
/// `+ (x·Aᵀ)·Bᵀ`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: LinearWeight, // [out, in]
    bias: Tensor,         // [out]
    /// Unmerged LoRA factors (down A [r, in], up B [out, r] with the scale folded in).
    adapter: Option<(Tensor, Tensor)>,
    /// The run dtype: of the output, the bias and the adapter.
    dtype: DType,
}

impl Linear {
    /// Builds a linear layer from an already-shaped weight [out, in] and bias [out].
    pub(crate) fn from_parts(weight: Tensor, bias: Tensor) -> Self {
        Self {
            dtype: weight.dtype(),
            weight: LinearWeight::Dense(weight),
            bias,
            adapter: None,
        }
    }

    /// This layer rebuilt from `map` applied to every tensor it holds (weight as stored: dense,
    /// GGUF blocks or fp8 with its scale; bias; unmerged LoRA factors). A copy between devices
    /// is a plain memcpy: nothing is cast or requantised.
    pub(crate) fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        let weight = match &self.weight {
            LinearWeight::Dense(w) => LinearWeight::Dense(map.tensor(w)?),
            LinearWeight::Quantized(q) => LinearWeight::Quantized(map.quantized(q)?),
            LinearWeight::Fp8 { weight, scale } => LinearWeight::Fp8 {
                weight: map.tensor(weight)?,
                scale: scale.as_ref().map(|s| map.tensor(s)).transpose()?,
            },
        };
        let bias = map.tensor(&self.bias)?;
        let adapter = match &self.adapter {
            Some((down, up)) => Some((map.tensor(down)?, map.tensor(up)?)),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            adapter,
            dtype: self.dtype,
        })
    }

    /// x: [..., in] in any float dtype → [..., out] in the run dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.matmul(x)?.broadcast_add(&self.bias)?)
    }

    /// `x·Wᵀ` without the bias (fused kernels add it later): x [..., in] → [..., out] in the
    /// run dtype, contiguous.
    pub(crate) fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        // One 2-D matmul over all leading axes: a single large GEMM instead of a batched one.
        let x2 = x
            .to_dtype(self.dtype)?
            .contiguous()?
            .reshape((rows, input))?;
        let (mut y, output) = match &self.weight {
            LinearWeight::Dense(w) => (x2.matmul(&w.t()?)?, w.dim(0)?),
            // Many rows on a GPU: the blocks are dequantised on the device (one layer at a time,
            // freed after its GEMM) and multiplied on the tensor cores in the run dtype. candle's
            // quantised matmul takes the rows in f32 there and multiplies without tensor cores:
            // the 14B at 720p, batch 2, ran 1.75x slower than bf16, with 8.4 GB f32 activations
            // in the feed-forward (scripts/gpu/NOTES.md, "Compacted masks").
            LinearWeight::Quantized(q) if dequantize_for_gemm(x2.device(), rows) => {
                let w = q.dequantize(x2.device())?.to_dtype(self.dtype)?;
                (x2.matmul(&w.t()?)?, w.dim(0)?)
            }
            // f32 in: candle's quantised matmul takes f32 on every backend (its CUDA fallback
            // kernels take nothing else).
            LinearWeight::Quantized(q) => {
                let y = QMatMul::QTensor(q.clone()).forward(&x2.to_dtype(DType::F32)?)?;
                (y.to_dtype(self.dtype)?, q.shape().dims()[0])
            }
            LinearWeight::Fp8 { weight, scale } => match fp8_gemm(&x2, weight, scale.as_ref())? {
                Some(y) => (y, weight.dim(0)?),
                None => {
                    let w = fp8_dequantized(weight, scale.as_ref(), self.dtype)?;
                    (x2.matmul(&w.t()?)?, w.dim(0)?)
                }
            },
        };
        if let Some((down, up)) = &self.adapter {
            y = (y + x2.matmul(&down.t()?)?.matmul(&up.t()?)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("x has at least one axis") = output;
        Ok(y.reshape(out_dims)?)
    }

    /// The weight [out, in] in the run dtype, for kernels that read it directly; `None` when they
    /// must not serve this layer: the weight is kept quantised, or an unmerged LoRA adds to it.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn plain_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) if self.adapter.is_none() => Some(w),
            _ => None,
        }
    }

    /// `x·(W + ΔW)ᵀ` in f32 for a few rows x [n, in] (no bias): for folding biases.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn project_f32(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let mut y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.to_dtype(DType::F32)?.t()?)?,
            LinearWeight::Quantized(q) => QMatMul::QTensor(q.clone()).forward(&x)?,
            LinearWeight::Fp8 { weight, scale } => {
                let scale = scale.as_ref().map(|s| s.to_dtype(DType::F32)).transpose()?;
                x.matmul(&fp8_dequantized(weight, scale.as_ref(), DType::F32)?.t()?)?
            }
        };
        if let Some((down, up)) = &self.adapter {
            let (down, up) = (down.to_dtype(DType::F32)?, up.to_dtype(DType::F32)?);
            y = (y + x.matmul(&down.t()?)?.matmul(&up.t()?)?)?;
        }
        Ok(y)
    }

    /// The GGUF block type of the weight when it is kept quantised; `None` otherwise.
    pub(crate) fn quantized_type(&self) -> Option<GgmlDType> {
        match &self.weight {
            LinearWeight::Quantized(q) => Some(q.dtype()),
            _ => None,
        }
    }

    /// The bias [out], in the run dtype.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// Rows from which a GGUF layer on a GPU is dequantised for a tensor-core GEMM instead of
/// multiplied by candle's quantised kernels. Those serve a few rows (the time embedder's batch
/// rows) well: they read about one byte a weight, where the dequantised copy writes and reads
/// ten more. The crossover has not been measured; the layers that matter have thousands of
/// rows (tokens) or at most a few (batch).
const DEQUANTIZED_GEMM_MIN_ROWS: usize = 16;

/// Whether a GGUF layer multiplying `rows` rows on `device` is dequantised first (CUDA only:
/// the CPU's quantised matmul is faster than f32, and Metal's has not been measured).
fn dequantize_for_gemm(device: &Device, rows: usize) -> bool {
    device.is_cuda() && rows >= DEQUANTIZED_GEMM_MIN_ROWS
}

/// Environment variable: `1` multiplies every fitting fp8 layer on cuBLASLt's fp8 GEMM (CUDA,
/// Hopper), with the activations rounded to e4m3 by a per-call scale; `0` casts each layer's
/// weight to the run dtype for a GEMM in it. Unset: the fp8 GEMM for layers at least
/// [`FP8_GEMM_MIN_WIDTH`] wide on both sides, the cast for the rest.
pub const FP8_GEMM_ENV: &str = "VDIT_FP8_GEMM";

/// Narrowest layer (inputs and outputs) that takes the fp8 GEMM by default. Measured on an H100
/// (scripts/gpu/NOTES.md, "cuBLASLt fp8 GEMM"): the 14B's 5120- and 13,824-wide layers ran the
/// 720p forward 6 % faster on it (batch 1, resident; 1.7 % with the blocks streamed at batch 2),
/// while the 1.3B's 1536-wide layers ran 1.2 % slower, the two passes that quantise the
/// activations weighing more against a narrower GEMM. Widths in between are not measured.
pub const FP8_GEMM_MIN_WIDTH: usize = 4096;

/// Whether an fp8 layer `input` → `output` wide takes the fp8 GEMM: as [`FP8_GEMM_ENV`] forces,
/// else by [`FP8_GEMM_MIN_WIDTH`]. Read at each call, so that a test can switch it.
#[cfg(feature = "cuda")]
fn fp8_gemm_wanted(input: usize, output: usize) -> bool {
    match std::env::var(FP8_GEMM_ENV).ok().as_deref().map(str::trim) {
        Some("1") => true,
        Some("0") => false,
        _ => input.min(output) >= FP8_GEMM_MIN_WIDTH,
    }
}

/// `x2·Wᵀ` [rows, out] on the fp8 GEMM when [`fp8_gemm_wanted`] and the layer fits it (a Hopper
/// GPU, bf16/f16 rows, 16 rows or more, widths a multiple of 16, one scale per tensor); `None`:
/// the caller casts the weight instead.
fn fp8_gemm(x2: &Tensor, weight: &Tensor, scale: Option<&Tensor>) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        let (rows, input) = x2.dims2()?;
        let output = weight.dim(0)?;
        let fits = x2.device().is_cuda()
            && matches!(x2.dtype(), DType::BF16 | DType::F16)
            && rows >= DEQUANTIZED_GEMM_MIN_ROWS
            && input % 16 == 0
            && output % 16 == 0
            && scale.is_none_or(|s| s.elem_count() == 1);
        if fits
            && fp8_gemm_wanted(input, output)
            && rainfusion::cuda::fp8_gemm_available(x2.device())
        {
            return Ok(Some(rainfusion::cuda::linear_fp8(x2, weight, scale)?));
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (x2, weight, scale);
    Ok(None)
}

/// fp8 values [out, in] cast to `dtype`, times the scale ([1, 1] or [out, 1] in `dtype`) if any.
fn fp8_dequantized(weight: &Tensor, scale: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
    let w = crate::fp8::cast(weight, dtype)?;
    Ok(match scale {
        Some(scale) => w.broadcast_mul(scale)?,
        None => w,
    })
}

/// LayerNorm over the last axis without affine parameters, in f32: (x − mean)/√(var + eps).
/// Two passes (mean, then variance of the centred values) so that a residual stream with a large
/// common offset keeps its precision; candle's fused kernel uses E[x²] − E[x]².
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(variance + eps)?.sqrt()?)?)
}

/// Affine LayerNorm (the cross-attention norm): `layer_norm(x)·weight + bias`, in f32.
pub(crate) struct AffineLayerNorm {
    weight: Tensor, // [dim] f32
    bias: Tensor,   // [dim] f32
    eps: f64,
}

impl AffineLayerNorm {
    pub(crate) fn load(src: &WeightSource, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: src.get(&format!("{prefix}.weight"), &[dim], DType::F32)?,
            bias: src.get(&format!("{prefix}.bias"), &[dim], DType::F32)?,
            eps,
        })
    }

    /// x: [..., dim] → [..., dim] f32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }

    /// This norm rebuilt from `map` applied to its tensors.
    pub(crate) fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            weight: map.tensor(&self.weight)?,
            bias: map.tensor(&self.bias)?,
            eps: self.eps,
        })
    }

    /// (weight [dim] f32, bias [dim] f32, eps), for the fused CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm over the last axis with a learned scale, in f32: x·rsqrt(mean(x²) + eps)·weight.
pub(crate) struct RmsNorm {
    weight: Tensor, // [dim] f32
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(src: &WeightSource, key: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: src.get(key, &[dim], DType::F32)?,
            eps,
        })
    }

    /// x: [..., dim] → [..., dim] f32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }

    /// This norm rebuilt from `map` applied to its weight.
    pub(crate) fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            weight: map.tensor(&self.weight)?,
            eps: self.eps,
        })
    }

    /// (weight [dim] f32, eps), for the fused CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&Tensor, f64) {
        (&self.weight, self.eps)
    }
}

/// `x·(1 + scale) + shift`, the adaptive modulation; x [B, L, dim], shift/scale [B, 1, dim], f32.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wan::CheckpointKeys;

    fn fixture_source(file: &str) -> WeightSource {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(file);
        let files = Arc::new(WeightFiles::open(&path).unwrap());
        let keys = CheckpointKeys::detect(&files).unwrap().key_map();
        WeightSource::new(files, keys, Device::Cpu)
    }

    /// Linear weights stay as stored (GGUF blocks, fp8 with its scale); the rest is dense.
    #[test]
    fn quantised_and_fp8_linear_weights_are_kept_as_stored() {
        let gguf = fixture_source("gguf/wan_tiny_q8_0.gguf");
        let q = gguf
            .linear("blocks.0.attn1.to_q", 64, 64, DType::BF16)
            .unwrap();
        assert!(matches!(&q.weight, LinearWeight::Quantized(t) if t.dtype() == GgmlDType::Q8_0));
        assert!(q.plain_weight().is_none());
        assert_eq!(q.bias().dtype(), DType::BF16);
        // F16 in the file (time_embedding.*): dense in the asked-for dtype.
        let t = gguf
            .linear(
                "condition_embedder.time_embedder.linear_2",
                64,
                64,
                DType::F32,
            )
            .unwrap();
        assert!(matches!(&t.weight, LinearWeight::Dense(w) if w.dtype() == DType::F32));

        let fp8 = fixture_source("fp8/wan_tiny_fp8_scaled.safetensors");
        let l = fp8
            .linear("blocks.1.ffn.net.2", 64, 64, DType::F32)
            .unwrap();
        let LinearWeight::Fp8 { weight, scale } = &l.weight else {
            panic!("not kept in fp8");
        };
        assert_eq!(weight.dtype(), DType::F8E4M3);
        assert_eq!(scale.as_ref().unwrap().dims(), &[1, 1]);
        assert!(l.plain_weight().is_none());
    }

    #[test]
    fn layer_norm_keeps_precision_under_a_large_offset() {
        // Values 1e3 + small wiggles: E[x²] − E[x]² in f32 would cancel to noise here.
        let wiggle: Vec<f32> = (0..64)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
            .collect();
        let shifted: Vec<f32> = wiggle.iter().map(|v| v + 1.0e3).collect();
        let a = layer_norm(&Tensor::new(wiggle.as_slice(), &Device::Cpu).unwrap(), 1e-6).unwrap();
        let b = layer_norm(
            &Tensor::new(shifted.as_slice(), &Device::Cpu).unwrap(),
            1e-6,
        )
        .unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-2, "max difference {diff}");
    }
}
