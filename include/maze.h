// maze.h: the C API of Maze, an embeddable LLM inference engine. Generated from src/ffi by
// `make header` (cbindgen, build.rs); do not edit.

// Ownership and threads: free each handle you receive once (NULL is a no-op), and no sooner than
// the last call on it returns; any function may be called from any thread.

// - A fallible function returns maze_status (MAZE_STATUS_OK = 0) and takes a trailing
//   `maze_error **error` (may be NULL) that receives an error object on failure (free it with
//   maze_error_free). Outputs are written only on success (except the needed size on
//   MAZE_STATUS_BUFFER_TOO_SMALL).
// - Text is UTF-8, passed as (pointer, length) or maze_string; invalid UTF-8 is reported as
//   MAZE_STATUS_INVALID_UTF8.
// - Parameter structs start with struct_size: initialise them with their *_default() function.
// - No Rust panic escapes: a caught panic becomes MAZE_STATUS_PANIC.
#ifndef MAZE_H
#define MAZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// Marks the functions whose status must be checked.
#if (defined(__cplusplus) && __cplusplus >= 201703L) || \
    (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 202311L)
#define MAZE_NODISCARD [[nodiscard]]
#elif defined(__GNUC__) || defined(__clang__)
#define MAZE_NODISCARD __attribute__((warn_unused_result))
#else
#define MAZE_NODISCARD
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ==== Handles (opaque; see the ownership and threads line at the top) ============================

// A cancel switch the caller owns, for generate calls (maze_generate_params.cancel). Unlike
// maze_session_cancel, it has no window to miss: once cancelled it stays cancelled, and every
// call given it ends with MAZE_FINISH_CANCELLED, at once if it starts after the cancel.
// Thread-safe: cancel it from any thread at any time; one token may serve many calls, on any
// sessions, at once. Free it with maze_cancel_token_free; calls already given it keep what they
// need.
typedef struct maze_cancel_token maze_cancel_token;

// One or more compiled constraints. Immutable and thread-safe: one handle may be used by any
// number of generations at once, and freed once none uses it... or any time: generations keep
// what they need. While the handle lives its compiled form is kept (on a local engine): the
// compile cache may evict it, generations using the handle never compile it again.
typedef struct maze_constraint maze_constraint;

// A loaded model with its worker, or a connection to a remote server. Thread-safe: every
// function taking a `const maze_engine *` may be called from any number of threads at once.
// Free it with maze_engine_free once no call on it is running; sessions opened on it stay
// valid after it is freed.
typedef struct maze_engine maze_engine;

// An error: a status and a message naming the problem. Created by the library on failure,
// owned by the caller, freed with maze_error_free. Immutable: safe to read from any thread.
typedef struct maze_error maze_error;

// A finished generation. Immutable: safe to read from any thread; free once with
// maze_result_free. Pointers it returns stay valid until then.
typedef struct maze_result maze_result;

// One conversation with its own KV cache. Thread-safe: maze_session_cancel may be called from
// any thread at any time; a generate call while another runs on the same session fails with
// MAZE_STATUS_BUSY. Must not be freed while a call on it is running.
typedef struct maze_session maze_session;


// ==== Version, status codes and errors ===========================================================

// ABI version of this header and library. Bumped on any incompatible change. Parameter structs
// carry `struct_size`, so adding fields at their end is compatible and does not bump it.
//
// 2: maze_chat_message starts with `struct_size` and carries tool calls (0 there is read as
// this header's size, so `{.role = ..., .content = ...}` initialisers keep working).
#define MAZE_ABI_VERSION 2

// Result of every fallible call. 0 is success.
typedef enum maze_status {
  // Success.
  MAZE_STATUS_OK = 0,
  // A required pointer argument was NULL.
  MAZE_STATUS_NULL_ARGUMENT = 1,
  // An argument is out of range or inconsistent.
  MAZE_STATUS_INVALID_ARGUMENT = 2,
  // A string argument is not valid UTF-8.
  MAZE_STATUS_INVALID_UTF8 = 3,
  // A file could not be opened or read.
  MAZE_STATUS_IO = 4,
  // The model file is not a usable GGUF model (not GGUF, truncated, missing data).
  MAZE_STATUS_MODEL_FORMAT = 5,
  // The model or request needs something this build does not support.
  MAZE_STATUS_UNSUPPORTED = 6,
  // Tokenizer construction or tokenization failed.
  MAZE_STATUS_TOKENIZER = 7,
  // The chat template is missing or failed to render.
  MAZE_STATUS_TEMPLATE = 8,
  // The prompt does not fit in the context window.
  MAZE_STATUS_CONTEXT_OVERFLOW = 9,
  // The session is already generating.
  MAZE_STATUS_BUSY = 10,
  // The operation was cancelled (e.g. loading aborted by the progress callback).
  MAZE_STATUS_CANCELLED = 11,
  // A caller-provided buffer is too small; the needed size was written.
  MAZE_STATUS_BUFFER_TOO_SMALL = 12,
  // The model computation failed.
  MAZE_STATUS_BACKEND = 13,
  // A parameter struct comes from a newer ABI than this library (struct_size too large).
  MAZE_STATUS_ABI_MISMATCH = 14,
  // An internal invariant broke (a bug; please report).
  MAZE_STATUS_INTERNAL = 15,
  // A panic was caught at the ABI boundary (a bug; please report). The library stays usable.
  MAZE_STATUS_PANIC = 16,
  // A constraint is malformed or unsupported: bad JSON schema, regex, grammar or token id.
  // The message names the constraint and the offending part.
  MAZE_STATUS_INVALID_CONSTRAINT = 17,
} maze_status;

