//! 2-D convolution through cuDNN with tensor-core math allowed, for the VAE decoder on CUDA.
//!
//! candle's cuDNN convolution (feature `cudnn`) leaves the descriptor at cuDNN's default math
//! type, under which 16-bit convolutions may not use tensor cores, asks cuDNN's heuristic for an
//! algorithm on every call and zero-fills a new workspace each time. This path sets
//! `CUDNN_TENSOR_OP_MATH`, remembers the algorithm per shape, and takes its workspace from
//! candle's allocator without a fill. Opt-in ([`TENSOR_OPS_ENV`]) until a GPU run has checked it
//! (scripts/gpu/NOTES.md, v8).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{self, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, InplaceOp1, Layout, Shape, Tensor};
use half::{bf16, f16};

use crate::error::{ModelError, Result};

/// Environment variable that, set to `0`, takes the VAE's 16-bit convolutions off this path and
/// back to candle's cuDNN convolution (which `VDIT_VAE_CONV_ALGO` tunes). This path is the default
/// since kernels v9 (scripts/gpu/NOTES.md; measured on an H100, 2026-11-23,
/// scripts/gpu/results/h100-2026-11-23-kernels-v9/): 5.0 s against 13.8 s for the 480p×81 decode.
pub const TENSOR_OPS_ENV: &str = "VDIT_VAE_TENSOR_OPS";

/// Whether this path serves the VAE's 16-bit CUDA convolutions: unless [`TENSOR_OPS_ENV`] is `0`
/// (read once).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(TENSOR_OPS_ENV).is_none_or(|v| v != "0"))
}

/// Cross-correlation of x `[N, C, H, W]` with kernel `[O, C, kh, kw]`, stride 1, symmetric zero
/// `padding`, f32 accumulation → `[N, O, H', W']` in x's dtype (bf16 or f16, CUDA).
pub fn conv2d_tensor_ops(x: &Tensor, kernel: &Tensor, padding: usize) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (_, kc, _, _) = kernel.dims4()?;
    if !x.device().is_cuda() || !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Err(ModelError::InvalidInput(format!(
            "the tensor-core convolution takes bf16/f16 CUDA tensors, got {:?}",
            x.dtype()
        )));
    }
    if kc != c || kernel.dtype() != x.dtype() {
        return Err(ModelError::InvalidInput(format!(
            "convolution kernel {:?} {:?} does not fit input {:?} {:?}",
            kernel.dims(),
            kernel.dtype(),
            x.dims(),
            x.dtype()
        )));
    }
    let op = ConvOp { padding };
    let (x, kernel) = (x.contiguous()?, kernel.contiguous()?);
    let n = x.dim(0)?;
    match frames_per_call() {
        Some(limit) if n > limit => {
            let parts = (0..n)
                .step_by(limit)
                .map(|start| {
                    x.narrow(0, start, limit.min(n - start))?
                        .apply_op2_no_bwd(&kernel, &op)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        }
        _ => Ok(x.apply_op2_no_bwd(&kernel, &op)?),
    }
}

/// The algorithm chosen per shape (n, c, h, w, o, kh, kw, padding, dtype).
type AlgoCache = HashMap<[usize; 9], cudnn::sys::cudnnConvolutionFwdAlgo_t>;

fn algos() -> &'static Mutex<AlgoCache> {
    static ALGOS: OnceLock<Mutex<AlgoCache>> = OnceLock::new();
    ALGOS.get_or_init(|| Mutex::new(HashMap::new()))
}

thread_local! {
    /// cuDNN handles (not Send) per device, on candle's stream, for this thread.
    static HANDLES: RefCell<HashMap<String, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn cudnn_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN convolution: {e:?}"))
}

struct ConvOp {
    padding: usize,
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "vdit-cudnn-conv2d-tensor-ops"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the tensor-core convolution runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::BF16 => self.launch::<bf16>(x, x_layout, k, k_layout),
            DType::F16 => self.launch::<f16>(x, x_layout, k, k_layout),
            other => candle_core::bail!("tensor-core convolution: unsupported dtype {other:?}"),
        }
    }
}

impl ConvOp {
    fn launch<T>(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: CudaDType + DeviceRepr + CudnnDataType + num_one_zero::OneZero,
    {
        let (n, _, h, w) = x_layout.shape().dims4()?;
        let (o, _, kh, kw) = k_layout.shape().dims4()?;
        let (ho, wo) = output_size(h, w, kh, kw, self.padding)?;
        let dev: CudaDevice = x.device().clone();
        // SAFETY: cuDNN writes every output element (beta = 0).
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n * o * ho * wo)? };
        convolve::<T, _>(x, x_layout, k, k_layout, self.padding, &mut out, T::zero())?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((n, o, ho, wo)),
        ))
    }
}

