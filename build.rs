//! Renders the C header into OUT_DIR/maze.h: cbindgen reads src/ffi, plus the C enums of the
//! src/tables/ tables (cbindgen cannot see through their macro, so this script renders them),
//! and the items are then put in the header's sections. `make header` copies the result to
//! include/maze.h; tests/header.rs and `make header-check` fail while the two differ.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let enums = out_dir.join("c_enums.rs");
    std::fs::write(&enums, render_c_enums(&tables())).expect("write OUT_DIR/c_enums.rs");
    let items = cbindgen_items(&crate_dir, &enums);
    std::fs::write(out_dir.join("maze.h"), header(&items)).expect("write OUT_DIR/maze.h");
}

// ---- The enum tables (src/tables/*.rs, read as data) -------------------------------------------

struct CEnum {
    name: &'static str,
    docs: Vec<&'static str>,
    rows: Vec<Row>,
}

struct Row {
    name: &'static str,
    value: i64,
    docs: Vec<&'static str>,
}

/// Reads a table as data; the pattern is the one of `rust_side!` in src/c_enum.rs.
macro_rules! c_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $rust:ident;
        $(#[doc = $c_doc:literal])*
        c enum $c:ident $({
            $( $(#[doc = $only_doc:literal])* $only:ident = $only_value:literal => $only_name:literal, )*
        })?;
        $( $(#[doc = $row_doc:literal])* $row:ident = $value:literal => $name:literal, )*
    ) => {
        CEnum {
            name: stringify!($c),
            docs: vec![$($c_doc),*],
            rows: vec![
                $($(Row { name: $only_name, value: $only_value, docs: vec![$($only_doc),*] },)*)?
                $(Row { name: $name, value: $value, docs: vec![$($row_doc),*] },)*
            ],
        }
    };
}

fn tables() -> Vec<CEnum> {
    vec![
        include!("src/tables/status.rs"),
        include!("src/tables/finish_reason.rs"),
        include!("src/tables/constraint_kind.rs"),
        include!("src/tables/json_flag.rs"),
        include!("src/tables/protocol.rs"),
        include!("src/tables/tool_format.rs"),
        include!("src/tables/tool_choice.rs"),
    ]
}

/// The C enums as Rust source for cbindgen, in value order, each variant named by its table name
/// (cbindgen prefixes and capitalises it: `busy` of maze_status is MAZE_STATUS_BUSY).
fn render_c_enums(tables: &[CEnum]) -> String {
    let mut out = String::new();
    for table in tables {
        table.docs.iter().for_each(|d| writeln!(out, "///{d}").unwrap());
        writeln!(out, "#[repr(C)]\npub enum {} {{", table.name).unwrap();
        let mut rows: Vec<&Row> = table.rows.iter().collect();
        rows.sort_by_key(|r| r.value);
        for row in rows {
            row.docs.iter().for_each(|d| writeln!(out, "    ///{d}").unwrap());
            writeln!(out, "    {} = {},", row.name, row.value).unwrap();
        }
        out.push_str("}\n\n");
    }
    out
}

// ---- cbindgen -----------------------------------------------------------------------------------

/// The header's declarations as cbindgen writes them, one item (with its comment) per entry.
fn cbindgen_items(crate_dir: &Path, c_enums: &Path) -> Vec<String> {
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml must parse");
    let bindings =
        match cbindgen::Builder::new().with_crate(crate_dir).with_src(c_enums).with_config(config).generate()
        {
            Ok(b) => b,
            Err(e) => panic!("cbindgen could not generate maze.h: {e}"),
        };
    let mut text = Vec::new();
    bindings.write(&mut text);
    let text = String::from_utf8(text).expect("cbindgen writes UTF-8");
    text.split("\n\n").map(str::trim).filter(|item| !item.is_empty()).map(str::to_string).collect()
}

// ---- Sections -----------------------------------------------------------------------------------

/// The header's sections, in order, with the names of what goes in each. A name ending in `*` is
/// a prefix; an exact name wins over a prefix, and a longer prefix over a shorter one. Handles
/// (opaque types) all go in the first section, so every section may use any of them.
const SECTIONS: &[(&str, &[&str])] = &[
    ("Handles (opaque; see the ownership and threads line at the top)", &[]),
    (
        "Version, status codes and errors",
        &["MAZE_ABI_VERSION", "maze_version", "maze_abi_version", "maze_status*", "maze_error*"],
    ),
    (
        "Engine: load a model (or connect to a server) and read its metadata",
        &["MAZE_SEED_RANDOM", "maze_progress_callback", "maze_engine*"],
    ),
    (
        "Text: tokenize, detokenize, score, chat template",
        &[
            "maze_string",
            "maze_str",
            "maze_chat_message",
            "maze_msg",
            "maze_tool_call",
            "maze_tokenize",
            "maze_detokenize",
            "maze_score",
            "maze_chat_apply_template",
        ],
    ),
    (
        "Tools: declarations, chat history with calls, the reply's calls",
        &[
            "maze_tool",
            "maze_tool_call_delta",
            "maze_tool_call_callback",
            "maze_tool_choice",
            "maze_tool_format",
            "maze_result_tool_call*",
        ],
    ),
    (
        "Sessions: generate and stream",
        &["maze_generate_params*", "maze_stream_callback", "maze_session*", "maze_cancel_token*"],
    ),
    (
        "Constraints: JSON schema, Lark grammar, regex, choice, token mask",
        &[
            "maze_constraint*",
            "maze_json_flag",
            "maze_engine_constraint_cache*",
            "maze_engine_constraint_setup_time_us",
        ],
    ),
    (
        "Results: text, tokens, finish reason, statistics, validation",
        &["maze_result*", "maze_finish_reason*"],
    ),
    (
        "Remote engines: an inference server instead of a local model",
        &["maze_protocol", "maze_engine_health", "maze_engine_list_models"],
    ),
];

/// The inline helper of the Text section (cbindgen writes only what Rust exports).
const MAZE_STR: &str = "\
// A maze_string viewing a NUL-terminated C string (NULL gives an empty string).
static inline maze_string maze_str(const char *s) {
    maze_string r;
    r.data = s;
    r.len = s ? strlen(s) : 0;
    return r;
}";

/// The inline message helper of the Text section.
const MAZE_MSG: &str = "\
// A chat message with a role and content (NUL-terminated C strings), no tool calls.
static inline maze_chat_message maze_msg(const char *role, const char *content) {
    maze_chat_message m;
    memset(&m, 0, sizeof m);
    m.struct_size = (uint32_t)sizeof m;
    m.role = maze_str(role);
    m.content = maze_str(content);
    return m;
}";

/// The first line of an item's declaration (after its comment and cbindgen.toml's must_use line).
fn declaration(item: &str) -> &str {
    item.lines().find(|l| !l.starts_with("//") && *l != "MAZE_NODISCARD").unwrap_or("")
}

fn leading_ident(s: &str) -> &str {
    &s[..s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len())]
}

/// The name an item declares: the macro, type or function.
fn item_name(item: &str) -> &str {
    let decl = declaration(item);
    if let Some(rest) = decl.strip_prefix("#define ") {
        return leading_ident(rest);
    }
    if let Some(p) = decl.find("(*") {
        return leading_ident(&decl[p + 2..]); // a function pointer type
    }
    let before_parameters = decl.split('(').next().unwrap_or(decl);
    before_parameters.trim_end_matches([';', '{', ' ']).rsplit([' ', '*']).next().unwrap_or("")
}

fn is_handle(item: &str) -> bool {
    let decl = declaration(item);
    decl.starts_with("typedef struct ") && decl.ends_with(';') && !decl.contains('{')
}

/// The section an item belongs to; panics naming an item no section claims.
fn section_of(item: &str) -> usize {
    if is_handle(item) {
        return 0;
    }
    let name = item_name(item);
    let claims = |pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix).then_some(prefix.len()),
        None => (name == pattern).then_some(usize::MAX),
    };
    SECTIONS
        .iter()
        .enumerate()
        .filter_map(|(i, (_, patterns))| patterns.iter().filter_map(|p| claims(p)).max().map(|len| (len, i)))
        .max()
        .map(|(_, i)| i)
        .unwrap_or_else(|| panic!("build.rs: no header section claims `{name}`: add it to SECTIONS"))
}

