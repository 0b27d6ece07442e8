/*
 * The misuse suite: every function of maze.h called the wrong way, each case with the exact
 * status it must return (issue 20). NULL in each pointer argument, zero and huge lengths,
 * struct_size 0 / too small / too large, invalid UTF-8 in every string input, the calls after
 * a free that the header promises to handle, and calls from many threads at once. A failure
 * must come back as its status with a maze_error whose message names the problem, and must
 * leave every output untouched (the header: "Outputs are written only on success").
 *
 *   test_misuse MODEL.gguf     (make test runs it on the tiny random-weight model, under
 *                               AddressSanitizer + UndefinedBehaviorSanitizer)
 *
 * The table `suite` at the bottom names, for each function of the header, the case function
 * that covers it; `make c-test-misuse` fails when the header declares a function the table
 * does not name (scripts/check-misuse-coverage.sh).
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maze.h"
#include "check.h"

static const char *model_path;
static maze_engine *engine; /* the shared engine (tiny model, 512-token context) */
static uint32_t hi[8];      /* "hi" tokenized: 2 bytes of text, 1 or 2 tokens */
static size_t n_hi;

/* Never dereferenced: stored in out-parameters to see that failures leave them alone. */
#define SENTINEL ((void *)(uintptr_t)0x5eed)
#define N_THREADS 16

/* Invalid UTF-8 of each kind: a lone continuation byte, an overlong encoding, a truncated
 * sequence, an encoded surrogate, a byte that never occurs. Valid text before each. */
static const char *const bad_utf8[] = {"ok\x80", "ok\xc0\xaf", "ok\xe2\x82", "ok\xed\xa0\x80", "ok\xff"};
#define N_BAD_UTF8 (sizeof bad_utf8 / sizeof *bad_utf8)

/* A length no buffer can have: more bytes than the address space holds. */
#define HUGE SIZE_MAX
/* The smallest count of 4-byte elements that is more than the address space holds. */
#define HUGE_U32_COUNT ((size_t)PTRDIFF_MAX / 4 + 1)

/* Checks a failure: its status, that the error object carries it, and that the message names
 * the problem (`needle`). Frees the error. */
static void expect_error(maze_status got, maze_error *err, maze_status want, const char *needle, const char *what) {
    CHECK(got == want, "%s: status %s, want %s (%s)", what, maze_status_name(got), maze_status_name(want),
          maze_error_message(err));
    CHECK(err != NULL, "%s: no error object", what);
    if (err) {
        CHECK(maze_error_status(err) == want, "%s: error object status %s", what, maze_status_name(maze_error_status(err)));
        const char *msg = maze_error_message(err);
        CHECK(msg && msg[0] && strstr(msg, needle), "%s: message '%s' lacks '%s'", what, msg ? msg : "(null)", needle);
    }
    maze_error_free(err);
}

/* Runs `call` twice: with an error out-pointer (ERR = &err; the status, the error object and
 * its message are checked), then with ERR = NULL (the status alone comes back). */
#define MISUSE(want, needle, what, call)                                                            \
    do {                                                                                            \
        maze_error *err_ = NULL;                                                                    \
        maze_error **ERR = &err_;                                                                   \
        maze_status first_ = (call);                                                                \
        expect_error(first_, err_, want, needle, what);                                             \
        ERR = NULL;                                                                                 \
        maze_status second_ = (call);                                                               \
        CHECK(second_ == want, "%s (no error pointer): status %s, want %s", what, maze_status_name(second_), \
              maze_status_name(want));                                                              \
    } while (0)

/* A call that must succeed. */
#define EXPECT_OK(what, call)                                                                       \
    do {                                                                                            \
        maze_error *err_ = NULL;                                                                    \
        maze_error **ERR = &err_;                                                                   \
        maze_status st_ = (call);                                                                   \
        CHECK(st_ == MAZE_STATUS_OK && err_ == NULL, "%s: %s %s", what, maze_status_name(st_), maze_error_message(err_)); \
        maze_error_free(err_);                                                                      \
    } while (0)

static maze_session *new_session(void) {
    maze_session *s = NULL;
    CHECK(maze_session_new(engine, &s, NULL) == MAZE_STATUS_OK && s, "session_new");
    if (!s) exit(1);
    return s;
}

static maze_constraint *constraint_json(const char *json) {
    maze_constraint *c = NULL;
    maze_error *err = NULL;
    maze_status st = maze_constraint_from_json(engine, json, strlen(json), &c, &err);
    CHECK(st == MAZE_STATUS_OK && c, "constraint %s: %s", json, maze_error_message(err));
    maze_error_free(err);
    return c;
}

static maze_generate_params quick_params(uint32_t max_tokens) {
    maze_generate_params p = maze_generate_params_default();
    p.max_tokens = max_tokens;
    p.temperature = 0;
    p.seed = 7;
    return p;
}

static maze_result *generate_ok(maze_session *s, const char *prompt, const maze_generate_params *p) {
    maze_result *r = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_generate(s, prompt, strlen(prompt), p, NULL, NULL, &r, &err);
    CHECK(st == MAZE_STATUS_OK && r, "generate '%s': %s %s", prompt, maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    return r;
}

/* ================================================================ version, status, errors */

static void m_version(void) {
    const char *v = maze_version();
    CHECK(v && strchr(v, '.'), "maze_version never NULL: '%s'", v ? v : "(null)");
    CHECK(maze_abi_version() == MAZE_ABI_VERSION, "maze_abi_version %u", maze_abi_version());
}

static void m_status_name(void) {
    /* Every defined value has its name; anything else is UNKNOWN, never NULL. */
    CHECK(!strcmp(maze_status_name(MAZE_STATUS_INVALID_CONSTRAINT), "MAZE_STATUS_INVALID_CONSTRAINT"), "last status name");
    int32_t odd[] = {-1, MAZE_STATUS_INVALID_CONSTRAINT + 1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++)
        CHECK(!strcmp(maze_status_name(odd[i]), "MAZE_STATUS_UNKNOWN"), "status name %d", odd[i]);
}

static void m_error(void) {
    CHECK(maze_error_status(NULL) == MAZE_STATUS_NULL_ARGUMENT, "maze_error_status(NULL)");
    CHECK(maze_error_message(NULL) && !strcmp(maze_error_message(NULL), ""), "maze_error_message(NULL) is \"\"");
    maze_error_free(NULL);
    /* An error object outlives the engine that produced it (it is the caller's). */
    maze_engine_params p = maze_engine_params_default();
    p.n_threads = 1;
    p.n_ctx = 64;
    maze_engine *e = NULL;
    CHECK(maze_engine_new(model_path, &p, &e, NULL) == MAZE_STATUS_OK && e, "second engine");
    maze_error *err = NULL;
    CHECK(maze_tokenize(e, "\xff", 1, false, false, NULL, 0, SENTINEL, &err) == MAZE_STATUS_INVALID_UTF8, "error to keep");
    maze_engine_free(e);
    CHECK(err && maze_error_status(err) == MAZE_STATUS_INVALID_UTF8 && strstr(maze_error_message(err), "'text'"),
          "error readable after its engine is freed: %s", maze_error_message(err));
    maze_error_free(err);
}

/* ================================================================ engine */

static void m_engine_params_default(void) {
    maze_engine_params p = maze_engine_params_default();
    CHECK(p.struct_size == sizeof p && p.seed == MAZE_SEED_RANDOM && p.gpu_device == -1 && p.tokenizer_path == NULL,
          "engine params default");
}

static void m_engine_new(void) {
    maze_engine *e = SENTINEL;
    maze_engine_params p = maze_engine_params_default();
    /* NULL in each pointer argument. */
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "out_engine", "engine_new NULL out", maze_engine_new(model_path, NULL, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "model_path", "engine_new NULL path, no endpoint", maze_engine_new(NULL, NULL, &e, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "MAZE_ENDPOINT", "engine_new NULL path names the env", maze_engine_new(NULL, &p, &e, ERR));
    /* Invalid UTF-8 in every string input. */
    for (size_t i = 0; i < N_BAD_UTF8; i++)
        MISUSE(MAZE_STATUS_INVALID_UTF8, "model_path", "engine_new bad UTF-8 path", maze_engine_new(bad_utf8[i], NULL, &e, ERR));
    p.tokenizer_path = bad_utf8[0];
    MISUSE(MAZE_STATUS_INVALID_UTF8, "params.tokenizer_path", "bad UTF-8 tokenizer path", maze_engine_new(model_path, &p, &e, ERR));
    p = maze_engine_params_default();
    p.chat_template = bad_utf8[1];
    MISUSE(MAZE_STATUS_INVALID_UTF8, "params.chat_template", "bad UTF-8 chat template", maze_engine_new(model_path, &p, &e, ERR));
    p = maze_engine_params_default();
    p.endpoint = bad_utf8[2];
    MISUSE(MAZE_STATUS_INVALID_UTF8, "params.endpoint", "bad UTF-8 endpoint", maze_engine_new(NULL, &p, &e, ERR));
    p.endpoint = "http://127.0.0.1:1";
    p.api_key = bad_utf8[3];
    MISUSE(MAZE_STATUS_INVALID_UTF8, "params.api_key", "bad UTF-8 api key", maze_engine_new(NULL, &p, &e, ERR));
    p.api_key = NULL;
    p.remote_model = bad_utf8[4];
    MISUSE(MAZE_STATUS_INVALID_UTF8, "params.remote_model", "bad UTF-8 remote model", maze_engine_new(NULL, &p, &e, ERR));
    p.remote_model = NULL;
    p.protocol = 99;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "params.protocol 99", "bad protocol", maze_engine_new(NULL, &p, &e, ERR));
    p.protocol = MAZE_PROTOCOL_MAZE;
    p.max_retries = 0;
    MISUSE(MAZE_STATUS_BACKEND, "127.0.0.1:1", "unreachable server", maze_engine_new(NULL, &p, &e, ERR));
    /* struct_size: 0, too small to hold struct_size and one field, from a newer header. */
    uint32_t bad_small[] = {0, 1, 4, 7};
    for (size_t i = 0; i < sizeof bad_small / sizeof *bad_small; i++) {
        p = maze_engine_params_default();
        p.struct_size = bad_small[i];
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "struct_size", "engine params struct_size too small", maze_engine_new(model_path, &p, &e, ERR));
    }
    uint32_t bad_large[] = {sizeof p + 1, sizeof p + 8, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad_large / sizeof *bad_large; i++) {
        p = maze_engine_params_default();
        p.struct_size = bad_large[i];
        MISUSE(MAZE_STATUS_ABI_MISMATCH, "newer maze.h", "engine params struct_size too large", maze_engine_new(model_path, &p, &e, ERR));
    }
    /* Out-of-range values. */
    p = maze_engine_params_default();
    p.gpu_device = -2;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "gpu_device -2", "gpu_device -2", maze_engine_new(model_path, &p, &e, ERR));
    p.gpu_device = INT32_MIN;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "gpu_device", "gpu_device INT32_MIN", maze_engine_new(model_path, &p, &e, ERR));
    MISUSE(MAZE_STATUS_IO, "/nonexistent/x.gguf", "missing file", maze_engine_new("/nonexistent/x.gguf", NULL, &e, ERR));
    MISUSE(MAZE_STATUS_IO, "cannot open model file ''", "empty path", maze_engine_new("", NULL, &e, ERR));
    CHECK(e == SENTINEL, "engine_new failures left *out_engine alone");
    /* An older caller: struct_size covering only the first fields keeps the defaults after. */
    p = maze_engine_params_default();
    p.struct_size = 16; /* struct_size, n_threads, n_ctx, reserved */
    p.n_threads = 1;
    p.n_ctx = 32;
    p.seed = 5; /* beyond struct_size: not read */
    e = NULL;
    EXPECT_OK("engine_new with an older struct", maze_engine_new(model_path, &p, &e, ERR));
    CHECK(maze_engine_context_length(e) == 32, "older struct's n_ctx read: %u", maze_engine_context_length(e));
    maze_engine_free(e);
}

