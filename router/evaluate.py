"""``slm-gateway router eval``: accuracy, macro-F1, per-domain recall, confusion, latency.

Two held-out sets, reported separately:

* ``realistic`` — requests written independently of the training files the way users write
  (``router/data/authored/eval-*.jsonl``); the targets apply to this set;
* ``test`` — benchmark questions in the test split (disjoint from training and calibration).

"Routed to general" means what the gateway does: the classifier says outside the taxonomy, or
its confidence is below the threshold. Latency is measured one request at a time with the cache
off, on this machine, for the two-stage classifier as served and for the fast stage alone.
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
from router.data import REALISTIC, TEST, Example

_Array = np.ndarray[Any, np.dtype[Any]]


def expected_calibration_error(confidence: _Array, correct: _Array, bins: int = 10) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def score_split(
    classifier: DomainClassifier, examples: Sequence[Example], threshold: float, stage: str
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    texts = [e.text for e in examples]
    truth = [e.domain or OUTSIDE for e in examples]
    prediction = classifier.predict(texts, stage=stage)
    labels = list(classifier.labels)
    predicted = prediction.labels
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    # What the gateway serves: below the threshold, or outside, means the general model.
    routed = [
        OUTSIDE if c < threshold else p
        for p, c in zip(predicted, prediction.confidence, strict=True)
    ]
    outside = np.array([t == OUTSIDE for t in truth])
    routed_general = np.array([r == OUTSIDE for r in routed])
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return {
        "n": len(examples),
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
        "in_domain_to_general": round(float(routed_general[~outside].mean()), 4),
        "full_stage_fraction": round(float(prediction.used_full.mean()), 4),
        "ece": round(expected_calibration_error(prediction.confidence, correct), 4),
        "per_label": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "n": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        },
    }


def latency_ms(classifier: DomainClassifier, texts: Sequence[str], stage: str) -> dict[str, float]:
    samples = []
    for text in texts:
        start = time.perf_counter()
        classifier.predict([text], stage=stage)
        samples.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def evaluate(
    classifier: DomainClassifier,
    corpus: Sequence[Example],
    threshold: float,
    *,
    latency_samples: int = 300,
) -> dict[str, Any]:
    splits = {name: [e for e in corpus if e.split == name] for name in (REALISTIC, TEST)}
    result: dict[str, Any] = {
        "classifier": classifier.info,
        "threshold": threshold,
        "splits": {},
    }
    for name, rows in splits.items():
        result["splits"][name] = {
            stage: score_split(classifier, rows, threshold, stage) for stage in ("auto", "fast")
        }
    texts = [e.text for e in splits[REALISTIC]][:latency_samples]
    classifier.predict(texts[:8])  # warm-up
    result["latency_ms_single"] = {
        stage: latency_ms(classifier, texts, stage) for stage in ("auto", "fast")
    }
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [f"threshold (low_confidence below): {result['threshold']}"]
    for name, stages in result["splits"].items():
        for stage, s in stages.items():
            lines.append(
                f"{name:9s} {stage:4s} n={s['n']:4d} accuracy={s['accuracy']:.3f} "
                f"macro_f1={s['macro_f1']:.3f} route_accuracy={s['route_accuracy']:.3f} "
                f"outside->general={s['outside_to_general']} "
                f"in-domain->general={s['in_domain_to_general']:.3f} "
                f"full_stage={s['full_stage_fraction']:.2f} ece={s['ece']:.3f}"
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
    lines.append("\nlatency per request, one at a time, cache off (ms):")
    for stage, lat in result["latency_ms_single"].items():
        lines.append(f"  {stage:4s} p50={lat['p50']:.3f} p95={lat['p95']:.3f} p99={lat['p99']:.3f}")
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
