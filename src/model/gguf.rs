//! A GGUF file opened for loading: validated header, typed metadata access, tensor reads with
//! byte-level progress. Every failure names the file and what is wrong with it.

use std::fs::File;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{candle_message, Error, ErrorKind, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// The mapped file as a byte slice, shared with [`GgufFile::mapped`].
struct Mapped(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    file_len: u64,
    /// The whole file, mapped: tensor data is repacked from the page cache without a copy.
    map: Arc<memmap2::Mmap>,
}

impl GgufFile {
    /// Opens and validates a GGUF file: magic, header, and that every tensor lies inside the file
    /// (so a truncated download is reported up front, not halfway through loading).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot open model file '{}': {e}", path.display()))
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot stat '{}': {e}", path.display())))?
            .len();
        if file_len == 0 || !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(Error::model_format(format!(
                "'{}' is not a GGUF model: it is empty or not a regular file",
                path.display()
            )));
        }
        // SAFETY: the map is only read; like every mmap-based loader (llama.cpp included) we rely
        // on the file not being truncated or rewritten while the model loads.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot map '{}': {e}", path.display())))?;
        let head = &map[..map.len().min(4)];
        if head != GGUF_MAGIC {
            return Err(Error::model_format(format!(
                "'{}' is not a GGUF file (first bytes {head:02x?}, expected \"GGUF\")",
                path.display(),
            )));
        }
        let map = Arc::new(map);
        let content = read_header(&map).map_err(|why| {
            Error::model_format(format!("'{}' has a corrupt or truncated GGUF header: {why}", path.display()))
        })?;
        let this = Self { path: path.to_path_buf(), content, file_len, map };
        this.check_tensor_extents()?;
        Ok(this)
    }

    fn check_tensor_extents(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let bytes = stored_bytes(info).ok_or_else(|| {
                Error::model_format(format!(
                    "'{}': tensor '{name}' has an impossible shape {:?} for {:?}",
                    self.path.display(),
                    info.shape.dims(),
                    info.ggml_dtype
                ))
            })?;
            let end = self.content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if end > self.file_len {
                return Err(Error::model_format(format!(
                    "'{}' is truncated: tensor '{name}' ends at byte {end} but the file has {} bytes",
                    self.path.display(),
                    self.file_len
                )));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Total bytes of tensor data, for progress reporting.
    pub fn tensor_bytes(&self, name: &str) -> u64 {
        self.content.tensor_infos.get(name).and_then(stored_bytes).unwrap_or(0)
    }

    fn value(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).ok_or_else(|| {
            Error::model_format(format!("'{}' lacks the GGUF metadata key '{key}'", self.path.display()))
        })
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> Error {
        // candle's conversion errors may carry a backtrace: keep only the first line.
        let e = e.to_string();
        let e = e.lines().next().unwrap_or_default();
        Error::model_format(format!("'{}': metadata '{key}' has the wrong type: {e}", self.path.display()))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.value(key)?.to_string().map(|s| s.as_str()).map_err(|e| self.bad(key, candle_message(&e)))
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.content.metadata.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
    }

    /// Any integer type, as GGUF writers differ in which width they use.
    pub fn u64(&self, key: &str) -> Result<u64> {
        use gguf_file::Value as V;
        let v = self.value(key)?;
        let n: i128 = match v {
            V::U8(x) => *x as i128,
            V::I8(x) => *x as i128,
            V::U16(x) => *x as i128,
            V::I16(x) => *x as i128,
            V::U32(x) => *x as i128,
            V::I32(x) => *x as i128,
            V::U64(x) => *x as i128,
            V::I64(x) => *x as i128,
            other => {
                return Err(self.bad(key, format!("expected an integer, found {:?}", other.value_type())))
            }
        };
        u64::try_from(n).map_err(|_| self.bad(key, format!("negative value {n}")))
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.has_key(key).then(|| self.u64(key).ok()).flatten()
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::F32(x) => Ok(*x),
            V::F64(x) => Ok(*x as f32),
            other => Err(self.bad(key, format!("expected a float, found {:?}", other.value_type()))),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        self.has_key(key).then(|| self.f32(key).ok()).flatten()
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.content.metadata.get(key).and_then(|v| v.to_bool().ok())
    }

    fn array(&self, key: &str) -> Result<&Vec<gguf_file::Value>> {
        self.value(key)?.to_vec().map_err(|e| self.bad(key, e))
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        Ok(self.str_refs(key)?.into_iter().map(str::to_string).collect())
    }

    /// A string array's entries, borrowed (a 50k-entry vocabulary's merges need not be copied
    /// before they are split).
    pub fn str_refs(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| v.to_string().map(String::as_str).map_err(|e| self.bad(key, e)))
            .collect()
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?.iter().map(|v| v.to_f32().map_err(|e| self.bad(key, e))).collect()
    }

    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array(key)?.iter().map(|v| v.to_i32().map_err(|e| self.bad(key, e))).collect()
    }

    /// Block type and shape (outermost dimension first) of a tensor, if the file has it.
    pub fn tensor_layout(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.content.tensor_infos.get(name).map(|i| (i.ggml_dtype, i.shape.dims().to_vec()))
    }

    /// Where a tensor's raw GGUF blocks lie in [`Self::mapped`]: the caller repacks straight from
    /// the page cache (no read into a buffer, no intermediate tensor). A missing tensor is a
    /// format error that names it.
    pub fn tensor_range(&self, name: &str) -> Result<Range<usize>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            Error::model_format(format!("'{}' lacks the tensor '{name}'", self.path.display()))
        })?;
        // In bounds: check_tensor_extents verified every tensor at open.
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(start..start + self.tensor_bytes(name) as usize)
    }

    /// The mapped file, to slice with [`Self::tensor_range`].
    pub fn mapped(&self) -> Arc<memmap2::Mmap> {
        self.map.clone()
    }

    /// Reads one tensor. A missing tensor is a format error that names it.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::model_format(format!("'{}' lacks the tensor '{name}'", self.path.display())));
        }
        // A cursor of its own per read: the file can be shared between threads while loading.
        self.content.tensor(&mut Cursor::new(Mapped(self.map.clone())), name, device).map_err(|e| {
            Error::model_format(format!(
                "'{}': cannot read tensor '{name}': {}",
                self.path.display(),
                candle_message(&e)
            ))
        })
    }
}

/// Parses the header from memory (a vocabulary of ~50k strings), not through read calls. candle
/// divides by `general.alignment` unchecked, so a header declaring 0 panics inside it: that is a
/// broken file, reported as one.
fn read_header(map: &Arc<memmap2::Mmap>) -> std::result::Result<gguf_file::Content, String> {
    let read = || gguf_file::Content::read(&mut Cursor::new(Mapped(map.clone())));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(content) => content.map_err(|e| candle_message(&e)),
        Err(_) => Err("the reader failed on an out-of-range value such as general.alignment 0".into()),
    }
}

/// Bytes a tensor's blocks take in the file; `None` when its element count overflows or is not
/// a whole number of blocks (a crafted header, which would otherwise pass the extent check).
fn stored_bytes(info: &gguf_file::TensorInfo) -> Option<u64> {
    let elems = info.shape.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let block = info.ggml_dtype.block_size();
    if elems % block != 0 {
        return None;
    }
    (elems / block).checked_mul(info.ggml_dtype.type_size()).map(|b| b as u64)
}
