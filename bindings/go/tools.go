package maze

/*
#include "maze.h"
*/
import "C"

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"unsafe"
)

// Tool is a function the model may call: a name (^[A-Za-z0-9_-]{1,64}$, unique in a request),
// what it does, and the JSON schema of its arguments object. ToolFor derives it from a Go
// struct.
type Tool struct {
	Name        string
	Description string
	// Parameters is a JSON schema for the arguments object; empty = any object.
	Parameters json.RawMessage
	// err is SchemaFor's refusal of ToolFor's type, reported by the request that uses the tool.
	err error
}

// ToolFor declares a tool whose arguments are a T: its parameters are SchemaFor[T], so every
// call the model makes decodes into a T with DecodeArguments[T]. T is normally a struct (the
// arguments are a JSON object). A type SchemaFor refuses makes every request that declares the
// tool fail with that error (ErrInvalidArgument), so the declaration can stay a one-liner:
//
//	var weather = maze.ToolFor[WeatherArgs]("get_weather", "Current weather in a city")
func ToolFor[T any](name, description string) Tool {
	tool := Tool{Name: name, Description: description}
	t := reflect.TypeFor[T]()
	s, err := schemaOf(t)
	if err == nil {
		tool.Parameters, err = json.Marshal(s)
	}
	if err != nil {
		tool.err = &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("tool %q: the schema of %s: %v", name, t, err)}
	}
	return tool
}

// ToolChoice says whether and which tools the model must call. The zero value is
// ToolChoiceAuto.
type ToolChoice struct {
	kind uint32
	name string
}

var (
	// ToolChoiceAuto lets the model answer in text or call tools, as it decides (the default).
	ToolChoiceAuto = ToolChoice{kind: C.MAZE_TOOL_CHOICE_AUTO}
	// ToolChoiceNone shows the tools to the model, but it answers in text.
	ToolChoiceNone = ToolChoice{kind: C.MAZE_TOOL_CHOICE_NONE}
	// ToolChoiceRequired makes the reply one or more calls and nothing else.
	ToolChoiceRequired = ToolChoice{kind: C.MAZE_TOOL_CHOICE_REQUIRED}
)

// ToolChoiceNamed makes the reply exactly one call of the named tool, which must be declared.
func ToolChoiceNamed(name string) ToolChoice {
	return ToolChoice{kind: C.MAZE_TOOL_CHOICE_NAMED, name: name}
}

// String is "auto", "none", "required" or the named tool's name.
func (c ToolChoice) String() string {
	switch c.kind {
	case C.MAZE_TOOL_CHOICE_NONE:
		return "none"
	case C.MAZE_TOOL_CHOICE_REQUIRED:
		return "required"
	case C.MAZE_TOOL_CHOICE_NAMED:
		return fmt.Sprintf("named %q", c.name)
	}
	return "auto"
}

// ToolFormat is how tool calls are written in the prompt and the reply (maze_tool_format).
type ToolFormat uint32

// The tool formats of maze.h.
const (
	// ToolFormatTemplate is the chat template's own format (the default); a request with tools
	// fails with ErrUnsupported when the template cannot render them: use ToolFormatGeneric.
	ToolFormatTemplate ToolFormat = C.MAZE_TOOL_FORMAT_TEMPLATE
	// ToolFormatHermes: Qwen2.5, Qwen3, Hermes 2/3, `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
	ToolFormatHermes ToolFormat = C.MAZE_TOOL_FORMAT_HERMES
	// ToolFormatLlama3: Llama 3.1-3.3, one JSON object `{"name": ..., "parameters": ...}`.
	ToolFormatLlama3 ToolFormat = C.MAZE_TOOL_FORMAT_LLAMA3
	// ToolFormatMistral: Mistral Nemo / Small, `[TOOL_CALLS][{"name": ..., "arguments": ...}]`.
	ToolFormatMistral ToolFormat = C.MAZE_TOOL_FORMAT_MISTRAL
	// ToolFormatGeneric works with any template: the tools are described in a system message
	// and calls are written as Hermes writes them (docs/TOOLS.md).
	ToolFormatGeneric ToolFormat = C.MAZE_TOOL_FORMAT_GENERIC
)

// ToolCall is one call the model made (Result.ToolCalls), or one an assistant message of the
// history made (Message.ToolCalls).
type ToolCall struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Arguments is a JSON object as text; for a call cut short, the part generated.
	Arguments string `json:"arguments"`
	// Satisfied: the call is complete and was generated under the tool grammar throughout, so
	// Arguments validates against the tool's schema. Only results set it.
	Satisfied bool `json:"-"`
}

