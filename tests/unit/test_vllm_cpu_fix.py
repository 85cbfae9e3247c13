"""The vLLM-CPU LoRA fix: a token without adapter (index -1) gets no LoRA contribution, where
the unpatched kernel gives it the last slot's adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from adapters.vllm_cpu_fix import _without_wraparound  # noqa: E402


def shrink_rows(shrink: object) -> list[list[float]]:
    # Two slots, rank 1, input size 2: slot 0 = [1, 0], slot 1 (the last) = [0, 1].
    weights = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    inputs = torch.tensor([[3.0, 5.0], [3.0, 5.0]])
    out = torch.zeros(2, 1)
    shrink(inputs, weights, out, torch.tensor([0, -1]), 1.0)  # type: ignore[operator]
    return out.tolist()  # type: ignore[no-any-return]


def test_tokens_without_adapter_get_zero_after_the_fix() -> None:
    original = lora_ops.bgmv_shrink
    if hasattr(original, "_slm_gateway_no_wraparound"):
        pytest.skip("already patched in this process")
    assert shrink_rows(original) == [[3.0], [5.0]]  # the bug: -1 wrapped to the last slot
    assert shrink_rows(_without_wraparound(original)) == [[3.0], [0.0]]
