# Two commands on a fresh machine with Python >= 3.11:
#   make run    set up .venv and run the pipeline on the embedded sample (dvc repro)
#   make test   set up .venv, lint, and run the tests
PYTHON ?= python3
VENV ?= .venv
# The venv's bin first on PATH, so that dvc's stage commands (`python stages/...`)
# run inside it without activating anything.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lint mlflow-ui

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "medimg needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	dvc repro

lint: setup
	ruff check .
	ruff format --check .

test: lint
	python -m pytest

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000
