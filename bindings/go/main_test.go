package maze

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The tests run on the default model (SmolLM2-135M-Instruct Q4_1), fetched by `make model`;
// MAZE_MODEL overrides its path.
func modelPath(t testing.TB) string {
	t.Helper()
	path, err := findModel()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func findModel() (string, error) {
	path := os.Getenv("MAZE_MODEL")
	if path == "" {
		dir := os.Getenv("MAZE_MODEL_DIR")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".cache", "maze", "models")
		}
		path = filepath.Join(dir, "SmolLM2-135M-Instruct.Q4_1.gguf")
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("the default model is missing (%v): run `make model` or set MAZE_MODEL", err)
	}
	return path, nil
}

var shared struct {
	once   sync.Once
	engine *Engine
	err    error
}

// sharedEngine is one engine for the tests that do not close it (loading once keeps the suite
// quick); tests about closing load their own.
func sharedEngine(t testing.TB) *Engine {
	t.Helper()
	shared.once.Do(func() {
		path, err := findModel()
		if err != nil {
			shared.err = err
			return
		}
		shared.engine, shared.err = NewEngine(Options{ModelPath: path, Threads: 2, Seed: 7})
	})
	if shared.err != nil {
		t.Fatalf("loading the model: %v", shared.err)
	}
	return shared.engine
}

func newSession(t testing.TB, e *Engine) *Session {
	t.Helper()
	s, err := e.NewSession()
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// greedy returns default parameters with greedy decoding and at most n tokens.
func greedy(n int) *GenerateParams {
	p := DefaultGenerateParams()
	p.Temperature = 0
	p.MaxTokens = n
	return &p
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.engine != nil {
		shared.engine.Close()
	}
	os.Exit(code)
}