/// The "same"-style output size of a stride-1 conv, checked.
fn output_size(
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    p: usize,
) -> candle_core::Result<(usize, usize)> {
    if h + 2 * p < kh || w + 2 * p < kw {
        candle_core::bail!("convolution kernel {kh}x{kw} larger than the padded input {h}x{w}")
    }
    Ok((h + 2 * p - kh + 1, w + 2 * p - kw + 1))
}

/// `y = conv(x, k) + beta·y` through cuDNN, f32 accumulation with tensor-core math; x
/// `[N, C, H, W]` and k `[O, C, kh, kw]` contiguous from their layouts' offsets, y the
/// `[N, O, H', W']` destination.
fn convolve<T, Dst>(
    x: &CudaStorage,
    x_layout: &Layout,
    k: &CudaStorage,
    k_layout: &Layout,
    p: usize,
    y: &mut Dst,
    beta: T,
) -> candle_core::Result<()>
where
    T: CudaDType + DeviceRepr + CudnnDataType + num_one_zero::OneZero,
    Dst: DevicePtrMut<T>,
{
    let (n, c, h, w) = x_layout.shape().dims4()?;
    let (o, _, kh, kw) = k_layout.shape().dims4()?;
    let (ho, wo) = output_size(h, w, kh, kw, p)?;
    let dev: CudaDevice = x.device().clone();
    let i32_of = |v: usize| -> candle_core::Result<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{v} exceeds cuDNN's int")))
    };
    let key = format!("{:?}", dev.id());
    let cudnn = HANDLES.with(|handles| -> candle_core::Result<Arc<Cudnn>> {
        if let Some(h) = handles.borrow().get(&key) {
            return Ok(h.clone());
        }
        let handle = Cudnn::new(dev.cuda_stream()).map_err(cudnn_err)?;
        handles.borrow_mut().insert(key.clone(), handle.clone());
        Ok(handle)
    })?;
    // Accumulate in f32 (cuDNN's pseudo-16-bit configuration), tensor-core math allowed.
    let mut conv = cudnn
        .create_conv2d::<f32>(
            [i32_of(p)?, i32_of(p)?],
            [1, 1],
            [1, 1],
            cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(cudnn_err)?;
    conv.set_math_type(cudnn::sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)
        .map_err(cudnn_err)?;
    let nchw = cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let x_desc = cudnn
        .create_4d_tensor::<T>(nchw, [i32_of(n)?, i32_of(c)?, i32_of(h)?, i32_of(w)?])
        .map_err(cudnn_err)?;
    let k_desc = cudnn
        .create_4d_filter::<T>(nchw, [i32_of(o)?, i32_of(c)?, i32_of(kh)?, i32_of(kw)?])
        .map_err(cudnn_err)?;
    let y_desc = cudnn
        .create_4d_tensor::<T>(nchw, [i32_of(n)?, i32_of(o)?, i32_of(ho)?, i32_of(wo)?])
        .map_err(cudnn_err)?;
    let forward = ConvForward {
        conv: &conv,
        x: &x_desc,
        w: &k_desc,
        y: &y_desc,
    };
    let dtype_tag = usize::from(x.dtype() == DType::F16);
    let key = [n, c, h, w, o, kh, kw, p, dtype_tag];
    let cached = algos()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    let algo = match cached {
        Some(algo) => algo,
        None => {
            let algo = forward.pick_algorithm().map_err(cudnn_err)?;
            algos()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, algo);
            if crate::profile::enabled() {
                let bytes = forward.get_workspace_size(algo).map_err(cudnn_err)?;
                eprintln!(
                    "cuDNN conv [n c h w o kh kw pad f16] {key:?}: {algo:?}, workspace {:.1} MiB",
                    bytes as f64 / (1u64 << 20) as f64
                );
            }
            algo
        }
    };
    let workspace_size = forward.get_workspace_size(algo).map_err(cudnn_err)?;
    // SAFETY: scratch memory for cuDNN; nothing reads it before cuDNN writes it.
    let mut workspace: CudaSlice<u8> = unsafe { dev.alloc::<u8>(workspace_size.max(1))? };
    let x_view: CudaView<'_, T> = x.as_cuda_slice::<T>()?.slice(x_layout.start_offset()..);
    let k_view: CudaView<'_, T> = k.as_cuda_slice::<T>()?.slice(k_layout.start_offset()..);
    // SAFETY: the descriptors describe exactly these contiguous buffers; with beta = 0 cuDNN
    // writes every output element without reading it.
    unsafe {
        forward
            .launch::<CudaSlice<u8>, _, _, _>(
                algo,
                Some(&mut workspace),
                (T::one(), beta),
                &x_view,
                &k_view,
                y,
            )
            .map_err(cudnn_err)?;
    }
    Ok(())
}