// ToolCallDelta is a piece of a streamed tool call (Request.OnToolCall, Chunk.ToolCall): the
// first piece of a call has its ID and Name and empty Arguments; each later piece a fragment
// of its arguments JSON, in order, with ID and Name empty.
type ToolCallDelta struct {
	// Index is the call's place in the reply, from 0.
	Index     int
	ID        string
	Name      string
	Arguments string
}

// ErrToolArguments is returned by DecodeArguments when a call's arguments do not decode into
// the type (unknown field, wrong type, incomplete call).
var ErrToolArguments = errors.New("maze: tool call arguments do not decode")

// DecodeArguments decodes a call's arguments into a T, strictly: an unknown field, a value of
// the wrong type or text after the object fail with an error that matches ErrToolArguments.
func DecodeArguments[T any](call ToolCall) (T, error) {
	var value T
	dec := json.NewDecoder(bytes.NewReader([]byte(call.Arguments)))
	dec.DisallowUnknownFields()
	err := dec.Decode(&value)
	if err == nil && dec.More() {
		err = errors.New("text after the arguments object")
	}
	if err != nil {
		incomplete := ""
		if !call.Satisfied {
			incomplete = " (the call is not marked satisfied: it may be cut short)"
		}
		return value, fmt.Errorf("%w: call %s of %q into %s: %v%s", ErrToolArguments, call.ID, call.Name, reflect.TypeFor[T](), err, incomplete)
	}
	return value, nil
}

// AssistantMessage is the assistant turn a result adds to the history: its text and its tool
// calls, to send back with the tools' results.
func (r *Result) AssistantMessage() Message {
	return Message{Role: "assistant", Content: r.Text, ToolCalls: r.ToolCalls}
}

// ToolMessage is the "tool" message that answers call with content (the tool's result, often
// JSON).
func ToolMessage(call ToolCall, content string) Message {
	return Message{Role: "tool", Content: content, ToolCallID: call.ID}
}

// toolParams sets the request's tools in the C parameters.
func (m *cMemory) toolParams(req *Request, c *C.maze_generate_params) error {
	if len(req.Tools) > 0 {
		arr := unsafe.Slice((*C.maze_tool)(m.alloc(unsafe.Sizeof(C.maze_tool{})*uintptr(len(req.Tools)))), len(req.Tools))
		for i, tool := range req.Tools {
			if tool.err != nil {
				return tool.err
			}
			arr[i] = C.maze_tool{name: m.str(tool.Name), description: m.str(tool.Description), parameters_json: m.str(string(tool.Parameters))}
		}
		c.tools, c.n_tools = &arr[0], C.size_t(len(req.Tools))
	}
	c.tool_choice = C.uint32_t(req.ToolChoice.kind)
	c.tool_choice_name = m.str(req.ToolChoice.name)
	c.parallel_tool_calls = C.bool(req.ParallelToolCalls == nil || *req.ParallelToolCalls)
	var err error
	if c.max_tool_calls, err = u32("Request.MaxToolCalls", req.MaxToolCalls); err != nil {
		return err
	}
	c.tool_format = C.uint32_t(req.ToolFormat)
	return nil
}

// toolCalls copies a C array of calls into C memory.
func (m *cMemory) toolCalls(calls []ToolCall) (*C.maze_tool_call, C.size_t) {
	if len(calls) == 0 {
		return nil, 0
	}
	arr := unsafe.Slice((*C.maze_tool_call)(m.alloc(unsafe.Sizeof(C.maze_tool_call{})*uintptr(len(calls)))), len(calls))
	for i, call := range calls {
		arr[i] = C.maze_tool_call{id: m.str(call.ID), name: m.str(call.Name), arguments: m.str(call.Arguments)}
	}
	return &arr[0], C.size_t(len(calls))
}

func goString(s C.maze_string) string {
	if s.len == 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(s.data)), int(s.len)))
}

// toolCallDelta copies a C maze_tool_call_delta, valid only during its callback, into Go.
func toolCallDelta(p unsafe.Pointer) ToolCallDelta {
	d := (*C.maze_tool_call_delta)(p)
	return ToolCallDelta{Index: int(d.index), ID: goString(d.id), Name: goString(d.name), Arguments: goString(d.arguments)}
}

// resultToolCalls copies a result's calls into Go.
func resultToolCalls(r *C.maze_result) []ToolCall {
	n := int(C.maze_result_tool_call_count(r))
	if n == 0 {
		return nil
	}
	calls := make([]ToolCall, 0, n)
	for i := range n {
		var c C.maze_tool_call
		if C.maze_result_tool_call(r, C.size_t(i), &c, nil) != C.MAZE_STATUS_OK {
			break
		}
		calls = append(calls, ToolCall{
			ID:        goString(c.id),
			Name:      goString(c.name),
			Arguments: goString(c.arguments),
			Satisfied: bool(C.maze_result_tool_call_satisfied(r, C.size_t(i))),
		})
	}
	return calls
}
