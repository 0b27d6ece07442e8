//! Text ⇄ token ids.
//!
//! Encoding runs a Hugging Face `tokenizers` pipeline, built either from a `tokenizer.json` or
//! from the GGUF `tokenizer.ggml.*` metadata (byte-level BPE as in GPT-2/Llama 3/SmolLM, or
//! SentencePiece as in Llama 2/Gemma). Decoding uses our own id → bytes table, so that
//! `decode(encode(s)) == s` byte for byte and a stream can be cut on UTF-8 boundaries.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::gguf::GgufFile;
use crate::error::{Error, ErrorKind, Result};

/// GGUF `tokenizer.ggml.token_type` values.
mod token_type {
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const CONTROL: i32 = 3;
    pub(super) const USER_DEFINED: i32 = 4;
    pub(super) const BYTE: i32 = 6;
}

const GPT2_REGEX_FREE_PRES: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
    "olmo",
    "jais",
    "stablelm2",
    "poro-chat",
    "viking",
    "bloom",
    "gpt3-finnish",
];
const DIGIT_SPLIT_PRES: &[&str] =
    &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"];
const LLAMA3_PRES: &[&str] = &["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "pixtral", "dbrx"];
const QWEN2_PRES: &[&str] = &["qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan"];
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a generation, in addition to the declared EOS/EOT ids: llama.cpp's
/// end-of-generation texts (turn and text ends) and its fill-in-the-middle pad, repository and
/// file-separator tokens. A vocabulary that lists one of them as another type of token gets it
/// as a control token, as llama.cpp overrides it (Qwen2.5's `</s>` is "normal"), so its text
/// in a prompt is that token.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|file_sep|>",
];

/// A loaded tokenizer. Immutable and shareable across threads.
pub struct Tokenizer {
    /// Splits special-token text in the input into special tokens.
    parsing: tokenizers::Tokenizer,
    /// Treats special-token text as ordinary text. A copy of `parsing` with one flag changed,
    /// made on first use: copying a 49k-token BPE costs ~15 ms, on the critical path of a
    /// model's load, and prompts never need it (only untrusted text and forced strings do).
    literal: OnceLock<tokenizers::Tokenizer>,
    pieces: Vec<Vec<u8>>,
    texts: Vec<String>,
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    end_of_generation: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece dummy prefix: encoding adds a space before the text (as llama.cpp does)...
    add_space_prefix: bool,
    /// ...and decoding drops it again from the first text piece.
    strip_leading_space: bool,
    /// Special-token texts, to tell whether the input starts with one.
    special_texts: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, what.to_string())
}

/// GPT-2's reversible byte ↔ printable-char map used by byte-level BPE vocabularies.
pub fn byte_level_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("valid scalar");
            next += 1;
            c
        };
    }
    map
}

/// The inverse of [`byte_level_chars`]: the byte each of its characters stands for, as a table
/// indexed by code point (all of them are below U+0200) rather than a hash map, since it is
/// looked up once per character of a 50k-token vocabulary while a model loads.
struct ByteLevelDecoder(Vec<Option<u8>>);

impl ByteLevelDecoder {
    fn new() -> Self {
        let chars = byte_level_chars();
        let mut table = vec![None; chars.iter().map(|&c| c as usize).max().unwrap_or(0) + 1];
        for (b, &c) in chars.iter().enumerate() {
            table[c as usize] = Some(b as u8);
        }
        Self(table)
    }

    /// The bytes `text` stands for, or `None` if a character is not one of the 256.
    fn bytes(&self, text: &str) -> Option<Vec<u8>> {
        text.chars().map(|c| self.0.get(c as usize).copied().flatten()).collect()
    }
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

struct Vocab {
    texts: Vec<String>,
    types: Vec<i32>,
}

impl Vocab {
    fn from_gguf(file: &GgufFile) -> Result<Self> {
        let texts = file.str_array("tokenizer.ggml.tokens")?;
        let types = if file.has_key("tokenizer.ggml.token_type") {
            file.i32_array("tokenizer.ggml.token_type")?
        } else {
            vec![1; texts.len()]
        };
        if types.len() != texts.len() {
            return Err(Error::model_format(format!(
                "'{}': {} token types for {} tokens",
                file.path().display(),
                types.len(),
                texts.len()
            )));
        }
        if texts.is_empty() {
            return Err(Error::model_format(format!("'{}': the vocabulary is empty", file.path().display())));
        }
        let mut types = types;
        for (text, ty) in texts.iter().zip(types.iter_mut()) {
            if *ty != token_type::CONTROL && END_OF_GENERATION_TEXTS.contains(&text.as_str()) {
                *ty = token_type::CONTROL;
            }
        }
        Ok(Self { texts, types })
    }

