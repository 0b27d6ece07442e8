# Maze — the two entry points a newcomer needs:
#   make demo   fetch the default model, build the library, run the C quickstart on it
#   make test   everything: format and lint gate, Rust unit + integration tests, header freshness, C tests
#               (shared and static library, AddressSanitizer, valgrind, the misuse suite, the 16-thread
#               stress test, a chat with each real model),
#               Go and Zig tests, the official OpenAI Python client against maze-server
# Both are idempotent: they fetch and build only what is missing.

SHELL := /bin/bash
CARGO ?= cargo
CC ?= cc
GO ?= go
# No toolchain downloads; no VCS stamping (a clone without .git still builds).
GOENV := GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
MAZE_MODEL_DIR ?= $(HOME)/.cache/maze/models
MODEL := $(MAZE_MODEL_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf
LIBDIR := target/release
BUILD := target/c
# System libraries the static library needs (from `cargo rustc -- --print native-static-libs`;
# bindings/go/link_static.go lists the same).
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
CFLAGS := -std=c11 -Wall -Wextra -Werror -g -O1 -Iinclude
export MAZE_MODEL_DIR

.PHONY: demo test toolchain model lib lint rust-test header header-check c-test c-test-shared c-test-static c-test-asan c-test-misuse c-test-stress c-test-stress-tsan c-test-stress-tsan-c c-test-valgrind c-test-real-models server go-test zig-test server-test pkgconfig bench fuzz tsan-lib cuda clean

demo: toolchain model lib $(BUILD)/quickstart
	$(BUILD)/quickstart "$(MODEL)"

test: toolchain model lint rust-test header-check c-test go-test zig-test server-test
	@echo "make test: all suites passed"

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	@command -v $(CC) >/dev/null || { echo "error: no C compiler ($(CC)); install gcc" >&2; exit 1; }
	@command -v python3 >/dev/null || { echo "error: python3 is needed to fetch the model" >&2; exit 1; }
	@command -v $(GO) >/dev/null || { echo "error: go not found; install Go 1.26 (https://go.dev/dl) for the Go module tests" >&2; exit 1; }
	@command -v valgrind >/dev/null || { echo "installing valgrind ..."; (apt-get install -y -q valgrind >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q valgrind >/dev/null)) || { echo "error: valgrind missing and could not be installed" >&2; exit 1; }; }

# The default model, and the other families' real models the tests compare with llama.cpp.
model:
	@scripts/fetch-model.sh >/dev/null
	@scripts/fetch-model.sh qwen2.5-coder >/dev/null
	@scripts/fetch-model.sh gemma3 >/dev/null

lib:
	$(CARGO) build --release --lib

# The features the library build leaves out, for everything else cargo builds here (one set, so
# cargo keeps one build of the crate with them): the test helpers, maze-server, the command lines.
TOOL_FEATURES := --features server,testing,cli

# The format and lint gate: rustfmt.toml's style and clippy with every warning an error, over
# every target (Go's gofmt/vet and Zig's fmt run with their suites).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets $(TOOL_FEATURES) -- -D warnings

rust-test:
	MAZE_MODEL="$(MODEL)" $(CARGO) test --release $(TOOL_FEATURES)

# include/maze.h is generated: build.rs renders it into cargo's OUT_DIR on every build, and
# `make header` copies it into the tree. header-check fails while the committed copy differs.
GENERATED_HEADER = $$($(CARGO) build --release --lib --message-format=json-render-diagnostics | \
  sed -n 's|.*"out_dir":"\([^"]*/build/maze-[0-9a-f]*/out\)".*|\1/maze.h|p' | tail -1)

header:
	@generated=$(GENERATED_HEADER); test -f "$$generated" && cp "$$generated" include/maze.h
	@echo "include/maze.h regenerated"

header-check:
	@generated=$(GENERATED_HEADER); test -f "$$generated" || { echo "error: no generated header" >&2; exit 1; }; \
	cmp -s "$$generated" include/maze.h || { echo "error: include/maze.h is stale: run make header and commit it" >&2; \
	  diff -u include/maze.h "$$generated" | head -40 >&2; exit 1; }
	@echo "include/maze.h is up to date"

$(BUILD):
	mkdir -p $(BUILD)

$(BUILD)/quickstart: examples/c/quickstart.c include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

$(BUILD)/tiny-model.gguf: lib | $(BUILD)
	$(CARGO) run --release --quiet $(TOOL_FEATURES) --example make-tiny-model -- $@

