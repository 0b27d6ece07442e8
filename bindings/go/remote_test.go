package maze

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// startServer runs the repository's maze-server on loopback for the test; it stops with the
// test (and with this process: its stdin closes).
func startServer(t *testing.T, key string) string {
	t.Helper()
	bin, err := filepath.Abs("../../target/release/maze-server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("maze-server is not built (%v): run `make server`", err)
	}
	cmd := exec.Command(bin, "--model", modelPath(t), "--addr", "127.0.0.1:0", "--api-key", key, "--threads", "2", "--stop-on-stdin-eof")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("maze-server did not start: %v", err)
	}
	for _, word := range strings.Fields(line) {
		if strings.HasPrefix(word, "http://") {
			return word
		}
	}
	t.Fatalf("no address in %q", line)
	return ""
}

// The same API on a remote engine: maze-server over the Maze protocol and the OpenAI one.
func TestRemoteEngine(t *testing.T) {
	url := startServer(t, "go-key")
	local := sharedEngine(t)
	want, err := newSession(t, local).Generate(t.Context(), Request{Prompt: "The capital of France is", Params: greedy(12)})
	if err != nil {
		t.Fatal(err)
	}
	for _, protocol := range []Protocol{ProtocolMaze, ProtocolOpenAI} {
		remote, err := NewEngine(Options{Remote: &Remote{Endpoint: url, APIKey: "go-key", Protocol: protocol, Retries: -1}})
		if err != nil {
			t.Fatalf("protocol %d: %v", protocol, err)
		}
		if remote.Info().Name != local.Info().Name || remote.Info().Architecture != "remote" {
			t.Errorf("remote info %+v", remote.Info())
		}
		if err := remote.Health(); err != nil {
			t.Errorf("health: %v", err)
		}
		if models, err := remote.Models(); err != nil || len(models) != 1 || models[0] != local.Info().Name {
			t.Errorf("models %v, %v", models, err)
		}
		s := newSession(t, remote)
		var streamed strings.Builder
		res, err := s.GenerateStream(t.Context(), Request{Prompt: "The capital of France is", Params: greedy(12)}, func(p string) bool {
			streamed.WriteString(p)
			return true
		})
		if err != nil || res.Text != want.Text || streamed.String() != want.Text {
			t.Errorf("protocol %d: %q (streamed %q), want %q: %v", protocol, res.Text, streamed.String(), want.Text, err)
		}
		answer, res, err := GenerateJSON[struct {
			OK bool `json:"ok"`
		}](t.Context(), s, Request{Messages: []Message{{Role: "user", Content: "Is water wet? Answer as JSON."}}, Params: greedy(20)})
		if err != nil || !res.ConstraintsSatisfied {
			t.Errorf("protocol %d: typed output %+v from %q: %v", protocol, answer, res.Text, err)
		}
		if _, err := remote.Tokenize("x", false, false); !errors.Is(err, ErrUnsupported) {
			t.Errorf("tokenize on a remote engine: %v", err)
		}
		if protocol == ProtocolOpenAI {
			_, err := s.Generate(t.Context(), Request{Prompt: "x", Constraints: []Constraint{TokenMask([]uint32{1}, nil)}})
			expectError(t, err, ErrUnsupported, "token masks")
		}
		remote.Close()
	}
	_, err = NewEngine(Options{Remote: &Remote{Endpoint: url, APIKey: "wrong", Retries: -1}})
	expectError(t, err, ErrInvalidArgument, "401")
}