static void m_engine_free(void) {
    maze_engine_free(NULL);
    /* The promised survival: sessions opened on an engine stay valid after it is freed. */
    maze_engine_params p = maze_engine_params_default();
    p.n_threads = 1;
    p.n_ctx = 64;
    maze_engine *e = NULL;
    CHECK(maze_engine_new(model_path, &p, &e, NULL) == MAZE_STATUS_OK, "engine to free");
    maze_session *s = NULL;
    CHECK(maze_session_new(e, &s, NULL) == MAZE_STATUS_OK, "session on it");
    maze_engine_free(e);
    maze_generate_params gp = quick_params(3);
    maze_result *r = NULL;
    maze_status st = maze_session_generate(s, "abc", 3, &gp, NULL, NULL, &r, NULL);
    CHECK(st == MAZE_STATUS_OK && maze_result_finish_reason(r) != MAZE_FINISH_REASON_ERROR,
          "session generates after maze_engine_free: %s", maze_status_name(st));
    EXPECT_OK("reset after maze_engine_free", maze_session_reset(s, ERR));
    maze_session_free(s);
    /* A result outlives its session and engine ("Pointers it returns stay valid until
     * maze_result_free"). */
    size_t len = 0;
    const char *text = maze_result_text(r, &len);
    CHECK(text && strlen(text) <= len && maze_result_generated_tokens(r) <= 3, "result readable after session and engine are freed");
    maze_result_free(r);
}

static void m_engine_getters(void) {
    /* NULL: the documented neutral values. */
    CHECK(!strcmp(maze_engine_model_name(NULL), ""), "model_name(NULL)");
    CHECK(!strcmp(maze_engine_architecture(NULL), ""), "architecture(NULL)");
    CHECK(maze_engine_vocab_size(NULL) == 0, "vocab_size(NULL)");
    CHECK(maze_engine_context_length(NULL) == 0, "context_length(NULL)");
    CHECK(!maze_engine_has_chat_template(NULL), "has_chat_template(NULL)");
    CHECK(maze_engine_eos_token(NULL) == -1, "eos_token(NULL)");
    CHECK(!maze_engine_token_is_end_of_generation(NULL, 0), "eog(NULL, 0)");
    /* Out-of-range token ids are not end tokens. */
    uint32_t vocab = maze_engine_vocab_size(engine);
    CHECK(vocab > 0 && !maze_engine_token_is_end_of_generation(engine, vocab), "eog(vocab)");
    CHECK(!maze_engine_token_is_end_of_generation(engine, UINT32_MAX), "eog(UINT32_MAX)");
    CHECK(strlen(maze_engine_model_name(engine)) > 0 && !strcmp(maze_engine_architecture(engine), "llama"), "names");
}

static void m_engine_health(void) {
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "health NULL", maze_engine_health(NULL, ERR));
    EXPECT_OK("health", maze_engine_health(engine, ERR));
}

static void m_engine_list_models(void) {
    char buf[256];
    size_t len = 12345;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "list_models NULL engine", maze_engine_list_models(NULL, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_len'", "list_models NULL out_len", maze_engine_list_models(engine, buf, sizeof buf, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'buf'", "list_models NULL buf", maze_engine_list_models(engine, NULL, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'buf'", "list_models NULL buf, huge capacity", maze_engine_list_models(engine, NULL, HUGE, &len, ERR));
    CHECK(len == 12345, "out_len untouched by NULL failures");
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "model list", "list_models size query", maze_engine_list_models(engine, NULL, 0, &len, ERR));
    size_t needed = len;
    CHECK(needed > 2, "needed size %zu", needed);
    /* Exactly the text, no room for the NUL: too small; one more byte: fits. */
    memset(buf, 'x', sizeof buf);
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "plus a NUL", "list_models no room for NUL", maze_engine_list_models(engine, buf, needed, &len, ERR));
    CHECK(buf[0] == 'x' && len == needed, "nothing written when too small");
    EXPECT_OK("list_models exact", maze_engine_list_models(engine, buf, needed + 1, &len, ERR));
    CHECK(len == needed && buf[len] == 0 && buf[0] == '[', "list %s", buf);
    /* A capacity larger than needed (even SIZE_MAX) writes only the text. */
    memset(buf, 'x', sizeof buf);
    EXPECT_OK("list_models huge capacity", maze_engine_list_models(engine, buf, HUGE, &len, ERR));
    CHECK(len == needed && buf[len] == 0 && buf[len + 1] == 'x', "only len + 1 bytes written");
}

/* Huge numeric settings: refused with a status naming the limit, or served without reserving
 * memory for the whole range. */
static void m_engine_new_huge_values(void) {
    maze_engine *e = SENTINEL;
    maze_engine_params p = maze_engine_params_default();
    p.n_ctx = UINT32_MAX;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "context length 4294967295", "n_ctx UINT32_MAX", maze_engine_new(model_path, &p, &e, ERR));
    p = maze_engine_params_default();
    p.n_threads = UINT32_MAX;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "threads 4294967295", "n_threads UINT32_MAX", maze_engine_new(model_path, &p, &e, ERR));
    CHECK(e == SENTINEL, "*out_engine untouched");
    /* Regression: a cache limit of UINT32_MAX reserved room for all of it up front (~146 GB)
     * and aborted the process on the failed allocation. */
    p = maze_engine_params_default();
    p.n_threads = 1;
    p.n_ctx = 64;
    p.constraint_cache_limit = UINT32_MAX;
    p.prefix_cache_mib = UINT32_MAX;
    p.constraint_max_depth = UINT32_MAX;
    p.constraint_max_bytes = UINT32_MAX;
    p.constraint_compile_timeout_ms = UINT32_MAX;
    p.constraint_initial_lexer_fuel = UINT64_MAX;
    p.constraint_step_lexer_fuel = UINT64_MAX;
    p.constraint_max_items_in_row = UINT32_MAX;
    p.constraint_step_max_items = UINT32_MAX;
    p.constraint_max_lexer_states = UINT32_MAX;
    p.constraint_max_grammar_size = UINT32_MAX;
    e = NULL;
    EXPECT_OK("engine with every limit at its maximum", maze_engine_new(model_path, &p, &e, ERR));
    maze_constraint_cache_stats st = {0};
    EXPECT_OK("stats", maze_engine_constraint_cache_stats(e, &st, ERR));
    CHECK(st.limit == UINT32_MAX && st.size == 0, "cache limit %llu", (unsigned long long)st.limit);
    /* It still compiles and enforces constraints, embedded NULs included. */
    maze_constraint_desc d = maze_constraint_desc_default();
    maze_string items[] = {{"a\0b", 3}};
    d.kind = MAZE_CONSTRAINT_KIND_CHOICE;
    d.items = items;
    d.n_items = 1;
    d.name = (maze_string){"n\0m", 3};
    d.priority = INT32_MIN;
    maze_constraint *c = NULL;
    EXPECT_OK("choice with a NUL inside", maze_constraint_new(e, &d, &c, ERR));
    maze_session *s = NULL;
    CHECK(maze_session_new(e, &s, NULL) == MAZE_STATUS_OK, "session");
    maze_generate_params g = quick_params(UINT32_MAX);
    g.top_k = UINT32_MAX;
    g.penalty_last_n = UINT32_MAX;
    g.repetition_penalty = 1.3f;
    g.timeout_ms = UINT32_MAX;
    g.seed = UINT64_MAX - 1;
    const maze_constraint *cs[] = {c};
    g.constraints = cs;
    g.n_constraints = 1;
    maze_result *r = NULL;
    EXPECT_OK("generate with huge settings", maze_session_generate(s, "abc", 3, &g, NULL, NULL, &r, ERR));
    size_t len = 0;
    const char *text = maze_result_text(r, &len);
    CHECK(len == 3 && !memcmp(text, "a\0b", 3) && maze_result_constraints_satisfied(r), "NUL kept in the text (%zu bytes)", len);
    CHECK(strstr(maze_result_validation_json(r), "\"n\\u0000m\"") != NULL, "name with NUL escaped in JSON: %s", maze_result_validation_json(r));
    maze_result_free(r);
    /* No constraint, max_tokens UINT32_MAX: runs to the end of the 64-token context. */
    g = quick_params(UINT32_MAX);
    g.ignore_eos = true;
    r = NULL;
    EXPECT_OK("max_tokens UINT32_MAX", maze_session_generate(s, "abc", 3, &g, NULL, NULL, &r, ERR));
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH && maze_result_prompt_tokens(r) + maze_result_generated_tokens(r) <= 64,
          "stops at the context: %u + %u", maze_result_prompt_tokens(r), maze_result_generated_tokens(r));
    maze_result_free(r);
    maze_session_free(s);
    maze_constraint_free(c);
    maze_engine_free(e);
    /* Deep nesting in constraint JSON: refused by the depth limit, not by the stack. */
    size_t n = 100000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "recursion limit", "100000 nested arrays", maze_constraint_from_json(engine, deep, n, &c, ERR));
    free(deep);
}

/* ================================================================ text */

