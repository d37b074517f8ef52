# Two commands on a fresh machine with Python >= 3.11:
#   make run    set up .venv and run the pipeline on the embedded sample (dvc repro)
#   make test   set up .venv, lint, and run the tests
# and, after a change: make summary BASE=main   what it did to the params and metrics
PYTHON ?= python3
VENV ?= .venv
# The venv's bin first on PATH, so that dvc's stage commands (`python stages/...`)
# run inside it without activating anything.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup setup-dev run test test-fast lint summary mlflow-ui optuna-dashboard

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

# What the workspace's pipeline changed against the git revision BASE, as Markdown on
# stdout: `dvc params diff`, `dvc metrics diff` and the report's headline tables (CI
# appends it to the job summary). The pipeline runs first, its output on stderr; with
# nothing changed since the last run it re-runs nothing.
BASE ?= HEAD
summary: setup
	@dvc repro 1>&2
	@medimg summary --base $(BASE)

# One worker and no GenAI job runner: 2 processes and 0.55 GiB resident, against
# MLflow's default 15 processes (4 workers, 8 idle job runners) and 3.2 GiB on this
# 2-core CPU (benchmarks/mlflow_ui_footprint.py); one user's UI needs neither.
mlflow-ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
	    mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000 --workers 1

# The studies of the default journal (a study is named <study>-<digest>: docs/tuning.md).
optuna-dashboard: setup
	optuna-dashboard optuna/journal.log --host 127.0.0.1 --port 8080
