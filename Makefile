# The two commands a newcomer runs: `make demo` and `make test`. Each sets up its own virtual
# environment on first use (torch is pinned to the release this machine class has on disk).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-deps test-cuda bench detection generate clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[producer,dev,report]"
	touch $@

# The optional extras (library adapters, exporters), tested too: torch stays pinned (a plain install
# of them would pull a multi-GB CUDA build of torch).
$(VENV)/.extras: $(VENV)/.installed
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[sb3,lightning,tensorboard,wandb]"
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup $(VENV)/.extras test-deps
	$(PY) -m pytest -q

# System packages the tests use: Debian's chromium renders the HTML report headless; Debian's
# prometheus and prometheus-alertmanager scrape real sidecars and route their alerts
# (tests/cluster; docs/OPERATIONS.md). Tests that need a missing binary skip and say which.
TEST_DEBS := chromium prometheus prometheus-alertmanager
TEST_BINS := /usr/bin/chromium /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager /usr/bin/amtool

test-deps:
	@missing=""; for bin in $(TEST_BINS); do [ -x "$$bin" ] || missing="$$missing $$bin"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "test-deps:$$missing missing and this is not root, so they are not installed (the report rendering and Prometheus/Alertmanager tests will skip); as root: apt-get install $(TEST_DEBS)"; \
	else \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEST_DEBS); \
	fi

test-cuda: setup
	$(PY) -m pytest -q -m cuda

bench: setup
	$(PY) bench/emit_cost.py
	$(PY) bench/wire_size.py

# Injected faults on three trainers vs the rules (about an hour on 2 cores; docs/DETECTION.md).
detection: setup $(VENV)/.extras
	$(PY) bench/detection.py --trainer all --seed-list 1-10,101-105,201-205,301-305,401-405,501-510,601-610,701-710,801-810,901-910,1001-1010,1101-1110 --tuning-seeds 1-10,101-105,201-205,301-305,401-405,501-510,601-610,701-710,801-810,901-910,1001-1010 --jobs 2 --what-if bench/seed-drift.toml

# producer/_emit_kinds.py (the emit_<kind> methods) from schemas/models.py; run it after changing a model
# (tests/producer/test_emit_kinds.py fails until then).
generate: setup
	$(PY) -m simic.producer._codegen

clean:
	rm -rf $(VENV) demo-out simic-logs detection-results .pytest_cache .hypothesis
