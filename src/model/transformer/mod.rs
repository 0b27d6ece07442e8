//! Decoder-only transformers (Llama 2/3, Mistral, SmolLM, Qwen2/2.5/3, Gemma 3, Phi-3), with
//! quantized weights straight from GGUF. Each sequence has its own cache, so one set of weights
//! serves every session of an engine.
//!
//! [`family`] states how each architecture differs from the shared layers, [`config`] reads and
//! checks the metadata, [`weights`] repacks the file's matrices for [`native`], the batched CPU
//! forward pass every family runs on; [`tensors`] is candle's forward pass for GPUs and for the
//! Llama-family comparisons.

mod config;
mod family;
mod native;
mod tensors;
mod weights;

pub use family::Family;
pub use native::NativeCache;
pub use weights::weight_format;

use std::any::Any;

use super::gguf::GgufFile;
use super::{
    check_score_arguments, score_step_by_step, BatchStep, LanguageModel, LoadOptions, ModelInfo, Progress,
    SequenceCache, DEFAULT_MAX_CONTEXT,
};
use crate::error::{Error, ErrorKind, Result};
use config::Config;
use tensors::{TensorCache, TensorTransformer};

pub struct Transformer {
    info: ModelInfo,
    imp: Implementation,
}

enum Implementation {
    Native(native::NativeTransformer),
    Tensors(TensorTransformer),
}

impl Transformer {
    /// Loads a model of a supported family: natively on the CPU wherever every matrix is in a
    /// format our kernels take, else (and on a GPU, or when asked) with candle's tensors.
    pub fn load(file: &GgufFile, opts: &LoadOptions<'_>, progress: Progress<'_>) -> Result<Self> {
        let architecture = file.str("general.architecture")?;
        let family = Family::of(architecture).ok_or_else(|| unsupported_architecture(file, architecture))?;
        let config = Config::from_file(file, family)?;
        let mut info = model_info(file, &config, opts.context_length);
        check_context_length(&config, info.context_length, physical_memory())?;
        if !opts.tensor_forward && opts.device.is_cpu() {
            if let Some(native) = weights::native_from_file(file, &config, info.context_length, progress)? {
                info.vocab_size = native.output.rows;
                info.compute = format!("cpu native, {}", crate::kernels::Isa::detect().name());
                return Ok(Self { info, imp: Implementation::Native(native) });
            }
        }
        let tensors = TensorTransformer::load(file, config, &opts.device, info.context_length, progress)?;
        info.vocab_size = tensors.vocab_size();
        info.compute = format!("candle tensors, {}", if tensors.is_cpu() { "cpu" } else { "gpu" });
        Ok(Self { info, imp: Implementation::Tensors(tensors) })
    }
}

/// MAZE_STATUS_UNSUPPORTED naming the architecture and listing the supported ones.
pub fn unsupported_architecture(file: &GgufFile, architecture: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "'{}': architecture '{architecture}' is not supported (supported: {})",
            file.path().display(),
            Family::supported()
        ),
    )
}

/// Grows `cache` for `tokens` more positions before a step, failing the step (not the host)
/// when the memory is not there.
fn reserve_cache(cache: &mut NativeCache, tokens: usize) -> Result<()> {
    cache.reserve(tokens).map_err(|why| Error::new(ErrorKind::Backend, why))
}

/// Positions beyond this are refused whatever the memory: no GGUF model is trained this long.
const MAX_CONTEXT_LENGTH: usize = 1 << 24;

/// Bytes one token takes in a sequence's f16 key/value cache.
fn kv_bytes_per_token(config: &Config) -> usize {
    config.n_layers * 2 * config.n_kv_heads * config.head_dim * std::mem::size_of::<half::f16>()
}

/// The machine's physical memory in bytes (`usize::MAX` where it cannot be read).
fn physical_memory() -> usize {
    // SAFETY: sysconf reads a system constant.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    match (usize::try_from(pages), usize::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => pages.saturating_mul(page),
        _ => usize::MAX,
    }
}

/// MAZE_STATUS_INVALID_ARGUMENT for a context one session's cache could not hold in `memory`
/// bytes (or longer than [`MAX_CONTEXT_LENGTH`]), naming the limit this model has here.
fn check_context_length(config: &Config, context_length: usize, memory: usize) -> Result<()> {
    let per_token = kv_bytes_per_token(config).max(1);
    let limit = (memory / per_token).min(MAX_CONTEXT_LENGTH);
    if context_length <= limit {
        return Ok(());
    }
    let mib = |bytes: usize| bytes / (1 << 20);
    Err(Error::invalid_argument(format!(
        "context length {context_length} is more than this model can have here: one session's key/value \
         cache would take {} MiB ({per_token} bytes per token) of the machine's {} MiB; the limit is \
         {limit} tokens",
        mib(per_token.saturating_mul(context_length)),
        mib(memory)
    )))
}