/// `y += conv(x, kernel)` in place, through the same cuDNN convolution as
/// [`conv2d_tensor_ops`] (cuDNN's beta = 1): one temporal tap of a causal conv added to the taps
/// before it, reading the tap's frames where they lie instead of stacking them. y `[N, O, H, W]`
/// contiguous (a fresh conv output), x `[N, C, H, W]`, kernel `[O, C, kh, kw]`, all in one 16-bit
/// dtype on CUDA. Each tap's sum is rounded to y's dtype: k_t roundings where the stacked conv
/// has one.
pub fn conv2d_tensor_ops_accumulate(
    y: &Tensor,
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
) -> Result<()> {
    let (n, _, h, w) = x.dims4()?;
    let (o, _, kh, kw) = kernel.dims4()?;
    if !y.is_contiguous() || y.dtype() != x.dtype() || kernel.dtype() != x.dtype() {
        return Err(ModelError::InvalidInput(format!(
            "accumulating convolution: y {:?} {:?} must be contiguous in x's dtype {:?}",
            y.dims(),
            y.dtype(),
            x.dtype()
        )));
    }
    let (ho, wo) = output_size(h, w, kh, kw, padding)?;
    if y.dims() != [n, o, ho, wo] {
        return Err(ModelError::InvalidInput(format!(
            "accumulating convolution: y {:?} is not the output shape {:?}",
            y.dims(),
            [n, o, ho, wo]
        )));
    }
    let (x, kernel) = (x.contiguous()?, kernel.contiguous()?);
    let limit = frames_per_call().unwrap_or(n).max(1);
    for start in (0..n).step_by(limit) {
        let len = limit.min(n - start);
        let op = AccumulateOp {
            x: x.narrow(0, start, len)?,
            kernel: kernel.clone(),
            padding,
        };
        // A frame range of a contiguous y is contiguous: cuDNN writes it where it lies.
        y.narrow(0, start, len)?.inplace_op1(&op)?;
    }
    Ok(())
}

struct AccumulateOp {
    x: Tensor,
    kernel: Tensor,
    padding: usize,
}

impl InplaceOp1 for AccumulateOp {
    fn name(&self) -> &'static str {
        "vdit-cudnn-conv2d-accumulate"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the tensor-core convolution runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, y: &mut CudaStorage, y_layout: &Layout) -> candle_core::Result<()> {
        let (x, x_layout) = self.x.storage_and_layout();
        let (k, k_layout) = self.kernel.storage_and_layout();
        let (candle_core::Storage::Cuda(x), candle_core::Storage::Cuda(k)) = (&*x, &*k) else {
            candle_core::bail!("the tensor-core convolution runs on CUDA tensors only")
        };
        let offset = y_layout.start_offset();
        match y.dtype() {
            DType::BF16 => {
                let mut dst = y.as_cuda_slice_mut::<bf16>()?.slice_mut(offset..);
                convolve::<bf16, _>(x, x_layout, k, k_layout, self.padding, &mut dst, bf16::ONE)
            }
            DType::F16 => {
                let mut dst = y.as_cuda_slice_mut::<f16>()?.slice_mut(offset..);
                convolve::<f16, _>(x, x_layout, k, k_layout, self.padding, &mut dst, f16::ONE)
            }
            other => candle_core::bail!("accumulating convolution: unsupported dtype {other:?}"),
        }
    }
}

/// Environment variable: the most images (frames) one cuDNN call convolves; larger batches are
/// split and the outputs joined. cuDNN's implicit-precomputed GEMM, its pick for every VAE
/// shape, takes a workspace that grows with the batch: 2.7 GiB for 4 frames at 720p (H100,
/// 2026-12-07). Unset: one call for the whole batch.
pub const FRAMES_PER_CALL_ENV: &str = "VDIT_VAE_CONV_FRAMES";

/// The frame limit of [`FRAMES_PER_CALL_ENV`], if set to a positive number (read once).
fn frames_per_call() -> Option<usize> {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(FRAMES_PER_CALL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    })
}

/// 1 and 0 in the 16-bit types (cuDNN's alpha and beta are given in the output type).
mod num_one_zero {
    use half::{bf16, f16};

    pub trait OneZero {
        fn one() -> Self;
        fn zero() -> Self;
    }

    impl OneZero for bf16 {
        fn one() -> Self {
            bf16::ONE
        }
        fn zero() -> Self {
            bf16::ZERO
        }
    }

    impl OneZero for f16 {
        fn one() -> Self {
            f16::ONE
        }
        fn zero() -> Self {
            f16::ZERO
        }
    }
}
