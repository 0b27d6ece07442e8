//! Constraint IR → llguidance parsers, through one parser factory per tokenizer, with an
//! xxh3-keyed LRU cache of compiled constraints.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::{CancellationHandle, ParserFactory, TokenParser};
use lru::LruCache;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use super::ir::{Constraint, ConstraintKind};
use super::limits::{
    nesting_depth, text_size, ConstraintLimits, COMPILE_TIMEOUT_SETTING, MAX_DEPTH_SETTING, MAX_SIZE_SETTING,
};
use super::schema::{self, SchemaNotes};
use crate::error::{Error, ErrorKind, Result};
use crate::model::tokenizer::Tokenizer;

/// llguidance's view of our tokenizer: the token trie plus text → ids for forced strings.
struct MazeTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for MazeTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenizer.encode_fragment(&String::from_utf8_lossy(s)).unwrap_or_default()
    }
}

/// A compiled constraint, shared by every request that uses it (each request starts its own
/// matchers from these templates).
pub struct CompiledConstraint {
    pub constraint: Constraint,
    pub(crate) program: Arc<Program>,
    /// Time this compilation took (zero when it came from the cache), `setup_time` included.
    pub compile_time: Duration,
    /// The engine's one-time constraint setup (token trie, parser factory) that took place
    /// while this compilation waited for it; zero once the engine has it.
    pub setup_time: Duration,
    pub cache_hit: bool,
}

pub(crate) enum Program {
    /// One parser per pattern/grammar; all must accept. The notes say what of a JSON schema is
    /// not enforced (empty for other kinds).
    Grammars(Vec<TokenParser>, SchemaNotes),
    /// A fixed mask: `allowed` (None = everything) minus `forbidden`.
    Mask { allowed: Option<Vec<u32>>, forbidden: Vec<u32> },
}

/// Compile cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub size: usize,
    pub limit: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

pub struct Compiler {
    core: Arc<CompilerCore>,
    fingerprint: u64,
    cache: Mutex<LruCache<u64, Arc<Program>>>,
    /// Programs of constraints a caller holds (a `maze_constraint` handle), by key with their
    /// holders' count: kept compiled whatever the cache evicts.
    held: Mutex<HashMap<u64, (Arc<Program>, usize)>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// What a compilation needs, shared with the compile thread.
struct CompilerCore {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    /// Built on first use (or at load, [`Compiler::prepare`]): the token trie and parser
    /// factory cost 0.1-1 s, growing with the vocabulary.
    factory: OnceLock<std::result::Result<Setup, String>>,
    limits: ConstraintLimits,
}

pub const DEFAULT_CACHE_LIMIT: usize = 256;

/// How often a caller waiting for a compilation looks at its stop condition.
const STOP_POLL: Duration = Duration::from_millis(2);

/// The engine's constraint machinery, and how long building it took.
struct Setup {
    factory: ParserFactory,
    took: Duration,
}

/// What the compile thread tells the caller waiting for it.
enum FromCompile {
    /// The engine's one-time setup is done: the compile time limit counts from here, since
    /// the setup's cost is the vocabulary's, not the constraint's.
    SetUp,
    /// Stops the llguidance work under way (sent before it starts).
    Cancel(CancellationHandle),
    Done(Result<Program>),
}

/// Stack of the thread each compilation runs on. llguidance's compilers recurse over the
/// grammar; with nesting bounded by [`ConstraintLimits::max_depth`] this leaves them far more
/// room than they need (it is address space, only touched pages cost memory).
pub const COMPILE_STACK_BYTES: usize = 256 << 20;

impl Compiler {
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, cache_limit: usize) -> Self {
        Self::with_limits(tokenizer, vocab_size, cache_limit, ConstraintLimits::default())
    }

