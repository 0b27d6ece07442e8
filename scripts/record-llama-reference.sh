#!/usr/bin/env bash
# Record llama.cpp's reference outputs for Maze's tests: for each model, tests/reference/<model>.json
# with the model file and sha256, the llama.cpp version, tokenizations of a fixed text set, greedy
# continuations of fixed prompts (scripts/llama-reference.c) and llama-perplexity's result on
# tests/data/perplexity.txt. The JSON files are committed, so tests and CI never build llama.cpp;
# run this again only to re-record (after changing the text set, the prompts or llama.cpp).
# Idempotent: llama.cpp (llama-common.sh), the reference program and the models are built or
# fetched only when missing.
#
#   scripts/record-llama-reference.sh [MODEL...]   default: smollm2 qwen2.5-coder gemma3
#   MAZE_LLAMA_DIR, MAZE_MODEL_DIR                 as for build-llama-bench.sh and fetch-model.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
source "$here/llama-common.sh"

N_CTX=512
N_THREADS=2
text="tests/data/perplexity.txt"
text_source="the GNU GPL v3 text, verbatim: /usr/share/common-licenses/GPL-3 of Debian base-files 12.4+deb12u11 (35149 bytes)"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2 qwen2.5-coder gemma3)

# libllama (shared) and llama-perplexity, then the reference program linked against them.
bin="$LLAMA_BUILD/bin"
if [ ! -x "$bin/llama-perplexity" ] || [ ! -f "$bin/libllama.so" ]; then
    llama_build llama llama-perplexity
fi
ref="$bin/maze-llama-reference"
if [ ! -x "$ref" ] || [ "$here/llama-reference.c" -nt "$ref" ]; then
    echo "compiling scripts/llama-reference.c ..." >&2
    cc -O2 -std=c11 -Wall -Wextra -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
        "$here/llama-reference.c" -o "$ref" -L"$bin" -lllama -lggml -lggml-base -Wl,-rpath,"$bin"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
mkdir -p tests/reference
for name in "${models[@]}"; do
    model="$("$here/fetch-model.sh" "$name")"
    echo "$name: tokenizer and greedy cases ..." >&2
    "$ref" "$model" "$text" >"$tmp/ref.json"
    echo "$name: llama-perplexity -c $N_CTX on $text ..." >&2
    "$bin/llama-perplexity" -m "$model" -f "$text" -c "$N_CTX" -b "$N_CTX" -t "$N_THREADS" \
        >"$tmp/ppl.log" 2>&1 || { cat "$tmp/ppl.log" >&2; exit 1; }
    python3 - "$name" "$model" "$text" "$text_source" "$N_CTX" "$N_THREADS" "$LLAMA_PACKAGE" \
        "$LLAMA_SDIST_SHA256" "$(llama_commit)" "$tmp/ref.json" "$tmp/ppl.log" \
        >"tests/reference/$name.json" <<'PY'
import hashlib, json, os, re, sys

name, model, text, text_source, n_ctx, n_threads, package, sdist_sha, commit, ref, log = sys.argv[1:]
n_ctx, n_threads = int(n_ctx), int(n_threads)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

ref = json.load(open(ref, encoding="utf-8"))
log = open(log, encoding="utf-8", errors="replace").read()
chunks = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", log)
final = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log)
system = re.search(r"system_info: (.*)", log)
if not (chunks and final):
    sys.exit("error: no perplexity result in llama-perplexity's output:\n" + log)
n_chunks = int(chunks.group(1))
assert int(chunks.group(2)) == n_ctx and int(chunks.group(4)) == 1
running = [float(v) for _, v in re.findall(r"\[(\d+)\]([\d.]+),", log)]
assert len(running) == n_chunks

out = {
    "model": {"name": name, "file": os.path.basename(model), "bytes": os.path.getsize(model),
              "sha256": sha256(model)},
    "llama_cpp": {"package": package, "sdist_sha256": sdist_sha, "commit": commit,
                  "system_info": system.group(1).strip() if system else None},
    "vocab": ref["vocab"],
    "tokenize_settings": "llama_tokenize(add_special=true: BOS/EOS only as the vocab's add_bos/add_eos say, "
                         "parse_special=true)",
    "tokenize": ref["tokenize"],
    "greedy_settings": {"n_ctx": n_ctx, "n_threads": n_threads, "n_predict": 32, "device": "CPU",
                        "prompt": "tokenized like the tokenize cases, decoded in one batch from an empty cache",
                        "choice": "argmax of the last logits (lowest id on a tie); no other sampling",
                        "stop": "after n_predict ids, or at an end-of-generation id (vocab.eog), kept as the last id",
                        "margins": "top-1 minus top-2 logit at each step; a small one marks a fragile step",
                        "text": "llama_detokenize of ids (special tokens rendered, invalid UTF-8 as U+FFFD)"},
    "greedy": ref["greedy"],
    "perplexity": {
        "text": text, "text_sha256": sha256(text), "text_source": text_source,
        "command": f"llama-perplexity -m MODEL -f {text} -c {n_ctx} -b {n_ctx} -t {n_threads}",
        "n_ctx": n_ctx, "n_tokens": ref["text"]["n_tokens"], "n_chunks": n_chunks,
        "scored_per_chunk": n_ctx - 1 - n_ctx // 2,
        "scoring": "the text, less one trailing newline (as -f reads it), is tokenized with add_special=true, parse_special=false (ids below) and cut into "
                   "n_chunks = n_tokens / n_ctx whole chunks of n_ctx ids (the tail is dropped); each chunk is "
                   "decoded from an empty cache, its first id replaced by BOS when vocab.add_bos; only the second "
                   "half is scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the ids at n_ctx/2+1 .. n_ctx-1 "
                   "(scored_per_chunk per chunk); ppl = exp(mean negative log-likelihood over all scored ids)",
        "ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)),
        "running_ppl": running,
        "ids": ref["text"]["ids"],
    },
}

# Sections one key a line, cases one a line, lists of numbers inline.
def fmt(v, depth=0):
    pad = "  " * (depth + 1)
    if isinstance(v, dict) and depth < 2:
        items = [f"{pad}{json.dumps(k)}: {fmt(x, depth + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(v, list) and any(isinstance(x, dict) for x in v):
        return "[\n" + ",\n".join(pad + fmt(x, 2) for x in v) + "\n" + "  " * depth + "]"
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))

print(fmt(out))
PY
    echo "$name: PPL $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["perplexity"]["ppl"])' "tests/reference/$name.json") -> tests/reference/$name.json" >&2
done
