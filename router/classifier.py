"""Domain classifiers: the interface the gateway calls, and the two-stage implementation.

A classifier is CPU work: the gateway calls it off the event loop (see ``gateway/classify.py``).

:class:`DomainClassifier` classifies in two stages, both calibrated linear heads over the labels
"one of the taxonomy's domains" or :data:`OUTSIDE` (the general model serves it):

1. fast: word and character n-grams (TF-IDF) plus a static MiniLM embedding (model2vec) —
   about 0.3 ms for a request;
2. full: the embedding of the MiniLM transformer tuned on the routing labels (a LoRA adapter,
   ``router/tune.py``) — about 11 ms for one request, ~4.5 ms per request in a batch. Its head
   reads that embedding alone: stacked with the n-gram features it let the head memorise the
   training wordings (user-written calib accuracy 0.89 instead of 0.92).

The fast stage answers when its calibrated confidence reaches ``fast_accept`` (chosen on the
calibration split so that the fast stage is as accurate as the full one on what it accepts);
otherwise the full stage decides. Results are cached by a hash of the text.

What is classified is a conversation's user turns (``router/conversation.py``): each turn is
scored on its own and cached by its text; :meth:`DomainClassifier.resolve` combines them. A
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

from router.conversation import FOLLOW_UP, resolve
from router.policy import Classification

OUTSIDE = "(outside)"  # label for requests outside the taxonomy; never a valid domain id
CLIP_CHARS = 1000

_Array = np.ndarray[Any, np.dtype[Any]]
# What the classifier computed for one text (DomainClassifier: its probabilities over
# ``labels``). Opaque to callers: they cache and pass it back to ``resolve``.
TurnScores = Any


class Classifier(Protocol):
    def classify(self, text: str) -> Classification: ...


@dataclass
class BatchResult:
    results: list[Classification]  # per text, as a conversation of that one turn
    stages: list[str]  # per text: "cache", "fast" or "full" (the stage that answered)
    full_seconds: float = 0.0  # compute spent in the full stage
    starved: int = 0  # unsure texts the fast stage answered because the full stage was off
    scores: list[TurnScores] = field(default_factory=list)  # per text, for resolve()


class BatchClassifier(Classifier, Protocol):
    """A classifier that also takes many texts at once and may answer some from a cache."""

    def classify_many(
        self, texts: Sequence[str], *, max_full: int | None = None
    ) -> BatchResult: ...

    def cached_scores(self, text: str) -> TurnScores | None: ...

    def remember_many(self, texts: Sequence[str], scores: Sequence[TurnScores]) -> None: ...

    def resolve(self, turns: Sequence[TurnScores]) -> Classification:
        """The classification of a conversation from its user turns' scores, oldest first."""
        ...


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

    def full(self, texts: Sequence[str], minilm: _Array | None = None) -> list[Any]:
        if minilm is None:
            if self.minilm is None:
                raise RuntimeError("the full stage needs the MiniLM encoder")
            minilm = self.minilm.encode(texts)
        return [minilm]


def stack(blocks: Sequence[Any]) -> Any:
    """The blocks side by side, as one sparse matrix (for training)."""
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(b) for b in blocks], format="csr")


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
    """Per-text outputs of both stages, for evaluation and calibration. ``labels`` and
    ``confidence`` are each text's answer as a conversation of one turn; ``proba`` holds the
    raw probabilities (with the follow-up column) that conversations combine."""

    labels: list[str]
    confidence: _Array
    used_full: _Array  # bool per text
    unsure: _Array  # bool per text: below fast_accept (wanted the full stage)
    full_seconds: float = 0.0
    proba: _Array | None = None