$(BUILD)/test_api_shared: tests/c/test_api.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

# The .a path is given explicitly: -lmaze would pick the .so sitting beside it.
$(BUILD)/test_api_static: tests/c/test_api.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread $< $(LIBDIR)/libmaze.a $(STATIC_LIBS) -o $@

$(BUILD)/test_api_asan: tests/c/test_api.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread -fsanitize=address,undefined -fno-omit-frame-pointer $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

$(BUILD)/test_real_model: tests/c/test_real_model.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

c-test: c-test-shared c-test-static c-test-asan c-test-misuse c-test-stress c-test-valgrind c-test-real-models

c-test-shared: $(BUILD)/test_api_shared $(BUILD)/tiny-model.gguf
	$(BUILD)/test_api_shared "$(MODEL)"

c-test-static: $(BUILD)/test_api_static
	@if ldd $(BUILD)/test_api_static | grep -q libmaze; then echo "error: test_api_static links libmaze dynamically" >&2; exit 1; fi
	$(BUILD)/test_api_static "$(MODEL)"

c-test-asan: $(BUILD)/test_api_asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1 $(BUILD)/test_api_asan "$(MODEL)"

# The C programs under AddressSanitizer + UndefinedBehaviorSanitizer, leaks detected at exit.
ASAN_RUN := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
SANITIZE_ASAN := -fsanitize=address,undefined -fno-omit-frame-pointer

# The misuse suite (docs/ROBUSTNESS.md): every header function called the wrong way, each case
# with its expected status, on the tiny model. The coverage check fails first when the header
# declares a function the suite has no cases for.
$(BUILD)/test_misuse_asan: tests/c/test_misuse.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread $(SANITIZE_ASAN) $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

c-test-misuse: $(BUILD)/test_misuse_asan $(BUILD)/tiny-model.gguf
	scripts/check-misuse-coverage.sh include/maze.h tests/c/test_misuse.c $(LIBDIR)/libmaze.so
	$(ASAN_RUN) $(BUILD)/test_misuse_asan "$(BUILD)/tiny-model.gguf"

# The stress test (docs/ROBUSTNESS.md): 16 threads create, generate on (with and without
# constraints), cancel, reset and free sessions on one engine for a fixed number of rounds;
# a watchdog fails it when a thread stops making progress. MAZE_STRESS_SEED and
# MAZE_STRESS_ROUNDS override the seed (printed) and the rounds.
$(BUILD)/test_stress_asan: tests/c/test_stress.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread $(SANITIZE_ASAN) $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

c-test-stress: $(BUILD)/test_stress_asan $(BUILD)/tiny-model.gguf
	$(ASAN_RUN) $(BUILD)/test_stress_asan "$(BUILD)/tiny-model.gguf"

# A C program chats with each real model, plainly and under a JSON schema. Gemma 3 270M is a base
# model, and SmolLM2-135M's first answer token is a near tie (26%): --base checks only that they
# answer, and that their JSON obeys the schema (tests/default_model.rs covers SmolLM2's answers).
c-test-real-models: $(BUILD)/test_real_model
	$(BUILD)/test_real_model "$(MODEL)" --base
	$(BUILD)/test_real_model "$$(scripts/fetch-model.sh qwen2.5-coder)"
	$(BUILD)/test_real_model "$$(scripts/fetch-model.sh gemma3)" --base

# valgrind runs the whole API suite and the misuse suite on a tiny random-weight model (the real
# one is too slow under emulation); it must report no errors and no definite leaks. Unlike ASan it
# also sees the library's own accesses (to the caller's buffers among others).
VALGRIND := valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --suppressions=tests/c/valgrind.supp
$(BUILD)/test_misuse_shared: tests/c/test_misuse.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

c-test-valgrind: $(BUILD)/test_api_shared $(BUILD)/test_misuse_shared $(BUILD)/tiny-model.gguf
	$(VALGRIND) $(BUILD)/test_api_shared "$(BUILD)/tiny-model.gguf" --tiny
	$(VALGRIND) $(BUILD)/test_misuse_shared "$(BUILD)/tiny-model.gguf"

