package maze

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

type addArgs struct {
	A int `json:"a"`
	B int `json:"b"`
}

type weatherArgs struct {
	City string `json:"city" maze:"description=the city's name"`
	Unit string `json:"unit,omitempty" maze:"enum=celsius|fahrenheit"`
}

// The tests run on SmolLM2, whose template has no tools: the generic format describes them in
// a system message (Qwen's own template is exercised by examples/agent).
func toolRequest(ask string) Request {
	no := false
	return Request{
		Messages:          []Message{{Role: "user", Content: ask}},
		Params:            greedy(60),
		Tools:             []Tool{ToolFor[addArgs]("add", "Add two integers"), ToolFor[weatherArgs]("get_weather", "Current weather in a city")},
		ToolChoice:        ToolChoiceNamed("add"),
		ToolFormat:        ToolFormatGeneric,
		ParallelToolCalls: &no,
	}
}

func TestToolForDerivesTheSchema(t *testing.T) {
	tool := ToolFor[weatherArgs]("get_weather", "Current weather")
	if tool.err != nil {
		t.Fatal(tool.err)
	}
	want, err := SchemaFor[weatherArgs]()
	if err != nil {
		t.Fatal(err)
	}
	if string(tool.Parameters) != want || tool.Name != "get_weather" || tool.Description != "Current weather" {
		t.Fatalf("ToolFor = %+v, want parameters %s", tool, want)
	}
	var schema map[string]any
	if err := json.Unmarshal(tool.Parameters, &schema); err != nil || schema["type"] != "object" {
		t.Fatalf("parameters %s: %v", tool.Parameters, err)
	}
}

func TestDecodeArgumentsIsStrict(t *testing.T) {
	got, err := DecodeArguments[addArgs](ToolCall{ID: "c1", Name: "add", Arguments: `{"a": 2, "b": 3}`, Satisfied: true})
	if err != nil || got != (addArgs{2, 3}) {
		t.Fatalf("DecodeArguments = %+v, %v", got, err)
	}
	for _, bad := range []string{`{"a": 2, "b": 3, "c": 4}`, `{"a": "two"}`, `{"a": 2`, `{"a": 2} {}`, ``} {
		_, err := DecodeArguments[addArgs](ToolCall{ID: "c1", Name: "add", Arguments: bad})
		if !errors.Is(err, ErrToolArguments) || !strings.Contains(err.Error(), `"add"`) {
			t.Errorf("DecodeArguments(%q) = %v, want ErrToolArguments naming the tool", bad, err)
		}
	}
}

func TestToolCallRequiredDecodesIntoTheStruct(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	req := toolRequest("What is 2 plus 3?")
	req.ToolChoice = ToolChoiceRequired
	req.Tools = req.Tools[:1]
	var deltas []ToolCallDelta
	req.OnToolCall = func(d ToolCallDelta) bool {
		deltas = append(deltas, d)
		return true
	}
	res, err := s.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.FinishReason != FinishToolCalls || len(res.ToolCalls) != 1 {
		t.Fatalf("finish %v with %d calls (text %q), want one call", res.FinishReason, len(res.ToolCalls), res.Text)
	}
	call := res.ToolCalls[0]
	if call.Name != "add" || call.ID == "" || !call.Satisfied || !res.ConstraintsSatisfied {
		t.Fatalf("call %+v (constraints satisfied %v)", call, res.ConstraintsSatisfied)
	}
	args, err := DecodeArguments[addArgs](call)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("add(%+v) from %s", args, call.Arguments)

	// The streamed pieces: the start with id and name, then fragments that make the arguments.
	if len(deltas) == 0 || deltas[0].ID != call.ID || deltas[0].Name != "add" || deltas[0].Arguments != "" {
		t.Fatalf("first delta %+v, want the call's id and name", deltas)
	}
	var joined strings.Builder
	for _, d := range deltas[1:] {
		if d.Index != 0 || d.ID != "" || d.Name != "" {
			t.Errorf("argument delta %+v carries more than a fragment", d)
		}
		joined.WriteString(d.Arguments)
	}
	if joined.String() != call.Arguments {
		t.Fatalf("streamed arguments %q, the call's %q", joined.String(), call.Arguments)
	}

	// The answer goes back as a tool message; the model continues in text.
	history := append(req.Messages, res.AssistantMessage(), ToolMessage(call, "5"))
	req2 := toolRequest("")
	req2.Messages, req2.ToolChoice, req2.OnToolCall = history, ToolChoiceNone, nil
	answer, err := s.Generate(context.Background(), req2)
	if err != nil {
		t.Fatal(err)
	}
	if len(answer.ToolCalls) != 0 || answer.FinishReason == FinishToolCalls {
		t.Fatalf("tool choice none made calls: %+v", answer.ToolCalls)
	}
	t.Logf("answer: %q", answer.Text)
}

