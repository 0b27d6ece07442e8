// llama-reference: what llama.cpp makes of a model, as JSON on stdout, for Maze's reference tests
// (tests/reference/*.json, written by scripts/record-llama-reference.sh, which builds this file
// against llama.cpp's llama.h and libllama).
//
//   llama-reference MODEL.gguf [TEXT_FILE]
//
// Sections: "vocab" (the special ids llama.cpp uses), "tokenize" (a fixed text set), "greedy"
// (a fixed prompt set decoded greedily) and, given TEXT_FILE, "text" (its token ids, tokenized as
// llama-perplexity does). CPU only, 2 threads; llama.cpp's own log goes to stderr (warnings up).
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 512
#define N_THREADS 2
#define N_PREDICT 32

// Texts for the tokenizer: code, CJK, emoji, runs of spaces and newlines, digits, special-token
// text of each model family (parsed as special tokens where the vocab has them), edge cases.
static const char *TEXTS[] = {
    "Hello, world!",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\n\tlet v: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{:?} {}\", v, v.len());\n}\n",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "I love 🦀 and 🐍! 👍🏽 👨‍👩‍👧 🇫🇷 ✨",
    "a  b   c    d\t\te      f",
    "    leading and trailing    ",
    "line1\nline2\n\nline3\n\n\n\nend\r\nwindows\r\n",
    "3.14159 1234567890 2024-01-01 1,000,000 0x1F 007",
    "Ça va? naïve café — “quotes” ‘single’ … Übergröße",
    "I'm you're he'll we've they'd isn't HELLO World",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<|endoftext|>text after<|endoftext|>",
    "<bos><eos><s></s>",
    " ",
    "",
};

// Plain prompts for greedy decoding (no chat template).
static const char *PROMPTS[] = {
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The first ten prime numbers are 2, 3, 5,",
    "// Return the larger of two integers.\nint max(int a, int b) {",
};

#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

static void on_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_CONT) fputs(text, stderr);
}

// Write s[0..n) as a JSON string; bytes that are not valid UTF-8 become U+FFFD.
static void put_str(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = (p[i + k] >> 6) == 2;
        if (!ok) { fputs("\\ufffd", stdout); i++; continue; }
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20) printf("\\u%04x", c);
        else fwrite(p + i, 1, len, stdout);
        i += len;
    }
    putchar('"');
}

static void put_ids(const llama_token *ids, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    putchar(']');
}

// Tokenize with the vocab's own add_bos/add_eos (add_special) and special-token parsing as asked.
static llama_token *tokenize(const struct llama_vocab *vocab, const char *text, int len, int parse_special, int *n) {
    int cap = len + 8;
    llama_token *ids = malloc(sizeof *ids * cap);
    *n = llama_tokenize(vocab, text, len, ids, cap, true, parse_special);
    if (*n < 0) {
        cap = -*n;
        ids = realloc(ids, sizeof *ids * cap);
        *n = llama_tokenize(vocab, text, len, ids, cap, true, parse_special);
    }
    if (*n < 0) { fprintf(stderr, "tokenize failed\n"); exit(1); }
    return ids;
}

// The greedy choice: the first id of the largest logit; also the gap to the runner-up.
static llama_token argmax(const float *logits, int n_vocab, float *margin) {
    int best = 0, second = -1;
    for (int i = 1; i < n_vocab; i++) {
        if (logits[i] > logits[best]) { second = best; best = i; }
        else if (second < 0 || logits[i] > logits[second]) second = i;
    }
    *margin = logits[best] - logits[second];
    return best;
}

