// A tool-calling agent from Go: the model calls Go functions declared from their argument
// structs, the loop runs them and sends their results back, until the model answers in text.
//
//	go run ./examples/agent Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
//	go run ./examples/agent -generic -require SmolLM2-135M-Instruct.Q4_1.gguf
//
// -generic is for a model whose chat template cannot render tools (SmolLM2): the tools are
// described in a system message instead. -require makes the first reply a call, for a model
// too small to choose one by itself.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	maze "github.com/maze-ai/maze/bindings/go"
)

// The tools' arguments: the model's calls are enforced against these types' schemas.
type WeatherArgs struct {
	City string `json:"city" maze:"description=the city, e.g. Paris"`
	Unit string `json:"unit,omitempty" maze:"enum=celsius|fahrenheit"`
}

type AddArgs struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

// toolFunc is a declared tool and the Go function that runs its calls.
type toolFunc struct {
	tool maze.Tool
	run  func(maze.ToolCall) (string, error)
}

// function declares a tool from a Go function of its typed arguments; the call's arguments are
// decoded strictly into T and the result is sent back to the model as JSON.
func function[T any](name, description string, f func(T) (any, error)) toolFunc {
	return toolFunc{
		tool: maze.ToolFor[T](name, description),
		run: func(call maze.ToolCall) (string, error) {
			args, err := maze.DecodeArguments[T](call)
			if err != nil {
				return "", err
			}
			out, err := f(args)
			if err != nil {
				return "", err
			}
			text, err := json.Marshal(out)
			return string(text), err
		},
	}
}

var toolbox = []toolFunc{
	function("get_weather", "Get the current weather in a city", func(a WeatherArgs) (any, error) {
		temp := 18.0
		if a.Unit == "fahrenheit" {
			temp = temp*9/5 + 32
		}
		return map[string]any{"city": a.City, "temperature": temp, "conditions": "light rain"}, nil
	}),
	function("add", "Add two numbers", func(a AddArgs) (any, error) {
		return map[string]any{"sum": a.A + a.B}, nil
	}),
}

func main() {
	generic := flag.Bool("generic", false, "describe the tools in a system message (templates without tools)")
	require := flag.Bool("require", false, "make the first reply a tool call")
	question := flag.String("q", "What is the weather like in Paris right now?", "the user's question")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: agent [-generic] [-require] [-q QUESTION] MODEL.gguf")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *question, *generic, *require); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(modelPath, question string, generic, require bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
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

	tools := make([]maze.Tool, len(toolbox))
	byName := map[string]toolFunc{}
	for i, t := range toolbox {
		tools[i] = t.tool
		byName[t.tool.Name] = t
	}
	format := maze.ToolFormatTemplate
	if generic {
		format = maze.ToolFormatGeneric
	}
	params := maze.DefaultGenerateParams()
	params.Temperature = 0
	params.MaxTokens = 200

	history := []maze.Message{{Role: "user", Content: question}}
	fmt.Println("user:", question)
	// Small models tend to call the same tool again once they have its result: a reply whose
	// calls all repeat earlier ones is dropped and asked again with tool choice none, which
	// makes the model answer in text. The last round answers in text too.
	done := map[string]bool{}
	const rounds = 4
	answerNow := false
	for round := range rounds {
		choice := maze.ToolChoiceAuto
		switch {
		case round == 0 && require:
			choice = maze.ToolChoiceRequired
		case answerNow || round == rounds-1:
			choice = maze.ToolChoiceNone
		}
		fmt.Print("assistant: ")
		res, err := session.GenerateStream(ctx, maze.Request{
			Messages:   history,
			Params:     &params,
			Tools:      tools,
			ToolChoice: choice,
			ToolFormat: format,
			OnToolCall: func(d maze.ToolCallDelta) bool {
				if d.Name != "" {
					fmt.Printf("\n  call #%d %s: ", d.Index, d.Name)
				}
				fmt.Print(d.Arguments)
				return true
			},
		}, func(text string) bool {
			fmt.Print(text)
			return true
		})
		if err != nil {
			return err
		}
		fmt.Printf("\n  (%s, %d tokens)\n", res.FinishReason, res.GeneratedTokens)
		if len(res.ToolCalls) == 0 {
			return nil
		}
		repeated := true
		for _, call := range res.ToolCalls {
			repeated = repeated && done[call.Name+" "+call.Arguments]
		}
		if repeated {
			fmt.Println("  (every call repeats an earlier one: asking for the answer)")
			answerNow = true
			continue
		}
		// Run every call and send the results back as tool messages.
		history = append(history, res.AssistantMessage())
		for _, call := range res.ToolCalls {
			done[call.Name+" "+call.Arguments] = true
			result := ""
			if t, ok := byName[call.Name]; !ok {
				result = `{"error": "no such tool"}`
			} else if out, err := t.run(call); err != nil {
				result = fmt.Sprintf(`{"error": %q}`, err)
			} else {
				result = out
			}
			fmt.Printf("tool %s(%s) -> %s\n", call.Name, strings.TrimSpace(call.Arguments), result)
			history = append(history, maze.ToolMessage(call, result))
		}
	}
	return nil
}
