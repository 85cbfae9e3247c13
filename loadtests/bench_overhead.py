"""Gateway overhead over a direct upstream call, measured side by side in one run.

Starts the fake upstream and ``slm-gateway serve`` in front of it (both on loopback), then sends
the same closed-loop load (``--concurrency`` clients) to each target in alternating rounds, so
drift on this noisy machine hits both alike. Reports latency percentiles and throughput per
target, and the added latency (gateway minus direct) for non-streaming requests (full answer)
and streaming requests (time to first chunk).

    python -m loadtests.bench_overhead [--concurrency 32] [--requests 2000] [--rounds 4]

Results go to ``results/bench_overhead.json``. Only the gateway is measured here; the fake
upstream does no model work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from loadtests.servers import free_port, gateway_env, wait_ready

ROOT = Path(__file__).resolve().parents[1]
BODY = {"messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 8}


@contextmanager
def _process(args: list[str], ready_url: str, env: dict[str, str] | None = None,
             timeout: float = 30) -> Iterator[None]:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(ready_url, timeout, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _batch(session: aiohttp.ClientSession, url: str, model: str, stream: bool,
                 requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    body = json.dumps({**BODY, "model": model, "stream": stream}).encode()
    headers = {"content-type": "application/json"}

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
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

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def measure(targets: dict[str, tuple[str, str]], *, stream: bool, requests: int,
                  concurrency: int, rounds: int) -> dict[str, dict[str, float]]:
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    results: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "elapsed": [], "errors": []} for name in targets
    }
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, model in targets.values():  # warm-up: connections, caches
            await _batch(session, url, model, stream, concurrency * 4, concurrency)
        for _ in range(rounds):
            for name, (url, model) in targets.items():
                lat, errors, elapsed = await _batch(session, url, model, stream,
                                                    requests // rounds, concurrency)
                results[name]["lat"] += lat
                results[name]["elapsed"].append(elapsed)
                results[name]["errors"].append(errors)
    summary: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        lat = [x * 1000 for x in r["lat"]]
        summary[name] = {
            "requests": len(lat),
            "errors": sum(r["errors"]),
            "throughput_rps": len(lat) / sum(r["elapsed"]),
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "mean_ms": statistics.fmean(lat),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per target and mode")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="fake upstream time before answering / first chunk")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_overhead.json")
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    # Plain overhead: `base` requests never classify; loading MiniLM would only slow the start
    # (bench_router measures the classifier).
    env = gateway_env(gateway_port, upstream, ROUTING__CLASSIFIER="false")
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(upstream_port),
            "--delay-ms", str(args.delay_ms), "--chunks", str(args.chunks),
            "--chunk-delay-ms", str(args.chunk_delay_ms)]
    serve = [sys.executable, "-m", "gateway.cli", "serve"]
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "command": "python -m loadtests.bench_overhead " + " ".join(sys.argv[1:]),
    }
    with _process(fake, f"{upstream}/health"), _process(serve, f"{gateway}/readyz", env):
        targets = {
            "direct": (f"{upstream}/v1/chat/completions", "SmolLM2-135M-Instruct"),
            "gateway": (f"{gateway}/v1/chat/completions", "base"),
        }
        for mode, stream in (("non_streaming", False), ("streaming_ttfc", True)):
            summary = asyncio.run(measure(targets, stream=stream, requests=args.requests,
                                          concurrency=args.concurrency, rounds=args.rounds))
            added = {f"added_{k}": summary["gateway"][k] - summary["direct"][k]
                     for k in ("p50_ms", "p95_ms", "p99_ms")}
            report[mode] = {**summary, **added}
            print(f"\n{mode} ({args.concurrency} concurrent clients)")
            print(f"{'target':<9}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
            for name, s in summary.items():
                print(f"{name:<9}{s['throughput_rps']:>9.0f}{s['p50_ms']:>9.2f}"
                      f"{s['p95_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['errors']:>8.0f}")
            print("added by the gateway: " + ", ".join(f"{k} {v:.2f}" for k, v in added.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
