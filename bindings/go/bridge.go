package maze

// C trampolines between the library's callbacks and the exported Go functions of callbacks.go.
// The runtime/cgo.Handle travels as an integer and becomes `void *userdata` only in C, so Go
// never turns an integer into a pointer.

/*
#include <stdint.h>
#include "maze.h"

extern _Bool mazeGoStream(char *text, size_t n, uintptr_t handle);
extern _Bool mazeGoProgress(float progress, uintptr_t handle);
extern _Bool mazeGoToolCall(void *delta, uintptr_t handle);

static bool maze_go_stream(const char *text, size_t n, void *userdata) {
	return mazeGoStream((char *)text, n, (uintptr_t)userdata);
}

static bool maze_go_progress(float progress, void *userdata) {
	return mazeGoProgress(progress, (uintptr_t)userdata);
}

static bool maze_go_tool_call(const maze_tool_call_delta *delta, void *userdata) {
	return mazeGoToolCall((void *)delta, (uintptr_t)userdata);
}

static void maze_go_set_tool_callback(maze_generate_params *params, uintptr_t handle) {
	params->tool_callback = handle ? maze_go_tool_call : NULL;
	params->tool_userdata = (void *)handle;
}

static void maze_go_set_progress(maze_engine_params *params, uintptr_t handle) {
	params->progress_callback = handle ? maze_go_progress : NULL;
	params->progress_userdata = (void *)handle;
}

enum { MAZE_GO_PROMPT, MAZE_GO_TOKENS, MAZE_GO_CHAT };

// One entry point for the three generate functions, so the callback wiring is written once.
static maze_status maze_go_generate(int input, const maze_session *session,
		const char *prompt, size_t prompt_len,
		const uint32_t *tokens, size_t n_tokens,
		const maze_chat_message *messages, size_t n_messages,
		const maze_generate_params *params, uintptr_t handle,
		maze_result **out, maze_error **error) {
	maze_stream_callback cb = handle ? maze_go_stream : NULL;
	void *userdata = (void *)handle;
	switch (input) {
	case MAZE_GO_TOKENS:
		return maze_session_generate_tokens(session, tokens, n_tokens, params, cb, userdata, out, error);
	case MAZE_GO_CHAT:
		return maze_session_chat(session, messages, n_messages, params, cb, userdata, out, error);
	default:
		return maze_session_generate(session, prompt, prompt_len, params, cb, userdata, out, error);
	}
}
*/
import "C"

import "runtime/cgo"

type generateInput int

const (
	inputPrompt   generateInput = C.MAZE_GO_PROMPT
	inputTokens   generateInput = C.MAZE_GO_TOKENS
	inputMessages generateInput = C.MAZE_GO_CHAT
)

// generateArgs is what one generate call passes to C; the pointers are C memory or Go memory
// without Go pointers (see cMemory).
type generateArgs struct {
	input     generateInput
	prompt    *C.char
	promptLen C.size_t
	tokens    *C.uint32_t
	nTokens   C.size_t
	messages  *C.maze_chat_message
	nMessages C.size_t
	params    *C.maze_generate_params
	callback  cgo.Handle // 0: no streaming
}

func callGenerate(session *C.maze_session, a *generateArgs, out **C.maze_result, cerr **C.maze_error) C.enum_maze_status {
	return C.enum_maze_status(C.maze_go_generate(C.int(a.input), session, a.prompt, a.promptLen, a.tokens, a.nTokens,
		a.messages, a.nMessages, a.params, C.uintptr_t(a.callback), out, cerr))
}

func setProgressCallback(params *C.maze_engine_params, h cgo.Handle) {
	C.maze_go_set_progress(params, C.uintptr_t(h))
}

func setToolCallback(params *C.maze_generate_params, h cgo.Handle) {
	C.maze_go_set_tool_callback(params, C.uintptr_t(h))
}
