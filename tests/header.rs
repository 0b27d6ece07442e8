//! include/maze.h must be exactly what cbindgen generates from src/ffi now.
#[test]
fn committed_header_matches_the_generated_one() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/maze.h"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/maze.h")).expect("include/maze.h exists");
    assert!(committed == generated, "include/maze.h is stale: rebuild (cargo build) and commit it");
}
