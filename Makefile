# The two commands README.md promises: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint bench fuzz faults soak races clean prometheus

install: $(STAMP)

# torch first and pinned: pip then takes the local CPU build instead of pulling CUDA packages.
$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[test]' -e 'clients/python[langchain,llamaindex]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vecnest serve --host 127.0.0.1 --port 8000 --data-dir ./data

# Everything: lint, format check, a type check of the pure package, then the whole pyramid
# (tests/index, tests/service, and the slow tests/e2e on the real model and real servers).
test: $(STAMP) prometheus lint
	$(BIN)/python -m pytest

# The inner loop: tests/index and tests/service, no real model, no server process (about a minute).
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy index

# tests/e2e/test_prometheus.py scrapes a test server with a real Prometheus: Debian's package. It is
# installed here when missing and apt can run (root, or passwordless sudo); otherwise that test
# skips and says why.
prometheus:
	@command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } || \
	  echo "warning: could not install Debian's prometheus; tests/e2e/test_prometheus.py will skip"; }

bench: $(STAMP)
	$(BIN)/python bench/beir.py

# The long reliability runs (README "Reliability"): Schemathesis's full pass, kill -9 at random
# and named moments with an upgrade under way, a 10-minute soak, and every operation on one
# collection beside its restores, uploads, drops and upgrades.
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --examples 100

faults: $(STAMP)
	$(BIN)/python bench/faults.py --kills 24 --concurrency-s 120

soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10 --warmup 2

races: $(STAMP)
	$(BIN)/python bench/races.py --seconds 90

clean:
	rm -rf $(VENV) build *.egg-info
