"""The rollout gate end to end, a few seconds long so the locustfile never rots: real locust,
real gateway process, fake upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtests.servers import ROOT
from tests.system.conftest import fake_upstream, gateway_process


def gate(url: str, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    # Bounded by request count, not by a few seconds: a busy 2-core machine made only 4-6
    # requests in 4-5 s (below min_requests) and failed the "pass" run. run_time is the cap.
    args = [sys.executable, "-m", "loadtests.slo_gate", "--host", url, "--out-dir", str(out),
            "-o", "load.run_time=60s", "-o", "load.max_requests=12", "-o", "load.users=4",
            "-o", "load.spawn_rate=4", "-o", "slo.min_requests=10"]
    for override in overrides:
        args += ["-o", override]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_gate_passes_then_fails_when_a_threshold_is_below_what_the_system_achieves(
    tmp_path: Path,
) -> None:
    with fake_upstream("--delay-ms", "20", "--chunks", "4", "--chunk-delay-ms", "5") as upstream, \
            gateway_process(upstream) as (url, _):
        passed = gate(url, tmp_path / "pass")
        failed = gate(url, tmp_path / "fail", "slo.p95_latency_ms=1")
        responses = gate(url, tmp_path / "responses", "load.responses_share=1.0")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    verdict = json.loads((tmp_path / "pass" / "slo_report.json").read_text())
    assert verdict["passed"] and verdict["observed"]["failures"] == 0
    # Statistics per domain, streams with a time to first token, auto and explicit requests.
    names = set(verdict["per_name"])
    assert any(n.startswith("POST chat/") for n in names)
    assert any(n.startswith("TTFT stream/") for n in names)
    assert verdict["observed"]["p95_ttft_ms"] is not None
    # locust's HTML report is written at exit from the final statistics; its CSV is a snapshot
    # locust rewrites every second, so a run shorter than that may leave it empty of rows.
    assert "stream/" in (tmp_path / "pass" / "locust.html").read_text()
    assert (tmp_path / "pass" / "locust_stats.csv").read_text().startswith("Type,Name")

    assert failed.returncode == 1
    verdict = json.loads((tmp_path / "fail" / "slo_report.json").read_text())
    assert not verdict["passed"]
    assert any("p95 latency" in line for line in verdict["broken"])

    # All traffic through the Responses API, streamed and not.
    assert responses.returncode == 0, responses.stdout[-3000:] + responses.stderr[-3000:]
    verdict = json.loads((tmp_path / "responses" / "slo_report.json").read_text())
    names = set(verdict["per_name"])
    assert any(n.startswith("POST responses/") for n in names)
    assert any(n.startswith("TTFT responses-stream/") for n in names)
    assert not any(n.startswith(("POST chat/", "POST stream/")) for n in names)


def test_gate_refuses_to_run_without_a_ready_system(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "loadtests.slo_gate", "--host",
                             "http://127.0.0.1:9", "--out-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "make run" in result.stderr