func TestToolCallStreamsThroughStream(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	var args strings.Builder
	var name string
	var res *Result
	for chunk, err := range s.Stream(context.Background(), toolRequest("What is 10 plus 32?")) {
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case chunk.ToolCall != nil && chunk.ToolCall.Name != "":
			name = chunk.ToolCall.Name
		case chunk.ToolCall != nil:
			args.WriteString(chunk.ToolCall.Arguments)
		case chunk.Result != nil:
			res = chunk.Result
		}
	}
	if res == nil || len(res.ToolCalls) != 1 || name != "add" || args.String() != res.ToolCalls[0].Arguments {
		t.Fatalf("streamed %q(%q), result %+v", name, args.String(), res)
	}
	if _, err := DecodeArguments[addArgs](res.ToolCalls[0]); err != nil {
		t.Fatal(err)
	}
}

func TestToolCallCallbackStops(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	req := toolRequest("What is 2 plus 3?")
	req.OnToolCall = func(d ToolCallDelta) bool { return d.Name == "" }
	res, err := s.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.FinishReason != FinishCancelled {
		t.Fatalf("finish %v, want cancelled by the callback", res.FinishReason)
	}
	for _, c := range res.ToolCalls {
		if c.Satisfied {
			t.Fatalf("a call cut short is reported satisfied: %+v", c)
		}
	}

	req.OnToolCall = func(ToolCallDelta) bool { panic("tool callback panic") }
	defer func() {
		if r := recover(); r != "tool callback panic" {
			t.Fatalf("recovered %v, want the callback's panic", r)
		}
	}()
	s.Generate(context.Background(), req)
	t.Fatal("the panic was not re-raised")
}

func TestToolErrors(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	ctx := context.Background()
	cases := []struct {
		name   string
		edit   func(*Request)
		target error
		want   string
	}{
		{"bad tool name", func(r *Request) { r.Tools[0].Name = "add two" }, ErrInvalidArgument, "does not match"},
		{"duplicate name", func(r *Request) { r.Tools[1].Name = "add" }, ErrInvalidArgument, "already declared"},
		{"undeclared choice", func(r *Request) { r.ToolChoice = ToolChoiceNamed("search") }, ErrInvalidArgument, "search"},
		{"schema not an object", func(r *Request) { r.Tools[0].Parameters = json.RawMessage(`{"type":"string"}`) }, ErrInvalidConstraint, "add"},
		{"unknown tool_call_id", func(r *Request) {
			r.Messages = append(r.Messages,
				Message{Role: "assistant", ToolCalls: []ToolCall{{ID: "call_1", Name: "add", Arguments: `{"a":1,"b":2}`}}},
				Message{Role: "tool", Content: "3", ToolCallID: "call_9"})
		}, ErrInvalidArgument, "call_9"},
		{"template without tools", func(r *Request) { r.ToolFormat = ToolFormatTemplate }, ErrUnsupported, ""},
		{"type without a schema", func(r *Request) { r.Tools = append(r.Tools, ToolFor[chan int]("pipe", "")) }, ErrInvalidArgument, "pipe"},
		{"negative max calls", func(r *Request) { r.MaxToolCalls = -1 }, ErrInvalidArgument, "MaxToolCalls"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := toolRequest("What is 2 plus 3?")
			c.edit(&req)
			res, err := s.Generate(ctx, req)
			if !errors.Is(err, c.target) || !strings.Contains(err.Error(), c.want) || res != nil {
				t.Fatalf("got %v (result %v), want %v naming %q", err, res, c.target, c.want)
			}
		})
	}
}
