//! Checkpoint weights: memory-mapped safetensors (one file or shards) or GGUF files, key dialects,
//! dtype casts, and errors that name the key, the shapes and the file.
//!
//! A [`WeightFiles`] is a set of mmapped safetensors files with a key → file index. A network
//! reads it through a candle [`VarBuilder`] made by [`WeightFiles::var_builder`], whose prefixes
//! are spelled as the canonical checkpoint keys; a [`KeyMap`] maps a canonical key to the name
//! used by the file (another dialect, a prefix).
//!
//! Loading has two methods ([`LoadMethod`]): the fast one (default) copies a tensor's bytes
//! straight from the mmap into its buffer with several threads, casts in parallel on the CPU
//! ([`host`]) and, on CUDA, stages through pinned buffers with asynchronous uploads and casts on
//! the GPU ([`upload`]); the plain one (`VDIT_FAST_LOAD=0`) reads one tensor at a time through
//! candle (copy, cast, move). Both give bit-identical tensors.
//!
//! A GGUF file ([`gguf`]) holds some tensors block-quantised (Q8_0, Q4_K, ...): [`WeightFiles::load`]
//! dequantises them (to any dtype), and [`WeightFiles::load_quantized`] hands them over as candle
//! [`QTensor`]s for quantised matmuls. Safetensors files may store `float8_e4m3fn` tensors, which
//! load like the other float types.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use safetensors::tensor::{Metadata, SafeTensors};

pub mod gguf;
mod host;
#[cfg(feature = "cuda")]
mod upload;

/// The environment variable that picks the loading method: `0` takes [`LoadMethod::Plain`].
pub const FAST_LOAD_ENV: &str = "VDIT_FAST_LOAD";

/// How tensors go from the mmapped file into device memory; both give identical tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMethod {
    /// Parallel copies straight from the mmap, parallel casts on the CPU; on CUDA, pinned staging
    /// buffers, asynchronous uploads in the file's dtype and the cast on the GPU.
    Fast,
    /// candle's own path, one tensor at a time: copy out of the mmap, cast on the CPU, move.
    Plain,
}

impl LoadMethod {
    /// [`LoadMethod::Plain`] when `VDIT_FAST_LOAD=0`, else [`LoadMethod::Fast`].
    pub fn from_env() -> Self {
        match std::env::var(FAST_LOAD_ENV) {
            Ok(v) if v.trim() == "0" => Self::Plain,
            _ => Self::Fast,
        }
    }
}

/// Errors raised while opening or reading checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid safetensors file ({reason}); it may be truncated or of another format")]
    NotSafetensors { path: PathBuf, reason: String },

    #[error(
        "{path} is not a readable GGUF file ({reason}); it may be truncated or of another format"
    )]
    NotGguf { path: PathBuf, reason: String },

    #[error("bad shard index {path}: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error(
        "no weights found in {dir} (looked for *.safetensors, *.safetensors.index.json and *.gguf)"
    )]
    NoWeights { dir: PathBuf },

    #[error("missing tensor `{key}`{} in {files}", expected_shape(expected))]
    MissingTensor {
        key: String,
        expected: Option<Vec<usize>>,
        files: String,
    },

    #[error("tensor `{key}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        file: PathBuf,
    },

    #[error("tensor `{key}` in {file} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        key: String,
        dtype: String,
        file: PathBuf,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, WeightsError>;

/// ` (expected shape [1024, 256])`, or nothing when no shape is expected.
fn expected_shape(expected: &Option<Vec<usize>>) -> String {
    match expected {
        Some(shape) => format!(" (expected shape {shape:?})"),
        None => String::new(),
    }
}

/// One mmapped weights file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    index: Index,
}

/// Where a file's tensors lie.
enum Index {
    Safetensors {
        header_len: usize,
        metadata: Metadata,
    },
    Gguf(gguf::GgufHeader),
}

