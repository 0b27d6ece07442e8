//! Constraints: build them from a descriptor struct (what the Zig and Go wrappers fill) or from
//! JSON; both give the same handle. Compiled when created, so bad input fails here.

use std::ffi::c_char;

use super::engine::maze_engine;
use super::{
    arg_out, arg_ref, arg_slice, arg_str, ffi_boundary, maze_error, maze_status, maze_string, read_params,
    write_out, FfiError, FfiResult, Handle,
};
use crate::c_enum::c_side as c_enum;
use crate::constraint::{Constraint, ConstraintKind, ConstraintTag, JsonFlag, JsonSchemaOptions};

include!("../tables/constraint_kind.rs");
include!("../tables/json_flag.rs");

/// Describes one constraint. Initialise with maze_constraint_desc_default(). Only the fields of
/// its kind are read. Layout is part of the ABI (the Zig and Go wrappers check it).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_constraint_desc {
    /// sizeof(maze_constraint_desc), set by maze_constraint_desc_default().
    pub struct_size: u32,
    /// A maze_constraint_kind value.
    pub kind: u32,
    /// When constraints conflict, the lowest priority is relaxed first. Default 0.
    pub priority: i32,
    /// Reserved, keep 0.
    pub reserved: u32,
    /// Name reported in validation (may be empty).
    pub name: maze_string,
    /// JSON schema, Lark grammar or GBNF grammar text.
    pub text: maze_string,
    /// Regex patterns or choice strings.
    pub items: *const maze_string,
    pub n_items: usize,
    pub allowed_tokens: *const u32,
    pub n_allowed_tokens: usize,
    pub forbidden_tokens: *const u32,
    pub n_forbidden_tokens: usize,
    /// JSON schema only: maze_json_flag bits, OR-ed (0: compact JSON, keywords Maze cannot
    /// enforce refused naming their JSON pointer, unknown formats ignored as annotations and
    /// listed in the validation report). Non-zero on another kind fails. Added after
    /// n_forbidden_tokens: a caller whose struct_size ends before it gets the defaults.
    pub json_flags: u32,
    /// Reserved, keep 0.
    pub json_reserved: u32,
    /// JSON schema only: a regex for the whitespace allowed between tokens, replacing
    /// MAZE_JSON_FLAG_WHITESPACE_FLEXIBLE's; empty (the default) leaves it unset.
    pub json_whitespace_pattern: maze_string,
}

/// One or more compiled constraints. Immutable and thread-safe: one handle may be used by any
/// number of generations at once, and freed once none uses it... or any time: generations keep
/// what they need. While the handle lives its compiled form is kept (on a local engine): the
/// compile cache may evict it, generations using the handle never compile it again.
pub struct maze_constraint {
    pub(crate) constraints: Vec<Constraint>,
    /// Keeps the compiled forms while the handle lives: the compile cache may evict them,
    /// generations with this handle never recompile.
    _held: Vec<crate::engine::HeldConstraint>,
}

impl Handle for maze_constraint {}

/// A descriptor with everything empty (kind JSON schema, priority 0).
#[no_mangle]
pub extern "C" fn maze_constraint_desc_default() -> maze_constraint_desc {
    let empty = maze_string { data: std::ptr::null(), len: 0 };
    maze_constraint_desc {
        struct_size: std::mem::size_of::<maze_constraint_desc>() as u32,
        kind: maze_constraint_kind::JsonSchema as u32,
        priority: 0,
        reserved: 0,
        name: empty,
        text: empty,
        items: std::ptr::null(),
        n_items: 0,
        allowed_tokens: std::ptr::null(),
        n_allowed_tokens: 0,
        forbidden_tokens: std::ptr::null(),
        n_forbidden_tokens: 0,
        json_flags: 0,
        json_reserved: 0,
        json_whitespace_pattern: empty,
    }
}

/// The JSON-schema options the descriptor sets; None when it sets none (the defaults).
unsafe fn read_json_options(d: &maze_constraint_desc) -> FfiResult<Option<JsonSchemaOptions>> {
    let pattern = d.json_whitespace_pattern.to_str("desc.json_whitespace_pattern")?;
    if d.json_flags == 0 && pattern.is_empty() {
        return Ok(None);
    }
    let mut options = JsonSchemaOptions::default();
    let mut left = d.json_flags;
    for flag in maze_json_flag::ALL {
        if d.json_flags & *flag as u32 != 0 {
            *options.flag_mut(flag.to_core().expect("every maze_json_flag is an option")) = true;
            left &= !(*flag as u32);
        }
    }
    if left != 0 {
        return Err(FfiError::new(
            maze_status::InvalidArgument,
            format!("desc.json_flags has bits 0x{left:x} that are no maze_json_flag"),
        ));
    }
    options.whitespace_pattern = (!pattern.is_empty()).then(|| pattern.to_string());
    Ok(Some(options))
}