static void m_tokenize(void) {
    uint32_t tokens[64];
    size_t n = 777;
    /* NULL in each pointer argument. */
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "tokenize NULL engine", maze_tokenize(NULL, "a", 1, false, false, tokens, 64, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'text'", "tokenize NULL text", maze_tokenize(engine, NULL, 1, false, false, tokens, 64, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'text'", "tokenize NULL text huge len", maze_tokenize(engine, NULL, HUGE, false, false, tokens, 64, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'n_tokens'", "tokenize NULL n_tokens", maze_tokenize(engine, "a", 1, false, false, tokens, 64, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "tokenize NULL tokens with capacity", maze_tokenize(engine, "abc", 3, false, false, NULL, 64, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "tokenize NULL tokens huge capacity", maze_tokenize(engine, "abc", 3, false, false, NULL, HUGE, &n, ERR));
    CHECK(n == 777, "n_tokens untouched by failures");
    /* Huge length: refused, never read. */
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'text'", "tokenize SIZE_MAX text_len", maze_tokenize(engine, "a", HUGE, false, false, tokens, 64, &n, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'text'", "tokenize PTRDIFF_MAX+1 text_len", maze_tokenize(engine, "a", (size_t)PTRDIFF_MAX + 1, false, false, tokens, 64, &n, ERR));
    CHECK(n == 777, "n_tokens untouched by failures");
    /* Invalid UTF-8. */
    for (size_t i = 0; i < N_BAD_UTF8; i++)
        MISUSE(MAZE_STATUS_INVALID_UTF8, "'text'", "tokenize bad UTF-8", maze_tokenize(engine, bad_utf8[i], strlen(bad_utf8[i]), false, true, tokens, 64, &n, ERR));
    /* The UTF-8 error says where: offset 2 after "ok". */
    MISUSE(MAZE_STATUS_INVALID_UTF8, "offset 2", "tokenize bad UTF-8 offset", maze_tokenize(engine, bad_utf8[0], 3, false, false, tokens, 64, &n, ERR));
    /* An embedded NUL is a valid character, not a terminator. */
    EXPECT_OK("tokenize embedded NUL", maze_tokenize(engine, "a\0b", 3, false, false, tokens, 64, &n, ERR));
    CHECK(n >= 2, "embedded NUL tokenized (%zu tokens)", n);
    /* Zero length: NULL or not, an empty token list (or just BOS). */
    EXPECT_OK("tokenize NULL, 0", maze_tokenize(engine, NULL, 0, false, false, NULL, 0, &n, ERR));
    CHECK(n == 0, "empty text, no tokens: %zu", n);
    EXPECT_OK("tokenize \"\", 0, add_special", maze_tokenize(engine, "", 0, true, false, tokens, 64, &n, ERR));
    CHECK(n <= 1, "empty text with add_special: %zu", n);
    /* Capacity 0 / too small: BUFFER_TOO_SMALL with the needed count, tokens untouched. */
    n = 0;
    tokens[0] = 0xabcdef;
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "buffer holds 0", "tokenize capacity 0", maze_tokenize(engine, "hello world", 11, false, false, tokens, 0, &n, ERR));
    size_t needed = n;
    CHECK(needed >= 2 && tokens[0] == 0xabcdef, "needed %zu written, tokens untouched", needed);
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "needs", "tokenize capacity needed-1", maze_tokenize(engine, "hello world", 11, false, false, tokens, needed - 1, &n, ERR));
    CHECK(n == needed && tokens[0] == 0xabcdef, "needed count again, tokens untouched");
    EXPECT_OK("tokenize exact capacity", maze_tokenize(engine, "hello world", 11, false, false, tokens, needed, &n, ERR));
    CHECK(n == needed, "exact capacity");
}

static void m_detokenize(void) {
    const uint32_t *ok_tokens = hi;
    uint32_t vocab = maze_engine_vocab_size(engine);
    char buf[64];
    size_t len = 777;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "detokenize NULL engine", maze_detokenize(NULL, ok_tokens, n_hi, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "detokenize NULL tokens", maze_detokenize(engine, NULL, 2, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "detokenize NULL tokens huge count", maze_detokenize(engine, NULL, HUGE, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_len'", "detokenize NULL out_len", maze_detokenize(engine, ok_tokens, n_hi, buf, sizeof buf, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'buf'", "detokenize NULL buf", maze_detokenize(engine, ok_tokens, n_hi, NULL, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "detokenize SIZE_MAX count", maze_detokenize(engine, ok_tokens, HUGE, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "detokenize count past the address space", maze_detokenize(engine, ok_tokens, HUGE_U32_COUNT, buf, sizeof buf, &len, ERR));
    uint32_t bad[] = {104, vocab};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "position 1", "detokenize id == vocab", maze_detokenize(engine, bad, 2, buf, sizeof buf, &len, ERR));
    bad[1] = UINT32_MAX;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "position 1", "detokenize id UINT32_MAX", maze_detokenize(engine, bad, 2, buf, sizeof buf, &len, ERR));
    CHECK(len == 777, "out_len untouched by failures");
    /* Zero tokens: the empty text; it still needs room for the NUL. */
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "plus a NUL", "detokenize nothing into nothing", maze_detokenize(engine, NULL, 0, NULL, 0, &len, ERR));
    CHECK(len == 0, "needed 0 bytes");
    buf[0] = 'x';
    EXPECT_OK("detokenize zero tokens", maze_detokenize(engine, NULL, 0, buf, 1, &len, ERR));
    CHECK(len == 0 && buf[0] == 0, "empty text written");
    /* Capacity 0 and too small. */
    memset(buf, 'x', sizeof buf);
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "buffer holds 0", "detokenize capacity 0", maze_detokenize(engine, ok_tokens, n_hi, buf, 0, &len, ERR));
    CHECK(len == 2 && buf[0] == 'x', "needed 2, buf untouched");
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "buffer holds 2", "detokenize no room for NUL", maze_detokenize(engine, ok_tokens, n_hi, buf, 2, &len, ERR));
    CHECK(buf[0] == 'x', "buf untouched");
    EXPECT_OK("detokenize huge capacity", maze_detokenize(engine, ok_tokens, n_hi, buf, HUGE, &len, ERR));
    CHECK(len == 2 && buf[2] == 0 && buf[3] == 'x', "only len + 1 bytes written");
}

