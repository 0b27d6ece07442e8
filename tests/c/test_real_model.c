/*
 * A C program chats with a real model through maze.h alone: a chat turn rendered with the
 * model's own template must answer (and, for a model tuned to answer, name Paris), and a
 * JSON-schema-constrained turn must give JSON that a strict parser here accepts and that obeys
 * the schema. Greedy decoding keeps both deterministic. `make c-test-real-models` runs it on
 * each real model.
 *
 *   test_real_model MODEL.gguf [--base]
 *
 * --base: the model is a small base model (Gemma 3 270M) that continues text rather than
 * answering; its chat answer must only be non-empty, as tests/real_models.rs expects of it.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maze.h"
#include "check.h"

/* ---------------------------------------------------------------- a strict JSON parser (RFC 8259) */

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

/* A parsed value. An object's members are its items, each with its key. */
typedef struct json {
    json_type type;
    bool boolean;
    bool integer; /* a number written without fraction or exponent */
    double number;
    char *string; /* decoded UTF-8 (JSON_STRING) */
    char *key;    /* as a member of an object */
    struct json *items;
    size_t n_items;
} json;

typedef struct {
    const char *p, *end;
    int depth;
    const char *error; /* the first problem found; NULL while none */
} json_parser;

static bool json_fail(json_parser *ps, const char *why) {
    if (!ps->error) ps->error = why;
    return false;
}

static void json_free(json *v) {
    for (size_t i = 0; i < v->n_items; i++) json_free(&v->items[i]);
    free(v->items);
    free(v->string);
    free(v->key);
}

static void skip_space(json_parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static bool take(json_parser *ps, char c) {
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return true;
    }
    return false;
}

