"""What a proxy in front of an OpenAI upstream costs: slm-gateway vs LiteLLM vs nginx, one run.

Starts the fake upstream (``loadtests/fake_upstream.py``) and, in front of it, ``slm-gateway
serve``, LiteLLM's proxy (its own venv, ``make bench-deps``) and a plain nginx reverse proxy
(Debian package; the practical floor), all on loopback with one worker process each. The same
closed-loop load (``--concurrency`` clients) goes to every target, including the upstream
directly, in alternating rounds, so drift on this noisy machine hits all alike. Reported per
target: throughput, p50/p95/p99 latency (non-streaming: full answer; streaming: time to first
chunk), the latency each proxy adds over the direct call, and the issue's target ratios. Chat
completions, and the Responses API (``responses_*`` modes: POST /v1/responses, where the first
chunk is the ``response.created`` event) at the loaded concurrency.

    python -m loadtests.bench_overhead [--concurrency 32] [--requests 4000] [--rounds 4]
                                       [--targets direct,slm-gateway,litellm,nginx]
                                       [--modes non_streaming,responses_streaming_ttfc,...]

A proxy that is not installed is skipped with a note (``make bench`` installs both). Results go
to ``results/bench_overhead.json``; ``python -m loadtests.report`` renders BENCHMARKS.md. The fake
upstream does no model work: these numbers are about proxies, never model quality.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from loadtests.fake_upstream import MODEL
from loadtests.servers import (
    LITELLM,
    NGINX,
    ROOT,
    free_port,
    gateway_env,
    litellm_command,
    nginx_command,
    process,
)

CHAT = ("/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 8})
# store=False: nothing kept upstream (OpenAI's default would store every benchmark answer).
RESPONSES = ("/v1/responses",
             {"input": "Say hello in five words.", "max_output_tokens": 8, "store": False})
TARGETS = ("direct", "slm-gateway", "litellm", "nginx")
# mode -> (streamed, one client, API). The loaded runs (throughput, tails under queueing) and a
# one-client run: per-request cost without queueing, where nginx's added p50 is a meaningful
# floor (at 32 clients it is at or below zero: nginx's pooled upstream connections even beat
# direct calls).
MODES = {
    "non_streaming": (False, False, CHAT),
    "streaming_ttfc": (True, False, CHAT),
    "non_streaming_1_client": (False, True, CHAT),
    "streaming_ttfc_1_client": (True, True, CHAT),
    "responses_non_streaming": (False, False, RESPONSES),
    "responses_streaming_ttfc": (True, False, RESPONSES),
}
PROXIES = ("slm-gateway", "litellm", "nginx")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _batch(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool,
                 requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if stream:
                        # Time to first chunk: the first body bytes of the SSE stream.
                        await response.content.readany()
                        latencies.append(time.perf_counter() - started)
                        await response.read()
                    else:
                        await response.read()
                        latencies.append(time.perf_counter() - started)
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def measure(targets: dict[str, tuple[str, str]], *, stream: bool, requests: int,
                  concurrency: int, rounds: int,
                  api: tuple[str, dict[str, object]] = CHAT) -> dict[str, dict[str, float]]:
    """``targets``: name -> (base URL, model name); ``api``: (path, body without model)."""
    path, template = api
    requests_for = {
        name: (f"{base}{path}", json.dumps({**template, "model": model, "stream": stream}).encode())
        for name, (base, model) in targets.items()
    }
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    results: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "elapsed": [], "errors": []} for name in targets
    }
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, body in requests_for.values():  # warm-up: connections, caches
            await _batch(session, url, body, stream, concurrency * 4, concurrency)
        for _ in range(rounds):
            for name, (url, body) in requests_for.items():
                lat, errors, elapsed = await _batch(session, url, body, stream,
                                                    requests // rounds, concurrency)
                results[name]["lat"] += lat
                results[name]["elapsed"].append(elapsed)
                results[name]["errors"].append(errors)
    summary: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        lat = [x * 1000 for x in r["lat"]] or [float("nan")]
        summary[name] = {
            "requests": len(r["lat"]),
            "errors": sum(r["errors"]),
            "throughput_rps": len(r["lat"]) / sum(r["elapsed"]),
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "mean_ms": statistics.fmean(lat),
        }
    return summary


def added_latency(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per proxy: its percentiles minus the direct call's, in ms."""
    direct = summary["direct"]
    return {name: {q: summary[name][q] - direct[q] for q in ("p50_ms", "p95_ms", "p99_ms")}
            for name in summary if name != "direct"}


