# The two commands a newcomer needs (see README):
#   make run   — set everything up, then serve the bundled models in the foreground
#   make test  — set everything up, then run every test and lint
.PHONY: setup setup-release setup-test setup-bench run test test-rust test-python test-python-client test-node-client lint fmt clean bench

# Forwarded to `mlxd serve`, e.g. make run ARGS="--socket /tmp/mlxd.sock"
ARGS ?=

setup:
	scripts/setup.sh

setup-release:
	scripts/setup.sh --release

# Also the tools tests drive (tmux, systemd-analyze).
setup-test:
	scripts/setup.sh --test

run: setup-release
	target/release/mlxd serve $(ARGS)

test: setup-test lint test-rust test-python test-python-client test-node-client

lint:
	python3 scripts/check-cycles.py
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test-rust:
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

# The same optimized BLAS the daemon preloads into workers (tests only run faster with it),
# looked up when the recipe runs: `setup-test` may have installed it after make read this
# file. Where it is missing, LD_PRELOAD stays empty (a no-op).
BLAS_CANDIDATES = /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3

test-python:
	blas=""; for lib in $(BLAS_CANDIDATES); do if [ -f "$$lib" ]; then blas="$$lib"; break; fi; done; \
	cd python && LD_PRELOAD="$$blas" ../.venv/bin/python -m pytest -q

# The Python client: mypy --strict on the package (for Python 3.9, its oldest) and on its
# tests (3.10, pytest's oldest), then the tests, against target/debug/mlxd (or $MLXD_BIN).
test-python-client:
	cd clients/python && ../../.venv/bin/python -m mypy mlxd bench_embed.py
	cd clients/python && ../../.venv/bin/python -m mypy --python-version 3.10 tests
	cd clients/python && ../../.venv/bin/python -m pytest -q

# The Node client (clients/node): its build with the pinned TypeScript, then node:test on the
# compiled JS, against the debug binaries (MLXD_BIN / MLXCTL_BIN override).
test-node-client:
	cd clients/node && { [ -d node_modules/typescript ] || npm ci --ignore-scripts --no-audit --no-fund; } \
		&& npm run build && node --test test/*.test.mjs

# Benchmarks (not tests): numbers go to BENCHMARKS.md with the machine and the command.
bench: setup-bench
	.venv/bin/python bench/decode.py
	.venv/bin/python bench/load.py
	.venv/bin/python bench/embed_batching.py
	.venv/bin/python bench/generation.py
	.venv/bin/python bench/overload.py
	.venv/bin/python bench/memory.py
	.venv/bin/python bench/overhead.py
	.venv/bin/python bench/http_api.py
	.venv/bin/python bench/clients.py
	.venv/bin/python bench/constrained.py
	.venv/bin/python bench/report.py

# Release binaries, and matplotlib for the charts.
setup-bench:
	scripts/setup.sh --release --bench

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .venv