/// A stored tensor as found in its file: plain values, or GGUF blocks.
enum Stored<'a> {
    Plain(RawTensor<'a>),
    Quantized {
        kind: candle_core::quantized::GgmlDType,
        shape: &'a [usize],
        bytes: &'a [u8],
    },
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we rely on it not being
        // modified while the process runs.
        let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        let named_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let index = if mmap.starts_with(gguf::MAGIC) || named_gguf {
            Index::Gguf(gguf::parse(&mmap, path)?)
        } else {
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| WeightsError::NotSafetensors {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            Index::Safetensors {
                header_len,
                metadata,
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            index,
        })
    }

    fn names(&self) -> Vec<String> {
        match &self.index {
            Index::Safetensors { metadata, .. } => metadata.tensors().into_keys().collect(),
            Index::Gguf(header) => header.tensors.keys().cloned().collect(),
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.index {
            Index::Safetensors { metadata, .. } => metadata.info(name).map(|i| i.shape.clone()),
            Index::Gguf(header) => header.tensors.get(name).map(|t| t.shape.clone()),
        }
    }

    /// How tensor `name` is stored in a GGUF file (`None` in safetensors or when absent).
    fn gguf_type(&self, name: &str) -> Option<gguf::GgufType> {
        match &self.index {
            Index::Gguf(header) => header.tensors.get(name).map(|t| t.kind),
            Index::Safetensors { .. } => None,
        }
    }

    fn missing(&self, name: &str) -> WeightsError {
        WeightsError::MissingTensor {
            key: name.to_string(),
            expected: None,
            files: self.path.display().to_string(),
        }
    }

    /// Tensor `name`'s storage, shape and bytes (still in the mmap).
    fn stored(&self, name: &str) -> Result<Stored<'_>> {
        let (header_len, metadata) = match &self.index {
            Index::Safetensors {
                header_len,
                metadata,
            } => (*header_len, metadata),
            Index::Gguf(header) => {
                let t = header.tensors.get(name).ok_or_else(|| self.missing(name))?;
                let bytes = &self.mmap[t.start..t.end];
                return Ok(match t.kind {
                    gguf::GgufType::Unsupported(_) => {
                        return Err(gguf::unsupported(name, t.kind, &self.path))
                    }
                    gguf::GgufType::Known(kind) if t.kind.is_quantized() => Stored::Quantized {
                        kind,
                        shape: &t.shape,
                        bytes,
                    },
                    gguf::GgufType::Known(kind) => Stored::Plain(RawTensor {
                        dtype: match kind {
                            candle_core::quantized::GgmlDType::F16 => DType::F16,
                            candle_core::quantized::GgmlDType::BF16 => DType::BF16,
                            _ => DType::F32,
                        },
                        shape: &t.shape,
                        bytes,
                    }),
                });
            }
        };
        let info = metadata.info(name).ok_or_else(|| self.missing(name))?;
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U32 => DType::U32,
            safetensors::Dtype::U8 => DType::U8,
            safetensors::Dtype::F8_E4M3 => DType::F8E4M3,
            other => {
                return Err(WeightsError::UnsupportedDtype {
                    key: name.to_string(),
                    dtype: format!("{other:?}"),
                    file: self.path.clone(),
                })
            }
        };
        let start = 8 + header_len + info.data_offsets.0;
        let end = 8 + header_len + info.data_offsets.1;
        Ok(Stored::Plain(RawTensor {
            dtype,
            shape: &info.shape,
            bytes: &self.mmap[start..end],
        }))
    }
}

/// GGUF blocks as a candle [`QTensor`] on `device`.
fn qtensor(
    kind: candle_core::quantized::GgmlDType,
    shape: &[usize],
    bytes: &[u8],
    device: &Device,
) -> Result<QTensor> {
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, kind)?;
    Ok(QTensor::new(storage, shape)?)
}

/// A tensor as stored: its dtype, shape and little-endian bytes inside the mmap.
struct RawTensor<'a> {
    dtype: DType,
    shape: &'a [usize],
    bytes: &'a [u8],
}

impl RawTensor<'_> {
    /// candle's own path: copy onto the CPU in the stored dtype, cast there, then move.
    fn load_plain(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = Tensor::from_raw_buffer(self.bytes, self.dtype, self.shape, &Device::Cpu)?;
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }
}

/// A checkpoint: one or more safetensors files and the index of which file holds which key.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    key_to_file: HashMap<String, usize>,
    method: LoadMethod,
    /// Pinned staging buffers for uploads to a CUDA device, made at the first upload.
    #[cfg(feature = "cuda")]
    stager: Mutex<Option<upload::Stager>>,
}

impl std::fmt::Debug for WeightFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFiles")
            .field("files", &self.paths())
            .finish()
    }
}