def targets_check(mode: dict[str, object]) -> dict[str, object]:
    """The issue's targets for one mode, where the targets they compare were measured."""
    summary: dict[str, dict[str, float]] = mode["targets"]  # type: ignore[assignment]
    added: dict[str, dict[str, float]] = mode["added"]  # type: ignore[assignment]
    checks: dict[str, object] = {}
    if "slm-gateway" in summary and "litellm" in summary and mode["concurrency"] != 1:
        ratio = summary["slm-gateway"]["throughput_rps"] / summary["litellm"]["throughput_rps"]
        checks["throughput_ratio_to_litellm"] = {"value": ratio, "target": ">= 3",
                                                 "met": ratio >= 3}
        ours, theirs = added["slm-gateway"]["p99_ms"], added["litellm"]["p99_ms"]
        checks["added_p99_vs_litellm_ms"] = {"value": [ours, theirs], "target": "ours < litellm",
                                             "met": ours < theirs}
    if "slm-gateway" in summary and "nginx" in summary:
        ours, floor = added["slm-gateway"]["p50_ms"], added["nginx"]["p50_ms"]
        # An added p50 below the floor's (or any at or below zero) is within 2x by definition.
        met = ours <= max(2 * floor, 0.0) or ours <= 0
        checks["added_p50_vs_nginx_ms"] = {"value": [ours, floor], "target": "ours <= 2x nginx",
                                           "met": met}
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per target and mode")
    parser.add_argument("--sequential-requests", type=int, default=800,
                        help="per target and mode, one client")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="fake upstream time before answering / first chunk")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_overhead.json")
    args = parser.parse_args()
    wanted = [t for t in args.targets.split(",") if t]
    unknown = set(wanted) - set(TARGETS)
    if unknown or "direct" not in wanted:
        parser.error(f"--targets: choose from {', '.join(TARGETS)}; 'direct' is required")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")

    workdir = ROOT / "var" / "bench"
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(upstream_port),
            "--delay-ms", str(args.delay_ms), "--chunks", str(args.chunks),
            "--chunk-delay-ms", str(args.chunk_delay_ms)]
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "command": "python -m loadtests.bench_overhead " + " ".join(sys.argv[1:]),
        "skipped": {},
    }
    skipped: dict[str, str] = report["skipped"]  # type: ignore[assignment]
    targets: dict[str, tuple[str, str]] = {"direct": (upstream, MODEL)}
    with ExitStack() as stack:
        stack.enter_context(process(fake, f"{upstream}/health"))
        if "slm-gateway" in wanted:
            port = free_port()
            # Plain overhead: `base` requests never classify; loading MiniLM would only slow
            # the start (bench_router measures the classifier). Open (no API keys) like the
            # others: key checks are measured by the unit tests, not here.
            env = gateway_env(port, upstream, ROUTING__CLASSIFIER="false")
            stack.enter_context(process([sys.executable, "-m", "gateway.cli", "serve"],
                                        f"http://127.0.0.1:{port}/readyz", env))
            targets["slm-gateway"] = (f"http://127.0.0.1:{port}", "base")
        if "litellm" in wanted:
            if LITELLM.exists():
                port = free_port()
                cmd, env = litellm_command(port, upstream, MODEL, workdir / "litellm")
                stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/health/liveliness",
                                            env, timeout=120, log=workdir / "litellm.log"))
                targets["litellm"] = (f"http://127.0.0.1:{port}", "base")
            else:
                skipped["litellm"] = f"{LITELLM} not found: run `make bench-deps`"
        if "nginx" in wanted:
            if os.path.exists(NGINX):
                port = free_port()
                stack.enter_context(process(nginx_command(port, upstream_port, workdir / "nginx"),
                                            f"http://127.0.0.1:{port}/health"))
                targets["nginx"] = (f"http://127.0.0.1:{port}", MODEL)
            else:
                skipped["nginx"] = f"{NGINX} not found: run `make bench-deps` (Debian nginx)"
        for name, why in skipped.items():
            print(f"skipping {name}: {why}", file=sys.stderr)

        for mode in modes:
            stream, one_client, api = MODES[mode]
            concurrency = 1 if one_client else args.concurrency
            requests = args.sequential_requests if one_client else args.requests
            summary = asyncio.run(measure(targets, stream=stream, requests=requests,
                                          concurrency=concurrency, rounds=args.rounds, api=api))
            result: dict[str, object] = {"concurrency": concurrency, "targets": summary,
                                         "added": added_latency(summary)}
            result["checks"] = targets_check(result)
            report[mode] = result
            _print_mode(mode, concurrency, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")


def _print_mode(mode: str, concurrency: int, result: dict[str, object]) -> None:
    summary: dict[str, dict[str, float]] = result["targets"]  # type: ignore[assignment]
    added: dict[str, dict[str, float]] = result["added"]  # type: ignore[assignment]
    print(f"\n{mode} ({concurrency} concurrent clients)")
    print(f"{'target':<13}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'+p50':>8}{'+p99':>8}")
    for name, s in summary.items():
        extra = added.get(name)
        tail = f"{extra['p50_ms']:>8.2f}{extra['p99_ms']:>8.2f}" if extra else ""
        print(f"{name:<13}{s['throughput_rps']:>8.0f}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
              f"{s['p99_ms']:>9.2f}{s['errors']:>8.0f}{tail}")
    for check, outcome in result["checks"].items():  # type: ignore[attr-defined]
        print(f"target {check}: {outcome['value']} ({outcome['target']}): "
              f"{'met' if outcome['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