    pub fn with_limits(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        cache_limit: usize,
        limits: ConstraintLimits,
    ) -> Self {
        let fingerprint = tokenizer.fingerprint();
        Self {
            core: Arc::new(CompilerCore { tokenizer, vocab_size, factory: OnceLock::new(), limits }),
            fingerprint,
            cache: Mutex::new(Self::empty_cache(cache_limit)),
            held: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// A cache holding at most `limit` programs that allocates as it fills: `LruCache::new` would
    /// reserve room for all `limit` up front (a caller's UINT32_MAX was ~146 GB and aborted).
    fn empty_cache(limit: usize) -> LruCache<u64, Arc<Program>> {
        let mut cache = LruCache::unbounded();
        cache.resize(NonZeroUsize::new(limit.max(1)).expect("non-zero"));
        cache
    }

    pub fn vocab_size(&self) -> usize {
        self.core.vocab_size
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn limits(&self) -> ConstraintLimits {
        self.core.limits
    }

    /// Builds the one-time constraint setup now (an engine option does this at load) rather
    /// than in the first constrained request; returns how long it took (zero if it was built).
    pub fn prepare(&self) -> Result<Duration> {
        let built_before = self.setup_time().is_some();
        self.core.factory()?;
        Ok(if built_before { Duration::ZERO } else { self.setup_time().unwrap_or_default() })
    }

    /// How long the one-time constraint setup took, once it has been built.
    pub fn setup_time(&self) -> Option<Duration> {
        self.core.factory.get()?.as_ref().ok().map(|s| s.took)
    }

    fn key(&self, c: &Constraint) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.fingerprint.to_le_bytes());
        c.hash_canonical(&mut h);
        h.digest()
    }

    /// Compiles (or fetches from the cache) one constraint. Bad input fails here, with a
    /// message naming the constraint and what is wrong with it.
    pub fn compile(&self, c: &Constraint) -> Result<CompiledConstraint> {
        self.compile_until(c, &|| None)
    }

    /// Like [`Compiler::compile`], giving up as soon as `stop` returns an error (a cancelled or
    /// timed-out call): the compile thread is told to stop and left to end on its own.
    pub fn compile_until(
        &self,
        c: &Constraint,
        stop: &dyn Fn() -> Option<Error>,
    ) -> Result<CompiledConstraint> {
        let start = Instant::now();
        if c.json_options.is_some() && !matches!(c.kind, ConstraintKind::JsonSchema(_)) {
            return Err(Error::new(
                ErrorKind::InvalidConstraint,
                format!("{}: json_options apply only to json_schema constraints", describe(c)),
            ));
        }
        let set_up_before = self.core.factory.get().is_some();
        // Before hashing: the hash walks the schema too.
        self.core.check_depth(c)?;
        self.core.check_size(c)?;
        let key = self.key(c);
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let held = || self.held.lock().unwrap_or_else(|p| p.into_inner()).get(&key).map(|(p, _)| p.clone());
        if let Some(program) = cached.or_else(held) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(CompiledConstraint {
                constraint: c.clone(),
                program,
                compile_time: start.elapsed(),
                setup_time: Duration::ZERO,
                cache_hit: true,
            });
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let program = Arc::new(self.build_on_compile_thread(c, stop)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.push(key, program.clone()).is_some_and(|(old, _)| old != key) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let compile_time = start.elapsed();
        let setup_time = if set_up_before {
            Duration::ZERO
        } else {
            self.setup_time().unwrap_or_default().min(compile_time)
        };
        Ok(CompiledConstraint { constraint: c.clone(), program, compile_time, setup_time, cache_hit: false })
    }

    /// Compiles on a thread of its own, with a known stack ([`COMPILE_STACK_BYTES`]): however
    /// the caller's thread was made, a deep grammar cannot overflow it. Waits at most
    /// [`ConstraintLimits::compile_timeout`], and only while `stop` says nothing; then the
    /// compile thread's llguidance work is cancelled (what cannot be cancelled is bounded by
    /// the fuel limits) and the thread ends on its own.
    fn build_on_compile_thread(&self, c: &Constraint, stop: &dyn Fn() -> Option<Error>) -> Result<Program> {
        let (core, constraint) = (self.core.clone(), c.clone());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("maze-constraint-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || {
                let built = catch_unwind(AssertUnwindSafe(|| {
                    if !matches!(constraint.kind, ConstraintKind::TokenMask { .. }) {
                        core.factory()?;
                    }
                    let _ = sender.send(FromCompile::SetUp);
                    core.build(&constraint, &sender)
                }))
                .unwrap_or_else(|payload| Err(Error::from_panic(payload.as_ref())));
                let _ = sender.send(FromCompile::Done(built));
            })
            .map_err(|e| {
                Error::new(ErrorKind::Internal, format!("cannot start a constraint compile thread: {e}"))
            })?;
        let timeout = self.core.limits.compile_timeout;
        // Set once the setup is done; until then only `stop` ends the wait.
        let mut deadline: Option<Instant> = None;
        let mut handles = Vec::new();
        let give_up = |handles: &[CancellationHandle], e: Error| {
            handles.iter().for_each(CancellationHandle::cancel);
            Err(e)
        };
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                let e = Error::new(
                    ErrorKind::InvalidConstraint,
                    format!(
                        "{}: compiling took longer than the limit of {} ms ({COMPILE_TIMEOUT_SETTING})",
                        describe(c),
                        timeout.as_millis()
                    ),
                );
                return give_up(&handles, e);
            }
            if let Some(e) = stop() {
                return give_up(&handles, e);
            }
            let wait = deadline.map_or(STOP_POLL, |d| (d - now).min(STOP_POLL));
            match receiver.recv_timeout(wait) {
                Ok(FromCompile::SetUp) => deadline = Some(Instant::now() + timeout),
                Ok(FromCompile::Cancel(h)) => handles.push(h),
                Ok(FromCompile::Done(built)) => return built,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        "the constraint compile thread ended without a result",
                    ))
                }
            }
        }
    }

    /// Compiles `c` (or takes it from the cache) and keeps its compiled form until as many
    /// [`Compiler::release`] calls with the returned key: the cache may evict it meanwhile,
    /// compiling it again never happens.
    pub fn hold(&self, c: &Constraint) -> Result<u64> {
        let compiled = self.compile(c)?;
        let key = self.key(c);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(key).or_insert_with(|| (compiled.program.clone(), 0)).1 += 1;
        Ok(key)
    }

    /// Gives up one hold taken by [`Compiler::hold`].
    pub fn release(&self, key: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = held.get_mut(&key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                held.remove(&key);
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        CacheStats {
            size: cache.len(),
            limit: cache.cap().get(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Empties the cache (the counters keep counting).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Changes the cache limit, evicting the least recently used entries beyond it.
    pub fn set_limit(&self, limit: usize) -> Result<()> {
        let limit = NonZeroUsize::new(limit)
            .ok_or_else(|| Error::invalid_argument("the constraint cache limit must be at least 1"))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let before = cache.len();
        cache.resize(limit);
        self.evictions.fetch_add(before.saturating_sub(cache.len()) as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl CompilerCore {
    fn factory(&self) -> Result<&ParserFactory> {
        self.factory
            .get_or_init(|| {
                let start = Instant::now();
                let tok = &self.tokenizer;
                let eos = tok.eos().unwrap_or(0);
                let mut info = TokRxInfo::new(self.vocab_size as u32, eos);
                info.tok_bos = tok.bos();
                let words: Vec<Vec<u8>> = (0..self.vocab_size as u32)
                    .map(|id| match tok.piece(id) {
                        Some(p) if !tok.is_special(id) => p.to_vec(),
                        Some(p) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], p].concat(),
                        // Ids past the tokenizer (padded output layers) can never match text.
                        None => format!("\u{ff}<pad_{id}>").into_bytes(),
                    })
                    .collect();
                let env: TokEnv =
                    Arc::new(MazeTokEnv { trie: TokTrie::from(&info, &words), tokenizer: tok.clone() });
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                *factory.limits_mut() = self.limits.parser_limits();
                Ok(Setup { factory, took: start.elapsed() })
            })
            .as_ref()
            .map(|s| &s.factory)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot set up the constraint engine: {e}")))
    }

    /// Refuses a constraint nested deeper than [`ConstraintLimits::max_depth`], naming the limit.
    fn check_depth(&self, c: &Constraint) -> Result<()> {
        let (depth, what) = nesting_depth(&c.kind);
        let max = self.limits.max_depth;
        if depth > max {
            return Err(Error::new(
                ErrorKind::InvalidConstraint,
                format!(
                    "{}: {what} {depth} deep, over the limit of {max} ({MAX_DEPTH_SETTING})",
                    describe(c)
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a constraint bigger than [`ConstraintLimits::max_size_bytes`], naming the limit.
    fn check_size(&self, c: &Constraint) -> Result<()> {
        let (size, max) = (text_size(&c.kind), self.limits.max_size_bytes);
        if size > max {
            return Err(Error::new(
                ErrorKind::InvalidConstraint,
                format!("{}: {size} bytes, over the limit of {max} ({MAX_SIZE_SETTING})", describe(c)),
            ));
        }
        Ok(())
    }

    /// A GBNF `<text>` token element's id: the vocabulary entry with that text, or the one
    /// token the text encodes to with special tokens parsed (as llama.cpp resolves it).
    fn token_for(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_id(text).or_else(|| match self.tokenizer.encode(text, false, true) {
            Ok(ids) if ids.len() == 1 => Some(ids[0]),
            _ => None,
        })
    }

    fn build(&self, c: &Constraint, waiting: &Sender<FromCompile>) -> Result<Program> {
        let what = describe(c);
        let bad = |msg: String| Error::new(ErrorKind::InvalidConstraint, format!("{what}: {msg}"));
        // `explain` words llguidance's message for the caller (which pattern, where in a schema).
        let parse = |grammar: TopLevelGrammar, explain: &dyn Fn(String) -> String| -> Result<TokenParser> {
            let factory = self.factory()?;
            let mut parser = factory.create_parser(grammar).map_err(|e| bad(explain(e.to_string())))?;
            // Some problems only surface when the parser starts; find them now, not mid-request.
            let mut probe_parser = parser.deep_clone();
            let handle = probe_parser.enable_cancellation();
            let mut probe = llguidance::Matcher::new(Ok(probe_parser));
            if waiting.send(FromCompile::Cancel(handle)).is_err() {
                return Err(Error::new(ErrorKind::Cancelled, "nobody waits for this compilation"));
            }
            if let Err(e) = probe.compute_mask() {
                return Err(bad(explain(e.to_string())));
            }
            parser.start_without_prompt();
            Ok(parser)
        };
        match &c.kind {
            ConstraintKind::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(bad("a JSON schema must be an object or a boolean".into()));
                }
                let mut prepared = schema::prepare(schema, c.json_options.as_ref()).map_err(bad)?;
                let grammar = TopLevelGrammar::from_json_schema(prepared.schema.clone());
                let mut parser = parse(grammar, &|e| prepared.explain(&e))?;
                prepared.absorb_warnings(&parser.grammar_warnings());
                Ok(Program::Grammars(vec![parser], prepared.notes))
            }
            ConstraintKind::Lark(grammar) => {
                if grammar.trim().is_empty() {
                    return Err(bad("the grammar is empty".into()));
                }
                Ok(Program::Grammars(
                    vec![parse(TopLevelGrammar::from_lark(grammar.clone()), &|e| e)?],
                    SchemaNotes::default(),
                ))
            }
            ConstraintKind::Gbnf(text) => {
                if text.trim().is_empty() {
                    return Err(bad("the grammar is empty".into()));
                }
                let lark = super::gbnf::to_lark(text, self.limits.max_depth, &|t| self.token_for(t))
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Program::Grammars(
                    vec![parse(TopLevelGrammar::from_lark(lark), &|e| {
                        format!("GBNF converted to Lark: {e}")
                    })?],
                    SchemaNotes::default(),
                ))
            }
            ConstraintKind::Regex(patterns) => {
                if patterns.is_empty() {
                    return Err(bad("no patterns given".into()));
                }
                let parsers = patterns
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        parse(TopLevelGrammar::from_regex(p), &|e| format!("pattern {i} /{p}/: {e}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Program::Grammars(parsers, SchemaNotes::default()))
            }
            ConstraintKind::Choice(options) => {
                if options.is_empty() {
                    return Err(bad("no options given".into()));
                }
                let alternatives: Vec<String> =
                    options.iter().map(|o| serde_json::to_string(o).expect("strings serialize")).collect();
                let grammar = format!("start: {}", alternatives.join(" | "));
                Ok(Program::Grammars(
                    vec![parse(TopLevelGrammar::from_lark(grammar), &|e| e)?],
                    SchemaNotes::default(),
                ))
            }
            ConstraintKind::TokenMask { allowed, forbidden } => {
                for (list, ids) in [("allowed", allowed), ("forbidden", forbidden)] {
                    if let Some(bad_id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                        return Err(bad(format!(
                            "{list} token id {bad_id} is outside the vocabulary (size {})",
                            self.vocab_size
                        )));
                    }
                }
                Ok(Program::Mask {
                    allowed: (!allowed.is_empty()).then(|| allowed.clone()),
                    forbidden: forbidden.clone(),
                })
            }
        }
    }
}

/// "constraint 'name' (kind)", or "kind constraint" without a name.
fn describe(c: &Constraint) -> String {
    if c.name.is_empty() {
        format!("{} constraint", c.kind.label())
    } else {
        format!("constraint '{}' ({})", c.name, c.kind.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraint::limits::tests::lark_chain;
    use crate::constraint::JsonSchemaOptions;
    use crate::model::tokenizer::tests::smollm;

    fn compiler(limits: ConstraintLimits) -> Compiler {
        let tok = Arc::new(smollm());
        let vocab = tok.vocab_size();
        Compiler::with_limits(tok, vocab, 16, limits)
    }

    #[test]
    fn constraints_nested_past_the_depth_limit_are_refused_naming_the_limit() {
        let c = compiler(ConstraintLimits::default());
        let err = c.compile(&Constraint::lark("chain", lark_chain(5000))).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        let msg = err.message();
        assert!(msg.starts_with("constraint 'chain' (lark): rules refer to rules 5001 deep"), "{msg}");
        assert!(msg.contains("limit of 128") && msg.contains("constraint_max_depth"), "{msg}");

        let mut schema = serde_json::json!({"type": "string"});
        for _ in 0..200 {
            schema = serde_json::json!({"type": "array", "items": schema});
        }
        let err = c.compile(&Constraint::json_schema("deep", schema)).err().unwrap();
        assert!(err.message().contains("the schema nests 201 deep"), "{err}");
        let regex = format!("{}a{}", "(".repeat(129), ")".repeat(129));
        let err = c.compile(&Constraint::regex("groups", regex)).err().unwrap();
        assert!(err.message().contains("regex groups nest 129 deep"), "{err}");
        assert_eq!(c.stats().misses, 0, "refused before compiling");
        // Within the limit, all compile.
        c.compile(&Constraint::lark("short chain", lark_chain(100))).unwrap();
    }

    /// The compile thread's stack, not the caller's, carries the grammar: a chain far past the
    /// default limit compiles (or fails cleanly) from a thread with a small stack, where
    /// llguidance's recursion would overflow it.
    #[test]
    fn compilation_runs_on_its_own_large_stack() {
        let c = compiler(ConstraintLimits { max_depth: 100_000, ..Default::default() });
        let small_stack = std::thread::Builder::new().stack_size(256 << 10);
        let compiled = small_stack
            .spawn(move || c.compile(&Constraint::lark("chain", lark_chain(2000))).map(|c| c.cache_hit))
            .unwrap()
            .join()
            .expect("no overflow on the caller's stack");
        assert_eq!(compiled, Ok(false));
    }

    #[test]
    fn oversized_constraints_are_refused_naming_the_limit() {
        let c = compiler(ConstraintLimits::default());
        let options: Vec<String> = (0..100_000).map(|i| format!("option{i}")).collect();
        let err = c.compile(&Constraint::choice("many", options)).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        let msg = err.message();
        assert!(
            msg.starts_with("constraint 'many' (choice): 1188890 bytes, over the limit of 262144"),
            "{msg}"
        );
        assert!(msg.contains("constraint_max_bytes"), "{msg}");
        assert_eq!(c.stats().misses, 0, "refused before compiling");
        let small = compiler(ConstraintLimits { max_size_bytes: 10, ..Default::default() });
        assert!(small.compile(&Constraint::regex("r", "[0-9]{1,20}")).is_err());
        small.compile(&Constraint::regex("r", "[0-9]+")).unwrap();
    }

    /// Two adjacent `/a+/` lexemes: llguidance's forced-byte loop never ends on it. The
    /// compilation is cut at the compile timeout (and its thread told to stop).
    #[test]
    fn a_compilation_that_does_not_end_is_cut_at_the_limit() {
        let limits = ConstraintLimits { compile_timeout: Duration::from_millis(300), ..Default::default() };
        let c = compiler(limits);
        let err = c.compile(&Constraint::lark("ambiguous", "start: A B\nA: /a+/\nB: /a+/\n")).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        let msg = err.message();
        assert!(msg.contains("compiling took longer than the limit of 300 ms"), "{msg}");
        assert!(msg.contains("constraint_compile_timeout_ms"), "{msg}");
        // A stop from the caller ends the wait too, with the caller's error.
        let stop = || Some(Error::new(ErrorKind::Cancelled, "cancelled by the caller"));
        let err = c.compile_until(&Constraint::regex("r", "[0-9]+"), &stop).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
    }

    fn schema_error(c: &Compiler, schema: serde_json::Value, options: Option<JsonSchemaOptions>) -> String {
        let mut constraint = Constraint::json_schema("s", schema);
        constraint.json_options = options;
        let err = c.compile(&constraint).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        err.message().to_string()
    }

    fn notes(compiled: &CompiledConstraint) -> &SchemaNotes {
        match &*compiled.program {
            Program::Grammars(_, notes) => notes,
            Program::Mask { .. } => panic!("a schema compiles to a grammar"),
        }
    }

    #[test]
    fn unsupported_schema_keywords_are_refused_by_pointer_or_relaxed_when_lenient() {
        use serde_json::json;
        let c = compiler(ConstraintLimits::default());
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer", "not": {"const": 3}}}});
        let msg = schema_error(&c, schema.clone(), None);
        assert!(
            msg.starts_with("constraint 's' (json_schema): unsupported keyword \"not\" at /properties/a/not"),
            "{msg}"
        );
        let lenient = JsonSchemaOptions { lenient: true, ..Default::default() };
        let compiled =
            c.compile(&Constraint::json_schema("s", schema).with_json_options(lenient.clone())).unwrap();
        let relaxed = &notes(&compiled).relaxed;
        assert_eq!(relaxed.len(), 1);
        assert_eq!((relaxed[0].keyword.as_str(), relaxed[0].pointer.as_str()), ("not", "/properties/a/not"));

        // llguidance itself refuses min/maxProperties over optional properties; the message
        // gets the place, and lenient compiles it with a note.
        let counted = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "maxProperties": 1});
        let msg = schema_error(&c, counted.clone(), None);
        assert!(
            msg.contains("unsupported keyword \"minProperties/maxProperties\" at /maxProperties"),
            "{msg}"
        );
        let compiled = c.compile(&Constraint::json_schema("s", counted).with_json_options(lenient)).unwrap();
        assert_eq!(notes(&compiled).relaxed[0].pointer, "/maxProperties");
    }

    #[test]
    fn one_of_compiles_when_disjoint_and_is_approximated_only_on_request() {
        use serde_json::json;
        let c = compiler(ConstraintLimits::default());
        let disjoint = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        let compiled = c.compile(&Constraint::json_schema("s", disjoint)).unwrap();
        assert_eq!(notes(&compiled), &SchemaNotes::default(), "exact: nothing relaxed");

        let overlapping =
            json!({"type": "object", "properties": {"n": {"oneOf": [{"type": "integer"}, {"minimum": 0}]}}});
        let msg = schema_error(&c, overlapping.clone(), None);
        assert!(msg.contains("unsupported keyword \"oneOf\" at /properties/n/oneOf"), "{msg}");
        assert!(msg.contains("coerce_one_of"), "{msg}");
        let coerce = JsonSchemaOptions { coerce_one_of: true, ..Default::default() };
        let compiled =
            c.compile(&Constraint::json_schema("s", overlapping).with_json_options(coerce)).unwrap();
        let relaxed = &notes(&compiled).relaxed;
        assert_eq!(relaxed.len(), 1, "{relaxed:?}");
        assert_eq!(
            (relaxed[0].keyword.as_str(), relaxed[0].pointer.as_str()),
            ("oneOf", "/properties/n/oneOf")
        );
        assert!(relaxed[0].note.contains("anyOf"), "{relaxed:?}");
    }

    #[test]
    fn unknown_formats_compile_as_annotations_unless_strict() {
        use serde_json::json;
        let c = compiler(ConstraintLimits::default());
        for format in ["regex", "uri-reference", "made-up"] {
            let schema = json!({"type": "object", "properties": {"f": {"type": "string", "format": format}}});
            let compiled = c.compile(&Constraint::json_schema("s", schema.clone())).unwrap();
            let ignored = &notes(&compiled).ignored_formats;
            assert_eq!(
                (ignored[0].format.as_str(), ignored[0].pointer.as_str()),
                (format, "/properties/f/format")
            );
            let strict = JsonSchemaOptions { strict_formats: true, ..Default::default() };
            let msg = schema_error(&c, schema, Some(strict));
            assert!(msg.contains(&format!("unknown format \"{format}\" at /properties/f/format")), "{msg}");
        }
        let known = json!({"type": "string", "format": "date-time"});
        let strict = JsonSchemaOptions { strict_formats: true, ..Default::default() };
        let compiled = c.compile(&Constraint::json_schema("s", known).with_json_options(strict)).unwrap();
        assert_eq!(notes(&compiled), &SchemaNotes::default());
    }

    #[test]
    fn json_options_are_part_of_the_cache_key_and_only_for_schemas() {
        use serde_json::json;
        let c = compiler(ConstraintLimits::default());
        let schema = json!({"type": "object"});
        c.compile(&Constraint::json_schema("s", schema.clone())).unwrap();
        let defaults =
            Constraint::json_schema("s", schema.clone()).with_json_options(JsonSchemaOptions::default());
        assert!(c.compile(&defaults).unwrap().cache_hit, "absent options are the defaults");
        let flexible = JsonSchemaOptions { whitespace_flexible: true, ..Default::default() };
        assert!(
            !c.compile(&Constraint::json_schema("s", schema.clone()).with_json_options(flexible))
                .unwrap()
                .cache_hit
        );
        let pattern = JsonSchemaOptions { whitespace_pattern: Some(" ?".into()), ..Default::default() };
        assert!(
            !c.compile(&Constraint::json_schema("s", schema).with_json_options(pattern)).unwrap().cache_hit
        );
        let err = c
            .compile(&Constraint::regex("r", "a").with_json_options(JsonSchemaOptions::default()))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        assert!(err.message().contains("json_options apply only to json_schema"), "{err}");
    }

    #[test]
    fn a_held_constraint_stays_compiled_after_eviction() {
        let c = compiler(ConstraintLimits::default());
        c.set_limit(1).unwrap();
        let held = Constraint::regex("held", "[0-9]+");
        let key = c.hold(&held).unwrap();
        for i in 0..5 {
            c.compile(&Constraint::regex("other", format!("x{i}"))).unwrap();
        }
        let before = c.stats();
        assert!(before.evictions >= 5, "{before:?}");
        let again = c.compile(&held).unwrap();
        assert!(again.cache_hit);
        assert_eq!(c.stats().misses, before.misses, "no recompilation");
        // Released, it goes the way of any evicted entry.
        c.release(key);
        for i in 0..2 {
            c.compile(&Constraint::regex("other", format!("y{i}"))).unwrap();
        }
        let before = c.stats().misses;
        assert!(!c.compile(&held).unwrap().cache_hit);
        assert_eq!(c.stats().misses, before + 1);
    }
}