# pkg-config file for this checkout's build (used by the Go module's maze_pkgconfig tag and
# any build system): PKG_CONFIG_PATH=$(CURDIR)/target/pkgconfig pkg-config --libs maze
pkgconfig: lib
	@mkdir -p target/pkgconfig
	@version=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1); \
	printf '%s\n' "prefix=$(CURDIR)" 'libdir=$${prefix}/$(LIBDIR)' 'includedir=$${prefix}/include' '' \
	  'Name: maze' 'Description: Embeddable LLM inference engine with grammar-constrained generation' \
	  "Version: $$version" 'Libs: -L$${libdir} -lmaze -Wl,-rpath,$${libdir}' \
	  'Libs.private: $(STATIC_LIBS)' 'Cflags: -I$${includedir}' > target/pkgconfig/maze.pc

# The Go module: gofmt and vet (either complaining fails the target), the whole suite under the
# race detector (static link), the linking variants (shared library, pkg-config), and the example
# program.
server: lib
	$(CARGO) build --release $(TOOL_FEATURES) --bin maze-server

go-test: model lib pkgconfig server
	@unformatted=$$(cd bindings/go && "$$($(GO) env GOROOT)/bin/gofmt" -l .); \
	  if [ -n "$$unformatted" ]; then echo "error: gofmt would change (run gofmt -w):" >&2; echo "$$unformatted" >&2; exit 1; fi
	cd bindings/go && $(GOENV) $(GO) vet ./...
	cd bindings/go && MAZE_MODEL="$(MODEL)" $(GOENV) $(GO) test -race -count=1 ./...
	cd bindings/go && MAZE_MODEL="$(MODEL)" $(GOENV) $(GO) test -count=1 -tags maze_dynamic -run 'TestLinkage|TestChat|TestStream$$' .
	cd bindings/go && PKG_CONFIG_PATH="$(CURDIR)/target/pkgconfig" MAZE_MODEL="$(MODEL)" $(GOENV) $(GO) test -count=1 -tags maze_pkgconfig -run 'TestLinkage|TestChat' .
	cd bindings/go && $(GOENV) $(GO) run ./examples/typed "$(MODEL)"
	cd bindings/go && $(GOENV) $(GO) run ./examples/agent -generic -require "$(MODEL)"

# The Zig package (Zig pinned in scripts/zig.sh, installed from PyPI if missing; the first build
# of the build runner takes minutes, then ~/.cache/zig keeps it): the tests against libmaze.a
# and libmaze.so, and the examples.
ZIG := scripts/zig.sh
zig-test: model lib
	cd zig && ../$(ZIG) fmt --check $$(find . -name '*.zig' -o -name '*.zon' | grep -v -e '^./.zig-cache/' -e '^./zig-out/')
	cd zig && ../$(ZIG) build test -Dcargo=false -Dmodel="$(MODEL)" --summary all
	cd zig && ../$(ZIG) build test -Dcargo=false -Dlinkage=dynamic -Dmodel="$(MODEL)" --summary all
	cd zig && ../$(ZIG) build example -Dcargo=false -Dmodel="$(MODEL)"
	cd zig && ../$(ZIG) build agent -Dcargo=false -Dmodel="$(MODEL)" -Dagent-args="--generic --require"

# The official OpenAI Python client (pinned, from PyPI) against a maze-server on loopback. The
# remote backend's own tests (tests/remote.rs) run with the Rust suites.
OPENAI_PY := openai==3.54.0
server-test: model server
	@python3 -c "import openai, pytest, sys; sys.exit(openai.__version__ != '$(OPENAI_PY:openai==%=%)')" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check "$(OPENAI_PY)" pytest
	MAZE_SERVER_BIN="$(CURDIR)/$(LIBDIR)/maze-server" MAZE_MODEL="$(MODEL)" python3 -m pytest -q tests/python

# The GPU build (not part of `make test`: CI has no GPU, and nvcc takes ~20 min cold).
cuda:
	bash scripts/build-cuda.sh