static char *read_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    rewind(f);
    char *buf = malloc(*len + 1);
    if (fread(buf, 1, *len, f) != (size_t)*len) { perror(path); exit(1); }
    fclose(f);
    buf[*len] = 0;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s MODEL.gguf [TEXT_FILE]\n", argv[0]);
        return 2;
    }
    llama_log_set(on_log, NULL);
    llama_backend_init();

    // Load the model on the CPU and make a context: N_CTX tokens, N_THREADS threads.
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = N_CTX;
    cp.n_threads = cp.n_threads_batch = N_THREADS;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot make a context\n"); return 1; }
    const int n_vocab = llama_vocab_n_tokens(vocab);

    // Section "vocab": the special ids and flags llama.cpp takes from the model, and its
    // end-of-generation set (which it also fills from token texts the metadata does not name).
    printf("{\"vocab\":{\"n_tokens\":%d,\"bos\":%d,\"eos\":%d,\"eot\":%d,\"add_bos\":%s,\"add_eos\":%s,\"eog\":[",
           n_vocab, llama_vocab_bos(vocab), llama_vocab_eos(vocab), llama_vocab_eot(vocab),
           llama_vocab_get_add_bos(vocab) ? "true" : "false", llama_vocab_get_add_eos(vocab) ? "true" : "false");
    for (int i = 0, first = 1; i < n_vocab; i++)
        if (llama_vocab_is_eog(vocab, i)) { printf(first ? "%d" : ",%d", i); first = 0; }
    puts("]},");

    // Section "tokenize": each fixed text, add_special=true (BOS/EOS as the vocab says) and
    // parse_special=true.
    puts("\"tokenize\":[");
    for (int t = 0; t < COUNT(TEXTS); t++) {
        int n;
        llama_token *ids = tokenize(vocab, TEXTS[t], (int)strlen(TEXTS[t]), true, &n);
        fputs("{\"text\":", stdout);
        put_str(TEXTS[t], strlen(TEXTS[t]));
        fputs(",\"ids\":", stdout);
        put_ids(ids, n);
        printf("}%s\n", t + 1 < COUNT(TEXTS) ? "," : "");
        free(ids);
    }
    puts("],");

    // Section "greedy": each prompt from an empty cache, the whole prompt in one batch, then
    // N_PREDICT steps of argmax over the last logits, stopping early only at an end-of-generation
    // id (which is then the last id). Also the top-1 minus top-2 logit gap of each step, and the
    // detokenized output (special tokens rendered).
    puts("\"greedy\":[");
    for (int p = 0; p < COUNT(PROMPTS); p++) {
        int n_prompt;
        llama_token *prompt = tokenize(vocab, PROMPTS[p], (int)strlen(PROMPTS[p]), true, &n_prompt);
        llama_token out[N_PREDICT];
        float margin[N_PREDICT];
        int n_out = 0, eog = 0;
        llama_memory_clear(llama_get_memory(ctx), true);
        struct llama_batch batch = llama_batch_get_one(prompt, n_prompt);
        while (n_out < N_PREDICT) {
            if (llama_decode(ctx, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
            llama_token next = argmax(llama_get_logits_ith(ctx, -1), n_vocab, &margin[n_out]);
            out[n_out++] = next;
            if (llama_vocab_is_eog(vocab, next)) { eog = 1; break; }
            batch = llama_batch_get_one(&out[n_out - 1], 1);
        }
        char text[4096];
        int n_text = llama_detokenize(vocab, out, n_out, text, sizeof text, false, true);
        fputs("{\"prompt\":", stdout);
        put_str(PROMPTS[p], strlen(PROMPTS[p]));
        fputs(",\"prompt_ids\":", stdout);
        put_ids(prompt, n_prompt);
        fputs(",\"ids\":", stdout);
        put_ids(out, n_out);
        printf(",\"stop\":\"%s\",\"margins\":[", eog ? "eog" : "n_predict");
        for (int i = 0; i < n_out; i++) printf(i ? ",%.3f" : "%.3f", margin[i]);
        fputs("],\"text\":", stdout);
        put_str(text, n_text > 0 ? (size_t)n_text : 0);
        printf("}%s\n", p + 1 < COUNT(PROMPTS) ? "," : "");
        free(prompt);
    }
    putchar(']');

    // Section "text": the perplexity text's ids, read and tokenized as llama-perplexity does (its
    // -f drops one trailing newline; add_special=true, parse_special=false).
    if (argc == 3) {
        long len;
        char *buf = read_file(argv[2], &len);
        if (len > 0 && buf[len - 1] == '\n') buf[--len] = 0;
        int n;
        llama_token *ids = tokenize(vocab, buf, (int)len, false, &n);
        printf(",\n\"text\":{\"n_tokens\":%d,\"ids\":", n);
        put_ids(ids, n);
        putchar('}');
        free(ids);
        free(buf);
    }
    puts("}");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