// Library version as "MAJOR.MINOR.PATCH". Static string; never NULL.
const char *maze_version(void);

// ABI version of the loaded library; compare with MAZE_ABI_VERSION from the header you built with.
uint32_t maze_abi_version(void);

// Name of a status code, e.g. "MAZE_STATUS_BUSY". Static string; "MAZE_STATUS_UNKNOWN" for
// values this library does not define.
const char *maze_status_name(int32_t status);

// Status of an error; MAZE_STATUS_NULL_ARGUMENT for NULL.
enum maze_status maze_error_status(const struct maze_error *error);

// Message of an error (UTF-8, NUL-terminated), valid until maze_error_free. "" for NULL.
const char *maze_error_message(const struct maze_error *error);

// Frees an error. NULL is a no-op.
void maze_error_free(struct maze_error *error);


// ==== Engine: load a model (or connect to a server) and read its metadata ========================

// Seed value meaning "draw a fresh seed" (from the engine's seed sequence).
#define MAZE_SEED_RANDOM UINT64_MAX

// Loading progress: `progress` in [0, 1]. Runs on the thread that called maze_engine_new; it
// must not call maze_engine_* on the engine being loaded. Return false to abort the load
// (maze_engine_new then fails with MAZE_STATUS_CANCELLED).
typedef bool (*maze_progress_callback)(float progress,
                                       void *userdata);

// Engine settings. Initialise with maze_engine_params_default(), then change fields.
typedef struct maze_engine_params {
  // sizeof(maze_engine_params), set by maze_engine_params_default().
  uint32_t struct_size;
  // Compute threads; 0 = one per available core.
  uint32_t n_threads;
  // Context length (tokens) per session; 0 = the model's, capped at 8192.
  uint32_t n_ctx;
  // Reserved, keep 0.
  uint32_t reserved;
  // Seed for requests that bring none; MAZE_SEED_RANDOM = from the OS.
  uint64_t seed;
  // Optional tokenizer.json replacing the GGUF's tokenizer (NUL-terminated path, or NULL).
  const char *tokenizer_path;
  // Optional loading progress callback (NULL for none).
  maze_progress_callback progress_callback;
  // Passed to progress_callback.
  void *progress_userdata;
  // Compiled constraints the cache keeps; 0 = default (256).
  uint32_t constraint_cache_limit;
  // Remote backend: base URL of an inference server (NUL-terminated, e.g.
  // "http://127.0.0.1:8000"), used when model_path is NULL. NULL = from MAZE_ENDPOINT.
  const char *endpoint;
  // Remote: sent as "Authorization: Bearer KEY" (NULL = none, or MAZE_API_KEY).
  const char *api_key;
  // Remote: model name for OpenAI-compatible servers (NULL = the first one the server lists).
  const char *remote_model;
  // Remote: a maze_protocol value. Default MAZE_PROTOCOL_OPENAI.
  uint32_t protocol;
  // Remote: retries after connect errors, 429 and 5xx, with exponential backoff and jitter
  // (Retry-After honoured). Default 3; 0 = none.
  uint32_t max_retries;
  // Remote: time limit of requests that set no timeout_ms themselves; 0 = none.
  uint32_t request_timeout_ms;
  // Memory (MiB) for the keys and values of closed or reset sessions, kept so that a new
  // session whose prompt starts the same way (a shared system prompt) does not recompute
  // them. Default 64; 0 = keep none (prefixes of live sessions are still shared).
  uint32_t prefix_cache_mib;
  // -1 (default) = CPU; n >= 0 = CUDA device n, which needs a library built with the `cuda`
  // feature (else MAZE_STATUS_UNSUPPORTED) and runs candle's GPU forward pass.
  int32_t gpu_device;
  // Optional Jinja chat template (NUL-terminated UTF-8) replacing the model's own, or the
  // built-in one of its chat format for files without a template. NULL = the model's.
  const char *chat_template;
  // Deepest nesting a constraint may have (JSON-schema values, regex groups, Lark rules
  // referring to rules, Lark brackets); deeper ones fail with MAZE_STATUS_INVALID_CONSTRAINT.
  // 0 = default (128).
  uint32_t constraint_max_depth;
  // Largest constraint in bytes of text (schema JSON, grammar, patterns or options together);
  // 0 = default (262144).
  uint32_t constraint_max_bytes;
  // Longest a constraint may take to compile (first mask included, the engine's one-time
  // setup not: see prepare_constraints); 0 = default (10000 ms).
  uint32_t constraint_compile_timeout_ms;
  // Reserved, keep 0.
  uint32_t reserved2;
  // llguidance lexer fuel for building a lexer; 0 = default (1000000).
  uint64_t constraint_initial_lexer_fuel;
  // llguidance lexer fuel for one token mask; 0 = default (200000).
  uint64_t constraint_step_lexer_fuel;
  // llguidance Earley items in one row; 0 = default (2000).
  uint32_t constraint_max_items_in_row;
  // llguidance Earley items for one token mask; 0 = default (50000).
  uint32_t constraint_step_max_items;
  // llguidance lexer states; 0 = default (250000).
  uint32_t constraint_max_lexer_states;
  // llguidance grammar symbols after compilation; 0 = default (500000).
  uint32_t constraint_max_grammar_size;
  // Match very large regexes against the whole vocabulary while building the lexer (faster
  // masks, slower compilation). Default true.
  bool constraint_precompute_large_lexemes;
  // Build the one-time constraint setup (token trie and parser factory: 0.1-1 s, growing
  // with the vocabulary) while loading, instead of in the first constrained request
  // (maze_result_constraint_setup_time_us). Default false.
  bool prepare_constraints;
} maze_engine_params;

