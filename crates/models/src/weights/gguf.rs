//! GGUF files (llama.cpp's format, used for quantised diffusion models by ComfyUI-GGUF and
//! stable-diffusion.cpp): the header is parsed here, over the mmap, and tensors become candle
//! [`QTensor`]s or plain tensors.
//!
//! We parse the header ourselves instead of with `candle_core::quantized::gguf_file::Content`
//! because the published Wan files hold a 5-D tensor (the patch embedding's Conv3d kernel, added
//! back in F32 after quantisation) and candle's reader refuses more than 4 dimensions; reading
//! from the mmap also avoids copying a 14B file through a reader.
//!
//! Layout (versions 2 and 3): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! the metadata (key string, value type u32, value); each tensor's name, dimension count u32,
//! dimensions u64 (innermost first), ggml type u32 and offset u64 into the data section, which
//! starts at the next multiple of `general.alignment` (32 by default). Strings are a u64 length
//! and UTF-8 bytes. All little-endian.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;

use super::{Result, WeightsError};

/// The four bytes every GGUF file starts with.
pub(super) const MAGIC: &[u8; 4] = b"GGUF";

/// How a GGUF tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    /// A type candle reads: F32, F16, BF16 or one of its block quantisations.
    Known(GgmlDType),
    /// A ggml type id candle has no kernels for (the IQ and ternary types, integers): loading
    /// such a tensor is an error that names it.
    Unsupported(u32),
}