fn banner(title: &str) -> String {
    format!("// ==== {title} {}", "=".repeat(100usize.saturating_sub(title.len() + 9)))
}

fn header(items: &[String]) -> String {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new(); SECTIONS.len()];
    for item in items {
        sections[section_of(item)].push(item);
    }
    sections[section_of(MAZE_STR)].push(MAZE_STR);
    sections[section_of(MAZE_MSG)].push(MAZE_MSG);
    let body: Vec<String> = SECTIONS
        .iter()
        .zip(&sections)
        .map(|((title, _), items)| format!("{}\n\n{}", banner(title), items.join("\n\n")))
        .collect();
    format!("{PREAMBLE}\n{}\n{POSTAMBLE}", body.join("\n\n\n"))
}

const PREAMBLE: &str = r#"// maze.h: the C API of Maze, an embeddable LLM inference engine. Generated from src/ffi by
// `make header` (cbindgen, build.rs); do not edit.

// Ownership and threads: free each handle you receive once (NULL is a no-op), and no sooner than
// the last call on it returns; any function may be called from any thread.

// - A fallible function returns maze_status (MAZE_STATUS_OK = 0) and takes a trailing
//   `maze_error **error` (may be NULL) that receives an error object on failure (free it with
//   maze_error_free). Outputs are written only on success (except the needed size on
//   MAZE_STATUS_BUFFER_TOO_SMALL).
// - Text is UTF-8, passed as (pointer, length) or maze_string; invalid UTF-8 is reported as
//   MAZE_STATUS_INVALID_UTF8.
// - Parameter structs start with struct_size: initialise them with their *_default() function.
// - No Rust panic escapes: a caught panic becomes MAZE_STATUS_PANIC.
#ifndef MAZE_H
#define MAZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// Marks the functions whose status must be checked.
#if (defined(__cplusplus) && __cplusplus >= 201703L) || \
    (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 202311L)
#define MAZE_NODISCARD [[nodiscard]]
#elif defined(__GNUC__) || defined(__clang__)
#define MAZE_NODISCARD __attribute__((warn_unused_result))
#else
#define MAZE_NODISCARD
#endif

#ifdef __cplusplus
extern "C" {
#endif
"#;

const POSTAMBLE: &str = r#"
#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // MAZE_H
"#;