// Default engine settings (all cores, model context, random seed, no callback).
struct maze_engine_params maze_engine_params_default(void);

// Loads a GGUF model (architecture llama, qwen2, qwen3, gemma3 or phi3) and starts its worker —
// or, with `model_path` NULL, connects to a remote inference server (params.endpoint, else
// MAZE_ENDPOINT with MAZE_API_KEY, MAZE_MODEL, MAZE_PROTOCOL, MAZE_RETRIES, MAZE_TIMEOUT_MS).
//
// `model_path`: NUL-terminated UTF-8 path. `params`: NULL for defaults. On success `*out_engine`
// receives the engine (free with maze_engine_free). Fails with MAZE_STATUS_IO (missing file),
// MAZE_STATUS_MODEL_FORMAT (not GGUF, truncated), MAZE_STATUS_UNSUPPORTED (architecture or
// tokenizer), MAZE_STATUS_CANCELLED (progress callback returned false), MAZE_STATUS_BACKEND
// (server unreachable), among others. A remote engine has no local tokenizer: tokenize,
// detokenize, the chat template and the constraint cache fail with MAZE_STATUS_UNSUPPORTED.
MAZE_NODISCARD
enum maze_status maze_engine_new(const char *model_path,
                                 const struct maze_engine_params *params,
                                 struct maze_engine **out_engine,
                                 struct maze_error **error);

// Frees an engine. NULL is a no-op. Sessions opened on it remain usable; the model is released
// when the last of them is freed too.
void maze_engine_free(struct maze_engine *engine);

// Model name from the GGUF metadata (or the file name; for a remote engine, the server's
// model). Valid while the engine lives; "" for NULL.
const char *maze_engine_model_name(const struct maze_engine *engine);

// Model architecture, e.g. "llama" ("remote" for a remote engine). Valid while the engine
// lives; "" for NULL.
const char *maze_engine_architecture(const struct maze_engine *engine);

// Vocabulary size (valid token ids are below it); 0 for NULL or a remote engine.
uint32_t maze_engine_vocab_size(const struct maze_engine *engine);

// Context length each session serves, in tokens; 0 for NULL or a remote engine.
uint32_t maze_engine_context_length(const struct maze_engine *engine);

// Whether maze_session_chat works: the model has a chat template (a remote server applies its
// own: true); false for NULL.
bool maze_engine_has_chat_template(const struct maze_engine *engine);

// The end-of-sequence token id, or -1 when the model declares none (or engine is NULL or remote).
int64_t maze_engine_eos_token(const struct maze_engine *engine);

// Whether `token` ends a generation (EOS, EOT, end-of-turn tokens); false for NULL or remote.
bool maze_engine_token_is_end_of_generation(const struct maze_engine *engine,
                                            uint32_t token);


// ==== Text: tokenize, detokenize, score, chat template ===========================================

// Text as passed across the ABI: a pointer and a length in bytes (UTF-8, no NUL needed).
// `data` may be NULL when `len` is 0.
typedef struct maze_string {
  const char *data;
  size_t len;
} maze_string;

// A tool call: in an assistant message of a chat history (the calls it made), and as a result
// gives it back (maze_result_tool_call; the strings then live as long as the result).
// `arguments` is a JSON object as text.
typedef struct maze_tool_call {
  struct maze_string id;
  struct maze_string name;
  struct maze_string arguments;
} maze_tool_call;

// One chat message. Roles are those the model's template knows: usually "system", "user",
// "assistant", "tool". An assistant message may carry the tool calls it made; a tool message
// answers one by `tool_call_id`. Every message of an array has the same `struct_size`.
typedef struct maze_chat_message {
  // sizeof(maze_chat_message), or 0 for this header's size (so designated initialisers that
  // leave it out keep working).
  uint32_t struct_size;
  struct maze_string role;
  struct maze_string content;
  // The calls an assistant message made (NULL when n_tool_calls is 0).
  const struct maze_tool_call *tool_calls;
  size_t n_tool_calls;
  // The call a "tool" message answers (empty otherwise).
  struct maze_string tool_call_id;
} maze_chat_message;

// Tokenizes UTF-8 text (`text`, `text_len` bytes; NUL not needed).
//
// `add_special`: add BOS/EOS as the model wants them. `parse_special`: let special-token text
// (e.g. "<|im_start|>") become special tokens; keep false for untrusted text.
// Writes up to `capacity` ids to `tokens` and their count to `*n_tokens`. When `capacity` is too
// small (NULL `tokens` with capacity 0 asks for the size), fails with
// MAZE_STATUS_BUFFER_TOO_SMALL and still writes the needed count to `*n_tokens`.
MAZE_NODISCARD
enum maze_status maze_tokenize(const struct maze_engine *engine,
                               const char *text,
                               size_t text_len,
                               bool add_special,
                               bool parse_special,
                               uint32_t *tokens,
                               size_t capacity,
                               size_t *n_tokens,
                               struct maze_error **error);

// Turns token ids back into text: the exact bytes they stand for (special tokens as their text).
// The bytes are UTF-8 unless the ids end inside a multi-byte character.
//
// Writes the bytes plus a terminating NUL to `buf`; `*out_len` receives the byte count without
// the NUL. Needs `capacity >= *out_len + 1`; otherwise fails with MAZE_STATUS_BUFFER_TOO_SMALL
// and writes the needed byte count (without NUL) to `*out_len`. An id outside the vocabulary
// fails with MAZE_STATUS_INVALID_ARGUMENT.
MAZE_NODISCARD
enum maze_status maze_detokenize(const struct maze_engine *engine,
                                 const uint32_t *tokens,
                                 size_t n_tokens,
                                 char *buf,
                                 size_t capacity,
                                 size_t *out_len,
                                 struct maze_error **error);

