/*
 * The stress test (issue 20): THREADS threads on one engine, each for ROUNDS rounds, create
 * sessions, generate on them (plain, under a JSON schema, a regex, a choice, a Lark grammar or
 * a token mask; streamed or not; with stop sequences and timeouts), cancel at random points
 * (from a canceller thread, from inside the stream callback, by returning false from it,
 * through a cancel token the canceller may cancel, or one cancelled before the call),
 * reset them and free them; some rounds compile a constraint of their own and free it while
 * the generation using it runs. Every result is checked: the status is OK (a generation that
 * was cancelled or timed out still gives a result), the finish reason is one the round allows,
 * the streamed text is the result's text, counts are consistent, and a constrained output
 * obeys its constraint (parsed as JSON, matched against the regex, the choice, the grammar).
 * A watchdog fails the test when a thread makes no progress for WATCHDOG seconds (a deadlock
 * or a lost wake-up), printing what each thread was doing.
 *
 *   test_stress MODEL.gguf
 *
 * Environment: MAZE_STRESS_SEED (default: from the clock; always printed), MAZE_STRESS_ROUNDS
 * (per thread, default 1000), MAZE_STRESS_THREADS (default 16), MAZE_STRESS_WATCHDOG (seconds,
 * default 120), MAZE_STRESS_VERBOSE=1 (print every result). `make test` runs it on the tiny model under AddressSanitizer (leaks checked
 * at exit); `make fuzz` under ThreadSanitizer.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maze.h"
#include "check.h"

#define MAX_THREADS 64

static maze_engine *engine;
static uint64_t seed;
static int rounds = 1000, n_threads = 16, watchdog_s = 120;
static bool verbose;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* splitmix64: one stream per thread, from the printed seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static uint32_t below(uint64_t *state, uint32_t n) { return (uint32_t)(next_random(state) % n); }

/* ================================================================ output checks */

/* A JSON value's syntax (RFC 8259), from *p; advances past it. Depth-limited. */
static void ws(const char **p) {
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r') (*p)++;
}
static bool json_value(const char **p, int depth);
static bool json_string(const char **p) {
    if (**p != '"') return false;
    for ((*p)++; **p != '"'; (*p)++) {
        unsigned char c = (unsigned char)**p;
        if (c == 0 || c < 0x20) return false;
        if (c == '\\') {
            (*p)++;
            if (**p == 'u') {
                for (int i = 0; i < 4; i++) {
                    (*p)++;
                    if (!strchr("0123456789abcdefABCDEF", **p) || **p == 0) return false;
                }
            } else if (!**p || !strchr("\"\\/bfnrt", **p)) {
                return false;
            }
        }
    }
    (*p)++;
    return true;
}
static bool json_number(const char **p, bool *integer) {
    const char *s = *p;
    if (**p == '-') (*p)++;
    if (**p == '0') (*p)++;
    else if (**p >= '1' && **p <= '9') while (**p >= '0' && **p <= '9') (*p)++;
    else return false;
    *integer = true;
    if (**p == '.') {
        *integer = false;
        (*p)++;
        if (!(**p >= '0' && **p <= '9')) return false;
        while (**p >= '0' && **p <= '9') (*p)++;
    }
    if (**p == 'e' || **p == 'E') {
        *integer = false;
        (*p)++;
        if (**p == '+' || **p == '-') (*p)++;
        if (!(**p >= '0' && **p <= '9')) return false;
        while (**p >= '0' && **p <= '9') (*p)++;
    }
    return *p > s;
}
static bool json_value(const char **p, int depth) {
    if (depth > 64) return false;
    ws(p);
    bool integer;
    switch (**p) {
    case '{':
        (*p)++, ws(p);
        if (**p == '}') return (*p)++, true;
        for (;;) {
            ws(p);
            if (!json_string(p)) return false;
            ws(p);
            if (*(*p)++ != ':') return false;
            if (!json_value(p, depth + 1)) return false;
            ws(p);
            if (**p == '}') return (*p)++, true;
            if (*(*p)++ != ',') return false;
        }
    case '[':
        (*p)++, ws(p);
        if (**p == ']') return (*p)++, true;
        for (;;) {
            if (!json_value(p, depth + 1)) return false;
            ws(p);
            if (**p == ']') return (*p)++, true;
            if (*(*p)++ != ',') return false;
        }
    case '"': return json_string(p);
    case 't': return strncmp(*p, "true", 4) == 0 ? (*p += 4, true) : false;
    case 'f': return strncmp(*p, "false", 5) == 0 ? (*p += 5, true) : false;
    case 'n': return strncmp(*p, "null", 4) == 0 ? (*p += 4, true) : false;
    default: return json_number(p, &integer);
    }
}

