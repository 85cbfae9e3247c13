"""Suite items: the type the scorer and the shadow evaluator take, and the gateway's loader.

The suite is rendered from the adapter corpus (:mod:`adapters.evaluation.render`). The gateway
must not import the corpus renderers (they pull in the benchmark readers of :mod:`router.data`
and belong to training), so :func:`load_suite` renders the suite in a short-lived child process
and takes back plain :class:`SuiteItem` values. Decision, over a suite file written ahead of
time: one source of truth that cannot drift from the corpus, no extra build step, and no
benchmark rows copied into the repository (their licences, some non-commercial, stay with the
installed data package: ``router/DATA_CARD.md``). The price is a second or two of CPU in a
child process when the fleet's evaluator starts (once per leader), never on the event loop.

This module imports nothing but the standard library.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

MULTIPLE_CHOICE, SHORT_ANSWER, GENERATION = "multiple_choice", "short_answer", "generation"
# Each task has exactly one metric, so an evaluation never has to guess how to score an item.
METRIC_FOR_TASK = {MULTIPLE_CHOICE: "accuracy", SHORT_ANSWER: "exact_match", GENERATION: "rouge_l"}

# Items per domain in `suite run` by default (fewer where the test split has fewer); the shadow
# evaluator takes its own `items_per_domain`.
SUITE_PER_DOMAIN = 100


@dataclass(frozen=True)
class SuiteItem:
    """One scored question: an :class:`adapters.corpus.DomainItem` of the test split, minus what
    only training needs."""

    id: str
    domain: str
    source: str  # "mmlu/anatomy", "boolq", "authored/news", "slm-bench/...", ...
    task: str  # multiple_choice | short_answer | generation
    prompt: str  # the user message, self-contained (MC prompts list the options)
    choices: tuple[str, ...]  # MC: option texts; else ()
    answer: str  # MC: the correct option text; else the reference answer
    metric: str  # accuracy | exact_match | rouge_l
    references: tuple[str, ...] = ()  # every acceptable answer (short_answer: answer first)

    def __post_init__(self) -> None:
        if METRIC_FOR_TASK.get(self.task) != self.metric:
            raise ValueError(f"suite item {self.id!r}: task {self.task!r} is not scored by "
                             f"{self.metric!r}")
        if self.task == MULTIPLE_CHOICE and self.answer not in self.choices:
            raise ValueError(f"suite item {self.id!r}: the answer is not one of the choices")

    @property
    def answer_index(self) -> int | None:
        return self.choices.index(self.answer) if self.choices else None


def _render(domains: Sequence[str] | None, per_domain: int) -> list[SuiteItem]:
    # Runs in the child: the corpus is imported there only.
    from adapters.evaluation.render import suite_items

    return suite_items(domains, per_domain)


def load_suite(domains: Sequence[str] | None = None,
               per_domain: int = SUITE_PER_DOMAIN) -> list[SuiteItem]:
    """The suite (:func:`adapters.evaluation.render.suite_items`), rendered in a child process
    (spawned: no copy of the caller's threads or event loop) so that the caller never imports
    the corpus. Blocks for the render: call it off the event loop."""
    with render_pool() as pool:
        return pool.submit(_render, domains, per_domain).result()


def render_pool() -> ProcessPoolExecutor:
    """One spawned worker that ends with its parent, however the parent ends: a gateway killed
    while the suite renders must not leave the worker waiting for work forever (seen in the
    scale-out tests: an instance killed during its render left an orphan)."""
    from router.lifeline import exit_with_parent  # standard library only, like this module

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent)
