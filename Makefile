# The README's two commands: `make train` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install the package; on a machine without torch the CPU
# build goes in first (TORCH_SPEC), so pip does not pull a multi-GB CUDA build for a CPU run.

VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS  ?= -q
PYTEST_ARGS ?=
STAMP      := $(VENV)/.installed

.PHONY: setup train test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/ssm-train fit

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/scan.py --quick

clean:
	rm -rf runs wandb logs sweeps lightning_logs .pytest_cache