unsafe fn read_desc(d: &maze_constraint_desc) -> FfiResult<Constraint> {
    let name = d.name.to_str("desc.name")?.to_string();
    let items = || -> FfiResult<Vec<String>> {
        arg_slice(d.items, d.n_items, "desc.items")?
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(s.to_str(&format!("desc.items[{i}]"))?.to_string()))
            .collect()
    };
    let tag = maze_constraint_kind::from_raw(d.kind.into())
        .and_then(maze_constraint_kind::to_core)
        .ok_or_else(|| {
            FfiError::new(
                maze_status::InvalidArgument,
                format!("desc.kind {} is not a maze_constraint_kind", d.kind),
            )
        })?;
    let kind = match tag {
        ConstraintTag::JsonSchema => {
            let text = d.text.to_str("desc.text")?;
            let schema = serde_json::from_str(text).map_err(|e| {
                FfiError::new(
                    maze_status::InvalidConstraint,
                    format!("constraint '{name}': desc.text is not valid JSON: {e}"),
                )
            })?;
            ConstraintKind::JsonSchema(schema)
        }
        ConstraintTag::Lark => ConstraintKind::Lark(d.text.to_str("desc.text")?.to_string()),
        ConstraintTag::Gbnf => ConstraintKind::Gbnf(d.text.to_str("desc.text")?.to_string()),
        ConstraintTag::Regex => ConstraintKind::Regex(items()?),
        ConstraintTag::TokenMask => ConstraintKind::TokenMask {
            allowed: arg_slice(d.allowed_tokens, d.n_allowed_tokens, "desc.allowed_tokens")?.to_vec(),
            forbidden: arg_slice(d.forbidden_tokens, d.n_forbidden_tokens, "desc.forbidden_tokens")?.to_vec(),
        },
        ConstraintTag::Choice => ConstraintKind::Choice(items()?),
    };
    let json_options = read_json_options(d)?;
    if json_options.is_some() && tag != ConstraintTag::JsonSchema {
        return Err(FfiError::new(
            maze_status::InvalidConstraint,
            format!("constraint '{name}': json_flags and json_whitespace_pattern apply only to MAZE_CONSTRAINT_KIND_JSON_SCHEMA"),
        ));
    }
    Ok(Constraint { name, priority: d.priority, kind, json_options })
}

unsafe fn finish(
    engine: &maze_engine,
    constraints: Vec<Constraint>,
    out: *mut *mut maze_constraint,
) -> FfiResult<()> {
    let mut held = Vec::new();
    for c in &constraints {
        held.extend(engine.engine.hold_constraint(c)?);
    }
    maze_constraint { constraints, _held: held }.box_into(out, "out_constraint")
}

/// Builds and compiles a constraint from a descriptor. Fails with
/// MAZE_STATUS_INVALID_CONSTRAINT (bad schema, regex, grammar, token id; the message names the
/// part: a JSON-schema keyword or format Maze does not enforce by its JSON pointer, e.g.
/// `unsupported keyword "not" at /properties/a/not`), MAZE_STATUS_ABI_MISMATCH,
/// MAZE_STATUS_INVALID_ARGUMENT (an unknown kind or json_flags bit), MAZE_STATUS_INVALID_UTF8,
/// MAZE_STATUS_NULL_ARGUMENT.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_constraint_new(
    engine: *const maze_engine,
    desc: *const maze_constraint_desc,
    out_constraint: *mut *mut maze_constraint,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        arg_ref(desc, "desc")?;
        arg_out(out_constraint, "out_constraint")?;
        let d = read_params(desc, maze_constraint_desc_default(), "desc")?;
        finish(engine, vec![read_desc(&d)?], out_constraint)
    })
}

/// Builds and compiles constraints from JSON (`json_len` bytes): one object such as
/// `{"name": "answer", "priority": 1, "json_schema": {...}}`, `{"regex": ["[0-9]+"]}`,
/// `{"lark": "start: ..."}`, `{"token_mask": {"allowed": [..], "forbidden": [..]}}`,
/// `{"choice": ["yes", "no"]}`, `{"gbnf": "root ::= ..."}`, or an array of them (one handle
/// holding all). A JSON schema may carry `"json_options": {"lenient", "coerce_one_of",
/// "whitespace_flexible", "whitespace_pattern", "strict_formats"}` (the json_flags of the
/// descriptor; see docs/CONSTRAINTS.md).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_constraint_from_json(
    engine: *const maze_engine,
    json: *const c_char,
    json_len: usize,
    out_constraint: *mut *mut maze_constraint,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        let text = arg_str(json, json_len, "json")?;
        arg_out(out_constraint, "out_constraint")?;
        let constraints = Constraint::list_from_json(text)
            .map_err(|e| FfiError::new(maze_status::InvalidConstraint, e.message()))?;
        if constraints.is_empty() {
            return Err(FfiError::new(
                maze_status::InvalidConstraint,
                "the JSON holds no constraint (empty array)",
            ));
        }
        finish(engine, constraints, out_constraint)
    })
}

