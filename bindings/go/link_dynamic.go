//go:build maze_dynamic && !maze_pkgconfig

package maze

// `-tags maze_dynamic`: link target/release/libmaze.so of this repository, found at run time
// through an rpath to that folder.

/*
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -lmaze -Wl,-rpath,${SRCDIR}/../../target/release
*/
import "C"
