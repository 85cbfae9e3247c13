"""Classification for `auto` requests without blocking the event loop.

A request is classified by its conversation (``router/conversation.py``): each user turn has
its own scores, cached by text, and the classifier resolves them into one answer. Turns in the
cache are answered on the loop (a hash lookup; in a live chat the earlier turns always are: the
previous request classified them). Every other turn joins a queue; one worker task hands
whatever has gathered (up to ``max_batch`` texts) to the classifier worker process (or, without
one, a thread) in a single call, so concurrent requests cost one hop and one vectorised pass
instead of one each. The MiniLM stage runs only while its CPU budget
(:class:`router.classifier.FullStageBudget`) allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor

from gateway.metrics import NONE, Metrics
from router import worker
from router.classifier import BatchClassifier, BatchResult, FullStageBudget, TurnScores
from router.policy import Classification

logger = logging.getLogger(__name__)

_STAGE_COST = {"cache": 0, "fast": 1, "full": 2}


class ClassifierService:
    def __init__(
        self,
        classifier: BatchClassifier,
        metrics: Metrics,
        *,
        max_batch: int = 32,
        max_full: int = 2,
        budget: FullStageBudget | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.classifier = classifier
        # None: classify in a thread of this process (tests). A process pool keeps the
        # GIL-bound fast stage off the event loop's core (see router/worker.py).
        self.executor = executor
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_full = max_full
        self.budget = budget
        self._queue: deque[tuple[str, asyncio.Future[tuple[TurnScores, str]]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def classify(self, text: str) -> Classification:
        """One text, as a conversation of one user turn."""
        return await self.classify_turns([text])

    async def classify_turns(self, turns: Sequence[str]) -> Classification:
        """A conversation's user turns, oldest first (``router.conversation.user_turns``)."""
        started = time.perf_counter()
        turns = list(turns) or [""]  # nothing to classify: the classifier says general
        scores: list[TurnScores | None] = [self.classifier.cached_scores(t) for t in turns]
        stage = "cache"
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            loop = asyncio.get_running_loop()
            futures: list[asyncio.Future[tuple[TurnScores, str]]] = []
            for i in missing:
                future: asyncio.Future[tuple[TurnScores, str]] = loop.create_future()
                self._queue.append((turns[i], future))
                futures.append(future)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._drain(), name="classifier")
            for i, (score, turn_stage) in zip(missing, await asyncio.gather(*futures), strict=True):
                scores[i] = score
                stage = max(stage, turn_stage, key=_STAGE_COST.__getitem__)
        result = self.classifier.resolve(scores)
        self.metrics.classification_duration.labels(stage).observe(time.perf_counter() - started)
        self.metrics.classification_confidence.labels(result.domain or NONE).observe(
            result.confidence
        )
        return result

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            texts = [text for text, _ in batch]
            # A batch waits for its slowest member: only a few texts per batch may take the
            # MiniLM stage (~3-6 ms each), and none while its CPU budget is spent.
            allowed = self.max_full if self.budget is None or self.budget.available() else 0
            try:
                if self.executor is None:
                    done = await asyncio.to_thread(
                        self.classifier.classify_many, texts, max_full=allowed
                    )
                else:
                    done = await asyncio.get_running_loop().run_in_executor(
                        self.executor, worker.classify_many, texts, allowed
                    )
                    self.classifier.remember_many(texts, done.scores)
            except Exception as exc:  # a classifier bug must not hang requests
                logger.exception("classification failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._account(done)
            for (_, future), score, stage in zip(batch, done.scores, done.stages, strict=True):
                if not future.done():  # the request may have been cancelled meanwhile
                    future.set_result((score, stage))

    def _account(self, batch: BatchResult) -> None:
        if self.budget is not None:
            self.budget.spend(batch.full_seconds)
        if batch.starved:
            self.metrics.classifier_budget_exhausted.inc(batch.starved)

    async def warm_up(self) -> None:
        """Wait until the worker process has loaded its model, before traffic arrives."""
        if self.executor is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, worker.classify_many, ["hello"], 0
            )