static void m_score(void) {
    uint32_t tokens[] = {1, 104, 105, 106};
    float lp[8];
    size_t n = 777;
    uint32_t vocab = maze_engine_vocab_size(engine);
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "score NULL engine", maze_score(NULL, tokens, 4, lp, 8, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "score NULL tokens", maze_score(engine, NULL, 4, lp, 8, &n, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'n_logprobs'", "score NULL n_logprobs", maze_score(engine, tokens, 4, lp, 8, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'logprobs'", "score NULL logprobs", maze_score(engine, tokens, 4, NULL, 8, &n, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "score SIZE_MAX tokens", maze_score(engine, tokens, HUGE, lp, 8, &n, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "score count past the address space", maze_score(engine, tokens, HUGE_U32_COUNT, lp, HUGE, &n, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least 2 tokens", "score 0 tokens", maze_score(engine, NULL, 0, lp, 8, &n, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least 2 tokens", "score 1 token", maze_score(engine, tokens, 1, lp, 8, &n, ERR));
    uint32_t bad[] = {1, vocab};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "outside the vocabulary", "score id == vocab", maze_score(engine, bad, 2, lp, 8, &n, ERR));
    CHECK(n == 777, "n_logprobs untouched by failures");
    lp[0] = 42;
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "log-probabilities", "score capacity 0", maze_score(engine, tokens, 4, lp, 0, &n, ERR));
    CHECK(n == 3 && lp[0] == 42, "needed 3, logprobs untouched");
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "buffer holds 2", "score capacity 2", maze_score(engine, tokens, 4, lp, 2, &n, ERR));
    EXPECT_OK("score huge capacity", maze_score(engine, tokens, 4, lp, HUGE, &n, ERR));
    CHECK(n == 3 && lp[0] <= 0 && lp[2] <= 0, "scores");
    /* Beyond the context (the shared engine holds 512 tokens). */
    uint32_t *many = calloc(600, sizeof *many);
    for (int i = 0; i < 600; i++) many[i] = 104;
    float *out = calloc(600, sizeof *out);
    MISUSE(MAZE_STATUS_CONTEXT_OVERFLOW, "context", "score beyond the context", maze_score(engine, many, 600, out, 600, &n, ERR));
    free(many);
    free(out);
}

static void m_chat_apply_template(void) {
    maze_chat_message msgs[] = {maze_msg("user", "hi")};
    char buf[512];
    size_t len = 777;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "template NULL engine", maze_chat_apply_template(NULL, msgs, 1, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'messages'", "template NULL messages", maze_chat_apply_template(engine, NULL, 1, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_len'", "template NULL out_len", maze_chat_apply_template(engine, msgs, 1, true, buf, sizeof buf, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'buf'", "template NULL buf", maze_chat_apply_template(engine, msgs, 1, true, NULL, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least one message", "template 0 messages", maze_chat_apply_template(engine, msgs, 0, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least one message", "template NULL, 0 messages", maze_chat_apply_template(engine, NULL, 0, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'messages'", "template SIZE_MAX messages", maze_chat_apply_template(engine, msgs, HUGE, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'messages'", "template messages past the address space", maze_chat_apply_template(engine, msgs, (size_t)PTRDIFF_MAX / sizeof(maze_chat_message) + 1, true, buf, sizeof buf, &len, ERR));
    /* Each string of each message: NULL with a length, a huge length, invalid UTF-8. */
    maze_chat_message m2[] = {maze_msg("system", "be brief"), maze_msg("user", "hi")};
    m2[1].role = (maze_string){NULL, 4};
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "messages[1].role", "template NULL role", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    m2[1].role = (maze_string){"user", HUGE};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "messages[1].role", "template huge role", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    m2[1].role = maze_str(bad_utf8[3]);
    MISUSE(MAZE_STATUS_INVALID_UTF8, "messages[1].role", "template bad UTF-8 role", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    m2[1].role = maze_str("user");
    m2[1].content = (maze_string){NULL, 2};
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "messages[1].content", "template NULL content", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    m2[1].content = (maze_string){"hi", HUGE};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "messages[1].content", "template huge content", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    for (size_t i = 0; i < N_BAD_UTF8; i++) {
        m2[1].content = maze_str(bad_utf8[i]);
        MISUSE(MAZE_STATUS_INVALID_UTF8, "messages[1].content", "template bad UTF-8 content", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    }
    CHECK(len == 777, "out_len untouched by failures");
    /* Empty strings are text like any other (NULL, 0 included). */
    m2[1].content = (maze_string){NULL, 0};
    EXPECT_OK("template empty content", maze_chat_apply_template(engine, m2, 2, true, buf, sizeof buf, &len, ERR));
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "rendered chat", "template capacity 0", maze_chat_apply_template(engine, msgs, 1, true, NULL, 0, &len, ERR));
    size_t needed = len;
    MISUSE(MAZE_STATUS_BUFFER_TOO_SMALL, "plus a NUL", "template no room for NUL", maze_chat_apply_template(engine, msgs, 1, true, buf, needed, &len, ERR));
    EXPECT_OK("template exact", maze_chat_apply_template(engine, msgs, 1, true, buf, needed + 1, &len, ERR));
    CHECK(len == needed && buf[len] == 0, "rendered %zu bytes", len);
}

static void m_str(void) {
    maze_string s = maze_str(NULL);
    CHECK(s.data == NULL && s.len == 0, "maze_str(NULL) is empty");
    s = maze_str("");
    CHECK(s.len == 0, "maze_str(\"\")");
    s = maze_str("abc");
    CHECK(s.len == 3, "maze_str(abc)");
}

/* ================================================================ sessions */

static void m_generate_params_default(void) {
    maze_generate_params p = maze_generate_params_default();
    CHECK(p.struct_size == sizeof p && p.stop == NULL && p.n_stop == 0 && p.constraints == NULL && p.seed == MAZE_SEED_RANDOM,
          "generate params default");
}

static void m_session_new(void) {
    maze_session *s = SENTINEL;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "session_new NULL engine", maze_session_new(NULL, &s, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_session'", "session_new NULL out", maze_session_new(engine, NULL, ERR));
    CHECK(s == SENTINEL, "out_session untouched");
}

static void m_session_free(void) {
    maze_session_free(NULL);
    /* Freed without ever generating; and after a reset. */
    maze_session *s = new_session();
    maze_session_free(s);
    s = new_session();
    EXPECT_OK("reset unused", maze_session_reset(s, ERR));
    maze_session_free(s);
}

/* The params cases every generate function shares: `call` uses the locals `s`, `p` and `r`. */
#define GENERATE_PARAMS_CASES(name, call)                                                                   \
    do {                                                                                                    \
        maze_generate_params p;                                                                             \
        uint32_t small_[] = {0, 1, 4, 7};                                                                   \
        for (size_t i_ = 0; i_ < 4; i_++) {                                                                 \
            p = quick_params(2);                                                                            \
            p.struct_size = small_[i_];                                                                     \
            MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "struct_size", name " struct_size too small", call);      \
        }                                                                                                   \
        uint32_t large_[] = {sizeof p + 1, sizeof p + 8, UINT32_MAX};                                       \
        for (size_t i_ = 0; i_ < 3; i_++) {                                                                 \
            p = quick_params(2);                                                                            \
            p.struct_size = large_[i_];                                                                     \
            MISUSE(MAZE_STATUS_ABI_MISMATCH, "newer maze.h", name " struct_size too large", call);         \
        }                                                                                                   \
        p = quick_params(2);                                                                                \
        p.n_stop = 1;                                                                                       \
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'params.stop'", name " NULL stop array", call);                 \
        p.n_stop = HUGE;                                                                                    \
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'params.stop'", name " NULL stop array, huge count", call);     \
        maze_string stops_[2] = {maze_str("."), {NULL, 1}};                                                 \
        p.stop = stops_;                                                                                    \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'params.stop'", name " huge stop count", call);              \
        p.n_stop = 2;                                                                                       \
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "params.stop[1]", name " NULL stop string", call);               \
        stops_[1] = (maze_string){".", HUGE};                                                               \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "params.stop[1]", name " huge stop length", call);            \
        stops_[1] = maze_str("");                                                                           \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "params.stop[1] is empty", name " empty stop", call);         \
        for (size_t i_ = 0; i_ < N_BAD_UTF8; i_++) {                                                        \
            stops_[1] = maze_str(bad_utf8[i_]);                                                             \
            MISUSE(MAZE_STATUS_INVALID_UTF8, "params.stop[1]", name " bad UTF-8 stop", call);              \
        }                                                                                                   \
        p = quick_params(2);                                                                                \
        p.n_constraints = 1;                                                                                \
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'params.constraints'", name " NULL constraints array", call);   \
        const maze_constraint *cs_[2] = {NULL, NULL};                                                       \
        p.constraints = cs_;                                                                                \
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "params.constraints[0]", name " NULL constraint handle", call);  \
        p.n_constraints = HUGE;                                                                             \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'params.constraints'", name " huge constraint count", call); \
        p = quick_params(2);                                                                                \
        p.temperature = -1;                                                                                 \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "temperature", name " temperature -1", call);                 \
        p.temperature = NAN;                                                                        \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "temperature", name " temperature NaN", call);                \
        p = quick_params(2);                                                                                \
        p.top_p = 0;                                                                                        \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "top_p", name " top_p 0", call);                              \
        p = quick_params(2);                                                                                \
        p.min_p = 2;                                                                                        \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "min_p", name " min_p 2", call);                              \
        p = quick_params(2);                                                                                \
        p.repetition_penalty = 0;                                                                           \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "repetition_penalty", name " repetition_penalty 0", call);    \
        p = quick_params(2);                                                                                \
        p.frequency_penalty = INFINITY;                                                                  \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "frequency_penalty", name " frequency_penalty inf", call);    \
        p = quick_params(2);                                                                                \
        p.presence_penalty = -INFINITY;                                                                  \
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "presence_penalty", name " presence_penalty -inf", call);     \
        CHECK(r == SENTINEL, name ": *out_result untouched by failures");                                   \
    } while (0)

static void m_session_generate(void) {
    maze_session *s = new_session();
    maze_result *r = SENTINEL;
    maze_generate_params q = quick_params(2);
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'session'", "generate NULL session", maze_session_generate(NULL, "a", 1, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_result'", "generate NULL out", maze_session_generate(s, "a", 1, &q, NULL, NULL, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'prompt'", "generate NULL prompt", maze_session_generate(s, NULL, 1, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'prompt'", "generate NULL prompt huge", maze_session_generate(s, NULL, HUGE, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "prompt is empty", "generate NULL, 0 prompt", maze_session_generate(s, NULL, 0, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "prompt is empty", "generate empty prompt", maze_session_generate(s, "", 0, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'prompt'", "generate SIZE_MAX prompt", maze_session_generate(s, "a", HUGE, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'prompt'", "generate PTRDIFF_MAX+1 prompt", maze_session_generate(s, "a", (size_t)PTRDIFF_MAX + 1, &q, NULL, NULL, &r, ERR));
    for (size_t i = 0; i < N_BAD_UTF8; i++)
        MISUSE(MAZE_STATUS_INVALID_UTF8, "'prompt'", "generate bad UTF-8 prompt", maze_session_generate(s, bad_utf8[i], strlen(bad_utf8[i]), &q, NULL, NULL, &r, ERR));
    char *prompt = malloc(4001);
    for (int i = 0; i < 4000; i++) prompt[i] = "abcdefgh "[i % 9];
    prompt[4000] = 0;
    MISUSE(MAZE_STATUS_CONTEXT_OVERFLOW, "context holds 512", "generate beyond the context", maze_session_generate(s, prompt, 4000, &q, NULL, NULL, &r, ERR));
    free(prompt);
    GENERATE_PARAMS_CASES("generate", maze_session_generate(s, "a", 1, &p, NULL, NULL, &r, ERR));
    /* After all that the session still works; NULL params mean the defaults. */
    maze_generate_params older = quick_params(3);
    older.struct_size = 8; /* struct_size and max_tokens: the rest keeps its defaults */
    r = NULL;
    EXPECT_OK("generate with an older struct", maze_session_generate(s, "a", 1, &older, NULL, NULL, &r, ERR));
    CHECK(maze_result_generated_tokens(r) <= 3, "older struct's max_tokens read (%u)", maze_result_generated_tokens(r));
    maze_result_free(r);
    maze_session_free(s);
}

static void m_session_generate_tokens(void) {
    maze_session *s = new_session();
    maze_result *r = SENTINEL;
    maze_generate_params q = quick_params(2);
    uint32_t toks[] = {1, 104, 105};
    uint32_t vocab = maze_engine_vocab_size(engine);
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'session'", "generate_tokens NULL session", maze_session_generate_tokens(NULL, toks, 3, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_result'", "generate_tokens NULL out", maze_session_generate_tokens(s, toks, 3, &q, NULL, NULL, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'tokens'", "generate_tokens NULL tokens", maze_session_generate_tokens(s, NULL, 3, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "prompt is empty", "generate_tokens 0 tokens", maze_session_generate_tokens(s, NULL, 0, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "generate_tokens SIZE_MAX", maze_session_generate_tokens(s, toks, HUGE, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'tokens'", "generate_tokens past the address space", maze_session_generate_tokens(s, toks, HUGE_U32_COUNT, &q, NULL, NULL, &r, ERR));
    uint32_t bad[] = {1, vocab};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "outside the vocabulary", "generate_tokens id == vocab", maze_session_generate_tokens(s, bad, 2, &q, NULL, NULL, &r, ERR));
    bad[1] = UINT32_MAX;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "outside the vocabulary", "generate_tokens id UINT32_MAX", maze_session_generate_tokens(s, bad, 2, &q, NULL, NULL, &r, ERR));
    uint32_t *many = calloc(600, sizeof *many);
    for (int i = 0; i < 600; i++) many[i] = 104;
    MISUSE(MAZE_STATUS_CONTEXT_OVERFLOW, "context", "generate_tokens beyond the context", maze_session_generate_tokens(s, many, 600, &q, NULL, NULL, &r, ERR));
    free(many);
    GENERATE_PARAMS_CASES("generate_tokens", maze_session_generate_tokens(s, toks, 3, &p, NULL, NULL, &r, ERR));
    r = NULL;
    EXPECT_OK("generate_tokens", maze_session_generate_tokens(s, toks, 3, &q, NULL, NULL, &r, ERR));
    maze_result_free(r);
    maze_session_free(s);
}

static void m_session_chat(void) {
    maze_session *s = new_session();
    maze_result *r = SENTINEL;
    maze_generate_params q = quick_params(2);
    maze_chat_message msgs[] = {maze_msg("system", "x"), maze_msg("user", "hi")};
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'session'", "chat NULL session", maze_session_chat(NULL, msgs, 2, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_result'", "chat NULL out", maze_session_chat(s, msgs, 2, &q, NULL, NULL, NULL, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'messages'", "chat NULL messages", maze_session_chat(s, NULL, 2, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least one message", "chat 0 messages", maze_session_chat(s, msgs, 0, &q, NULL, NULL, &r, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'messages'", "chat SIZE_MAX messages", maze_session_chat(s, msgs, HUGE, &q, NULL, NULL, &r, ERR));
    msgs[1].role = (maze_string){NULL, 1};
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "messages[1].role", "chat NULL role", maze_session_chat(s, msgs, 2, &q, NULL, NULL, &r, ERR));
    msgs[1].role = maze_str(bad_utf8[0]);
    MISUSE(MAZE_STATUS_INVALID_UTF8, "messages[1].role", "chat bad UTF-8 role", maze_session_chat(s, msgs, 2, &q, NULL, NULL, &r, ERR));
    msgs[1].role = maze_str("user");
    msgs[0].content = (maze_string){"x", HUGE};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "messages[0].content", "chat huge content", maze_session_chat(s, msgs, 2, &q, NULL, NULL, &r, ERR));
    for (size_t i = 0; i < N_BAD_UTF8; i++) {
        msgs[0].content = maze_str(bad_utf8[i]);
        MISUSE(MAZE_STATUS_INVALID_UTF8, "messages[0].content", "chat bad UTF-8 content", maze_session_chat(s, msgs, 2, &q, NULL, NULL, &r, ERR));
    }
    msgs[0].content = maze_str("x");
    GENERATE_PARAMS_CASES("chat", maze_session_chat(s, msgs, 2, &p, NULL, NULL, &r, ERR));
    r = NULL;
    EXPECT_OK("chat", maze_session_chat(s, msgs, 2, &q, NULL, NULL, &r, ERR));
    maze_result_free(r);
    maze_session_free(s);
}

/* A streaming callback that, while its generation runs, checks the calls the header says must
 * be refused on the same session, and frees a constraint the generation uses. */
typedef struct {
    maze_session *session;
    maze_constraint *to_free;
    int chunks;
    maze_status nested_generate, nested_tokens, nested_chat, nested_reset;
} inside;

static bool inside_callback(const char *text, size_t len, void *ud) {
    (void)text;
    (void)len;
    inside *in = ud;
    if (in->chunks++ == 0) {
        maze_result *r = SENTINEL;
        maze_error *err = NULL;
        uint32_t tok = 104;
        maze_chat_message m = maze_msg("user", "hi");
        in->nested_generate = maze_session_generate(in->session, "a", 1, NULL, NULL, NULL, &r, &err);
        expect_error(in->nested_generate, err, MAZE_STATUS_BUSY, "already generating", "generate inside the callback");
        err = NULL;
        in->nested_tokens = maze_session_generate_tokens(in->session, &tok, 1, NULL, NULL, NULL, &r, &err);
        expect_error(in->nested_tokens, err, MAZE_STATUS_BUSY, "already generating", "generate_tokens inside the callback");
        err = NULL;
        in->nested_chat = maze_session_chat(in->session, &m, 1, NULL, NULL, NULL, &r, &err);
        expect_error(in->nested_chat, err, MAZE_STATUS_BUSY, "already generating", "chat inside the callback");
        err = NULL;
        in->nested_reset = maze_session_reset(in->session, &err);
        expect_error(in->nested_reset, err, MAZE_STATUS_BUSY, "generating", "reset inside the callback");
        CHECK(r == SENTINEL, "refused calls wrote no result");
        /* "freed ... any time: generations keep what they need" */
        maze_constraint_free(in->to_free);
        in->to_free = NULL;
    }
    return true;
}

static void m_session_busy_and_constraint_freed_midway(void) {
    maze_session *s = new_session();
    inside in = {.session = s, .to_free = constraint_json("{\"regex\": [\"[a-z]{6,12}\"]}")};
    maze_generate_params p = quick_params(16);
    const maze_constraint *cs[] = {in.to_free};
    p.constraints = cs;
    p.n_constraints = 1;
    maze_result *r = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_generate(s, "word:", 5, &p, inside_callback, &in, &r, &err);
    CHECK(st == MAZE_STATUS_OK && r, "generation with nested calls: %s %s", maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    CHECK(in.chunks > 0 && in.to_free == NULL, "callback ran (%d chunks)", in.chunks);
    size_t len = 0;
    const char *text = maze_result_text(r, &len);
    bool lower = len >= 6 && len <= 12;
    for (size_t i = 0; i < len; i++) lower = lower && text[i] >= 'a' && text[i] <= 'z';
    CHECK(lower && maze_result_constraints_satisfied(r), "constraint freed midway still enforced: '%s' %s", text,
          maze_result_validation_json(r));
    maze_result_free(r);
    maze_session_free(s);
}

static void m_session_cancel(void) {
    CHECK(maze_session_cancel(NULL) == MAZE_STATUS_NULL_ARGUMENT, "cancel(NULL)");
    /* Outside a call: a no-op that does not affect the next call (repeated, too). */
    maze_session *s = new_session();
    for (int i = 0; i < 5; i++) CHECK(maze_session_cancel(s) == MAZE_STATUS_OK, "idle cancel %d", i);
    maze_generate_params p = quick_params(4);
    p.ignore_eos = true;
    maze_result *r = generate_ok(s, "abc", &p);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH && maze_result_generated_tokens(r) == 4,
          "idle cancels did not stick: %s", maze_finish_reason_name(maze_result_finish_reason(r)));
    maze_result_free(r);
    CHECK(maze_session_cancel(s) == MAZE_STATUS_OK, "cancel after a call");
    r = generate_ok(s, "abc", &p);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH, "a cancel after a call does not stick");
    maze_result_free(r);
    maze_session_free(s);
}

/* Cancel tokens: NULL everywhere, a token cancelled before the call, a caller whose params
 * predate the `cancel` field (not read), and many threads cancelling one token at once. */
static void m_cancel_token(void) {
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_token'", "token_new NULL out", maze_cancel_token_new(NULL, ERR));
    CHECK(maze_cancel_token_cancel(NULL) == MAZE_STATUS_NULL_ARGUMENT, "token_cancel(NULL)");
    CHECK(!maze_cancel_token_is_cancelled(NULL), "is_cancelled(NULL)");
    maze_cancel_token_free(NULL);
    maze_cancel_token *t = NULL;
    EXPECT_OK("token_new", maze_cancel_token_new(&t, ERR));
    CHECK(t != NULL && !maze_cancel_token_is_cancelled(t), "fresh token");
    for (int i = 0; i < 3; i++) CHECK(maze_cancel_token_cancel(t) == MAZE_STATUS_OK, "cancel %d (idempotent)", i);
    CHECK(maze_cancel_token_is_cancelled(t), "stays cancelled");
    maze_session *s = new_session();
    maze_generate_params p = quick_params(4);
    p.ignore_eos = true;
    p.cancel = t;
    maze_result *r = generate_ok(s, "abc", &p);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_CANCELLED && maze_result_generated_tokens(r) == 0,
          "cancelled before the call: %s", maze_finish_reason_name(maze_result_finish_reason(r)));
    maze_result_free(r);
    /* An older caller's struct ends before `cancel`: whatever lies there is not read. */
    p.struct_size = (uint32_t)offsetof(maze_generate_params, cancel);
    r = generate_ok(s, "abc", &p);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH, "a field past struct_size was read: %s",
          maze_finish_reason_name(maze_result_finish_reason(r)));
    maze_result_free(r);
    maze_session_free(s);
    maze_cancel_token_free(t);
}

static void m_session_reset(void) {
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'session'", "reset NULL", maze_session_reset(NULL, ERR));
    maze_session *s = new_session();
    EXPECT_OK("reset twice (1)", maze_session_reset(s, ERR));
    EXPECT_OK("reset twice (2)", maze_session_reset(s, ERR));
    maze_session_free(s);
}

/* ================================================================ constraints */

static void m_constraint_desc_default(void) {
    maze_constraint_desc d = maze_constraint_desc_default();
    CHECK(d.struct_size == sizeof d && d.kind == MAZE_CONSTRAINT_KIND_JSON_SCHEMA && d.items == NULL && d.n_items == 0,
          "desc default");
}

static void m_constraint_new(void) {
    maze_constraint *c = SENTINEL;
    maze_constraint_desc d = maze_constraint_desc_default();
    maze_string regex[] = {maze_str("[a-z]+")};
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.items = regex;
    d.n_items = 1;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "constraint_new NULL engine", maze_constraint_new(NULL, &d, &c, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'desc'", "constraint_new NULL desc", maze_constraint_new(engine, NULL, &c, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_constraint'", "constraint_new NULL out", maze_constraint_new(engine, &d, NULL, ERR));
    /* struct_size */
    uint32_t small[] = {0, 1, 4, 7};
    for (size_t i = 0; i < 4; i++) {
        maze_constraint_desc e = d;
        e.struct_size = small[i];
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "struct_size", "desc struct_size too small", maze_constraint_new(engine, &e, &c, ERR));
    }
    uint32_t large[] = {sizeof d + 1, sizeof d + 8, UINT32_MAX};
    for (size_t i = 0; i < 3; i++) {
        maze_constraint_desc e = d;
        e.struct_size = large[i];
        MISUSE(MAZE_STATUS_ABI_MISMATCH, "newer maze.h", "desc struct_size too large", maze_constraint_new(engine, &e, &c, ERR));
    }
    /* kind */
    maze_constraint_desc e = d;
    e.kind = MAZE_CONSTRAINT_KIND_GBNF + 1; /* one past the last kind */
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.kind 6", "desc kind past the last", maze_constraint_new(engine, &e, &c, ERR));
    e.kind = UINT32_MAX;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.kind", "desc kind UINT32_MAX", maze_constraint_new(engine, &e, &c, ERR));
    /* name: NULL with a length, huge, invalid UTF-8 */
    e = d;
    e.name = (maze_string){NULL, 3};
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.name", "desc NULL name", maze_constraint_new(engine, &e, &c, ERR));
    e.name = (maze_string){"n", HUGE};
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.name", "desc huge name", maze_constraint_new(engine, &e, &c, ERR));
    for (size_t i = 0; i < N_BAD_UTF8; i++) {
        e.name = maze_str(bad_utf8[i]);
        MISUSE(MAZE_STATUS_INVALID_UTF8, "desc.name", "desc bad UTF-8 name", maze_constraint_new(engine, &e, &c, ERR));
    }
    /* items (regex and choice) */
    maze_constraint_kind item_kinds[] = {MAZE_CONSTRAINT_KIND_REGEX, MAZE_CONSTRAINT_KIND_CHOICE};
    for (size_t k = 0; k < 2; k++) {
        e = d;
        e.kind = item_kinds[k];
        e.items = NULL;
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.items", "desc NULL items", maze_constraint_new(engine, &e, &c, ERR));
        e.items = regex;
        e.n_items = HUGE;
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.items", "desc huge n_items", maze_constraint_new(engine, &e, &c, ERR));
        maze_string items[2] = {maze_str("a"), {NULL, 2}};
        e.items = items;
        e.n_items = 2;
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.items[1]", "desc NULL item", maze_constraint_new(engine, &e, &c, ERR));
        items[1] = (maze_string){"b", HUGE};
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.items[1]", "desc huge item", maze_constraint_new(engine, &e, &c, ERR));
        for (size_t i = 0; i < N_BAD_UTF8; i++) {
            items[1] = maze_str(bad_utf8[i]);
            MISUSE(MAZE_STATUS_INVALID_UTF8, "desc.items[1]", "desc bad UTF-8 item", maze_constraint_new(engine, &e, &c, ERR));
        }
        e.n_items = 0;
        MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, k == 0 ? "regex constraint: no patterns given" : "choice constraint: no options given", "desc no items", maze_constraint_new(engine, &e, &c, ERR));
    }
    /* text (JSON schema and Lark) */
    maze_constraint_kind text_kinds[] = {MAZE_CONSTRAINT_KIND_JSON_SCHEMA, MAZE_CONSTRAINT_KIND_LARK};
    for (size_t k = 0; k < 2; k++) {
        e = d;
        e.kind = text_kinds[k];
        e.text = (maze_string){NULL, 5};
        MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.text", "desc NULL text", maze_constraint_new(engine, &e, &c, ERR));
        e.text = (maze_string){"{}", HUGE};
        MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.text", "desc huge text", maze_constraint_new(engine, &e, &c, ERR));
        for (size_t i = 0; i < N_BAD_UTF8; i++) {
            e.text = maze_str(bad_utf8[i]);
            MISUSE(MAZE_STATUS_INVALID_UTF8, "desc.text", "desc bad UTF-8 text", maze_constraint_new(engine, &e, &c, ERR));
        }
        e.text = (maze_string){NULL, 0};
        MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, k == 0 ? "desc.text is not valid JSON" : "the grammar is empty", "desc empty text", maze_constraint_new(engine, &e, &c, ERR));
    }
    /* token masks */
    uint32_t vocab = maze_engine_vocab_size(engine);
    uint32_t ids[] = {104, vocab};
    e = d;
    e.kind = MAZE_CONSTRAINT_KIND_TOKEN_MASK;
    e.n_allowed_tokens = 1;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.allowed_tokens", "desc NULL allowed", maze_constraint_new(engine, &e, &c, ERR));
    e.allowed_tokens = ids;
    e.n_allowed_tokens = HUGE;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.allowed_tokens", "desc huge allowed", maze_constraint_new(engine, &e, &c, ERR));
    e.n_allowed_tokens = 2;
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "outside the vocabulary", "desc allowed id == vocab", maze_constraint_new(engine, &e, &c, ERR));
    e.n_allowed_tokens = 0;
    e.n_forbidden_tokens = 1;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "desc.forbidden_tokens", "desc NULL forbidden", maze_constraint_new(engine, &e, &c, ERR));
    e.forbidden_tokens = ids;
    e.n_forbidden_tokens = HUGE_U32_COUNT;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "desc.forbidden_tokens", "desc huge forbidden", maze_constraint_new(engine, &e, &c, ERR));
    e.n_forbidden_tokens = 2;
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "outside the vocabulary", "desc forbidden id == vocab", maze_constraint_new(engine, &e, &c, ERR));
    CHECK(c == SENTINEL, "out_constraint untouched by failures");
    /* The fields of other kinds are not read: garbage there is fine. */
    e = d;
    e.text = (maze_string){NULL, 99};
    e.allowed_tokens = NULL;
    e.n_allowed_tokens = HUGE;
    c = NULL;
    EXPECT_OK("regex desc ignores the text and token fields", maze_constraint_new(engine, &e, &c, ERR));
    CHECK(maze_constraint_count(c) == 1, "one constraint");
    maze_constraint_free(c);
}

