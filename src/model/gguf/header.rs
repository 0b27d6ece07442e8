//! GGUF's header, parsed in place from the mapped file: metadata values and tensor infos are
//! ranges into the map, not copies, so a 262k-entry vocabulary costs a few hundred bytes here
//! rather than tens of megabytes for the life of the model. Every count and length is checked
//! against the bytes that remain before anything is sized from it.

use std::collections::HashMap;
use std::ops::Range;

use super::ggml_type::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's own limit on a tensor's dimensions.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF but no writer nests deeper than this; deeper is an attack on
/// the parser's stack.
const MAX_ARRAY_NESTING: usize = 4;
/// What `general.alignment` defaults to (GGUF's `GGUF_DEFAULT_ALIGNMENT`).
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value's type, numbered as in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, Str, Array, U64, I64, F64].get(id as usize).copied()
    }

    /// Bytes a value of this type takes, for the fixed-size types.
    fn width(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            Str | Array => None,
        }
    }

    pub fn describe(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value. Strings and arrays stay in the file: ranges into the mapped bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any of the eight integer types, widened.
    Int(i128, ValueType),
    Float(f64, ValueType),
    Bool(bool),
    Str(Range<usize>),
    Array(ArrayValue),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::Int(_, t) | MetaValue::Float(_, t) => *t,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::Str(_) => ValueType::Str,
            MetaValue::Array(_) => ValueType::Array,
        }
    }
}

/// An array's element type and count, and where its elements lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayValue {
    pub element: ValueType,
    pub len: usize,
    start: usize,
    /// Width of string lengths: 8 bytes from version 2 on, 4 in version 1.
    wide: bool,
}

impl ArrayValue {
    /// The elements of an array of strings or scalars, in order (`None` items for nested arrays).
    /// The header parse checked every element's extent, so this walks without failing.
    pub fn elements<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = Option<MetaValue>> + 'a {
        let mut reader = Reader { data, at: self.start, wide: self.wide };
        (0..self.len).map(move |_| match self.element {
            ValueType::Array => None,
            element => reader.value(element, 0).ok(),
        })
    }
}

/// A tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub ggml_type: GgmlType,
    /// Outermost dimension first (GGUF stores them innermost first).
    pub dims: Vec<usize>,
    /// From the start of the tensor data section.
    pub offset: u64,
}

/// Everything before the tensor data.
#[derive(Debug)]
pub struct Header {
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Where the tensor data section starts in the file.
    pub data_offset: u64,
}

/// Parses the header of the GGUF file `data`; the error says which part is wrong.
pub fn parse(data: &[u8]) -> Result<Header, String> {
    let mut reader = Reader { data, at: 0, wide: true };
    if reader.take(4)? != MAGIC {
        return Err("the magic is not \"GGUF\"".into());
    }
    let version = reader.u32()?;
    match version {
        1 => reader.wide = false,
        2 | 3 => {}
        _ => return Err(format!("version {version} is not a GGUF version Maze reads (1, 2 and 3)")),
    }
    let tensor_count = reader.count("tensor count", 4 + 4 + 4 + 8)?;
    let metadata_count = reader.count("metadata count", 4 + 4 + 1)?;

    let mut metadata = HashMap::new();
    for _ in 0..metadata_count {
        let key = reader.text("a metadata key")?;
        let id = reader.u32()?;
        let ty =
            ValueType::from_id(id).ok_or_else(|| format!("metadata '{key}' has unknown value type {id}"))?;
        let value = reader.value(ty, 0).map_err(|why| format!("metadata '{key}': {why}"))?;
        if metadata.insert(key.to_string(), value).is_some() {
            return Err(format!("metadata key '{key}' occurs twice"));
        }
    }
    let alignment = alignment(&metadata)?;

    let mut tensors = HashMap::new();
    for _ in 0..tensor_count {
        let name = reader.text("a tensor name")?;
        let info = reader.tensor_info(name, alignment)?;
        if tensors.insert(name.to_string(), info).is_some() {
            return Err(format!("tensor '{name}' occurs twice"));
        }
    }
    let data_offset = (reader.at as u64).next_multiple_of(alignment);
    Ok(Header { metadata, tensors, data_offset })
}