/// What the metadata says about the model and the context it serves; the vocabulary size and
/// the compute path are known once the weights are read.
fn model_info(file: &GgufFile, config: &Config, requested_context: usize) -> ModelInfo {
    let trained_context_length = config.trained_context_length;
    let context_length = match requested_context {
        0 => trained_context_length.min(DEFAULT_MAX_CONTEXT),
        n => n,
    };
    let name = file.opt_str("general.name").map(str::to_string).unwrap_or_else(|| {
        file.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    });
    ModelInfo {
        architecture: config.family.architecture.to_string(),
        name,
        vocab_size: 0,
        trained_context_length,
        context_length,
        n_layers: config.n_layers,
        embedding_length: config.dim,
        compute: String::new(),
    }
}

impl Transformer {
    fn check(&self, tokens: &[u32], cached: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::new(ErrorKind::Internal, "forward called with no tokens"));
        }
        if cached + tokens.len() > self.info.context_length {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "{cached} cached + {} new tokens exceed the context length {}",
                    tokens.len(),
                    self.info.context_length
                ),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(Error::invalid_argument(format!(
                "token id {bad} is out of range (vocabulary size {})",
                self.info.vocab_size
            )));
        }
        Ok(())
    }
}

fn wrong_cache() -> Error {
    Error::new(ErrorKind::Internal, "a cache from another model was passed to this model")
}

fn interrupted() -> Error {
    Error::new(ErrorKind::Cancelled, "interrupted")
}

impl SequenceCache for NativeCache {
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.cut(len);
        }
    }

    fn fork(&self, len: usize) -> Option<Box<dyn SequenceCache>> {
        Some(Box::new(self.prefix(len.min(self.len))))
    }

    fn memory_bytes(&self) -> usize {
        NativeCache::memory_bytes(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LanguageModel for Transformer {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self) -> Box<dyn SequenceCache> {
        match &self.imp {
            Implementation::Native(m) => {
                Box::new(NativeCache::new(m.config.n_layers, m.config.n_kv_heads, m.config.head_dim))
            }
            Implementation::Tensors(m) => Box::new(m.new_cache()),
        }
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut dyn SequenceCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        self.check(tokens, cache.len())?;
        match &self.imp {
            Implementation::Native(m) => {
                let cache = cache.as_any_mut().downcast_mut::<NativeCache>().ok_or_else(wrong_cache)?;
                reserve_cache(cache, tokens.len())?;
                let mut batch = [native::BatchItem { tokens, cache }];
                m.forward_batch(&mut batch, interrupt).and_then(|mut l| l.pop()).ok_or_else(interrupted)
            }
            Implementation::Tensors(m) => {
                let cache = cache.as_any_mut().downcast_mut::<TensorCache>().ok_or_else(wrong_cache)?;
                m.forward(tokens, cache, interrupt)
            }
        }
    }

    fn score(
        &self,
        tokens: &[u32],
        next: &[u32],
        cache: &mut dyn SequenceCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        let Implementation::Native(m) = &self.imp else {
            return score_step_by_step(self, tokens, next, cache, interrupt);
        };
        check_score_arguments(tokens, next, self.info.vocab_size)?;
        self.check(tokens, cache.len())?;
        let cache = cache.as_any_mut().downcast_mut::<NativeCache>().ok_or_else(wrong_cache)?;
        reserve_cache(cache, tokens.len())?;
        m.score(native::BatchItem { tokens, cache }, next, interrupt).ok_or_else(interrupted)
    }

    fn forward_batch(
        &self,
        items: &mut [BatchStep<'_>],
        interrupt: &dyn Fn() -> bool,
    ) -> Vec<Result<Vec<f32>>> {
        let Implementation::Native(m) = &self.imp else {
            return items.iter_mut().map(|it| self.forward(it.tokens, &mut *it.cache, interrupt)).collect();
        };
        // Items that fail their checks get their error; the rest run as one batch.
        let mut results: Vec<Option<Result<Vec<f32>>>> = Vec::with_capacity(items.len());
        let mut batch = Vec::new();
        for it in items.iter_mut() {
            match self.check(it.tokens, it.cache.len()) {
                Err(e) => results.push(Some(Err(e))),
                Ok(()) => match it.cache.as_any_mut().downcast_mut::<NativeCache>() {
                    Some(cache) => match reserve_cache(cache, it.tokens.len()) {
                        Ok(()) => {
                            results.push(None);
                            batch.push(native::BatchItem { tokens: it.tokens, cache });
                        }
                        Err(e) => results.push(Some(Err(e))),
                    },
                    None => results.push(Some(Err(wrong_cache()))),
                },
            }
        }
        let mut logits = match m.forward_batch(&mut batch, interrupt) {
            Some(l) => l.into_iter(),
            None => return results.into_iter().map(|r| r.unwrap_or_else(|| Err(interrupted()))).collect(),
        };
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    logits.next().ok_or_else(|| Error::new(ErrorKind::Internal, "batch lost a row"))
                })
            })
            .collect()
    }
}
