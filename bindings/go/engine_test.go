package maze

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	if v := Version(); strings.Count(v, ".") != 2 {
		t.Errorf("Version() = %q, want MAJOR.MINOR.PATCH", v)
	}
	if ABIVersion() != HeaderABIVersion {
		t.Errorf("ABI %d, header %d", ABIVersion(), HeaderABIVersion)
	}
	if StatusBusy.String() != "MAZE_STATUS_BUSY" || FinishStopSequence.String() != "stop_sequence" {
		t.Errorf("names: %s, %s", StatusBusy, FinishStopSequence)
	}
}

func TestEngineInfo(t *testing.T) {
	e := sharedEngine(t)
	info := e.Info()
	if info.Architecture != "llama" || info.VocabSize != 49152 || !info.HasChatTemplate || info.ContextLength <= 0 {
		t.Errorf("info %+v", info)
	}
	if info.EOSToken < 0 || !e.IsEndOfGeneration(uint32(info.EOSToken)) {
		t.Errorf("EOS %d is not an end of generation", info.EOSToken)
	}
	if e.IsEndOfGeneration(100) {
		t.Errorf("token 100 reported as end of generation")
	}
	if err := e.Health(); err != nil {
		t.Errorf("health: %v", err)
	}
	if models, err := e.Models(); err != nil || len(models) != 1 || models[0] != info.Name {
		t.Errorf("models %v, %v", models, err)
	}
}

func TestLoadProgress(t *testing.T) {
	var seen []float32
	e, err := NewEngine(Options{ModelPath: modelPath(t), Progress: func(p float32) bool {
		seen = append(seen, p)
		return true
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if len(seen) < 2 || seen[len(seen)-1] != 1 {
		t.Errorf("progress %v: want several values ending at 1", seen)
	}
}

func TestTokenizeRoundTrip(t *testing.T) {
	e := sharedEngine(t)
	text := "Hello, world! Ünïcödé 12345 " + strings.Repeat("long text ", 200)
	ids, err := e.Tokenize(text, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) < 400 {
		t.Errorf("%d tokens for %d bytes", len(ids), len(text))
	}
	back, err := e.Detokenize(ids)
	if err != nil || back != text {
		t.Fatalf("round trip: %q, %v", back, err)
	}
	// A run of spaces is one long token: the first buffer guess is too small and must grow.
	spaces := strings.Repeat(" ", 64)
	ids, _ = e.Tokenize(spaces, false, false)
	if back, err := e.Detokenize(ids); err != nil || back != spaces {
		t.Errorf("spaces: %q, %v", back, err)
	}
	special, err := e.Tokenize("<|im_start|>", false, true)
	if err != nil || len(special) != 1 {
		t.Errorf("special token parsed to %v, %v", special, err)
	}
	plain, _ := e.Tokenize("<|im_start|>", false, false)
	if len(plain) <= 1 {
		t.Errorf("special text without parseSpecial gave %v", plain)
	}
	if empty, err := e.Tokenize("", false, false); err != nil || len(empty) != 0 {
		t.Errorf("empty text: %v, %v", empty, err)
	}
}

func TestApplyChatTemplate(t *testing.T) {
	e := sharedEngine(t)
	text, err := e.ApplyChatTemplate([]Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<|im_start|>system\nBe brief.", "<|im_start|>user\nHi<|im_end|>", "<|im_start|>assistant\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("template output lacks %q:\n%s", want, text)
		}
	}
}

func TestEngineErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.gguf")
	_, err := NewEngine(Options{ModelPath: missing})
	expectError(t, err, ErrIO, "missing.gguf")

	notGGUF := filepath.Join(dir, "model.gguf")
	os.WriteFile(notGGUF, []byte("this is not a GGUF file at all"), 0o644)
	_, err = NewEngine(Options{ModelPath: notGGUF})
	expectError(t, err, ErrModelFormat, "")

	// No model path and no endpoint (MAZE_ENDPOINT unset in the tests): the library names both.
	if os.Getenv("MAZE_ENDPOINT") == "" {
		_, err = NewEngine(Options{})
		expectError(t, err, ErrNullArgument, "MAZE_ENDPOINT")
	}
	_, err = NewEngine(Options{ModelPath: "x.gguf", Remote: &Remote{Endpoint: "http://127.0.0.1:1"}})
	expectError(t, err, ErrInvalidArgument, "not both")
	_, err = NewEngine(Options{Remote: &Remote{}})
	expectError(t, err, ErrInvalidArgument, "Endpoint")
	_, err = NewEngine(Options{ModelPath: "a\x00b"})
	expectError(t, err, ErrInvalidArgument, "NUL")
	_, err = NewEngine(Options{ModelPath: modelPath(t), Threads: -1})
	expectError(t, err, ErrInvalidArgument, "Threads")

	_, err = NewEngine(Options{ModelPath: modelPath(t), Progress: func(float32) bool { return false }})
	expectError(t, err, ErrCancelled, "")
	gpu := -1
	_, err = NewEngine(Options{ModelPath: modelPath(t), GPU: &gpu})
	expectError(t, err, ErrInvalidArgument, "Options.GPU")
	// The tested library is a CPU build: it names the missing CUDA support.
	gpu = 0
	_, err = NewEngine(Options{ModelPath: modelPath(t), GPU: &gpu})
	expectError(t, err, ErrUnsupported, "no CUDA support")

	e := sharedEngine(t)
	_, err = e.Detokenize([]uint32{1 << 30})
	expectError(t, err, ErrInvalidArgument, "")
	_, err = e.Tokenize("bad \xff utf-8", false, false)
	expectError(t, err, ErrInvalidUTF8, "")
	expectError(t, e.SetConstraintCacheLimit(0), ErrInvalidArgument, "at least 1")
}

func TestProgressPanicIsRethrown(t *testing.T) {
	defer func() {
		if r := recover(); r != "boom in progress" {
			t.Errorf("recovered %v, want the callback's panic", r)
		}
	}()
	NewEngine(Options{ModelPath: modelPath(t), Progress: func(float32) bool { panic("boom in progress") }})
	t.Error("NewEngine returned instead of re-raising the callback's panic")
}

func TestErrorsIs(t *testing.T) {
	err := error(&Error{Status: StatusBusy, Message: "the session is already generating"})
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrIO) {
		t.Errorf("errors.Is does not follow the status")
	}
	if !strings.Contains(err.Error(), "already generating") || !strings.Contains(err.Error(), "MAZE_STATUS_BUSY") {
		t.Errorf("message %q", err)
	}
	var me *Error
	if !errors.As(err, &me) || me.Status != StatusBusy {
		t.Errorf("errors.As")
	}
}