/* The schema below: exactly {"n": <integer>, "ok": <boolean>} in either order. */
static const char *schema_json =
    "{\"json_schema\": {\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\"}, \"ok\": {\"type\": "
    "\"boolean\"}}, \"required\": [\"n\", \"ok\"], \"additionalProperties\": false}}";
static bool matches_schema(const char *text) {
    const char *p = text;
    if (!json_value(&p, 0)) return false;
    ws(&p);
    if (*p) return false;
    /* Syntax holds; now the shape: one object with keys n (integer) and ok (boolean). */
    p = text;
    ws(&p);
    if (*p++ != '{') return false;
    bool seen_n = false, seen_ok = false;
    for (;;) {
        ws(&p);
        if (*p == '}') break;
        if (*p == ',') { p++; ws(&p); }
        const char *key = p;
        if (!json_string(&p)) return false;
        size_t key_len = (size_t)(p - key);
        ws(&p);
        p++; /* ':' */
        ws(&p);
        if (key_len == 3 && !strncmp(key, "\"n\"", 3)) {
            bool integer = false;
            if (seen_n || !json_number(&p, &integer) || !integer) return false;
            seen_n = true;
        } else if (key_len == 4 && !strncmp(key, "\"ok\"", 4)) {
            if (seen_ok) return false;
            if (!strncmp(p, "true", 4)) p += 4;
            else if (!strncmp(p, "false", 5)) p += 5;
            else return false;
            seen_ok = true;
        } else {
            return false;
        }
    }
    return seen_n && seen_ok;
}

/* Regex [a-z]{lo,8} (lo from the round); a prefix: [a-z]{0,8}. */
static bool lower_word(const char *t, size_t len, size_t lo, bool complete) {
    if (len > 8 || (complete && len < lo)) return false;
    for (size_t i = 0; i < len; i++)
        if (t[i] < 'a' || t[i] > 'z') return false;
    return true;
}

static const char *const colors[] = {"red", "green", "blue", "cyan"};
static bool one_color(const char *t, size_t len, bool complete) {
    for (size_t i = 0; i < 4; i++) {
        size_t n = strlen(colors[i]);
        if (complete ? (len == n && !memcmp(t, colors[i], n)) : (len <= n && !memcmp(t, colors[i], len))) return true;
    }
    return false;
}

/* Lark: start: "(" DIGIT+ ("+" DIGIT+)* ")" -- a sum in brackets. */
static const char *lark_json = "{\"lark\": \"start: \\\"(\\\" NUM (\\\"+\\\" NUM)* \\\")\\\"\\nNUM: /[0-9]{1,3}/\"}";
static bool bracket_sum(const char *t, size_t len, bool complete) {
    size_t i = 0;
    if (len == 0) return !complete;
    if (t[i++] != '(') return false;
    int digits = 0;
    for (; i < len; i++) {
        char c = t[i];
        if (c >= '0' && c <= '9') {
            if (++digits > 3) return false;
        } else if (c == '+' && digits > 0) {
            digits = 0;
        } else if (c == ')' && digits > 0) {
            return i == len - 1;
        } else {
            return false;
        }
    }
    return !complete;
}

