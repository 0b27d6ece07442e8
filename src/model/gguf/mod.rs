//! A GGUF file opened for loading: validated header, typed metadata access, tensor reads with
//! byte-level progress. Every failure names the file and what is wrong with it. The header is
//! Maze's own parse ([`header`]), which knows every tensor type ggml defines and keeps strings and
//! arrays in the mapped file.

mod ggml_type;
mod header;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::Device;

pub use ggml_type::GgmlType;
use header::{ArrayValue, Header, MetaValue, TensorInfo, ValueType};

use crate::error::{candle_message, Error, ErrorKind, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

pub struct GgufFile {
    path: PathBuf,
    header: Header,
    file_len: u64,
    /// The whole file, mapped: tensor data is repacked from the page cache without a copy, and
    /// metadata strings are read from it.
    map: Arc<memmap2::Mmap>,
}

impl GgufFile {
    /// Opens and validates a GGUF file: magic, header, and that every tensor lies inside the file
    /// (so a truncated download is reported up front, not halfway through loading).
    pub fn open(path: &Path) -> Result<Self> {
        // Checked before opening: opening a FIFO for reading blocks until a writer appears.
        let kind = std::fs::metadata(path).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot open model file '{}': {e}", path.display()))
        })?;
        if !kind.is_file() || kind.len() == 0 {
            return Err(Error::model_format(format!(
                "'{}' is not a GGUF model: it is empty or not a regular file",
                path.display()
            )));
        }
        let file = File::open(path).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot open model file '{}': {e}", path.display()))
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot stat '{}': {e}", path.display())))?
            .len();
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
        let header = header::parse(&map).map_err(|why| {
            Error::model_format(format!("'{}' has a corrupt or truncated GGUF header: {why}", path.display()))
        })?;
        let this = Self { path: path.to_path_buf(), header, file_len, map: Arc::new(map) };
        this.check_tensor_extents()?;
        Ok(this)
    }

    fn check_tensor_extents(&self) -> Result<()> {
        for (name, info) in &self.header.tensors {
            let bytes = stored_bytes(info).ok_or_else(|| {
                Error::model_format(format!(
                    "'{}': tensor '{name}' has an impossible shape {:?} for {}",
                    self.path.display(),
                    info.dims,
                    info.ggml_type.name()
                ))
            })?;
            let end = self.header.data_offset.saturating_add(info.offset).saturating_add(bytes);
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
        self.header.metadata.contains_key(key)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    /// Total bytes of tensor data, for progress reporting.
    pub fn tensor_bytes(&self, name: &str) -> u64 {
        self.header.tensors.get(name).and_then(stored_bytes).unwrap_or(0)
    }

    fn value(&self, key: &str) -> Result<&MetaValue> {
        self.header.metadata.get(key).ok_or_else(|| {
            Error::model_format(format!("'{}' lacks the GGUF metadata key '{key}'", self.path.display()))
        })
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> Error {
        Error::model_format(format!("'{}': metadata '{key}' has the wrong type: {e}", self.path.display()))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: ValueType) -> Error {
        self.bad(key, format!("expected {expected}, found {}", found.describe()))
    }

    /// A string stored in the file: UTF-8 is checked when it is read.
    fn text(&self, key: &str, range: &Range<usize>) -> Result<&str> {
        std::str::from_utf8(&self.map[range.clone()])
            .map_err(|e| self.bad(key, format!("a string that is not UTF-8 ({e})")))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            MetaValue::Str(range) => self.text(key, range),
            other => Err(self.wrong_type(key, "a string", other.value_type())),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.has_key(key).then(|| self.str(key).ok()).flatten()
    }

    /// Any integer type, as GGUF writers differ in which width they use.
    pub fn u64(&self, key: &str) -> Result<u64> {
        match self.value(key)? {
            MetaValue::Int(n, _) => {
                u64::try_from(*n).map_err(|_| self.bad(key, format!("negative value {n}")))
            }
            other => Err(self.wrong_type(key, "an integer", other.value_type())),
        }
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.has_key(key).then(|| self.u64(key).ok()).flatten()
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            MetaValue::Float(x, _) => Ok(*x as f32),
            other => Err(self.wrong_type(key, "a float", other.value_type())),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        self.has_key(key).then(|| self.f32(key).ok()).flatten()
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.header.metadata.get(key) {
            Some(MetaValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An array's elements, each converted by `convert` (`None`: the wrong element type).
    fn array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(MetaValue) -> Option<T> + 'a,
    ) -> Result<Vec<T>> {
        let array: &ArrayValue = match self.value(key)? {
            MetaValue::Array(array) => array,
            other => return Err(self.wrong_type(key, expected, other.value_type())),
        };
        let wrong =
            || self.bad(key, format!("expected {expected}, found an array of {}", array.element.describe()));
        let mut out = Vec::new();
        out.try_reserve_exact(array.len).map_err(|_| wrong())?;
        for element in array.elements(&self.map) {
            out.push(element.and_then(&convert).ok_or_else(wrong)?);
        }
        Ok(out)
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        Ok(self.str_refs(key)?.into_iter().map(str::to_string).collect())
    }

    /// A string array's entries, borrowed from the mapped file (a 262k-entry vocabulary is not
    /// copied to be read).
    pub fn str_refs(&self, key: &str) -> Result<Vec<&str>> {
        let ranges = self.array_of(key, "an array of strings", |v| match v {
            MetaValue::Str(range) => Some(range),
            _ => None,
        })?;
        ranges.iter().map(|range| self.text(key, range)).collect()
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_of(key, "an array of floats", |v| match v {
            MetaValue::Float(x, _) => Some(x as f32),
            _ => None,
        })
    }

    /// Any integer element type whose values fit in an i32.
    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_of(key, "an array of 32-bit integers", |v| match v {
            MetaValue::Int(n, _) => i32::try_from(n).ok(),
            _ => None,
        })
    }

    /// Block type and shape (outermost dimension first) of a tensor, if the file has it.
    pub fn tensor_layout(&self, name: &str) -> Option<(GgmlType, Vec<usize>)> {
        self.header.tensors.get(name).map(|i| (i.ggml_type, i.dims.clone()))
    }

    fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.header.tensors.get(name).ok_or_else(|| {
            Error::model_format(format!("'{}' lacks the tensor '{name}'", self.path.display()))
        })
    }

    /// Where a tensor's raw GGUF blocks lie in [`Self::mapped`]: the caller repacks straight from
    /// the page cache (no read into a buffer, no intermediate tensor). A missing tensor is a
    /// format error that names it.
    pub fn tensor_range(&self, name: &str) -> Result<Range<usize>> {
        let info = self.tensor_info(name)?;
        // In bounds: check_tensor_extents verified every tensor at open.
        let start = (self.header.data_offset + info.offset) as usize;
        Ok(start..start + self.tensor_bytes(name) as usize)
    }

    /// The mapped file, to slice with [`Self::tensor_range`].
    pub fn mapped(&self) -> Arc<memmap2::Mmap> {
        self.map.clone()
    }

    /// Reads one tensor into candle's form. A missing tensor, or one of a type candle does not
    /// implement, is a format error that names it.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensor_info(name)?;
        let dtype = info.ggml_type.candle().ok_or_else(|| {
            Error::new(ErrorKind::Unsupported, format!(
                "'{}': tensor '{name}' is {}, a type candle's tensors (which the GPU path runs on) do not implement",
                self.path.display(),
                info.ggml_type.name()
            ))
        })?;
        let bytes = &self.map[self.tensor_range(name)?];
        qtensor_from_ggml(dtype, bytes, info.dims.clone(), device).map_err(|e| {
            Error::model_format(format!(
                "'{}': cannot read tensor '{name}': {}",
                self.path.display(),
                candle_message(&e)
            ))
        })
    }
}

impl GgufFile {
    /// A tensor's values as f32 whatever its block type: norm weights, biases, rope factors.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let tensor = self.tensor(name, &Device::Cpu)?;
        let values =
            tensor.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
        values.map_err(|e| {
            Error::model_format(format!(
                "'{}': cannot read tensor '{name}' as floats: {}",
                self.path.display(),
                candle_message(&e)
            ))
        })
    }
}