/// Number of constraints in a handle (a JSON array gives several); 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_constraint_count(constraint: *const maze_constraint) -> usize {
    ffi_boundary!({ maze_constraint::from_nullable(constraint).map(|c| c.constraints.len()).unwrap_or(0) })
}

/// Frees a constraint handle. NULL is a no-op. Generations already started are unaffected.
#[no_mangle]
pub unsafe extern "C" fn maze_constraint_free(constraint: *mut maze_constraint) {
    ffi_boundary!({ maze_constraint::free(constraint) })
}

/// Constraint compile-cache counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct maze_constraint_cache_stats {
    pub size: u64,
    pub limit: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Reads the engine's constraint compile-cache counters into `*out`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_constraint_cache_stats(
    engine: *const maze_engine,
    out: *mut maze_constraint_cache_stats,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let s = maze_engine::from_ptr(engine, "engine")?.engine.constraint_cache_stats()?;
        let stats = maze_constraint_cache_stats {
            size: s.size as u64,
            limit: s.limit as u64,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        };
        write_out(out, stats, "out")
    })
}

/// How long the engine's one-time constraint setup (token trie and parser factory) took, in
/// microseconds; 0 while it has not been built (it is built by the first constrained request,
/// or at load with maze_engine_params.prepare_constraints), for a remote engine and for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_constraint_setup_time_us(engine: *const maze_engine) -> f64 {
    ffi_boundary!({
        maze_engine::from_nullable(engine)
            .and_then(|e| e.engine.constraint_setup_time())
            .map_or(0.0, |t| t.as_secs_f64() * 1e6)
    })
}

/// Empties the constraint compile cache (counters keep counting).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_constraint_cache_clear(
    engine: *const maze_engine,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, { Ok(maze_engine::from_ptr(engine, "engine")?.engine.clear_constraint_cache()?) })
}

/// Sets how many compiled constraints the cache keeps (>= 1); least recently used go first.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_constraint_cache_set_limit(
    engine: *const maze_engine,
    limit: u64,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        Ok(maze_engine::from_ptr(engine, "engine")?.engine.set_constraint_cache_limit(limit as usize)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_desc(schema: &'static str) -> maze_constraint_desc {
        let mut d = maze_constraint_desc_default();
        d.text = maze_string { data: schema.as_ptr() as *const c_char, len: schema.len() };
        d
    }

    #[test]
    fn json_flags_and_pattern_become_json_options() {
        let mut d = schema_desc("{}");
        assert_eq!(unsafe { read_desc(&d) }.unwrap().json_options, None, "the defaults");
        d.json_flags = maze_json_flag::Lenient as u32 | maze_json_flag::StrictFormats as u32;
        let pattern = " +";
        d.json_whitespace_pattern =
            maze_string { data: pattern.as_ptr() as *const c_char, len: pattern.len() };
        let options = unsafe { read_desc(&d) }.unwrap().json_options.unwrap();
        let expected = JsonSchemaOptions {
            lenient: true,
            strict_formats: true,
            whitespace_pattern: Some(" +".into()),
            ..Default::default()
        };
        assert_eq!(options, expected);
        for flag in maze_json_flag::ALL {
            d.json_flags = *flag as u32;
            let mut o = JsonSchemaOptions { whitespace_pattern: Some(" +".into()), ..Default::default() };
            *o.flag_mut(flag.to_core().unwrap()) = true;
            assert_eq!(unsafe { read_desc(&d) }.unwrap().json_options, Some(o), "{flag:?}");
        }
        d.json_flags = 0x100;
        let e = unsafe { read_desc(&d) }.unwrap_err();
        assert_eq!(e.status, maze_status::InvalidArgument);
        assert!(e.message.contains("0x100"), "{}", e.message);
    }

    #[test]
    fn json_options_on_another_kind_are_refused() {
        let mut d = schema_desc("");
        d.kind = maze_constraint_kind::Lark as u32;
        d.json_flags = maze_json_flag::Lenient as u32;
        let e = unsafe { read_desc(&d) }.unwrap_err();
        assert_eq!(e.status, maze_status::InvalidConstraint);
        assert!(e.message.contains("only to MAZE_CONSTRAINT_KIND_JSON_SCHEMA"), "{}", e.message);
    }

    /// A caller built before json_flags existed passes a shorter struct: the new fields keep
    /// their defaults, whatever lies in memory past its end.
    #[test]
    fn an_old_caller_without_the_json_fields_gets_the_defaults() {
        let mut d = schema_desc("{}");
        d.json_flags = maze_json_flag::Lenient as u32;
        d.struct_size = std::mem::offset_of!(maze_constraint_desc, json_flags) as u32;
        let read = unsafe { read_params(&d, maze_constraint_desc_default(), "desc") }.unwrap();
        assert_eq!(read.json_flags, 0);
        assert_eq!(unsafe { read_desc(&read) }.unwrap().json_options, None);
    }
}
