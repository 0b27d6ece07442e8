#!/usr/bin/env bash
# The misuse suite must cover the whole C API: fails when include/maze.h declares a function
# that tests/c/test_misuse.c's table does not COVER, or (given the library) when the library
# exports a maze_ symbol the header does not declare.
#   scripts/check-misuse-coverage.sh HEADER SUITE [LIBRARY.so]
set -euo pipefail
header=$1 suite=$2 lib=${3:-}

# A declaration starts a line (comments excluded) and ends its name with "(":
# `enum maze_status maze_engine_new(const char *model_path,`; typedefs of callbacks
# (`typedef bool (*maze_progress_callback)(`) do not match.
declared=$(grep -v '^[[:space:]]*//' "$header" | grep -oE '^[a-z][^(]*\bmaze_[a-z0-9_]+\(' |
  grep -oE 'maze_[a-z0-9_]+\($' | tr -d '(' | sort -u)
covered=$(grep -oE '^[[:space:]]*COVER\(maze_[a-z0-9_]+' "$suite" | grep -oE 'maze_[a-z0-9_]+' | sort -u)
n_declared=$(wc -l <<<"$declared")
# The pattern itself must still find the API (a header reformatted past it would pass vacuously).
if [ "$n_declared" -lt 50 ]; then
  echo "error: found only $n_declared functions in $header: update the pattern in $0" >&2
  exit 1
fi
missing=$(comm -23 <(echo "$declared") <(echo "$covered"))
if [ -n "$missing" ]; then
  echo "error: $suite has no misuse cases (COVER entry) for these functions of $header:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  exit 1
fi
stale=$(comm -13 <(echo "$declared") <(echo "$covered"))
if [ -n "$stale" ]; then
  echo "error: $suite covers functions $header does not declare:" >&2
  echo "$stale" | sed 's/^/  /' >&2
  exit 1
fi
if [ -n "$lib" ]; then
  exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}' | grep '^maze_' | sort -u)
  undeclared=$(comm -23 <(echo "$exported") <(echo "$declared"))
  if [ -n "$undeclared" ]; then
    echo "error: $lib exports functions $header does not declare:" >&2
    echo "$undeclared" | sed 's/^/  /' >&2
    exit 1
  fi
fi
echo "misuse coverage: all $n_declared functions of $header have cases"
