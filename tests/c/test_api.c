/*
 * The C API suite: every function of maze.h, success and error paths, against the real library
 * (linked as .so and as .a; run under AddressSanitizer and valgrind by `make test`).
 *
 *   test_api MODEL.gguf [--tiny]
 *
 * --tiny: the model is the random-weight test model (garbage text, tiny vocabulary); checks
 * that depend on a trained model's behaviour are skipped.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maze.h"
#include "check.h"

static const char *model_path;
static bool tiny;

/* Checks a failed call: its status, that an error came back with that status, and that the
 * message mentions `needle`. Frees the error. */
static void expect_error(maze_status got, maze_error *err, maze_status want, const char *needle, const char *what) {
    CHECK(got == want, "%s: status %s, want %s", what, maze_status_name(got), maze_status_name(want));
    CHECK(err != NULL, "%s: no error object", what);
    if (err) {
        CHECK(maze_error_status(err) == want, "%s: error object status %s", what, maze_status_name(maze_error_status(err)));
        const char *msg = maze_error_message(err);
        CHECK(msg && strstr(msg, needle), "%s: message '%s' lacks '%s'", what, msg ? msg : "(null)", needle);
    }
    maze_error_free(err);
}

/* Runs `call` (which writes the local `err`), then checks its failure like expect_error. */
#define EXPECT_ERROR(call, want, needle, what)                \
    do {                                                      \
        err = NULL;                                           \
        maze_status status_ = (call);                         \
        expect_error(status_, err, want, needle, what);       \
    } while (0)

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    fwrite(data, 1, len, f);
    fclose(f);
}

/* ---------------------------------------------------------------- version and status */

static void test_version_and_status(void) {
    const char *v = maze_version();
    CHECK(v && strlen(v) >= 5 && strchr(v, '.'), "version '%s'", v ? v : "(null)");
    CHECK(maze_abi_version() == MAZE_ABI_VERSION, "abi %u", maze_abi_version());
    CHECK(strcmp(maze_status_name(MAZE_STATUS_OK), "MAZE_STATUS_OK") == 0, "ok name");
    CHECK(strcmp(maze_status_name(MAZE_STATUS_BUSY), "MAZE_STATUS_BUSY") == 0, "busy name");
    CHECK(strcmp(maze_status_name(12345), "MAZE_STATUS_UNKNOWN") == 0, "unknown name");
    CHECK(strcmp(maze_finish_reason_name(MAZE_FINISH_REASON_STOP_SEQUENCE), "stop_sequence") == 0, "finish name");
    CHECK(strcmp(maze_finish_reason_name(-1), "unknown") == 0, "unknown finish name");
    /* NULL handles: getters return neutral values, frees are no-ops. */
    CHECK(maze_error_status(NULL) == MAZE_STATUS_NULL_ARGUMENT, "error status NULL");
    CHECK(strcmp(maze_error_message(NULL), "") == 0, "error message NULL");
    maze_error_free(NULL);
    maze_engine_free(NULL);
    maze_session_free(NULL);
    maze_result_free(NULL);
    CHECK(maze_engine_vocab_size(NULL) == 0 && maze_engine_context_length(NULL) == 0, "engine getters NULL");
    CHECK(strcmp(maze_engine_model_name(NULL), "") == 0 && strcmp(maze_engine_architecture(NULL), "") == 0, "names NULL");
    CHECK(!maze_engine_has_chat_template(NULL) && maze_engine_eos_token(NULL) == -1, "template/eos NULL");
    CHECK(!maze_engine_token_is_end_of_generation(NULL, 0), "eog NULL");
    size_t n = 99;
    CHECK(strcmp(maze_result_text(NULL, &n), "") == 0 && n == 0, "result text NULL");
    CHECK(maze_result_tokens(NULL, &n) == NULL && n == 0, "result tokens NULL");
    CHECK(maze_result_logprobs(NULL, &n) == NULL && n == 0, "result logprobs NULL");
    CHECK(maze_result_finish_reason(NULL) == MAZE_FINISH_REASON_ERROR, "finish NULL");
    CHECK(maze_result_error_status(NULL) == MAZE_STATUS_NULL_ARGUMENT && maze_result_error_message(NULL) == NULL, "result error NULL");
    CHECK(maze_result_prompt_tokens(NULL) == 0 && maze_result_cached_tokens(NULL) == 0 && maze_result_generated_tokens(NULL) == 0, "counts NULL");
    CHECK(maze_result_time_to_first_token_ms(NULL) == 0 && maze_result_total_time_ms(NULL) == 0, "times NULL");
    CHECK(maze_result_tokens_per_second(NULL) == 0 && maze_result_prefill_tokens_per_second(NULL) == 0, "speeds NULL");
    CHECK(maze_session_cancel(NULL) == MAZE_STATUS_NULL_ARGUMENT, "cancel NULL");
    maze_error *err = NULL;
    EXPECT_ERROR(maze_session_reset(NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "session", "reset NULL");
}

/* ---------------------------------------------------------------- engine loading */

static bool abort_progress(float p, void *ud) {
    (void)p;
    (*(int *)ud)++;
    return false;
}

static void test_engine_load_errors(void) {
    maze_engine *engine = NULL;
    maze_error *err = NULL;
    EXPECT_ERROR(maze_engine_new(NULL, NULL, &engine, &err), MAZE_STATUS_NULL_ARGUMENT, "model_path", "NULL path");
    EXPECT_ERROR(maze_engine_new("/nonexistent/model.gguf", NULL, &engine, &err), MAZE_STATUS_IO, "/nonexistent/model.gguf", "missing file");
    EXPECT_ERROR(maze_engine_new(model_path, NULL, NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "out_engine", "NULL out");
    EXPECT_ERROR(maze_engine_new("bad\xff.gguf", NULL, &engine, &err), MAZE_STATUS_INVALID_UTF8, "model_path", "bad UTF-8 path");
    CHECK(engine == NULL, "no engine written on failure");

    char text_path[] = "/tmp/maze-test-text-XXXXXX";
    int fd = mkstemp(text_path);
    close(fd);
    write_file(text_path, "this is not a model\n", 20);
    EXPECT_ERROR(maze_engine_new(text_path, NULL, &engine, &err), MAZE_STATUS_MODEL_FORMAT, "not a GGUF file", "text file");
    write_file(text_path, "", 0);
    EXPECT_ERROR(maze_engine_new(text_path, NULL, &engine, &err), MAZE_STATUS_MODEL_FORMAT, "empty", "empty file");

    /* A truncated copy of the real model. */
    FILE *src = fopen(model_path, "rb");
    CHECK(src != NULL, "open model");
    if (src) {
        fseek(src, 0, SEEK_END);
        long size = ftell(src);
        long keep = size * 2 / 3;
        fseek(src, 0, SEEK_SET);
        char *buf = malloc((size_t)keep);
        size_t got = fread(buf, 1, (size_t)keep, src);
        fclose(src);
        write_file(text_path, buf, got);
        free(buf);
        EXPECT_ERROR(maze_engine_new(text_path, NULL, &engine, &err), MAZE_STATUS_MODEL_FORMAT, "truncated", "truncated file");
    }
    unlink(text_path);

    /* Parameter structs from a newer ABI are refused; a garbage size too. */
    maze_engine_params params = maze_engine_params_default();
    params.struct_size = sizeof(params) + 8;
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_ABI_MISMATCH, "newer maze.h", "newer params");
    params.struct_size = 2;
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_INVALID_ARGUMENT, "struct_size", "tiny params");

    /* The progress callback can abort loading. */
    params = maze_engine_params_default();
    int calls = 0;
    params.progress_callback = abort_progress;
    params.progress_userdata = &calls;
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_CANCELLED, "cancelled", "aborted load");
    CHECK(calls == 1, "progress called %d times before abort", calls);

    /* A tokenizer.json that does not exist. */
    params = maze_engine_params_default();
    params.tokenizer_path = "/nonexistent/tokenizer.json";
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_TOKENIZER, "tokenizer.json", "missing tokenizer");
    CHECK(engine == NULL, "still no engine");

    /* Devices: a negative number other than -1 is refused; the tested (CPU-only) build names
       the missing CUDA support instead of loading on the CPU behind the caller's back. */
    params = maze_engine_params_default();
    CHECK(params.gpu_device == -1 && params.prefix_cache_mib == 64, "device and prefix cache defaults");
    params.gpu_device = -2;
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_INVALID_ARGUMENT, "gpu_device -2", "bad device");
#ifndef MAZE_TEST_CUDA
    params.gpu_device = 0;
    EXPECT_ERROR(maze_engine_new(model_path, &params, &engine, &err), MAZE_STATUS_UNSUPPORTED, "no CUDA support", "no CUDA build");
