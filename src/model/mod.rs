//! Models: file formats, architectures, tokenizers and chat templates.
//!
//! Everything above this module talks to a model through [`LanguageModel`], so the forward pass
//! can be replaced (own kernels, batching, GPU) without touching sessions or the C ABI.

pub mod chat;
pub mod gguf;
pub mod tokenizer;
pub mod transformer;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use crate::error::{Error, ErrorKind, Result};
use chat::ChatTemplate;
use gguf::GgufFile;
use tokenizer::Tokenizer;

/// Static facts about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. "llama".
    pub architecture: String,
    /// `general.name` when the file has one, else the file stem.
    pub name: String,
    pub vocab_size: usize,
    /// Context length the model was trained with.
    pub trained_context_length: usize,
    /// Context length this instance serves (KV cache capacity per session).
    pub context_length: usize,
    pub n_layers: usize,
    pub embedding_length: usize,
    /// How the forward pass runs, e.g. "cpu native, avx512vnni" or "candle tensors, cpu".
    pub compute: String,
}

/// Per-sequence state (the KV cache) of one model. Opaque to everything but the model that made
/// it; the engine only asks how many positions it holds and cuts it back for prefix reuse.
pub trait SequenceCache: Send + Any {
    /// Number of positions already computed.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every position at or after `len`.
    fn truncate(&mut self, len: usize);
    /// A new cache holding a copy of the first `len` positions (at most [`Self::len`]), so
    /// another sequence that starts with the same tokens skips computing them; `None` when this
    /// model's cache cannot be copied.
    fn fork(&self, len: usize) -> Option<Box<dyn SequenceCache>> {
        let _ = len;
        None
    }
    /// Memory held, in bytes (what the prefix cache counts against its budget).
    fn memory_bytes(&self) -> usize;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The forward pass. Implementations are shared by all sessions of an engine.
pub trait LanguageModel: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// A fresh, empty cache for one sequence.
    fn new_cache(&self) -> Box<dyn SequenceCache>;
    /// Appends `tokens` to the sequence in `cache` and returns the logits (vocab-sized) of the
    /// last of them. `cache.len() + tokens.len()` must not exceed the context length.
    ///
    /// `interrupt` is polled during the computation; when it returns true the call stops early,
    /// leaves `cache` as it was and fails with [`ErrorKind::Cancelled`].
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut dyn SequenceCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>>;

    /// Several sequences at once, one result per item, in order. A batched implementation reads
    /// the weights once for all items; this default runs them one after another.
    ///
    /// `interrupt` stops the whole batch; callers batch only sequences that may be stopped
    /// together, or poll per sequence between calls.
    fn forward_batch(
        &self,
        items: &mut [BatchStep<'_>],
        interrupt: &dyn Fn() -> bool,
    ) -> Vec<Result<Vec<f32>>> {
        items.iter_mut().map(|it| self.forward(it.tokens, &mut *it.cache, interrupt)).collect()
    }

    /// Appends `tokens` to `cache` and returns the log-probability (natural log) the model
    /// gives `next[i]` right after `tokens[i]`, for every i (`next` is as long as `tokens`).
    /// Scoring a text is `tokens` = its ids but the last, `next` = its ids but the first. This
    /// default steps one position at a time; a batched implementation computes every position
    /// in one pass.
    fn score(
        &self,
        tokens: &[u32],
        next: &[u32],
        cache: &mut dyn SequenceCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        score_step_by_step(self, tokens, next, cache, interrupt)
    }
}

/// [`LanguageModel::score`] one position at a time, through [`LanguageModel::forward`].
pub fn score_step_by_step<M: LanguageModel + ?Sized>(
    model: &M,
    tokens: &[u32],
    next: &[u32],
    cache: &mut dyn SequenceCache,
    interrupt: &dyn Fn() -> bool,
) -> Result<Vec<f32>> {
    check_score_arguments(tokens, next, model.info().vocab_size)?;
    let mut out = Vec::with_capacity(tokens.len());
    for (&token, &following) in tokens.iter().zip(next) {
        let logits = model.forward(&[token], cache, interrupt)?;
        out.push(log_softmax_at(&logits, following as usize));
    }
    Ok(out)
}

/// [`LanguageModel::score`]'s arguments: as many targets as tokens, each inside the vocabulary.
pub fn check_score_arguments(tokens: &[u32], next: &[u32], vocab_size: usize) -> Result<()> {
    if tokens.len() != next.len() || tokens.is_empty() {
        return Err(Error::invalid_argument(format!(
            "scoring needs one following token per token: {} tokens, {} following",
            tokens.len(),
            next.len()
        )));
    }
    match next.iter().position(|&id| id as usize >= vocab_size) {
        Some(i) => Err(Error::invalid_argument(format!(
            "token {i} to score has id {}, outside the vocabulary (size {vocab_size})",
            next[i]
        ))),
        None => Ok(()),
    }
}

/// `ln softmax(logits)[at]`, computed stably (in f64: a 262k-entry sum).
pub fn log_softmax_at(logits: &[f32], at: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits[at] - max) - sum.ln() as f32
}

