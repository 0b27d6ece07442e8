package maze

/*
#include "maze.h"
*/
import "C"

import (
	"context"
	"fmt"
	"iter"
	"math"
	"runtime"
	"runtime/cgo"
	"sync"
	"time"
	"unsafe"
)

// SeedRandom as GenerateParams.Seed draws a fresh seed from the engine's seed sequence.
const SeedRandom uint64 = math.MaxUint64

// GenerateParams are the sampling settings of one request. Start from DefaultGenerateParams:
// its zero value is not a useful configuration (TopP 0 is refused).
type GenerateParams struct {
	// MaxTokens is the most tokens to generate; 0 = until the context is full.
	MaxTokens int
	// Temperature 0 is greedy decoding.
	Temperature float32
	// TopK keeps the k most likely tokens; 0 = off.
	TopK int
	// TopP is the nucleus mass in (0, 1]; 1 = off.
	TopP float32
	// MinP drops tokens below MinP × the top probability, in [0, 1]; 0 = off.
	MinP float32
	// RepetitionPenalty (> 0); 1 = off.
	RepetitionPenalty float32
	// PenaltyLastN is how many recent tokens (prompt included) the penalties look at; 0 = all.
	PenaltyLastN int
	// FrequencyPenalty is subtracted per earlier occurrence of a token.
	FrequencyPenalty float32
	// PresencePenalty is subtracted once if a token occurred.
	PresencePenalty float32
	// Seed: same seed and same input give the same output; SeedRandom = from the engine.
	Seed uint64
	// Stop sequences: the text ends before the first one that appears; it is never streamed.
	Stop []string
	// Timeout limits the call's wall-clock time (queueing included); 0 = none. The context's
	// deadline, when sooner, takes its place.
	Timeout time.Duration
	// Logprobs records each generated token's log-probability in Result.Logprobs.
	Logprobs bool
	// IgnoreEOS keeps generating past the model's end-of-generation tokens until MaxTokens
	// (fixed-length output, benchmarks); the end tokens stay in the output. A constrained
	// request still stops where its grammar ends.
	IgnoreEOS bool
}

// DefaultGenerateParams returns the library's defaults: llama.cpp's sampling defaults, 256
// tokens, a random seed.
func DefaultGenerateParams() GenerateParams {
	d := C.maze_generate_params_default()
	return GenerateParams{
		MaxTokens:         int(d.max_tokens),
		Temperature:       float32(d.temperature),
		TopK:              int(d.top_k),
		TopP:              float32(d.top_p),
		MinP:              float32(d.min_p),
		RepetitionPenalty: float32(d.repetition_penalty),
		PenaltyLastN:      int(d.penalty_last_n),
		FrequencyPenalty:  float32(d.frequency_penalty),
		PresencePenalty:   float32(d.presence_penalty),
		Seed:              uint64(d.seed),
		Timeout:           time.Duration(d.timeout_ms) * time.Millisecond,
		Logprobs:          bool(d.logprobs),
		IgnoreEOS:         bool(d.ignore_eos),
	}
}

// Request is one generation: exactly one of Prompt, Messages or Tokens is the input.
type Request struct {
	// Prompt continues the session from text. The session reuses the longest prefix it already
	// computed, so passing the whole conversation each time costs only the new part.
	Prompt string
	// Messages are rendered with the model's chat template, ending in an assistant turn.
	Messages []Message
	// Tokens are used as they are (no BOS added).
	Tokens []uint32
	// Params are the sampling settings; nil = DefaultGenerateParams().
	Params *GenerateParams
	// Constraints the output must obey, all at once; compiled for this request through the
	// engine's cache (the engine must still be open).
	Constraints []Constraint
	// Compiled are constraint sets compiled beforehand with Engine.Compile, obeyed too.
	Compiled []*ConstraintSet

	// Tools the model may call (Messages input only). The chat template renders them (or the
	// generic format, see ToolFormat); the reply's calls are enforced (declared names,
	// arguments valid under each tool's schema) and returned in Result.ToolCalls. Bad
	// declarations fail with ErrInvalidArgument, a schema that does not compile with
	// ErrInvalidConstraint, each naming the tool.
	Tools []Tool
	// ToolChoice: ToolChoiceAuto (the zero value), ToolChoiceNone, ToolChoiceRequired or
	// ToolChoiceNamed(name). With auto, Constraints govern a text reply.
	ToolChoice ToolChoice
	// ParallelToolCalls allows more than one call in a reply; nil = true.
	ParallelToolCalls *bool
	// MaxToolCalls is the most calls in one reply when parallel; 0 = 8.
	MaxToolCalls int
	// ToolFormat is how calls are written; ToolFormatTemplate (the zero value) = the chat
	// template's own syntax, refused with ErrUnsupported when it cannot render tools.
	ToolFormat ToolFormat
	// OnToolCall, when set, receives the pieces of each tool call as the reply streams (the
	// call's name, then its argument fragments), on the calling goroutine, in every form of
	// Generate; text goes to the text callback without the call syntax. Returning false stops
	// generation; a panic stops it and is re-raised.
	OnToolCall func(ToolCallDelta) bool
}