#endif
    CHECK(engine == NULL, "still no engine");
}

typedef struct {
    int calls;
    float last;
    bool monotonic;
} progress_log;

static bool record_progress(float p, void *ud) {
    progress_log *log = ud;
    if (p < log->last) log->monotonic = false;
    log->last = p;
    log->calls++;
    return true;
}

static maze_engine *load_engine(uint32_t n_ctx) {
    maze_engine_params params = maze_engine_params_default();
    progress_log log = {0, 0.0f, true};
    params.progress_callback = record_progress;
    params.progress_userdata = &log;
    params.n_threads = 2;
    params.n_ctx = n_ctx;
    params.seed = 1234;
    maze_engine *engine = NULL;
    maze_error *err = NULL;
    maze_status st = maze_engine_new(model_path, &params, &engine, &err);
    CHECK(st == MAZE_STATUS_OK, "load: %s", maze_error_message(err));
    maze_error_free(err);
    if (!engine) {
        fprintf(stderr, "cannot continue without an engine\n");
        exit(1);
    }
    CHECK(log.calls >= 3 && log.monotonic && log.last == 1.0f, "progress calls %d, last %f", log.calls, log.last);
    return engine;
}

static void test_engine_info(maze_engine *engine) {
    CHECK(strcmp(maze_engine_architecture(engine), "llama") == 0, "arch %s", maze_engine_architecture(engine));
    CHECK(strlen(maze_engine_model_name(engine)) > 0, "name");
    CHECK(maze_engine_vocab_size(engine) >= (tiny ? 260u : 49152u), "vocab %u", maze_engine_vocab_size(engine));
    CHECK(maze_engine_context_length(engine) == 4096, "ctx %u", maze_engine_context_length(engine));
    CHECK(maze_engine_has_chat_template(engine), "template");
    int64_t eos = maze_engine_eos_token(engine);
    CHECK(eos >= 0 && maze_engine_token_is_end_of_generation(engine, (uint32_t)eos), "eos %lld", (long long)eos);
    CHECK(!maze_engine_token_is_end_of_generation(engine, 200), "byte token is not eog");

    maze_error *err = NULL;
    CHECK(maze_engine_health(engine, &err) == MAZE_STATUS_OK && err == NULL, "local health");
    EXPECT_ERROR(maze_engine_health(NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "engine", "health NULL");
    char models[512];
    size_t len = 0;
    CHECK(maze_engine_list_models(engine, models, sizeof models, &len, &err) == MAZE_STATUS_OK, "list models");
    CHECK(len == strlen(models) && models[0] == '[' && strstr(models, maze_engine_model_name(engine)), "models %s", models);
    EXPECT_ERROR(maze_engine_list_models(engine, models, 2, &len, &err), MAZE_STATUS_BUFFER_TOO_SMALL, "model list", "small model buffer");
    CHECK(len > 2, "needed size %zu", len);
}

/* ---------------------------------------------------------------- tokenizer and template */

static void test_tokenizer(maze_engine *engine) {
    const char *texts[] = {
        "Hello, world!",
        "emoji 🦀🎉 and CJK 你好世界 and accents: café naïve",
        "<|im_start|>user\nspecial tokens<|im_end|>",
        "  leading and trailing spaces  \n\ttabs\r\n",
        "digits 1234567890",
    };
    uint32_t tokens[512];
    char buf[1024];
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        size_t n = 0, len = 0;
        maze_error *err = NULL;
        maze_status st = maze_tokenize(engine, texts[i], strlen(texts[i]), false, true, tokens, 512, &n, &err);
        CHECK(st == MAZE_STATUS_OK && n > 0, "tokenize '%s': %s", texts[i], maze_error_message(err));
        maze_error_free(err);
        err = NULL;
        st = maze_detokenize(engine, tokens, n, buf, sizeof buf, &len, &err);
        CHECK(st == MAZE_STATUS_OK && len == strlen(texts[i]) && memcmp(buf, texts[i], len) == 0 && buf[len] == 0,
              "round trip '%s' -> '%.*s'", texts[i], (int)len, buf);
        maze_error_free(err);
    }
    /* Special tokens parse only when asked. */
    const char *special = "<|im_start|>";
    size_t n_parsed = 0, n_literal = 0;
    CHECK(maze_tokenize(engine, special, strlen(special), false, true, tokens, 512, &n_parsed, NULL) == MAZE_STATUS_OK, "tokenize special text");
    CHECK(maze_tokenize(engine, special, strlen(special), false, false, tokens, 512, &n_literal, NULL) == MAZE_STATUS_OK, "tokenize special text literally");
    CHECK(n_parsed == 1 && n_literal > 1, "special parsed %zu literal %zu", n_parsed, n_literal);

    /* Size query and BUFFER_TOO_SMALL. */
    size_t needed = 0;
    maze_error *err = NULL;
    maze_status st = maze_tokenize(engine, texts[1], strlen(texts[1]), false, false, NULL, 0, &needed, &err);
    CHECK(st == MAZE_STATUS_BUFFER_TOO_SMALL && needed > 2, "size query %s %zu", maze_status_name(st), needed);
    maze_error_free(err);
    err = NULL;
    st = maze_tokenize(engine, texts[1], strlen(texts[1]), false, false, tokens, 2, &needed, &err);
    expect_error(st, err, MAZE_STATUS_BUFFER_TOO_SMALL, "buffer holds 2", "small token buffer");
    size_t n = 0;
    CHECK(maze_tokenize(engine, "hello", 5, false, false, tokens, 512, &n, NULL) == MAZE_STATUS_OK, "tokenize hello");
    size_t len = 0;
    err = NULL;
    st = maze_detokenize(engine, tokens, n, buf, 3, &len, &err);
    CHECK(len == 5, "needed text len %zu", len);
    expect_error(st, err, MAZE_STATUS_BUFFER_TOO_SMALL, "plus a NUL", "small text buffer");
    /* Empty input is fine. */
    st = maze_tokenize(engine, NULL, 0, false, false, tokens, 512, &n, NULL);
    CHECK(st == MAZE_STATUS_OK && n == 0, "empty tokenize");

    /* Bad input. */
    EXPECT_ERROR(maze_tokenize(engine, "ab\xc3", 3, false, false, tokens, 512, &n, &err), MAZE_STATUS_INVALID_UTF8, "'text'", "bad UTF-8 text");
    EXPECT_ERROR(maze_tokenize(NULL, "a", 1, false, false, tokens, 512, &n, &err), MAZE_STATUS_NULL_ARGUMENT, "engine", "NULL engine");
    EXPECT_ERROR(maze_tokenize(engine, NULL, 4, false, false, tokens, 512, &n, &err), MAZE_STATUS_NULL_ARGUMENT, "text", "NULL text");
    EXPECT_ERROR(maze_tokenize(engine, "a", 1, false, false, tokens, 512, NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "n_tokens", "NULL count");
    uint32_t bad[] = {1, 4000000000u};
    EXPECT_ERROR(maze_detokenize(engine, bad, 2, buf, sizeof buf, &len, &err), MAZE_STATUS_INVALID_ARGUMENT, "position 1", "bad token id");
    EXPECT_ERROR(maze_detokenize(engine, NULL, 2, buf, sizeof buf, &len, &err), MAZE_STATUS_NULL_ARGUMENT, "tokens", "NULL tokens");
}

static void test_score(maze_engine *engine) {
    uint32_t tokens[64];
    size_t n = 0, n_scores = 0;
    const char *text = "The quick brown fox jumps over the lazy dog";
    CHECK(maze_tokenize(engine, text, strlen(text), true, false, tokens, 64, &n, NULL) == MAZE_STATUS_OK && n > 4,
          "tokenize for scoring");
    float all[64], prefix[64];
    maze_error *err = NULL;
    maze_status st = maze_score(engine, tokens, n, all, 64, &n_scores, &err);
    CHECK(st == MAZE_STATUS_OK && n_scores == n - 1, "score: %s (%zu of %zu)", maze_error_message(err), n_scores, n);
    maze_error_free(err);
    for (size_t i = 0; i < n_scores; i++) {
        CHECK(all[i] <= 0.0f && all[i] > -100.0f, "log-probability %zu is %f", i, all[i]);
    }
    /* Causal: a prefix scores as the start of the whole. */
    size_t n_prefix = 0;
    CHECK(maze_score(engine, tokens, 3, prefix, 64, &n_prefix, NULL) == MAZE_STATUS_OK && n_prefix == 2, "score prefix");
    CHECK(fabsf(prefix[0] - all[0]) < 1e-3f && fabsf(prefix[1] - all[1]) < 1e-3f, "prefix %f %f vs %f %f",
          prefix[0], prefix[1], all[0], all[1]);
    /* Bad input. */
    err = NULL;
    st = maze_score(engine, tokens, n, all, 2, &n_scores, &err);
    CHECK(n_scores == n - 1, "needed count %zu", n_scores);
    expect_error(st, err, MAZE_STATUS_BUFFER_TOO_SMALL, "log-probabilities", "small score buffer");
    err = NULL;
    st = maze_score(engine, tokens, 1, all, 64, &n_scores, &err);
    expect_error(st, err, MAZE_STATUS_INVALID_ARGUMENT, "at least 2 tokens", "one token to score");
    uint32_t bad[2] = {tokens[0], 0x7fffffffu};
    err = NULL;
    st = maze_score(engine, bad, 2, all, 64, &n_scores, &err);
    expect_error(st, err, MAZE_STATUS_INVALID_ARGUMENT, "outside the vocabulary", "token id out of range");
    err = NULL;
    st = maze_score(engine, NULL, 5, all, 64, &n_scores, &err);
    expect_error(st, err, MAZE_STATUS_NULL_ARGUMENT, "tokens", "NULL tokens");
}

static void test_chat_template(maze_engine *engine) {
    maze_chat_message msgs[] = {
        maze_msg("system", "You are terse."),
        maze_msg("user", "Hi there"),
    };
    char buf[2048];
    size_t len = 0;
    maze_error *err = NULL;
    maze_status st = maze_chat_apply_template(engine, msgs, 2, true, buf, sizeof buf, &len, &err);
    CHECK(st == MAZE_STATUS_OK, "render: %s", maze_error_message(err));
    maze_error_free(err);
    CHECK(strstr(buf, "<|im_start|>system\nYou are terse.<|im_end|>") && strstr(buf, "<|im_start|>user\nHi there<|im_end|>"), "rendered: %s", buf);
    CHECK(len >= 25 && strcmp(buf + len - 22, "<|im_start|>assistant\n") == 0, "ends with generation prompt: %s", buf);
    size_t len2 = 0;
    CHECK(maze_chat_apply_template(engine, msgs, 2, false, buf, sizeof buf, &len2, NULL) == MAZE_STATUS_OK, "template without generation prompt");
    CHECK(len2 < len && !strstr(buf, "assistant"), "without generation prompt");
    err = NULL;
    st = maze_chat_apply_template(engine, msgs, 2, true, NULL, 0, &len2, &err);
    CHECK(st == MAZE_STATUS_BUFFER_TOO_SMALL && len2 == len, "size query %zu vs %zu", len2, len);
    maze_error_free(err);
    EXPECT_ERROR(maze_chat_apply_template(engine, msgs, 0, true, buf, sizeof buf, &len, &err), MAZE_STATUS_INVALID_ARGUMENT, "at least one message", "no messages");
    maze_chat_message bad[] = {{.role = maze_str("user"), .content = {"\xff\xfe", 2}}};
    EXPECT_ERROR(maze_chat_apply_template(engine, bad, 1, true, buf, sizeof buf, &len, &err), MAZE_STATUS_INVALID_UTF8, "messages[0].content", "bad UTF-8 message");
}

/* ---------------------------------------------------------------- generation */

typedef struct {
    char text[8192];
    size_t len;
    int chunks;
    int stop_after; /* return false after this many chunks; 0 = never */
    bool valid_utf8;
} collector;

static bool collect(const char *text, size_t len, void *ud) {
    collector *c = ud;
    if (!utf8_whole(text, len) || text[len] != 0) c->valid_utf8 = false;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, text, len);
        c->len += len;
        c->text[c->len] = 0;
    }
    c->chunks++;
    return !(c->stop_after && c->chunks >= c->stop_after);
}

