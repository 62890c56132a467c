# Two commands on a fresh machine: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test e2e lint protos check-protos clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fused.tools.demo

test: $(STAMP)
	$(PY) -m pytest

# A real Prometheus (Debian's `prometheus`) scrapes a loopback federation through a short job;
# its byte counters must equal the coordinator's own. Fails if prometheus is not installed.
e2e: $(STAMP)
	FUSED_E2E=1 $(PY) -m pytest tests/e2e -s

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

protos: $(STAMP)
	PYTHON=$(PY) scripts/gen_protos.sh

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