// expectError checks err's status (by errors.Is) and that its message contains needle.
func expectError(t *testing.T, err error, sentinel error, needle string) {
	t.Helper()
	if err == nil {
		t.Errorf("no error, want %v", sentinel)
		return
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q is not %v", err, sentinel)
	}
	var me *Error
	if errors.As(err, &me) && me.Message == "" {
		t.Errorf("error %v has no message", err)
	}
	if !strings.Contains(err.Error(), needle) {
		t.Errorf("error %q does not mention %q", err, needle)
	}
}

func TestClosedHandles(t *testing.T) {
	e, err := NewEngine(Options{ModelPath: modelPath(t)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	set, err := e.Compile(Regex("[a-z]+"))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	e.Close()
	if _, err := e.NewSession(); !errors.Is(err, ErrClosed) {
		t.Errorf("NewSession after Close: %v", err)
	}
	if _, err := e.Tokenize("x", false, false); !errors.Is(err, ErrClosed) {
		t.Errorf("Tokenize after Close: %v", err)
	}
	// Sessions and compiled sets outlive their engine.
	res, err := s.Generate(t.Context(), Request{Prompt: "The sky is", Params: greedy(4), Compiled: []*ConstraintSet{set}})
	if err != nil || res.GeneratedTokens == 0 || !res.ConstraintsSatisfied && res.FinishReason != FinishLength {
		t.Errorf("session after engine Close: %+v, %v", res, err)
	}
	// Constraints given as values need the engine to compile them.
	if _, err := s.Generate(t.Context(), Request{Prompt: "x", Constraints: []Constraint{Regex("a")}}); !errors.Is(err, ErrClosed) {
		t.Errorf("constraints after engine Close: %v", err)
	}
	set.Close()
	if _, err := s.Generate(t.Context(), Request{Prompt: "x", Compiled: []*ConstraintSet{set}}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed constraint set: %v", err)
	}
	if set.Len() != 0 {
		t.Errorf("closed set Len %d", set.Len())
	}
	s.Close()
	s.Close()
	if _, err := s.Generate(t.Context(), Request{Prompt: "x"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate after Close: %v", err)
	}
	if err := s.Cancel(); !errors.Is(err, ErrClosed) {
		t.Errorf("Cancel after Close: %v", err)
	}
}

func TestScore(t *testing.T) {
	e := sharedEngine(t)
	ids, err := e.Tokenize("The quick brown fox jumps over the lazy dog", true, false)
	if err != nil {
		t.Fatal(err)
	}
	scores, err := e.Score(ids)
	if err != nil || len(scores) != len(ids)-1 {
		t.Fatalf("%d scores for %d tokens: %v", len(scores), len(ids), err)
	}
	for i, lp := range scores {
		if lp > 0 || lp < -100 {
			t.Errorf("log-probability %d is %v", i, lp)
		}
	}
	prefix, err := e.Score(ids[:3])
	if err != nil || len(prefix) != 2 || math.Abs(float64(prefix[1]-scores[1])) > 1e-3 {
		t.Errorf("prefix scores %v (whole %v): %v", prefix, scores[:2], err)
	}
	_, err = e.Score(ids[:1])
	expectError(t, err, ErrInvalidArgument, "at least 2 tokens")
}