static void m_constraint_from_json(void) {
    maze_constraint *c = SENTINEL;
    const char *ok = "{\"regex\": [\"[a-z]+\"]}";
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "from_json NULL engine", maze_constraint_from_json(NULL, ok, strlen(ok), &c, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'json'", "from_json NULL json", maze_constraint_from_json(engine, NULL, 4, &c, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_constraint'", "from_json NULL out", maze_constraint_from_json(engine, ok, strlen(ok), NULL, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "'json'", "from_json SIZE_MAX", maze_constraint_from_json(engine, ok, HUGE, &c, ERR));
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "does not parse", "from_json empty", maze_constraint_from_json(engine, NULL, 0, &c, ERR));
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "empty array", "from_json []", maze_constraint_from_json(engine, "[]", 2, &c, ERR));
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "does not parse", "from_json not JSON", maze_constraint_from_json(engine, "{", 1, &c, ERR));
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "expected one of json_schema", "from_json a number", maze_constraint_from_json(engine, "42", 2, &c, ERR));
    for (size_t i = 0; i < N_BAD_UTF8; i++)
        MISUSE(MAZE_STATUS_INVALID_UTF8, "'json'", "from_json bad UTF-8", maze_constraint_from_json(engine, bad_utf8[i], strlen(bad_utf8[i]), &c, ERR));
    /* Invalid UTF-8 inside a JSON string (after valid JSON syntax). */
    const char *inner = "{\"choice\": [\"a\xff\"]}";
    MISUSE(MAZE_STATUS_INVALID_UTF8, "'json'", "from_json bad UTF-8 in a string", maze_constraint_from_json(engine, inner, strlen(inner), &c, ERR));
    CHECK(c == SENTINEL, "out_constraint untouched by failures");
    /* Only json_len bytes are read: the text after them is not. */
    c = NULL;
    EXPECT_OK("from_json reads json_len bytes", maze_constraint_from_json(engine, "{\"choice\": [\"a\"]}GARBAGE", 17, &c, ERR));
    maze_constraint_free(c);
}

