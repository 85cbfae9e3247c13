"""How much quality the 4-bit base gives up: held-out perplexity of bf16 vs W4A16 checkpoints.

Until the evaluation suite scores answers, perplexity on the test split of every domain
(:mod:`adapters.corpus`; never used for training or calibration) is the yardstick. Two numbers
per domain and checkpoint: the perplexity of the reference answers given the prompt, and of the
whole conversation. Plain min-max rounding (RTN) is scored alongside GPTQ to show what the
calibration buys.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.base_model import PreparedBase, load_causal_lm
from adapters.corpus import TEST, domain_items
from adapters.perplexity import score_conversations

logger = logging.getLogger(__name__)


def compare_bases(
    bf16: PreparedBase,
    gptq: PreparedBase,
    *,
    per_domain: int = 24,
    progress: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    from adapters.base_model import calibration_texts
    from adapters.quantize import quantize_checkpoint

    by_domain: dict[str, list[list[dict[str, str]]]] = {}
    for item in domain_items(split=TEST):
        conversations = by_domain.setdefault(item.domain, [])
        if len(conversations) < per_domain:
            conversations.append(item.messages())

    results: dict[str, Any] = {"per_domain_items": per_domain, "checkpoints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        rtn_dir = Path(tmp) / "rtn"
        quantize_checkpoint(bf16.path, rtn_dir, calibration_texts(bf16.path), method="rtn",
                            progress=progress)
        for label, path in (("bf16", bf16.path), ("w4a16-rtn", rtn_dir), ("w4a16-gptq", gptq.path)):
            started = time.monotonic()
            model, tokenizer = load_causal_lm(path)
            rows: dict[str, dict[str, float]] = {}
            for domain, conversations in sorted(by_domain.items()):
                answer, whole = score_conversations(model, tokenizer, conversations)
                rows[domain] = {
                    "answer_ppl": round(answer.value, 3),
                    "full_ppl": round(whole.value, 3),
                    "answer_tokens": answer.tokens,
                }
            rows["all"] = {
                key: round(sum(r[key] for r in rows.values()) / len(rows), 3)
                for key in ("answer_ppl", "full_ppl")
            }
            results["checkpoints"][label] = rows
            progress(f"{label}: mean answer perplexity {rows['all']['answer_ppl']:.2f} "
                     f"({time.monotonic() - started:.0f} s)")
            del model
    return results


def format_table(results: dict[str, Any]) -> str:
    checkpoints = results["checkpoints"]
    labels = list(checkpoints)
    domains = list(next(iter(checkpoints.values())))
    header = f"{'domain':<19}" + "".join(f"{label:>22}" for label in labels)
    lines = [
        "held-out perplexity (test split): reference answer | whole conversation",
        header,
    ]
    for domain in domains:
        cells = "".join(
            f"{row['answer_ppl']:>12.2f} |{row['full_ppl']:>7.2f}"
            for row in (checkpoints[label][domain] for label in labels)
        )
        lines.append(f"{domain:<19}{cells}")
    return "\n".join(lines)


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