static maze_session *new_session(maze_engine *engine) {
    maze_session *s = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_new(engine, &s, &err);
    CHECK(st == MAZE_STATUS_OK && s, "session: %s", maze_error_message(err));
    maze_error_free(err);
    return s;
}

static maze_result *generate(maze_session *s, const char *prompt, const maze_generate_params *p, collector *c) {
    maze_result *r = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_generate(s, prompt, strlen(prompt), p, c ? collect : NULL, c, &r, &err);
    CHECK(st == MAZE_STATUS_OK && r, "generate: %s %s", maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    return r;
}

static void test_generate_and_stream(maze_engine *engine) {
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = 24;
    p.logprobs = true;
    collector c = {.valid_utf8 = true};
    maze_result *r = generate(s, "The three primary colors are", &p, &c);
    size_t len = 0, n_tok = 0, n_lp = 0;
    const char *text = maze_result_text(r, &len);
    const uint32_t *toks = maze_result_tokens(r, &n_tok);
    const float *lps = maze_result_logprobs(r, &n_lp);
    maze_finish_reason fr = maze_result_finish_reason(r);
    CHECK(fr == MAZE_FINISH_REASON_LENGTH || fr == MAZE_FINISH_REASON_STOP, "finish %s", maze_finish_reason_name(fr));
    CHECK(len == c.len && memcmp(text, c.text, len) == 0, "streamed text equals result text");
    CHECK(c.valid_utf8, "every chunk is whole UTF-8 and NUL-terminated");
    CHECK(n_tok == maze_result_generated_tokens(r) && toks != NULL, "tokens %zu", n_tok);
    CHECK(fr != MAZE_FINISH_REASON_LENGTH || n_tok == 24, "length means max_tokens (%zu)", n_tok);
    CHECK(n_lp == n_tok && lps, "logprobs %zu", n_lp);
    bool lp_ok = true;
    for (size_t i = 0; i < n_lp; i++) lp_ok &= lps[i] <= 0.0f && lps[i] > -100.0f;
    CHECK(lp_ok, "logprobs are log-probabilities");
    CHECK(maze_result_prompt_tokens(r) >= 5 && maze_result_cached_tokens(r) == 0, "prompt %u cached %u", maze_result_prompt_tokens(r), maze_result_cached_tokens(r));
    CHECK(maze_result_time_to_first_token_ms(r) > 0 && maze_result_total_time_ms(r) >= maze_result_time_to_first_token_ms(r), "timings");
    CHECK(maze_result_tokens_per_second(r) > 0 && maze_result_prefill_tokens_per_second(r) > 0, "speeds");
    CHECK(maze_result_error_status(r) == MAZE_STATUS_OK && maze_result_error_message(r) == NULL, "no error");
    /* The tokens decode to the text. */
    char buf[8192];
    size_t dlen = 0;
    CHECK(maze_detokenize(engine, toks, n_tok, buf, sizeof buf, &dlen, NULL) == MAZE_STATUS_OK, "detokenize the output");
    /* A trained model writes valid UTF-8; a random one may emit stray bytes (shown as U+FFFD). */
    if (!tiny) CHECK(dlen == len && memcmp(buf, text, len) == 0, "tokens decode to the text");
    if (!tiny) CHECK(strlen(text) > 10, "some text: %s", text);

    /* Greedy is deterministic, and the session reuses its cached prefix. */
    collector c2 = {.valid_utf8 = true};
    maze_result *r2 = generate(s, "The three primary colors are", &p, &c2);
    CHECK(strcmp(maze_result_text(r2, NULL), text) == 0, "greedy repeat");
    CHECK(maze_result_cached_tokens(r2) == maze_result_prompt_tokens(r2) - 1, "cached %u of %u", maze_result_cached_tokens(r2), maze_result_prompt_tokens(r2));
    maze_result_free(r2);
    /* Reset forgets it. */
    maze_error *err = NULL;
    CHECK(maze_session_reset(s, &err) == MAZE_STATUS_OK, "reset");
    r2 = generate(s, "The three primary colors are", &p, NULL);
    /* Only the engine's prefix cache may serve it now: openings of 16 tokens or more (the tiny
       model's byte-level tokens make this prompt that long; the real model's do not). */
    uint32_t after_reset = maze_result_cached_tokens(r2);
    CHECK(maze_result_prompt_tokens(r2) >= 17 ? after_reset < maze_result_prompt_tokens(r2) : after_reset == 0, "cached %u of %u after reset", after_reset, maze_result_prompt_tokens(r2));
    CHECK(strcmp(maze_result_text(r2, NULL), text) == 0, "same text after reset");
    maze_result_free(r2);
    maze_result_free(r);
    maze_session_free(s);
}

static void test_seed_and_sampling(maze_engine *engine) {
    maze_session *a = new_session(engine), *b = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.max_tokens = 16;
    p.seed = 42;
    maze_result *r1 = generate(a, "Once upon a time", &p, NULL);
    maze_result *r2 = generate(b, "Once upon a time", &p, NULL);
    CHECK(strcmp(maze_result_text(r1, NULL), maze_result_text(r2, NULL)) == 0, "same seed same text");
    size_t n1, n2;
    const uint32_t *t1 = maze_result_tokens(r1, &n1), *t2 = maze_result_tokens(r2, &n2);
    CHECK(n1 == n2 && memcmp(t1, t2, n1 * sizeof *t1) == 0, "same seed same tokens");
    maze_result_free(r2);
    int differs = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        p.seed = seed;
        r2 = generate(b, "Once upon a time", &p, NULL);
        differs += strcmp(maze_result_text(r1, NULL), maze_result_text(r2, NULL)) != 0;
        maze_result_free(r2);
    }
    CHECK(differs >= 3, "other seeds give other text (%d of 4)", differs);
    maze_result_free(r1);

    /* Penalties and filters are accepted and still produce text. */
    p = maze_generate_params_default();
    p.max_tokens = 8;
    p.repetition_penalty = 1.3f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.5f;
    p.penalty_last_n = 0;
    p.top_k = 5;
    p.top_p = 0.9f;
    p.min_p = 0.1f;
    r1 = generate(a, "List: apple, apple, apple,", &p, NULL);
    CHECK(maze_result_generated_tokens(r1) > 0, "penalised generation");
    maze_result_free(r1);
    maze_session_free(a);
    maze_session_free(b);
}