static void m_constraint_count_and_free(void) {
    CHECK(maze_constraint_count(NULL) == 0, "count(NULL)");
    maze_constraint_free(NULL);
    maze_constraint *c = constraint_json("[{\"choice\": [\"a\"]}, {\"regex\": [\"a\"]}]");
    CHECK(maze_constraint_count(c) == 2, "count 2");
    maze_constraint_free(c);
}

static void m_constraint_cache(void) {
    maze_constraint_cache_stats st;
    memset(&st, 0xab, sizeof st);
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "cache_stats NULL engine", maze_engine_constraint_cache_stats(NULL, &st, ERR));
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out'", "cache_stats NULL out", maze_engine_constraint_cache_stats(engine, NULL, ERR));
    CHECK(st.size == 0xababababababababULL, "stats untouched by failures");
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "cache_clear NULL", maze_engine_constraint_cache_clear(NULL, ERR));
    CHECK(maze_engine_constraint_setup_time_us(NULL) == 0, "setup_time(NULL)");
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'engine'", "cache_set_limit NULL", maze_engine_constraint_cache_set_limit(NULL, 4, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "at least 1", "cache_set_limit 0", maze_engine_constraint_cache_set_limit(engine, 0, ERR));
    EXPECT_OK("cache_set_limit UINT64_MAX", maze_engine_constraint_cache_set_limit(engine, UINT64_MAX, ERR));
    EXPECT_OK("cache_stats", maze_engine_constraint_cache_stats(engine, &st, ERR));
    CHECK(st.limit == UINT64_MAX || st.limit >= (1u << 30), "limit %llu", (unsigned long long)st.limit);
    EXPECT_OK("cache_set_limit 256", maze_engine_constraint_cache_set_limit(engine, 256, ERR));
    EXPECT_OK("cache_clear", maze_engine_constraint_cache_clear(engine, ERR));
    EXPECT_OK("cache_clear twice", maze_engine_constraint_cache_clear(engine, ERR));
}

/* ================================================================ results */

static void m_result_getters(void) {
    size_t n = 99;
    CHECK(!strcmp(maze_result_text(NULL, &n), "") && n == 0, "text(NULL)");
    CHECK(!strcmp(maze_result_text(NULL, NULL), ""), "text(NULL, NULL)");
    n = 99;
    CHECK(maze_result_tokens(NULL, &n) == NULL && n == 0, "tokens(NULL)");
    CHECK(maze_result_tokens(NULL, NULL) == NULL, "tokens(NULL, NULL)");
    n = 99;
    CHECK(maze_result_logprobs(NULL, &n) == NULL && n == 0, "logprobs(NULL)");
    CHECK(maze_result_logprobs(NULL, NULL) == NULL, "logprobs(NULL, NULL)");
    CHECK(maze_result_finish_reason(NULL) == MAZE_FINISH_REASON_ERROR, "finish(NULL)");
    CHECK(maze_result_error_status(NULL) == MAZE_STATUS_NULL_ARGUMENT, "error_status(NULL)");
    CHECK(maze_result_error_message(NULL) == NULL, "error_message(NULL)");
    CHECK(maze_result_prompt_tokens(NULL) == 0 && maze_result_cached_tokens(NULL) == 0 && maze_result_generated_tokens(NULL) == 0, "counts(NULL)");
    CHECK(maze_result_time_to_first_token_ms(NULL) == 0 && maze_result_total_time_ms(NULL) == 0, "times(NULL)");
    CHECK(maze_result_tokens_per_second(NULL) == 0 && maze_result_prefill_tokens_per_second(NULL) == 0, "speeds(NULL)");
    CHECK(!maze_result_constraints_satisfied(NULL), "satisfied(NULL)");
    CHECK(!strcmp(maze_result_validation_json(NULL), "") && !strcmp(maze_result_provenance_json(NULL), ""), "json(NULL)");
    CHECK(maze_result_constraint_compile_time_us(NULL) == 0 && maze_result_mean_mask_time_us(NULL) == 0 && maze_result_forced_tokens(NULL) == 0, "constraint stats(NULL)");
    CHECK(maze_result_constraint_setup_time_us(NULL) == 0, "setup time(NULL)");
    maze_result_free(NULL);
    /* A real result with the optional out-pointers NULL; no logprobs asked: NULL and 0. */
    maze_session *s = new_session();
    maze_generate_params p = quick_params(3);
    p.ignore_eos = true;
    maze_result *r = generate_ok(s, "abc", &p);
    CHECK(maze_result_text(r, NULL) != NULL, "text(r, NULL)");
    CHECK(maze_result_tokens(r, NULL) != NULL, "tokens(r, NULL)");
    n = 99;
    CHECK(maze_result_logprobs(r, &n) == NULL && n == 0, "logprobs not asked");
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH && maze_result_error_status(r) == MAZE_STATUS_OK &&
              maze_result_error_message(r) == NULL, "no midway error");
    CHECK(maze_result_generated_tokens(r) == 3 && maze_result_prompt_tokens(r) >= 3, "counts");
    CHECK(maze_result_constraints_satisfied(r) && maze_result_validation_json(r)[0] == '{' && maze_result_provenance_json(r)[0] == '{', "json");
    CHECK(maze_result_total_time_ms(r) >= maze_result_time_to_first_token_ms(r) && maze_result_tokens_per_second(r) >= 0 &&
              maze_result_prefill_tokens_per_second(r) >= 0, "times");
    CHECK(maze_result_constraint_compile_time_us(r) == 0 && maze_result_constraint_setup_time_us(r) == 0 &&
              maze_result_mean_mask_time_us(r) == 0 && maze_result_forced_tokens(r) == 0 &&
              maze_result_cached_tokens(r) <= maze_result_prompt_tokens(r), "no constraint stats");
    maze_result_free(r);
    maze_session_free(s);
}

