//! A model's shape and numbers, read from its GGUF metadata and checked before anything is
//! sized from them.

use super::family::{Family, SlidingLayers};
use crate::error::{Error, ErrorKind, Result};
use crate::model::gguf::GgufFile;

/// More layers than any released model has by an order of magnitude: a larger count is a
/// corrupt or hostile header, refused before a per-layer table is sized from it.
pub(super) const MAX_LAYERS: usize = 1024;
/// Widths, heads and FFN sizes above this are refused the same way.
pub(super) const MAX_WIDTH: usize = 1 << 17;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: &'static Family,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub rms_eps: f32,
    /// Multiplies query·key before the softmax: `<arch>.attention.scale`, else 1/√head_dim.
    pub attention_scale: f32,
    pub rope: RopeConfig,
    /// Local layers attend to the last `window` positions (themselves included).
    pub window: Option<usize>,
    /// Which layers are local (sliding window, local rope base); all false without a window.
    pub local_layers: Vec<bool>,
    /// `tanh(logit / cap) · cap` on the output (Gemma 2 style), when the file declares a cap.
    pub logit_softcap: Option<f32>,
    pub trained_context_length: usize,
}

/// Rotary embedding settings (the frequency factors are tensors, read with the weights).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub base: f32,
    /// Base of local (sliding-window) layers.
    pub local_base: f32,
    /// Positions are multiplied by this (linear scaling: 1 / `rope.scaling.factor`).
    pub position_scale: f32,
    /// Multiplies cosines and sines (`rope.scaling.attn_factor`, LongRoPE).
    pub attention_factor: f32,
    /// Which frequency-factor tensor applies: see [`RopeConfig::factor_tensor`].
    pub scaling: RopeScaling,
    /// `rope.scaling.original_context_length` (LongRoPE picks its long factors beyond it).
    pub original_context_length: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeScaling {
    /// No scaling, or linear (position_scale), or Llama 3's (a `rope_freqs` tensor).
    Plain,
    /// Phi-3's LongRoPE: `rope_factors_short` / `rope_factors_long` tensors.
    LongRope,
}

impl Config {
    /// Reads and checks the metadata of `family`'s file.
    pub fn from_file(file: &GgufFile, family: &'static Family) -> Result<Self> {
        let key = |name: &str| family.key(name);
        let bad = |what: String| Error::model_format(format!("'{}': {what}", file.path().display()));
        let size = |name: &str, max: usize| -> Result<usize> {
            let v = file.u64(&key(name))?;
            if v == 0 || v > max as u64 {
                return Err(bad(format!("{} is {v}, expected 1..={max}", key(name))));
            }
            Ok(v as usize)
        };
        let n_layers = size("block_count", MAX_LAYERS)?;
        let dim = size("embedding_length", MAX_WIDTH)?;
        let n_heads = size("attention.head_count", MAX_WIDTH)?;
        let n_kv_heads = match file.has_key(&key("attention.head_count_kv")) {
            true => size("attention.head_count_kv", MAX_WIDTH)?,
            false => n_heads,
        };
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(bad(format!(
                "{n_heads} attention heads ({}) are not a multiple of {n_kv_heads} KV heads ({})",
                key("attention.head_count"),
                key("attention.head_count_kv")
            )));
        }
        let head_dim = match file.has_key(&key("attention.key_length")) {
            true => size("attention.key_length", MAX_WIDTH)?,
            false if dim.is_multiple_of(n_heads) => dim / n_heads,
            false => {
                return Err(bad(format!(
                    "width {dim} is not a multiple of {n_heads} heads and {} is missing",
                    key("attention.key_length")
                )))
            }
        };
        let value_dim = file.opt_u64(&key("attention.value_length")).unwrap_or(head_dim as u64);
        let rope_dim = file.opt_u64(&key("rope.dimension_count")).unwrap_or(head_dim as u64);
        if value_dim != head_dim as u64 || rope_dim != head_dim as u64 || !head_dim.is_multiple_of(2) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "'{}': key length {head_dim}, value length {value_dim} and rope dimensions {rope_dim} \
                     must be one even size (partial rotary embeddings are not supported)",
                    file.path().display()
                ),
            ));
        }
        let trained_context_length = file.opt_u64(&key("context_length")).unwrap_or(2048) as usize;
        let window = sliding_window(file, family, trained_context_length)?;
        let local_layers = local_layers(file, family, n_layers, window.is_some())?;
        Ok(Self {
            family,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: size("feed_forward_length", MAX_WIDTH * 4)?,
            rms_eps: positive(file, &key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            attention_scale: positive(file, &key("attention.scale"), 1.0 / (head_dim as f32).sqrt())?,
            rope: RopeConfig::from_file(file, family, trained_context_length)?,
            window,
            local_layers,
            logit_softcap: file.opt_f32(&key("final_logit_softcapping")).filter(|&c| c > 0.0),
            trained_context_length,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The window layer `l` attends over, if it is local.
    pub fn window_of(&self, l: usize) -> Option<usize> {
        self.window.filter(|_| self.local_layers[l])
    }
}

/// An optional positive float key, `default` when absent.
fn positive(file: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match file.opt_f32(key) {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => {
            Err(Error::model_format(format!("'{}': {key} is {v}, expected > 0", file.path().display())))
        }
    }
}

/// The declared sliding window, if this family applies it; one longer than the trained context
/// is a format error.
fn sliding_window(file: &GgufFile, family: &Family, trained_context: usize) -> Result<Option<usize>> {
    let key = family.key("attention.sliding_window");
    let Some(window) = file.opt_u64(&key).filter(|&w| w > 0) else { return Ok(None) };
    if family.sliding == SlidingLayers::Ignored {
        return Ok(None);
    }
    if window > trained_context as u64 {
        return Err(Error::model_format(format!(
            "'{}': {key} {window} is larger than the trained context {trained_context}",
            file.path().display()
        )));
    }
    Ok(Some(window as usize))
}

/// Which layers use the window: all, or Gemma 3's pattern of `period − 1` local layers then a
/// global one (`attention.sliding_window_pattern`).
fn local_layers(file: &GgufFile, family: &Family, n_layers: usize, windowed: bool) -> Result<Vec<bool>> {
    if !windowed {
        return Ok(vec![false; n_layers]);
    }
    let SlidingLayers::Interleaved { default_period, .. } = family.sliding else {
        return Ok(vec![true; n_layers]);
    };
    let key = family.key("attention.sliding_window_pattern");
    if file.has_key(&key) && file.opt_u64(&key).is_none() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "'{}': {key} is not a single period (per-layer lists are not supported)",
                file.path().display()
            ),
        ));
    }
    let period = file.opt_u64(&key).map(|p| p as usize).unwrap_or(default_period);
    if period == 0 || period > n_layers.max(default_period) {
        return Err(Error::model_format(format!(
            "'{}': {key} is {period}, expected 1..={n_layers}",
            file.path().display()
        )));
    }
    Ok((0..n_layers).map(|l| l % period < period - 1).collect())
}

