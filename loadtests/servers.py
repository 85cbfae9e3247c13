"""Helpers to run local servers for benchmarks and end-to-end tests (loopback only)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


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


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None,
            timeout: float = 30, log: Path | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (from the repository root) until the block ends, yielding the process once
    ``ready_url`` answers 200. Output goes to ``log`` (default: discarded)."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)  # var/ is not in a fresh clone
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready_url, timeout, proc)
        yield proc
    finally:
        stop(proc, timeout=30)
        if log is not None:
            out.close()  # type: ignore[union-attr]


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's redis-server on loopback and a free port, keeping nothing on disk (no RDB
    snapshots, no append-only file); yields (URL, process), stopped on every exit path."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise FileNotFoundError("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    proc = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        stop(proc, timeout=10)


# --------------------------------------------------------------- other proxies, for comparison
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"


def nginx_command(port: int, upstream_port: int, workdir: Path) -> list[str]:
    """A plain nginx reverse proxy to ``upstream_port`` (one worker, pooled upstream
    connections, no buffering so streams pass through as they come): the practical floor."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream fake {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return [NGINX, "-c", str(conf), "-p", str(workdir)]


def litellm_command(port: int, upstream: str, model: str, workdir: Path) -> tuple[list[str],
                                                                                   dict[str, str]]:
    """LiteLLM's proxy (its own venv, `make bench-deps`) with one model, ``base``, served by
    ``upstream`` as an OpenAI-compatible endpoint; one worker, like the gateway and nginx."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "litellm.yaml"
    conf.write_text(
        "model_list:\n"
        "  - model_name: base\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM")}
    # No network here: use the packaged model-cost map instead of fetching it.
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
    args = [str(LITELLM), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--telemetry", "False"]
    return args, env