static bool parse_value(json_parser *ps, json *out);

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool parse_hex4(json_parser *ps, unsigned *out) {
    if (ps->end - ps->p < 4) return json_fail(ps, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(*ps->p++);
        if (d < 0) return json_fail(ps, "bad \\u escape");
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return true;
}

/* Appends code point `cp` to `buf` as UTF-8 (buf has room: escapes are longer than their bytes). */
static size_t put_utf8(char *buf, unsigned cp) {
    if (cp < 0x80) { buf[0] = (char)cp; return 1; }
    if (cp < 0x800) { buf[0] = (char)(0xC0 | cp >> 6); buf[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        buf[0] = (char)(0xE0 | cp >> 12); buf[1] = (char)(0x80 | (cp >> 6 & 0x3F)); buf[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    buf[0] = (char)(0xF0 | cp >> 18); buf[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    buf[2] = (char)(0x80 | (cp >> 6 & 0x3F)); buf[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A \u escape (after the "\u"), with a surrogate pair's second half. */
static bool parse_unicode_escape(json_parser *ps, unsigned *cp) {
    if (!parse_hex4(ps, cp)) return false;
    if (*cp >= 0xDC00 && *cp <= 0xDFFF) return json_fail(ps, "lone low surrogate");
    if (*cp < 0xD800 || *cp > 0xDBFF) return true;
    unsigned low;
    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') return json_fail(ps, "lone high surrogate");
    ps->p += 2;
    if (!parse_hex4(ps, &low)) return false;
    if (low < 0xDC00 || low > 0xDFFF) return json_fail(ps, "bad surrogate pair");
    *cp = 0x10000 + ((*cp - 0xD800) << 10) + (low - 0xDC00);
    return true;
}

/* A string (at its opening quote), decoded into a new NUL-terminated buffer. */
static bool parse_string(json_parser *ps, char **out) {
    if (!take(ps, '"')) return json_fail(ps, "expected a string");
    const char *start = ps->p;
    while (ps->p < ps->end && *ps->p != '"') ps->p += (*ps->p == '\\' && ps->p + 1 < ps->end) ? 2 : 1;
    if (ps->p >= ps->end) return json_fail(ps, "unterminated string");
    ps->p = start;
    char *buf = malloc((size_t)(ps->end - start) + 1);
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20) { free(buf); return json_fail(ps, "control character in a string"); }
        if (c != '\\') { buf[n++] = (char)c; continue; }
        char e = *ps->p++;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            buf[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
        } else if (e == 'u') {
            unsigned cp;
            if (!parse_unicode_escape(ps, &cp)) { free(buf); return false; }
            n += put_utf8(buf + n, cp);
        } else {
            free(buf);
            return json_fail(ps, "bad escape");
        }
    }
    ps->p++;
    buf[n] = 0;
    *out = buf;
    return true;
}

static bool take_digits(json_parser *ps) {
    const char *start = ps->p;
    while (ps->p < ps->end && isdigit((unsigned char)*ps->p)) ps->p++;
    return ps->p > start;
}

/* A number in JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool parse_number(json_parser *ps, json *out) {
    const char *start = ps->p;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p < ps->end && *ps->p == '0') {
        ps->p++;
        if (ps->p < ps->end && isdigit((unsigned char)*ps->p)) return json_fail(ps, "leading zero");
    } else if (!take_digits(ps)) {
        return json_fail(ps, "bad number");
    }
    out->integer = true;
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        out->integer = false;
        if (!take_digits(ps)) return json_fail(ps, "no digits after the decimal point");
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        out->integer = false;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (!take_digits(ps)) return json_fail(ps, "no digits in the exponent");
    }
    char text[64];
    size_t len = (size_t)(ps->p - start);
    if (len >= sizeof text) return json_fail(ps, "number too long");
    memcpy(text, start, len);
    text[len] = 0;
    out->type = JSON_NUMBER;
    out->number = strtod(text, NULL);
    return true;
}

static json *append_item(json *v) {
    v->items = realloc(v->items, (v->n_items + 1) * sizeof *v->items);
    json *item = &v->items[v->n_items++];
    memset(item, 0, sizeof *item);
    return item;
}

/* The elements of an array or the members of an object (after its opening bracket). */
static bool parse_items(json_parser *ps, json *out, char close) {
    if (take(ps, close)) return true;
    do {
        json *item = append_item(out);
        if (close == '}') {
            skip_space(ps);
            if (!parse_string(ps, &item->key)) return false;
            for (size_t i = 0; i + 1 < out->n_items; i++)
                if (strcmp(out->items[i].key, item->key) == 0) return json_fail(ps, "duplicate key");
            if (!take(ps, ':')) return json_fail(ps, "expected ':'");
        }
        if (!parse_value(ps, item)) return false;
    } while (take(ps, ','));
    return take(ps, close) || json_fail(ps, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
}

static bool parse_literal(json_parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return json_fail(ps, "unexpected character");
    ps->p += n;
    return true;
}

static bool parse_value(json_parser *ps, json *out) {
    skip_space(ps);
    if (ps->p >= ps->end) return json_fail(ps, "unexpected end");
    if (++ps->depth > 64) return json_fail(ps, "nested too deeply");
    bool ok;
    switch (*ps->p) {
    case '{': ps->p++; out->type = JSON_OBJECT; ok = parse_items(ps, out, '}'); break;
    case '[': ps->p++; out->type = JSON_ARRAY; ok = parse_items(ps, out, ']'); break;
    case '"': out->type = JSON_STRING; ok = parse_string(ps, &out->string); break;
    case 't': out->type = JSON_BOOL; out->boolean = true; ok = parse_literal(ps, "true"); break;
    case 'f': out->type = JSON_BOOL; ok = parse_literal(ps, "false"); break;
    case 'n': out->type = JSON_NULL; ok = parse_literal(ps, "null"); break;
    default: ok = parse_number(ps, out);
    }
    ps->depth--;
    return ok;
}

/* Parses a whole document (nothing but white space after the value). On failure returns false
 * with `*error` naming the problem; `*out` must then still be freed. */
static bool json_parse(const char *text, size_t len, json *out, const char **error) {
    json_parser ps = {text, text + len, 0, NULL};
    memset(out, 0, sizeof *out);
    bool ok = parse_value(&ps, out);
    skip_space(&ps);
    if (ok && ps.p != ps.end) ok = json_fail(&ps, "content after the value");
    *error = ps.error;
    return ok;
}

/* ---------------------------------------------------------------- the schema the answer must obey */

static const char CAPITAL_SCHEMA[] =
    "{\"name\": \"capital\", \"json_schema\": {\"type\": \"object\", \"properties\": {"
    "\"capital\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 40},"
    "\"population\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 100000000}},"
    "\"required\": [\"capital\", \"population\"], \"additionalProperties\": false}}";

/* Whether `text` is JSON obeying CAPITAL_SCHEMA; `why` receives the reason when not. */
static bool obeys_capital_schema(const char *text, size_t len, const char **why) {
    json doc;
    bool ok = json_parse(text, len, &doc, why);
    if (ok && doc.type != JSON_OBJECT) ok = (*why = "not an object", false);
    const json *capital = NULL, *population = NULL;
    for (size_t i = 0; ok && i < doc.n_items; i++) {
        const json *m = &doc.items[i];
        if (strcmp(m->key, "capital") == 0) capital = m;
        else if (strcmp(m->key, "population") == 0) population = m;
        else ok = (*why = "a property the schema does not allow", false);
    }
    if (ok && (!capital || !population)) ok = (*why = "a required property is missing", false);
    if (ok && (capital->type != JSON_STRING || strlen(capital->string) < 1 || strlen(capital->string) > 40))
        ok = (*why = "capital is not a string of 1 to 40 bytes", false);
    if (ok && (population->type != JSON_NUMBER || !population->integer || population->number < 0 ||
               population->number > 100000000))
        ok = (*why = "population is not an integer in [0, 100000000]", false);
    json_free(&doc);
    return ok;
}

/* The checker must reject what the schema rejects, or a pass would mean nothing. */
static void test_schema_checker(void) {
    static const char *const bad[] = {
        "",
        "{\"capital\": \"Paris\", \"population\": 2100000",
        "{\"capital\": \"Paris\", \"population\": 2100000,}",
        "{\"capital\": \"Paris\", \"population\": 2100000} x",
        "{\"capital\": \"Paris\"}",
        "{\"capital\": \"Paris\", \"population\": -1}",
        "{\"capital\": \"Paris\", \"population\": 2.5}",
        "{\"capital\": \"Paris\", \"population\": 1e3}",
        "{\"capital\": \"Paris\", \"population\": 01}",
        "{\"capital\": \"Paris\", \"population\": \"2100000\"}",
        "{\"capital\": \"\", \"population\": 1}",
        "{\"capital\": 7, \"population\": 1}",
        "{\"capital\": \"Paris\", \"population\": 1, \"country\": \"France\"}",
        "{\"capital\": \"Paris\", \"capital\": \"Lyon\", \"population\": 1}",
        "{\"capital\": \"Pa\tris\", \"population\": 1}",
        "{\"capital\": \"Paris\\x\", \"population\": 1}",
        "{\"capital\": \"\\ud800\", \"population\": 1}",
        "[\"Paris\", 1]",
    };
    const char *why = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!obeys_capital_schema(bad[i], strlen(bad[i]), &why), "accepted %s", bad[i]);
    const char *good = " {\"population\" : 0,\n\"capital\":\"Par\\u00eds \\ud83d\\ude00 \\\"\\n\"} ";
    CHECK(obeys_capital_schema(good, strlen(good), &why), "rejected %s: %s", good, why);
}

/* ---------------------------------------------------------------- chatting with the model */

static maze_engine *load_engine(const char *path) {
    maze_engine_params params = maze_engine_params_default();
    params.n_threads = 2;
    params.n_ctx = 1024;
    params.seed = 1;
    maze_engine *engine = NULL;
    maze_error *err = NULL;
    maze_status st = maze_engine_new(path, &params, &engine, &err);
    if (st != MAZE_STATUS_OK) {
        fprintf(stderr, "cannot load %s: %s: %s\n", path, maze_status_name(st), maze_error_message(err));
        maze_error_free(err);
        exit(1);
    }
    return engine;
}

/* One user turn on a fresh session, greedy, rendered with the model's chat template. */
static maze_result *ask(const maze_engine *engine, const char *question, maze_constraint *constraint,
                        uint32_t max_tokens) {
    maze_session *session = NULL;
    maze_error *err = NULL;
    maze_status st = maze_session_new(engine, &session, &err);
    CHECK(st == MAZE_STATUS_OK, "session: %s", maze_error_message(err));
    maze_chat_message turn[] = {maze_msg("user", question)};
    maze_generate_params gen = maze_generate_params_default();
    gen.max_tokens = max_tokens;
    gen.temperature = 0;
    gen.constraints = (const maze_constraint *const *)&constraint;
    gen.n_constraints = constraint ? 1 : 0;
    maze_result *result = NULL;
    if (st == MAZE_STATUS_OK) st = maze_session_chat(session, turn, 1, &gen, NULL, NULL, &result, &err);
    CHECK(st == MAZE_STATUS_OK && result, "chat: %s: %s", maze_status_name(st), maze_error_message(err));
    maze_error_free(err);
    maze_session_free(session);
    if (!result) exit(1);
    printf("> %s\n%s\n[%s, %u tokens]\n", question, maze_result_text(result, NULL),
           maze_finish_reason_name(maze_result_finish_reason(result)), maze_result_generated_tokens(result));
    return result;
}

/* `needle` must be lower case. */
static bool contains_ignoring_case(const char *haystack, const char *needle) {
    for (; *haystack; haystack++) {
        size_t i = 0;
        while (needle[i] && tolower((unsigned char)haystack[i]) == needle[i]) i++;
        if (!needle[i]) return true;
    }
    return false;
}

static bool blank(const char *s) {
    while (*s && isspace((unsigned char)*s)) s++;
    return *s == 0;
}

static void test_chat(const maze_engine *engine, bool base) {
    CHECK(maze_engine_has_chat_template(engine), "%s has no chat template", maze_engine_model_name(engine));
    maze_result *r = ask(engine, "What is the capital of France? Answer in one word.", NULL, 48);
    const char *text = maze_result_text(r, NULL);
    CHECK(!blank(text), "empty answer");
    if (!base) {
        CHECK(contains_ignoring_case(text, "paris"), "answer lacks Paris: %s", text);
        CHECK(maze_result_finish_reason(r) == MAZE_FINISH_REASON_STOP, "finished with %s",
              maze_finish_reason_name(maze_result_finish_reason(r)));
    }
    maze_result_free(r);
}

static void test_constrained_chat(const maze_engine *engine, bool base) {
    maze_constraint *schema = NULL;
    maze_error *err = NULL;
    maze_status st = maze_constraint_from_json(engine, CAPITAL_SCHEMA, strlen(CAPITAL_SCHEMA), &schema, &err);
    CHECK(st == MAZE_STATUS_OK, "schema: %s", maze_error_message(err));
    maze_error_free(err);
    if (!schema) return;
    /* Room for the longest output the schema allows (a base model may fill the string). */
    maze_result *r = ask(engine, "Give the capital of France and its population as JSON with the keys capital and population.",
                         schema, 96);
    size_t len = 0;
    const char *text = maze_result_text(r, &len);
    const char *why = NULL;
    CHECK(obeys_capital_schema(text, len, &why), "%s: %s", why, text);
    CHECK(maze_result_constraints_satisfied(r), "validation %s", maze_result_validation_json(r));
    if (!base) CHECK(contains_ignoring_case(text, "paris"), "JSON answer lacks Paris: %s", text);
    maze_result_free(r);
    maze_constraint_free(schema);
}

int main(int argc, char **argv) {
    if (argc < 2 || (argc > 2 && strcmp(argv[2], "--base") != 0) || argc > 3) {
        fprintf(stderr, "usage: %s MODEL.gguf [--base]\n", argv[0]);
        return 2;
    }
    bool base = argc > 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    test_schema_checker();
    maze_engine *engine = load_engine(argv[1]);
    printf("%s (%s)\n", maze_engine_model_name(engine), maze_engine_architecture(engine));
    test_chat(engine, base);
    test_constrained_chat(engine, base);
    maze_engine_free(engine);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