impl RopeConfig {
    fn from_file(file: &GgufFile, family: &Family, trained_context: usize) -> Result<Self> {
        let key = |name: &str| family.key(name);
        let base = positive(file, &key("rope.freq_base"), 10_000.0)?;
        let local_base = match family.sliding {
            SlidingLayers::Interleaved { default_local_rope_base, .. } => {
                positive(file, &key("rope.freq_base_swa"), default_local_rope_base)?
            }
            _ => base,
        };
        let scaling_key = key("rope.scaling.type");
        let factor = positive(file, &key("rope.scaling.factor"), 1.0)?;
        let scaling = match file.opt_str(&scaling_key).unwrap_or("linear") {
            "none" | "linear" => RopeScaling::Plain,
            "longrope" => RopeScaling::LongRope,
            "yarn" => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "'{}': {scaling_key} 'yarn' is not supported yet (supported: none, linear, longrope, \
                         and Llama 3 frequency factors)",
                        file.path().display()
                    ),
                ))
            }
            other => {
                return Err(Error::model_format(format!(
                    "'{}': {scaling_key} '{other}' is not a rope scaling type (none, linear, yarn, longrope)",
                    file.path().display()
                )))
            }
        };
        let linear = matches!(file.opt_str(&scaling_key), None | Some("linear"));
        Ok(Self {
            base,
            local_base,
            position_scale: if linear { 1.0 / factor } else { 1.0 },
            attention_factor: positive(file, &key("rope.scaling.attn_factor"), 1.0)?,
            scaling,
            original_context_length: file
                .opt_u64(&key("rope.scaling.original_context_length"))
                .map(|v| v as usize)
                .unwrap_or(trained_context),
        })
    }

    /// The frequency-factor tensor for a context of `context_length` positions, if the file's
    /// scaling uses one: Llama 3's `rope_freqs`, or LongRoPE's long factors beyond the original
    /// context and short ones within it (as llama.cpp picks them).
    pub fn factor_tensor(&self, context_length: usize) -> Option<&'static str> {
        match self.scaling {
            RopeScaling::Plain => Some("rope_freqs.weight"),
            RopeScaling::LongRope if context_length > self.original_context_length => {
                Some("rope_factors_long.weight")
            }
            RopeScaling::LongRope => Some("rope_factors_short.weight"),
        }
    }

    /// Each pair's angle per position, for a layer with rope base `base`: the pair's frequency,
    /// divided by its factor, times the position scale.
    pub fn inverse_frequencies(
        &self,
        head_dim: usize,
        base: f32,
        factors: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let half = head_dim / 2;
        if let Some(f) = factors.filter(|f| f.len() != half) {
            return Err(Error::model_format(format!(
                "rope frequency factors have {} entries, expected {half}",
                f.len()
            )));
        }
        Ok((0..half)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f32 / head_dim as f32);
                f / factors.map(|fs| fs[i]).unwrap_or(1.0) * self.position_scale
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            base: 10_000.0,
            local_base: 10_000.0,
            position_scale: 1.0,
            attention_factor: 1.0,
            scaling,
            original_context_length: 4096,
        }
    }

    #[test]
    fn frequencies_follow_base_factors_and_scale() {
        let plain = rope(RopeScaling::Plain);
        let f = plain.inverse_frequencies(8, 10_000.0, None).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-6 && (f[2] - 0.01).abs() < 1e-7);
        let halved = plain.inverse_frequencies(8, 10_000.0, Some(&[2.0; 4])).unwrap();
        assert!(halved.iter().zip(&f).all(|(h, f)| (h * 2.0 - f).abs() < 1e-9));
        let scaled = RopeConfig { position_scale: 0.25, ..plain.clone() };
        assert_eq!(scaled.inverse_frequencies(8, 10_000.0, None).unwrap()[0], 0.25);
        assert!(plain.inverse_frequencies(8, 10_000.0, Some(&[1.0; 3])).is_err());
    }

    #[test]
    fn longrope_picks_long_factors_only_beyond_the_original_context() {
        let long = rope(RopeScaling::LongRope);
        assert_eq!(long.factor_tensor(4096), Some("rope_factors_short.weight"));
        assert_eq!(long.factor_tensor(4097), Some("rope_factors_long.weight"));
        assert_eq!(rope(RopeScaling::Plain).factor_tensor(1 << 20), Some("rope_freqs.weight"));
    }
}
