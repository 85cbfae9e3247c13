"""Perplexity of held-out domain text under a checkpoint (optionally with a LoRA adapter).

Used to compare the 4-bit base with the bf16 one and an adapter with its base, before the
evaluation suite scores answers. Texts are chat conversations rendered with the model's own
template; only the assistant's tokens are scored when ``answer_only`` is set (the perplexity of
reference answers), otherwise every token after the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Conversation = Sequence[dict[str, str]]


@dataclass(frozen=True)
class Perplexity:
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int

    @property
    def value(self) -> float:
        return math.exp(self.nll)


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded (input ids, attention mask, scored-token mask) tensors of encoded texts."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, mask) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        scored[row, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return input_ids, attention, scored


def encode_conversation(
    tokenizer: Any, messages: Conversation, *, max_tokens: int = 512
) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a 0/1 mask of the assistant's answer tokens."""
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    prompt = tokenizer.apply_chat_template(
        list(messages[:-1]), tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = tokenizer(full, add_special_tokens=False)["input_ids"][:max_tokens]
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    mask = [0 if i < prompt_len else 1 for i in range(len(ids))]
    return ids, mask


def perplexity(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    answer_only: bool = True,
    batch_size: int = 8,
) -> Perplexity:
    if answer_only:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded = [encode_conversation(tokenizer, c) for c in conversations]
        return answer_perplexity(model, encoded, pad, batch_size=batch_size)
    return score_conversations(model, tokenizer, conversations, batch_size=batch_size)[1]


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder stack and the vocabulary projection of a causal LM, LoRA layers included
    (peft injects them into the wrapped model's modules)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.model, causal_lm.lm_head


def answer_perplexity(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, *,
    batch_size: int = 8,
) -> Perplexity:
    """Perplexity of the answer tokens of encoded conversations (:func:`encode_conversation`),
    the 49k-word vocabulary projected only at those positions (most of the CPU time else)."""
    import torch

    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            ids, attention, scored = (
                t.to(device) for t in collate(encoded[start : start + batch_size], pad_id))
            hidden = decoder(input_ids=ids, attention_mask=attention).last_hidden_state
            keep = scored[:, 1:]  # token t is predicted from position t-1
            nll += float(torch.nn.functional.cross_entropy(
                head(hidden[:, :-1][keep]).float(), ids[:, 1:][keep], reduction="sum"))
            tokens += int(keep.sum())
    if tokens == 0:
        raise ValueError("no answer tokens to score")
    return Perplexity(nll=nll / tokens, tokens=tokens)


def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    batch_size: int = 8,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[Perplexity, Perplexity]:
    """(answer tokens, every token) perplexity from one forward pass per batch."""
    import torch

    encoded = [encode_conversation(tokenizer, c) for c in conversations]
    sums = {"answer": 0.0, "whole": 0.0}
    counts = {"answer": 0, "whole": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            input_ids, attention, scored = collate(encoded[start : start + batch_size], pad)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            # Token t is predicted from position t-1.
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            target = input_ids[:, 1:]
            nll = -logprobs.gather(-1, target[..., None])[..., 0]
            real = attention[:, 1:].bool()
            for key, keep in (("answer", scored[:, 1:] & real), ("whole", real)):
                sums[key] += float(nll[keep].sum())
                counts[key] += int(keep.sum())
            progress(min(start + batch_size, len(encoded)), len(encoded))
    if counts["answer"] == 0:
        raise ValueError("no answer tokens to score")
    answer = Perplexity(nll=sums["answer"] / counts["answer"], tokens=counts["answer"])
    whole = Perplexity(nll=sums["whole"] / counts["whole"], tokens=counts["whole"])
    return answer, whole
