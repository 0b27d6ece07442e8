#!/usr/bin/env bash
# Builds libmaze with the `cuda` feature on a machine without a GPU or a CUDA install: the CUDA 13
# compiler and libraries come from PyPI wheels, installed once into a virtual environment in the
# cache dir. Usage: scripts/build-cuda.sh [extra cargo args]   (CUDA_COMPUTE_CAP defaults to 90,
# the H100/H200; the output goes to target/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${MAZE_CACHE_DIR:-$HOME/.cache/maze}/cuda13"
if [ ! -x "$cache/venv/bin/python" ] || [ ! -f "$cache/.installed-13.4" ]; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install --quiet \
        'nvidia-cuda-nvcc==13.4.*' 'nvidia-cuda-runtime==13.4.*' 'nvidia-nvvm==13.4.*' 'nvidia-cuda-crt==13.4.*' \
        'nvidia-cuda-nvrtc==13.4.*' 'nvidia-cuda-cccl' 'nvidia-cublas' 'nvidia-curand'
    touch "$cache/.installed-13.4"
fi
toolkit="$("$cache/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
# The wheels name their libraries with the major version only; the build links the plain names.
for lib in cudart cublas cublasLt curand nvrtc; do
    so="$(ls "$toolkit/lib/lib$lib.so."* 2>/dev/null | head -1)"
    [ -n "$so" ] && ln -sf "$(basename "$so")" "$toolkit/lib/lib$lib.so"
done
export CUDA_HOME="$toolkit" CUDA_ROOT="$toolkit" CUDA_PATH="$toolkit"
export PATH="$toolkit/bin:$PATH" LIBRARY_PATH="$toolkit/lib:${LIBRARY_PATH:-}" LD_LIBRARY_PATH="$toolkit/lib:${LD_LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13040
export NVCC_PREPEND_FLAGS="-I$toolkit/include -I$toolkit/cccl/include ${NVCC_PREPEND_FLAGS:-}"
# libcuda.so comes with the GPU driver, which a build machine may lack: link against a stub
# that defines the driver functions cudarc calls (SONAME libcuda.so.1, as NVIDIA's own stub),
# so the real driver is what loads at run time.
stubs="$cache/stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
    cargo rustc --release --lib --features cuda --target-dir target/cuda --crate-type rlib
    rlib="$(ls -t target/cuda/release/deps/libcudarc-*.rlib | head -1)"
    mkdir -p "$stubs"
    nm "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print "void " $2 "(void) {}" }' | sort -u > "$stubs/libcuda.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda.c"
fi
export LIBRARY_PATH="$stubs:$LIBRARY_PATH"
exec cargo build --release --lib --features cuda --target-dir target/cuda "$@"