# Measures every model in the cache (the default one is fetched first), one after the other, each
# beside llama.cpp's llama-bench in the same run, and writes docs/benchmarks/NAME.md per model and
# their summary docs/BENCHMARKS.md. llama-bench is built once (cached); if that build fails the
# benchmark still runs and the reports say llama.cpp was not measured.
#   BENCH_RUNS     measured runs of each measure (after one warm-up run)
#   BENCH_MODELS   the models to measure when cached, as scripts/fetch-model.sh names them
BENCH_RUNS ?= 5
BENCH_MODELS ?= $(shell scripts/fetch-model.sh --list)
bench:
	@scripts/fetch-model.sh >/dev/null
	@llama_bench="$$(bash scripts/build-llama-bench.sh || true)"; suite=; \
	for name in $(BENCH_MODELS); do \
	  path="$$(scripts/fetch-model.sh --path "$$name")" || exit 1; \
	  if [ -f "$$path" ]; then suite="$${suite:+$$suite,}$$name=$$path"; \
	  else echo "bench: $$name is not in the cache (scripts/fetch-model.sh $$name fetches it): skipped"; fi; \
	done; \
	test -n "$$suite" || { echo "error: none of $(BENCH_MODELS) is in the cache" >&2; exit 1; }; \
	$(CARGO) run --release $(TOOL_FEATURES) --bin maze-bench -- --suite "$$suite" --runs $(BENCH_RUNS) \
	  $${llama_bench:+--llama-bench "$$llama_bench"} --write docs/BENCHMARKS.md

# The fuzz targets of tests/fuzz.rs, each for FUZZ_SECONDS (make test runs a short smoke of
# each with fixed seeds); a failure prints the MAZE_FUZZ_SEED that reproduces it. Then the
# stress test under ThreadSanitizer.
FUZZ_SECONDS ?= 300
fuzz: c-test-stress-tsan-c c-test-stress-tsan
	MAZE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release $(TOOL_FEATURES) --test fuzz -- --nocapture --test-threads 1

# The stress test under ThreadSanitizer with the library instrumented too: libmaze.a built by
# nightly Rust with -Zsanitizer=thread and -Zbuild-std (std instrumented as well, so its locks
# and atomics are seen; needs the rust-src component) in its own target directory (the cold build
# took 49 min on 2 shared cores; incremental after). The C program is compiled with gcc's
# -fsanitize=thread and linked with the TSan runtime of the same nightly (gcc 12's libtsan lacks
# the __tsan_memcpy entry points the Rust side calls). TSAN_ROUNDS rounds per thread.
TSAN_TARGET := x86_64-unknown-linux-gnu
TSAN_LIBDIR := target/tsan/$(TSAN_TARGET)/release
TSAN_ROUNDS ?= 1000
tsan-lib:
	@rustup run nightly rustc --version >/dev/null 2>&1 || { echo "error: make fuzz needs a nightly toolchain (rustup toolchain install nightly --component rust-src)" >&2; exit 1; }
	RUSTFLAGS="-Zsanitizer=thread" rustup run nightly cargo build -Zbuild-std --target $(TSAN_TARGET) --release --lib --target-dir target/tsan

$(BUILD)/test_stress_tsan: tests/c/test_stress.c tests/c/check.h include/maze.h tsan-lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread -fsanitize=thread -c $< -o $@.o
	$(CC) -pthread $@.o $(TSAN_LIBDIR)/libmaze.a \
	  -Wl,--whole-archive "$$(rustup run nightly rustc --print sysroot)/lib/rustlib/$(TSAN_TARGET)/lib/librustc-nightly_rt.tsan.a" -Wl,--no-whole-archive \
	  -lstdc++ $(STATIC_LIBS) -o $@

c-test-stress-tsan: $(BUILD)/test_stress_tsan $(BUILD)/tiny-model.gguf
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" MAZE_STRESS_ROUNDS=$(TSAN_ROUNDS) \
	  $(BUILD)/test_stress_tsan "$(BUILD)/tiny-model.gguf"

# The same on the C side only, without nightly: the C program under ThreadSanitizer with the
# ordinary (uninstrumented) libmaze.so, whose own calls TSan is told to ignore
# (tests/c/tsan-c.supp). It checks the C side (the test's threads, callbacks, what they share);
# races inside the library are for the instrumented run above.
$(BUILD)/test_stress_tsan_c: tests/c/test_stress.c tests/c/check.h include/maze.h lib | $(BUILD)
	$(CC) $(CFLAGS) -pthread -fsanitize=thread $< -L$(LIBDIR) -lmaze -Wl,-rpath,$(CURDIR)/$(LIBDIR) -o $@

c-test-stress-tsan-c: $(BUILD)/test_stress_tsan_c $(BUILD)/tiny-model.gguf
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/c/tsan-c.supp" \
	  $(BUILD)/test_stress_tsan_c "$(BUILD)/tiny-model.gguf"

clean:
	$(CARGO) clean
	rm -rf $(BUILD) zig/.zig-cache zig/zig-out
