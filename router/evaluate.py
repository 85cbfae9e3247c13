"""``slm-gateway router eval``: accuracy per held-out brief, conversations, outside, ECE, errors.

Held-out sets, reported separately (none of them trains, calibrates or tunes anything):

* ``realistic`` — requests written independently of the training files, one table row per
  brief (``router.data.BRIEFS``): E0 shares its brief with the oldest training files, X, Y and
  V come from briefs no training file used (the targets apply to them: the writer gap; X+Y is
  kept as its own row so rounds stay comparable, V was added in round 3); W and U, written later
  by writers that never saw the repository and scored once, have their own row;
* ``test`` — benchmark questions in the test split (disjoint from training and calibration);
* ``conversations`` — held-out multi-turn chats (brief Z), routed by the whole conversation and,
  for comparison, by the last user turn alone;
* ``outside`` — every held-out request or chat whose answer is the general model.

"Routed to general" means what the gateway does: the classifier says outside the taxonomy, or
its confidence is below the threshold. Calibration: ECE (10 bins) and the confidence of the
errors; the most confident errors are saved in the results file. Latency is measured one
request at a time with the cache off, on this machine, for the two-stage classifier as served
and for the fast stage alone, plus a conversation whose earlier turns are cached.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import OUTSIDE, DomainClassifier
from router.conversation import FOLLOW_UP, user_turns
from router.data import BRIEFS, CONVERSATIONS, REALISTIC, TEST, Conversation, Example

_Array = np.ndarray[Any, np.dtype[Any]]
# Held-out files whose brief no training file shares. X and Y (eval-c, eval-d) carry the issue-14
# target since round 1; V (eval-e, round 3) is reported on its own and in the X+Y+V row.
UNSEEN_BRIEFS = ("eval-c", "eval-d")
NEW_BRIEFS = ("eval-e",)
# W and U (eval-f, eval-g): written after round 5 by two writers that never saw the repository
# (neither its training files nor the other held-out sets), and scored once, with nothing changed
# after: the check that X, Y and V, scored after each of five rounds, can no longer give.
FRESH_BRIEFS = ("eval-f", "eval-g")
TOP_ERRORS = 20


def expected_calibration_error(confidence: _Array, correct: _Array, bins: int = 10) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)



def _scores(
    labels: Sequence[str],
    items: Sequence[str],
    truth: Sequence[str],
    predicted: Sequence[str],
    confidence: _Array,
    used_full: _Array,
    threshold: float,
) -> dict[str, Any]:
    """The metrics of one set: ``truth``/``predicted`` are labels (OUTSIDE for general)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = [label for label in labels if label != FOLLOW_UP]
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    # What the gateway serves: below the threshold, or outside, means the general model.
    routed = [OUTSIDE if c < threshold else p for p, c in zip(predicted, confidence, strict=True)]
    outside = np.array([t == OUTSIDE for t in truth])
    routed_general = np.array([r == OUTSIDE for r in routed])
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    wrong = np.flatnonzero(~correct)
    return {
        "n": len(truth),
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(
            float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)), 4
        ),
        "route_accuracy": round(
            float(np.mean([r == t for r, t in zip(routed, truth, strict=True)])), 4
        ),
        "outside_to_general": round(float(routed_general[outside].mean()), 4)
        if outside.any()
        else None,
        "in_domain_to_general": round(float(routed_general[~outside].mean()), 4)
        if (~outside).any()
        else None,
        "full_stage_fraction": round(float(used_full.mean()), 4),
        "ece": round(expected_calibration_error(confidence, correct), 4),
        "max_error_confidence": round(float(confidence[wrong].max()), 4) if len(wrong) else None,
        "errors_above_0.95": int((confidence[wrong] > 0.95).sum()),
        "per_label": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "n": int(n),
            }
            for label, p, r, f, n in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        },
        "_errors": [
            {
                "text": items[i],
                "truth": truth[i],
                "predicted": predicted[i],
                "confidence": round(float(confidence[i]), 4),
            }
            for i in wrong
        ],
    }


def score_split(
    classifier: DomainClassifier, examples: Sequence[Example], threshold: float, stage: str
) -> dict[str, Any]:
    texts = [e.text for e in examples]
    prediction = classifier.predict(texts, stage=stage)
    truth = [e.domain or OUTSIDE for e in examples]
    return _scores(
        classifier.labels, texts, truth, prediction.labels, prediction.confidence,
        prediction.used_full, threshold,
    )


def conversation_turns(chat: Conversation) -> list[str]:
    return user_turns(chat.messages)