@dataclass
class DomainClassifier:
    labels: tuple[str, ...]  # column order of both heads
    features: FeatureSpace
    fast: Head
    full: Head
    fast_accept: float
    info: dict[str, Any] = field(default_factory=dict)
    cache_size: int = 65536
    # The most confidence any answer reports (see router/train.py MAX_CONFIDENCE).
    max_confidence: float = 1.0
    # Scores per text (float32 probabilities over ``labels``): a conversation's earlier turns
    # are looked up here, so a long chat costs one new turn, not all of them.
    _cache: OrderedDict[bytes, _Array] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label not in (OUTSIDE, FOLLOW_UP))

    # ----------------------------------------------------------------- serving
    def classify(self, text: str) -> Classification:
        return self.classify_many([text]).results[0]

    def classify_turns(
        self, turns: Sequence[str], *, max_full: int | None = None
    ) -> Classification:
        """A conversation's user turns (oldest first; see ``router.conversation.user_turns``)."""
        if not turns:
            return Classification(None, 1.0)
        return self.resolve(self.classify_many(turns, max_full=max_full).scores)

    def resolve(self, turns: Sequence[TurnScores]) -> Classification:
        proba = self.resolve_proba(turns)
        best = int(proba.argmax())
        label = self.labels[best]
        confidence = min(float(proba[best]), self.max_confidence)
        return Classification(None if label == OUTSIDE else label, round(confidence, 4))

    def resolve_proba(self, turns: Sequence[TurnScores]) -> _Array:
        follow_up = self.labels.index(FOLLOW_UP) if FOLLOW_UP in self.labels else None
        return resolve(turns, self.labels.index(OUTSIDE), follow_up)

    def cached_scores(self, text: str) -> _Array | None:
        key = _key(text)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def cached(self, text: str) -> Classification | None:
        scores = self.cached_scores(text)
        return None if scores is None else self.resolve([scores])

    def classify_many(self, texts: Sequence[str], *, max_full: int | None = None) -> BatchResult:
        """Classify texts together; at most ``max_full`` unsure ones (the least sure first) get
        the full stage, the rest keep the fast stage's answer. ``None``: no limit."""
        scores: list[_Array | None] = [self.cached_scores(t) for t in texts]
        stages = ["cache"] * len(texts)
        todo = [i for i, hit in enumerate(scores) if hit is None]
        full_seconds, starved = 0.0, 0
        if todo:
            prediction = self.predict([texts[i] for i in todo], max_full=max_full)
            assert prediction.proba is not None
            for j, i in enumerate(todo):
                score = prediction.proba[j].astype(np.float32)
                scores[i] = score
                stages[i] = "full" if prediction.used_full[j] else "fast"
                # Fast answers given for lack of budget are cached too: recomputing them on
                # every repeat cost more throughput (bench_router) than upgrading them later.
                self._remember(_key(texts[i]), score)
            full_seconds = prediction.full_seconds
            starved = int((prediction.unsure & ~prediction.used_full).sum())
        done = [s for s in scores if s is not None]
        results = [
            Classification(None, 1.0) if not clip(text) else self.resolve([s])
            for text, s in zip(texts, done, strict=True)
        ]
        return BatchResult(results, stages, full_seconds, starved, done)

    def remember_many(self, texts: Sequence[str], scores: Sequence[TurnScores]) -> None:
        """Cache scores computed elsewhere (the classifier worker process)."""
        for text, score in zip(texts, scores, strict=True):
            self._remember(_key(text), score)

    def _remember(self, key: bytes, scores: _Array) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = scores
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
            full_x = self.features.full([clipped[i] for i in picked])
            proba[picked] = self.full.proba(full_x)
            full_seconds = time.perf_counter() - started
        outside = self.labels.index(OUTSIDE)
        proba[empty] = 0.0
        proba[empty, outside] = 1.0  # nothing to classify: the general model
        single = proba.copy()  # each text as a conversation of one turn (see resolve)
        if FOLLOW_UP in self.labels:
            follow_up = self.labels.index(FOLLOW_UP)
            single[:, outside] += single[:, follow_up]
            single[:, follow_up] = 0.0
        labels = [self.labels[j] for j in single.argmax(axis=1)]
        confidence = np.minimum(single.max(axis=1), self.max_confidence)
        confidence[empty] = 1.0
        return Prediction(labels, confidence, use_full, unsure, full_seconds, proba)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
