//! Constraints: what generated text must obey (JSON schema, Lark grammar, regexes, token masks,
//! choices), compiled with llguidance and enforced token by token.

mod compile;
mod enforce;
pub(crate) mod gbnf;
mod ir;
mod limits;
pub(crate) mod schema;

pub use compile::{CacheStats, CompiledConstraint, Compiler, COMPILE_STACK_BYTES, DEFAULT_CACHE_LIMIT};
pub use enforce::{apply_mask, ConstraintOutcome, ConstraintReport, ConstraintStats, Enforcer, Mask};
pub use ir::{Constraint, ConstraintKind, ConstraintTag, JsonFlag, JsonSchemaOptions};
pub use limits::{ConstraintLimits, DEFAULT_COMPILE_TIMEOUT, DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE_BYTES};
pub use schema::{IgnoredFormat, RelaxedKeyword, SchemaNotes, KNOWN_FORMATS, UNSUPPORTED_KEYWORDS};