static void test_stop_sequences_and_callback_stop(maze_engine *engine) {
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = 40;
    maze_result *r = generate(s, "Count: one, two, three,", &p, NULL);
    const char *full = maze_result_text(r, NULL);
    size_t full_len = strlen(full);
    if (full_len >= 8) {
        /* Stop at a piece of the greedy output: the result must end right before it. */
        char stop[4] = {full[full_len / 2], full[full_len / 2 + 1], full[full_len / 2 + 2], 0};
        const char *first = strstr(full, stop);
        size_t want = (size_t)(first - full);
        maze_string stops[] = {maze_str("\x01never\x01"), maze_str(stop)};
        p.stop = stops;
        p.n_stop = 2;
        collector c = {.valid_utf8 = true};
        maze_result *r2 = generate(s, "Count: one, two, three,", &p, &c);
        size_t len = 0;
        const char *text = maze_result_text(r2, &len);
        CHECK(maze_result_finish_reason(r2) == MAZE_FINISH_REASON_STOP_SEQUENCE, "finish %s", maze_finish_reason_name(maze_result_finish_reason(r2)));
        CHECK(len == want && strncmp(text, full, want) == 0, "text '%s' stops before '%s' (want %zu bytes)", text, stop, want);
        CHECK(c.len == len && !strstr(c.text, stop), "the stop sequence was never streamed");
        maze_result_free(r2);
    } else {
        CHECK(false, "greedy output too short for the stop test: '%s'", full);
    }
    maze_result_free(r);

    /* Bad stop lists. */
    maze_string bad_stops[] = {{"\xff", 1}};
    p.stop = bad_stops;
    p.n_stop = 1;
    maze_error *err = NULL;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_UTF8, "params.stop[0]", "bad stop");
    maze_string empty_stop[] = {{"", 0}};
    p.stop = empty_stop;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "params.stop[0] is empty", "empty stop");
    p.stop = NULL;
    p.n_stop = 3;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_NULL_ARGUMENT, "params.stop", "NULL stop list");

    /* The callback stops generation; the result holds exactly what was delivered. */
    p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = 64;
    collector c = {.valid_utf8 = true, .stop_after = 3};
    r = generate(s, "The history of the Roman Empire began", &p, &c);
    size_t len = 0;
    const char *text = maze_result_text(r, &len);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_CANCELLED, "callback stop finish %s", maze_finish_reason_name(maze_result_finish_reason(r)));
    CHECK(c.chunks == 3 && len == c.len && memcmp(text, c.text, len) == 0, "result = delivered text (%d chunks)", c.chunks);
    maze_result_free(r);
    maze_session_free(s);
}

typedef struct {
    maze_session *session;
    const char *prompt;
    maze_generate_params params;
    maze_status status;
    maze_result *result;
    atomic_int chunks;
    atomic_bool started;
} job;

static bool job_chunk(const char *t, size_t n, void *ud) {
    (void)t;
    (void)n;
    job *j = ud;
    atomic_fetch_add(&j->chunks, 1);
    return true;
}

static void *run_job(void *arg) {
    job *j = arg;
    atomic_store(&j->started, true);
    j->status = maze_session_generate(j->session, j->prompt, strlen(j->prompt), &j->params, job_chunk, j, &j->result, NULL);
    return NULL;
}

static void wait_for_chunks(job *j, int n) {
    for (int i = 0; i < 60000 && atomic_load(&j->chunks) < n; i++) usleep(1000);
}

static char *long_prompt(size_t words) {
    char *p = malloc(words * 6 + 1);
    p[0] = 0;
    for (size_t i = 0; i < words; i++) strcat(p, i % 2 ? "ocean " : "river ");
    return p;
}

/* A constraint forbidding every end-of-generation token: the generation can only be ended by
 * the caller (cancel, timeout) or the context, whatever the model. */
static maze_constraint *never_stop(maze_engine *engine) {
    static uint32_t ends[64];
    size_t n = 0;
    for (uint32_t t = 0; t < maze_engine_vocab_size(engine) && n < 64; t++)
        if (maze_engine_token_is_end_of_generation(engine, t)) ends[n++] = t;
    maze_constraint_desc d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_TOKEN_MASK;
    d.name = maze_str("never_stop");
    d.forbidden_tokens = ends;
    d.n_forbidden_tokens = n;
    maze_constraint *c = NULL;
    CHECK(n > 0 && maze_constraint_new(engine, &d, &c, NULL) == MAZE_STATUS_OK, "never_stop constraint");
    return c;
}