impl GgufType {
    fn from_id(id: u32) -> Self {
        use GgmlDType::*;
        Self::Known(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            other => return Self::Unsupported(other),
        })
    }

    /// Whether this is a block quantisation (not F32/F16/BF16).
    pub fn is_quantized(self) -> bool {
        !matches!(
            self,
            Self::Known(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        )
    }

    /// The name llama.cpp gives the type (`Q4_K`, `IQ2_XXS`, ...).
    pub fn name(self) -> String {
        use GgmlDType::*;
        let known = match self {
            Self::Known(t) => match t {
                F32 => "F32",
                F16 => "F16",
                BF16 => "BF16",
                Q4_0 => "Q4_0",
                Q4_1 => "Q4_1",
                Q5_0 => "Q5_0",
                Q5_1 => "Q5_1",
                Q8_0 => "Q8_0",
                Q8_1 => "Q8_1",
                Q2K => "Q2_K",
                Q3K => "Q3_K",
                Q4K => "Q4_K",
                Q5K => "Q5_K",
                Q6K => "Q6_K",
                Q8K => "Q8_K",
            },
            Self::Unsupported(id) => match id {
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                _ => return format!("ggml type {id}"),
            },
        };
        known.to_string()
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone)]
pub(super) struct GgufTensor {
    pub kind: GgufType,
    /// Outermost first, as PyTorch writes it (GGUF stores the dimensions innermost first).
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// The parsed header of a GGUF file: its architecture and where each tensor lies.
#[derive(Debug)]
pub(super) struct GgufHeader {
    pub architecture: Option<String>,
    pub tensors: HashMap<String, GgufTensor>,
}

/// A cursor over the header bytes that turns a short read into a clear error.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, reason: impl Into<String>) -> WeightsError {
        WeightsError::NotGguf {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.bad(format!(
                "header ends early (wanted {n} bytes at offset {})",
                self.pos
            )));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length or count, refused when it could not fit in the file.
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        if n > self.bytes.len() as u64 {
            return Err(self.bad(format!("length {n} larger than the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }

    /// Reads a metadata value of type `kind`; returns it when it is a string or an integer
    /// (the only values read here), skips it otherwise.
    fn value(&mut self, kind: u32) -> Result<Value> {
        Ok(match kind {
            0 | 1 | 7 => Value::Int(self.take(1)?[0] as u64),
            2 | 3 => Value::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            4 | 5 => Value::Int(self.u32()? as u64),
            6 => {
                self.take(4)?;
                Value::Other
            }
            8 => Value::Text(self.string()?),
            9 => {
                let item = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.value(item)?;
                }
                Value::Other
            }
            10 | 11 => Value::Int(self.u64()?),
            12 => {
                self.take(8)?;
                Value::Other
            }
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

enum Value {
    Int(u64),
    Text(String),
    Other,
}

/// Parses the header of the GGUF file `path` whose bytes are `bytes`.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<GgufHeader> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    if c.take(4)? != MAGIC {
        return Err(c.bad("no GGUF magic"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(c.bad(format!(
            "GGUF version {version} (versions 2 and 3 are read)"
        )));
    }
    let tensor_count = c.len()?;
    let metadata_count = c.len()?;
    let mut architecture = None;
    let mut alignment = 32usize;
    for _ in 0..metadata_count {
        let key = c.string()?;
        let kind = c.u32()?;
        match (key.as_str(), c.value(kind)?) {
            ("general.architecture", Value::Text(arch)) => architecture = Some(arch),
            ("general.alignment", Value::Int(a)) if a > 0 && a <= 1 << 20 => alignment = a as usize,
            _ => {}
        }
    }
    struct Info {
        name: String,
        kind: GgufType,
        shape: Vec<usize>,
        offset: u64,
    }
    let mut infos = Vec::with_capacity(tensor_count.min(1 << 20));
    for _ in 0..tensor_count {
        let name = c.string()?;
        let rank = c.u32()? as usize;
        if rank > 8 {
            return Err(c.bad(format!("tensor `{name}` has {rank} dimensions")));
        }
        let mut shape = (0..rank)
            .map(|_| match c.u64()? {
                n if n < 1 << 40 => Ok(n as usize),
                n => Err(c.bad(format!("tensor `{name}` has a dimension of {n}"))),
            })
            .collect::<Result<Vec<usize>>>()?;
        shape.reverse();
        let kind = GgufType::from_id(c.u32()?);
        let offset = c.u64()?;
        infos.push(Info {
            name,
            kind,
            shape,
            offset,
        });
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let mut tensors = HashMap::with_capacity(infos.len());
    for info in infos {
        let elements: usize = info.shape.iter().product();
        // Unsupported types have no known size: their extent is checked only when read (never).
        let size = match info.kind {
            GgufType::Known(t) => {
                if !elements.is_multiple_of(t.block_size()) {
                    return Err(c.bad(format!(
                        "tensor `{}` {:?}: {} elements are not whole {} blocks",
                        info.name,
                        info.shape,
                        elements,
                        info.kind.name()
                    )));
                }
                elements / t.block_size() * t.type_size()
            }
            GgufType::Unsupported(_) => 0,
        };
        let start = (data_start as u64)
            .checked_add(info.offset)
            .filter(|s| s + size as u64 <= bytes.len() as u64)
            .ok_or_else(|| {
                c.bad(format!(
                    "tensor `{}` lies beyond the end of the file (truncated?)",
                    info.name
                ))
            })? as usize;
        tensors.insert(
            info.name,
            GgufTensor {
                kind: info.kind,
                shape: info.shape,
                start,
                end: start + size,
            },
        );
    }
    Ok(GgufHeader {
        architecture,
        tensors,
    })
}

/// Whether `path` names a GGUF file: by its extension, or by its first four bytes.
pub(super) fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || has_magic(path)
}

/// Whether the file at `path` starts with the GGUF magic.
pub(super) fn has_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == MAGIC)
}

/// The error for a tensor stored in a type candle cannot read.
pub(super) fn unsupported(key: &str, kind: GgufType, file: &Path) -> WeightsError {
    WeightsError::UnsupportedDtype {
        key: key.to_string(),
        dtype: format!(
            "{} (GGUF; candle reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)",
            kind.name()
        ),
        file: PathBuf::from(file),
    }
}