/// One sequence's tokens for [`LanguageModel::forward_batch`].
pub struct BatchStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut dyn SequenceCache,
}

/// Loading progress: called with a fraction in [0, 1]; returning `false` aborts the load.
pub type Progress<'a> = &'a mut dyn FnMut(f32) -> bool;

/// What [`load`] returns: the forward pass plus everything needed to talk to it in text.
pub struct LoadedModel {
    pub model: Arc<dyn LanguageModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
}

/// Where a model comes from and how much context to serve.
#[derive(Debug, Clone)]
pub struct LoadOptions<'p> {
    pub model_path: &'p Path,
    /// `tokenizer.json` to use instead of the GGUF's own tokenizer metadata.
    pub tokenizer_path: Option<&'p Path>,
    /// 0 = the trained context length, capped at [`DEFAULT_MAX_CONTEXT`].
    pub context_length: usize,
    pub device: Device,
    /// Run candle's tensor forward pass even where the native CPU one could (comparisons).
    pub tensor_forward: bool,
}

/// Cap on the default context so a model trained on 128k tokens does not reserve for 128k.
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// Loads a GGUF model, its tokenizer and chat template.
pub fn load(opts: &LoadOptions<'_>, progress: Progress<'_>) -> Result<LoadedModel> {
    let file = GgufFile::open(opts.model_path)?;
    // Refused before the tokenizer is built: the architecture is what a user needs to hear about.
    let architecture = file.str("general.architecture")?;
    if transformer::Family::of(architecture).is_none() {
        return Err(transformer::unsupported_architecture(&file, architecture));
    }
    let from_gguf = opts.tokenizer_path.is_none() && file.has_key("tokenizer.ggml.model");
    let other_tokenizer = match opts.tokenizer_path {
        _ if from_gguf => None,
        Some(p) => Some(Tokenizer::from_json_file(p)?),
        None => {
            let beside = opts.model_path.with_file_name("tokenizer.json");
            if beside.is_file() {
                Some(Tokenizer::from_json_file(&beside)?)
            } else {
                return Err(Error::new(
                    ErrorKind::Tokenizer,
                    format!(
                        "'{}' has no tokenizer metadata (tokenizer.ggml.*) and there is no tokenizer.json beside it",
                        opts.model_path.display()
                    ),
                ));
            }
        }
    };
    let (tokenizer, model) = std::thread::scope(|scope| {
        // Building the tokenizer from GGUF metadata (tens of ms for a 49k vocabulary) needs no
        // weights: it runs on another thread, over the same parsed file, while this one loads them.
        let file = &file;
        let from_metadata = from_gguf.then(|| scope.spawn(move || Tokenizer::from_gguf(file)));
        let model: Result<Arc<dyn LanguageModel>> = transformer::Transformer::load(file, opts, progress)
            .map(|m| Arc::new(m) as Arc<dyn LanguageModel>);
        let tokenizer = match (from_metadata, other_tokenizer) {
            (Some(handle), _) => {
                handle.join().unwrap_or_else(|payload| Err(Error::from_panic(payload.as_ref())))
            }
            (None, Some(t)) => Ok(t),
            (None, None) => Err(Error::new(ErrorKind::Internal, "no tokenizer source")),
        };
        (tokenizer, model)
    });
    // A tokenizer problem is reported first, as when the two were loaded one after the other.
    let tokenizer = tokenizer?;
    let model = model?;
    let template_source =
        file.opt_str("tokenizer.chat_template").or_else(|| chat::builtin_template(&tokenizer));
    let chat_template = match template_source {
        Some(src) => Some(Arc::new(ChatTemplate::new(src, &tokenizer)?)),
        None => None,
    };
    if model.info().vocab_size < tokenizer.vocab_size() {
        return Err(Error::model_format(format!(
            "'{}': the tokenizer has {} tokens but the model's output layer only {}",
            opts.model_path.display(),
            tokenizer.vocab_size(),
            model.info().vocab_size
        )));
    }
    Ok(LoadedModel { model, tokenizer: Arc::new(tokenizer), chat_template })
}
