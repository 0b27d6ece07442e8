#!/usr/bin/env bash
# Tool calls through Maze's remote backend against a real llama-server: builds llama.cpp's
# llama-server (CPU) from the same llama-cpp-python sdist scripts/build-llama-bench.sh uses (its
# own build tree, see llama-common.sh), starts it with --jinja on Qwen2.5-Coder-0.5B-Instruct (its
# GGUF template supports tools), and runs the ignored test `llama_server_tool_call` in
# tests/remote.rs with MAZE_LLAMA_SERVER_URL pointing at it. Not part of `make test` (the build
# takes 10-20 minutes on 2 cores); idempotent: a built binary and a fetched model are reused.
#
#   MAZE_LLAMA_DIR    llama.cpp cache dir (default: ~/.cache/maze/llama.cpp)
#   MAZE_MODEL_DIR    model dir (default: ~/.cache/maze/models)
#   MAZE_LLAMA_PORT   port for llama-server (default: 18089)
#   BUILD_ONLY=1      build llama-server and stop
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/llama-common.sh"

bin="$LLAMA_BUILD_SERVER/bin/llama-server"
if [ ! -x "$bin" ]; then
    llama_build_server llama-server
fi
echo "llama-server: $bin ($(llama_commit))" >&2
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0

model="$("$here/fetch-model.sh" qwen2.5-coder)"
port="${MAZE_LLAMA_PORT:-18089}"
log="$(mktemp -t llama-server.XXXXXX.log)"
"$bin" -m "$model" --jinja --host 127.0.0.1 --port "$port" -c 4096 -t "$(nproc)" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "error: llama-server exited; log: $log" >&2; cat "$log" >&2; exit 1; }
    sleep 1
done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "error: llama-server not ready; log: $log" >&2; exit 1; }

cd "$here/.."
MAZE_LLAMA_SERVER_URL="http://127.0.0.1:$port" cargo test --release --features server,testing,cli \
    --test remote llama_server_tool_call -- --ignored --nocapture
