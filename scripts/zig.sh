#!/usr/bin/env bash
# Runs the pinned Zig (the one version this project builds with), installing it from PyPI if
# needed: scripts/zig.sh build test
set -euo pipefail
ZIG_VERSION=0.17.1
if [ "$(python3 -m ziglang version 2>/dev/null)" != "$ZIG_VERSION" ]; then
    echo "installing ziglang==$ZIG_VERSION from PyPI ..." >&2
    python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIG_VERSION" >&2
fi
exec python3 -m ziglang "$@"
