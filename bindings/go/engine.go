package maze

/*
#include "maze.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"math"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// Version is the library's version ("MAJOR.MINOR.PATCH").
func Version() string { return C.GoString(C.maze_version()) }

// ABIVersion is the ABI version of the linked library; this package was built against
// HeaderABIVersion and refuses to load a model when the two differ.
func ABIVersion() uint32 { return uint32(C.maze_abi_version()) }

// HeaderABIVersion is MAZE_ABI_VERSION of the header this package was compiled with.
const HeaderABIVersion = C.MAZE_ABI_VERSION

// Options configure NewEngine. The zero value of every field means "the library's default".
type Options struct {
	// ModelPath is the GGUF file to load (Llama family). Empty selects a remote server:
	// Remote, or else the MAZE_ENDPOINT environment variables (see docs/PROTOCOL.md).
	ModelPath string
	// Remote connects to an inference server instead of loading a model (ModelPath empty).
	Remote *Remote
	// Threads is the number of compute threads; 0 = one per available core.
	Threads int
	// ContextLength is the context (tokens) per session; 0 = the model's, capped at 8192.
	ContextLength int
	// Seed seeds requests that bring none; 0 = a fresh random seed from the OS.
	Seed uint64
	// TokenizerPath optionally names a tokenizer.json replacing the GGUF's tokenizer.
	TokenizerPath string
	// ConstraintCacheLimit is how many compiled constraints the engine caches; 0 = 256.
	ConstraintCacheLimit int
	// PrepareConstraints builds the one-time constraint setup (token trie and parser factory,
	// 0.1-1 s with the vocabulary) during the load instead of in the first constrained request.
	PrepareConstraints bool
	// PrefixCacheMiB is the memory kept for the keys and values of closed or reset sessions,
	// which a new session whose prompt opens the same way (16 tokens or more) copies instead of
	// recomputing; 0 = 64 MiB, negative = keep none (live sessions' prefixes are still shared).
	PrefixCacheMiB int
	// GPU selects a CUDA device by number; nil = the CPU. It needs a library built with the
	// cuda feature (make cuda); otherwise NewEngine fails with ErrUnsupported.
	GPU *int
	// Progress, when set, receives loading progress in [0, 1] on the calling goroutine;
	// returning false aborts the load (NewEngine then fails with ErrCancelled).
	Progress func(progress float32) bool
}

// Protocol is the API a remote server speaks.
type Protocol uint32

const (
	// ProtocolOpenAI: /v1/chat/completions and /v1/completions (vLLM, SGLang, llama.cpp).
	ProtocolOpenAI Protocol = C.MAZE_PROTOCOL_OPENAI
	// ProtocolMaze: Maze's own protocol (maze-server): every constraint kind, with validation.
	ProtocolMaze Protocol = C.MAZE_PROTOCOL_MAZE
)

// Remote describes an inference server. A remote engine has no local tokenizer: Tokenize,
// Detokenize, ApplyChatTemplate and the constraint cache fail with ErrUnsupported, and over
// the OpenAI protocol what the server cannot enforce (token masks, several constraints at
// once) is refused with ErrUnsupported.
type Remote struct {
	// Endpoint is the server's base URL, e.g. "http://127.0.0.1:8000". Required.
	Endpoint string
	// APIKey is sent as "Authorization: Bearer KEY".
	APIKey string
	// Model is the model name for OpenAI-compatible servers; empty = the first one listed.
	Model    string
	Protocol Protocol
	// Retries after connect errors, 429 and 5xx (exponential backoff, jitter, Retry-After):
	// 0 = the library's default (3), negative = none.
	Retries int
	// RequestTimeout limits requests whose context has no deadline; 0 = none.
	RequestTimeout time.Duration
}

func (m *cMemory) remote(r *Remote, params *C.maze_engine_params) error {
	if r.Endpoint == "" {
		return invalidArgument("Options.Remote.Endpoint is empty")
	}
	var err error
	if params.endpoint, err = m.cstring("Options.Remote.Endpoint", r.Endpoint); err != nil {
		return err
	}
	if r.APIKey != "" {
		if params.api_key, err = m.cstring("Options.Remote.APIKey", r.APIKey); err != nil {
			return err
		}
	}
	if r.Model != "" {
		if params.remote_model, err = m.cstring("Options.Remote.Model", r.Model); err != nil {
			return err
		}
	}
	params.protocol = C.uint32_t(r.Protocol)
	switch {
	case r.Retries < 0:
		params.max_retries = 0
	case r.Retries > 0:
		if params.max_retries, err = u32("Options.Remote.Retries", r.Retries); err != nil {
			return err
		}
	}
	if r.RequestTimeout < 0 || r.RequestTimeout/time.Millisecond > math.MaxUint32 {
		return invalidArgument("Options.Remote.RequestTimeout %v is out of range", r.RequestTimeout)
	}
	params.request_timeout_ms = C.uint32_t((r.RequestTimeout + time.Millisecond - 1) / time.Millisecond)
	return nil
}

// ModelInfo describes the loaded model.
type ModelInfo struct {
	Name            string
	Architecture    string
	VocabSize       int
	ContextLength   int
	HasChatTemplate bool
	// EOSToken is the end-of-sequence token id, or -1 when the model has none.
	EOSToken int64
}

// Engine is a loaded model with its worker. It is safe for concurrent use: any number of
// goroutines may open sessions and generate at once (the library batches them). Close it when
// done; sessions opened on it stay usable after it is closed.
type Engine struct {
	ptr     *C.maze_engine
	guard   *guard
	cleanup runtime.Cleanup
	info    ModelInfo
}

func u32(what string, v int) (C.uint32_t, error) {
	if v < 0 || uint64(v) > math.MaxUint32 {
		return 0, invalidArgument("%s = %d is out of range [0, %d]", what, v, uint32(math.MaxUint32))
	}
	return C.uint32_t(v), nil
}

// NewEngine loads a model and starts its worker, or connects to a remote server.
func NewEngine(opts Options) (*Engine, error) {
	if ABIVersion() != HeaderABIVersion {
		return nil, &Error{Status: StatusABIMismatch, Message: "the linked library's ABI version differs from the header this package was built with"}
	}
	if opts.ModelPath != "" && opts.Remote != nil {
		return nil, invalidArgument("set Options.ModelPath or Options.Remote, not both")
	}
	var mem cMemory
	defer mem.free()
	params := C.maze_engine_params_default()
	var err error
	if params.n_threads, err = u32("Options.Threads", opts.Threads); err != nil {
		return nil, err
	}
	if params.n_ctx, err = u32("Options.ContextLength", opts.ContextLength); err != nil {
		return nil, err
	}
	params.prepare_constraints = C.bool(opts.PrepareConstraints)
	if params.constraint_cache_limit, err = u32("Options.ConstraintCacheLimit", opts.ConstraintCacheLimit); err != nil {
		return nil, err
	}
	switch {
	case opts.PrefixCacheMiB < 0:
		params.prefix_cache_mib = 0
	case opts.PrefixCacheMiB > 0:
		if params.prefix_cache_mib, err = u32("Options.PrefixCacheMiB", opts.PrefixCacheMiB); err != nil {
			return nil, err
		}
	}
	if opts.GPU != nil {
		if *opts.GPU < 0 || *opts.GPU > math.MaxInt32 {
			return nil, invalidArgument("Options.GPU = %d is not a device number", *opts.GPU)
		}
		params.gpu_device = C.int32_t(*opts.GPU)
	}
	if opts.Seed != 0 {
		params.seed = C.uint64_t(opts.Seed)
	}
	if opts.TokenizerPath != "" {
		if params.tokenizer_path, err = mem.cstring("Options.TokenizerPath", opts.TokenizerPath); err != nil {
			return nil, err
		}
	}
	if opts.Remote != nil {
		if err := mem.remote(opts.Remote, &params); err != nil {
			return nil, err
		}
	}
	var path *C.char // NULL: a remote server (Options.Remote or the environment)
	if opts.ModelPath != "" {
		if path, err = mem.cstring("Options.ModelPath", opts.ModelPath); err != nil {
			return nil, err
		}
	}
	var cb *callback
	if opts.Progress != nil {
		cb = &callback{onProgress: opts.Progress}
		h := cgo.NewHandle(cb)
		defer h.Delete()
		setProgressCallback(&params, h)
	}

	var ptr *C.maze_engine
	var cerr *C.maze_error
	status := C.maze_engine_new(path, &params, &ptr, &cerr)
	if cb != nil {
		cb.rethrow()
	}
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	e := &Engine{ptr: ptr, guard: newGuard()}
	e.info = ModelInfo{
		Name:            C.GoString(C.maze_engine_model_name(ptr)),
		Architecture:    C.GoString(C.maze_engine_architecture(ptr)),
		VocabSize:       int(C.maze_engine_vocab_size(ptr)),
		ContextLength:   int(C.maze_engine_context_length(ptr)),
		HasChatTemplate: bool(C.maze_engine_has_chat_template(ptr)),
		EOSToken:        int64(C.maze_engine_eos_token(ptr)),
	}
	// A backstop only: Close is the way to free an engine promptly.
	e.cleanup = runtime.AddCleanup(e, func(p *C.maze_engine) { C.maze_engine_free(p) }, ptr)
	return e, nil
}

// Close frees the engine once calls running on it have returned. Sessions opened on it stay
// usable. Closing twice is a no-op.
func (e *Engine) Close() error {
	if e.guard.close() {
		e.cleanup.Stop()
		C.maze_engine_free(e.ptr)
	}
	return nil
}

// Info describes the loaded model.
func (e *Engine) Info() ModelInfo { return e.info }

// use runs f on the engine's C handle unless the engine is closed.
func (e *Engine) use(f func(*C.maze_engine) error) error {
	if err := e.guard.enter(); err != nil {
		return err
	}
	defer e.guard.leave()
	return f(e.ptr)
}

// IsEndOfGeneration reports whether token ends generation (EOS or an end-of-turn token).
func (e *Engine) IsEndOfGeneration(token uint32) bool {
	var end bool
	_ = e.use(func(p *C.maze_engine) error {
		end = bool(C.maze_engine_token_is_end_of_generation(p, C.uint32_t(token)))
		return nil
	})
	return end
}

// Tokenize turns text into token ids. addSpecial adds BOS/EOS as the model wants them;
// parseSpecial lets special-token text (e.g. "<|im_start|>") become special tokens: keep it
// false for untrusted text.
func (e *Engine) Tokenize(text string, addSpecial, parseSpecial bool) ([]uint32, error) {
	var ids []uint32
	err := e.use(func(p *C.maze_engine) error {
		ptr, n := goBytes(text)
		buf := make([]uint32, len(text)+8)
		for {
			var count C.size_t
			var cerr *C.maze_error
			status := C.maze_tokenize(p, ptr, n, C.bool(addSpecial), C.bool(parseSpecial),
				(*C.uint32_t)(unsafe.SliceData(buf)), C.size_t(len(buf)), &count, &cerr)
			if status == C.MAZE_STATUS_BUFFER_TOO_SMALL {
				C.maze_error_free(cerr)
				buf = make([]uint32, int(count))
				continue
			}
			if err := takeError(status, cerr); err != nil {
				return err
			}
			ids = buf[:count]
			return nil
		}
	})
	return ids, err
}

// Score returns the natural-log probability the model gives each token after the ones before
// it: len(tokens)-1 values, the first for tokens[1] (start with BOS, or a context, to score a
// text's first token). One forward pass, between the steps of running generations; for
// ranking, classification and perplexity.
func (e *Engine) Score(tokens []uint32) ([]float32, error) {
	var scores []float32
	err := e.use(func(p *C.maze_engine) error {
		out := make([]float32, max(len(tokens)-1, 0))
		var count C.size_t
		var cerr *C.maze_error
		var ids *C.uint32_t
		if len(tokens) > 0 {
			ids = (*C.uint32_t)(unsafe.SliceData(tokens))
		}
		var dst *C.float
		if len(out) > 0 {
			dst = (*C.float)(unsafe.SliceData(out))
		}
		status := C.maze_score(p, ids, C.size_t(len(tokens)), dst, C.size_t(len(out)), &count, &cerr)
		if err := takeError(status, cerr); err != nil {
			return err
		}
		scores = out[:count]
		return nil
	})
	return scores, err
}

// readText runs a C call that writes text with the library's buffer protocol (the needed size
// comes back with MAZE_STATUS_BUFFER_TOO_SMALL), growing the buffer until it fits.
func readText(guess int, call func(buf *C.char, capacity C.size_t, outLen *C.size_t, cerr **C.maze_error) C.enum_maze_status) (string, error) {
	buf := make([]byte, guess+1)
	for {
		var n C.size_t
		var cerr *C.maze_error
		status := call((*C.char)(unsafe.Pointer(unsafe.SliceData(buf))), C.size_t(len(buf)), &n, &cerr)
		if status == C.MAZE_STATUS_BUFFER_TOO_SMALL {
			C.maze_error_free(cerr)
			buf = make([]byte, int(n)+1)
			continue
		}
		if err := takeError(status, cerr); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// Detokenize turns token ids back into the exact text they stand for (special tokens as their
// text). An id outside the vocabulary fails with ErrInvalidArgument.
func (e *Engine) Detokenize(tokens []uint32) (string, error) {
	var text string
	err := e.use(func(p *C.maze_engine) error {
		var err error
		text, err = readText(len(tokens)*8+16, func(buf *C.char, capacity C.size_t, outLen *C.size_t, cerr **C.maze_error) C.enum_maze_status {
			return C.maze_detokenize(p, (*C.uint32_t)(unsafe.SliceData(tokens)), C.size_t(len(tokens)), buf, capacity, outLen, cerr)
		})
		return err
	})
	return text, err
}

// Message is one chat message. Roles are those the model's template knows: usually "system",
// "user", "assistant", "tool". An assistant message may carry the tool calls it made (see
// Result.AssistantMessage); a "tool" message answers one of them by ToolCallID (see
// ToolMessage).
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// ToolCalls are the calls an assistant message made.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID is the call a "tool" message answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

func (m *cMemory) messages(msgs []Message) (*C.maze_chat_message, C.size_t) {
	if len(msgs) == 0 {
		return nil, 0
	}
	arr := unsafe.Slice((*C.maze_chat_message)(m.alloc(unsafe.Sizeof(C.maze_chat_message{})*uintptr(len(msgs)))), len(msgs))
	for i, msg := range msgs {
		calls, n := m.toolCalls(msg.ToolCalls)
		arr[i] = C.maze_chat_message{
			struct_size:  C.uint32_t(unsafe.Sizeof(C.maze_chat_message{})),
			role:         m.str(msg.Role),
			content:      m.str(msg.Content),
			tool_calls:   calls,
			n_tool_calls: n,
			tool_call_id: m.str(msg.ToolCallID),
		}
	}
	return &arr[0], C.size_t(len(msgs))
}

// ApplyChatTemplate renders messages with the model's chat template. With
// addGenerationPrompt the text ends where the assistant's reply starts. It fails with
// ErrTemplate when the model has no template or the template rejects the messages.
func (e *Engine) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	var text string
	err := e.use(func(p *C.maze_engine) error {
		var mem cMemory
		defer mem.free()
		cmsgs, n := mem.messages(msgs)
		guess := 256
		for _, m := range msgs {
			guess += len(m.Role) + len(m.Content) + 32
		}
		var err error
		text, err = readText(guess, func(buf *C.char, capacity C.size_t, outLen *C.size_t, cerr **C.maze_error) C.enum_maze_status {
			return C.maze_chat_apply_template(p, cmsgs, n, C.bool(addGenerationPrompt), buf, capacity, outLen, cerr)
		})
		return err
	})
	return text, err
}

// CacheStats are the counters of the engine's constraint compile cache.
type CacheStats struct {
	Size, Limit, Hits, Misses, Evictions uint64
}

// ConstraintCacheStats reads the constraint compile cache's counters.
func (e *Engine) ConstraintCacheStats() (CacheStats, error) {
	var stats CacheStats
	err := e.use(func(p *C.maze_engine) error {
		var s C.maze_constraint_cache_stats
		var cerr *C.maze_error
		if err := takeError(C.maze_engine_constraint_cache_stats(p, &s, &cerr), cerr); err != nil {
			return err
		}
		stats = CacheStats{uint64(s.size), uint64(s.limit), uint64(s.hits), uint64(s.misses), uint64(s.evictions)}
		return nil
	})
	return stats, err
}

// ClearConstraintCache empties the constraint compile cache (the counters keep counting).
func (e *Engine) ClearConstraintCache() error {
	return e.use(func(p *C.maze_engine) error {
		var cerr *C.maze_error
		return takeError(C.maze_engine_constraint_cache_clear(p, &cerr), cerr)
	})
}

// ConstraintSetupTime is how long the one-time constraint setup took: 0 until it has been
// built (by the first constrained request, or at load with Options.PrepareConstraints), and
// for a remote engine.
func (e *Engine) ConstraintSetupTime() time.Duration {
	if e.guard.enter() != nil {
		return 0
	}
	defer e.guard.leave()
	return micros(C.maze_engine_constraint_setup_time_us(e.ptr))
}

// SetConstraintCacheLimit sets how many compiled constraints the cache keeps (>= 1).
func (e *Engine) SetConstraintCacheLimit(limit int) error {
	if limit < 1 {
		return invalidArgument("constraint cache limit %d: must be at least 1", limit)
	}
	return e.use(func(p *C.maze_engine) error {
		var cerr *C.maze_error
		return takeError(C.maze_engine_constraint_cache_set_limit(p, C.uint64_t(limit), &cerr), cerr)
	})
}

// Health checks that the engine can serve: always nil for a local model; a remote engine asks
// its server and returns ErrBackend naming the problem.
func (e *Engine) Health() error {
	return e.use(func(p *C.maze_engine) error {
		var cerr *C.maze_error
		return takeError(C.maze_engine_health(p, &cerr), cerr)
	})
}

// Models lists the models the engine serves (a remote engine asks its server).
func (e *Engine) Models() ([]string, error) {
	var names []string
	err := e.use(func(p *C.maze_engine) error {
		text, err := readText(256, func(buf *C.char, capacity C.size_t, outLen *C.size_t, cerr **C.maze_error) C.enum_maze_status {
			return C.maze_engine_list_models(p, buf, capacity, outLen, cerr)
		})
		if err != nil {
			return err
		}
		return json.Unmarshal([]byte(text), &names)
	})
	return names, err
}

// NewSession opens a conversation with its own KV cache. Close it when done.
func (e *Engine) NewSession() (*Session, error) {
	var s *Session
	err := e.use(func(p *C.maze_engine) error {
		var ptr *C.maze_session
		var cerr *C.maze_error
		if err := takeError(C.maze_session_new(p, &ptr, &cerr), cerr); err != nil {
			return err
		}
		s = &Session{ptr: ptr, engine: e, guard: newGuard()}
		s.closing, s.closeCalls = context.WithCancel(context.Background())
		s.cleanup = runtime.AddCleanup(s, func(p *C.maze_session) { C.maze_session_free(p) }, ptr)
		return nil
	})
	return s, err
}
