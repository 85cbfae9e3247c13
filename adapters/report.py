"""The per-domain adapter training report: a JSON file, a Markdown table and a plot.

Everything is read back from what training wrote (the manifest and each adapter's
``slm_adapter.json``), so the report always describes the adapters that are actually published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.registry import load_manifest
from adapters.train import RECORD_FILE


def training_report(manifest: Path) -> dict[str, Any]:
    rows = []
    for entry in load_manifest(manifest):
        record = json.loads((entry.path / RECORD_FILE).read_text())
        weights = entry.path / "adapter_model.safetensors"
        rows.append({
            "name": entry.name,
            "domain": entry.domain,
            "version": entry.version,
            "status": entry.status.value,
            "train_items": record["data"]["train_items"],
            "sources": record["data"]["sources"],
            "steps": record["steps"],
            "train_loss": record["train_loss"],
            "perplexity_before": record["perplexity_before"],
            "perplexity_after": record["perplexity_after"],
            "seconds": record["seconds"],
            "size_mb": round(weights.stat().st_size / 1e6, 2),
        })
    improved = [r for r in rows if r["perplexity_after"] < r["perplexity_before"]]
    return {
        "base": record["base"] if rows else None,
        "config": record["config"] if rows else None,
        "adapters": rows,
        "improved": len(improved),
        "mean_perplexity_before": _mean(r["perplexity_before"] for r in rows),
        "mean_perplexity_after": _mean(r["perplexity_after"] for r in rows),
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
    }


def _mean(values: Any) -> float:
    values = list(values)
    return round(sum(values) / len(values), 3) if values else float("nan")


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        "| domain | examples trained (split items per source) | steps | final loss | "
        "held-out ppl before | after | change | time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["adapters"]:
        sources = ", ".join(f"{k} {v}" for k, v in r["sources"].items())
        change = 100 * (r["perplexity_after"] / r["perplexity_before"] - 1)
        lines.append(
            f"| {r['domain']} | {r['train_items']} ({sources}) | {r['steps']} | "
            f"{r['train_loss']:.3f} | {r['perplexity_before']:.3f} | {r['perplexity_after']:.3f} "
            f"| {change:+.1f}% | {r['seconds']:.0f} |"
        )
    lines.append(
        f"| **mean** | | | | {report['mean_perplexity_before']:.3f} | "
        f"{report['mean_perplexity_after']:.3f} | | {report['total_seconds']:.0f} (total) |"
    )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path, base_quality: dict[str, Any] | None = None) -> None:
    """Held-out perplexity per domain before/after training; with ``base_quality`` (the
    ``compare-base`` results) a second panel: bf16 vs 4-bit base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = 2 if base_quality else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 6), squeeze=False)
    rows = report["adapters"]
    domains = [r["domain"] for r in rows]
    y = np.arange(len(domains))
    left = axes[0][0]
    left.barh(y - 0.2, [r["perplexity_before"] for r in rows], 0.4, label="base (4-bit)")
    left.barh(y + 0.2, [r["perplexity_after"] for r in rows], 0.4, label="base + domain LoRA")
    left.set_yticks(y, domains, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("held-out answer perplexity (calib split, lower is better)")
    left.set_title(f"domain adapters: {report['improved']}/{len(rows)} improve")
    left.legend()
    if base_quality:
        right = axes[0][1]
        checkpoints = base_quality["checkpoints"]
        width = 0.8 / len(checkpoints)
        for i, (label, per_domain) in enumerate(checkpoints.items()):
            right.barh(y - 0.4 + width * (i + 0.5),
                       [per_domain[d]["answer_ppl"] for d in domains], width, label=label)
        right.set_yticks(y, domains, fontsize=8)
        right.invert_yaxis()
        right.set_xlabel("answer perplexity (test split, lower is better)")
        right.set_title("base checkpoint: bf16 vs 4-bit")
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