static void test_cancel_timeout_busy(maze_engine *engine) {
    maze_constraint *no_end = never_stop(engine);
    /* Cancel during decoding, from another thread. */
    job j = {.session = new_session(engine), .prompt = "Tell me everything about the sea."};
    j.params = maze_generate_params_default();
    j.params.max_tokens = 0; /* until the context is full */
    j.params.constraints = (const maze_constraint *const *)&no_end;
    j.params.n_constraints = 1;
    pthread_t t;
    pthread_create(&t, NULL, run_job, &j);
    wait_for_chunks(&j, 2);
    /* While it runs: a second generate and a reset on the same session are refused. */
    maze_result *r = NULL;
    maze_error *err = NULL;
    EXPECT_ERROR(maze_session_generate(j.session, "x", 1, NULL, NULL, NULL, &r, &err), MAZE_STATUS_BUSY, "already generating", "busy generate");
    EXPECT_ERROR(maze_session_reset(j.session, &err), MAZE_STATUS_BUSY, "while it is generating", "busy reset");
    double t0 = now_ms();
    CHECK(maze_session_cancel(j.session) == MAZE_STATUS_OK, "cancel");
    pthread_join(t, NULL);
    double waited = now_ms() - t0;
    CHECK(j.status == MAZE_STATUS_OK, "cancelled call status %s", maze_status_name(j.status));
    CHECK(maze_result_finish_reason(j.result) == MAZE_FINISH_REASON_CANCELLED, "finish %s", maze_finish_reason_name(maze_result_finish_reason(j.result)));
    CHECK(waited < 5000, "cancel took %.0f ms", waited);
    maze_result_free(j.result);
    /* Cancel when idle is a no-op: the next generation runs normally. */
    CHECK(maze_session_cancel(j.session) == MAZE_STATUS_OK, "idle cancel");
    maze_generate_params p = maze_generate_params_default();
    p.max_tokens = 4;
    p.temperature = 0;
    r = generate(j.session, "Hello", &p, NULL);
    CHECK(maze_result_finish_reason(r) != MAZE_FINISH_REASON_CANCELLED, "idle cancel did not stick");
    maze_result_free(r);

    /* Cancel during prefill of a long prompt. */
    char *prompt = long_prompt(tiny ? 600 : 1500); /* under 4096 tokens either way */
    job k = {.session = j.session, .prompt = prompt};
    k.params = j.params;
    pthread_create(&t, NULL, run_job, &k);
    while (!atomic_load(&k.started)) usleep(1000);
    usleep(200 * 1000);
    t0 = now_ms();
    maze_session_cancel(k.session);
    pthread_join(t, NULL);
    waited = now_ms() - t0;
    CHECK(k.status == MAZE_STATUS_OK && maze_result_finish_reason(k.result) == MAZE_FINISH_REASON_CANCELLED, "prefill cancel: %s", maze_finish_reason_name(maze_result_finish_reason(k.result)));
    if (!tiny) {
        CHECK(maze_result_generated_tokens(k.result) == 0, "cancelled before the first token (%u)", maze_result_generated_tokens(k.result));
        CHECK(waited < 2000, "prefill cancel took %.0f ms", waited);
    }
    maze_result_free(k.result);

    /* Timeout. */
    p = j.params;
    p.timeout_ms = 300;
    t0 = now_ms();
    r = generate(j.session, prompt, &p, NULL);
    double took = now_ms() - t0;
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_TIMEOUT, "finish %s", maze_finish_reason_name(maze_result_finish_reason(r)));
    CHECK(took >= 300 && took < 300 + 5000, "timeout after %.0f ms", took);
    maze_result_free(r);
    free(prompt);
    maze_session_free(j.session);
    maze_constraint_free(no_end);
}

static maze_constraint *make_constraint(maze_engine *engine, const maze_constraint_desc *d);

/* A cancel token: no window to miss (cancelled before the call, it ends the call at once), one
 * token stops every call holding it, and the one-time constraint setup is reported. */
static void test_cancel_token(maze_engine *engine) {
    maze_error *err = NULL;
    EXPECT_ERROR(maze_cancel_token_new(NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "out_token", "token_new NULL");
    CHECK(maze_cancel_token_cancel(NULL) == MAZE_STATUS_NULL_ARGUMENT, "token cancel NULL");
    CHECK(!maze_cancel_token_is_cancelled(NULL), "is_cancelled NULL");
    maze_cancel_token_free(NULL);
    CHECK(maze_engine_constraint_setup_time_us(NULL) == 0, "setup time NULL");
    maze_constraint_desc d = maze_constraint_desc_default();
    maze_string pattern = maze_str("[a-z]+");
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.items = &pattern;
    d.n_items = 1;
    maze_constraint_free(make_constraint(engine, &d));
    CHECK(maze_engine_constraint_setup_time_us(engine) > 0, "setup built with a grammar (%.0f us)",
          maze_engine_constraint_setup_time_us(engine));

    maze_cancel_token *early = NULL;
    CHECK(maze_cancel_token_new(&early, &err) == MAZE_STATUS_OK && early, "token_new");
    CHECK(!maze_cancel_token_is_cancelled(early), "fresh token");
    CHECK(maze_cancel_token_cancel(early) == MAZE_STATUS_OK && maze_cancel_token_is_cancelled(early), "cancelled");
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.max_tokens = 0;
    p.cancel = early;
    maze_result *r = generate(s, "Tell me everything about the sea.", &p, NULL);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_CANCELLED && maze_result_generated_tokens(r) == 0,
          "cancelled before the call: %s, %u tokens", maze_finish_reason_name(maze_result_finish_reason(r)),
          maze_result_generated_tokens(r));
    maze_result_free(r);
    maze_cancel_token_free(early);

    /* Cancelled during decoding from another thread, on two sessions at once. */
    maze_cancel_token *shared = NULL;
    CHECK(maze_cancel_token_new(&shared, &err) == MAZE_STATUS_OK, "token_new");
    job jobs[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (job){.session = i == 0 ? s : new_session(engine), .prompt = "Tell me everything about the sea."};
        jobs[i].params = maze_generate_params_default();
        jobs[i].params.max_tokens = 0;
        jobs[i].params.ignore_eos = true;
        jobs[i].params.cancel = shared;
        pthread_create(&threads[i], NULL, run_job, &jobs[i]);
    }
    for (int i = 0; i < 2; i++) wait_for_chunks(&jobs[i], 2);
    CHECK(maze_cancel_token_cancel(shared) == MAZE_STATUS_OK, "token cancel");
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        CHECK(jobs[i].status == MAZE_STATUS_OK && maze_result_finish_reason(jobs[i].result) == MAZE_FINISH_REASON_CANCELLED,
              "session %d: %s", i, maze_finish_reason_name(maze_result_finish_reason(jobs[i].result)));
        maze_result_free(jobs[i].result);
        maze_session_free(jobs[i].session);
    }
    maze_cancel_token_free(shared);
}

