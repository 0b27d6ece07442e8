//! include/maze.h must be exactly what build.rs generates from src/ffi now (`make header`).
use std::ffi::CStr;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/maze.h"));

#[test]
fn committed_header_matches_the_generated_one() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/maze.h"))
        .expect("include/maze.h exists");
    assert!(committed == GENERATED, "include/maze.h is stale: run `make header` and commit it");
}

/// Only the C API belongs in the header: every macro and type carries the maze prefix (internal
/// Rust constants and repr(C) structs must not leak into it).
#[test]
fn header_exports_only_prefixed_names() {
    for line in GENERATED.lines() {
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

/// The header's enumerators `PREFIX<NAME> = value`.
fn enumerators(prefix: &str) -> Vec<(String, i32)> {
    GENERATED
        .lines()
        .filter_map(|l| l.trim().strip_suffix(',')?.split_once(" = "))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, value)| (name.to_string(), value.parse().expect("enumerator values are numbers")))
        .collect()
}

fn text(p: *const std::ffi::c_char) -> &'static str {
    unsafe { CStr::from_ptr(p) }.to_str().unwrap()
}

#[test]
fn the_library_names_every_status_as_the_header_does() {
    let statuses = enumerators("MAZE_STATUS_");
    assert_eq!(statuses.len(), maze::ffi::maze_status::ALL.len());
    for (name, value) in &statuses {
        assert_eq!(text(maze::ffi::maze_status_name(*value)), name);
    }
}

#[test]
fn the_library_names_every_finish_reason_as_the_header_does() {
    let reasons = enumerators("MAZE_FINISH_REASON_");
    assert_eq!(reasons.len(), maze::FinishReason::ALL.len());
    for (name, value) in &reasons {
        let lower = name.trim_start_matches("MAZE_FINISH_REASON_").to_ascii_lowercase();
        assert_eq!(text(maze::ffi::result::maze_finish_reason_name(*value)), lower);
    }
}
