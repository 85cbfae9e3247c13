"""Helpers to run local servers for benchmarks and end-to-end tests (loopback only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s} s")


def gateway_env(port: int, upstream: str, **settings: str) -> dict[str, str]:
    """This process's environment minus any SLM_GATEWAY_* the caller has, plus a gateway on
    ``port`` in front of ``upstream``; ``settings`` are further SLM_GATEWAY_<KEY> overrides.
    The shadow evaluator is off unless asked for (SHADOW__ENABLED="true"): benchmarks measure
    user traffic alone, except the one that measures the shadow loop's cost."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_GATEWAY_")}
    env.update({"SLM_GATEWAY_PORT": str(port),
                "SLM_GATEWAY_UPSTREAM__URLS": json.dumps([upstream]),
                "SLM_GATEWAY_LOG_LEVEL": "warning",
                "SLM_GATEWAY_SHADOW__ENABLED": "false"})
    env.update({f"SLM_GATEWAY_{key}": value for key, value in settings.items()})
    return env
