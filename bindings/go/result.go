package maze

/*
#include "maze.h"
*/
import "C"

import (
	"encoding/json"
	"time"
	"unsafe"
)

// FinishReason says why generation ended (maze_finish_reason).
type FinishReason int32

// The finish reasons of maze.h.
const (
	FinishStop         FinishReason = C.MAZE_FINISH_REASON_STOP
	FinishLength       FinishReason = C.MAZE_FINISH_REASON_LENGTH
	FinishStopSequence FinishReason = C.MAZE_FINISH_REASON_STOP_SEQUENCE
	FinishCancelled    FinishReason = C.MAZE_FINISH_REASON_CANCELLED
	FinishTimeout      FinishReason = C.MAZE_FINISH_REASON_TIMEOUT
	FinishError        FinishReason = C.MAZE_FINISH_REASON_ERROR
	// FinishToolCalls: the reply ended with its tool calls (Result.ToolCalls).
	FinishToolCalls FinishReason = C.MAZE_FINISH_REASON_TOOL_CALLS
)

// String is the library's name: "stop", "length", "stop_sequence", "cancelled", "timeout",
// "error", "tool_calls".
func (f FinishReason) String() string { return C.GoString(C.maze_finish_reason_name(C.int32_t(f))) }

// Validation is how each constraint of a request fared.
type Validation struct {
	Satisfied   bool                `json:"satisfied"`
	Constraints []ConstraintOutcome `json:"constraints"`
	Stats       *ConstraintStats    `json:"stats"`
}

// ConstraintOutcome is one constraint's fate: Outcome is "satisfied", "violated", "relaxed" or
// "partially_enforced" (a lenient JSON schema: RelaxedKeywords were not enforced).
type ConstraintOutcome struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Priority int32  `json:"priority"`
	Outcome  string `json:"outcome"`
	Reason   string `json:"reason,omitempty"`
	// RelaxedKeywords are the JSON-schema keywords that were not enforced.
	RelaxedKeywords []RelaxedKeyword `json:"relaxed_keywords,omitempty"`
	// IgnoredFormats are format values Maze does not enforce, ignored as annotations.
	IgnoredFormats []IgnoredFormat `json:"ignored_formats,omitempty"`
}

// RelaxedKeyword is a JSON-schema keyword left out or approximated, at a JSON pointer.
type RelaxedKeyword struct {
	Keyword string `json:"keyword"`
	Pointer string `json:"pointer"`
	Note    string `json:"note"`
}

// IgnoredFormat is a format value that was not enforced, at a JSON pointer.
type IgnoredFormat struct {
	Format  string `json:"format"`
	Pointer string `json:"pointer"`
}

// ConstraintStats measure the constraint work of a request.
type ConstraintStats struct {
	CompileTimeMicros  float64 `json:"compile_time_us"`
	SetupTimeMicros    float64 `json:"setup_time_us"`
	MeanMaskTimeMicros float64 `json:"mean_mask_time_us"`
	MasksComputed      uint64  `json:"masks_computed"`
	ForcedTokens       uint64  `json:"forced_tokens"`
}

// Result is a finished generation, copied out of the library (it holds no C memory).
type Result struct {
	Text string
	// ToolCalls are the calls the reply made (a request with Tools); with calls, FinishReason
	// is FinishToolCalls when the model ended them, or the reason they were cut short.
	ToolCalls    []ToolCall
	Tokens       []uint32
	Logprobs     []float32 // one per token when GenerateParams.Logprobs was set
	FinishReason FinishReason
	// Err is the library's error when generation failed midway (FinishError).
	Err error

	PromptTokens    int // tokens in the prompt, reused or computed
	CachedTokens    int // prompt tokens not recomputed (this session's cache or another session's same prefix)
	GeneratedTokens int

	TimeToFirstToken       time.Duration
	TotalTime              time.Duration
	TokensPerSecond        float64 // decode speed after the first token
	PrefillTokensPerSecond float64

	// ConstraintsSatisfied: every constraint was enforced on every token and the output is
	// complete under it (true without constraints).
	ConstraintsSatisfied bool
	Validation           Validation
	ValidationJSON       string
	// ProvenanceJSON records model, constraints, sampling parameters and the seed used.
	ProvenanceJSON        string
	ConstraintCompileTime time.Duration
	// ConstraintSetupTime is the part of ConstraintCompileTime spent on the engine's one-time
	// constraint setup (only the engine's first constrained request pays it, unless
	// Options.PrepareConstraints built it at load).
	ConstraintSetupTime time.Duration
	MeanMaskTime        time.Duration
	ForcedTokens        int
}

func micros(us C.double) time.Duration { return time.Duration(float64(us) * float64(time.Microsecond)) }

// takeResult copies a C result into Go and frees it.
func takeResult(r *C.maze_result) *Result {
	defer C.maze_result_free(r)
	var n C.size_t
	text := C.maze_result_text(r, &n)
	res := &Result{
		Text:                   string(unsafe.Slice((*byte)(unsafe.Pointer(text)), int(n))),
		FinishReason:           FinishReason(C.maze_result_finish_reason(r)),
		PromptTokens:           int(C.maze_result_prompt_tokens(r)),
		CachedTokens:           int(C.maze_result_cached_tokens(r)),
		GeneratedTokens:        int(C.maze_result_generated_tokens(r)),
		TimeToFirstToken:       micros(C.maze_result_time_to_first_token_ms(r) * 1000),
		TotalTime:              micros(C.maze_result_total_time_ms(r) * 1000),
		TokensPerSecond:        float64(C.maze_result_tokens_per_second(r)),
		PrefillTokensPerSecond: float64(C.maze_result_prefill_tokens_per_second(r)),
		ConstraintsSatisfied:   bool(C.maze_result_constraints_satisfied(r)),
		ValidationJSON:         C.GoString(C.maze_result_validation_json(r)),
		ProvenanceJSON:         C.GoString(C.maze_result_provenance_json(r)),
		ConstraintCompileTime:  micros(C.maze_result_constraint_compile_time_us(r)),
		ConstraintSetupTime:    micros(C.maze_result_constraint_setup_time_us(r)),
		MeanMaskTime:           micros(C.maze_result_mean_mask_time_us(r)),
		ForcedTokens:           int(C.maze_result_forced_tokens(r)),
		ToolCalls:              resultToolCalls(r),
	}
	if p := C.maze_result_tokens(r, &n); p != nil {
		res.Tokens = make([]uint32, int(n))
		copy(res.Tokens, unsafe.Slice((*uint32)(unsafe.Pointer(p)), int(n)))
	}
	if p := C.maze_result_logprobs(r, &n); p != nil {
		res.Logprobs = make([]float32, int(n))
		copy(res.Logprobs, unsafe.Slice((*float32)(unsafe.Pointer(p)), int(n)))
	}
	if res.FinishReason == FinishError {
		e := &Error{Status: Status(C.maze_result_error_status(r))}
		if msg := C.maze_result_error_message(r); msg != nil {
			e.Message = C.GoString(msg)
		}
		res.Err = e
	}
	// The library writes this JSON itself; a failure to parse it would be a library bug, and
	// ValidationJSON still holds the text.
	_ = json.Unmarshal([]byte(res.ValidationJSON), &res.Validation)
	return res
}
