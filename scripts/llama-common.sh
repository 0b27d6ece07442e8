# Shared by build-llama-bench.sh and record-llama-reference.sh (source it, don't run it): where
# llama.cpp comes from (the llama-cpp-python sdist on PyPI, which vendors it), how it is fetched,
# verified and unpacked, and how it is configured and built (CPU, tuned for this machine).
# Nothing of llama.cpp enters this repository.
#
#   MAZE_LLAMA_DIR   cache dir (default: ~/.cache/maze/llama.cpp)
# Every function sends its progress to stderr, so a caller's stdout stays its own.

LLAMA_PACKAGE="llama-cpp-python==0.3.36"
LLAMA_SDIST="llama_cpp_python-0.3.36.tar.gz"
LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

LLAMA_DIR="${MAZE_LLAMA_DIR:-$HOME/.cache/maze/llama.cpp}"
LLAMA_SRC="$LLAMA_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp"
LLAMA_BUILD="$LLAMA_SRC/build"
LLAMA_BUILD_SERVER="$LLAMA_SRC/build-server"

# Fetch (if missing or not verified) and unpack (if not unpacked yet) the sdist.
llama_source() {
    local sdist="$LLAMA_DIR/$LLAMA_SDIST" stamp="$LLAMA_DIR/llama_cpp_python-0.3.36/.maze-unpacked"
    mkdir -p "$LLAMA_DIR"
    if [ ! -f "$sdist" ] || ! echo "$LLAMA_SDIST_SHA256  $sdist" | sha256sum --check --status; then
        echo "fetching $LLAMA_PACKAGE (sdist) into $LLAMA_DIR ..." >&2
        python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
            -d "$LLAMA_DIR" "$LLAMA_PACKAGE" >&2
        if ! echo "$LLAMA_SDIST_SHA256  $sdist" | sha256sum --check --status; then
            echo "error: sha256 mismatch for $LLAMA_SDIST (expected $LLAMA_SDIST_SHA256)" >&2
            return 1
        fi
        rm -f "$stamp"
    fi
    # The sdist ships llama.cpp's own git metadata, so cmake's build info names the real commit.
    if [ ! -f "$stamp" ] || [ ! -f "$LLAMA_SRC/CMakeLists.txt" ]; then
        rm -rf "$LLAMA_DIR/llama_cpp_python-0.3.36"
        tar -xzf "$sdist" -C "$LLAMA_DIR"
        touch "$stamp"
    fi
}

# Configure the build tree once, then build the named targets (shared libllama included).
llama_build() {
    llama_build_in "$LLAMA_BUILD" OFF "$@"
}

# The same in a build tree of its own with the server enabled (llama-server), so the bench tree's
# configuration stays as it is.
llama_build_server() {
    llama_build_in "$LLAMA_BUILD_SERVER" ON "$@"
}

# llama_build_in DIR SERVER(ON|OFF) TARGET...
llama_build_in() {
    local build="$1" server="$2"
    shift 2
    llama_source
    command -v cmake >/dev/null || python3 -m pip install --quiet cmake >&2
    if [ ! -f "$build/CMakeCache.txt" ]; then
        local generator=()
        command -v ninja >/dev/null && generator=(-G Ninja)
        # Tuned for this CPU, but without AMX: a VM may report AMX yet fault on it (tilezero raised
        # SIGILL here). Explicit -mno-* flags win over -march=native in GCC whatever their order.
        local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        cmake -S "$LLAMA_SRC" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
            -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER="$server" -DLLAMA_BUILD_TESTS=OFF >&2
    fi
    echo "building llama.cpp: $* (a few minutes on 2 cores) ..." >&2
    cmake --build "$build" --target "$@" -j "$(nproc)" >&2
}

# The llama.cpp commit the sdist vendors (from its shipped git metadata), or "unknown".
llama_commit() {
    git -C "$LLAMA_SRC" rev-parse HEAD 2>/dev/null || echo unknown
}