/// Bytes a tensor's blocks take in the file; `None` when its element count overflows or is not
/// a whole number of blocks (a crafted header, which would otherwise pass the extent check).
fn stored_bytes(info: &TensorInfo) -> Option<u64> {
    let elems = info.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let block = info.ggml_type.block_values();
    if !elems.is_multiple_of(block) {
        return None;
    }
    (elems / block).checked_mul(info.ggml_type.block_bytes()).map(|b| b as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::io::Cursor;

    use candle_core::quantized::{gguf_file, GgmlDType};
    use candle_core::Tensor;
    use gguf_file::Value;

    use super::*;

    /// Opens `bytes` as a GGUF file. The file is removed at once: the map outlives it.
    fn open_bytes(bytes: &[u8]) -> Result<GgufFile> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "maze-unit-{}-{}.gguf",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        let opened = GgufFile::open(&path);
        std::fs::remove_file(&path).unwrap();
        opened
    }

    /// A GGUF written by candle's writer (version 2, alignment 32).
    fn written(metadata: &[(&str, Value)], tensors: &[(&str, QTensor)]) -> Vec<u8> {
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &md, &ts).unwrap();
        out.into_inner()
    }

    pub(crate) fn open_metadata(metadata: &[(&str, Value)]) -> GgufFile {
        open_bytes(&written(metadata, &[])).unwrap()
    }

    /// GGUF bytes by hand, for headers no writer would produce.
    struct Raw(Vec<u8>);

    const TYPE_U32: u32 = 4;
    const TYPE_STRING: u32 = 8;
    const TYPE_ARRAY: u32 = 9;
    const GGML_F32: u32 = 0;

    impl Raw {
        fn header(version: u32, tensors: u64, kvs: u64) -> Self {
            let mut raw = Self(GGUF_MAGIC.to_vec());
            raw.u32(version).u64(tensors).u64(kvs);
            raw
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.str(key).u32(TYPE_U32).u32(v)
        }
        /// `dims` innermost first, as GGUF stores them.
        fn tensor_info(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
            self.str(name).u32(dims.len() as u32);
            dims.iter().for_each(|&d| {
                self.u64(d);
            });
            self.u32(ggml_type).u64(offset)
        }
        fn pad_to(&mut self, alignment: usize) -> &mut Self {
            self.0.resize(self.0.len().next_multiple_of(alignment), 0);
            self
        }
        fn f32s(&mut self, values: &[f32]) -> &mut Self {
            values.iter().for_each(|v| self.0.extend_from_slice(&v.to_le_bytes()));
            self
        }
    }

    /// One F32 tensor of four values after one metadata entry: every part of a file, small.
    fn small_file() -> Vec<u8> {
        let mut raw = Raw::header(3, 1, 1);
        raw.kv_u32("general.answer", 42).tensor_info("t", &[4], GGML_F32, 0).pad_to(32);
        raw.f32s(&[1.0, 2.0, 3.0, 4.0]);
        raw.0
    }

    fn format_error(bytes: &[u8]) -> Error {
        let err = open_bytes(bytes).err().expect("the file is refused");
        assert_eq!(err.kind(), ErrorKind::ModelFormat, "{err}");
        assert!(!err.message().contains("candle_core::"), "no backtrace in messages: {err}");
        err
    }

    #[test]
    fn every_metadata_type_reads_back() {
        let file = open_metadata(&[
            ("u8", Value::U8(8)),
            ("i8", Value::I8(-3)),
            ("u16", Value::U16(16)),
            ("i16", Value::I16(1600)),
            ("u32", Value::U32(32)),
            ("i32", Value::I32(3200)),
            ("u64", Value::U64(1 << 40)),
            ("i64", Value::I64(-1)),
            ("f32", Value::F32(0.5)),
            ("f64", Value::F64(0.25)),
            ("bool", Value::Bool(true)),
            ("str", Value::String("héllo".into())),
            ("strs", Value::Array(vec![Value::String("a b".into()), Value::String("c".into())])),
            ("f32s", Value::Array(vec![Value::F32(1.5), Value::F32(-2.0)])),
            ("i32s", Value::Array(vec![Value::I32(3), Value::I32(-4)])),
            ("nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])])),
        ]);
        let ints = [("u8", 8), ("u16", 16), ("i16", 1600), ("u32", 32), ("i32", 3200), ("u64", 1 << 40)];
        for (key, want) in ints {
            assert_eq!(file.u64(key).unwrap(), want, "{key}");
            assert_eq!(file.opt_u64(key), Some(want), "{key}");
        }
        for key in ["i8", "i64"] {
            let err = file.u64(key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ModelFormat);
            assert!(err.message().contains("negative value -") && err.message().contains(key), "{err}");
            assert_eq!(file.opt_u64(key), None);
        }
        assert_eq!(file.f32("f32").unwrap(), 0.5);
        assert_eq!(file.f32("f64").unwrap(), 0.25);
        assert_eq!(file.opt_f32("f64"), Some(0.25));
        assert_eq!(file.opt_bool("bool"), Some(true));
        assert_eq!(file.str("str").unwrap(), "héllo");
        assert_eq!(file.opt_str("str"), Some("héllo"));
        assert_eq!(file.str_array("strs").unwrap(), ["a b", "c"]);
        assert_eq!(file.str_refs("strs").unwrap(), ["a b", "c"]);
        assert_eq!(file.f32_array("f32s").unwrap(), [1.5, -2.0]);
        assert_eq!(file.i32_array("i32s").unwrap(), [3, -4]);
        assert!(file.has_key("nested") && !file.has_key("absent"));
    }

    #[test]
    fn wrong_types_and_missing_keys_are_format_errors_naming_the_key() {
        let file = open_metadata(&[
            ("str", Value::String("x".into())),
            ("u32", Value::U32(1)),
            ("strs", Value::Array(vec![Value::String("x".into())])),
            ("nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])])),
        ]);
        let wrong = [
            file.u64("str").unwrap_err(),
            file.f32("u32").unwrap_err(),
            file.str("u32").unwrap_err(),
            file.str_array("u32").unwrap_err(),
            file.i32_array("strs").unwrap_err(),
            file.str_array("nested").unwrap_err(),
        ];
        for err in wrong {
            assert_eq!(err.kind(), ErrorKind::ModelFormat, "{err}");
            assert!(err.message().contains("has the wrong type"), "{err}");
            assert!(!err.message().contains('\n'), "one line: {err}");
        }
        assert!(file.u64("str").unwrap_err().message().contains("'str'"));
        let err = file.str("absent").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ModelFormat);
        assert!(err.message().contains("lacks the GGUF metadata key 'absent'"), "{err}");
        assert_eq!((file.opt_str("u32"), file.opt_u64("str"), file.opt_f32("str")), (None, None, None));
        assert_eq!((file.opt_bool("str"), file.opt_str("absent")), (None, None));
    }

    #[test]
    fn the_tensor_table_gives_layout_extent_and_data() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let tensor = |data: Vec<f32>, shape: (usize, usize), dtype| {
            QTensor::quantize(&Tensor::from_vec(data, shape, &dev).unwrap(), dtype).unwrap()
        };
        let small = tensor(values.clone(), (2, 3), GgmlDType::F32);
        let quant = tensor((0..64).map(|i| i as f32 / 64.0).collect(), (2, 32), GgmlDType::Q8_0);
        let file = open_bytes(&written(&[], &[("small", small), ("quant", quant)])).unwrap();

        assert_eq!(file.tensor_layout("small"), Some((GgmlType::F32, vec![2, 3])));
        assert_eq!(file.tensor_layout("quant"), Some((GgmlType::Q8_0, vec![2, 32])));
        assert_eq!(file.tensor_bytes("small"), 24);
        assert_eq!(file.tensor_bytes("quant"), 2 * 34);
        let map = file.mapped();
        for name in ["small", "quant"] {
            let range = file.tensor_range(name).unwrap();
            assert_eq!(range.start % 32, 0, "{name} starts aligned");
            assert_eq!(range.len() as u64, file.tensor_bytes(name));
            assert!(range.end <= map.len());
        }
        let raw: Vec<f32> = map[file.tensor_range("small").unwrap()]
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(raw, values);
        let read = file.tensor("small", &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(read.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);

        assert!(file.has_tensor("small") && !file.has_tensor("absent"));
        assert_eq!((file.tensor_layout("absent"), file.tensor_bytes("absent")), (None, 0));
        for err in [file.tensor_range("absent").unwrap_err(), file.tensor("absent", &dev).unwrap_err()] {
            assert_eq!(err.kind(), ErrorKind::ModelFormat);
            assert!(err.message().contains("lacks the tensor 'absent'"), "{err}");
        }
    }

    #[test]
    fn general_alignment_places_the_tensor_data() {
        let mut raw = Raw::header(3, 1, 1);
        raw.kv_u32("general.alignment", 256).tensor_info("t", &[4], GGML_F32, 0);
        // Aligned to 32 but not to 256: the data must be looked for at the next 256.
        raw.pad_to(32);
        assert_ne!(raw.0.len() % 256, 0);
        raw.pad_to(256).f32s(&[1.0, 2.0, 3.0, 4.0]);
        let file = open_bytes(&raw.0).unwrap();
        let range = file.tensor_range("t").unwrap();
        assert_eq!(range.start, 256);
        assert_eq!(&file.mapped()[range], &raw.0[256..]);

        let mut zero = Raw::header(3, 0, 1);
        zero.kv_u32("general.alignment", 0);
        let err = format_error(&zero.0);
        assert!(err.message().contains("general.alignment"), "{err}");
    }

    #[test]
    fn every_truncation_is_a_format_error() {
        let full = small_file();
        open_bytes(&full).unwrap();
        for keep in 0..full.len() {
            let err = format_error(&full[..keep]);
            let says = ["empty", "not a GGUF file", "corrupt or truncated GGUF header", "is truncated"];
            assert!(says.iter().any(|s| err.message().contains(s)), "cut at {keep}: {err}");
        }
        let err = format_error(&full[..full.len() - 1]);
        assert!(err.message().contains("tensor 't' ends at byte"), "{err}");
    }

    #[test]
    fn bad_magic_and_versions_are_named() {
        let err = format_error(b"GGML\x03\x00\x00\x00");
        assert!(
            err.message().contains("not a GGUF file") && err.message().contains("47, 47, 4d, 4c"),
            "{err}"
        );
        format_error(b"GG");
        for version in [0, 4, 99] {
            let err = format_error(&Raw::header(version, 0, 0).0);
            assert!(err.message().contains("corrupt or truncated GGUF header"), "{err}");
            assert!(err.message().contains("version"), "version {version}: {err}");
        }
        // Version 1 counts and lengths are 32-bit: no tensors, one entry "k" = 7.
        let mut v1 = Raw(GGUF_MAGIC.to_vec());
        v1.u32(1).u32(0).u32(1).u32(1).0.push(b'k');
        v1.u32(TYPE_U32).u32(7);
        assert_eq!(open_bytes(&v1.0).unwrap().u64("k").unwrap(), 7);
        for version in [2, 3] {
            let mut raw = Raw::header(version, 0, 1);
            raw.kv_u32("k", 7);
            assert_eq!(open_bytes(&raw.0).unwrap().u64("k").unwrap(), 7);
        }
    }

    #[test]
    fn absurd_counts_and_shapes_are_refused_without_a_panic() {
        let mut huge_string = Raw::header(3, 0, 1);
        huge_string.u64(u64::MAX);
        let mut huge_array = Raw::header(3, 0, 1);
        huge_array.str("a").u32(TYPE_ARRAY).u32(TYPE_STRING).u64(1 << 40);
        let mut bad_type = Raw::header(3, 0, 1);
        bad_type.str("k").u32(77).u32(0);
        let mut bad_bool = Raw::header(3, 0, 1);
        bad_bool.str("k").u32(7).0.push(2);
        let tensor = |dims: &[u64], ggml_type: u32, offset: u64| {
            let mut raw = Raw::header(3, 1, 0);
            raw.tensor_info("t", dims, ggml_type, offset).pad_to(32).f32s(&[0.0; 8]);
            raw.0
        };
        let cases = [
            ("tensor count", Raw::header(3, u64::MAX, 0).0),
            ("metadata count", Raw::header(3, 0, 1 << 40).0),
            ("string length", huge_string.0),
            ("array length", huge_array.0),
            ("value type", bad_type.0),
            ("bool value", bad_bool.0),
            ("dimensions", tensor(&[1; 9], GGML_F32, 0)),
            ("tensor type", tensor(&[4], 999, 0)),
            ("offset", tensor(&[4], GGML_F32, u64::MAX - 8)),
            ("element count overflow", tensor(&[1 << 33, 1 << 33, 4], GGML_F32, 0)),
            ("partial block", tensor(&[33], 8, 0)),
        ];
        for (what, bytes) in cases {
            let err = open_bytes(&bytes).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(err.kind(), ErrorKind::ModelFormat, "{what}: {err}");
        }
        let err = format_error(&tensor(&[1 << 33, 1 << 33, 4], GGML_F32, 0));
        assert!(err.message().contains("tensor 't' has an impossible shape"), "{err}");
    }

    #[test]
    fn files_that_are_not_files_say_so() {
        let err = format_error(b"");
        assert!(err.message().contains("empty or not a regular file"), "{err}");
        let err = GgufFile::open(&std::env::temp_dir()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::ModelFormat);
        assert!(err.message().contains("not a regular file"), "{err}");
        let missing = std::env::temp_dir().join("maze-unit-no-such-file.gguf");
        let err = GgufFile::open(&missing).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.message().contains("maze-unit-no-such-file.gguf"), "{err}");
    }

    #[test]
    fn every_ggml_type_is_measured_and_the_iq4_types_are_read() {
        // One IQ4_XS block and two IQ4_NL blocks: types candle's reader refuses outright.
        let mut raw = Raw::header(3, 2, 0);
        raw.tensor_info("xs", &[256], 23, 0).tensor_info("nl", &[32, 2], 20, 160).pad_to(32);
        raw.0.extend((0..160).map(|i| i as u8));
        raw.0.extend((0..36).map(|i| i as u8));
        let file = open_bytes(&raw.0).unwrap();
        assert_eq!(file.tensor_layout("xs"), Some((GgmlType::IQ4XS, vec![256])));
        assert_eq!(file.tensor_layout("nl"), Some((GgmlType::IQ4NL, vec![2, 32])));
        assert_eq!((file.tensor_bytes("xs"), file.tensor_bytes("nl")), (136, 36));
        // Not for candle's tensors: a clear refusal naming the type.
        let err = file.tensor("xs", &Device::Cpu).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.message().contains("'xs' is IQ4_XS"), "{err}");
    }

    #[test]
    fn header_attacks_are_refused_naming_what_is_wrong() {
        let mut duplicate = Raw::header(3, 0, 2);
        duplicate.kv_u32("k", 1).kv_u32("k", 2);
        let mut deep = Raw::header(3, 0, 1);
        deep.str("deep").u32(TYPE_ARRAY);
        for _ in 0..8 {
            deep.u32(TYPE_ARRAY).u64(1);
        }
        let mut not_utf8_key = Raw::header(3, 0, 1);
        not_utf8_key.u64(2).0.extend_from_slice(&[0xff, 0xfe]);
        not_utf8_key.u32(TYPE_U32).u32(0);
        let mut twice = Raw::header(3, 2, 0);
        twice.tensor_info("t", &[4], GGML_F32, 0).tensor_info("t", &[4], GGML_F32, 32).pad_to(32);
        twice.f32s(&[0.0; 16]);
        let mut misaligned = Raw::header(3, 1, 0);
        misaligned.tensor_info("t", &[4], GGML_F32, 4).pad_to(32).f32s(&[0.0; 8]);
        let mut unknown_type = Raw::header(3, 1, 0);
        unknown_type.tensor_info("t", &[4], 31, 0).pad_to(32).f32s(&[0.0; 8]);
        let cases = [
            (duplicate.0, "metadata key 'k' occurs twice"),
            (deep.0, "metadata 'deep': arrays nest deeper than 4 levels"),
            (not_utf8_key.0, "a metadata key at byte 32 is not UTF-8"),
            (twice.0, "tensor 't' occurs twice"),
            (misaligned.0, "tensor 't' has offset 4, not a multiple of the alignment 32"),
            (unknown_type.0, "tensor 't' has unknown tensor type id 31"),
        ];
        for (bytes, says) in cases {
            let err = format_error(&bytes);
            assert!(err.message().contains(says), "want '{says}': {err}");
        }
    }

    #[test]
    fn a_string_value_that_is_not_utf8_is_an_error_when_read() {
        let mut raw = Raw::header(3, 0, 2);
        raw.str("bad").u32(TYPE_STRING).u64(2).0.extend_from_slice(&[0xc3, 0x28]);
        raw.str("list").u32(TYPE_ARRAY).u32(TYPE_STRING).u64(2).str("ok").u64(1).0.push(0xff);
        let file = open_bytes(&raw.0).unwrap();
        for err in [file.str("bad").unwrap_err(), file.str_refs("list").unwrap_err()] {
            assert_eq!(err.kind(), ErrorKind::ModelFormat);
            assert!(err.message().contains("not UTF-8"), "{err}");
        }
        assert_eq!(file.opt_str("bad"), None);
    }

    /// Opening a FIFO for reading blocks until a writer comes: it must be refused unopened.
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let path = std::env::temp_dir().join(format!("maze-unit-fifo-{}", std::process::id()));
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let opening = path.clone();
        std::thread::spawn(move || tx.send(GgufFile::open(&opening).err()));
        let answer = rx.recv_timeout(std::time::Duration::from_secs(20));
        std::fs::remove_file(&path).unwrap();
        let err = answer.expect("open returned instead of blocking").expect("refused");
        assert_eq!(err.kind(), ErrorKind::ModelFormat);
        assert!(err.message().contains("not a regular file"), "{err}");
    }
}
