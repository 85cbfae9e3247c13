"""What shared state costs a request: the gateway with its state in Redis vs in process.

Starts the fake upstream, Debian's ``redis-server`` (loopback, nothing on disk) and two
``slm-gateway serve`` processes in front of the upstream, identical but for
``state.redis_url``. Rate limits are on in both (per-key requests and tokens per minute, set far
above what the run sends, so every request is checked and charged and none refused): with Redis
each request makes its rate-limit round trips to it, which is the per-request cost shared state
adds (the registry and gate are read from memory; Redis is polled once a second). The same
closed-loop load (``--concurrency`` clients) goes to the upstream directly and to both gateways
in alternating rounds, so drift on this shared machine hits all alike; compare the ratios, not
the absolute numbers.

    python -m loadtests.bench_state [--concurrency 32] [--requests 4000] [--rounds 4]

Results go to ``results/bench_state.json``; ``python -m loadtests.report`` renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from loadtests.bench_overhead import added_latency, measure
from loadtests.fake_upstream import MODEL
from loadtests.servers import ROOT, free_port, gateway_env, process, redis_server

TARGETS = ("direct", "in-process", "redis")
# Far above what a run sends (a few thousand requests of ~30 tokens): checked, never refused.
LIMITS = {"LIMITS__REQUESTS_PER_MINUTE": "100000000", "LIMITS__TOKENS_PER_MINUTE": "10000000000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per target")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="fake upstream time before answering")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_state.json")
    args = parser.parse_args()

    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(upstream_port),
            "--delay-ms", str(args.delay_ms)]
    targets: dict[str, tuple[str, str]] = {"direct": (upstream, MODEL)}
    with ExitStack() as stack:
        stack.enter_context(process(fake, f"{upstream}/health"))
        redis_url, _ = stack.enter_context(redis_server())
        for name, extra in (("in-process", {}), ("redis", {"STATE__REDIS_URL": redis_url})):
            port = free_port()
            # `base` requests never classify; no API keys: every request is the one
            # `anonymous` key, the most contended counter there is.
            env = gateway_env(port, upstream, ROUTING__CLASSIFIER="false", **LIMITS, **extra)
            stack.enter_context(process([sys.executable, "-m", "gateway.cli", "serve"],
                                        f"http://127.0.0.1:{port}/readyz", env))
            targets[name] = (f"http://127.0.0.1:{port}", "base")
        summary = asyncio.run(measure(targets, stream=False, requests=args.requests,
                                      concurrency=args.concurrency, rounds=args.rounds))

    failed = {name: row["errors"] for name, row in summary.items() if row["errors"]}
    if failed:  # a refused or broken request measures nothing: never write such a run
        raise SystemExit(f"requests failed: {failed}")
    added = added_latency(summary)
    local, shared = summary["in-process"], summary["redis"]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "command": "python -m loadtests.bench_state " + " ".join(sys.argv[1:]),
        "targets": summary,
        "added": added,
        "ratios": {
            "throughput_redis_to_in_process": shared["throughput_rps"] / local["throughput_rps"],
            "added_p50_ms_redis_minus_in_process": (added["redis"]["p50_ms"]
                                                    - added["in-process"]["p50_ms"]),
            "p99_redis_to_in_process": shared["p99_ms"] / local["p99_ms"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in summary.items():
        print(f"{name:>11}: {row['throughput_rps']:7.0f} req/s  p50 {row['p50_ms']:6.1f} ms  "
              f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']:.0f}")
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