// Scores a token sequence: the natural-log probability the model gives each token after the
// ones before it (what ranking, classification and perplexity need). `tokens`: `n_tokens`
// ids, at least 2; start with BOS, or with a context, to score a text's first token. Writes
// `n_tokens - 1` values to `logprobs` (the first for `tokens[1]`) and that count to
// `*n_logprobs`; a `capacity` below it fails with MAZE_STATUS_BUFFER_TOO_SMALL (the needed
// count still written). One forward pass over the sequence on a fresh cache, between the steps
// of running generations. Fails with MAZE_STATUS_CONTEXT_OVERFLOW beyond the context length,
// MAZE_STATUS_INVALID_ARGUMENT for fewer than 2 tokens or an id outside the vocabulary,
// MAZE_STATUS_UNSUPPORTED on a remote engine.
MAZE_NODISCARD
enum maze_status maze_score(const struct maze_engine *engine,
                            const uint32_t *tokens,
                            size_t n_tokens,
                            float *logprobs,
                            size_t capacity,
                            size_t *n_logprobs,
                            struct maze_error **error);

// Renders messages with the model's chat template into `buf` (same buffer protocol as
// maze_detokenize). With `add_generation_prompt` the text ends where the assistant's reply
// starts. Fails with MAZE_STATUS_TEMPLATE when the model has no template or it rejects the
// messages.
MAZE_NODISCARD
enum maze_status maze_chat_apply_template(const struct maze_engine *engine,
                                          const struct maze_chat_message *messages,
                                          size_t n_messages,
                                          bool add_generation_prompt,
                                          char *buf,
                                          size_t capacity,
                                          size_t *out_len,
                                          struct maze_error **error);

// A maze_string viewing a NUL-terminated C string (NULL gives an empty string).
static inline maze_string maze_str(const char *s) {
    maze_string r;
    r.data = s;
    r.len = s ? strlen(s) : 0;
    return r;
}

// A chat message with a role and content (NUL-terminated C strings), no tool calls.
static inline maze_chat_message maze_msg(const char *role, const char *content) {
    maze_chat_message m;
    memset(&m, 0, sizeof m);
    m.struct_size = (uint32_t)sizeof m;
    m.role = maze_str(role);
    m.content = maze_str(content);
    return m;
}


// ==== Tools: declarations, chat history with calls, the reply's calls ============================

// How tool calls are written, for maze_generate_params.tool_format.
typedef enum maze_tool_format {
  // The chat template's own format; refused (MAZE_STATUS_UNSUPPORTED) when the template
  // cannot render tools: choose MAZE_TOOL_FORMAT_GENERIC for such a model.
  MAZE_TOOL_FORMAT_TEMPLATE = 0,
  // Qwen2.5, Qwen3, Hermes 2/3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
  MAZE_TOOL_FORMAT_HERMES = 1,
  // Llama 3.1-3.3: the reply is one JSON object `{"name": ..., "parameters": {...}}`.
  MAZE_TOOL_FORMAT_LLAMA3 = 2,
  // Mistral Nemo / Small: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
  MAZE_TOOL_FORMAT_MISTRAL = 3,
  // Any template: the tools described in a system message, calls written as Hermes writes
  // them, tool results sent back in a user turn (docs/TOOLS.md).
  MAZE_TOOL_FORMAT_GENERIC = 4,
} maze_tool_format;

// Whether and which tools the model must call, for maze_generate_params.tool_choice.
typedef enum maze_tool_choice {
  // The model answers in text or calls tools, as it decides (default).
  MAZE_TOOL_CHOICE_AUTO = 0,
  // The tools are shown to the model but it answers in text.
  MAZE_TOOL_CHOICE_NONE = 1,
  // The reply is one or more calls and nothing else.
  MAZE_TOOL_CHOICE_REQUIRED = 2,
  // The reply is exactly one call of the tool named by tool_choice_name.
  MAZE_TOOL_CHOICE_NAMED = 3,
} maze_tool_choice;

// A tool the model may call: its name (^[A-Za-z0-9_-]{1,64}$, unique), what it does, and a
// JSON schema for its arguments object as JSON text (empty = any object).
typedef struct maze_tool {
  struct maze_string name;
  struct maze_string description;
  struct maze_string parameters_json;
} maze_tool;

// A piece of a streamed tool call: the first for a call has its `id` and `name` (and empty
// `arguments`); each later one a fragment of its arguments JSON, in order (`id` and `name`
// empty). Strings are valid only during the callback.
typedef struct maze_tool_call_delta {
  // The call's place in the reply, from 0.
  size_t index;
  struct maze_string id;
  struct maze_string name;
  struct maze_string arguments;
} maze_tool_call_delta;

// Receives tool-call pieces while a reply streams (maze_generate_params.tool_callback). Runs
// on the thread that called the generate function, like maze_stream_callback, under the same
// rules; return false to stop generating.
typedef bool (*maze_tool_call_callback)(const struct maze_tool_call_delta *delta,
                                        void *userdata);

// How many tool calls the reply holds (0 for a NULL result). With calls, the finish reason is
// MAZE_FINISH_TOOL_CALLS when the model ended them, or the reason they were cut short.
size_t maze_result_tool_call_count(const struct maze_result *result);

// Tool call `index` (from 0) of the reply: its id, name and arguments (a JSON object as text;
// for a call cut short, the part generated). The strings are NUL-terminated and live as long
// as the result. Fails with MAZE_STATUS_INVALID_ARGUMENT when `index` is past the last call.
MAZE_NODISCARD
enum maze_status maze_result_tool_call(const struct maze_result *result,
                                       size_t index,
                                       struct maze_tool_call *out_call,
                                       struct maze_error **error);

