//go:build maze_dynamic || maze_pkgconfig

package maze

const linkedDynamically = true
