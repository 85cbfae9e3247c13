"""The domain classifier in its own process, for :class:`concurrent.futures.ProcessPoolExecutor`.

The fast stage is mostly pure Python (scikit-learn's n-gram counting) and holds the GIL: run in
a thread of the gateway it stalled the event loop in 5 ms slices, halving throughput under
load (``loadtests/bench_router.py``). In a worker process it runs on the other core instead.

The pool's initializer loads the classifier once per worker process and keeps it in this
module: that process-local global is how executor initializers hand state to tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router.classifier import BatchResult, DomainClassifier

_classifier: DomainClassifier | None = None


def init(taxonomy_file: Path | None, cache_dir: Path) -> None:
    global _classifier
    import torch

    from router.lifeline import exit_with_parent
    from router.taxonomy import load_taxonomy
    from router.train import load_or_train

    exit_with_parent()  # a gateway killed with SIGKILL must not leave ~900 MB behind
    torch.set_num_threads(1)  # one worker, one core: leave the other to the gateway
    _classifier = load_or_train(load_taxonomy(taxonomy_file), cache_dir, progress=lambda m: None)
    _classifier.cache_size = 0  # the gateway process keeps the cache
    _classifier.predict(["warm up"], stage="full")  # load MiniLM now, not on a live request


def classify_many(texts: Sequence[str], max_full: int | None) -> BatchResult:
    if _classifier is None:
        raise RuntimeError("classifier worker not initialised")
    return _classifier.classify_many(texts, max_full=max_full)