impl WeightFiles {
    /// Opens a checkpoint from a path that is a `.safetensors` or `.gguf` file (recognised by
    /// its first bytes), a `*.safetensors.index.json` shard index, or a directory holding them
    /// (an index wins over single files; GGUF files are read when there is no safetensors file).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::open_dir(path);
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".index.json") {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()])
    }

    fn open_dir(dir: &Path) -> Result<Self> {
        let io = |source| WeightsError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let is_named = |p: &PathBuf, suffix: &str| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        };
        if let Some(index) = entries
            .iter()
            .find(|p| is_named(p, ".safetensors.index.json"))
        {
            return Self::open_index(index);
        }
        let mut files: Vec<PathBuf> = entries
            .iter()
            .filter(|p| is_named(p, ".safetensors"))
            .cloned()
            .collect();
        if files.is_empty() {
            // A folder holding a GGUF file (and perhaps its config.json).
            files = entries
                .into_iter()
                .filter(|p| gguf::is_gguf(p) && p.is_file())
                .collect();
        }
        if files.is_empty() {
            return Err(WeightsError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        Self::open_files(&files)
    }

    /// Opens the shards listed by a `*.safetensors.index.json` (`{"weight_map": {key: file}}`).
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let bad = |reason: String| WeightsError::BadIndex {
            path: index_path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(index_path).map_err(|source| WeightsError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shard_names.sort_unstable();
        shard_names.dedup();
        let shards: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        Self::open_files(&shards)
    }

    /// Opens a list of safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let files = paths
            .iter()
            .map(|p| MappedFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        let mut key_to_file = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                key_to_file.insert(name, i);
            }
        }
        Ok(Self {
            files,
            key_to_file,
            method: LoadMethod::from_env(),
            #[cfg(feature = "cuda")]
            stager: Mutex::new(None),
        })
    }

    /// The same files, loaded with `method` from now on (the default comes from `VDIT_FAST_LOAD`).
    pub fn with_load_method(mut self, method: LoadMethod) -> Self {
        self.method = method;
        self
    }

    pub fn load_method(&self) -> LoadMethod {
        self.method
    }

    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Every key stored in the checkpoint, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.key_to_file.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    pub fn contains(&self, key: &str) -> bool {
        self.key_to_file.contains_key(key)
    }

    /// The stored shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let file = &self.files[*self.key_to_file.get(key)?];
        file.shape(key)
    }

    /// The checkpoint's file paths, comma-separated, as error messages name them.
    pub fn files_description(&self) -> String {
        let paths: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        paths.join(", ")
    }

    /// `key`'s storage in its file, after checking that it exists with the shape `expected`.
    fn stored(&self, key: &str, expected: Option<&Shape>) -> Result<(&MappedFile, Stored<'_>)> {
        let Some(&file_idx) = self.key_to_file.get(key) else {
            return Err(WeightsError::MissingTensor {
                key: key.to_string(),
                expected: expected.map(|s| s.dims().to_vec()),
                files: self.files_description(),
            });
        };
        let file = &self.files[file_idx];
        let stored = file.stored(key)?;
        let shape = match &stored {
            Stored::Plain(raw) => raw.shape,
            Stored::Quantized { shape, .. } => shape,
        };
        if let Some(expected) = expected {
            if shape != expected.dims() {
                return Err(WeightsError::ShapeMismatch {
                    key: key.to_string(),
                    expected: expected.dims().to_vec(),
                    found: shape.to_vec(),
                    file: file.path.clone(),
                });
            }
        }
        Ok((file, stored))
    }

    /// Loads `key` (a file key, after any renaming), checks its shape, casts and moves it. A
    /// GGUF block-quantised tensor is dequantised (on the CPU, then cast and moved).
    pub fn load(
        &self,
        key: &str,
        expected: Option<&Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let raw = match self.stored(key, expected)?.1 {
            Stored::Plain(raw) => raw,
            Stored::Quantized { kind, shape, bytes } => {
                let dequantized =
                    qtensor(kind, shape, bytes, &Device::Cpu)?.dequantize(&Device::Cpu)?;
                return Ok(dequantized.to_dtype(dtype)?.to_device(device)?);
            }
        };
        match (self.method, device) {
            (LoadMethod::Plain, _) => raw.load_plain(dtype, device),
            (LoadMethod::Fast, Device::Cpu) => match host::load(&raw, dtype) {
                Some(tensor) => tensor,
                // A cast the fast path does not do (integers): candle's own.
                None => raw.load_plain(dtype, device),
            },
            // fp8 is cast on the CPU (the staged upload takes the 16/32/64-bit types).
            #[cfg(feature = "cuda")]
            (LoadMethod::Fast, Device::Cuda(cuda)) if raw.dtype != DType::F8E4M3 => {
                let mut stager = self.stager.lock().unwrap_or_else(|e| e.into_inner());
                upload::Stager::for_device(&mut stager, cuda)?.upload(&raw, dtype, cuda)
            }
            (LoadMethod::Fast, _) => raw.load_plain(dtype, device),
        }
    }

    /// `key` as a candle [`QTensor`] on `device` when it is stored block-quantised (a GGUF
    /// Q8_0, Q4_K, ... tensor), after checking its shape; `None` when it is stored as plain
    /// values (read it with [`Self::load`]).
    pub fn load_quantized(
        &self,
        key: &str,
        expected: Option<&Shape>,
        device: &Device,
    ) -> Result<Option<QTensor>> {
        Ok(match self.stored(key, expected)?.1 {
            Stored::Plain(_) => None,
            Stored::Quantized { kind, shape, bytes } => Some(qtensor(kind, shape, bytes, device)?),
        })
    }

    /// How `key` is stored when it comes from a GGUF file (`None` in safetensors, or absent).
    pub fn gguf_type(&self, key: &str) -> Option<gguf::GgufType> {
        self.files[*self.key_to_file.get(key)?].gguf_type(key)
    }

    /// The dtype `key` is stored in when it comes from a safetensors file (`None` in GGUF, or
    /// absent).
    pub fn stored_dtype(&self, key: &str) -> Option<DType> {
        match self.files[*self.key_to_file.get(key)?].stored(key).ok()? {
            Stored::Plain(raw) if self.gguf_type(key).is_none() => Some(raw.dtype),
            _ => None,
        }
    }

    /// The `general.architecture` of the first GGUF file among these (e.g. `wan`); `None` when
    /// there is no GGUF file or it names no architecture.
    pub fn gguf_architecture(&self) -> Option<&str> {
        self.files.iter().find_map(|f| match &f.index {
            Index::Gguf(header) => header.architecture.as_deref(),
            Index::Safetensors { .. } => None,
        })
    }

    /// The error [`Self::load`] would give for the first GGUF tensor (by name) stored in a type
    /// candle does not read; `Ok` when there is none (or no GGUF file). Headers only.
    pub fn check_gguf_types(&self) -> Result<()> {
        for key in self.keys() {
            let file = &self.files[self.key_to_file[key]];
            if let Some(kind @ gguf::GgufType::Unsupported(_)) = file.gguf_type(key) {
                return Err(gguf::unsupported(key, kind, &file.path));
            }
        }
        Ok(())
    }

    /// Whether the file at `path` is a GGUF file (its first four bytes).
    pub fn is_gguf_file(path: &Path) -> bool {
        gguf::has_magic(path)
    }

    /// Whether any of these files is a GGUF file.
    pub fn is_gguf(&self) -> bool {
        self.files.iter().any(|f| matches!(f.index, Index::Gguf(_)))
    }

    /// Checks that `key` is stored with the shape `expected`, reading only the header: the
    /// errors [`Self::load`] would give, without reading the tensor.
    pub fn check(&self, key: &str, expected: &Shape) -> Result<()> {
        let Some(&file_idx) = self.key_to_file.get(key) else {
            return Err(WeightsError::MissingTensor {
                key: key.to_string(),
                expected: Some(expected.dims().to_vec()),
                files: self.files_description(),
            });
        };
        let file = &self.files[file_idx];
        match file.shape(key) {
            Some(found) if found != expected.dims() => Err(WeightsError::ShapeMismatch {
                key: key.to_string(),
                expected: expected.dims().to_vec(),
                found,
                file: file.path.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A VarBuilder that checks, instead of loading: each tensor a network asks for must be
    /// stored under its mapped key with the asked-for shape (header only), and the network gets a
    /// zero-sized-storage stand-in (one zero broadcast to the shape, on the CPU). Building a
    /// network with it proves that a later [`Self::var_builder`] load will find every tensor,
    /// in seconds and without the memory of the weights: the pipeline does this for networks
    /// that load after sampling (the VAE), so a checkpoint that lacks a tensor fails before the
    /// first step instead of after the whole denoise.
    pub fn checking_var_builder(self: &Arc<Self>, key_map: KeyMap) -> VarBuilder<'static> {
        let backend = HeaderCheck {
            files: self.clone(),
            key_map,
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu)
    }

    /// A VarBuilder over these files. `key_map` turns the canonical key a network asks for
    /// into the key stored in the file (use [`KeyMap::identity`] when they agree).
    pub fn var_builder(
        self: &Arc<Self>,
        key_map: KeyMap,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Backend {
            files: self.clone(),
            key_map,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }
}

/// Maps a canonical key (as the network's VarBuilder spells it) to the key stored in a file.
#[derive(Clone)]
pub struct KeyMap(Arc<dyn Fn(&str) -> String + Send + Sync>);

impl KeyMap {
    pub fn identity() -> Self {
        Self(Arc::new(|k: &str| k.to_string()))
    }

    pub fn new(f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Prepends `prefix` to every key (e.g. ComfyUI's `model.diffusion_model.`), after `self`.
    pub fn with_prefix(self, prefix: &str) -> Self {
        let prefix = prefix.to_string();
        Self(Arc::new(move |k: &str| format!("{prefix}{}", (self.0)(k))))
    }

    pub fn map(&self, key: &str) -> String {
        (self.0)(key)
    }
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMap")
    }
}

struct Backend {
    files: Arc<WeightFiles>,
    key_map: KeyMap,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = self.key_map.map(name);
        self.files
            .load(&key, Some(&s), dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = self.key_map.map(name);
        self.files
            .load(&key, None, dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.contains(&self.key_map.map(name))
    }
}

/// The backend of [`WeightFiles::checking_var_builder`].
struct HeaderCheck {
    files: Arc<WeightFiles>,
    key_map: KeyMap,
}

impl HeaderCheck {
    fn stand_in(s: &Shape, dtype: DType) -> candle_core::Result<Tensor> {
        Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(s)
    }
}

impl SimpleBackend for HeaderCheck {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.files
            .check(&self.key_map.map(name), &s)
            .map_err(candle_core::Error::wrap)?;
        Self::stand_in(&s, dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = self.key_map.map(name);
        let shape = self.files.shape(&key).ok_or_else(|| {
            candle_core::Error::wrap(WeightsError::MissingTensor {
                key: key.clone(),
                expected: None,
                files: self.files.files_description(),
            })
        })?;
        Self::stand_in(&Shape::from(shape), dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.contains(&self.key_map.map(name))
    }
}

/// How a random model's linear weights are stored (benchmarks of each weight format at the
/// real size, without a checkpoint). What is computed is the run dtype in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RandomWeightFormat {
    /// In the run dtype, like every other tensor.
    #[default]
    RunDtype,
    /// GGUF blocks of this type wherever a row is a whole number of blocks (as GGUF converters
    /// do); the rest in the run dtype.
    Gguf(candle_core::quantized::GgmlDType),
    /// `float8_e4m3fn` values with a per-tensor `scale_weight`, as ComfyUI's scaled fp8 files
    /// store them; the rest in the run dtype.
    Fp8Scaled,
}

/// Random weights in place of a checkpoint, for benchmarks at the real model size: every tensor a
/// network asks for is drawn on its device when asked for, so nothing is read from disk.
///
/// Matrices and kernels are normal with std `1/sqrt(fan_in)` (fan_in = all dims but the first),
/// which keeps activations of a deep stack bounded; vectors named `weight`/`gamma` are `1 + N(0,
/// 0.1)` (norm scales), other vectors `N(0, 0.1)` (biases). The values are not meant to be
/// reproducible: only shapes, dtypes and devices matter for timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomWeights;

impl RandomWeights {
    /// A random tensor of `shape` for the parameter `name`, in `dtype` on `device`.
    pub fn tensor(name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        // A vector may be stored with trailing unit axes (the VAE's RMS gammas are [dim, 1, 1]).
        let fan_in: usize = shape.dims().iter().skip(1).product();
        let (mean, std) = if fan_in == 1 {
            let is_scale = name.ends_with("weight") || name.ends_with("gamma");
            (if is_scale { 1.0 } else { 0.0 }, 0.1)
        } else {
            (0.0, 1.0 / (fan_in as f64).sqrt())
        };
        // Drawn in f32 (candle's randn has no bf16/f16 generator on every backend), then cast.
        let tensor = Tensor::randn(mean as f32, std as f32, shape.clone(), device)?;
        Ok(tensor.to_dtype(dtype)?)
    }

    /// A VarBuilder whose every `get` is a fresh random tensor of the requested shape.
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Self::tensor(name, &s, dtype, dev).map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // Without a shape there is nothing to draw: say which parameter asked.
        Err(candle_core::Error::Msg(format!(
            "random weights need a shape for '{name}'"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