def score_conversations(
    classifier: DomainClassifier,
    chats: Sequence[Conversation],
    threshold: float,
    stage: str,
    *,
    last_turn_only: bool = False,
) -> dict[str, Any]:
    """Each chat routed as the gateway routes it: its user turns scored, then resolved."""
    turns = [conversation_turns(c) for c in chats]
    if last_turn_only:
        turns = [t[-1:] for t in turns]
    unique = sorted({t for ts in turns for t in ts})
    prediction = classifier.predict(unique, stage=stage)
    assert prediction.proba is not None
    row = {t: i for i, t in enumerate(unique)}
    predicted, confidence, used_full = [], [], []
    for ts in turns:
        proba = classifier.resolve_proba([prediction.proba[row[t]] for t in ts])
        best = int(proba.argmax())
        predicted.append(classifier.labels[best])
        confidence.append(float(proba[best]))
        used_full.append(bool(prediction.used_full[row[ts[-1]]]))
    truth = [c.domain or OUTSIDE for c in chats]
    shown = [" ⏎ ".join(ts) for ts in turns]
    result = _scores(
        classifier.labels, shown, truth, predicted, np.array(confidence), np.array(used_full),
        threshold,
    )
    for kind in ("follow", "own"):
        picked = [i for i, c in enumerate(chats) if c.last_turn == kind]
        result[f"accuracy_{kind}"] = round(
            float(np.mean([predicted[i] == truth[i] for i in picked])), 4
        ) if picked else None
        result[f"n_{kind}"] = len(picked)
    return result


def latency_ms(classifier: DomainClassifier, texts: Sequence[str], stage: str) -> dict[str, float]:
    samples = []
    for text in texts:
        start = time.perf_counter()
        classifier.predict([text], stage=stage)
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def conversation_latency_ms(
    classifier: DomainClassifier, chats: Sequence[Conversation]
) -> dict[str, float]:
    """A chat's request as served: earlier turns in the cache (the previous request of the
    chat classified them), the last turn new."""
    samples = []
    saved = classifier.cache_size
    classifier.cache_size = 65536
    try:
        for chat in chats:
            turns = conversation_turns(chat)
            classifier.classify_many(turns[:-1])  # the earlier requests of this chat
            classifier._cache.pop(_cache_key(turns[-1]), None)
            start = time.perf_counter()
            classifier.classify_turns(turns)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        classifier._cache.clear()
        classifier.cache_size = saved
    return _percentiles(samples)


def _cache_key(text: str) -> bytes:
    from router.classifier import _key

    return _key(text)


def evaluate(
    classifier: DomainClassifier,
    corpus: Sequence[Example],
    chats: Sequence[Conversation],
    threshold: float,
    *,
    latency_samples: int = 300,
) -> dict[str, Any]:
    realistic = [e for e in corpus if e.split == REALISTIC]
    by_file: dict[str, list[Example]] = {}
    for e in realistic:
        by_file.setdefault(e.source.removeprefix("authored/"), []).append(e)
    held_chats = [c for c in chats if c.split == CONVERSATIONS]
    sets: dict[str, list[Example]] = {
        REALISTIC: realistic,
        "realistic_unseen_briefs": [e for f in UNSEEN_BRIEFS for e in by_file.get(f, [])],
        "realistic_unseen_briefs_xyv": [
            e for f in (*UNSEEN_BRIEFS, *NEW_BRIEFS) for e in by_file.get(f, [])
        ],
        "realistic_fresh_writers": [e for f in FRESH_BRIEFS for e in by_file.get(f, [])],
        **{f"brief:{name}": rows for name, rows in sorted(by_file.items())},
        TEST: [e for e in corpus if e.split == TEST],
    }
    result: dict[str, Any] = {
        "classifier": classifier.info,
        "threshold": threshold,
        "briefs": {name: BRIEFS.get(name, name) for name in sorted(by_file)},
        "splits": {},
    }
    for name, rows in sets.items():
        result["splits"][name] = {
            stage: score_split(classifier, rows, threshold, stage) for stage in ("auto", "fast")
        }
    result["splits"][CONVERSATIONS] = {
        "auto": score_conversations(classifier, held_chats, threshold, "auto"),
        "fast": score_conversations(classifier, held_chats, threshold, "fast"),
        "last_turn_only": score_conversations(
            classifier, held_chats, threshold, "auto", last_turn_only=True
        ),
    }
    outside_rows = [e for e in realistic if e.domain is None]
    outside_chats = [c for c in held_chats if c.domain is None]
    result["splits"]["outside"] = {
        "auto": _merge_outside(
            score_split(classifier, outside_rows, threshold, "auto"),
            score_conversations(classifier, outside_chats, threshold, "auto"),
        )
    }
    # Calibration over everything held out that users write (not the benchmark split).
    errors = [
        {**err, "set": name}
        for name in (REALISTIC, CONVERSATIONS)
        for err in result["splits"][name]["auto"]["_errors"]
    ]
    errors.sort(key=lambda err: -err["confidence"])
    result["most_confident_errors"] = errors[:TOP_ERRORS]
    result["held_out_errors_above_0.95"] = sum(err["confidence"] > 0.95 for err in errors)
    for stages in result["splits"].values():
        for scores in stages.values():
            scores.pop("_errors", None)
    texts = [e.text for e in realistic][:latency_samples]
    classifier.predict(texts[:8])  # warm-up
    result["latency_ms_single"] = {
        stage: latency_ms(classifier, texts, stage) for stage in ("auto", "fast")
    }
    multi = [c for c in held_chats if len(conversation_turns(c)) > 1]
    result["latency_ms_single"]["conversation"] = conversation_latency_ms(classifier, multi)
    return result


