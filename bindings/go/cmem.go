package maze

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#include <stdlib.h>
#include "maze.h"
*/
import "C"

import "unsafe"

// cMemory holds the C copies of the strings and arrays one call passes inside structs. cgo
// forbids Go pointers inside memory handed to C, so these live in C memory and are all freed
// together when the call returns: nothing leaks, nothing outlives the call.
type cMemory struct {
	blocks []unsafe.Pointer
}

func (m *cMemory) alloc(size uintptr) unsafe.Pointer {
	if size == 0 {
		size = 1
	}
	p := C.calloc(1, C.size_t(size))
	if p == nil {
		panic("maze: out of C memory")
	}
	m.blocks = append(m.blocks, p)
	return p
}

func (m *cMemory) free() {
	for _, p := range m.blocks {
		C.free(p)
	}
	m.blocks = nil
}

// str copies s into C memory as a maze_string (NUL bytes inside s are kept: the length counts).
func (m *cMemory) str(s string) C.maze_string {
	if len(s) == 0 {
		return C.maze_string{}
	}
	p := m.alloc(uintptr(len(s)))
	copy(unsafe.Slice((*byte)(p), len(s)), s)
	return C.maze_string{data: (*C.char)(p), len: C.size_t(len(s))}
}

// strs copies a list of strings into a C array of maze_string.
func (m *cMemory) strs(list []string) (*C.maze_string, C.size_t) {
	if len(list) == 0 {
		return nil, 0
	}
	arr := unsafe.Slice((*C.maze_string)(m.alloc(unsafe.Sizeof(C.maze_string{})*uintptr(len(list)))), len(list))
	for i, s := range list {
		arr[i] = m.str(s)
	}
	return &arr[0], C.size_t(len(list))
}

// tokens copies token ids into a C array.
func (m *cMemory) tokens(ids []uint32) (*C.uint32_t, C.size_t) {
	if len(ids) == 0 {
		return nil, 0
	}
	arr := unsafe.Slice((*C.uint32_t)(m.alloc(4*uintptr(len(ids)))), len(ids))
	for i, id := range ids {
		arr[i] = C.uint32_t(id)
	}
	return &arr[0], C.size_t(len(ids))
}

// cstring copies s into C memory with a terminating NUL; it refuses s with a NUL inside, which
// C would silently cut.
func (m *cMemory) cstring(what, s string) (*C.char, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return nil, invalidArgument("%s contains a NUL byte at offset %d", what, i)
		}
	}
	p := m.alloc(uintptr(len(s)) + 1)
	copy(unsafe.Slice((*byte)(p), len(s)), s)
	return (*C.char)(p), nil
}

// goBytes views Go-owned bytes for the duration of one C call: cgo allows passing a pointer to
// Go memory that holds no Go pointers, as long as C keeps no copy after the call.
func goBytes(s string) (*C.char, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s))), C.size_t(len(s))
}
