//! Our own quantized CPU kernels, used where candle's are slow (its Q4_1 path is scalar, and its
//! Q8_0 path leaves most of the machine idle on small models).
//!
//! Weights are repacked at load with f16 scales, per block of 32: Q4_0 and Q4_1 become 4-bit
//! codes with `w = code·d + m` (Q4_0's `m` is `−8d`), Q5_0 and Q5_1 5-bit codes the same way,
//! Q8_0 becomes bytes biased by 128 with `w = (code − 128)·d`. Activations are quantized per block to i8 with a scale and their sum,
//! so a block's product is `d_w·d_x·Σ code·q_x + m_w·d_x·Σ q_x`: integer dot products and one
//! float multiply-add per block. Rows are interleaved in groups of eight, one vector lane per
//! row (see [`dot::code_position`]): a broadcast slice of activations meets eight rows at once,
//! and each expanded weight chunk serves several tokens (prefill, batched decode).
//!
//! The instruction set is chosen once at run time ([`Isa::detect`]); every SIMD path is tested
//! against the portable reference in [`dot`].

pub mod activations;
pub mod attention;
pub mod dot;
pub mod elementwise;
pub mod matrix;

pub use activations::QuantizedActivations;
pub use matrix::{MatrixShape, QuantMatrix, SpaceError, WeightFormat, WeightSpace};

/// Values per quantization block, for weights and activations alike.
pub const BLOCK: usize = 32;

/// The SIMD path the kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust: every machine, and the reference the others are tested against.
    Portable,
    /// AVX2 + FMA + F16C (x86-64 since 2013): `vpmaddubsw` products.
    Avx2,
    /// AVX-512 VNNI with 256-bit vectors (`vpdpbusd`): one instruction per 32-byte product, no
    /// 16-bit saturation. Sapphire Rapids, Zen 4 and later.
    Avx512Vnni,
}

impl Isa {
    /// The best path this CPU supports. `MAZE_CPU_ISA=portable|avx2|avx512vnni` caps it (for
    /// benchmarks and tests); a value the CPU cannot run is ignored.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::available().into_iter().last().unwrap_or(Isa::Portable);
            match std::env::var("MAZE_CPU_ISA").ok().and_then(|v| Self::parse(&v)) {
                Some(cap) if Self::available().contains(&cap) => cap,
                _ => best,
            }
        })
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Isa::Avx2);
                if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512vnni") {
                    out.push(Isa::Avx512Vnni);
                }
            }
        }
        out
    }

    pub fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512vnni" | "avx512" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}