def _merge_outside(single: dict[str, Any], chats: dict[str, Any]) -> dict[str, Any]:
    n = single["n"] + chats["n"]
    general = single["outside_to_general"] * single["n"] + chats["outside_to_general"] * chats["n"]
    return {
        "n": n,
        "n_requests": single["n"],
        "n_conversations": chats["n"],
        "outside_to_general": round(general / n, 4),
        "requests_to_general": single["outside_to_general"],
        "conversations_to_general": chats["outside_to_general"],
        "_errors": [],
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [f"threshold (low_confidence below): {result['threshold']}"]
    lines.append(
        "\nheld-out set                     stage   n     acc   macroF1 out->gen in->gen "
        "full  ECE   max-err-conf"
    )
    for name, stages in result["splits"].items():
        if name == "outside":
            continue
        for stage, s in stages.items():
            label = name
            if name.startswith("brief:"):
                label = f"  {name[6:]} ({result['briefs'][name[6:]][:22]})"
            out = "-" if s["outside_to_general"] is None else f"{s['outside_to_general']:.3f}"
            inn = "-" if s["in_domain_to_general"] is None else f"{s['in_domain_to_general']:.3f}"
            worst = "-" if s["max_error_confidence"] is None else f"{s['max_error_confidence']:.3f}"
            lines.append(
                f"{label[:32]:32s} {stage[:7]:7s} {s['n']:4d}  {s['accuracy']:.3f}  "
                f"{s['macro_f1']:.3f}   {out:6s}  {inn:6s} {s['full_stage_fraction']:.2f}  "
                f"{s['ece']:.3f} {worst}"
            )
    conv = result["splits"][CONVERSATIONS]
    lines.append("\nconversations (held-out, brief Z): accuracy by the last turn's kind")
    for stage in ("auto", "last_turn_only"):
        c = conv[stage]
        lines.append(
            f"  {stage:15s} all={c['accuracy']:.3f} follow-ups={c['accuracy_follow']} "
            f"(n={c['n_follow']}) own-topic/switch={c['accuracy_own']} (n={c['n_own']})"
        )
    o = result["splits"]["outside"]["auto"]
    lines.append(
        f"\noutside the taxonomy -> general: {o['outside_to_general']:.3f} (n={o['n']}: "
        f"requests {o['requests_to_general']}, conversations {o['conversations_to_general']})"
    )
    real = result["splits"][REALISTIC]["auto"]
    lines.append("\nper-label recall / precision on realistic requests (two-stage):")
    for label, m in real["per_label"].items():
        lines.append(
            f"  {label:20s} recall={m['recall']:.3f} precision={m['precision']:.3f} n={m['n']}"
        )
    labels = real["confusion"]["labels"]
    short = [label[:5] for label in labels]
    lines.append("\nconfusion (rows: truth, columns: predicted), realistic, two-stage:")
    lines.append(" " * 21 + " ".join(f"{s:>5s}" for s in short))
    for label, row in zip(labels, real["confusion"]["matrix"], strict=True):
        lines.append(f"  {label:18s} " + " ".join(f"{v:5d}" for v in row))
    lines.append(
        f"\nheld-out errors above 0.95 confidence: {result['held_out_errors_above_0.95']}; "
        "most confident errors:"
    )
    for err in result["most_confident_errors"][:10]:
        lines.append(
            f"  {err['confidence']:.3f} {err['truth']} -> {err['predicted']}: "
            f"{err['text'][:90]!r}"
        )
    lines.append("\nlatency per request, one at a time, cache off (ms):")
    for stage, lat in result["latency_ms_single"].items():
        lines.append(
            f"  {stage:12s} p50={lat['p50']:.3f} p95={lat['p95']:.3f} p99={lat['p99']:.3f}"
        )
    return "\n".join(lines)


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def plot(result: dict[str, Any], path: Path) -> None:
    """Confusion matrix and per-domain recall on the realistic set, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = result["splits"][REALISTIC]["auto"]
    labels = real["confusion"]["labels"]
    matrix = np.array(real["confusion"]["matrix"], dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), width_ratios=[1.3, 1])
    left.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    left.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    left.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                left.text(
                    j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color
                )
    left.set_xlabel("predicted")
    left.set_ylabel("truth")
    left.set_title(f"realistic held-out requests (n={real['n']}), accuracy {real['accuracy']:.3f}")
    recalls = [real["per_label"][label]["recall"] for label in labels]
    right.barh(labels, recalls, color="tab:blue")
    right.axvline(0.9, color="grey", linestyle="--", linewidth=1)
    right.set_xlim(0, 1)
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=8)
    right.set_title("recall per label")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