// Session is one conversation with its own KV cache. It is safe for concurrent use, but runs
// one generation at a time: a second Generate while one runs fails with ErrBusy. Cancel may
// be called from any goroutine.
type Session struct {
	ptr        *C.maze_session
	engine     *Engine
	guard      *guard
	cleanup    runtime.Cleanup
	generating sync.Mutex
	// closing ends when Close begins; it cancels the calls in flight.
	closing    context.Context
	closeCalls context.CancelFunc
}

// Close cancels a running generation, waits for calls on the session to return, and frees the
// session and its KV cache. It must not be called from the session's own stream callback.
// Closing twice is a no-op.
func (s *Session) Close() error {
	s.closeCalls()
	if s.guard.close() {
		s.cleanup.Stop()
		C.maze_session_free(s.ptr)
	}
	return nil
}

// Cancel stops the running generation (prefill included); Generate then returns its partial
// Result with FinishCancelled. A no-op when idle: it does not affect the next generation.
func (s *Session) Cancel() error {
	if err := s.guard.enter(); err != nil {
		return err
	}
	defer s.guard.leave()
	C.maze_session_cancel(s.ptr)
	return nil
}

// Reset forgets the conversation (clears the KV cache). It fails with ErrBusy while generating.
func (s *Session) Reset() error {
	if err := s.guard.enter(); err != nil {
		return err
	}
	defer s.guard.leave()
	var cerr *C.maze_error
	return takeError(C.maze_session_reset(s.ptr, &cerr), cerr)
}

// Generate runs a request to its end and returns its Result.
//
// The error is nil when generation ended normally, whatever the finish reason (stop, length,
// stop sequence, or Cancel). It is ctx.Err() when ctx was cancelled or its deadline passed,
// and the Result's Err when the library failed midway; the partial Result comes with both.
// Errors before generating (bad request, ErrBusy, ErrContextOverflow, ErrClosed, a context
// already done) come with a nil Result.
func (s *Session) Generate(ctx context.Context, req Request) (*Result, error) {
	return s.run(ctx, &req, nil, nil)
}

// GenerateStream is Generate with onText called with each piece of generated text (whole
// UTF-8 characters, never part of a stop sequence) on the calling goroutine, as it is
// produced. Returning false stops generation: the Result then finishes with FinishCancelled
// and holds exactly the text delivered. A panic in onText stops generation and is re-raised.
func (s *Session) GenerateStream(ctx context.Context, req Request, onText func(text string) bool) (*Result, error) {
	if onText == nil {
		return nil, invalidArgument("GenerateStream: onText is nil")
	}
	return s.run(ctx, &req, onText, nil)
}

// Chunk is one step of Stream: a piece of text, a piece of a tool call, or (last) the
// finished Result.
type Chunk struct {
	Text string
	// ToolCall is a piece of a tool call (requests with Tools), in place of text.
	ToolCall *ToolCallDelta
	// Result is set on the last chunk only, once generation has finished.
	Result *Result
}

