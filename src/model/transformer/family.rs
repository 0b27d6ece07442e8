//! The decoder-only families Maze runs, each stated by how it differs from the shared layers
//! (RMS norm → attention with rotary positions → RMS norm → gated FFN, residuals around both).
//! Everything numeric (widths, heads, rope bases, windows, epsilons) comes from the GGUF; a
//! family only says which variant of each layer it uses and which metadata it reads. Adding a
//! family is one row here (and, for a new kind of variation, the field that names it).

/// How rotary embeddings pair a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i + 1): llama.cpp's "norm" rope; GGUF converters permute Llama's Q/K rows
    /// for it.
    Interleaved,
    /// Pairs (i, i + head_dim / 2): GPT-NeoX's rotation, as Qwen, Gemma and Phi-3 are trained.
    Halves,
}

/// The gate's activation in the FFN: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

/// Which layers attend over a sliding window, when the GGUF declares
/// `<arch>.attention.sliding_window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlidingLayers {
    /// Every layer (Mistral-style models).
    All,
    /// Layer `i` is local unless `i % period == period − 1`; the period is
    /// `<arch>.attention.sliding_window_pattern` or `default_period`, and local layers use
    /// `<arch>.rope.freq_base_swa` or `default_local_rope_base` (Gemma 3: five local, one global).
    Interleaved { default_period: usize, default_local_rope_base: f32 },
    /// The window is declared but not applied, as llama.cpp does for Phi-3 (whose converted
    /// files carry a window the trained model does not use consistently): following it keeps
    /// our outputs comparable to llama.cpp's.
    Ignored,
}

/// How one architecture differs from the shared layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub architecture: &'static str,
    pub rope: RopeStyle,
    pub activation: Activation,
    /// Per-head RMS norms of queries and keys before the rotation (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMS norms after attention and after the FFN too (`post_attention_norm`, `post_ffw_norm`).
    pub sandwich_norms: bool,
    /// Token embeddings are multiplied by √width.
    pub scale_embeddings: bool,
    pub sliding: SlidingLayers,
}

/// Every supported family. Q/K/V biases, fused `attn_qkv` and fused gate-up `ffn_up` tensors,
/// tied output embeddings and rope frequency factors are read wherever a file has them, for
/// every family, as llama.cpp does.
const FAMILIES: &[Family] = &[
    Family {
        architecture: "llama",
        rope: RopeStyle::Interleaved,
        activation: Activation::Silu,
        qk_norm: false,
        sandwich_norms: false,
        scale_embeddings: false,
        sliding: SlidingLayers::All,
    },
    Family {
        architecture: "qwen2",
        rope: RopeStyle::Halves,
        activation: Activation::Silu,
        qk_norm: false,
        sandwich_norms: false,
        scale_embeddings: false,
        sliding: SlidingLayers::Ignored,
    },
    Family {
        architecture: "qwen3",
        rope: RopeStyle::Halves,
        activation: Activation::Silu,
        qk_norm: true,
        sandwich_norms: false,
        scale_embeddings: false,
        sliding: SlidingLayers::Ignored,
    },
    Family {
        architecture: "gemma3",
        rope: RopeStyle::Halves,
        activation: Activation::GeluTanh,
        qk_norm: true,
        sandwich_norms: true,
        scale_embeddings: true,
        sliding: SlidingLayers::Interleaved { default_period: 6, default_local_rope_base: 10_000.0 },
    },
    Family {
        architecture: "phi3",
        rope: RopeStyle::Halves,
        activation: Activation::Silu,
        qk_norm: false,
        sandwich_norms: false,
        scale_embeddings: false,
        sliding: SlidingLayers::Ignored,
    },
];

impl Family {
    /// The family of `general.architecture`, if Maze runs it.
    pub fn of(architecture: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.architecture == architecture)
    }

    /// The supported architectures, for error messages: "llama, qwen2, …".
    pub fn supported() -> String {
        FAMILIES.iter().map(|f| f.architecture).collect::<Vec<_>>().join(", ")
    }

    /// One of this family's metadata keys, e.g. "qwen2.block_count".
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.architecture)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_architecture_is_listed_once_and_found_by_name() {
        for (i, f) in FAMILIES.iter().enumerate() {
            assert_eq!(Family::of(f.architecture), Some(f));
            assert!(FAMILIES[i + 1..].iter().all(|g| g.architecture != f.architecture));
        }
        assert_eq!(Family::of("gpt2"), None);
        assert_eq!(Family::supported(), "llama, qwen2, qwen3, gemma3, phi3");
        assert_eq!(Family::of("gemma3").map(|f| f.key("block_count")).as_deref(), Some("gemma3.block_count"));
    }
}