// Whether tool call `index` is complete and was generated under the tool grammar throughout,
// so its arguments validate against the tool's schema (false past the last call and for a
// NULL result). maze_result_validation_json says why not under "tool_calls".
bool maze_result_tool_call_satisfied(const struct maze_result *result,
                                     size_t index);


// ==== Sessions: generate and stream ==============================================================

// Generation settings. Initialise with maze_generate_params_default(), then change fields.
typedef struct maze_generate_params {
  // sizeof(maze_generate_params), set by maze_generate_params_default().
  uint32_t struct_size;
  // Most tokens to generate; 0 = until the context is full. Default 256.
  uint32_t max_tokens;
  // 0 = greedy. Default 0.8.
  float temperature;
  // Keep the k most likely tokens; 0 = off. Default 40.
  uint32_t top_k;
  // Nucleus sampling mass in (0, 1]; 1 = off. Default 0.95.
  float top_p;
  // Drop tokens below min_p × the top probability, in [0, 1]; 0 = off. Default 0.05.
  float min_p;
  // Repetition penalty (> 0); 1 = off. Default 1.
  float repetition_penalty;
  // Recent tokens (prompt included) the penalties look at; 0 = all. Default 64.
  uint32_t penalty_last_n;
  // Subtracted per earlier occurrence of a token. Default 0.
  float frequency_penalty;
  // Subtracted once if a token occurred. Default 0.
  float presence_penalty;
  // Same seed + same input = same output. MAZE_SEED_RANDOM (default) = from the engine.
  uint64_t seed;
  // Stop sequences (array of n_stop strings; NULL when n_stop is 0). The text ends before the
  // first one that appears; it is never streamed.
  const struct maze_string *stop;
  size_t n_stop;
  // Wall-clock limit in milliseconds from the call (constraint compilation, tokenization and
  // queueing included); 0 = none. When it passes the result finishes with
  // MAZE_FINISH_TIMEOUT.
  uint32_t timeout_ms;
  // Record each generated token's log-probability (maze_result_logprobs). Default false.
  bool logprobs;
  // Constraints the output must obey, all at once (array of n_constraints handles; NULL when
  // 0). See maze_result_validation_json for how each fared.
  const struct maze_constraint *const *constraints;
  size_t n_constraints;
  // Keep generating past the model's end-of-generation tokens until max_tokens (fixed-length
  // output, benchmarks); the end tokens stay in the output. A constrained request still stops
  // where its grammar ends. Default false.
  bool ignore_eos;
  // A cancel token (maze_cancel_token_new) that stops this call when cancelled, also when
  // the cancel comes before the call starts; NULL = none. maze_session_cancel works either
  // way.
  const struct maze_cancel_token *cancel;
  // Tools the model may call (array of n_tools; NULL when 0). Chat prompts only
  // (maze_session_chat): the chat template renders them, the reply's calls are enforced
  // (names declared, arguments valid under each tool's schema) and returned by
  // maze_result_tool_call. Bad declarations fail with MAZE_STATUS_INVALID_ARGUMENT or, for a
  // schema that does not compile, MAZE_STATUS_INVALID_CONSTRAINT, naming the tool.
  const struct maze_tool *tools;
  size_t n_tools;
  // A maze_tool_choice value. Default MAZE_TOOL_CHOICE_AUTO: text, or calls as the model
  // decides; the constraints of `constraints` then govern a text reply (token masks hold on
  // every token).
  uint32_t tool_choice;
  // The tool MAZE_TOOL_CHOICE_NAMED names (empty otherwise).
  struct maze_string tool_choice_name;
  // More than one call in a reply. Default true.
  bool parallel_tool_calls;
  // Most calls in one reply when parallel; 0 = 8.
  uint32_t max_tool_calls;
  // A maze_tool_format value. Default MAZE_TOOL_FORMAT_TEMPLATE: the chat template's own
  // syntax, refused with MAZE_STATUS_UNSUPPORTED when it cannot render tools.
  uint32_t tool_format;
  // Receives each call's name and then its argument fragments while the reply streams
  // (text still goes to the stream callback, without the call syntax); NULL = none.
  maze_tool_call_callback tool_callback;
  void *tool_userdata;
} maze_generate_params;

// Streaming callback: `text` is the next piece of generated text (`len` bytes of whole UTF-8
// characters, followed by a NUL for convenience; the text itself may contain NUL bytes, so
// `len` is authoritative; valid only during the call). Runs on the thread
// that called the generate function. It may call maze_session_cancel and functions on other
// sessions; a generate call on the same session from inside it fails with MAZE_STATUS_BUSY.
// Return false to stop generating: the result then finishes with MAZE_FINISH_CANCELLED and
// holds exactly the text delivered so far.
typedef bool (*maze_stream_callback)(const char *text,
                                     size_t len,
                                     void *userdata);

// Creates a token that is not cancelled. Fails only with MAZE_STATUS_NULL_ARGUMENT.
MAZE_NODISCARD
enum maze_status maze_cancel_token_new(struct maze_cancel_token **out_token,
                                       struct maze_error **error);

// Cancels the token: every call running with it stops wherever it is (compiling, tokenizing,
// queued, prefilling, decoding) and every later call given it ends as cancelled before it
// starts. Idempotent; there is no un-cancel (make a new token). Fails only with
// MAZE_STATUS_NULL_ARGUMENT.
enum maze_status maze_cancel_token_cancel(const struct maze_cancel_token *token);

// Whether the token has been cancelled; false for NULL.
bool maze_cancel_token_is_cancelled(const struct maze_cancel_token *token);

