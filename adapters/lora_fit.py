"""The LoRA training loop and the option-likelihood check, on already-encoded examples.

Kept apart from ``adapters.train`` (which reads the corpus and the prepared base) so the same
loop runs where neither exists: ``adapters.remote_train`` ships encoded examples and the served
4-bit weights to an accelerator machine and runs exactly this code there. Only torch and peft
are imported, inside the functions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.perplexity import collate, decoder_and_head

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Encoded = tuple[list[int], list[int]]  # token ids, 0/1 mask of the answer tokens


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ALL_LINEAR
    first_layer: int = 15  # LoRA on layers first_layer..last: see adapters.train's docstring
    steps: int = 48
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 5
    max_tokens: int = 256
    eval_items: int = 32
    seed: int = 0
    # Weight of the multiple-choice loss (0: answer tokens only). With w > 0 every step also
    # takes ``choice_batch`` training multiple-choice items and adds w x the cross-entropy of
    # the option scores the suite picks by (summed or per-character log-likelihood): the
    # answer-token loss alone raises the right option's likelihood but never lowers the wrong
    # ones', and the suite compares exactly those.
    choice_weight: float = 0.0
    choice_batch: int = 8


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item as the suite scores it: the chat context with the assistant turn
    opened, then each option's tokens; the pick is by summed (``loglik``) or per-character
    (``loglik_norm``) log-probability, as ``adapters.evaluation.scoring.pick_option``."""

    context: list[int]
    options: list[list[int]]
    option_texts: list[str]
    answer: int
    method: str


@dataclass
class FitResult:
    model: Any  # the peft model, in eval mode
    trainable: list[Any]
    layers: list[int]
    losses: list[float] = field(default_factory=list)
    choice_losses: list[float] = field(default_factory=list)  # the multiple-choice part, if any
    tokens: int = 0


def batches(examples: Sequence[Encoded], config: TrainConfig) -> list[list[Encoded]]:
    """``config.steps`` batches: epochs of shuffled data, similar lengths batched together."""
    rng = random.Random(config.seed)
    out: list[list[Encoded]] = []
    while len(out) < config.steps:
        order = list(examples)
        rng.shuffle(order)
        window = config.batch_size * 8
        epoch: list[list[Encoded]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda e: len(e[0]))
            epoch.extend(
                chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)
            )
        rng.shuffle(epoch)
        out.extend(epoch)
    return out[: config.steps]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the learning rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))


def fit_lora(
    model: Any,
    examples: Sequence[Encoded],
    config: TrainConfig,
    *,
    pad_id: int,
    choice_items: Sequence[ChoiceItem] = (),
    label: str = "",
    progress: Callable[[str], None] = lambda line: None,
) -> FitResult:
    """Wrap ``model`` with a fresh LoRA (layers ``first_layer``..last) and train it for
    ``config.steps`` batches; the loss is on answer tokens, and the vocabulary projection runs
    only there (a fifth of the compute on CPU). With ``config.choice_weight`` > 0 the
    multiple-choice loss over ``choice_items`` (training split) is added."""
    import time

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    layers = list(range(config.first_layer, model.config.num_hidden_layers))
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            target_modules=list(config.target_modules),
            layers_to_transform=layers,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    if config.choice_weight > 0 and not choice_items:
        raise ValueError("choice_weight > 0 needs training multiple-choice items")
    choices = choice_batches(choice_items, config) if config.choice_weight > 0 else None
    decoder, head = decoder_and_head(peft_model)
    result = FitResult(model=peft_model, trainable=trainable, layers=layers)
    started = time.monotonic()
    peft_model.train()
    for step, batch in enumerate(batches(examples, config), 1):
        input_ids, attention, scored = (t.to(device) for t in collate(batch, pad_id))
        hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
        keep = scored[:, 1:]  # position t predicts token t+1
        logits = head(hidden[:, :-1][keep]).float()
        loss: Any = torch.nn.functional.cross_entropy(logits, input_ids[:, 1:][keep])
        if choices is not None:
            picked = next(choices)
            keys = [choice_keys(sums, item)
                    for sums, item in zip(option_sums(decoder, head, picked, pad_id), picked,
                                          strict=True)]
            choice_loss = torch.stack([
                torch.nn.functional.cross_entropy(k.unsqueeze(0), k.new_tensor([i.answer]).long())
                for k, i in zip(keys, picked, strict=True)]).mean()
            result.choice_losses.append(round(choice_loss.item(), 4))
            loss = loss + config.choice_weight * choice_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(round(loss.item(), 4))
        result.tokens += int(attention.sum())
        if step % 5 == 0 or step == config.steps:
            elapsed = time.monotonic() - started
            eta = elapsed / step * (config.steps - step)
            recent = sum(result.losses[-5:]) / len(result.losses[-5:])
            last = result.choice_losses[-5:]
            choice = f" (choice {sum(last) / len(last):.3f})" if last else ""
            progress(
                f"{label}step {step}/{config.steps} loss {recent:.3f}{choice} "
                f"{result.tokens / elapsed:.0f} tok/s, ETA {eta:.0f} s"
            )
    peft_model.eval()
    return result


def choice_batches(items: Sequence[ChoiceItem], config: TrainConfig) -> Iterator[list[ChoiceItem]]:
    """Endless batches of ``config.choice_batch`` items, epochs shuffled (seeded)."""
    rng = random.Random(config.seed + 1)
    while True:
        order = list(items)
        rng.shuffle(order)
        for start in range(0, len(order), config.choice_batch):
            yield order[start : start + config.choice_batch]


def option_sums(decoder: Any, head: Any, items: Sequence[ChoiceItem], pad_id: int) -> list[Any]:
    """Per item, a tensor of each option's summed log-probability after the item's context: all
    options of all ``items`` in one forward pass, the vocabulary projection only at option
    positions. Differentiable (the caller decides about ``no_grad``)."""
    import torch

    device = next(head.parameters()).device
    rows = [(item.context + option, [0] * len(item.context) + [1] * len(option))
            for item in items for option in item.options]
    input_ids, attention, scored = (t.to(device) for t in collate(rows, pad_id))
    keep = scored[:, 1:]
    hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
    logp = torch.log_softmax(head(hidden[:, :-1][keep]).float(), dim=-1)
    token_lp = logp.gather(-1, input_ids[:, 1:][keep].unsqueeze(-1)).squeeze(-1)
    row = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(len(rows), device=device).index_add(0, row, token_lp)
    return list(torch.split(sums, [len(item.options) for item in items]))


def choice_keys(sums: Any, item: ChoiceItem) -> Any:
    """What the suite compares options by (``pick_option``): the summed log-probability, or per
    character of the option text for ``loglik_norm``."""
    from adapters.evaluation.scoring import option_divisors

    return sums / sums.new_tensor(option_divisors(item.option_texts, item.method))


def option_logprobs(model: Any, item: ChoiceItem, *, pad_id: int) -> list[float]:
    """Each option's summed log-probability after the item's context."""
    import torch

    decoder, head = decoder_and_head(model)
    with torch.no_grad():
        (sums,) = option_sums(decoder, head, [item], pad_id)
    return [float(v) for v in sums]


def choice_accuracy(model: Any, items: Sequence[ChoiceItem], *, pad_id: int) -> float:
    """Share of items whose picked option is the answer (the suite's likelihood scoring)."""
    from adapters.evaluation.scoring import pick_option

    if not items:
        return float("nan")
    right = 0
    for item in items:
        logprobs = option_logprobs(model, item, pad_id=pad_id)
        right += pick_option(logprobs, item.option_texts, item.method) == item.answer
    return right / len(items)
