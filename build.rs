//! Generates include/maze.h from src/ffi with cbindgen. The header is committed; `make test`
//! fails when the committed copy differs from what this produces.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml must parse");
    let bindings = match cbindgen::Builder::new().with_crate(&crate_dir).with_config(config).generate() {
        Ok(b) => b,
        Err(e) => panic!("cbindgen could not generate maze.h: {e}"),
    };
    let mut header = Vec::new();
    bindings.write(&mut header);
    std::fs::write(out_dir.join("maze.h"), &header).expect("write OUT_DIR/maze.h");
    // Only a checkout gets its include/ updated; a copy under cargo's registry or git cache is
    // read-only by convention.
    let in_cargo_home = std::env::var_os("CARGO_HOME").map(|h| crate_dir.starts_with(h)).unwrap_or(false)
        || crate_dir.components().any(|c| c.as_os_str() == ".cargo");
    if !in_cargo_home {
        let target = crate_dir.join("include").join("maze.h");
        if std::fs::read(&target).ok().as_deref() != Some(header.as_slice()) {
            std::fs::create_dir_all(crate_dir.join("include")).expect("create include/");
            std::fs::write(&target, &header).expect("write include/maze.h");
        }
    }
}
