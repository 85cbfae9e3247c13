"""Randomly initialised LoRA adapters, for smoke and end-to-end tests of the serving path.

A random adapter is a real peft LoRA (same file format, same vLLM loading path as a trained one)
whose weights carry no knowledge. Both A and B are random (peft's default leaves B at zero, which
would make the adapter an exact no-op), so its answers differ visibly from the base model's.
Never register one as a production adapter: ``adapters train`` makes those.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def create_random_adapter(
    base_path: Path,
    out_dir: Path,
    *,
    rank: int = 8,
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
    seed: int = 0,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from adapters.base_model import load_causal_lm

    torch.manual_seed(seed)
    model, _ = load_causal_lm(base_path, dtype="float32")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    logger.info("random LoRA adapter (rank %d, seed %d) written to %s", rank, seed, out_dir)
    return out_dir
