"""The embedded engine on both CPU kinds, and `slm-gateway run` keeping it alive and cleaning up.

On an AVX-512 machine the session's vLLM (conftest) runs the native 4-bit GEMM; the first test
here makes vLLM load its AVX2 kernel library (SLM_GATEWAY_FORCE_ISA through the launcher), as on
an AVX2-only CPU, so both paths are proven on either kind. On an AVX2 machine both run AVX2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from adapters.base_model import BASE_NAME
from gateway.engine import EmbeddedEngine, plan_engine
from gateway.settings import EngineSettings
from loadtests.servers import free_port, wait_ready
from tests.e2e.conftest import CACHE, LOGS, ROOT

pytestmark = pytest.mark.e2e


def kernel_libraries(leader_pid: int) -> set[str]:
    """The vLLM kernel libraries mapped by any process of the engine's process group."""
    found = set()
    for pid in engine_group_alive(leader_pid):
        try:
            maps = psutil.Process(pid).memory_maps()
        except psutil.Error:
            continue
        found |= {Path(m.path).name for m in maps if "vllm/_C" in m.path}
    return found


def chat(url: str, model: str) -> str:
    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a primary color."}]})
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_forced_avx2_engine_serves_the_4bit_base_and_an_adapter_through_the_fallback_gemm(
        base_model: Path, adapter_dirs: dict[str, Path]) -> None:
    settings = EngineSettings(port=free_port(), max_loras=1, max_cpu_loras=2, force_isa="avx2",
                              log_file=LOGS / "e2e-vllm-avx2.log", startup_timeout_s=600)
    plan = plan_engine(settings)
    assert (plan.caps.kernel_library, plan.choice.wna16_gemm) == ("_C_AVX2", "fallback")
    assert plan.choice.quantization == "w4a16" and plan.choice.dtype == "float32"
    engine = EmbeddedEngine(settings, base_model, BASE_NAME, plan=plan)
    engine.start()
    try:
        assert engine.pid is not None
        libraries = kernel_libraries(engine.pid)
        assert "_C_AVX2.abi3.so" in libraries and "_C.abi3.so" not in libraries, libraries
        loaded = httpx.post(f"{engine.url}/v1/load_lora_adapter", timeout=60, json={
            "lora_name": "legal-rand", "lora_path": str(adapter_dirs["legal-rand"])})
        assert loaded.status_code == 200, loaded.text
        base, adapted = chat(engine.url, BASE_NAME), chat(engine.url, "legal-rand")
        assert base.strip() and adapted.strip()
        assert base != adapted  # the (random) LoRA is applied on top of the dense 4-bit weights
    finally:
        engine.close()


# --------------------------------------------------------------------------- slm-gateway run
def run_config(tmp_path: Path, adapter_dirs: dict[str, Path]) -> tuple[Path, str]:
    port = free_port()
    config = {
        "port": port,
        "engine": {"port": free_port(), "max_loras": 1, "max_cpu_loras": 2,
                   "log_file": str(LOGS / "e2e-run-vllm.log"), "startup_timeout_s": 600,
                   "health_interval_s": 1.0, "health_failures_to_restart": 3},
        "routing": {"classifier": False},
        "shadow": {"enabled": False},
        "adapters": {"manifest": None, "allowed_dirs": [str(CACHE)],
                     "entries": [{"name": "legal-rand", "domain": "legal",
                                  "path": str(adapter_dirs["legal-rand"])}]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, f"http://127.0.0.1:{port}"


@pytest.fixture
def run_process(tmp_path: Path, adapter_dirs: dict[str, Path]
                ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    config, url = run_config(tmp_path, adapter_dirs)
    LOGS.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_GATEWAY_")}
    with (LOGS / "e2e-run.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config",
                                 str(config)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def engine_group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if (os.getpgid(proc.pid) == pgid
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def readyz(url: str) -> dict[str, object]:
    try:
        return dict(httpx.get(f"{url}/readyz", timeout=10).json())
    except (httpx.HTTPError, ValueError):
        return {}


def test_run_restarts_a_killed_engine_and_answers_adapter_requests_again(
        run_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = run_process
    # Generous: on a loaded 2-core machine one vLLM start took 300 s (30-70 s when quiet).
    wait_ready(f"{url}/readyz", 900, proc)
    assert chat(url, "legal-rand")
    engine = readyz(url)["engine"]
    assert isinstance(engine, dict) and engine["restarts"] == 0
    first_pid = int(engine["pid"])
    psutil.Process(first_pid).kill()  # SIGKILL: no clean shutdown of vLLM

    deadline = time.monotonic() + 900
    state: dict[str, object] = {}
    while time.monotonic() < deadline:
        state = readyz(url)
        engine = state.get("engine") or {}
        if state.get("status") == "ready" and isinstance(engine, dict) \
                and engine.get("restarts") == 1 and engine.get("state") == "running":
            break
        time.sleep(2)
    else:
        raise AssertionError(f"vLLM not back: {state}")
    assert engine_group_alive(first_pid) == []  # the killed server's EngineCore went too
    # The adapter comes back through the replica resync, with no human action.
    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "legal", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Is a verbal contract binding?"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-adapter"] == "legal-rand"
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'slm_engine_restarts_total{reason="exited"} 1.0' in metrics
    assert "slm_engine_info{" in metrics

    second_pid = int(readyz(url)["engine"]["pid"])  # type: ignore[index]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 15
    while engine_group_alive(second_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_group_alive(second_pid) == []


def test_sigint_during_start_up_exits_with_no_engine_process_left(
        run_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, _ = run_process
    gateway = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    launcher = None
    while launcher is None and time.monotonic() < deadline:
        launcher = next((c for c in gateway.children()
                         if "adapters.vllm_launch" in " ".join(c.cmdline())), None)
        time.sleep(0.5)
    assert launcher is not None, "vLLM was never started"
    time.sleep(5)  # vLLM is now starting (its EngineCore spawning), not ready yet
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 15
    while engine_group_alive(launcher.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_group_alive(launcher.pid) == []