// Stream runs a request as an iterator of text chunks and tool-call pieces; the last chunk
// carries the Result. Breaking out of the loop stops generation. An error ends the iteration,
// paired with the partial Result when there is one (see Generate). Request.OnToolCall, when
// set, sees the tool-call pieces first.
//
//	for chunk, err := range session.Stream(ctx, req) {
//		if err != nil { ... }
//		fmt.Print(chunk.Text)
//	}
func (s *Session) Stream(ctx context.Context, req Request) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		stopped := false
		var onTool func(ToolCallDelta) bool
		if len(req.Tools) > 0 {
			onTool = func(d ToolCallDelta) bool {
				if !yield(Chunk{ToolCall: &d}, nil) {
					stopped = true
				}
				return !stopped
			}
		}
		res, err := s.run(ctx, &req, func(text string) bool {
			if !yield(Chunk{Text: text}, nil) {
				stopped = true
			}
			return !stopped
		}, onTool)
		if !stopped {
			yield(Chunk{Result: res}, err)
		}
	}
}

func (s *Session) run(ctx context.Context, req *Request, onText func(string) bool, onTool func(ToolCallDelta) bool) (*Result, error) {
	if ctx == nil {
		return nil, invalidArgument("nil context.Context (use context.Background())")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.guard.enter(); err != nil {
		return nil, err
	}
	defer s.guard.leave()
	if !s.generating.TryLock() {
		return nil, &Error{Status: StatusBusy, Message: "the session is already generating"}
	}
	defer s.generating.Unlock()

	var mem cMemory
	defer mem.free()
	args := generateArgs{}
	if err := mem.input(req, &args); err != nil {
		return nil, err
	}
	params, deadlineBound, err := mem.generateParams(ctx, req.Params)
	if err != nil {
		return nil, err
	}
	args.params = params
	if err := mem.toolParams(req, params); err != nil {
		return nil, err
	}

	handles, release, err := s.constraintHandles(req)
	defer release()
	if err != nil {
		return nil, err
	}
	if len(handles) > 0 {
		arr := unsafe.Slice((**C.maze_constraint)(mem.alloc(unsafe.Sizeof((*C.maze_constraint)(nil))*uintptr(len(handles)))), len(handles))
		copy(arr, handles)
		params.constraints = (**C.maze_constraint)(unsafe.Pointer(&arr[0]))
		params.n_constraints = C.size_t(len(handles))
	}

	if user := req.OnToolCall; user != nil {
		if stream := onTool; stream != nil {
			onTool = func(d ToolCallDelta) bool { return user(d) && stream(d) }
		} else {
			onTool = user
		}
	}
	var cb *callback
	if onText != nil || onTool != nil {
		cb = &callback{onText: onText, onToolCall: onTool}
		h := cgo.NewHandle(cb)
		defer h.Delete()
		if onText != nil {
			args.callback = h
		}
		if onTool != nil {
			setToolCallback(params, h)
		}
	}

	// A cancel token ends the call when ctx ends or the session closes: cancelled once, it
	// stops the call wherever it is, also before the library has started the call.
	var token *C.maze_cancel_token
	var tokenErr *C.maze_error
	if err := takeError(C.maze_cancel_token_new(&token, &tokenErr), tokenErr); err != nil {
		return nil, err
	}
	defer C.maze_cancel_token_free(token)
	params.cancel = token
	cancel := func() { C.maze_cancel_token_cancel(token) }
	stopOnDone := afterFunc(ctx, cancel)
	stopOnClose := afterFunc(s.closing, cancel)
	var out *C.maze_result
	var cerr *C.maze_error
	status := callGenerate(s.ptr, &args, &out, &cerr)
	stopOnDone()
	stopOnClose()

	if err := takeError(status, cerr); err != nil {
		if cb != nil {
			cb.rethrow()
		}
		return nil, err
	}
	res := takeResult(out)
	if cb != nil {
		cb.rethrow()
	}
	switch {
	case res.FinishReason == FinishError:
		return res, res.Err
	case (res.FinishReason == FinishCancelled || res.FinishReason == FinishTimeout) && ctx.Err() != nil:
		return res, ctx.Err()
	case res.FinishReason == FinishTimeout && deadlineBound:
		return res, context.DeadlineExceeded
	}
	return res, nil
}

// afterFunc is context.AfterFunc whose stop also waits for f when f has already started, so
// what f uses may be freed after stop returns.
func afterFunc(ctx context.Context, f func()) (stop func()) {
	done := make(chan struct{})
	stopF := context.AfterFunc(ctx, func() {
		defer close(done)
		f()
	})
	return func() {
		if !stopF() {
			<-done
		}
	}
}

// input sets the request's single input in args.
func (m *cMemory) input(req *Request, args *generateArgs) error {
	given := 0
	if req.Prompt != "" {
		given++
		args.input = inputPrompt
		args.prompt, args.promptLen = goBytes(req.Prompt)
	}
	if req.Messages != nil {
		given++
		args.input = inputMessages
		args.messages, args.nMessages = m.messages(req.Messages)
	}
	if req.Tokens != nil {
		given++
		args.input = inputTokens
		args.tokens, args.nTokens = m.tokens(req.Tokens)
	}
	switch given {
	case 0:
		return invalidArgument("the request has no input: set Prompt, Messages or Tokens")
	case 1:
		return nil
	}
	return invalidArgument("the request has %d inputs: set only one of Prompt, Messages or Tokens", given)
}

// generateParams converts p (nil = defaults) and ctx's deadline into C parameters. It reports
// whether ctx's deadline set the timeout.
func (m *cMemory) generateParams(ctx context.Context, p *GenerateParams) (*C.maze_generate_params, bool, error) {
	if p == nil {
		d := DefaultGenerateParams()
		p = &d
	}
	c := (*C.maze_generate_params)(m.alloc(unsafe.Sizeof(C.maze_generate_params{})))
	*c = C.maze_generate_params_default()
	var err error
	if c.max_tokens, err = u32("GenerateParams.MaxTokens", p.MaxTokens); err != nil {
		return nil, false, err
	}
	if c.top_k, err = u32("GenerateParams.TopK", p.TopK); err != nil {
		return nil, false, err
	}
	if c.penalty_last_n, err = u32("GenerateParams.PenaltyLastN", p.PenaltyLastN); err != nil {
		return nil, false, err
	}
	c.temperature = C.float(p.Temperature)
	c.top_p = C.float(p.TopP)
	c.min_p = C.float(p.MinP)
	c.repetition_penalty = C.float(p.RepetitionPenalty)
	c.frequency_penalty = C.float(p.FrequencyPenalty)
	c.presence_penalty = C.float(p.PresencePenalty)
	c.seed = C.uint64_t(p.Seed)
	c.logprobs = C.bool(p.Logprobs)
	c.ignore_eos = C.bool(p.IgnoreEOS)
	c.stop, c.n_stop = m.strs(p.Stop)

	if p.Timeout < 0 {
		return nil, false, invalidArgument("GenerateParams.Timeout %v is negative", p.Timeout)
	}
	timeout, deadlineBound := p.Timeout, false
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, false, context.DeadlineExceeded
		}
		if timeout == 0 || left < timeout {
			timeout, deadlineBound = left, true
		}
	}
	ms := (timeout + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		if !deadlineBound && p.Timeout > 0 {
			return nil, false, invalidArgument("GenerateParams.Timeout %v exceeds %d ms", p.Timeout, uint32(math.MaxUint32))
		}
		ms = math.MaxUint32
	}
	c.timeout_ms = C.uint32_t(ms)
	return c, deadlineBound, nil
}

// constraintHandles compiles the request's constraints and holds its compiled sets open for the
// call; release undoes both.
func (s *Session) constraintHandles(req *Request) ([]*C.maze_constraint, func(), error) {
	var handles []*C.maze_constraint
	var releases []func()
	release := func() {
		for _, r := range releases {
			r()
		}
	}
	if len(req.Constraints) > 0 {
		set, err := s.engine.Compile(req.Constraints...)
		if err != nil {
			return nil, release, err
		}
		releases = append(releases, func() { set.Close() })
		handles = append(handles, set.handles...)
	}
	for i, set := range req.Compiled {
		if set == nil {
			return nil, release, invalidArgument("Request.Compiled[%d] is nil", i)
		}
		if err := set.guard.enter(); err != nil {
			return nil, release, fmt.Errorf("Request.Compiled[%d]: %w", i, err)
		}
		releases = append(releases, set.guard.leave)
		handles = append(handles, set.handles...)
	}
	return handles, release, nil
}
