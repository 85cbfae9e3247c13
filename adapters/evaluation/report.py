"""The suite's per-domain summary of general vs specialized: JSON, a text table and a plot."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adapters.evaluation.statistics import estimate, paired_delta
from adapters.evaluation.suite import ItemScore


def summarise(
    scores: Sequence[ItemScore], base: str, adapters: Mapping[str, str]
) -> dict[str, Any]:
    """Per domain: the general model's score, the domain adapter's (``adapters``: domain ->
    adapter name) and their paired delta on the same items, each with a 95% interval."""
    by_model: dict[tuple[str, str], dict[str, ItemScore]] = defaultdict(dict)
    for s in scores:
        by_model[(s.domain, s.model)][s.item_id] = s
    domains: dict[str, Any] = {}
    for domain in sorted({s.domain for s in scores}):
        general = by_model[(domain, base)]
        row: dict[str, Any] = {
            "n": len(general),
            "general": estimate([s.score for s in general.values()]).as_dict(),
            "adapter": adapters.get(domain),
            # How its items were scored: method -> items (loglik, loglik_norm, rouge_l, ...).
            "methods": dict(sorted(Counter(s.method for s in general.values()).items())),
        }
        special = by_model.get((domain, adapters.get(domain, "")), {})
        if special:
            ids = sorted(general.keys() & special.keys())
            row["specialized"] = estimate([special[i].score for i in ids]).as_dict()
            row["delta"] = paired_delta(
                [special[i].score for i in ids], [general[i].score for i in ids]).as_dict()
            row["n"] = len(ids)
        domains[domain] = row
    with_adapter = [r for r in domains.values() if "delta" in r]
    return {
        "base": base,
        "domains": domains,
        "items": sum(r["n"] for r in domains.values()),
        "adapters_better": sum(1 for r in with_adapter if (r["delta"]["low"] or 0) > 0),
        "adapters_worse": sum(1 for r in with_adapter if (r["delta"]["high"] or 0) < 0),
        "mean_general": _mean(r["general"]["mean"] for r in with_adapter),
        "mean_specialized": _mean(r["specialized"]["mean"] for r in with_adapter),
    }


def merge_previous(
    previous: Mapping[str, Any], scores: Sequence[ItemScore], adapters: Mapping[str, str]
) -> tuple[list[ItemScore], dict[str, str]]:
    """``scores`` (and the ``adapters`` that produced them) plus, for every domain they do not
    cover, the scores and adapter names of an earlier run's saved results (``previous``)."""
    fresh = {s.domain for s in scores}
    kept = [ItemScore(**{**s, "option_logprobs": None if s.get("option_logprobs") is None
                         else tuple(s["option_logprobs"])})
            for s in previous.get("scores", []) if s["domain"] not in fresh]
    names = {d: str(r["adapter"]) for d, r in previous.get("domains", {}).items()
             if d not in fresh and r.get("adapter")}
    return [*kept, *scores], {**names, **adapters}


def _mean(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _ci(e: Mapping[str, Any]) -> str:
    if e["low"] is None:
        return f"{e['mean']:.3f}"
    return f"{e['mean']:.3f} [{e['low']:.2f}, {e['high']:.2f}]"


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown: score per domain with 95% intervals and the paired delta."""
    lines = [
        "| domain | n | general | specialized | delta (specialized - general) |",
        "|---|---|---|---|---|",
    ]
    for domain, r in summary["domains"].items():
        if "delta" not in r:
            lines.append(f"| {domain} | {r['n']} | {_ci(r['general'])} | (no adapter) | |")
            continue
        lines.append(
            f"| {domain} | {r['n']} | {_ci(r['general'])} | {_ci(r['specialized'])} | "
            f"{'+' if r['delta']['mean'] >= 0 else ''}{_ci(r['delta'])} |"
        )
    if summary["mean_general"] is not None:
        lines.append(f"| **mean** | {summary['items']} | {summary['mean_general']:.3f} | "
                     f"{summary['mean_specialized']:.3f} | better: {summary['adapters_better']}, "
                     f"worse: {summary['adapters_worse']} |")
    return "\n".join(lines)


def save(summary: Mapping[str, Any], scores: Sequence[ItemScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {**summary, "scores": [s.to_json() for s in scores]}, indent=1) + "\n")


def plot(summary: Mapping[str, Any], path: Path) -> None:
    """Left: general vs specialized score per domain; right: the paired delta, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {d: r for d, r in summary["domains"].items() if "delta" in r}
    domains = list(rows)
    y = np.arange(len(domains))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(domains) + 2))

    def errors(key: str) -> Any:
        def bound(e: Mapping[str, Any], side: str) -> float:
            return float(e["mean"] if e[side] is None else e[side])

        return np.array([[rows[d][key]["mean"] - bound(rows[d][key], "low"),
                          bound(rows[d][key], "high") - rows[d][key]["mean"]]
                         for d in domains]).T

    for offset, key, label in ((-0.2, "general", "general (base)"),
                               (0.2, "specialized", "specialized (domain LoRA)")):
        left.barh(y + offset, [rows[d][key]["mean"] for d in domains], 0.4,
                  xerr=errors(key), capsize=2, label=label)
    left.set_yticks(y, domains, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("suite score (MC accuracy by log-likelihood / exact match / ROUGE-L), 95% CI")
    left.legend(fontsize=8)
    deltas = [rows[d]["delta"]["mean"] for d in domains]
    colors = ["tab:green" if (rows[d]["delta"]["low"] or 0) > 0 else
              "tab:red" if (rows[d]["delta"]["high"] or 0) < 0 else "tab:gray" for d in domains]
    right.barh(y, deltas, 0.6, xerr=errors("delta"), capsize=2, color=colors)
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(y, domains, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("delta specialized - general (paired, 95% CI)")
    better, worse = summary["adapters_better"], summary["adapters_worse"]
    right.set_title(f"better: {better}, worse: {worse}, undecided: {len(domains) - better - worse}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
