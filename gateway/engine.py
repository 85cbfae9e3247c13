"""The embedded engine: a vLLM OpenAI server run as a child process on loopback.

vLLM is started in its own process group (so a Ctrl-C in the terminal reaches the gateway, which
then stops vLLM in order) with runtime LoRA updates enabled, its log forwarded to a file, and
readiness polled on ``/health`` with a deadline and a clear message when it fails.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from gateway.settings import EngineSettings

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    pass


def vllm_command(settings: EngineSettings, model_path: Path, served_name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        served_name,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
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


def vllm_environment(settings: EngineSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if settings.responses_store:
        env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"
    return env


class EmbeddedEngine:
    def __init__(self, settings: EngineSettings, model_path: Path, served_name: str) -> None:
        self.settings = settings
        self.model_path = model_path
        self.served_name = served_name
        self.url = f"http://{settings.host}:{settings.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start vLLM and block until it answers ``/health``; returns its base URL."""
        log_file = self.settings.log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        command = vllm_command(self.settings, self.model_path, self.served_name)
        logger.info("starting vLLM on %s (log: %s)", self.url, log_file)
        with log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=vllm_environment(self.settings),
                start_new_session=True,
            )
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.settings.startup_timeout_s
        started = time.monotonic()
        last_report = started
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
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
        self.stop()
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

    def stop(self, timeout_s: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        logger.info("stopping vLLM (pid %d)", process.pid)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM did not stop in %.0f s; killing it", timeout_s)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
