//go:build !maze_dynamic && !maze_pkgconfig

package maze

// Default: the static library built by `cargo build --release --lib` in this repository, so a
// Go binary needs no libmaze.so at run time. The system libraries are those that
// `cargo rustc --release --lib --crate-type staticlib -- --print native-static-libs` prints.

/*
#cgo LDFLAGS: ${SRCDIR}/../../target/release/libmaze.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
*/
import "C"