/* ================================================================ the workers */

enum kind { K_PLAIN, K_SCHEMA, K_REGEX, K_CHOICE, K_LARK, K_MASK, K_OWN_REGEX, N_KINDS };
static const char *const kind_names[] = {"plain", "json_schema", "regex", "choice", "lark", "token_mask", "own_regex"};
static maze_constraint *shared[N_KINDS];
static uint32_t mask_token; /* the one byte the token mask allows besides end tokens */
static char mask_char;

typedef struct {
    int id;
    uint64_t rng;
    pthread_mutex_t lock; /* guards `session` and `token` against the canceller */
    maze_session *session;
    maze_cancel_token *token; /* this call's cancel token, when it has one */
    _Atomic(const char *) doing;
    _Atomic double last_progress;
    atomic_int round;
    atomic_bool done;
    /* per-call streaming state */
    char streamed[4096];
    size_t streamed_len;
    int chunks, stop_at_chunk, cancel_at_chunk;
    bool utf8_ok;
    maze_constraint *free_in_callback;
    /* tallies */
    int finishes[6], generations, constrained, resets, frees, own_constraints, scores, tokens, early_tokens;
} worker;

static worker workers[MAX_THREADS];
static atomic_int external_cancels;
static atomic_bool all_done;

static void progress(worker *w, const char *what) {
    atomic_store(&w->doing, what);
    atomic_store(&w->last_progress, now_s());
}


static bool on_text(const char *text, size_t len, void *ud) {
    worker *w = ud;
    if (!utf8_whole(text, len) || text[len] != 0) w->utf8_ok = false;
    if (w->streamed_len + len < sizeof w->streamed) {
        memcpy(w->streamed + w->streamed_len, text, len);
        w->streamed_len += len;
        w->streamed[w->streamed_len] = 0;
    }
    w->chunks++;
    atomic_store(&w->last_progress, now_s());
    if (w->free_in_callback && w->chunks == 1) {
        /* The header: a constraint handle may be freed any time; generations keep what they need. */
        maze_constraint_free(w->free_in_callback);
        w->free_in_callback = NULL;
    }
    if (w->cancel_at_chunk && w->chunks == w->cancel_at_chunk)
        CHECK(maze_session_cancel(w->session) == MAZE_STATUS_OK, "thread %d: cancel from the callback", w->id);
    return !(w->stop_at_chunk && w->chunks >= w->stop_at_chunk);
}

