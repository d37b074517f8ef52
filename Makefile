# Two commands on a fresh machine with Python >= 3.11:
#   make run    set up .venv and run the pipeline on the embedded sample (dvc repro)
#   make test   set up .venv, lint, and run the tests
PYTHON ?= python3
VENV ?= .venv
# The venv's bin first on PATH, so that dvc's stage commands (`python stages/...`)
# run inside it without activating anything.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup setup-dev run test test-fast lint mlflow-ui optuna-dashboard

# What the pipeline needs (`make run`), then the developer tools on top (`make test`).
# Kept apart because the dev extras bring JAX (the GPU runner's tests), and TensorFlow
# imports an installed JAX at start-up: 0.6 s more in each of the pipeline's training
# processes (this 2-core CPU), for nothing the pipeline uses.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "medimg needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

run: setup
	dvc repro

lint: setup-dev
	ruff check .
	ruff format --check .

test: lint
	python -m pytest

# Each module's own logic in at most 3 minutes on a 2-core CPU: no training runs, no
# servers, no pipeline (the tiers are pytest markers, pyproject.toml).
test-fast: setup-dev
	python -m pytest -m "not slow and not e2e and not cluster and not pipeline"

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000

# The studies of the default journal (a study is named <study>-<digest>: docs/tuning.md).
optuna-dashboard: setup
	optuna-dashboard optuna/journal.log --host 127.0.0.1 --port 8080
