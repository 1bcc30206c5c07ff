# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv if missing.
# torch is installed first and pinned (torch==2.13.0), so the resolver never picks a CUDA build.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[all,demo-model]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[dev,demo-model]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/changjak demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check changjak tests benchmarks

clean:
	rm -rf .changjak .pytest_cache
