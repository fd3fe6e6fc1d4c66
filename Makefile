# Everything a fresh machine with only python3 needs: each target builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit ensure-redis ensure-tinyproxy bench bench-scale bench-profile bench-tools bench-clean clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Everything (the loadtest and redis extras too): demo, tests and benchmarks use all of it.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $@ $(VENV)/.run-installed

demo: $(VENV)/.run-installed
	$(BIN)/launcher run configs/demo.jsonl --config configs/demo.toml

lint: $(VENV)/.test-installed
	$(BIN)/ruff check launcher tests benchmarks
	$(BIN)/ruff format --check launcher tests benchmarks

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy --strict launcher

# The shared-limit tests run a real redis-server on loopback: install Debian's
# package when it is missing (CI runs as root; elsewhere sudo is used).
ensure-redis:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

# The proxy tests run a real forward proxy (Debian's tinyproxy) on loopback, each with its
# own configuration; the package's own service is not used.
ensure-tinyproxy:
	@{ command -v tinyproxy || test -x /usr/bin/tinyproxy || test -x /usr/sbin/tinyproxy; } >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tinyproxy; }

# The suite runs on up to 4 processes (pytest-xdist; `worksteal` evens out the few
# long end-to-end tests). Every test makes its own ports, files and servers, so none
# shares state with another. `make unit TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
unit: $(VENV)/.test-installed ensure-redis ensure-tinyproxy
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis ledgers

# Benchmarks (results in benchmarks/RESULTS.md). Every load goes to a throwaway nginx on
# 127.0.0.1 and is bounded in count and time. Options: make bench BENCH_ARGS="--jobs 20000".
BENCH_VENV := benchmarks/.venv-bench
BENCH_ARGS ?=
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BENCH_VENV)/.installed: benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements.txt
	touch $@

# nginx (the 204 server), hey (the ceiling) and tinyproxy (the proxied rows) from Debian
# packages, when missing.
bench-tools:
	@if { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && command -v hey >/dev/null \
		&& { command -v tinyproxy || test -x /usr/bin/tinyproxy; } >/dev/null; \
	then :; else \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx hey tinyproxy; \
	fi

bench: $(VENV)/.run-installed $(BENCH_VENV)/.installed bench-tools
	$(BENCH_VENV)/bin/python benchmarks/bench.py $(BENCH_ARGS)

bench-scale: $(VENV)/.run-installed bench-tools
	$(BIN)/python benchmarks/scale.py $(BENCH_ARGS)

bench-profile: $(VENV)/.run-installed $(BENCH_VENV)/.installed bench-tools
	$(BENCH_VENV)/bin/python benchmarks/profile_launcher.py $(BENCH_ARGS)

bench-clean:
	rm -rf $(BENCH_VENV) benchmarks/out
