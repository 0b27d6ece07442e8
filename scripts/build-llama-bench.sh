#!/usr/bin/env bash
# Build llama.cpp's llama-bench (CPU, tuned for this machine) from the llama-cpp-python sdist on
# PyPI, which vendors llama.cpp, so `make bench` can measure llama.cpp beside Maze in the same
# run. Idempotent: a built binary is reused. Nothing of llama.cpp enters this repository.
#
#   MAZE_LLAMA_DIR   cache dir (default: ~/.cache/maze/llama.cpp)
# Prints the llama-bench path on stdout; build output goes to stderr.
set -euo pipefail

PACKAGE="llama-cpp-python==0.3.36"
SDIST="llama_cpp_python-0.3.36.tar.gz"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

dir="${MAZE_LLAMA_DIR:-$HOME/.cache/maze/llama.cpp}"
src="$dir/llama_cpp_python-0.3.36/vendor/llama.cpp"
bin="$src/build/bin/llama-bench"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$dir"
if [ ! -f "$dir/$SDIST" ] || ! echo "$SHA256  $dir/$SDIST" | sha256sum --check --status; then
    echo "fetching $PACKAGE (sdist) into $dir ..." >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check -d "$dir" "$PACKAGE" >&2
    if ! echo "$SHA256  $dir/$SDIST" | sha256sum --check --status; then
        echo "error: sha256 mismatch for $SDIST (expected $SHA256)" >&2
        exit 1
    fi
fi
rm -rf "$dir/llama_cpp_python-0.3.36"
tar -xzf "$dir/$SDIST" -C "$dir"
command -v cmake >/dev/null || python3 -m pip install --quiet cmake >&2
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
echo "building llama-bench (a few minutes on 2 cores) ..." >&2
# Tuned for this CPU, but without AMX: a VM may report AMX yet fault on it (tilezero raised
# SIGILL here). Explicit -mno-* flags win over -march=native in GCC whatever their order.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$src" -B "$src/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$src/build" --target llama-bench -j "$(nproc)" >&2
echo "$bin"