static void replace_session(worker *w) {
    maze_session *fresh = NULL;
    maze_error *err = NULL;
    progress(w, "maze_session_new");
    maze_status st = maze_session_new(engine, &fresh, &err);
    CHECK(st == MAZE_STATUS_OK && fresh, "thread %d: session_new %s %s", w->id, maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    pthread_mutex_lock(&w->lock);
    maze_session *old = w->session;
    w->session = fresh;
    pthread_mutex_unlock(&w->lock);
    progress(w, "maze_session_free");
    maze_session_free(old); /* NULL the first time */
    w->frees += old != NULL;
}

static void one_round(worker *w) {
    uint64_t *r = &w->rng;
    /* Session life: sometimes a fresh one, sometimes a reset. */
    if (!w->session || below(r, 4) == 0) replace_session(w);
    if (below(r, 4) == 0) {
        maze_error *err = NULL;
        progress(w, "maze_session_reset");
        maze_status st = maze_session_reset(w->session, &err);
        CHECK(st == MAZE_STATUS_OK, "thread %d: reset %s %s", w->id, maze_status_name(st), maze_error_message(err));
        maze_error_free(err);
        w->resets++;
    }
    /* Now and then an engine-level call between the generations' steps: scoring. */
    if (below(r, 8) == 0) {
        uint32_t ids[32];
        size_t n = 0, n_lp = 0;
        float lp[32];
        progress(w, "maze_tokenize");
        CHECK(maze_tokenize(engine, "score this text", 15, true, false, ids, 32, &n, NULL) == MAZE_STATUS_OK && n >= 2, "thread %d: tokenize", w->id);
        progress(w, "maze_score");
        maze_status st = maze_score(engine, ids, n, lp, 32, &n_lp, NULL);
        CHECK(st == MAZE_STATUS_OK && n_lp == n - 1, "thread %d: score %s (%zu of %zu)", w->id, maze_status_name(st), n_lp, n);
        for (size_t i = 0; st == MAZE_STATUS_OK && i < n_lp; i++) CHECK(lp[i] <= 0.0f, "thread %d: log-probability %f", w->id, lp[i]);
        w->scores++;
    }
    /* The request. */
    enum kind k = (enum kind)(below(r, N_KINDS + 1) % N_KINDS); /* plain twice as often */
    size_t regex_lo = 3;
    maze_constraint *c = k == K_PLAIN ? NULL : shared[k];
    if (k == K_OWN_REGEX) {
        /* Its own constraint: a regex of varying bounds (cache misses, hits and evictions). */
        regex_lo = 1 + below(r, 5);
        char json[64];
        snprintf(json, sizeof json, "{\"regex\": [\"[a-z]{%zu,8}\"]}", regex_lo);
        maze_error *err = NULL;
        progress(w, "maze_constraint_from_json");
        maze_status st = maze_constraint_from_json(engine, json, strlen(json), &c, &err);
        CHECK(st == MAZE_STATUS_OK && c, "thread %d: own constraint %s %s", w->id, maze_status_name(st), maze_error_message(err));
        maze_error_free(err);
        w->own_constraints++;
    }
    maze_generate_params p = maze_generate_params_default();
    p.max_tokens = k == K_SCHEMA ? 8 + below(r, 56) : 1 + below(r, 24); /* a whole object needs ~20 */
    p.temperature = below(r, 3) == 0 ? 0.0f : 0.9f;
    p.seed = next_random(r) >> 1;
    p.ignore_eos = below(r, 3) == 0;
    const maze_constraint *cs[1] = {c};
    if (c) {
        p.constraints = cs;
        p.n_constraints = 1;
    }
    /* Stop sequences the tiny model's babble does produce. */
    static const char *const stops[] = {"::", "or", "<<", "\xef\xbf\xbd"};
    const char *stop_text = stops[below(r, 4)];
    maze_string stop[1] = {maze_str(stop_text)};
    bool with_stop = k == K_PLAIN && below(r, 3) == 0;
    if (with_stop) {
        p.stop = stop;
        p.n_stop = 1;
    }
    bool with_timeout = below(r, 10) == 0;
    if (with_timeout) p.timeout_ms = 1 + below(r, 50);
    bool stream = below(r, 4) != 0;
    w->streamed_len = 0;
    w->streamed[0] = 0;
    w->chunks = 0;
    w->utf8_ok = true;
    w->stop_at_chunk = stream && below(r, 4) == 0 ? 1 + (int)below(r, 4) : 0;
    w->cancel_at_chunk = stream && below(r, 6) == 0 ? 1 + (int)below(r, 4) : 0;
    bool frees_in_callback = stream && k == K_OWN_REGEX && below(r, 2) == 0;
    w->free_in_callback = frees_in_callback ? c : NULL;
    if (below(r, 8) == 0) CHECK(maze_session_cancel(w->session) == MAZE_STATUS_OK, "thread %d: idle cancel", w->id);
    /* A cancel token for one call in three (the canceller cancels it too); now and then one
     * cancelled before the call, which must end it before any token. */
    maze_cancel_token *token = NULL;
    bool early_cancel = false;
    if (below(r, 3) == 0) {
        maze_error *terr = NULL;
        CHECK(maze_cancel_token_new(&token, &terr) == MAZE_STATUS_OK && token, "thread %d: token_new %s", w->id,
              maze_error_message(terr));
        maze_error_free(terr);
        early_cancel = token && below(r, 8) == 0;
        if (early_cancel) CHECK(maze_cancel_token_cancel(token) == MAZE_STATUS_OK, "thread %d: token cancel", w->id);
        pthread_mutex_lock(&w->lock);
        w->token = token;
        pthread_mutex_unlock(&w->lock);
        p.cancel = token;
        w->tokens++;
        w->early_tokens += early_cancel;
    }

    char prompt[64];
    snprintf(prompt, sizeof prompt, "thread %d round %d:", w->id, atomic_load(&w->round));
    maze_result *res = NULL;
    maze_error *err = NULL;
    progress(w, "maze_session_generate");
    maze_status st = maze_session_generate(w->session, prompt, strlen(prompt), &p, stream ? on_text : NULL, w, &res, &err);
    progress(w, "checking a result");
    if (token) {
        pthread_mutex_lock(&w->lock);
        w->token = NULL;
        pthread_mutex_unlock(&w->lock);
        maze_cancel_token_free(token);
        p.cancel = NULL;
    }
    CHECK(st == MAZE_STATUS_OK && res, "thread %d round %d (%s): generate %s %s", w->id, atomic_load(&w->round),
          kind_names[k], maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    /* The round's own constraint: freed by the callback at its first chunk when so chosen; else
     * (or when no chunk came) here, once the generation has returned. */
    if (k == K_OWN_REGEX && !frees_in_callback) maze_constraint_free(c);
    if (w->free_in_callback) {
        maze_constraint_free(w->free_in_callback);
        w->free_in_callback = NULL;
    }
    if (!res) return;
    w->generations++;
    w->constrained += c != NULL;

    size_t len = 0, n_tok = 0;
    const char *text = maze_result_text(res, &len);
    maze_result_tokens(res, &n_tok);
    maze_finish_reason fr = maze_result_finish_reason(res);
    uint32_t generated = maze_result_generated_tokens(res);
    bool cancelled_by_callback = w->stop_at_chunk && w->chunks >= w->stop_at_chunk;
    if (fr >= 0 && fr < 6) w->finishes[fr]++;
    CHECK(!early_cancel || (fr == MAZE_FINISH_REASON_CANCELLED && generated == 0 && w->chunks == 0),
          "thread %d round %d: a token cancelled before the call gave %s after %u tokens", w->id,
          atomic_load(&w->round), maze_finish_reason_name(fr), generated);
    /* The finish reasons this round allows (a cancel from the canceller thread may hit any round). */
    bool allowed = fr == MAZE_FINISH_REASON_STOP || fr == MAZE_FINISH_REASON_LENGTH || fr == MAZE_FINISH_REASON_CANCELLED ||
                   (fr == MAZE_FINISH_REASON_STOP_SEQUENCE && with_stop) || (fr == MAZE_FINISH_REASON_TIMEOUT && with_timeout);
    CHECK(allowed, "thread %d round %d (%s): finish %s not allowed here (error: %s)", w->id, atomic_load(&w->round),
          kind_names[k], maze_finish_reason_name(fr), maze_result_error_message(res) ? maze_result_error_message(res) : "none");
    CHECK(fr == MAZE_FINISH_REASON_ERROR || maze_result_error_status(res) == MAZE_STATUS_OK, "thread %d: error status without ERROR", w->id);
    if (cancelled_by_callback)
        CHECK(fr == MAZE_FINISH_REASON_CANCELLED, "thread %d: callback returned false, finish %s", w->id, maze_finish_reason_name(fr));
    /* Cancelled from inside the callback: no chunk after it, and the call ends cancelled (or
     * timed out, when the timeout came first). */
    if (w->cancel_at_chunk && w->chunks >= w->cancel_at_chunk && !cancelled_by_callback)
        CHECK(w->chunks == w->cancel_at_chunk && (fr == MAZE_FINISH_REASON_CANCELLED || fr == MAZE_FINISH_REASON_TIMEOUT),
              "thread %d round %d: cancelled at chunk %d, then %d chunks and finish %s", w->id, atomic_load(&w->round),
              w->cancel_at_chunk, w->chunks, maze_finish_reason_name(fr));
    CHECK(generated <= p.max_tokens && n_tok == generated, "thread %d: %u generated, %zu tokens, max %u", w->id, generated, n_tok, p.max_tokens);
    if (fr == MAZE_FINISH_REASON_LENGTH && !c)
        CHECK(generated == p.max_tokens, "thread %d: LENGTH after %u of %u tokens", w->id, generated, p.max_tokens);
    CHECK(strlen(text) <= len, "thread %d: text length", w->id);
    if (stream) {
        CHECK(w->utf8_ok, "thread %d: a chunk was not whole UTF-8 + NUL", w->id);
        CHECK(w->streamed_len == len && !memcmp(w->streamed, text, len), "thread %d round %d (%s, %s): streamed '%s' but the result holds '%s'",
              w->id, atomic_load(&w->round), kind_names[k], maze_finish_reason_name(fr), w->streamed, text);
    }
    if (with_stop) CHECK(!strstr(text, stop_text), "thread %d: the stop sequence '%s' is in the text '%s'", w->id, stop_text, text);
    /* A constrained output: what was generated obeys the constraint; complete when satisfied. */
    bool satisfied = maze_result_constraints_satisfied(res);
    if (verbose)
        printf("thread %2d round %4d %-11s %-13s satisfied %d: %s\n", w->id, atomic_load(&w->round), kind_names[k],
               maze_finish_reason_name(fr), satisfied, text);
    const char *validation = maze_result_validation_json(res);
    CHECK(validation[0] == '{' && maze_result_provenance_json(res)[0] == '{', "thread %d: validation/provenance JSON", w->id);
    if (c && fr == MAZE_FINISH_REASON_STOP)
        CHECK(satisfied, "thread %d (%s): STOP under a constraint but not satisfied: '%s' %s", w->id, kind_names[k], text, validation);
    switch (k) {
    case K_PLAIN:
        CHECK(satisfied, "thread %d: no constraint, not satisfied: %s", w->id, validation);
        break;
    case K_SCHEMA:
        if (satisfied) CHECK(matches_schema(text), "thread %d: satisfied JSON schema but '%s' does not match", w->id, text);
        break;
    case K_REGEX:
    case K_OWN_REGEX:
        CHECK(lower_word(text, len, regex_lo, satisfied), "thread %d (%s, satisfied %d): '%s' breaks [a-z]{%zu,8}", w->id,
              kind_names[k], satisfied, text, regex_lo);
        break;
    case K_CHOICE:
        CHECK(one_color(text, len, satisfied), "thread %d (satisfied %d): '%s' is not one of the colors", w->id, satisfied, text);
        break;
    case K_LARK:
        CHECK(bracket_sum(text, len, satisfied), "thread %d (satisfied %d): '%s' breaks the grammar", w->id, satisfied, text);
        break;
    case K_MASK:
        for (size_t i = 0; i < len; i++)
            if (text[i] != mask_char) {
                CHECK(p.ignore_eos, "thread %d: token mask let '%s' through", w->id, text);
                break;
            }
        break;
    default:
        break;
    }
    maze_result_free(res);
}

static void *work(void *arg) {
    worker *w = arg;
    for (int i = 0; i < rounds; i++) {
        atomic_store(&w->round, i);
        one_round(w);
    }
    progress(w, "freeing its session");
    pthread_mutex_lock(&w->lock);
    maze_session *s = w->session;
    w->session = NULL;
    pthread_mutex_unlock(&w->lock);
    maze_session_free(s);
    progress(w, "done");
    atomic_store(&w->done, true);
    return NULL;
}

/* Cancels random workers' sessions at random moments: whatever they are doing. */
static void *canceller(void *arg) {
    uint64_t rng = *(uint64_t *)arg;
    while (!atomic_load(&all_done)) {
        usleep(500 + below(&rng, 20000));
        worker *w = &workers[below(&rng, (uint32_t)n_threads)];
        pthread_mutex_lock(&w->lock);
        if (w->session) {
            CHECK(maze_session_cancel(w->session) == MAZE_STATUS_OK, "canceller: cancel");
            atomic_fetch_add(&external_cancels, 1);
        }
        if (w->token && below(&rng, 2) == 0) {
            CHECK(maze_cancel_token_cancel(w->token) == MAZE_STATUS_OK, "canceller: token cancel");
            atomic_fetch_add(&external_cancels, 1);
        }
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

/* Fails the test when a thread has made no progress for watchdog_s seconds. */
static void *watchdog(void *arg) {
    (void)arg;
    while (!atomic_load(&all_done)) {
        sleep(1);
        double t = now_s();
        for (int i = 0; i < n_threads; i++) {
            worker *w = &workers[i];
            if (atomic_load(&w->done)) continue;
            double idle = t - atomic_load(&w->last_progress);
            if (idle > watchdog_s) {
                fprintf(stderr, "\nFAIL: DEADLOCK? thread %d made no progress for %.0f s, in %s (round %d); seed %llu\n", i,
                        idle, atomic_load(&w->doing), atomic_load(&w->round), (unsigned long long)seed);
                for (int j = 0; j < n_threads; j++)
                    fprintf(stderr, "  thread %2d: %s, round %d, idle %.1f s%s\n", j, atomic_load(&workers[j].doing),
                            atomic_load(&workers[j].round), t - atomic_load(&workers[j].last_progress),
                            atomic_load(&workers[j].done) ? " (done)" : "");
                fflush(stderr);
                _exit(3);
            }
        }
    }
    return NULL;
}

static int env_int(const char *name, int fallback, int lo, int hi) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo || n > hi) {
        fprintf(stderr, "%s=%s: want an integer in [%d, %d]\n", name, v, lo, hi);
        exit(2);
    }
    return (int)n;
}

static maze_constraint *must_constraint(const char *json) {
    maze_constraint *c = NULL;
    maze_error *err = NULL;
    maze_status st = maze_constraint_from_json(engine, json, strlen(json), &c, &err);
    if (st != MAZE_STATUS_OK) {
        fprintf(stderr, "constraint %s: %s %s\n", json, maze_status_name(st), maze_error_message(err));
        exit(1);
    }
    maze_error_free(err);
    return c;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *seed_env = getenv("MAZE_STRESS_SEED");
    seed = seed_env && *seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    rounds = env_int("MAZE_STRESS_ROUNDS", rounds, 1, 1000000);
    n_threads = env_int("MAZE_STRESS_THREADS", n_threads, 1, MAX_THREADS);
    watchdog_s = env_int("MAZE_STRESS_WATCHDOG", watchdog_s, 1, 86400);
    verbose = env_int("MAZE_STRESS_VERBOSE", 0, 0, 1);
    printf("stress: seed %llu (MAZE_STRESS_SEED), %d threads x %d rounds, watchdog %d s\n", (unsigned long long)seed,
           n_threads, rounds, watchdog_s);

    maze_engine_params ep = maze_engine_params_default();
    ep.n_threads = 2;
    ep.n_ctx = 256;
    ep.seed = seed;
    ep.constraint_cache_limit = 3; /* small: the threads' own regexes evict each other */
    maze_error *err = NULL;
    if (maze_engine_new(argv[1], &ep, &engine, &err) != MAZE_STATUS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], maze_error_message(err));
        return 1;
    }
    /* The token mask: one byte token allowed (plus nothing else): the output repeats it. */
    uint32_t ids[4];
    size_t n = 0;
    CHECK(maze_tokenize(engine, "a", 1, false, false, ids, 4, &n, NULL) == MAZE_STATUS_OK && n == 1, "tokenize 'a'");
    mask_token = ids[0];
    mask_char = 'a';
    char mask_json[96];
    snprintf(mask_json, sizeof mask_json, "{\"token_mask\": {\"allowed\": [%u]}}", mask_token);
    shared[K_SCHEMA] = must_constraint(schema_json);
    shared[K_REGEX] = must_constraint("{\"regex\": [\"[a-z]{3,8}\"]}");
    shared[K_CHOICE] = must_constraint("{\"choice\": [\"red\", \"green\", \"blue\", \"cyan\"]}");
    shared[K_LARK] = must_constraint(lark_json);
    shared[K_MASK] = must_constraint(mask_json);

    double t0 = now_s();
    pthread_t threads[MAX_THREADS], cancel_thread, dog;
    uint64_t cancel_seed = seed ^ 0xc0ffee;
    for (int i = 0; i < n_threads; i++) {
        workers[i].id = i;
        workers[i].rng = seed + (uint64_t)i * 0x1000193;
        pthread_mutex_init(&workers[i].lock, NULL);
        progress(&workers[i], "starting");
    }
    pthread_create(&dog, NULL, watchdog, NULL);
    pthread_create(&cancel_thread, NULL, canceller, &cancel_seed);
    for (int i = 0; i < n_threads; i++) pthread_create(&threads[i], NULL, work, &workers[i]);
    for (int i = 0; i < n_threads; i++) pthread_join(threads[i], NULL);
    atomic_store(&all_done, true);
    pthread_join(cancel_thread, NULL);
    pthread_join(dog, NULL);
    double took = now_s() - t0;

    int finishes[6] = {0}, generations = 0, constrained = 0, resets = 0, frees = 0, own = 0, scores = 0, tokens = 0, early = 0;
    for (int i = 0; i < n_threads; i++) {
        for (int f = 0; f < 6; f++) finishes[f] += workers[i].finishes[f];
        generations += workers[i].generations;
        constrained += workers[i].constrained;
        resets += workers[i].resets;
        frees += workers[i].frees;
        own += workers[i].own_constraints;
        scores += workers[i].scores;
        tokens += workers[i].tokens;
        early += workers[i].early_tokens;
        pthread_mutex_destroy(&workers[i].lock);
    }
    maze_constraint_cache_stats cache;
    CHECK(maze_engine_constraint_cache_stats(engine, &cache, NULL) == MAZE_STATUS_OK, "cache stats");
    CHECK(generations == n_threads * rounds, "%d generations of %d", generations, n_threads * rounds);
    for (int k = 0; k < N_KINDS; k++) maze_constraint_free(shared[k]);
    maze_engine_free(engine);
    printf("stress: %d calls with a cancel token (%d cancelled before the call)\n", tokens, early);
    printf("stress: %d generations (%d constrained, %d with their own constraint) in %.1f s; finish stop %d, length %d, "
           "stop_sequence %d, cancelled %d, timeout %d, error %d; %d resets, %d sessions replaced, %d external cancels, %d scores; "
           "cache hits %llu misses %llu evictions %llu\n",
           generations, constrained, own, took, finishes[0], finishes[1], finishes[2], finishes[3], finishes[4], finishes[5],
           resets, frees, atomic_load(&external_cancels), scores, (unsigned long long)cache.hits, (unsigned long long)cache.misses,
           (unsigned long long)cache.evictions);
    printf("stress: %d checks passed, %d failed (seed %llu)\n", (int)passed, (int)failed, (unsigned long long)seed);
    return failed ? 1 : 0;
}
