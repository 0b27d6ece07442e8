//! include/maze.h must be exactly what cbindgen generates from src/ffi now.
#[test]
fn committed_header_matches_the_generated_one() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/maze.h"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/maze.h"))
        .expect("include/maze.h exists");
    assert!(committed == generated, "include/maze.h is stale: rebuild (cargo build) and commit it");
}

/// Only the C API belongs in the header: every macro and type carries the maze prefix (internal
/// Rust constants and repr(C) structs must not leak into it).
#[test]
fn header_exports_only_prefixed_names() {
    let header = include_str!(concat!(env!("OUT_DIR"), "/maze.h"));
    for line in header.lines() {
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            assert!(name.starts_with("MAZE_"), "unprefixed macro in maze.h: {line}");
        }
        if let Some(rest) =
            line.strip_prefix("typedef struct ").or_else(|| line.strip_prefix("typedef enum "))
        {
            assert!(rest.starts_with("maze_"), "unprefixed type in maze.h: {line}");
        }
    }
}
