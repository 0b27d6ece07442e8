// Typed constrained generation from Go: stream a chat answer, then have the model fill a Go
// struct whose JSON schema is derived from the type.
//
//	go run ./examples/typed MODEL.gguf
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	maze "github.com/maze-ai/maze/bindings/go"
)

// Ticket is what the model must produce: every field is enforced token by token.
type Ticket struct {
	Title    string   `json:"title" maze:"maxLength=60"`
	Severity string   `json:"severity" maze:"enum=low|medium|high|critical"`
	Labels   []string `json:"labels" maze:"minItems=1;maxItems=3;enum=bug|ui|crash|network|docs"`
	Steps    []string `json:"steps" maze:"maxItems=4;maxLength=80"`
	Estimate *int     `json:"estimate_hours,omitempty" maze:"minimum=1;maximum=40"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: typed MODEL.gguf")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(modelPath string) error {
	// Ctrl-C cancels the running generation; the deadline bounds the whole program.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	engine, err := maze.NewEngine(maze.Options{ModelPath: modelPath})
	if err != nil {
		return err
	}
	defer engine.Close()
	session, err := engine.NewSession()
	if err != nil {
		return err
	}
	defer session.Close()

	report := "The app crashes when I rotate my phone on the settings screen, every time since the last update."
	fmt.Println("## Streaming a reply")
	params := maze.DefaultGenerateParams()
	params.MaxTokens = 60
	params.Temperature = 0.3
	for chunk, err := range session.Stream(ctx, maze.Request{
		Messages: []maze.Message{{Role: "user", Content: "Reply in one sentence to this bug report: " + report}},
		Params:   &params,
	}) {
		if err != nil {
			return err
		}
		fmt.Print(chunk.Text)
		if chunk.Result != nil {
			fmt.Printf("\n(%d tokens, %.0f tokens/s)\n", chunk.Result.GeneratedTokens, chunk.Result.TokensPerSecond)
		}
	}

	schema, err := maze.SchemaFor[Ticket]()
	if err != nil {
		return err
	}
	fmt.Println("\n## Filling a Ticket\nschema:", schema)
	params.MaxTokens = 200
	ticket, res, err := maze.GenerateJSON[Ticket](ctx, session, maze.Request{
		Messages: []maze.Message{{Role: "user", Content: "Turn this bug report into a ticket as JSON: " + report}},
		Params:   &params,
	})
	if errors.Is(err, maze.ErrIncomplete) {
		return fmt.Errorf("the ticket was cut short (raise MaxTokens): %w", err)
	}
	if err != nil {
		return err
	}
	fmt.Printf("output:   %s\n", res.Text)
	fmt.Printf("decoded:  title %q, severity %s, labels %v, %d steps", ticket.Title, ticket.Severity, ticket.Labels, len(ticket.Steps))
	if ticket.Estimate != nil {
		fmt.Printf(", estimate %d h", *ticket.Estimate)
	}
	fmt.Println()
	fmt.Printf("mask time %v per token, %d of %d tokens forced by the schema\n", res.MeanMaskTime, res.ForcedTokens, res.GeneratedTokens)
	return nil
}
