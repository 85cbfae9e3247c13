"""Domain classifiers: the interface the gateway calls, and the two-stage implementation.

A classifier is CPU work: the gateway calls it off the event loop (see ``gateway/classify.py``).

:class:`DomainClassifier` classifies in two stages, both calibrated linear heads over the labels
"one of the taxonomy's domains" or :data:`OUTSIDE` (the general model serves it):

1. fast: word and character n-grams (TF-IDF) plus a static MiniLM embedding (model2vec) —
   about 0.3 ms for a request;
2. full: the same features plus the MiniLM transformer's embedding — about 11 ms for one
   request, ~3 ms per request in a batch.

The fast stage answers when its calibrated confidence reaches ``fast_accept`` (chosen on the
calibration split so that the fast stage is as accurate as the full one on what it accepts);
otherwise the full stage decides. Results are cached by a hash of the text.

What is classified is decided by the gateway (``routing_text``: the last user turn). Here a
long text is clipped to its first and last 1,000 characters: the topic and the actual ask
(often after pasted context) sit at the ends.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from router.policy import Classification

OUTSIDE = "(outside)"  # label for requests outside the taxonomy; never a valid domain id
CLIP_CHARS = 1000

_Array = np.ndarray[Any, np.dtype[Any]]


class Classifier(Protocol):
    def classify(self, text: str) -> Classification: ...


@dataclass
class BatchResult:
    results: list[Classification]
    stages: list[str]  # per text: "cache", "fast" or "full" (the stage that answered)
    full_seconds: float = 0.0  # compute spent in the full stage
    starved: int = 0  # unsure texts the fast stage answered because the full stage was off


class BatchClassifier(Classifier, Protocol):
    """A classifier that also takes many texts at once and may answer some from a cache."""

    def classify_many(
        self, texts: Sequence[str], *, max_full: int | None = None
    ) -> BatchResult: ...

    def cached(self, text: str) -> Classification | None: ...

    def remember_many(
        self, texts: Sequence[str], results: Sequence[Classification]
    ) -> None: ...


def clip(text: str) -> str:
    text = text.strip()
    if len(text) <= 2 * CLIP_CHARS:
        return text
    return f"{text[:CLIP_CHARS]} … {text[-CLIP_CHARS:]}"


def softmax(logits: _Array) -> _Array:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class Head:
    """A linear classifier over feature blocks, plus the temperature calibrating it.

    Logits are summed block by block against slices of the weight matrix, so serving never
    concatenates sparse matrices (that alone cost ~0.3 ms per request).
    """

    model: Any  # fitted sklearn LogisticRegression (trained on the blocks side by side)
    temperature: float = 1.0
    _slices: list[_Array] = field(default_factory=list, repr=False)

    def logits(self, blocks: Sequence[Any]) -> _Array:
        if not self._slices:
            start, coef = 0, self.model.coef_
            for block in blocks:
                width = block.shape[1]
                self._slices.append(np.ascontiguousarray(coef[:, start : start + width].T))
                start += width
        out = np.tile(self.model.intercept_, (blocks[0].shape[0], 1))
        for block, weights in zip(blocks, self._slices, strict=True):
            out += block @ weights
        return np.asarray(out, dtype=np.float64)

    def proba(self, blocks: Sequence[Any]) -> _Array:
        return softmax(self.logits(blocks) / self.temperature)

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model, self.temperature, self._slices = state["model"], state["temperature"], []


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> _Array: ...


@dataclass
class FeatureSpace:
    """Turns texts into the fast and full feature matrices."""

    # Fitted TF-IDF vectorizers, applied one by one: sklearn's FeatureUnion adds ~0.4 ms of
    # per-call overhead, a third of the fast stage.
    vectorizers: tuple[Any, ...]
    static: Encoder
    minilm: Encoder | None
    static_weight: float = 1.0

    def fast(self, texts: Sequence[str]) -> list[Any]:
        blocks = [v.transform(texts) for v in self.vectorizers]
        blocks.append(self.static.encode(texts) * self.static_weight)
        return blocks

    def full(
        self, fast: Sequence[Any], texts: Sequence[str], minilm: _Array | None = None
    ) -> list[Any]:
        if minilm is None:
            if self.minilm is None:
                raise RuntimeError("the full stage needs the MiniLM encoder")
            minilm = self.minilm.encode(texts)
        return [*fast, minilm]


def stack(blocks: Sequence[Any]) -> Any:
    """The blocks side by side, as one sparse matrix (for training)."""
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(b) for b in blocks], format="csr")


def rows(blocks: Sequence[Any], index: _Array) -> list[Any]:
    return [b[index] for b in blocks]


class FullStageBudget:
    """How much CPU the full (MiniLM) stage may use: a token bucket of compute seconds.

    It refills at ``share`` seconds per second (0.1: a tenth of one core) up to ``burst``
    seconds. While tokens remain, unsure requests get the full stage; when the gateway is busy
    enough to drain it, the fast stage answers them (its accuracy is reported separately by
    ``router eval``), so classification never eats the CPU that serves traffic.
    """

    def __init__(
        self,
        share: float,
        burst: float = 0.05,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share, self.burst, self._clock = share, burst, clock
        self._tokens = burst
        self._last = clock()

    def available(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.share)
        self._last = now
        return self.share > 0 and self._tokens > 0

    def spend(self, seconds: float) -> None:
        self._tokens -= seconds


@dataclass
class Prediction:
    """Per-text outputs of both stages, for evaluation and calibration."""

    labels: list[str]
    confidence: _Array
    used_full: _Array  # bool per text
    unsure: _Array  # bool per text: below fast_accept (wanted the full stage)
    full_seconds: float = 0.0


@dataclass
class DomainClassifier:
    labels: tuple[str, ...]  # column order of both heads
    features: FeatureSpace
    fast: Head
    full: Head
    fast_accept: float
    info: dict[str, Any] = field(default_factory=dict)
    cache_size: int = 65536
    _cache: OrderedDict[bytes, Classification] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label != OUTSIDE)

    # ----------------------------------------------------------------- serving
    def classify(self, text: str) -> Classification:
        return self.classify_many([text]).results[0]

    def cached(self, text: str) -> Classification | None:
        key = _key(text)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def classify_many(self, texts: Sequence[str], *, max_full: int | None = None) -> BatchResult:
        """Classify texts together; at most ``max_full`` unsure ones (the least sure first) get
        the full stage, the rest keep the fast stage's answer. ``None``: no limit."""
        results: list[Classification | None] = [self.cached(t) for t in texts]
        stages = ["cache"] * len(texts)
        todo = [i for i, hit in enumerate(results) if hit is None]
        if not todo:
            return BatchResult([r for r in results if r is not None], stages)
        prediction = self.predict([texts[i] for i in todo], max_full=max_full)
        for j, i in enumerate(todo):
            label = prediction.labels[j]
            result = Classification(
                None if label == OUTSIDE else label, round(float(prediction.confidence[j]), 4)
            )
            results[i] = result
            stages[i] = "full" if prediction.used_full[j] else "fast"
            # Fast answers given for lack of budget are cached too: recomputing them on every
            # repeat cost more throughput (bench_router) than upgrading them later would win.
            self._remember(_key(texts[i]), result)
        return BatchResult(
            [r for r in results if r is not None],
            stages,
            prediction.full_seconds,
            int((prediction.unsure & ~prediction.used_full).sum()),
        )

    def remember_many(self, texts: Sequence[str], results: Sequence[Classification]) -> None:
        """Cache answers computed elsewhere (the classifier worker process)."""
        for text, result in zip(texts, results, strict=True):
            self._remember(_key(text), result)

    def _remember(self, key: bytes, result: Classification) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    # -------------------------------------------------------------- prediction
    def predict(
        self, texts: Sequence[str], *, stage: str = "auto", max_full: int | None = None
    ) -> Prediction:
        """Both stages as configured (``auto``), or one of them forced (``fast``/``full``)."""
        clipped = [clip(t) for t in texts]
        empty = np.array([not t for t in clipped])
        fast_x = self.features.fast(clipped)
        proba = self.fast.proba(fast_x)
        confidence = proba.max(axis=1)
        unsure = (confidence < self.fast_accept) & ~empty
        use_full = {"full": ~empty, "fast": np.zeros_like(unsure)}.get(stage, unsure.copy())
        if max_full is not None and use_full.sum() > max_full:
            keep = [i for i in np.argsort(confidence) if use_full[i]][:max_full]
            use_full[:] = False
            use_full[keep] = True
        full_seconds = 0.0
        if use_full.any():
            started = time.perf_counter()
            picked = np.flatnonzero(use_full)
            full_x = self.features.full(rows(fast_x, picked), [clipped[i] for i in picked])
            proba[picked] = self.full.proba(full_x)
            confidence = proba.max(axis=1)
            full_seconds = time.perf_counter() - started
        labels = [self.labels[j] for j in proba.argmax(axis=1)]
        for i in np.flatnonzero(empty):  # nothing to classify: the general model
            labels[i], confidence[i] = OUTSIDE, 1.0
        return Prediction(labels, confidence, use_full, unsure, full_seconds)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
