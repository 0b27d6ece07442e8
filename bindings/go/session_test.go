package maze

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestChat(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	p := greedy(48)
	p.Logprobs = true
	res, err := s.Generate(t.Context(), Request{
		Messages: []Message{{Role: "user", Content: "What is the capital of France? Answer in one word."}},
		Params:   p,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Text, "Paris") {
		t.Errorf("answer %q lacks Paris", res.Text)
	}
	if res.FinishReason != FinishStop || res.GeneratedTokens != len(res.Tokens) || len(res.Logprobs) != len(res.Tokens) {
		t.Errorf("finish %s, %d generated, %d tokens, %d logprobs", res.FinishReason, res.GeneratedTokens, len(res.Tokens), len(res.Logprobs))
	}
	for _, lp := range res.Logprobs {
		if lp > 0 {
			t.Errorf("log-probability %v > 0", lp)
		}
	}
	if res.PromptTokens < 20 || res.TotalTime <= 0 || res.TimeToFirstToken <= 0 || res.TimeToFirstToken > res.TotalTime {
		t.Errorf("stats: %d prompt tokens, ttft %v, total %v", res.PromptTokens, res.TimeToFirstToken, res.TotalTime)
	}
	var prov struct {
		Model string `json:"model"`
		Seed  uint64 `json:"seed"`
	}
	if err := json.Unmarshal([]byte(res.ProvenanceJSON), &prov); err != nil || prov.Model == "" {
		t.Errorf("provenance %s: %v", res.ProvenanceJSON, err)
	}
	if !res.ConstraintsSatisfied || !res.Validation.Satisfied {
		t.Errorf("no constraints must mean satisfied: %s", res.ValidationJSON)
	}

	// IgnoreEOS: the one-word answer's end token no longer stops it; MaxTokens does.
	long := greedy(48)
	long.IgnoreEOS = true
	past, err := newSession(t, sharedEngine(t)).Generate(t.Context(), Request{
		Messages: []Message{{Role: "user", Content: "What is the capital of France? Answer in one word."}},
		Params:   long,
	})
	if err != nil {
		t.Fatal(err)
	}
	if past.FinishReason != FinishLength || len(past.Tokens) != 48 || !strings.HasPrefix(past.Text, res.Text) {
		t.Errorf("IgnoreEOS: finish %s after %d tokens, text %q", past.FinishReason, len(past.Tokens), past.Text)
	}

	// The session remembers the conversation: a follow-up reuses the cached prefix.
	next, err := s.Generate(t.Context(), Request{
		Messages: []Message{
			{Role: "user", Content: "What is the capital of France? Answer in one word."},
			{Role: "assistant", Content: res.Text},
			{Role: "user", Content: "And of Italy?"},
		},
		Params: greedy(16),
	})
	if err != nil {
		t.Fatal(err)
	}
	if next.CachedTokens < res.PromptTokens {
		t.Errorf("follow-up reused %d cached tokens, want at least the %d of the first prompt", next.CachedTokens, res.PromptTokens)
	}
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
}

func TestSeedsAndStopSequences(t *testing.T) {
	e := sharedEngine(t)
	p := DefaultGenerateParams()
	p.MaxTokens = 24
	p.Seed = 1234
	run := func() string {
		res, err := newSession(t, e).Generate(t.Context(), Request{Prompt: "Once upon a time", Params: &p})
		if err != nil {
			t.Fatal(err)
		}
		return res.Text
	}
	if a, b := run(), run(); a != b {
		t.Errorf("same seed, different text: %q vs %q", a, b)
	}

	s := newSession(t, e)
	res, err := s.Generate(t.Context(), Request{Prompt: "Count: 1, 2, 3, 4, 5,", Params: &GenerateParams{
		MaxTokens: 40, TopP: 1, RepetitionPenalty: 1, Stop: []string{"8"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.FinishReason != FinishStopSequence || strings.Contains(res.Text, "8") {
		t.Errorf("stop sequence: %s, %q", res.FinishReason, res.Text)
	}
}

func TestRequestErrors(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	ctx := t.Context()
	_, err := s.Generate(ctx, Request{})
	expectError(t, err, ErrInvalidArgument, "no input")
	_, err = s.Generate(ctx, Request{Prompt: "a", Tokens: []uint32{1}})
	expectError(t, err, ErrInvalidArgument, "only one")
	_, err = s.Generate(ctx, Request{Prompt: "a", Params: &GenerateParams{MaxTokens: 5}})
	expectError(t, err, ErrInvalidArgument, "top_p")
	_, err = s.Generate(ctx, Request{Prompt: "a", Params: &GenerateParams{MaxTokens: -5, TopP: 1}})
	expectError(t, err, ErrInvalidArgument, "MaxTokens")
	_, err = s.Generate(ctx, Request{Prompt: "bad \xff utf-8"})
	expectError(t, err, ErrInvalidUTF8, "")
	_, err = s.Generate(ctx, Request{Tokens: []uint32{1 << 30}})
	expectError(t, err, ErrInvalidArgument, "")
	_, err = s.Generate(ctx, Request{Prompt: "a", Compiled: []*ConstraintSet{nil}})
	expectError(t, err, ErrInvalidArgument, "Compiled[0]")
	//lint:ignore SA1012 a nil context is refused, not a crash
	_, err = s.Generate(nil, Request{Prompt: "a"}) //nolint:staticcheck
	expectError(t, err, ErrInvalidArgument, "context")
	_, err = s.GenerateStream(ctx, Request{Prompt: "a"}, nil)
	expectError(t, err, ErrInvalidArgument, "onText")

	small, err := NewEngine(Options{ModelPath: modelPath(t), ContextLength: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	_, err = newSession(t, small).Generate(ctx, Request{Prompt: strings.Repeat("many words here ", 40)})
	expectError(t, err, ErrContextOverflow, "")

	// The session is still fine after all of that.
	if res, err := s.Generate(ctx, Request{Prompt: "Hello", Params: greedy(3)}); err != nil || res.GeneratedTokens != 3 {
		t.Errorf("after errors: %v, %v", res, err)
	}
}

func TestStream(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	req := Request{Messages: []Message{{Role: "user", Content: "Write a haiku about rivers."}}, Params: greedy(40)}
	var text strings.Builder
	var final *Result
	chunks := 0
	for chunk, err := range s.Stream(t.Context(), req) {
		if err != nil {
			t.Fatal(err)
		}
		if chunk.Result != nil {
			final = chunk.Result
			continue
		}
		chunks++
		text.WriteString(chunk.Text)
	}
	if final == nil || chunks < 5 || final.Text != text.String() {
		t.Fatalf("%d chunks %q, result %+v", chunks, text.String(), final)
	}

	// Breaking out of the loop stops generation; the session is free again at once.
	n := 0
	for chunk, err := range s.Stream(t.Context(), Request{Prompt: "The history of Rome", Params: greedy(200)}) {
		if err != nil || chunk.Result != nil {
			t.Fatalf("unexpected %v %v", chunk, err)
		}
		if n++; n == 3 {
			break
		}
	}
	// The callback form returns the partial result: exactly what was delivered.
	var delivered strings.Builder
	res, err := s.GenerateStream(t.Context(), Request{Prompt: "The history of Rome", Params: greedy(200)}, func(piece string) bool {
		delivered.WriteString(piece)
		return delivered.Len() < 20
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.FinishReason != FinishCancelled || res.Text != delivered.String() || res.GeneratedTokens >= 200 {
		t.Errorf("stopped stream: %s, %q vs delivered %q", res.FinishReason, res.Text, delivered.String())
	}
}

func TestStreamPanicIsRethrown(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	func() {
		defer func() {
			if r := recover(); r != "boom in stream" {
				t.Errorf("recovered %v", r)
			}
		}()
		for range s.Stream(t.Context(), Request{Prompt: "Hello", Params: greedy(50)}) {
			panic("boom in stream")
		}
		t.Error("the loop body's panic was swallowed")
	}()
	if res, err := s.Generate(t.Context(), Request{Prompt: "Hello", Params: greedy(2)}); err != nil || res.GeneratedTokens != 2 {
		t.Errorf("session after a panic: %v, %v", res, err)
	}
}

func longPrompt(words int) string {
	var b strings.Builder
	for i := range words {
		fmt.Fprintf(&b, "item%d ", i)
	}
	return b.String()
}

func TestContextCancel(t *testing.T) {
	s := newSession(t, sharedEngine(t))

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if res, err := s.Generate(ctx, Request{Prompt: "x"}); res != nil || !errors.Is(err, context.Canceled) {
		t.Errorf("done context: %v, %v", res, err)
	}

	// Cancelling while streaming: the partial result comes back with ctx.Err().
	ctx, cancel = context.WithCancel(t.Context())
	pieces := 0
	res, err := s.GenerateStream(ctx, Request{Prompt: "The history of Rome", Params: greedy(500)}, func(string) bool {
		if pieces++; pieces == 5 {
			cancel()
		}
		return true
	})
	if !errors.Is(err, context.Canceled) || res == nil || res.FinishReason != FinishCancelled || res.GeneratedTokens >= 500 || res.Text == "" {
		t.Errorf("cancelled stream: %+v, %v", res, err)
	}

	// Cancelling during prefill: a prompt of thousands of tokens takes seconds to prefill here.
	prompt := longPrompt(1200)
	ctx, cancel = context.WithCancel(t.Context())
	time.AfterFunc(150*time.Millisecond, cancel)
	start := time.Now()
	res, err = s.Generate(ctx, Request{Prompt: prompt, Params: greedy(5)})
	elapsed := time.Since(start)
	if !errors.Is(err, context.Canceled) || res == nil || res.FinishReason != FinishCancelled || res.GeneratedTokens != 0 {
		t.Errorf("cancelled prefill: %+v, %v", res, err)
	}
	if elapsed > 3*time.Second {
		t.Errorf("cancelled prefill returned after %v", elapsed)
	}
}

func TestDeadlineAndTimeout(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	res, err := s.Generate(ctx, Request{Prompt: "The history of Rome", Params: greedy(2000)})
	if !errors.Is(err, context.DeadlineExceeded) || res == nil || res.GeneratedTokens == 0 || res.GeneratedTokens >= 2000 {
		t.Errorf("deadline: %+v, %v", res, err)
	}
	if res != nil && res.FinishReason != FinishTimeout && res.FinishReason != FinishCancelled {
		t.Errorf("deadline finish reason %s", res.FinishReason)
	}

	// The request's own timeout is a normal end, reported by the finish reason.
	p := greedy(2000)
	p.Timeout = 200 * time.Millisecond
	res, err = s.Generate(t.Context(), Request{Prompt: "The history of Rome", Params: p})
	if err != nil || res.FinishReason != FinishTimeout || res.GeneratedTokens == 0 {
		t.Errorf("params timeout: %+v, %v", res, err)
	}
	p.Timeout = -time.Second
	_, err = s.Generate(t.Context(), Request{Prompt: "x", Params: p})
	expectError(t, err, ErrInvalidArgument, "Timeout")
}

func TestBusyAndCancel(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	started := make(chan struct{})
	done := make(chan *Result)
	go func() {
		var once sync.Once
		res, _ := s.GenerateStream(context.Background(), Request{Prompt: "The history of Rome", Params: greedy(2000)}, func(string) bool {
			once.Do(func() { close(started) })
			return true
		})
		done <- res
	}()
	<-started
	_, err := s.Generate(t.Context(), Request{Prompt: "x"})
	expectError(t, err, ErrBusy, "")
	expectError(t, s.Reset(), ErrBusy, "")
	if err := s.Cancel(); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res == nil || res.FinishReason != FinishCancelled {
		t.Errorf("Cancel: %+v", res)
	}
}

func TestCloseCancelsGeneration(t *testing.T) {
	s, err := sharedEngine(t).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome)
	go func() {
		var once sync.Once
		res, err := s.GenerateStream(context.Background(), Request{Prompt: "The history of Rome", Params: greedy(2000)}, func(string) bool {
			once.Do(func() { close(started) })
			return true
		})
		done <- outcome{res, err}
	}()
	<-started
	s.Close()
	o := <-done
	if o.err != nil || o.res.FinishReason != FinishCancelled || o.res.GeneratedTokens >= 2000 {
		t.Errorf("generation under Close: %+v, %v", o.res, o.err)
	}
}

// Many goroutines generate at once on one engine (the library batches them); greedy decoding
// must give each exactly what it gives alone.
func TestConcurrentGeneration(t *testing.T) {
	e := sharedEngine(t)
	prompts := []string{"The capital of France is", "Water boils at", "The largest planet is", "In 1492,"}
	alone := make([]string, len(prompts))
	for i, p := range prompts {
		res, err := newSession(t, e).Generate(t.Context(), Request{Prompt: p, Params: greedy(24)})
		if err != nil {
			t.Fatal(err)
		}
		alone[i] = res.Text
	}
	set, err := e.Compile(Regex("[A-Za-z ,.]{1,40}"))
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	const goroutines = 12
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			s, err := e.NewSession()
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			i := g % len(prompts)
			if g >= 8 {
				// Some share one compiled constraint set, and stream.
				var streamed strings.Builder
				res, err := s.GenerateStream(context.Background(), Request{Prompt: prompts[i], Params: greedy(24), Compiled: []*ConstraintSet{set}},
					func(piece string) bool { streamed.WriteString(piece); return true })
				if err != nil || res.Text != streamed.String() || !res.ConstraintsSatisfied {
					errs <- fmt.Errorf("goroutine %d (constrained): %+v, %v", g, res, err)
				}
				return
			}
			res, err := s.Generate(context.Background(), Request{Prompt: prompts[i], Params: greedy(24)})
			if err != nil {
				errs <- err
			} else if res.Text != alone[i] {
				errs <- fmt.Errorf("goroutine %d: %q, alone %q", g, res.Text, alone[i])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A session whose prompt opens like another's copies that prefix; with PrefixCacheMiB < 0 a
// closed session's prefix is not kept.
func TestSharedPromptPrefix(t *testing.T) {
	opening := make([]uint32, 40)
	for i := range opening {
		opening[i] = uint32(100 + 37*i)
	}
	prompt := func(tail uint32) []uint32 { return append(append([]uint32(nil), opening...), tail) }
	generate := func(s *Session, tail uint32) *Result {
		t.Helper()
		res, err := s.Generate(context.Background(), Request{Tokens: prompt(tail), Params: greedy(4)})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	e := sharedEngine(t)
	first, second := newSession(t, e), newSession(t, e)
	generate(first, 1)
	if res := generate(second, 2); res.CachedTokens != len(opening) {
		t.Errorf("second session copied %d tokens, want the %d-token opening", res.CachedTokens, len(opening))
	}

	none, err := NewEngine(Options{ModelPath: modelPath(t), PrefixCacheMiB: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	gone := newSession(t, none)
	generate(gone, 1)
	gone.Close()
	if res := generate(newSession(t, none), 2); res.CachedTokens != 0 {
		t.Errorf("with PrefixCacheMiB < 0 a closed session's prefix was reused (%d tokens)", res.CachedTokens)
	}
}

// A context cancelled as the call starts, before the library has registered it, still ends
// the call: the cancel sticks through the call's token (no window, no re-cancelling).
func TestCancelRacingTheCallsStart(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	for round := range 40 {
		ctx, cancel := context.WithCancel(t.Context())
		go cancel()
		res, err := s.Generate(ctx, Request{Prompt: "The history of Rome", Params: greedy(300)})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: the call outlived its cancelled context: %+v, %v", round, res, err)
		}
		if res != nil && (res.FinishReason != FinishCancelled || res.GeneratedTokens >= 300) {
			t.Fatalf("round %d: %+v", round, res)
		}
	}
}

func TestConstraintSetupTimeIsReportedOrPaidAtLoad(t *testing.T) {
	e, err := NewEngine(Options{ModelPath: modelPath(t), PrepareConstraints: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.ConstraintSetupTime() <= 0 {
		t.Errorf("PrepareConstraints: setup time %v", e.ConstraintSetupTime())
	}
	s := newSession(t, e)
	res, err := s.Generate(t.Context(), Request{Prompt: "Count:", Params: greedy(4), Constraints: []Constraint{Regex("[0-9]+")}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ConstraintSetupTime != 0 || res.Validation.Stats == nil || res.Validation.Stats.SetupTimeMicros != 0 {
		t.Errorf("built at load, yet the first request paid %v (%+v)", res.ConstraintSetupTime, res.Validation.Stats)
	}
}
