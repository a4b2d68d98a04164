# tidescale: the two commands a fresh machine needs are `make demo` and `make test`.
# Both install what they need: a virtual environment with the Python packages, and
# the local cluster rig (built from the package registries, cached by version
# outside the repository; see tests/rig/README.md).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
KUBERNETES_OLDEST_VERSION := $(shell sed -n 's/^KUBERNETES_OLDEST_VERSION=//p' tests/rig/build/versions.env)

.PHONY: help venv rig lint test test-unit test-rig test-faults test-faults-long test-hpa-diff test-k8s-oldest demo bench bench-drain bench-keda clean

help:
	@echo "make demo       bring up the local cluster rig with tidescale and a sample consumer"
	@echo "make test       every test: lint, types, unit tests, integration tests on the rig"
	@echo "make test-unit  the fast tests, without the rig (chart-render tests, which need helm, run in make test)"
	@echo "make test-faults       the fault suite on the rig (tests/faults, also part of make test)"
	@echo "make test-faults-long  kill storms (FAULTS_LONG_SECONDS, default 300) and a broker lost of three; not in make test"
	@echo "make test-k8s-oldest   the smoke subset on the oldest Kubernetes supported ($(KUBERNETES_OLDEST_VERSION); not in make test)"
	@echo "make bench-drain       drain-time target vs fixed lag thresholds vs KEDA's defaults (~20 min; not in make test)"
	@echo "make bench-keda        tidescale beside KEDA in one run (builds KEDA once, tens of minutes cold); writes bench/results/keda.md"
	@echo "make rig        build or fetch the rig's pieces (cached in ~/.cache/tidescale-rig)"
	@echo "make lint       ruff and mypy --strict"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: '$(PYTHON)' is missing: install Python >= 3.11 (Debian: apt-get install python3 python3-venv)"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: $$($(PYTHON) --version) is too old: tidescale needs Python >= 3.11 (set PYTHON=...)"; exit 2; }
	@$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed: install the venv module (Debian: apt-get install python3-venv)"; exit 2; }
	@$(BIN)/python -m pip install -q --upgrade pip || { echo "make: pip could not reach PyPI: check the network or PIP_INDEX_URL"; exit 2; }
	@$(BIN)/python -m pip install -q -e '.[dev]' || { echo "make: installing tidescale's Python dependencies failed (see above)"; exit 2; }
	@touch $(STAMP)

venv: $(STAMP)

rig:
	@tests/rig/build/build.sh all

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# Without the rig: the chart-render tests need the rig's helm (marker `helm`), `make test` runs them.
test-unit: venv
	$(BIN)/pytest tests/unit -m "not helm" $(PYTEST_ARGS)

test-rig: venv rig
	$(BIN)/pytest -m "rig and not long" $(PYTEST_ARGS)

test-faults: venv rig
	$(BIN)/pytest tests/faults -m "not long" $(PYTEST_ARGS)

# Long fault runs (marker `long`): bounded by FAULTS_LONG_SECONDS per test.
FAULTS_LONG_SECONDS ?= 300
test-faults-long: venv rig
	FAULTS_LONG_SECONDS=$(FAULTS_LONG_SECONDS) $(BIN)/pytest tests/faults -m long $(PYTEST_ARGS)

test: venv rig lint
	$(BIN)/pytest -m "not long" $(PYTEST_ARGS)

# The smoke subset (marker `smoke`: injection, agent scaling, park and wake, the chart's install)
# on the oldest Kubernetes supported, built like the default one and cached beside it (a cold
# build takes tens of minutes on 2 cores). Not part of make test.
test-k8s-oldest: venv rig
	TIDESCALE_RIG_KUBERNETES_VERSION=$(KUBERNETES_OLDEST_VERSION) tests/rig/build/build.sh kubernetes
	TIDESCALE_RIG_KUBERNETES_VERSION=$(KUBERNETES_OLDEST_VERSION) $(BIN)/pytest -m smoke $(PYTEST_ARGS)

# The policy engine against the real HPA controller on 300 generated scenarios (plus the named
# ones); `make test` runs the named ones and 30 generated. Writes bench/results/hpa-differential.md.
test-hpa-diff: venv rig
	TIDESCALE_HPA_DIFF_GENERATED=300 TIDESCALE_HPA_DIFF_REPORT=bench/results/hpa-differential.md \
		$(BIN)/pytest tests/integration/test_hpa_differential.py $(PYTEST_ARGS)

demo: venv rig
	$(BIN)/python -m tests.rig.demo

# The drain-time target against a sweep of fixed lag thresholds and KEDA's defaults (emulated),
# side by side on one scripted workload (~20 min). Writes bench/results/drain-time.md.
bench-drain: venv rig
	$(BIN)/python bench/bench_drain_time.py --write bench/results/drain-time.md

# bench_keda.py needs KEDA, which only bench-keda builds.
bench: venv rig
	@for script in bench/bench_*.py; do [ "$$script" = bench/bench_keda.py ] && continue; echo "== $$script"; $(BIN)/python $$script || exit 1; done

# tidescale beside KEDA on the rig, in one run (~20 min), after the two checks it relies on
# (KEDA scaling through the rig's aggregator and HPA controller; Kafka's request log). KEDA's operator and metrics adapter are
# built from their Go module on first use (tests/rig/build/build.sh keda; not part of make rig).
bench-keda: venv rig
	tests/rig/build/build.sh keda
	$(BIN)/pytest -m long tests/integration/test_keda_rig.py tests/integration/test_rig_kafka_request_log.py $(PYTEST_ARGS)
	$(BIN)/python bench/bench_keda.py --write bench/results/keda.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
