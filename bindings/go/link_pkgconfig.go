//go:build maze_pkgconfig

package maze

// `-tags maze_pkgconfig`: flags from the pkg-config file `maze.pc` of an installed Maze (see the
// README: `make pkgconfig` writes one for this checkout). Use this when the module is used from
// outside this repository.

/*
#cgo pkg-config: maze
*/
import "C"
