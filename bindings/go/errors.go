package maze

/*
#include "maze.h"
*/
import "C"

import (
	"errors"
	"fmt"
)

// Status is the library's status code (maze_status).
type Status int32

// The status codes of maze.h.
const (
	StatusOK                Status = C.MAZE_STATUS_OK
	StatusNullArgument      Status = C.MAZE_STATUS_NULL_ARGUMENT
	StatusInvalidArgument   Status = C.MAZE_STATUS_INVALID_ARGUMENT
	StatusInvalidUTF8       Status = C.MAZE_STATUS_INVALID_UTF8
	StatusIO                Status = C.MAZE_STATUS_IO
	StatusModelFormat       Status = C.MAZE_STATUS_MODEL_FORMAT
	StatusUnsupported       Status = C.MAZE_STATUS_UNSUPPORTED
	StatusTokenizer         Status = C.MAZE_STATUS_TOKENIZER
	StatusTemplate          Status = C.MAZE_STATUS_TEMPLATE
	StatusContextOverflow   Status = C.MAZE_STATUS_CONTEXT_OVERFLOW
	StatusBusy              Status = C.MAZE_STATUS_BUSY
	StatusCancelled         Status = C.MAZE_STATUS_CANCELLED
	StatusBufferTooSmall    Status = C.MAZE_STATUS_BUFFER_TOO_SMALL
	StatusBackend           Status = C.MAZE_STATUS_BACKEND
	StatusABIMismatch       Status = C.MAZE_STATUS_ABI_MISMATCH
	StatusInternal          Status = C.MAZE_STATUS_INTERNAL
	StatusPanic             Status = C.MAZE_STATUS_PANIC
	StatusInvalidConstraint Status = C.MAZE_STATUS_INVALID_CONSTRAINT
)

// String is the code's name in maze.h, e.g. "MAZE_STATUS_BUSY".
func (s Status) String() string { return C.GoString(C.maze_status_name(C.int32_t(s))) }

// Error is a failure reported by the library (or found by this package before calling it): a
// status and a message that names the problem.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "maze: " + e.Status.String()
	}
	return fmt.Sprintf("maze: %s (%s)", e.Message, e.Status)
}

// Is makes errors.Is(err, ErrBusy) true for every *Error with status Busy, whatever its message.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Message == "" && t.Status == e.Status
}

// Sentinels, one per status: errors.Is(err, ErrX) tells an error's status.
var (
	ErrNullArgument      = &Error{Status: StatusNullArgument}
	ErrInvalidArgument   = &Error{Status: StatusInvalidArgument}
	ErrInvalidUTF8       = &Error{Status: StatusInvalidUTF8}
	ErrIO                = &Error{Status: StatusIO}
	ErrModelFormat       = &Error{Status: StatusModelFormat}
	ErrUnsupported       = &Error{Status: StatusUnsupported}
	ErrTokenizer         = &Error{Status: StatusTokenizer}
	ErrTemplate          = &Error{Status: StatusTemplate}
	ErrContextOverflow   = &Error{Status: StatusContextOverflow}
	ErrBusy              = &Error{Status: StatusBusy}
	ErrCancelled         = &Error{Status: StatusCancelled}
	ErrBufferTooSmall    = &Error{Status: StatusBufferTooSmall}
	ErrBackend           = &Error{Status: StatusBackend}
	ErrABIMismatch       = &Error{Status: StatusABIMismatch}
	ErrInternal          = &Error{Status: StatusInternal}
	ErrPanic             = &Error{Status: StatusPanic}
	ErrInvalidConstraint = &Error{Status: StatusInvalidConstraint}
)

// ErrClosed is returned by calls on a handle after its Close.
var ErrClosed = errors.New("maze: use of a closed handle")

// ErrIncomplete is returned by GenerateJSON when generation ended (length limit, stop
// sequence, cancel, relaxed constraint) before the output was a complete value of the schema.
var ErrIncomplete = errors.New("maze: output incomplete")

// takeError turns a status and the error object of a failed call into a Go error and frees the
// object. The object, not a thread-local, carries the message: a goroutine may have moved to
// another OS thread since the call.
func takeError(status C.enum_maze_status, cerr *C.maze_error) error {
	if status == C.MAZE_STATUS_OK {
		C.maze_error_free(cerr)
		return nil
	}
	e := &Error{Status: Status(status)}
	if cerr != nil {
		e.Message = C.GoString(C.maze_error_message(cerr))
		C.maze_error_free(cerr)
	}
	return e
}

func invalidArgument(format string, args ...any) error {
	return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf(format, args...)}
}