    fn map(&self) -> HashMap<String, u32> {
        let mut m = HashMap::with_capacity(self.texts.len());
        for (i, t) in self.texts.iter().enumerate() {
            m.entry(t.clone()).or_insert(i as u32);
        }
        m
    }

    fn added_tokens(&self) -> Vec<AddedToken> {
        self.texts
            .iter()
            .zip(&self.types)
            .filter(|(_, &t)| t == token_type::CONTROL || t == token_type::USER_DEFINED)
            .map(|(text, &t)| AddedToken::from(text.clone(), t == token_type::CONTROL).normalized(false))
            .collect()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let kind = file.str("tokenizer.ggml.model")?;
        let vocab = Vocab::from_gguf(file)?;
        let mut tok = match kind {
            "gpt2" => Self::byte_level_bpe(file, &vocab)?,
            "llama" => Self::sentencepiece(file, &vocab)?,
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "'{}': tokenizer type '{other}' is not supported (supported: gpt2, llama); pass a tokenizer.json instead",
                        file.path().display()
                    ),
                ))
            }
        };
        tok.apply_gguf_special_ids(file);
        Ok(tok)
    }

    fn byte_level_bpe(file: &GgufFile, vocab: &Vocab) -> Result<Self> {
        let pre = file.opt_str("tokenizer.ggml.pre").unwrap_or("default");
        let merges: Vec<(String, String)> = file
            .str_refs("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => {
                    Err(Error::model_format(format!("'{}': malformed merge '{m}'", file.path().display())))
                }
            })
            .collect::<Result<_>>()?;
        let byte_level = |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, regex));
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            Ok(PreTokenizerWrapper::Split(
                Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(tok_err)?,
            ))
        };
        let (pre_tokenizer, ignore_merges) = if DIGIT_SPLIT_PRES.contains(&pre) {
            (Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level(true)]), false)
        } else if LLAMA3_PRES.contains(&pre) {
            (Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false)]), true)
        } else if QWEN2_PRES.contains(&pre) {
            (Sequence::new(vec![split(QWEN2_REGEX)?, byte_level(false)]), false)
        } else if GPT2_REGEX_FREE_PRES.contains(&pre) {
            (Sequence::new(vec![byte_level(true)]), false)
        } else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "'{}': pre-tokenizer '{pre}' is not known; pass the model's tokenizer.json instead",
                    file.path().display()
                ),
            ));
        };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.map().into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| tok_err(format!("'{}': cannot build the BPE model: {e}", file.path().display())))?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(pre_tokenizer));
        hf.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        hf.add_tokens(&vocab.added_tokens());

        let chars = ByteLevelDecoder::new();
        let pieces = vocab
            .texts
            .iter()
            .zip(&vocab.types)
            .map(|(text, &t)| {
                if t == token_type::CONTROL || t == token_type::USER_DEFINED {
                    return text.as_bytes().to_vec();
                }
                chars.bytes(text).unwrap_or_else(|| text.as_bytes().to_vec())
            })
            .collect();
        Ok(Self::assemble(hf, pieces, vocab, false))
    }

    fn sentencepiece(file: &GgufFile, vocab: &Vocab) -> Result<Self> {
        let scores = if file.has_key("tokenizer.ggml.scores") {
            file.f32_array("tokenizer.ggml.scores")?
        } else {
            vec![0.0; vocab.texts.len()]
        };
        if scores.len() != vocab.texts.len() {
            return Err(Error::model_format(format!(
                "'{}': {} scores for {} tokens",
                file.path().display(),
                scores.len(),
                vocab.texts.len()
            )));
        }
        let map = vocab.map();
        // SentencePiece BPE merges the pair whose result scores highest; an HF BPE with merges
        // ranked by the merged token's score makes the same choices.
        let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
        for (id, text) in vocab.texts.iter().enumerate() {
            if vocab.types[id] != 1 {
                continue;
            }
            for (split, _) in text.char_indices().skip(1) {
                let (left, right) = text.split_at(split);
                if map.contains_key(left) && map.contains_key(right) {
                    ranked.push((scores[id], id as u32, left.to_string(), right.to_string()));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let merges = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
        let unk = file
            .opt_u64("tokenizer.ggml.unknown_token_id")
            .map(|id| id as usize)
            .or_else(|| vocab.types.iter().position(|&t| t == token_type::UNKNOWN))
            .and_then(|id| vocab.texts.get(id).cloned());
        let mut builder = BPE::builder()
            .vocab_and_merges(map.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(|e| {
            tok_err(format!("'{}': cannot build the SentencePiece model: {e}", file.path().display()))
        })?;
        let add_space_prefix = file.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
        // The dummy prefix is added in `encode`: HF's Metaspace skips it when the text already
        // starts with a space, which would lose that space on the way back.
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Never, false)));
        hf.with_decoder(Some(tokenizers::decoders::metaspace::Metaspace::new(
            '▁',
            PrependScheme::Never,
            false,
        )));
        hf.add_tokens(&vocab.added_tokens());

        let pieces = vocab
            .texts
            .iter()
            .zip(&vocab.types)
            .map(|(text, &t)| match t {
                token_type::BYTE => {
                    parse_byte_token(text).map(|b| vec![b]).unwrap_or_else(|| text.as_bytes().to_vec())
                }
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => {
                    text.as_bytes().to_vec()
                }
                _ => text.replace('▁', " ").into_bytes(),
            })
            .collect();
        let mut tok = Self::assemble(hf, pieces, vocab, add_space_prefix);
        tok.add_space_prefix = add_space_prefix;
        Ok(tok)
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let hf = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("cannot load tokenizer '{}': {e}", path.display())))?;
        let size = hf.get_vocab_size(true);
        let added = hf.get_added_vocabulary().get_added_tokens_decoder().clone();
        let decoder_json = hf.get_decoder().and_then(|d| serde_json::to_string(d).ok()).unwrap_or_default();
        let byte_level = decoder_json.contains("ByteLevel");
        let strip_leading_space =
            decoder_json.contains("Strip") || decoder_json.contains("\"prepend_scheme\":\"first\"");
        let chars = ByteLevelDecoder::new();
        let mut texts = Vec::with_capacity(size);
        let mut types = Vec::with_capacity(size);
        let mut pieces = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let text = hf.id_to_token(id).unwrap_or_default();
            let (piece, ty) = if let Some(tok) = added.get(&id) {
                (
                    tok.content.as_bytes().to_vec(),
                    if tok.special { token_type::CONTROL } else { token_type::USER_DEFINED },
                )
            } else if let Some(b) = parse_byte_token(&text).filter(|_| !byte_level) {
                (vec![b], token_type::BYTE)
            } else if byte_level {
                (chars.bytes(&text).unwrap_or_else(|| text.as_bytes().to_vec()), 1)
            } else {
                (text.replace('▁', " ").into_bytes(), 1)
            };
            texts.push(text);
            types.push(ty);
            pieces.push(piece);
        }
        let vocab = Vocab { texts, types };
        let mut tok = Self::assemble(hf, pieces, &vocab, strip_leading_space);
        // tokenizer.json does not say which token is BOS/EOS; guess from the usual names.
        tok.bos =
            ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"].iter().find_map(|t| tok.token_id(t));
        tok.eos = ["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|im_end|>"]
            .iter()
            .find_map(|t| tok.token_id(t));
        tok.rebuild_end_of_generation(&[]);
        Ok(tok)
    }

    fn assemble(
        parsing: tokenizers::Tokenizer,
        pieces: Vec<Vec<u8>>,
        vocab: &Vocab,
        strip_leading_space: bool,
    ) -> Self {
        let special: Vec<bool> = vocab.types.iter().map(|&t| t == token_type::CONTROL).collect();
        let special_texts = vocab
            .texts
            .iter()
            .zip(&vocab.types)
            .filter(|(_, &t)| t == token_type::CONTROL || t == token_type::USER_DEFINED)
            .map(|(text, _)| text.clone())
            .collect();
        let mut tok = Self {
            parsing,
            literal: OnceLock::new(),
            pieces,
            texts: vocab.texts.clone(),
            special,
            bos: None,
            eos: None,
            end_of_generation: Vec::new(),
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            strip_leading_space,
            special_texts,
        };
        tok.rebuild_end_of_generation(&[]);
        tok
    }

    /// Takes BOS/EOS/EOT ids and the add-BOS/EOS flags from GGUF metadata, where present. Used
    /// also when a tokenizer.json replaces the GGUF's vocabulary but the model's ids still hold.
    pub fn apply_gguf_special_ids(&mut self, file: &GgufFile) {
        let id = |k: &str| file.opt_u64(k).map(|v| v as u32).filter(|&v| (v as usize) < self.pieces.len());
        if let Some(bos) = id("tokenizer.ggml.bos_token_id") {
            self.bos = Some(bos);
        }
        if let Some(eos) = id("tokenizer.ggml.eos_token_id") {
            self.eos = Some(eos);
        }
        let kind = file.opt_str("tokenizer.ggml.model").unwrap_or("");
        self.add_bos = file.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
        self.add_eos = file.opt_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let extra: Vec<u32> = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        self.rebuild_end_of_generation(&extra);
    }

    fn rebuild_end_of_generation(&mut self, extra: &[u32]) {
        let mut set: HashSet<u32> = extra.iter().copied().collect();
        set.extend(self.eos);
        for text in END_OF_GENERATION_TEXTS {
            if let Some(id) = self.token_id(text).filter(|&id| self.special[id as usize]) {
                set.insert(id);
            }
        }
        let mut v: Vec<u32> = set.into_iter().collect();
        v.sort_unstable();
        self.end_of_generation = v;
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Tokens that end a generation (EOS, EOT and the model's end-of-turn control tokens).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The vocabulary entry's text (for display; not its decoded bytes).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.parsing.token_to_id(text)
    }

    /// The bytes a token stands for (special tokens: their text).
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    fn literal(&self) -> &tokenizers::Tokenizer {
        self.literal.get_or_init(|| {
            let mut literal = self.parsing.clone();
            literal.set_encode_special_tokens(true);
            literal
        })
    }

    /// Encodes text. `add_special` adds BOS/EOS as the model wants them; `parse_special` lets
    /// special-token text in the input (e.g. `<|im_start|>`) become special tokens — leave it off
    /// for untrusted text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let hf = if parse_special { &self.parsing } else { self.literal() };
        let starts_special =
            parse_special && self.special_texts.iter().any(|s| !s.is_empty() && text.starts_with(s.as_str()));
        let text: std::borrow::Cow<str> = if self.add_space_prefix && !text.is_empty() && !starts_special {
            format!(" {text}").into()
        } else {
            text.into()
        };
        let enc = hf
            .encode_fast(text.as_ref(), false)
            .map_err(|e| tok_err(format!("cannot tokenize the input: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Encodes a piece of text in the middle of a sequence: no BOS/EOS, no SentencePiece dummy
    /// prefix, special-token text kept literal. (Used for strings a grammar forces.)
    pub fn encode_fragment(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .literal()
            .encode_fast(text, false)
            .map_err(|e| tok_err(format!("cannot tokenize the input: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A hash of everything that decides which token means what (pieces, special flags, EOS),
    /// so caches keyed by it are never shared between different vocabularies.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (piece, special) in self.pieces.iter().zip(&self.special) {
            h.update(&(piece.len() as u32).to_le_bytes());
            h.update(piece);
            h.update(&[*special as u8]);
        }
        h.update(&self.eos.unwrap_or(u32::MAX).to_le_bytes());
        h.digest()
    }

    /// Decodes ids to bytes (not necessarily UTF-8 if the ids end mid-character).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.piece(id).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "token id {id} at position {i} is out of range (vocabulary size {})",
                    self.vocab_size()
                ))
            })?;
            let first_text_piece = i == 0 || (i == 1 && Some(ids[0]) == self.bos);
            if self.strip_leading_space && first_text_piece && !self.is_special(id) {
                out.extend_from_slice(piece.strip_prefix(b" ").unwrap_or(piece));
            } else {
                out.extend_from_slice(piece);
            }
        }
        Ok(out)
    }

    /// Decodes ids to text; an incomplete trailing character is an error, as is invalid UTF-8.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        String::from_utf8(self.decode_bytes(ids)?).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUtf8,
                format!("the tokens do not decode to valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::quantized::gguf_file::Value;

    use super::*;
    use crate::model::gguf::tests::open_metadata;

    /// Control tokens of the test vocabularies, after the bytes and merges.
    const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    const HELLO_WORLD: &[(&str, &str)] = &[
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ġw", "or"),
        ("Ġwor", "l"),
        ("Ġworl", "d"),
    ];
    const ONE_TWO_THREE: &[(&str, &str)] = &[("1", "2"), ("12", "3")];

    /// Byte-level BPE metadata: the 256 byte characters, one token per merge, then `SPECIALS`.
    fn byte_level_metadata(pre: &str, merges: &[(&str, &str)]) -> Vec<(&'static str, Value)> {
        let mut tokens: Vec<String> = byte_level_chars().iter().map(char::to_string).collect();
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
        let n = tokens.len();
        let types = (0..n).map(|i| Value::I32(if i + SPECIALS.len() >= n { 3 } else { 1 })).collect();
        let id = |text: &str| tokens.iter().position(|t| t == text).unwrap() as u32;
        vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.bos_token_id", Value::U32(id("<|im_start|>"))),
            ("tokenizer.ggml.eos_token_id", Value::U32(id("<|im_end|>"))),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            (
                "tokenizer.ggml.merges",
                Value::Array(merges.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
            ),
            ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ]
    }

    fn set(
        mut metadata: Vec<(&'static str, Value)>,
        key: &'static str,
        value: Value,
    ) -> Vec<(&'static str, Value)> {
        metadata.retain(|(k, _)| *k != key);
        metadata.push((key, value));
        metadata
    }

    fn build(metadata: &[(&str, Value)]) -> Result<Tokenizer> {
        Tokenizer::from_gguf(&open_metadata(metadata))
    }

    /// The SmolLM-style tokenizer: digits split, "hello" and " world" one token each.
    pub(crate) fn smollm() -> Tokenizer {
        build(&byte_level_metadata("smollm", HELLO_WORLD)).unwrap()
    }

    fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| tok.token_text(i).unwrap().to_string()).collect()
    }

    const HARD_TEXTS: &[&str] = &[
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "def f(x):\n\treturn x**2  # square\r\n",
        "你好，世界。日本語のテキスト、한국어",
        "🦀 👨‍👩‍👧 🇫🇷 ❤️ e\u{301}",
        "a    b\n\n\n\nc \n \n\t\t",
        "   leading and trailing   ",
        "v1.2.3 on 2026-12-02: 1234567890",
        "don't I'LL we've",
        "<|im_start|>user\nhi<|im_end|>",
        "\u{0}\u{7f}\u{ff}",
    ];

    #[test]
    fn byte_level_chars_are_a_printable_bijection() {
        let chars = byte_level_chars();
        let distinct: HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(chars.iter().all(|&c| (c as u32) < 0x200 && !c.is_whitespace() && !c.is_control()));
        for b in b'!'..=b'~' {
            assert_eq!(chars[b as usize], b as char);
        }
        assert_eq!((chars[b' ' as usize], chars[b'\n' as usize]), ('Ġ', 'Ċ'));
        let decoder = ByteLevelDecoder::new();
        let all: String = chars.iter().collect();
        assert_eq!(decoder.bytes(&all).unwrap(), (0..=255u8).collect::<Vec<_>>());
        assert_eq!(decoder.bytes("€"), None);
        assert_eq!(decoder.bytes(""), Some(vec![]));
    }

    #[test]
    fn byte_tokens_parse_only_in_their_exact_form() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        for text in ["<0xA>", "<0x0AA>", "<0xZZ>", "0x0A", "<0x0A", "<0X0A>", ""] {
            assert_eq!(parse_byte_token(text), None, "{text}");
        }
    }

    #[test]
    fn each_pre_tokenizer_splits_digits_its_own_way() {
        let cases = [
            ("smollm", vec!["1", "2", "3", "1", "2", "3"]),
            ("starcoder", vec!["1", "2", "3", "1", "2", "3"]),
            ("qwen2", vec!["1", "2", "3", "1", "2", "3"]),
            ("llama3", vec!["123", "123"]),
            ("gpt2", vec!["123", "123"]),
            ("default", vec!["123", "123"]),
        ];
        for (pre, want) in cases {
            let tok = build(&byte_level_metadata(pre, ONE_TWO_THREE)).unwrap();
            let ids = tok.encode("123123", false, false).unwrap();
            assert_eq!(texts(&tok, &ids), want, "pre-tokenizer {pre}");
        }
        // Llama 3 groups digits by three, whatever the merges say.
        let tok = build(&byte_level_metadata("llama3", ONE_TWO_THREE)).unwrap();
        assert_eq!(texts(&tok, &tok.encode("12312", false, false).unwrap()), ["123", "12"]);
        // SmolLM splits digits only: words still merge.
        let tok = smollm();
        assert_eq!(texts(&tok, &tok.encode("hello world", false, false).unwrap()), ["hello", "Ġworld"]);
    }

    #[test]
    fn every_pre_tokenizer_round_trips_hard_text() {
        for pre in ["smollm", "llama3", "qwen2", "gpt2", "olmo"] {
            let tok = build(&byte_level_metadata(pre, HELLO_WORLD)).unwrap();
            for &text in HARD_TEXTS {
                for parse_special in [false, true] {
                    let ids = tok.encode(text, false, parse_special).unwrap();
                    assert_eq!(tok.decode(&ids).unwrap(), text, "{pre} {parse_special}: {ids:?}");
                    // Piece by piece too: the byte table alone decodes, without the HF decoder.
                    let pieces: Vec<u8> = ids.iter().flat_map(|&i| tok.piece(i).unwrap().to_vec()).collect();
                    assert_eq!(pieces, text.as_bytes(), "{pre}");
                }
            }
        }
    }

    #[test]
    fn unknown_pre_tokenizers_are_refused_and_a_missing_one_is_gpt2() {
        let err = build(&byte_level_metadata("weird-pre", HELLO_WORLD)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("'weird-pre'") && err.message().contains("tokenizer.json"), "{err}");
        let mut metadata = byte_level_metadata("gpt2", ONE_TWO_THREE);
        metadata.retain(|(k, _)| *k != "tokenizer.ggml.pre");
        let tok = build(&metadata).unwrap();
        assert_eq!(texts(&tok, &tok.encode("123", false, false).unwrap()), ["123"]);
    }

    #[test]
    fn special_tokens_are_parsed_only_when_asked() {
        let tok = smollm();
        let (start, end) = (tok.token_id("<|im_start|>").unwrap(), tok.token_id("<|im_end|>").unwrap());
        assert!(tok.is_special(start) && !tok.is_special(tok.token_id("h").unwrap()));
        assert!(!tok.is_special(u32::MAX));
        let text = "<|im_start|>user\nhi<|im_end|>";
        let parsed = tok.encode(text, false, true).unwrap();
        assert_eq!((parsed[0], *parsed.last().unwrap()), (start, end));
        for literal in [tok.encode(text, false, false).unwrap(), tok.encode_fragment(text).unwrap()] {
            assert!(literal.iter().all(|&id| !tok.is_special(id)), "{literal:?}");
            assert_eq!(tok.decode(&literal).unwrap(), text);
        }
        assert_eq!(tok.decode(&parsed).unwrap(), text);
        assert_eq!(tok.piece(start), Some("<|im_start|>".as_bytes()));
    }

    #[test]
    fn bos_and_eos_are_added_as_the_metadata_says() {
        let (bos, eos) = {
            let tok = smollm();
            (tok.bos().unwrap(), tok.eos().unwrap())
        };
        let body = smollm().encode("hello", false, false).unwrap();
        let with = |bos_flag: Option<bool>, eos_flag: Option<bool>| {
            let mut metadata = byte_level_metadata("smollm", HELLO_WORLD);
            for (key, flag) in
                [("tokenizer.ggml.add_bos_token", bos_flag), ("tokenizer.ggml.add_eos_token", eos_flag)]
            {
                if let Some(flag) = flag {
                    metadata = set(metadata, key, Value::Bool(flag));
                }
            }
            build(&metadata).unwrap()
        };
        // A byte-level BPE adds nothing unless told to.
        assert_eq!(with(None, None).encode("hello", true, false).unwrap(), body);
        assert_eq!(with(Some(false), Some(false)).encode("hello", true, false).unwrap(), body);
        let both = with(Some(true), Some(true));
        assert_eq!(both.encode("hello", true, false).unwrap(), [vec![bos], body.clone(), vec![eos]].concat());
        assert_eq!(both.encode("hello", false, false).unwrap(), body);
        assert_eq!(both.encode_fragment("hello").unwrap(), body);
        assert_eq!(with(Some(true), None).encode("", true, false).unwrap(), [bos]);
        // Ids outside the vocabulary are ignored, not trusted.
        let metadata = set(
            byte_level_metadata("smollm", HELLO_WORLD),
            "tokenizer.ggml.bos_token_id",
            Value::U32(99_999),
        );
        assert_eq!(build(&metadata).unwrap().bos(), None);
    }

    #[test]
    fn end_of_generation_holds_eos_eot_and_end_of_turn_control_tokens() {
        let tok = smollm();
        let ids = |texts: &[&str]| -> Vec<u32> {
            let mut ids: Vec<u32> = texts.iter().map(|t| tok.token_id(t).unwrap()).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(tok.end_of_generation(), ids(&["<|endoftext|>", "<|im_end|>"]));
        assert!(!tok.is_end_of_generation(tok.token_id("<|im_start|>").unwrap()));
        let eot = tok.token_id("x").unwrap();
        let with_eot = build(&set(
            byte_level_metadata("smollm", HELLO_WORLD),
            "tokenizer.ggml.eot_token_id",
            Value::U32(eot),
        ))
        .unwrap();
        assert!(with_eot.is_end_of_generation(eot));
        // End-of-turn texts count whatever type the file gives them, and become control tokens
        // (as llama.cpp overrides them).
        let mut metadata = byte_level_metadata("smollm", HELLO_WORLD);
        let n = tok.vocab_size();
        let types = (0..n)
            .map(|i| {
                Value::I32(if i + 3 == n {
                    4
                } else if i + 3 > n {
                    3
                } else {
                    1
                })
            })
            .collect();
        metadata = set(metadata, "tokenizer.ggml.token_type", Value::Array(types));
        let user_defined = build(&metadata).unwrap();
        let end_of_text = user_defined.token_id("<|endoftext|>").unwrap();
        assert!(user_defined.is_end_of_generation(end_of_text));
        assert_eq!(user_defined.encode("<|endoftext|>", false, true).unwrap(), [end_of_text]);
        assert!(user_defined.is_end_of_generation(user_defined.eos().unwrap()));
    }

    #[test]
    fn decoding_refuses_bad_ids_and_cut_characters() {
        let tok = smollm();
        let hello = tok.encode("hello", false, false).unwrap();
        let err = tok.decode(&[hello[0], 99_999]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("token id 99999 at position 1"), "{err}");
        let e_acute = tok.encode("é", false, false).unwrap();
        assert_eq!(e_acute.len(), 2, "one token per byte");
        let err = tok.decode(&[hello[0], e_acute[0]]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUtf8);
        assert!(err.message().contains("at byte 5"), "{err}");
        assert_eq!(tok.decode_bytes(&e_acute[..1]).unwrap(), [0xC3]);
        assert_eq!(tok.decode(&[]).unwrap(), "");
    }

    #[test]
    fn broken_vocabularies_are_format_errors() {
        let good = || byte_level_metadata("smollm", HELLO_WORLD);
        let cases = [
            ("token types for", set(good(), "tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1)]))),
            ("the vocabulary is empty", {
                let md = set(good(), "tokenizer.ggml.tokens", Value::Array(vec![]));
                set(md, "tokenizer.ggml.token_type", Value::Array(vec![]))
            }),
            (
                "malformed merge 'ab'",
                set(good(), "tokenizer.ggml.merges", Value::Array(vec![Value::String("ab".into())])),
            ),
            (
                "'tokenizer.ggml.tokens' has the wrong type",
                set(good(), "tokenizer.ggml.tokens", Value::U32(3)),
            ),
            ("lacks the GGUF metadata key 'tokenizer.ggml.model'", {
                let mut md = good();
                md.retain(|(k, _)| *k != "tokenizer.ggml.model");
                md
            }),
        ];
        for (says, metadata) in cases {
            let err = build(&metadata).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ModelFormat, "{says}: {err}");
            assert!(err.message().contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn the_fingerprint_follows_the_vocabulary_and_eos() {
        let a = smollm().fingerprint();
        assert_eq!(a, smollm().fingerprint());
        let other_pre = build(&byte_level_metadata("gpt2", HELLO_WORLD)).unwrap();
        assert_eq!(a, other_pre.fingerprint(), "the pre-tokenizer does not change what ids mean");
        let fewer_merges = build(&byte_level_metadata("smollm", &HELLO_WORLD[..8])).unwrap();
        assert_ne!(a, fewer_merges.fingerprint());
        let eos =
            set(byte_level_metadata("smollm", HELLO_WORLD), "tokenizer.ggml.eos_token_id", Value::U32(0));
        assert_ne!(a, build(&eos).unwrap().fingerprint());
    }

    /// SentencePiece: <unk>, <s>, </s>, byte fallback, then pieces scored by position.
    fn sentencepiece_metadata() -> Vec<(&'static str, Value)> {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for piece in ["▁", "h", "e", "l", "o", "he", "ll", "llo", "hello", "▁hello"] {
            tokens.push(piece.into());
            types.push(1);
        }
        let scores = (0..tokens.len()).map(|i| Value::F32(i as f32)).collect();
        vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.scores", Value::Array(scores)),
            ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect())),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ]
    }

    #[test]
    fn sentencepiece_dummy_prefix_is_optional_and_round_trips() {
        let with_prefix = build(&sentencepiece_metadata()).unwrap();
        assert_eq!(texts(&with_prefix, &with_prefix.encode("hello", false, false).unwrap()), ["▁hello"]);
        assert_eq!(with_prefix.encode("hello", true, false).unwrap()[0], 1, "BOS by default");
        // Text that starts with a special token gets no dummy prefix.
        let ids = with_prefix.encode("<s>hello", false, true).unwrap();
        assert_eq!(texts(&with_prefix, &ids), ["<s>", "hello"]);
        let without =
            build(&set(sentencepiece_metadata(), "tokenizer.ggml.add_space_prefix", Value::Bool(false)))
                .unwrap();
        assert_eq!(texts(&without, &without.encode("hello", false, false).unwrap()), ["hello"]);
        for tok in [&with_prefix, &without] {
            for text in ["hello", " hello", "  hello  hello\n", "héllo 🦀", "<s>hello</s>", ""] {
                let ids = tok.encode(text, true, true).unwrap();
                assert_eq!(tok.decode(&ids[1..]).unwrap(), text, "{ids:?}");
            }
        }
        let err = build(&set(
            sentencepiece_metadata(),
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0)]),
        ))
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ModelFormat);
        assert!(err.message().contains("1 scores for 269 tokens"), "{err}");
    }
}