static void m_finish_reason_name(void) {
    CHECK(!strcmp(maze_finish_reason_name(MAZE_FINISH_REASON_ERROR), "error"), "error name");
    CHECK(!strcmp(maze_finish_reason_name(MAZE_FINISH_REASON_TOOL_CALLS), "tool_calls"), "tool_calls name");
    int32_t odd[] = {-1, MAZE_FINISH_REASON_TOOL_CALLS + 1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < 4; i++) CHECK(!strcmp(maze_finish_reason_name(odd[i]), "unknown"), "finish name %d", odd[i]);
}

/* ================================================================ tools */

static void m_tools(void) {
    maze_chat_message m = maze_msg(NULL, "x");
    CHECK(m.struct_size == sizeof m && m.role.len == 0 && m.content.len == 1 && m.n_tool_calls == 0 && m.tool_calls == NULL &&
              m.tool_call_id.len == 0, "maze_msg");
    maze_tool_call call;
    CHECK(maze_result_tool_call_count(NULL) == 0 && !maze_result_tool_call_satisfied(NULL, 0), "tool getters(NULL)");
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'result'", "tool_call(NULL)", maze_result_tool_call(NULL, 0, &call, ERR));
    maze_session *s = new_session();
    maze_generate_params p = quick_params(3);
    maze_result *r = generate_ok(s, "abc", &p);
    CHECK(maze_result_tool_call_count(r) == 0 && !maze_result_tool_call_satisfied(r, 0), "no calls without tools");
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "'out_call'", "tool_call NULL out", maze_result_tool_call(r, 0, NULL, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "tool call 0 does not exist: the reply has 0", "tool_call past the end", maze_result_tool_call(r, 0, &call, ERR));
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "does not exist", "tool_call SIZE_MAX", maze_result_tool_call(r, SIZE_MAX, &call, ERR));
    maze_result_free(r);

    maze_tool tools[2] = {
        {maze_str("add"), maze_str("Add two integers"), maze_str("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"}},\"required\":[\"a\",\"b\"]}")},
        {maze_str("now"), maze_str("The time"), maze_str("")},
    };
    maze_chat_message ask[] = {maze_msg("user", "What is 2 plus 3?")};
    p = quick_params(40);
    p.tools = tools;
    p.n_tools = 2;
    maze_result *out = NULL;
    /* SmolLM2's template cannot render tools: the generic format must be chosen. */
    MISUSE(MAZE_STATUS_UNSUPPORTED, "generic tool format", "tools, template without tools", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    p.tool_format = MAZE_TOOL_FORMAT_GENERIC;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "need a chat prompt", "tools on a text prompt", maze_session_generate(s, "hi", 2, &p, NULL, NULL, &out, ERR));
    p.tool_format = 99;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "params.tool_format 99", "tool_format out of range", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    p.tool_format = MAZE_TOOL_FORMAT_GENERIC;
    p.tool_choice = 77;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "params.tool_choice 77", "tool_choice out of range", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    p.tool_choice = MAZE_TOOL_CHOICE_NAMED;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "needs the tool's name", "named choice, no name", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    p.tool_choice_name = maze_str("search");
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "names 'search', which is not among the declared tools (add, now)", "named undeclared", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    p.tool_choice = MAZE_TOOL_CHOICE_REQUIRED;
    tools[1].name = maze_str("add");
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "already declared by tools[0]", "duplicate tool", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    tools[1].name = maze_str("has space");
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "^[A-Za-z0-9_-]{1,64}$", "bad tool name", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    tools[1].name = maze_str("now");
    tools[1].parameters_json = maze_str("{not json");
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "params.tools[1].parameters_json is not JSON", "bad schema JSON", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    tools[1].parameters_json = maze_str("{\"type\":\"object\",\"not\":{}}");
    MISUSE(MAZE_STATUS_INVALID_CONSTRAINT, "tool 'now' parameters", "schema Maze cannot enforce", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    tools[1].parameters_json = maze_str("");
    tools[1].name = maze_str(NULL);
    tools[1].name.data = NULL;
    tools[1].name.len = 3;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "params.tools[1].name", "NULL tool name", maze_session_chat(s, ask, 1, &p, NULL, NULL, &out, ERR));
    tools[1].name = maze_str("now");
    /* History: a tool message must answer an earlier call; struct_size must be this ABI's. */
    maze_tool_call made = {maze_str("call_1"), maze_str("add"), maze_str("{\"a\": 2, \"b\": 3}")};
    maze_chat_message history[3] = {maze_msg("user", "What is 2 plus 3?"), maze_msg("assistant", ""), maze_msg("tool", "5")};
    history[1].tool_calls = &made;
    history[1].n_tool_calls = 1;
    history[2].tool_call_id = maze_str("call_9");
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "tool_call_id 'call_9' matches no earlier tool call (calls: call_1)", "unanswered id", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    history[2].tool_call_id = maze_str("call_1");
    made.arguments = maze_str("[1]");
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "arguments must be a JSON object", "call arguments not an object", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    made.arguments = maze_str("{\"a\": 2, \"b\": 3}");
    history[1].n_tool_calls = 2;
    history[1].tool_calls = NULL;
    MISUSE(MAZE_STATUS_NULL_ARGUMENT, "messages[1].tool_calls", "NULL calls, count 2", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    history[1].tool_calls = &made;
    history[1].n_tool_calls = 1;
    history[0].struct_size = 7;
    MISUSE(MAZE_STATUS_ABI_MISMATCH, "struct_size 7", "message struct_size too small", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    history[0].struct_size = 4096;
    MISUSE(MAZE_STATUS_ABI_MISMATCH, "newer maze.h", "message struct_size too large", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    history[0].struct_size = 0; /* 0 reads as this header's size */
    history[2].struct_size = 9;
    MISUSE(MAZE_STATUS_INVALID_ARGUMENT, "messages[2].struct_size is 9", "mixed struct sizes", maze_session_chat(s, history, 3, &p, NULL, NULL, &out, ERR));
    history[2].struct_size = (uint32_t)sizeof(maze_chat_message);
    /* The valid request is tested on a real model (tests/c/test_api.c: a generic-format call). */
    maze_session_free(s);
}

/* ================================================================ many threads */

static maze_error *shared_error;
static maze_result *shared_result;
static atomic_int go;

/* Each thread: the NULL and invalid paths of the functions on the shared engine, error
 * getters on one shared error object and result getters on one shared result, sessions of
 * its own opened, misused and freed, and a busy check against one shared session. */
static void *hammer(void *arg) {
    int id = (int)(intptr_t)arg;
    while (!atomic_load(&go)) {
    }
    uint32_t tokens[16];
    char buf[64];
    size_t n = 0;
    const char *expect_msg = maze_error_message(shared_error);
    size_t expect_len = 0;
    const char *expect_text = maze_result_text(shared_result, &expect_len);
    for (int i = 0; i < 40; i++) {
        maze_error *err = NULL;
        CHECK(maze_tokenize(NULL, "a", 1, false, false, tokens, 16, &n, &err) == MAZE_STATUS_NULL_ARGUMENT &&
                  maze_error_status(err) == MAZE_STATUS_NULL_ARGUMENT, "thread %d: tokenize NULL", id);
        maze_error_free(err);
        err = NULL;
        const char *bad = bad_utf8[(id + i) % N_BAD_UTF8];
        CHECK(maze_tokenize(engine, bad, strlen(bad), false, false, tokens, 16, &n, &err) == MAZE_STATUS_INVALID_UTF8 &&
                  strstr(maze_error_message(err), "'text'"), "thread %d: tokenize bad UTF-8", id);
        maze_error_free(err);
        CHECK(maze_tokenize(engine, "a", HUGE, false, false, tokens, 16, &n, NULL) == MAZE_STATUS_INVALID_ARGUMENT, "thread %d: huge", id);
        n = 0;
        CHECK(maze_detokenize(engine, hi, n_hi, NULL, 0, &n, NULL) == MAZE_STATUS_BUFFER_TOO_SMALL && n == 2, "thread %d: detokenize size query", id);
        CHECK(maze_detokenize(engine, (uint32_t[]){UINT32_MAX}, 1, buf, sizeof buf, &n, NULL) == MAZE_STATUS_INVALID_ARGUMENT, "thread %d: bad id", id);
        err = NULL;
        CHECK(maze_constraint_from_json(engine, "{\"regex\": 3}", 12, (maze_constraint **)SENTINEL, &err) == MAZE_STATUS_INVALID_CONSTRAINT, "thread %d: bad constraint", id);
        maze_error_free(err);
        CHECK(maze_engine_constraint_cache_stats(engine, NULL, NULL) == MAZE_STATUS_NULL_ARGUMENT, "thread %d: stats NULL", id);
        CHECK(maze_session_cancel(NULL) == MAZE_STATUS_NULL_ARGUMENT, "thread %d: cancel NULL", id);
        CHECK(maze_session_reset(NULL, NULL) == MAZE_STATUS_NULL_ARGUMENT, "thread %d: reset NULL", id);
        const char *name = maze_status_name(i % 20);
        bool known = i % 20 <= MAZE_STATUS_INVALID_CONSTRAINT;
        CHECK(known ? !strncmp(name, "MAZE_STATUS_", 12) && strcmp(name, "MAZE_STATUS_UNKNOWN") : !strcmp(name, "MAZE_STATUS_UNKNOWN"),
              "thread %d: status name of %d is %s", id, i % 20, name);
        /* Shared immutable objects read concurrently. */
        CHECK(maze_error_status(shared_error) == MAZE_STATUS_INVALID_UTF8 && maze_error_message(shared_error) == expect_msg, "thread %d: shared error", id);
        size_t len = 0;
        CHECK(maze_result_text(shared_result, &len) == expect_text && len == expect_len && maze_result_validation_json(shared_result)[0] == '{', "thread %d: shared result", id);
        CHECK(maze_engine_vocab_size(engine) > 0 && maze_engine_context_length(engine) == 512, "thread %d: engine getters", id);
        /* A session of its own: misused, reset, freed. */
        maze_session *s = NULL;
        CHECK(maze_session_new(engine, &s, NULL) == MAZE_STATUS_OK, "thread %d: session", id);
        maze_generate_params p = quick_params(1);
        p.struct_size = 0;
        maze_result *r = SENTINEL;
        CHECK(maze_session_generate(s, "a", 1, &p, NULL, NULL, &r, NULL) == MAZE_STATUS_INVALID_ARGUMENT && r == SENTINEL, "thread %d: bad params", id);
        CHECK(maze_session_generate(s, NULL, 0, NULL, NULL, NULL, &r, NULL) == MAZE_STATUS_INVALID_ARGUMENT, "thread %d: empty prompt", id);
        CHECK(maze_session_cancel(s) == MAZE_STATUS_OK, "thread %d: idle cancel", id);
        CHECK(maze_session_reset(s, NULL) == MAZE_STATUS_OK, "thread %d: reset", id);
        maze_session_free(s);
    }
    return NULL;
}

/* One session generating, held inside its callback while 16 threads call generate and reset on
 * it: every one of those calls must be refused with BUSY. */
static atomic_int busy_release;
static bool hold_callback(const char *text, size_t len, void *ud) {
    (void)text;
    (void)len;
    if (atomic_fetch_add((atomic_int *)ud, 1) == 0)
        while (!atomic_load(&busy_release)) usleep(1000);
    return true;
}

typedef struct {
    maze_session *s;
    int busy;
    int other;
} busy_job;

static void *busy_caller(void *arg) {
    busy_job *j = arg;
    for (int i = 0; i < 10; i++) {
        maze_result *r = SENTINEL;
        maze_status st = maze_session_generate(j->s, "a", 1, NULL, NULL, NULL, &r, NULL);
        if (st == MAZE_STATUS_BUSY && r == SENTINEL) j->busy++; else j->other++;
        st = maze_session_reset(j->s, NULL);
        if (st == MAZE_STATUS_BUSY) j->busy++; else j->other++;
        CHECK(maze_session_cancel(j->s) == MAZE_STATUS_OK, "cancel on a busy session");
    }
    return NULL;
}

typedef struct {
    maze_session *s;
    atomic_int *inside;
    maze_status status;
    maze_result *r;
} holder_job;

static void *holder(void *arg) {
    holder_job *h = arg;
    maze_generate_params p = quick_params(8);
    p.ignore_eos = true;
    h->status = maze_session_generate(h->s, "abc", 3, &p, hold_callback, h->inside, &h->r, NULL);
    return NULL;
}

static void m_threads(void) {
    maze_error *err = NULL;
    CHECK(maze_tokenize(engine, "\xff", 1, false, false, NULL, 0, SENTINEL, &err) == MAZE_STATUS_INVALID_UTF8, "shared error");
    shared_error = err;
    maze_session *s = new_session();
    maze_generate_params p = quick_params(4);
    shared_result = generate_ok(s, "abc", &p);
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)i);
    atomic_store(&go, 1);
    for (int i = 0; i < N_THREADS; i++) pthread_join(t[i], NULL);
    maze_error_free(shared_error);
    maze_result_free(shared_result);

    /* BUSY from many threads at once. */
    atomic_int inside_cb = 0;
    holder_job h = {.s = s, .inside = &inside_cb};
    pthread_t ht;
    pthread_create(&ht, NULL, holder, &h);
    while (!atomic_load(&inside_cb)) usleep(1000);
    /* Let the worker finish all 8 tokens: what follows is delivery to a blocked callback. */
    usleep(300 * 1000);
    busy_job jobs[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (busy_job){.s = s};
        pthread_create(&t[i], NULL, busy_caller, &jobs[i]);
    }
    for (int i = 0; i < N_THREADS; i++) pthread_join(t[i], NULL);
    atomic_store(&busy_release, 1);
    pthread_join(ht, NULL);
    int busy = 0, other = 0;
    for (int i = 0; i < N_THREADS; i++) busy += jobs[i].busy, other += jobs[i].other;
    CHECK(busy == N_THREADS * 20 && other == 0, "all %d calls on a busy session refused with BUSY (%d were not)", N_THREADS * 20, other);
    /* The held generation was cancelled by those threads' cancels (it was in flight, though
     * its tokens were all computed): regression, it used to finish with LENGTH and deliver
     * the rest of its text after the cancel. */
    CHECK(h.status == MAZE_STATUS_OK && maze_result_finish_reason(h.r) == MAZE_FINISH_REASON_CANCELLED,
          "held generation: %s, finish %s", maze_status_name(h.status), maze_finish_reason_name(maze_result_finish_reason(h.r)));
    CHECK(atomic_load(&inside_cb) == 1 && maze_result_generated_tokens(h.r) <= 1,
          "no text delivered after the cancel: %d chunks, %u tokens", atomic_load(&inside_cb), maze_result_generated_tokens(h.r));
    maze_result_free(h.r);
    maze_session_free(s);
}