static void test_concurrent_sessions(maze_engine *engine) {
    enum { N = 3 };
    job jobs[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].session = new_session(engine);
        jobs[i].prompt = "The capital of Italy is";
        jobs[i].params = maze_generate_params_default();
        jobs[i].params.temperature = 0;
        jobs[i].params.max_tokens = 12;
        pthread_create(&threads[i], NULL, run_job, &jobs[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < N; i++) {
        CHECK(jobs[i].status == MAZE_STATUS_OK && jobs[i].result, "thread %d: %s", i, maze_status_name(jobs[i].status));
        if (i > 0 && jobs[i].result && jobs[0].result)
            CHECK(strcmp(maze_result_text(jobs[i].result, NULL), maze_result_text(jobs[0].result, NULL)) == 0, "thread %d same greedy text", i);
    }
    for (int i = 0; i < N; i++) {
        maze_result_free(jobs[i].result);
        maze_session_free(jobs[i].session);
    }
}

static void test_chat_and_tokens(maze_engine *engine) {
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = 16;
    maze_chat_message msgs[] = {maze_msg("user", "What is the capital of France?")};
    maze_result *r = NULL;
    maze_error *err = NULL;
    collector c = {.valid_utf8 = true};
    maze_status st = maze_session_chat(s, msgs, 1, &p, collect, &c, &r, &err);
    CHECK(st == MAZE_STATUS_OK, "chat: %s", maze_error_message(err));
    maze_error_free(err);
    CHECK(r && c.len == strlen(maze_result_text(r, NULL)), "chat streamed");
    if (!tiny) CHECK(maze_result_prompt_tokens(r) > 20, "chat prompt includes the template");
    maze_result_free(r);

    /* Multi-turn: the second turn reuses the first turn's cache. */
    maze_chat_message turn2[] = {msgs[0], maze_msg("assistant", "Paris."), maze_msg("user", "And of Spain?")};
    r = NULL;
    st = maze_session_chat(s, turn2, 3, &p, NULL, NULL, &r, NULL);
    CHECK(st == MAZE_STATUS_OK && maze_result_cached_tokens(r) > 10, "second turn cached %u", maze_result_cached_tokens(r));
    maze_result_free(r);

    /* ignore_eos: the model's end token no longer stops generation; max_tokens does. */
    maze_chat_message hi[] = {maze_msg("user", "Say hi.")};
    p.max_tokens = 48;
    r = NULL;
    st = maze_session_chat(s, hi, 1, &p, NULL, NULL, &r, NULL);
    if (!tiny) CHECK(st == MAZE_STATUS_OK && maze_result_finish_reason(r) == MAZE_FINISH_REASON_STOP && maze_result_generated_tokens(r) < 48, "a short answer stops at the end token (%u tokens)", maze_result_generated_tokens(r));
    maze_result_free(r);
    p.ignore_eos = true;
    r = NULL;
    st = maze_session_chat(s, hi, 1, &p, NULL, NULL, &r, NULL);
    CHECK(st == MAZE_STATUS_OK && maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH && maze_result_generated_tokens(r) == 48, "ignore_eos runs to max_tokens (%u tokens)", maze_result_generated_tokens(r));
    maze_result_free(r);
    p.ignore_eos = false;
    p.max_tokens = 16;

    /* From token ids. */
    uint32_t toks[64];
    size_t n = 0;
    CHECK(maze_tokenize(engine, "Hello world", 11, true, false, toks, 64, &n, NULL) == MAZE_STATUS_OK, "tokenize the prompt");
    r = NULL;
    st = maze_session_generate_tokens(s, toks, n, &p, NULL, NULL, &r, NULL);
    CHECK(st == MAZE_STATUS_OK && maze_result_prompt_tokens(r) == n, "tokens prompt %u", maze_result_prompt_tokens(r));
    maze_result_free(r);
    uint32_t bad[] = {1, 0xFFFFFFF0u};
    EXPECT_ERROR(maze_session_generate_tokens(s, bad, 2, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "outside the vocabulary", "bad prompt token");
    EXPECT_ERROR(maze_session_generate_tokens(s, NULL, 0, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "empty", "empty token prompt");
    EXPECT_ERROR(maze_session_chat(s, NULL, 0, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "at least one message", "no chat messages");
    maze_session_free(s);
}

static void test_generate_errors(maze_engine *engine) {
    maze_session *s = new_session(engine);
    maze_result *r = NULL;
    maze_error *err = NULL;
    maze_generate_params p = maze_generate_params_default();
    EXPECT_ERROR(maze_session_generate(NULL, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_NULL_ARGUMENT, "session", "NULL session");
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "out_result", "NULL out");
    EXPECT_ERROR(maze_session_generate(s, NULL, 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_NULL_ARGUMENT, "prompt", "NULL prompt");
    EXPECT_ERROR(maze_session_generate(s, "", 0, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "prompt is empty", "empty prompt");
    EXPECT_ERROR(maze_session_generate(s, "\xe2\x82", 2, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_UTF8, "'prompt'", "bad UTF-8 prompt");
    p.temperature = -1;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "temperature", "negative temperature");
    p = maze_generate_params_default();
    p.top_p = 1.5f;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_INVALID_ARGUMENT, "top_p", "bad top_p");
    p = maze_generate_params_default();
    p.struct_size = sizeof p + 4;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_ABI_MISMATCH, "newer", "newer generate params");
    /* A prompt that cannot fit the context. */
    char *prompt = long_prompt(5000);
    EXPECT_ERROR(maze_session_generate(s, prompt, strlen(prompt), NULL, NULL, NULL, &r, &err), MAZE_STATUS_CONTEXT_OVERFLOW, "context holds 4096", "too long");
    free(prompt);
    CHECK(r == NULL, "no result written on failure");
    /* Errors from session_new. */
    maze_session *s2 = NULL;
    EXPECT_ERROR(maze_session_new(NULL, &s2, &err), MAZE_STATUS_NULL_ARGUMENT, "engine", "NULL engine");
    EXPECT_ERROR(maze_session_new(engine, NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "out_session", "NULL out session");
    /* NULL error pointer: failures still return their status. */
    CHECK(maze_session_generate(s, "", 0, NULL, NULL, NULL, &r, NULL) == MAZE_STATUS_INVALID_ARGUMENT, "NULL error pointer");
    maze_session_free(s);
}

/* ---------------------------------------------------------------- constraints */

static maze_constraint *make_constraint(maze_engine *engine, const maze_constraint_desc *d) {
    maze_constraint *c = NULL;
    maze_error *err = NULL;
    maze_status st = maze_constraint_new(engine, d, &c, &err);
    CHECK(st == MAZE_STATUS_OK && c, "constraint_new: %s", maze_error_message(err));
    maze_error_free(err);
    return c;
}

static maze_result *generate_with(maze_engine *engine, const char *prompt, maze_constraint **cs, size_t n, uint32_t max_tokens) {
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.constraints = (const maze_constraint *const *)cs;
    p.n_constraints = n;
    maze_result *r = generate(s, prompt, &p, NULL);
    maze_session_free(s);
    return r;
}

static bool all_digits(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

/* A grammar of kind `kind` allowing "The answer is yes." and "The answer is no." only. */
static void check_answer_grammar(maze_engine *engine, maze_constraint_kind kind, const char *grammar) {
    maze_constraint_desc d = maze_constraint_desc_default();
    d.kind = kind;
    d.name = maze_str("sentence");
    d.text = maze_str(grammar);
    maze_constraint *sentence = make_constraint(engine, &d);
    maze_result *r = generate_with(engine, "Is water wet? ", &sentence, 1, 40);
    const char *text = maze_result_text(r, NULL);
    CHECK(!strcmp(text, "The answer is yes.") || !strcmp(text, "The answer is no."), "kind %d output '%s'", (int)kind, text);
    CHECK(maze_result_constraints_satisfied(r), "kind %d satisfied: %s", (int)kind, maze_result_validation_json(r));
    CHECK(maze_result_forced_tokens(r) > 0, "kind %d forced tokens %u", (int)kind, maze_result_forced_tokens(r));
    maze_result_free(r);
    maze_constraint_free(sentence);
}

static void test_constraints(maze_engine *engine) {
    maze_error *err = NULL;
    /* Regex through the descriptor. */
    maze_constraint_desc d = maze_constraint_desc_default();
    maze_string patterns[] = {maze_str("[0-9]{1,3}")};
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.name = maze_str("number");
    d.items = patterns;
    d.n_items = 1;
    maze_constraint *number = make_constraint(engine, &d);
    CHECK(maze_constraint_count(number) == 1, "count");
    maze_result *r = generate_with(engine, "How many legs does a spider have? ", &number, 1, 8);
    const char *text = maze_result_text(r, NULL);
    CHECK(all_digits(text) && strlen(text) <= 3, "regex output '%s'", text);
    CHECK(maze_result_mean_mask_time_us(r) > 0 && maze_result_constraint_compile_time_us(r) > 0, "constraint timings");
    CHECK(strstr(maze_result_validation_json(r), "\"outcome\":\"satisfied\"") || maze_result_finish_reason(r) == MAZE_FINISH_REASON_LENGTH,
          "validation %s", maze_result_validation_json(r));
    const char *prov = maze_result_provenance_json(r);
    CHECK(strstr(prov, "\"number\"") && strstr(prov, "\"seed\"") && strstr(prov, maze_engine_model_name(engine)), "provenance %s", prov);
    maze_result_free(r);

    /* Choice through JSON; an array gives several constraints in one handle. */
    maze_constraint *color = NULL;
    const char *json = "{\"name\": \"color\", \"choice\": [\"red\", \"green\", \"blue\"]}";
    maze_status st = maze_constraint_from_json(engine, json, strlen(json), &color, &err);
    CHECK(st == MAZE_STATUS_OK, "from_json: %s", maze_error_message(err));
    maze_error_free(err);
    r = generate_with(engine, "Name a color: ", &color, 1, 8);
    text = maze_result_text(r, NULL);
    CHECK(!strcmp(text, "red") || !strcmp(text, "green") || !strcmp(text, "blue"), "choice output '%s'", text);
    CHECK(maze_result_constraints_satisfied(r), "choice satisfied: %s", maze_result_validation_json(r));
    maze_result_free(r);
    maze_constraint *pair = NULL;
    const char *two = "[{\"regex\": [\"[a-z]+\"]}, {\"token_mask\": {\"forbidden\": [13]}}]";
    CHECK(maze_constraint_from_json(engine, two, strlen(two), &pair, NULL) == MAZE_STATUS_OK && maze_constraint_count(pair) == 2, "json array");
    maze_constraint_free(pair);

    /* Lark and GBNF (llama.cpp's grammar format): the fixed text is forced, not sampled. */
    check_answer_grammar(engine, MAZE_CONSTRAINT_KIND_LARK, "start: \"The answer is \" (\"yes\" | \"no\") \".\"");
    check_answer_grammar(engine, MAZE_CONSTRAINT_KIND_GBNF,
                         "root ::= \"The answer is \" answer \".\"\nanswer ::= \"yes\" | \"no\" # either\n");

    /* Token mask: forbid the unconstrained first token. */
    r = generate_with(engine, "Hello", NULL, 0, 2);
    size_t n = 0;
    uint32_t first = maze_result_tokens(r, &n)[0];
    maze_result_free(r);
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_TOKEN_MASK;
    d.forbidden_tokens = &first;
    d.n_forbidden_tokens = 1;
    maze_constraint *mask = make_constraint(engine, &d);
    r = generate_with(engine, "Hello", &mask, 1, 2);
    const uint32_t *toks = maze_result_tokens(r, &n);
    CHECK(n > 0 && toks[0] != first, "token mask obeyed");
    maze_result_free(r);

    /* Conflict: the lower priority is relaxed and reported. */
    maze_string letters[] = {maze_str("[a-z]+")};
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.name = maze_str("letters");
    d.priority = -1;
    d.items = letters;
    d.n_items = 1;
    maze_constraint *low = make_constraint(engine, &d);
    maze_constraint *both[] = {low, number};
    r = generate_with(engine, "Write: ", both, 2, 4);
    CHECK(all_digits(maze_result_text(r, NULL)), "higher priority wins: '%s'", maze_result_text(r, NULL));
    CHECK(strstr(maze_result_validation_json(r), "\"relaxed\"") && !maze_result_constraints_satisfied(r), "relaxed: %s", maze_result_validation_json(r));
    maze_result_free(r);

    if (!tiny) {
        maze_constraint *schema = NULL;
        const char *js = "{\"json_schema\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"maxLength\": 20}, "
                         "\"population\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 100000000}}, \"required\": [\"city\", \"population\"], \"additionalProperties\": false}}";
        CHECK(maze_constraint_from_json(engine, js, strlen(js), &schema, NULL) == MAZE_STATUS_OK, "schema");
        r = generate_with(engine, "Describe Paris as JSON.", &schema, 1, 60);
        text = maze_result_text(r, NULL);
        CHECK(text[0] == '{' && text[strlen(text) - 1] == '}' && strstr(text, "\"city\":") && strstr(text, "\"population\":"), "json '%s'", text);
        CHECK(maze_result_constraints_satisfied(r), "schema satisfied %s", maze_result_validation_json(r));
        maze_result_free(r);
        maze_constraint_free(schema);
    }

    /* JSON-schema options through the descriptor's json_* fields. */
    maze_constraint *bad = NULL;
    d = maze_constraint_desc_default();
    d.name = maze_str("loose");
    d.text = maze_str("{\"type\": \"integer\", \"minimum\": 0, \"maximum\": 9, \"not\": {\"const\": 5}}");
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "\"not\" at /not", "unsupported keyword by pointer");
    /* A caller built before json_flags existed passes a shorter struct: the flag is not read. */
    d.json_flags = MAZE_JSON_FLAG_LENIENT;
    d.struct_size = (uint32_t)offsetof(maze_constraint_desc, json_flags);
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "\"not\" at /not", "old struct_size keeps the defaults");
    d.struct_size = sizeof d;
    maze_constraint *loose = make_constraint(engine, &d);
    r = generate_with(engine, "Pick a digit: ", &loose, 1, 8);
    const char *v = maze_result_validation_json(r);
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_STOP && strstr(v, "\"outcome\":\"partially_enforced\"") && strstr(v, "\"pointer\":\"/not\""),
          "lenient report %s", v);
    CHECK(!maze_result_constraints_satisfied(r), "a lenient schema is not satisfied: %s", v);
    maze_result_free(r);
    maze_constraint_free(loose);
    d = maze_constraint_desc_default();
    d.name = maze_str("formats");
    d.text = maze_str("{\"type\": \"string\", \"format\": \"regex\", \"maxLength\": 3}");
    maze_constraint *formats = make_constraint(engine, &d);
    r = generate_with(engine, "A regex: ", &formats, 1, 16);
    v = maze_result_validation_json(r);
    CHECK(strstr(v, "\"ignored_formats\":[{\"format\":\"regex\",\"pointer\":\"/format\"}]"), "ignored format %s", v);
    CHECK(maze_result_finish_reason(r) != MAZE_FINISH_REASON_STOP || maze_result_constraints_satisfied(r), "formats are annotations: %s", v);
    maze_result_free(r);
    maze_constraint_free(formats);
    d.json_flags = MAZE_JSON_FLAG_STRICT_FORMATS;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "unknown format \"regex\" at /format", "strict formats");
    d.json_flags = 1u << 20;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_ARGUMENT, "json_flags", "unknown flag bit");

    /* Bad constraints fail when created, naming the part. */
    maze_string bad_rx[] = {maze_str("[0-9")};
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.name = maze_str("broken");
    d.items = bad_rx;
    d.n_items = 1;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "'broken'", "bad regex");
    d = maze_constraint_desc_default();
    d.text = maze_str("{not json");
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "not valid JSON", "bad schema text");
    d.text = maze_str("{\"type\": \"array\", \"uniqueItems\": true}");
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "uniqueItems", "unsupported keyword");
    d = maze_constraint_desc_default();
    d.kind = 99;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_ARGUMENT, "desc.kind 99", "bad kind");
    uint32_t huge = 4000000000u;
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_TOKEN_MASK;
    d.allowed_tokens = &huge;
    d.n_allowed_tokens = 1;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "4000000000", "token out of vocab");
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_LARK;
    d.text = maze_str("start: undefined_rule");
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "lark", "bad grammar");
    d.kind = MAZE_CONSTRAINT_KIND_GBNF;
    d.text = maze_str("root ::= \"a\"\nitem ::= [z-a]\n");
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "GBNF line 2, column 11", "bad GBNF");
    d = maze_constraint_desc_default();
    d.struct_size = sizeof d + 8;
    EXPECT_ERROR(maze_constraint_new(engine, &d, &bad, &err), MAZE_STATUS_ABI_MISMATCH, "newer", "newer desc");
    EXPECT_ERROR(maze_constraint_new(engine, NULL, &bad, &err), MAZE_STATUS_NULL_ARGUMENT, "desc", "NULL desc");
    EXPECT_ERROR(maze_constraint_new(NULL, &d, &bad, &err), MAZE_STATUS_NULL_ARGUMENT, "engine", "NULL engine");
    EXPECT_ERROR(maze_constraint_from_json(engine, "{\"grammar\": 1}", 14, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "json_schema, lark", "unknown JSON kind");
    EXPECT_ERROR(maze_constraint_from_json(engine, "[]", 2, &bad, &err), MAZE_STATUS_INVALID_CONSTRAINT, "no constraint", "empty JSON array");
    EXPECT_ERROR(maze_constraint_from_json(engine, "\xff", 1, &bad, &err), MAZE_STATUS_INVALID_UTF8, "'json'", "bad UTF-8 JSON");
    CHECK(bad == NULL, "no handle on failure");
    maze_session *s = new_session(engine);
    maze_generate_params p = maze_generate_params_default();
    p.n_constraints = 1;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_NULL_ARGUMENT, "params.constraints", "NULL constraint list");
    const maze_constraint *holes[] = {NULL};
    p.constraints = holes;
    EXPECT_ERROR(maze_session_generate(s, "x", 1, &p, NULL, NULL, &r, &err), MAZE_STATUS_NULL_ARGUMENT, "params.constraints[0]", "NULL constraint");
    maze_session_free(s);

    /* The compile cache. */
    maze_constraint_cache_stats before, after;
    CHECK(maze_engine_constraint_cache_stats(engine, &before, NULL) == MAZE_STATUS_OK && before.size > 0 && before.limit == 256, "stats size %llu", (unsigned long long)before.size);
    d = maze_constraint_desc_default();
    d.kind = MAZE_CONSTRAINT_KIND_REGEX;
    d.name = maze_str("same pattern, other name");
    d.items = patterns;
    d.n_items = 1;
    maze_constraint *again = make_constraint(engine, &d);
    CHECK(maze_engine_constraint_cache_stats(engine, &after, NULL) == MAZE_STATUS_OK, "cache stats after a hit");
    CHECK(after.hits == before.hits + 1 && after.misses == before.misses, "cache hit (%llu -> %llu)", (unsigned long long)before.hits, (unsigned long long)after.hits);
    CHECK(maze_engine_constraint_cache_set_limit(engine, 1, NULL) == MAZE_STATUS_OK, "set limit");
    CHECK(maze_engine_constraint_cache_stats(engine, &after, NULL) == MAZE_STATUS_OK, "cache stats after set limit");
    CHECK(after.size == 1 && after.limit == 1 && after.evictions >= before.size - 1, "evicted to 1");
    EXPECT_ERROR(maze_engine_constraint_cache_set_limit(engine, 0, &err), MAZE_STATUS_INVALID_ARGUMENT, "at least 1", "zero limit");
    CHECK(maze_engine_constraint_cache_clear(engine, NULL) == MAZE_STATUS_OK, "clear");
    CHECK(maze_engine_constraint_cache_stats(engine, &after, NULL) == MAZE_STATUS_OK, "cache stats after clear");
    CHECK(after.size == 0, "cleared");
    EXPECT_ERROR(maze_engine_constraint_cache_stats(engine, NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "out", "NULL stats");
    EXPECT_ERROR(maze_engine_constraint_cache_clear(NULL, &err), MAZE_STATUS_NULL_ARGUMENT, "engine", "NULL clear");
    /* A handle keeps working after its cache entry is gone (it is recompiled). */
    r = generate_with(engine, "How many legs does a spider have? ", &again, 1, 4);
    CHECK(all_digits(maze_result_text(r, NULL)), "after clear: '%s'", maze_result_text(r, NULL));
    maze_result_free(r);
    CHECK(maze_constraint_count(NULL) == 0, "count NULL");
    CHECK(!maze_result_constraints_satisfied(NULL) && !strcmp(maze_result_validation_json(NULL), "") && !strcmp(maze_result_provenance_json(NULL), ""), "result NULLs");
    CHECK(maze_result_constraint_compile_time_us(NULL) == 0 && maze_result_mean_mask_time_us(NULL) == 0 && maze_result_forced_tokens(NULL) == 0, "constraint stat NULLs");
    maze_constraint_free(NULL);
    maze_constraint_free(again);
    maze_constraint_free(low);
    maze_constraint_free(mask);
    maze_constraint_free(color);
    maze_constraint_free(number);
}

