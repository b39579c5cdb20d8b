# One command each, from a fresh clone:  make fit   |   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the CPU build (2.13.0 here); a bare `torch` would pull CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"

setup: $(PY)

fit: $(PY)
	$(PY) -m forecasting fit --config configs/volatility.yaml

test: $(PY)
	$(PY) -m pytest tests

lint: $(PY)
	$(PY) -m ruff check forecasting tests benchmarks

.PHONY: setup fit test lint