// Frees a token. NULL is a no-op. Calls already given it are unaffected (nothing can cancel them
// through it any more).
void maze_cancel_token_free(struct maze_cancel_token *token);

// Default generation settings (llama.cpp's sampling defaults, 256 tokens, random seed).
struct maze_generate_params maze_generate_params_default(void);

// Opens a session on an engine. Free it with maze_session_free.
MAZE_NODISCARD
enum maze_status maze_session_new(const struct maze_engine *engine,
                                  struct maze_session **out_session,
                                  struct maze_error **error);

// Frees a session and its KV cache. NULL is a no-op. No call on it may be running.
void maze_session_free(struct maze_session *session);

// Continues the session from a text prompt (`prompt_len` bytes of UTF-8) and blocks until done.
//
// The session reuses the longest prefix it already computed, so passing the whole conversation
// each time costs only the new part. `params`: NULL for defaults. `callback` (may be NULL)
// streams text on this thread. On success `*out_result` receives the result (free with
// maze_result_free) — also when generation was cancelled, timed out or failed midway (see
// maze_result_finish_reason). Fails before generating with MAZE_STATUS_CONTEXT_OVERFLOW,
// MAZE_STATUS_BUSY, MAZE_STATUS_INVALID_ARGUMENT (bad params, empty prompt), among others.
MAZE_NODISCARD
enum maze_status maze_session_generate(const struct maze_session *session,
                                       const char *prompt,
                                       size_t prompt_len,
                                       const struct maze_generate_params *params,
                                       maze_stream_callback callback,
                                       void *userdata,
                                       struct maze_result **out_result,
                                       struct maze_error **error);

// Like maze_session_generate, from token ids used as they are (no BOS added).
MAZE_NODISCARD
enum maze_status maze_session_generate_tokens(const struct maze_session *session,
                                              const uint32_t *tokens,
                                              size_t n_tokens,
                                              const struct maze_generate_params *params,
                                              maze_stream_callback callback,
                                              void *userdata,
                                              struct maze_result **out_result,
                                              struct maze_error **error);

// Like maze_session_generate, from chat messages rendered with the model's chat template and
// ending in an assistant turn. Fails with MAZE_STATUS_TEMPLATE when the model has no template.
MAZE_NODISCARD
enum maze_status maze_session_chat(const struct maze_session *session,
                                   const struct maze_chat_message *messages,
                                   size_t n_messages,
                                   const struct maze_generate_params *params,
                                   maze_stream_callback callback,
                                   void *userdata,
                                   struct maze_result **out_result,
                                   struct maze_error **error);

// Stops the session's call in flight from any thread, wherever it is: compiling its
// constraints, tokenizing, queued, prefilling, decoding or still delivering text to a slow
// stream callback. The generate call returns soon after with MAZE_FINISH_CANCELLED, its
// callback called no more: the result holds exactly the text delivered before (cancelled
// before generation began: no text, every constraint violated). A call is in flight from the
// moment it has checked that the session is not busy until it returns; a cancel outside that
// span is a no-op and does not affect the next call (a cancel token, maze_generate_params.cancel,
// has no such window). Fails only with MAZE_STATUS_NULL_ARGUMENT.
enum maze_status maze_session_cancel(const struct maze_session *session);

// Forgets the conversation: the next call starts from an empty context (a remote session keeps
// none). The forgotten keys and values may still serve other sessions' identical prompt
// prefixes from the engine's prefix cache. Fails with MAZE_STATUS_BUSY while generating.
MAZE_NODISCARD
enum maze_status maze_session_reset(const struct maze_session *session,
                                    struct maze_error **error);


// ==== Constraints: JSON schema, Lark grammar, regex, choice, token mask ==========================

// Constraint kinds, for maze_constraint_desc.kind.
typedef enum maze_constraint_kind {
  // `text`: a JSON schema document.
  MAZE_CONSTRAINT_KIND_JSON_SCHEMA = 0,
  // `text`: a grammar in llguidance's Lark syntax.
  MAZE_CONSTRAINT_KIND_LARK = 1,
  // `items`: regular expressions; the output must match every one.
  MAZE_CONSTRAINT_KIND_REGEX = 2,
  // `allowed_tokens` (empty = all) and `forbidden_tokens`.
  MAZE_CONSTRAINT_KIND_TOKEN_MASK = 3,
  // `items`: the output is exactly one of these strings.
  MAZE_CONSTRAINT_KIND_CHOICE = 4,
  // `text`: a grammar in llama.cpp's GBNF syntax (converted to Lark, see docs/CONSTRAINTS.md).
  MAZE_CONSTRAINT_KIND_GBNF = 5,
} maze_constraint_kind;

// Bits of maze_constraint_desc.json_flags (OR them; 0 keeps the defaults: compact JSON,
// unsupported keywords refused, unknown formats ignored as annotations).
typedef enum maze_json_flag {
  // Compile keywords Maze cannot enforce (not, if/then/else, dependencies, ...) by leaving
  // them out; the validation report lists each with its JSON pointer and the outcome is
  // "partially_enforced", not satisfied.
  MAZE_JSON_FLAG_LENIENT = 1,
  // Approximate a oneOf whose branches are not provably disjoint with anyOf (reported as a
  // relaxed keyword); without it such a schema is refused.
  MAZE_JSON_FLAG_COERCE_ONE_OF = 2,
  // Allow JSON whitespace between tokens (default: compact JSON).
  MAZE_JSON_FLAG_WHITESPACE_FLEXIBLE = 4,
  // Refuse a format Maze does not enforce instead of ignoring it as an annotation.
  MAZE_JSON_FLAG_STRICT_FORMATS = 8,
} maze_json_flag;

