"""What the domain classifier costs inside the gateway, measured side by side in one run.

Starts the fake upstream and ``slm-gateway serve`` (with the classifier) on loopback, then sends
the same closed-loop load (``--concurrency`` clients) in alternating rounds as:

* ``base``        — ``model: base``: no classification (the reference);
* ``auto-repeat`` — ``model: auto`` with the held-out realistic requests, cycled: after the
  first pass every text is a cache hit, as with recurring prompts;
* ``auto-unique`` — ``model: auto`` with a request number appended to each realistic request,
  so no text repeats and every request is classified (the cache never helps);
* ``auto-conversation`` — ``model: auto`` with chats that grow by one new (unique) user turn per
  request, up to three user turns, as a chat application sends them: every request has one new
  turn to classify, and the earlier ones were classified by the chat's previous requests.

Reports throughput and client latency per variant, the throughput ratio to ``base``, and the
classification time per request as the gateway's own histogram
``slm_classification_duration_seconds`` records it (percentiles interpolated within buckets,
as Prometheus' ``histogram_quantile`` does), split by the stage that answered.

    python -m loadtests.bench_router [--concurrency 32] [--requests 1500] [--rounds 3]

Results go to ``results/bench_router.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtests.bench_overhead import percentile
from loadtests.servers import free_port, gateway_env, process
from router.data import REALISTIC, authored_examples

ROOT = Path(__file__).resolve().parents[1]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation over cumulative (upper bound, count) buckets."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


async def classification_buckets(session: aiohttp.ClientSession, url: str
                                 ) -> dict[str, list[tuple[float, float]]]:
    async with session.get(url) as response:
        text = await response.text()
    out: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "slm_classification_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out.setdefault(sample.labels["stage"], []).append((le, sample.value))
    return {stage: sorted(b) for stage, b in out.items()}


def _diff(after: dict[str, list[tuple[float, float]]], before: dict[str, list[tuple[float, float]]]
          ) -> list[tuple[float, float]]:
    """Buckets of everything observed between two scrapes, all stages together."""
    merged: dict[float, float] = {}
    for stage, buckets in after.items():
        old = dict(before.get(stage, []))
        for le, count in buckets:
            merged[le] = merged.get(le, 0.0) + count - old.get(le, 0.0)
    return sorted(merged.items())


def _stage_counts(after: dict[str, list[tuple[float, float]]],
                  before: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    return {stage: b[-1][1] - dict(before.get(stage, [])).get(float("inf"), 0.0)
            for stage, b in after.items()}


async def _load(session: aiohttp.ClientSession, url: str, bodies: Iterator[bytes],
                requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors, remaining = 0, requests
    headers = {"content-type": "application/json"}

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            body = next(bodies)
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def _bodies(model: str, texts: list[str], unique: bool) -> Iterator[bytes]:
    def make(content: str) -> bytes:
        return json.dumps({"model": model, "max_tokens": 8,
                           "messages": [{"role": "user", "content": content}]}).encode()

    if unique:  # a fresh text every time, forever
        return (make(f"{t} (request {n})") for n, t in enumerate(itertools.cycle(texts)))
    return itertools.cycle([make(t) for t in texts])


def _conversation_bodies(texts: list[str], turns: int = 3, block: int = 64) -> Iterator[bytes]:
    """Chats of up to ``turns`` user turns, every turn a new text. Requests go out a block of
    chats at a time, first turns first, so a chat's next request usually starts after its
    previous one was answered (as in a real chat)."""
    # Not the texts auto-unique sends ("(request n)"): those are in the cache by now.
    source = (f"{t} (chat turn {n})" for n, t in enumerate(itertools.cycle(texts)))
    while True:
        chats = [[next(source) for _ in range(turns)] for _ in range(block)]
        for length in range(1, turns + 1):
            for chat in chats:
                messages: list[dict[str, str]] = []
                for turn in chat[:length]:
                    if messages:
                        messages.append({"role": "assistant", "content": "Sure, here it is."})
                    messages.append({"role": "user", "content": turn})
                yield json.dumps({"model": "auto", "max_tokens": 8,
                                  "messages": messages}).encode()


async def measure(gateway: str, texts: list[str], requests: int, concurrency: int,
                  rounds: int) -> dict[str, dict[str, float]]:
    url = f"{gateway}/v1/chat/completions"
    variants = {
        "base": _bodies("base", texts, unique=False),
        "auto-repeat": _bodies("auto", texts, unique=False),
        "auto-unique": _bodies("auto", texts, unique=True),
        "auto-conversation": _conversation_bodies(texts),
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "elapsed": [], "errors": []} for name in variants
    }
    classify: dict[str, list[tuple[float, float]]] = {}
    stages: dict[str, dict[str, float]] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for bodies in variants.values():  # warm-up (fills the cache for auto-repeat)
            await _load(session, url, bodies, max(len(texts), concurrency * 4), concurrency)
        for _ in range(rounds):
            for name, bodies in variants.items():
                before = await classification_buckets(session, f"{gateway}/metrics")
                lat, errors, elapsed = await _load(session, url, bodies, requests, concurrency)
                after = await classification_buckets(session, f"{gateway}/metrics")
                r = results[name]
                r["lat"] += lat
                r["elapsed"].append(elapsed)
                r["errors"].append(errors)
                if name != "base":
                    delta = _diff(after, before)
                    old = dict(classify.get(name, []))
                    classify[name] = [(le, old.get(le, 0.0) + c) for le, c in delta]
                    counts = _stage_counts(after, before)
                    for stage, c in counts.items():
                        stages.setdefault(name, {})[stage] = stages.get(name, {}).get(stage, 0) + c
    summary: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        n = len(r["lat"])
        summary[name] = {
            "requests": n,
            "errors": sum(r["errors"]),
            "throughput_rps": n / sum(r["elapsed"]),
            "p50_ms": percentile(r["lat"], 50) * 1000,
            "p99_ms": percentile(r["lat"], 99) * 1000,
        }
        if name in classify:
            summary[name] |= {
                "classify_p50_ms": histogram_quantile(0.50, classify[name]) * 1000,
                "classify_p99_ms": histogram_quantile(0.99, classify[name]) * 1000,
                **{f"stage_{k}": v for k, v in stages[name].items()},
            }
    for name in ("auto-repeat", "auto-unique", "auto-conversation"):
        summary[name]["throughput_ratio_to_base"] = (
            summary[name]["throughput_rps"] / summary["base"]["throughput_rps"]
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1500, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="gateway setting as an env override, e.g. "
                             "ROUTING__MAX_FULL_PER_BATCH=0 (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_router.json")
    args = parser.parse_args()

    texts = [e.text for e in authored_examples() if e.split == REALISTIC]
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    overrides = dict(item.split("=", 1) for item in args.set)
    env = gateway_env(gateway_port, upstream, **overrides)
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(upstream_port),
            "--delay-ms", str(args.delay_ms)]
    serve = [sys.executable, "-m", "gateway.cli", "serve"]
    with process(fake, f"{upstream}/health"), process(serve, f"{gateway}/readyz", env,
                                                        timeout=300):
        summary = asyncio.run(measure(gateway, texts, args.requests, args.concurrency,
                                      args.rounds))
    print(f"\n{args.concurrency} concurrent clients, fake upstream {args.delay_ms} ms, "
          f"{len(texts)} realistic requests")
    print(f"{'variant':<13}{'req/s':>8}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'cls p50':>9}{'cls p99':>9}  stages")
    for name, s in summary.items():
        stages = {k[6:]: int(v) for k, v in s.items() if k.startswith("stage_")}
        print(f"{name:<13}{s['throughput_rps']:>8.0f}"
              f"{s.get('throughput_ratio_to_base', 1.0):>7.2f}{s['p50_ms']:>8.2f}"
              f"{s['p99_ms']:>8.2f}{s.get('classify_p50_ms', 0):>9.3f}"
              f"{s.get('classify_p99_ms', 0):>9.3f}  {stages or ''}")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "command": "python -m loadtests.bench_router " + " ".join(sys.argv[1:]),
        "results": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
