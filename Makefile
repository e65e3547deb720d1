# Two commands on a fresh machine:
#   make run    set up .venv, then run the whole pipeline (Prefect flow over the dvc.yaml stages)
#   make test   set up .venv, then run the test suite (CI: .ci/run)

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch goes in first and on its own: pip takes the CPU or CUDA build this machine offers, and the
# rest (requirements.lock) only needs a torch >= 2.5, so it never pulls another multi-GB build.
TORCH_VERSION ?= 2.13.0

# Quiet and offline: no telemetry, Prefect's state inside the project, the venv's python for dvc.yaml.
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --quiet -r requirements.lock
	touch $@

run: setup
	$(BIN)/python -m flows.distillation

test: setup
	$(BIN)/python -m pytest

# The tests without the end-to-end DVC/Prefect/torchrun runs.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# Distilled vs. baseline student over 3 seeds (see README): minutes, not part of the tests.
bench: setup
	$(BIN)/python -m benchmarks.kd_vs_baseline

clean:
	rm -rf $(VENV) .prefect .pytest_cache .cache