// Describes one constraint. Initialise with maze_constraint_desc_default(). Only the fields of
// its kind are read. Layout is part of the ABI (the Zig and Go wrappers check it).
typedef struct maze_constraint_desc {
  // sizeof(maze_constraint_desc), set by maze_constraint_desc_default().
  uint32_t struct_size;
  // A maze_constraint_kind value.
  uint32_t kind;
  // When constraints conflict, the lowest priority is relaxed first. Default 0.
  int32_t priority;
  // Reserved, keep 0.
  uint32_t reserved;
  // Name reported in validation (may be empty).
  struct maze_string name;
  // JSON schema, Lark grammar or GBNF grammar text.
  struct maze_string text;
  // Regex patterns or choice strings.
  const struct maze_string *items;
  size_t n_items;
  const uint32_t *allowed_tokens;
  size_t n_allowed_tokens;
  const uint32_t *forbidden_tokens;
  size_t n_forbidden_tokens;
  // JSON schema only: maze_json_flag bits, OR-ed (0: compact JSON, keywords Maze cannot
  // enforce refused naming their JSON pointer, unknown formats ignored as annotations and
  // listed in the validation report). Non-zero on another kind fails. Added after
  // n_forbidden_tokens: a caller whose struct_size ends before it gets the defaults.
  uint32_t json_flags;
  // Reserved, keep 0.
  uint32_t json_reserved;
  // JSON schema only: a regex for the whitespace allowed between tokens, replacing
  // MAZE_JSON_FLAG_WHITESPACE_FLEXIBLE's; empty (the default) leaves it unset.
  struct maze_string json_whitespace_pattern;
} maze_constraint_desc;

// Constraint compile-cache counters.
typedef struct maze_constraint_cache_stats {
  uint64_t size;
  uint64_t limit;
  uint64_t hits;
  uint64_t misses;
  uint64_t evictions;
} maze_constraint_cache_stats;

// A descriptor with everything empty (kind JSON schema, priority 0).
struct maze_constraint_desc maze_constraint_desc_default(void);

// Builds and compiles a constraint from a descriptor. Fails with
// MAZE_STATUS_INVALID_CONSTRAINT (bad schema, regex, grammar, token id; the message names the
// part: a JSON-schema keyword or format Maze does not enforce by its JSON pointer, e.g.
// `unsupported keyword "not" at /properties/a/not`), MAZE_STATUS_ABI_MISMATCH,
// MAZE_STATUS_INVALID_ARGUMENT (an unknown kind or json_flags bit), MAZE_STATUS_INVALID_UTF8,
// MAZE_STATUS_NULL_ARGUMENT.
MAZE_NODISCARD
enum maze_status maze_constraint_new(const struct maze_engine *engine,
                                     const struct maze_constraint_desc *desc,
                                     struct maze_constraint **out_constraint,
                                     struct maze_error **error);

// Builds and compiles constraints from JSON (`json_len` bytes): one object such as
// `{"name": "answer", "priority": 1, "json_schema": {...}}`, `{"regex": ["[0-9]+"]}`,
// `{"lark": "start: ..."}`, `{"token_mask": {"allowed": [..], "forbidden": [..]}}`,
// `{"choice": ["yes", "no"]}`, `{"gbnf": "root ::= ..."}`, or an array of them (one handle
// holding all). A JSON schema may carry `"json_options": {"lenient", "coerce_one_of",
// "whitespace_flexible", "whitespace_pattern", "strict_formats"}` (the json_flags of the
// descriptor; see docs/CONSTRAINTS.md).
MAZE_NODISCARD
enum maze_status maze_constraint_from_json(const struct maze_engine *engine,
                                           const char *json,
                                           size_t json_len,
                                           struct maze_constraint **out_constraint,
                                           struct maze_error **error);

// Number of constraints in a handle (a JSON array gives several); 0 for NULL.
size_t maze_constraint_count(const struct maze_constraint *constraint);

// Frees a constraint handle. NULL is a no-op. Generations already started are unaffected.
void maze_constraint_free(struct maze_constraint *constraint);

// Reads the engine's constraint compile-cache counters into `*out`.
MAZE_NODISCARD
enum maze_status maze_engine_constraint_cache_stats(const struct maze_engine *engine,
                                                    struct maze_constraint_cache_stats *out,
                                                    struct maze_error **error);

// How long the engine's one-time constraint setup (token trie and parser factory) took, in
// microseconds; 0 while it has not been built (it is built by the first constrained request,
// or at load with maze_engine_params.prepare_constraints), for a remote engine and for NULL.
double maze_engine_constraint_setup_time_us(const struct maze_engine *engine);

// Empties the constraint compile cache (counters keep counting).
MAZE_NODISCARD
enum maze_status maze_engine_constraint_cache_clear(const struct maze_engine *engine,
                                                    struct maze_error **error);

// Sets how many compiled constraints the cache keeps (>= 1); least recently used go first.
MAZE_NODISCARD
enum maze_status maze_engine_constraint_cache_set_limit(const struct maze_engine *engine,
                                                        uint64_t limit,
                                                        struct maze_error **error);


// ==== Results: text, tokens, finish reason, statistics, validation ===============================

// How a generation ended.
typedef enum maze_finish_reason {
  // The model produced an end-of-generation token.
  MAZE_FINISH_REASON_STOP = 0,
  // max_tokens was reached or the context is full.
  MAZE_FINISH_REASON_LENGTH = 1,
  // A stop sequence appeared (it is not part of the text).
  MAZE_FINISH_REASON_STOP_SEQUENCE = 2,
  // Cancelled by the caller: maze_session_cancel, or the stream callback returned false.
  MAZE_FINISH_REASON_CANCELLED = 3,
  // The request's timeout (params.timeout_ms) passed.
  MAZE_FINISH_REASON_TIMEOUT = 4,
  // The computation failed midway; the result holds the error (maze_result_error_status).
  MAZE_FINISH_REASON_ERROR = 5,
  // The reply is tool calls (maze_result_tool_call_count), complete: the model ended them.
  MAZE_FINISH_REASON_TOOL_CALLS = 6,
} maze_finish_reason;