/* Streamed tool-call pieces, joined back per call. */
typedef struct {
    int starts;
    char name[64];
    char id[64];
    char arguments[1024];
    size_t args_len;
    bool in_order;
} tool_stream;

static bool on_tool_piece(const maze_tool_call_delta *d, void *userdata) {
    tool_stream *t = userdata;
    if (d->index != 0) return true;
    if (d->name.len > 0) {
        t->starts++;
        snprintf(t->name, sizeof t->name, "%.*s", (int)d->name.len, d->name.data);
        snprintf(t->id, sizeof t->id, "%.*s", (int)d->id.len, d->id.data);
        t->in_order = t->args_len == 0;
    } else if (t->args_len + d->arguments.len < sizeof t->arguments) {
        t->in_order = t->in_order && t->starts == 1;
        memcpy(t->arguments + t->args_len, d->arguments.data, d->arguments.len);
        t->args_len += d->arguments.len;
    }
    return true;
}

static void test_tool_calls(maze_engine *engine) {
    /* SmolLM2's template has no tools: the generic format describes them in a system message. */
    maze_tool tools[] = {{maze_str("add"), maze_str("Add two integers"),
                          maze_str("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"}},\"required\":[\"a\",\"b\"],\"additionalProperties\":false}")}};
    maze_generate_params p = maze_generate_params_default();
    p.temperature = 0;
    p.max_tokens = 60;
    p.tools = tools;
    p.n_tools = 1;
    p.tool_choice = MAZE_TOOL_CHOICE_REQUIRED;
    p.tool_format = MAZE_TOOL_FORMAT_GENERIC;
    p.parallel_tool_calls = false; /* one call: the grammar ends after it */
    tool_stream t = {0};
    p.tool_callback = on_tool_piece;
    p.tool_userdata = &t;
    maze_chat_message ask[] = {maze_msg("user", "What is 2 plus 3?")};
    maze_session *s = new_session(engine);
    maze_result *r = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_chat(s, ask, 1, &p, NULL, NULL, &r, &err);
    CHECK(st == MAZE_STATUS_OK, "tool chat: %s", maze_error_message(err));
    maze_error_free(err);
    if (st != MAZE_STATUS_OK) return;
    CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_TOOL_CALLS, "finish %s", maze_finish_reason_name(maze_result_finish_reason(r)));
    CHECK(maze_result_tool_call_count(r) == 1, "one call, made %zu", maze_result_tool_call_count(r));
    maze_tool_call call;
    if (maze_result_tool_call_count(r) >= 1 && maze_result_tool_call(r, 0, &call, NULL) == MAZE_STATUS_OK) {
        CHECK(call.name.len == 3 && !memcmp(call.name.data, "add", 3), "name %.*s", (int)call.name.len, call.name.data);
        CHECK(!strcmp(t.name, "add") && !strcmp(t.id, call.id.data) && t.starts >= 1 && t.in_order, "streamed start");
        CHECK(t.args_len == call.arguments.len && !memcmp(t.arguments, call.arguments.data, t.args_len), "streamed arguments = the call's");
        CHECK(strstr(call.arguments.data, "\"a\": ") && strstr(call.arguments.data, "\"b\": "), "arguments %s", call.arguments.data);
        CHECK(maze_result_tool_call_satisfied(r, 0) && maze_result_constraints_satisfied(r), "enforced and complete");
        CHECK(strstr(maze_result_validation_json(r), "\"tool_calls\"") != NULL, "validation lists the call");
        CHECK(maze_result_text(r, NULL)[0] == 0, "no text besides the call");
    }
    /* The answer goes back as a tool message; the model continues in text (tool_choice auto). */
    maze_chat_message history[] = {ask[0], maze_msg("assistant", ""), maze_msg("tool", "5")};
    if (maze_result_tool_call_count(r) >= 1) {
        history[1].tool_calls = &call;
        history[1].n_tool_calls = 1;
        history[2].tool_call_id = call.id;
        p.tool_choice = MAZE_TOOL_CHOICE_NONE;
        p.tool_callback = NULL;
        maze_result *answer = NULL;
        st = maze_session_chat(s, history, 3, &p, NULL, NULL, &answer, &err);
        CHECK(st == MAZE_STATUS_OK && maze_result_tool_call_count(answer) == 0, "answer after the tool: %s", maze_error_message(err));
        maze_error_free(err);
        maze_result_free(answer);
    }
    maze_result_free(r);
    maze_session_free(s);
}

