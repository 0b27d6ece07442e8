//! GGML's tensor types as GGUF files number them: the one table of their ids, names and block
//! geometry (from ggml's `type_traits`). Every type a current writer can emit is known here, so a
//! file is measured and checked even when a tensor's type is one Maze does not compute with.

use candle_core::quantized::GgmlDType;

/// A tensor's element encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

struct TypeFacts {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    /// Values per block, and the bytes a block takes.
    block_values: usize,
    block_bytes: usize,
}

const fn facts(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_values: usize,
    block_bytes: usize,
) -> TypeFacts {
    TypeFacts { ty, id, name, block_values, block_bytes }
}

/// Ids 4, 5, 31–33 and 36–38 belonged to types ggml has removed; no current file holds them.
const TYPES: [TypeFacts; 32] = [
    facts(GgmlType::F32, 0, "F32", 1, 4),
    facts(GgmlType::F16, 1, "F16", 1, 2),
    facts(GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    facts(GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    facts(GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    facts(GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    facts(GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    facts(GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    facts(GgmlType::Q2K, 10, "Q2_K", 256, 84),
    facts(GgmlType::Q3K, 11, "Q3_K", 256, 110),
    facts(GgmlType::Q4K, 12, "Q4_K", 256, 144),
    facts(GgmlType::Q5K, 13, "Q5_K", 256, 176),
    facts(GgmlType::Q6K, 14, "Q6_K", 256, 210),
    facts(GgmlType::Q8K, 15, "Q8_K", 256, 292),
    facts(GgmlType::IQ2XXS, 16, "IQ2_XXS", 256, 66),
    facts(GgmlType::IQ2XS, 17, "IQ2_XS", 256, 74),
    facts(GgmlType::IQ3XXS, 18, "IQ3_XXS", 256, 98),
    facts(GgmlType::IQ1S, 19, "IQ1_S", 256, 50),
    facts(GgmlType::IQ4NL, 20, "IQ4_NL", 32, 18),
    facts(GgmlType::IQ3S, 21, "IQ3_S", 256, 110),
    facts(GgmlType::IQ2S, 22, "IQ2_S", 256, 82),
    facts(GgmlType::IQ4XS, 23, "IQ4_XS", 256, 136),
    facts(GgmlType::I8, 24, "I8", 1, 1),
    facts(GgmlType::I16, 25, "I16", 1, 2),
    facts(GgmlType::I32, 26, "I32", 1, 4),
    facts(GgmlType::I64, 27, "I64", 1, 8),
    facts(GgmlType::F64, 28, "F64", 1, 8),
    facts(GgmlType::IQ1M, 29, "IQ1_M", 256, 56),
    facts(GgmlType::BF16, 30, "BF16", 1, 2),
    facts(GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    facts(GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    facts(GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    fn facts(self) -> &'static TypeFacts {
        TYPES.iter().find(|f| f.ty == self).expect("every type is in TYPES")
    }

    /// Every type ggml defines, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|f| f.ty)
    }

    /// The type a GGUF tensor-info id names, if ggml defines it.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|f| f.id == id).map(|f| f.ty)
    }

    pub fn id(self) -> u32 {
        self.facts().id
    }

    /// ggml's own name for the type (`Q4_K`, `IQ4_XS`), for messages.
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    pub fn block_values(self) -> usize {
        self.facts().block_values
    }

    pub fn block_bytes(self) -> usize {
        self.facts().block_bytes
    }

    /// The type of a candle tensor.
    pub fn of_candle(dtype: GgmlDType) -> Self {
        Self::all().find(|t| t.candle() == Some(dtype)).expect("every candle type is a ggml type")
    }

    /// The same type in candle's tensors, which the GPU path and small tensors go through; `None`
    /// for the types candle does not implement (the IQ and ternary families among them).
    pub fn candle(self) -> Option<GgmlDType> {
        Some(match self {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::BF16 => GgmlDType::BF16,
            GgmlType::Q4_0 => GgmlDType::Q4_0,
            GgmlType::Q4_1 => GgmlDType::Q4_1,
            GgmlType::Q5_0 => GgmlDType::Q5_0,
            GgmlType::Q5_1 => GgmlDType::Q5_1,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q8_1 => GgmlDType::Q8_1,
            GgmlType::Q2K => GgmlDType::Q2K,
            GgmlType::Q3K => GgmlDType::Q3K,
            GgmlType::Q4K => GgmlDType::Q4K,
            GgmlType::Q5K => GgmlDType::Q5K,
            GgmlType::Q6K => GgmlDType::Q6K,
            GgmlType::Q8K => GgmlDType::Q8K,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_unique_and_round_trip() {
        for (i, a) in TYPES.iter().enumerate() {
            assert_eq!(GgmlType::from_id(a.id), Some(a.ty));
            assert_eq!(a.ty.id(), a.id);
            for b in &TYPES[i + 1..] {
                assert!(a.ty != b.ty && a.id != b.id && a.name != b.name, "{} and {}", a.name, b.name);
            }
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 40, 999] {
            assert_eq!(GgmlType::from_id(removed), None, "{removed}");
        }
    }

    /// candle's own geometry for the types it shares with us: the two tables agree.
    #[test]
    fn block_geometry_agrees_with_candle() {
        for f in &TYPES {
            if let Some(dtype) = f.ty.candle() {
                assert_eq!(
                    (f.block_values, f.block_bytes),
                    (dtype.block_size(), dtype.type_size()),
                    "{}",
                    f.name
                );
            }
        }
        assert_eq!(GgmlType::IQ4XS.candle(), None);
    }
}