/// `general.alignment`: a power of two, as ggml requires (a 0 would divide by zero).
fn alignment(metadata: &HashMap<String, MetaValue>) -> Result<u64, String> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::Int(n, _)) if *n > 0 && (*n as u128).is_power_of_two() && *n <= 1 << 30 => {
            Ok(*n as u64)
        }
        Some(other) => Err(format!("general.alignment must be a power of two, not {other:?}")),
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    /// Version 2 and later: counts and lengths are 64-bit.
    wide: bool,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("it ends inside the header (needs {n} bytes at byte {})", self.at));
        }
        let bytes = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A count or length: 32-bit in version 1, 64-bit after.
    fn length(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn length_width(&self) -> usize {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// A count of items each at least `min_item_bytes` long: more than the rest of the file
    /// could hold is refused before anything is sized from it.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.length()?;
        let fits = self.remaining() / min_item_bytes;
        match usize::try_from(n) {
            Ok(n) if n <= fits => Ok(n),
            _ => Err(format!(
                "its {what} {n} is more than the file's {} remaining bytes could hold",
                self.remaining()
            )),
        }
    }

    /// A string's bytes as a range of the file.
    fn string(&mut self) -> Result<Range<usize>, String> {
        let len = self.length()?;
        let len = usize::try_from(len).ok().filter(|&n| n <= self.remaining()).ok_or_else(|| {
            format!("a string length {len} at byte {} runs past the end of the file", self.at)
        })?;
        let start = self.at;
        self.take(len)?;
        Ok(start..start + len)
    }

    /// A string that must be UTF-8 now (keys and tensor names).
    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let range = self.string()?;
        std::str::from_utf8(&self.data[range.clone()])
            .map_err(|_| format!("{what} at byte {} is not UTF-8", range.start))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<MetaValue, String> {
        use ValueType::*;
        Ok(match ty {
            U8 => MetaValue::Int(self.take(1)?[0] as i128, ty),
            I8 => MetaValue::Int(self.take(1)?[0] as i8 as i128, ty),
            U16 => MetaValue::Int(u16::from_le_bytes(self.fixed()?) as i128, ty),
            I16 => MetaValue::Int(i16::from_le_bytes(self.fixed()?) as i128, ty),
            U32 => MetaValue::Int(u32::from_le_bytes(self.fixed()?) as i128, ty),
            I32 => MetaValue::Int(i32::from_le_bytes(self.fixed()?) as i128, ty),
            U64 => MetaValue::Int(u64::from_le_bytes(self.fixed()?) as i128, ty),
            I64 => MetaValue::Int(i64::from_le_bytes(self.fixed()?) as i128, ty),
            F32 => MetaValue::Float(f32::from_le_bytes(self.fixed()?) as f64, ty),
            F64 => MetaValue::Float(f64::from_le_bytes(self.fixed()?), ty),
            Bool => match self.take(1)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                other => return Err(format!("bool value {other} is neither 0 nor 1")),
            },
            Str => MetaValue::Str(self.string()?),
            Array => MetaValue::Array(self.array(depth)?),
        })
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// An array, stepped over: its extent is checked element by element (strings) or at once
    /// (fixed-size elements), so later walks cannot fail.
    fn array(&mut self, depth: usize) -> Result<ArrayValue, String> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(format!("arrays nest deeper than {MAX_ARRAY_NESTING} levels"));
        }
        let id = self.u32()?;
        let element = ValueType::from_id(id).ok_or_else(|| format!("array of unknown value type {id}"))?;
        let min_element_bytes = element.width().unwrap_or(self.length_width());
        let len = self.count("array length", min_element_bytes)?;
        let start = self.at;
        match element.width() {
            Some(width) => {
                self.take(len * width)?;
            }
            None => {
                for _ in 0..len {
                    self.value(element, depth + 1)?;
                }
            }
        }
        Ok(ArrayValue { element, len, start, wide: self.wide })
    }

    fn tensor_info(&mut self, name: &str, alignment: u64) -> Result<TensorInfo, String> {
        let n_dims = self.u32()? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = self.u64()?;
            dims.push(usize::try_from(d).map_err(|_| format!("tensor '{name}' has a dimension of {d}"))?);
        }
        dims.reverse();
        let id = self.u32()?;
        let ggml_type = GgmlType::from_id(id)
            .ok_or_else(|| format!("tensor '{name}' has unknown tensor type id {id}"))?;
        let offset = self.u64()?;
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor '{name}' has offset {offset}, not a multiple of the alignment {alignment}"
            ));
        }
        Ok(TensorInfo { ggml_type, dims, offset })
    }
}
