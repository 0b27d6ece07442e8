package maze

// The functions C calls back into. A file with //export may only declare C functions in its
// preamble, so the C trampolines that call these live in bridge.go.

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// callback is the Go state behind one call's `void *userdata`: a runtime/cgo.Handle to it
// travels through C, so any number of calls can stream at once with no global slot.
type callback struct {
	onText     func(string) bool
	onProgress func(float32) bool
	onToolCall func(ToolCallDelta) bool
	panicked   bool
	panicValue any
}

// rethrow re-raises, on the caller's goroutine, a panic of the user's function: it was caught
// in the callback because a Go panic must not unwind through the library's C frames.
func (cb *callback) rethrow() {
	if cb.panicked {
		panic(cb.panicValue)
	}
}

// guarded runs f; a panic stops the call (false) and is kept for rethrow.
func (cb *callback) guarded(f func() bool) (keepGoing bool) {
	if cb.panicked {
		return false
	}
	defer func() {
		if r := recover(); r != nil {
			cb.panicked, cb.panicValue, keepGoing = true, r, false
		}
	}()
	return f()
}

//export mazeGoStream
func mazeGoStream(text *C.char, n C.size_t, handle C.uintptr_t) C.bool {
	cb := cgo.Handle(handle).Value().(*callback)
	piece := string(unsafe.Slice((*byte)(unsafe.Pointer(text)), int(n)))
	return C.bool(cb.guarded(func() bool { return cb.onText(piece) }))
}

//export mazeGoProgress
func mazeGoProgress(progress C.float, handle C.uintptr_t) C.bool {
	cb := cgo.Handle(handle).Value().(*callback)
	return C.bool(cb.guarded(func() bool { return cb.onProgress(float32(progress)) }))
}

//export mazeGoToolCall
func mazeGoToolCall(delta unsafe.Pointer, handle C.uintptr_t) C.bool {
	cb := cgo.Handle(handle).Value().(*callback)
	d := toolCallDelta(delta)
	return C.bool(cb.guarded(func() bool { return cb.onToolCall(d) }))
}