/* ================================================================ the table */

/* COVER(function, case): `function` of maze.h is covered by `case`. Taking its address keeps
 * the table honest: a name that is not a function of the header does not compile. */
#define COVER(function, run) {#function, (void (*)(void))(uintptr_t)&function, run}
static const struct {
    const char *function;
    void (*address)(void);
    void (*run)(void);
} suite[] = {
    COVER(maze_version, m_version),
    COVER(maze_abi_version, m_version),
    COVER(maze_status_name, m_status_name),
    COVER(maze_error_status, m_error),
    COVER(maze_error_message, m_error),
    COVER(maze_error_free, m_error),
    COVER(maze_engine_params_default, m_engine_params_default),
    COVER(maze_engine_new, m_engine_new),
    COVER(maze_engine_new, m_engine_new_huge_values),
    COVER(maze_engine_free, m_engine_free),
    COVER(maze_engine_model_name, m_engine_getters),
    COVER(maze_engine_architecture, m_engine_getters),
    COVER(maze_engine_vocab_size, m_engine_getters),
    COVER(maze_engine_context_length, m_engine_getters),
    COVER(maze_engine_has_chat_template, m_engine_getters),
    COVER(maze_engine_eos_token, m_engine_getters),
    COVER(maze_engine_token_is_end_of_generation, m_engine_getters),
    COVER(maze_tokenize, m_tokenize),
    COVER(maze_detokenize, m_detokenize),
    COVER(maze_score, m_score),
    COVER(maze_chat_apply_template, m_chat_apply_template),
    COVER(maze_str, m_str),
    COVER(maze_generate_params_default, m_generate_params_default),
    COVER(maze_session_new, m_session_new),
    COVER(maze_session_free, m_session_free),
    COVER(maze_session_generate, m_session_generate),
    COVER(maze_session_generate_tokens, m_session_generate_tokens),
    COVER(maze_session_chat, m_session_chat),
    COVER(maze_session_generate, m_session_busy_and_constraint_freed_midway),
    COVER(maze_session_cancel, m_session_cancel),
    COVER(maze_session_reset, m_session_reset),
    COVER(maze_constraint_desc_default, m_constraint_desc_default),
    COVER(maze_constraint_new, m_constraint_new),
    COVER(maze_constraint_from_json, m_constraint_from_json),
    COVER(maze_constraint_count, m_constraint_count_and_free),
    COVER(maze_constraint_free, m_constraint_count_and_free),
    COVER(maze_engine_constraint_cache_stats, m_constraint_cache),
    COVER(maze_engine_constraint_cache_clear, m_constraint_cache),
    COVER(maze_engine_constraint_cache_set_limit, m_constraint_cache),
    COVER(maze_engine_constraint_setup_time_us, m_constraint_cache),
    COVER(maze_result_text, m_result_getters),
    COVER(maze_result_tokens, m_result_getters),
    COVER(maze_result_logprobs, m_result_getters),
    COVER(maze_result_finish_reason, m_result_getters),
    COVER(maze_finish_reason_name, m_finish_reason_name),
    COVER(maze_result_error_status, m_result_getters),
    COVER(maze_result_error_message, m_result_getters),
    COVER(maze_result_prompt_tokens, m_result_getters),
    COVER(maze_result_cached_tokens, m_result_getters),
    COVER(maze_result_generated_tokens, m_result_getters),
    COVER(maze_result_time_to_first_token_ms, m_result_getters),
    COVER(maze_result_total_time_ms, m_result_getters),
    COVER(maze_result_tokens_per_second, m_result_getters),
    COVER(maze_result_prefill_tokens_per_second, m_result_getters),
    COVER(maze_result_constraints_satisfied, m_result_getters),
    COVER(maze_result_validation_json, m_result_getters),
    COVER(maze_result_provenance_json, m_result_getters),
    COVER(maze_result_constraint_compile_time_us, m_result_getters),
    COVER(maze_result_constraint_setup_time_us, m_result_getters),
    COVER(maze_result_mean_mask_time_us, m_result_getters),
    COVER(maze_result_forced_tokens, m_result_getters),
    COVER(maze_result_free, m_result_getters),
    COVER(maze_engine_health, m_engine_health),
    COVER(maze_engine_list_models, m_engine_list_models),
    /* Many threads: not one function but all the cheap ones at once. */
    COVER(maze_session_cancel, m_threads),
    COVER(maze_cancel_token_new, m_cancel_token),
    COVER(maze_cancel_token_cancel, m_cancel_token),
    COVER(maze_cancel_token_is_cancelled, m_cancel_token),
    COVER(maze_cancel_token_free, m_cancel_token),
    COVER(maze_msg, m_tools),
    COVER(maze_result_tool_call_count, m_tools),
    COVER(maze_result_tool_call, m_tools),
    COVER(maze_result_tool_call_satisfied, m_tools),
};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    /* engine_new with no model path must not find a server in the environment. */
    unsetenv("MAZE_ENDPOINT");

    maze_engine_params p = maze_engine_params_default();
    p.n_threads = 2;
    p.n_ctx = 512;
    p.seed = 42;
    maze_error *err = NULL;
    if (maze_engine_new(model_path, &p, &engine, &err) != MAZE_STATUS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", model_path, maze_error_message(err));
        return 1;
    }
    if (maze_tokenize(engine, "hi", 2, false, false, hi, 8, &n_hi, NULL) != MAZE_STATUS_OK || n_hi == 0) {
        fprintf(stderr, "cannot tokenize \"hi\"\n");
        return 1;
    }
    int ran = 0;
    for (size_t i = 0; i < sizeof suite / sizeof *suite; i++) {
        if (suite[i].run == NULL || suite[i].address == NULL) continue;
        /* One run per case function (the table lists it once per function it covers). */
        bool seen = false;
        for (size_t j = 0; j < i; j++) seen = seen || suite[j].run == suite[i].run;
        if (seen) continue;
        int before = passed + failed;
        int failed_before = failed;
        suite[i].run();
        printf("%-45s %4d checks%s\n", suite[i].function, passed + failed - before, failed > failed_before ? "  FAILED" : "");
        CHECK(passed + failed > before, "%s: the case checked nothing", suite[i].function);
        ran++;
    }
    maze_engine_free(engine);
    printf("misuse suite: %d case functions, %zu table entries; %d checks passed, %d failed\n", ran,
           sizeof suite / sizeof *suite, (int)passed, (int)failed);
    return failed ? 1 : 0;
}