// Generated text (UTF-8, NUL-terminated; it may itself contain NUL bytes, so prefer `*len`).
// `len` may be NULL. "" for a NULL result.
const char *maze_result_text(const struct maze_result *result,
                             size_t *len);

// Generated token ids; their count goes to `*n` (may be NULL). NULL when there are none.
const uint32_t *maze_result_tokens(const struct maze_result *result,
                                   size_t *n);

// Log-probability of each generated token under the model (natural log), one per token; NULL
// (and *n = 0) unless params.logprobs was set.
const float *maze_result_logprobs(const struct maze_result *result,
                                  size_t *n);

// Why generation ended; MAZE_FINISH_ERROR for a NULL result.
enum maze_finish_reason maze_result_finish_reason(const struct maze_result *result);

// Name of a finish reason: "stop", "length", "stop_sequence", "cancelled", "timeout", "error";
// "unknown" otherwise. Static string.
const char *maze_finish_reason_name(int32_t reason);

// Status of a midway failure (finish reason MAZE_FINISH_ERROR); MAZE_STATUS_OK otherwise.
enum maze_status maze_result_error_status(const struct maze_result *result);

// Message of a midway failure; NULL when there was none.
const char *maze_result_error_message(const struct maze_result *result);

// Tokens in the prompt (reused from the cache or computed).
uint32_t maze_result_prompt_tokens(const struct maze_result *result);

// Prompt tokens not recomputed: reused from the session's KV cache, or copied from another
// (live, closed or reset) session's identical prefix.
uint32_t maze_result_cached_tokens(const struct maze_result *result);

// Tokens generated (and delivered).
uint32_t maze_result_generated_tokens(const struct maze_result *result);

// Milliseconds from the call to the first generated token (queueing and prefill included).
double maze_result_time_to_first_token_ms(const struct maze_result *result);

// Milliseconds from the call to the end of generation.
double maze_result_total_time_ms(const struct maze_result *result);

// Decode speed: generated tokens per second after the first token.
double maze_result_tokens_per_second(const struct maze_result *result);

// Prefill speed: prompt tokens computed per second.
double maze_result_prefill_tokens_per_second(const struct maze_result *result);

// True when every constraint of the request was enforced on every token and the output is
// complete under it (true without constraints); false for NULL.
bool maze_result_constraints_satisfied(const struct maze_result *result);

// Validation as JSON: `{"satisfied": bool, "constraints": [{"name", "kind", "priority",
// "outcome": "satisfied"|"violated"|"relaxed", "reason"?}], "stats": {"compile_time_us",
// "setup_time_us", "mean_mask_time_us", "masks_computed", "forced_tokens"} | null}`. Valid
// until maze_result_free; "" for NULL.
const char *maze_result_validation_json(const struct maze_result *result);

// Provenance as JSON: model, architecture, created_unix_ms, constraints (name, kind,
// priority), sampling parameters, the seed used, max_tokens, stop. Valid until
// maze_result_free; "" for NULL.
const char *maze_result_provenance_json(const struct maze_result *result);

// Time spent compiling the request's constraints, in microseconds (cache hits cost little).
double maze_result_constraint_compile_time_us(const struct maze_result *result);

// Of maze_result_constraint_compile_time_us, the engine's one-time constraint setup (token trie
// and parser factory, 0.1-1 s with the vocabulary) this request waited for: nonzero only on the
// engine's first constrained request, and never when maze_engine_params.prepare_constraints
// built it at load (maze_engine_constraint_setup_time_us says what it cost).
double maze_result_constraint_setup_time_us(const struct maze_result *result);

// Mean time to compute one token's constraint mask, in microseconds (0 without constraints).
double maze_result_mean_mask_time_us(const struct maze_result *result);

// Tokens the grammar dictated and that were appended without sampling.
uint32_t maze_result_forced_tokens(const struct maze_result *result);

// Frees a result. NULL is a no-op.
void maze_result_free(struct maze_result *result);


// ==== Remote engines: an inference server instead of a local model ===============================

// Which API a remote server speaks (maze_engine_params.protocol).
typedef enum maze_protocol {
  // OpenAI-compatible: /v1/chat/completions, /v1/completions (vLLM, SGLang, llama.cpp server).
  MAZE_PROTOCOL_OPENAI = 0,
  // Maze's own protocol, served by maze-server: every constraint kind, with validation.
  MAZE_PROTOCOL_MAZE = 1,
} maze_protocol;

// Checks that the engine can serve: always MAZE_STATUS_OK for a local model; for a remote
// engine, asks the server (its health route, or the model list of an OpenAI-compatible server)
// and fails with MAZE_STATUS_BACKEND (unreachable, HTTP error) naming the problem.
MAZE_NODISCARD
enum maze_status maze_engine_health(const struct maze_engine *engine,
                                    struct maze_error **error);

// The models the engine serves, as a JSON array of names (e.g. `["SmolLM2"]`), into `buf`
// with the buffer protocol of maze_detokenize. A local engine lists its model; a remote one
// asks the server.
MAZE_NODISCARD
enum maze_status maze_engine_list_models(const struct maze_engine *engine,
                                         char *buf,
                                         size_t capacity,
                                         size_t *out_len,
                                         struct maze_error **error);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // MAZE_H
