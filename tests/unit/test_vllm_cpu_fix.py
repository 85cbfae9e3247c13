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


# --- The W4A16 fallback GEMM (AVX2 kernel library has no cpu_gemm_wna16) ----------------------

def _quantized_layer(out_features: int = 64, in_features: int = 128, seed: int = 0) -> tuple[
        torch.nn.Module, torch.Tensor]:
    """A layer in compressed-tensors pack-quantized layout (as vLLM loads it), packed with
    compressed-tensors itself, and the weight it stands for: (q - zero) * scale."""
    from compressed_tensors.compressors import pack_to_int32

    from adapters.quantize import GROUP_SIZE, quantize_rtn

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen) * 0.05
    dequantized, scale, zero = quantize_rtn(weight)
    q = torch.clamp(torch.round(weight / scale.repeat_interleave(GROUP_SIZE, 1)
                                + zero.repeat_interleave(GROUP_SIZE, 1)), -8, 7)
    layer = torch.nn.Module()

    def param(data: torch.Tensor, **dims: int) -> torch.nn.Parameter:
        p = torch.nn.Parameter(data, requires_grad=False)
        for name, value in dims.items():
            setattr(p, name, value)
        return p

    layer.weight_packed = param(pack_to_int32(q.to(torch.int8), 4, packed_dim=1),
                                input_dim=1, output_dim=0, packed_dim=1)
    layer.weight_scale = param(scale.float(), output_dim=0, input_dim=1)
    layer.weight_zero_point = param(pack_to_int32(zero.to(torch.int8), 4, packed_dim=0),
                                    output_dim=0, packed_dim=0, input_dim=1)
    return layer, dequantized


def _kernel(out_features: int = 64, in_features: int = 128,
            dtype: torch.dtype = torch.float32) -> object:
    from vllm.model_executor.kernels.linear.mixed_precision.cpu import CPUWNA16LinearKernel
    from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import (
        MPLinearLayerConfig,
    )
    from vllm.scalar_type import scalar_types

    config = MPLinearLayerConfig(
        full_weight_shape=(in_features, out_features),
        partition_weight_shape=(in_features, out_features),
        weight_type=scalar_types.uint4, act_type=dtype, group_size=32, zero_points=True)
    return CPUWNA16LinearKernel(config, w_q_param_name="weight_packed",
                                w_s_param_name="weight_scale",
                                w_zp_param_name="weight_zero_point")


def test_fallback_gemm_serves_exactly_the_4bit_weights_compressed_tensors_packed() -> None:
    from adapters.vllm_cpu_fix import dense_apply_weights, dense_process_weights

    layer, expected = _quantized_layer()
    kernel = _kernel()
    dense_process_weights(kernel, layer)
    assert torch.allclose(layer.slm_dense_weight, expected, atol=1e-6)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(64)
    out = dense_apply_weights(kernel, layer, x, bias)
    assert torch.allclose(out, x @ expected.T + bias, atol=1e-5)


def test_fallback_gemm_matches_the_native_kernel_where_the_library_has_it() -> None:
    from vllm import _custom_ops  # noqa: F401  (loads this machine's kernel library)

    from adapters.vllm_cpu_fix import dense_apply_weights, dense_process_weights

    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        pytest.skip("this machine's vLLM-CPU library has no cpu_gemm_wna16 (AVX2): "
                    "the test above checks the fallback against compressed-tensors instead")
    # The native op implements bf16 activations (not float32: that is the fallback's job).
    native_layer, _ = _quantized_layer(seed=3)
    fallback_layer, _ = _quantized_layer(seed=3)
    for layer in (native_layer, fallback_layer):
        layer.weight_scale.data = layer.weight_scale.data.to(torch.bfloat16)
    kernel = _kernel(dtype=torch.bfloat16)
    kernel.process_weights_after_loading(native_layer)  # type: ignore[attr-defined]
    dense_process_weights(kernel, fallback_layer)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    native = kernel.apply_weights(native_layer, x)  # type: ignore[attr-defined]
    fallback = dense_apply_weights(kernel, fallback_layer, x)
    assert torch.allclose(native.float(), fallback.float(), atol=2e-2, rtol=2e-2)


# --- LoRA fast path: one adapter (or none) for every token of the step -------------------------

def _stacked(slots: int, rank: int, sizes: tuple[int, ...], hidden: int, seed: int
             ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(slots, 1, rank, hidden, generator=gen) for _ in sizes)
    b = tuple(torch.randn(slots, 1, size, rank, generator=gen) for size in sizes)
    return a, b


def _vllm_lora_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                      b: tuple[torch.Tensor, ...], scale: float, sizes: tuple[int, ...],
                      indices: torch.Tensor) -> None:
    """vLLM-CPU's decode path (punica_cpu.add_lora_linear with bgmv ops), slice by slice."""
    offset = 0
    for a_i, b_i, size in zip(a, b, sizes, strict=True):
        buffer = torch.zeros(x.shape[0], a_i.shape[-2], dtype=torch.float32)
        lora_ops.bgmv_shrink(x, a_i, buffer, indices, scale)
        lora_ops.bgmv_expand_slice(buffer, b_i, y, indices, offset, size, True)
        offset += size


def test_one_adapter_fast_path_adds_what_vllms_lora_kernels_add() -> None:
    from adapters.vllm_cpu_fix import lora_linear_one_adapter

    sizes, hidden = (48, 16, 16), 64  # a merged q/k/v projection
    a, b = _stacked(slots=3, rank=8, sizes=sizes, hidden=hidden, seed=4)
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(5))
    base = torch.randn(5, sum(sizes), generator=torch.Generator().manual_seed(6))
    expected, fast = base.clone(), base.clone()
    _vllm_lora_linear(expected, x, a, b, 0.5, sizes, torch.full((5,), 2))
    lora_linear_one_adapter(fast, x, a, b, 0.5, sizes, slot=2)
    assert not torch.allclose(expected, base)  # the adapter did change the output
    assert torch.allclose(fast, expected, atol=1e-4, rtol=1e-4)


def test_uniform_index_names_the_shared_slot_or_none_for_mixed_steps() -> None:
    from adapters.vllm_cpu_fix import uniform_index

    assert uniform_index(torch.tensor([1, 1, 1])) == 1
    assert uniform_index(torch.tensor([-1, -1])) == -1  # base requests only: LoRA skipped
    assert uniform_index(torch.tensor([0, -1, 0])) is None  # mixed: vLLM's path
    assert uniform_index(torch.tensor([], dtype=torch.long)) == -1


def test_the_scorer_and_the_plugin_agree_on_the_cacheable_prefix_argument() -> None:
    from adapters import vllm_cpu_fix
    from adapters.evaluation import suite

    assert suite.CACHEABLE_PREFIX_ARG == vllm_cpu_fix.CACHEABLE_PREFIX_ARG
