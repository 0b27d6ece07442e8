#!/usr/bin/env bash
# Build llama.cpp's llama-bench (CPU, tuned for this machine) from the llama-cpp-python sdist on
# PyPI, which vendors llama.cpp, so `make bench` can measure llama.cpp beside Maze in the same
# run. Idempotent: a built binary is reused. Nothing of llama.cpp enters this repository.
# Fetching, verifying, unpacking and the cmake flags live in llama-common.sh.
#
#   MAZE_LLAMA_DIR   cache dir (default: ~/.cache/maze/llama.cpp)
# Prints the llama-bench path on stdout; build output goes to stderr.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/llama-common.sh"

bin="$LLAMA_BUILD/bin/llama-bench"
if [ ! -x "$bin" ]; then
    llama_build llama-bench
fi
echo "$bin"
