//! Writes a tiny random-weight Llama GGUF (with tokenizer and chat template) for fast tests,
//! e.g. the C suite under valgrind.  Usage: make-tiny-model OUT.gguf
fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: make-tiny-model OUT.gguf");
        std::process::exit(2);
    };
    if let Err(e) = maze::testing::TinyModel::default().write(std::path::Path::new(&out)) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
}
