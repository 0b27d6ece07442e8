#!/usr/bin/env bash
# Records llama.cpp's own verdicts on the GBNF samples, so that `cargo test` can compare Maze and
# its reference recogniser with llama.cpp without building it (tests/gbnf/mod.rs).
#
# Builds libllama from the llama-cpp-python sdist scripts/llama-common.sh fetches, compiles
# llama.cpp's tests/test-gbnf-validator.cpp against it (nothing of llama.cpp enters this
# repository), runs it on every line of tests/data/gbnf/samples.jsonl (a shipped grammar by name,
# or an inline `gbnf` text, and a text: outputs SmolLM2 generated under Maze, and hand-written
# sentences, prefixes and non-sentences) and writes tests/data/gbnf/llama-verdicts.jsonl: each
# sample with `llama` = "whole" (valid), "prefix" (llama.cpp: "Unexpected end of input": a valid
# prefix), "invalid" (an unexpected character) or "refused" (llama.cpp cannot parse the grammar).
#
#   scripts/check-gbnf-with-llama.sh      (a few minutes on 2 cores the first time)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/llama-common.sh
source scripts/llama-common.sh

llama_build llama
validator="$LLAMA_BUILD/maze-gbnf-validator"
libs="$(dirname "$(find "$LLAMA_BUILD" -name 'libllama.so' | head -1)")"
ggml_libs="$(dirname "$(find "$LLAMA_BUILD" -name 'libggml-base.so' | head -1)")"
if [ ! -x "$validator" ] || [ "$LLAMA_SRC/tests/test-gbnf-validator.cpp" -nt "$validator" ]; then
    echo "compiling llama.cpp's test-gbnf-validator ..." >&2
    g++ -O1 -std=c++17 -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" -I"$LLAMA_SRC/src" \
        "$LLAMA_SRC/tests/test-gbnf-validator.cpp" -L"$libs" -L"$ggml_libs" -lllama -lggml -lggml-base \
        -Wl,-rpath,"$libs" -Wl,-rpath,"$ggml_libs" -o "$validator"
fi

python3 - "$validator" "$(llama_commit)" tests/data/gbnf <<'PY'
import json, os, subprocess, sys, tempfile

validator, commit, data = sys.argv[1:4]
out_lines = [json.dumps({"llama_cpp_commit": commit, "sdist": "llama-cpp-python 0.3.36",
                         "validator": "tests/test-gbnf-validator.cpp"})]
counts = {}
with tempfile.TemporaryDirectory() as tmp:
    for n, line in enumerate(open(os.path.join(data, "samples.jsonl"), encoding="utf-8")):
        sample = json.loads(line)
        if "grammar" in sample:
            grammar_path = os.path.join(data, sample["grammar"] + ".gbnf")
        else:
            grammar_path = os.path.join(tmp, f"inline-{n}.gbnf")
            with open(grammar_path, "w", encoding="utf-8") as f:
                f.write(sample["gbnf"])
        input_path = os.path.join(tmp, f"input-{n}.txt")
        with open(input_path, "wb") as f:
            f.write(sample["text"].encode("utf-8"))
        run = subprocess.run([validator, grammar_path, input_path], capture_output=True)
        said = run.stdout.decode("utf-8", "replace")
        if "Input string is valid" in said:
            verdict = "whole"
        elif "Unexpected end of input" in said:
            verdict = "prefix"
        elif "Unexpected character" in said:
            verdict = "invalid"
        elif "Failed to initialize" in said:
            verdict = "refused"
        else:
            sys.exit(f"sample {n}: unexpected validator output (status {run.returncode}): {said!r}")
        sample["llama"] = verdict
        counts[verdict] = counts.get(verdict, 0) + 1
        out_lines.append(json.dumps(sample, ensure_ascii=False))
with open(os.path.join(data, "llama-verdicts.jsonl"), "w", encoding="utf-8") as f:
    f.write("\n".join(out_lines) + "\n")
print(f"llama.cpp {commit}: {len(out_lines) - 1} samples, {counts}", file=sys.stderr)
PY