static void test_session_outlives_engine(void) {
    maze_engine *engine = load_engine(4096);
    maze_session *s = new_session(engine);
    maze_engine_free(engine);
    maze_generate_params p = maze_generate_params_default();
    p.max_tokens = 4;
    maze_result *r = generate(s, "Hello", &p, NULL);
    CHECK(r && maze_result_prompt_tokens(r) > 0 && maze_result_finish_reason(r) != MAZE_FINISH_REASON_ERROR,
          "session works after maze_engine_free");
    maze_result_free(r);
    maze_session_free(s);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [--tiny]\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    tiny = argc > 2 && strcmp(argv[2], "--tiny") == 0;
    setvbuf(stdout, NULL, _IONBF, 0);

    test_version_and_status();
    test_engine_load_errors();
    maze_engine *engine = load_engine(4096);
    test_engine_info(engine);
    test_tokenizer(engine);
    test_score(engine);
    test_chat_template(engine);
    test_generate_and_stream(engine);
    test_seed_and_sampling(engine);
    test_stop_sequences_and_callback_stop(engine);
    test_cancel_timeout_busy(engine);
    test_cancel_token(engine);
    test_concurrent_sessions(engine);
    test_chat_and_tokens(engine);
    test_generate_errors(engine);
    test_constraints(engine);
    if (!tiny) test_tool_calls(engine);
    maze_engine_free(engine);
    test_session_outlives_engine();

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
