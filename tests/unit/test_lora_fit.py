"""The shared LoRA loop, the option-likelihood check and the remote-training bundle's expansion
of the served weights (adapters/lora_fit.py, adapters/remote_train.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adapters.lora_fit import ChoiceItem, TrainConfig, batches, choice_accuracy, fit_lora, lr_factor
from adapters.remote_train import expand_linear, expand_q8_0, parse_grid


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True,
                         initializer_range=0.5)  # logits wide enough to learn a token
    return LlamaForCausalLM(config).eval()


def test_batches_cover_the_requested_steps_and_group_similar_lengths() -> None:
    examples = [([1] * n, [0] * (n - 1) + [1]) for n in range(2, 42)]
    config = TrainConfig(steps=13, batch_size=4)
    out = batches(examples, config)
    assert len(out) == 13
    assert all(1 <= len(b) <= 4 for b in out)
    assert batches(examples, config) == out  # seeded


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    config = TrainConfig(steps=100, warmup_steps=5)
    assert lr_factor(0, config) == pytest.approx(0.2)
    assert lr_factor(4, config) == pytest.approx(1.0)
    assert lr_factor(100, config) == pytest.approx(0.1)


def test_fit_lora_lowers_the_answer_loss_and_touches_only_the_chosen_layers() -> None:
    model = _tiny_llama()
    # One fact to learn: after the prompt 5 6 7 comes 9.
    examples = [([5, 6, 7, 9], [0, 0, 0, 1])] * 8
    config = TrainConfig(steps=30, batch_size=4, learning_rate=1e-2, warmup_steps=2,
                         first_layer=1, rank=4, alpha=8)
    fit = fit_lora(model, examples, config, pad_id=0)
    assert fit.layers == [1]
    assert fit.losses[-1] < fit.losses[0] / 2
    names = [n for n, p in fit.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n and "lora_" in n for n in names)


def test_choice_accuracy_picks_the_option_the_model_finds_likelier() -> None:
    model = _tiny_llama()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    likely, unlikely = int(logits.argmax()), int(logits.argmin())
    right = ChoiceItem(context=[5, 6, 7], options=[[unlikely], [likely]],
                       option_texts=["a", "b"], answer=1, method="loglik")
    wrong = ChoiceItem(context=[5, 6, 7], options=[[likely], [unlikely]],
                       option_texts=["a", "b"], answer=1, method="loglik")
    assert choice_accuracy(model, [right], pad_id=0) == 1.0
    assert choice_accuracy(model, [right, wrong], pad_id=0) == 0.5


def test_bundle_expands_packed_4bit_weights_as_compressed_tensors_does() -> None:
    from compressed_tensors.compressors import pack_to_int32

    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, (16, 64), generator=gen, dtype=torch.int8)
    zero = torch.randint(-8, 8, (16, 2), generator=gen, dtype=torch.int8)
    scale = (torch.rand(16, 2, generator=gen) * 0.1).to(torch.bfloat16)
    expected = ((q.float() - zero.float().repeat_interleave(32, 1))
                * scale.float().repeat_interleave(32, 1)).to(torch.bfloat16)
    got = expand_linear(pack_to_int32(q, 4, packed_dim=1), scale,
                        pack_to_int32(zero, 4, packed_dim=0), (16, 64))
    assert torch.equal(got, expected)


def test_bundle_expands_gguf_q8_0_blocks_as_gguf_does() -> None:
    from gguf.quants import GGMLQuantizationType, dequantize, quantize

    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    blocks = quantize(values, GGMLQuantizationType.Q8_0)
    expected = torch.from_numpy(dequantize(blocks, GGMLQuantizationType.Q8_0)).to(torch.bfloat16)
    got = expand_q8_0(torch.from_numpy(blocks.copy()).view(torch.uint8).reshape(-1), (8, 64))
    assert torch.equal(got, expected)


def test_grid_is_parsed_from_steps_learning_rate_first_layer_and_choice_weight() -> None:
    grid = parse_grid("240:3e-4:15,600:2e-4:0:0.5")
    assert [(c.steps, c.learning_rate, c.first_layer, c.choice_weight) for c in grid] == [
        (240, 3e-4, 15, 0.0), (600, 2e-4, 0, 0.5)]
    with pytest.raises(ValueError, match="steps:lr:first_layer"):
        parse_grid("240:3e-4")


def _two_way_items(model: torch.nn.Module) -> list[ChoiceItem]:
    """Items whose right option is the one the untrained model finds least likely."""
    items = []
    for context in ([5, 6, 7], [9, 10, 11], [20, 21, 22]):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context])).logits[0, -1]
        likely, unlikely = int(logits.argmax()), int(logits.argmin())
        items.append(ChoiceItem(context=context, options=[[likely], [unlikely]],
                                option_texts=["a", "b"], answer=1, method="loglik"))
    return items


def test_the_choice_loss_teaches_the_option_the_suite_should_pick() -> None:
    model = _tiny_llama()
    items = _two_way_items(model)
    assert choice_accuracy(model, items, pad_id=0) == 0.0
    # Answer-token examples about something else: alone they do not move these items.
    unrelated = [([30, 31, 32, 33], [0, 0, 0, 1])] * 8
    config = TrainConfig(steps=40, batch_size=4, learning_rate=1e-2, warmup_steps=2,
                         first_layer=0, rank=4, alpha=8, choice_weight=1.0, choice_batch=3)
    fit = fit_lora(model, unrelated, config, pad_id=0, choice_items=items)
    assert len(fit.choice_losses) == 40
    assert fit.choice_losses[-1] < fit.choice_losses[0] / 2
    assert choice_accuracy(fit.model, items, pad_id=0) == 1.0


def test_a_choice_weight_without_choice_items_is_refused() -> None:
    config = TrainConfig(steps=2, choice_weight=1.0)
    with pytest.raises(ValueError, match="multiple-choice items"):
        fit_lora(_tiny_llama(), [([5, 6, 7, 9], [0, 0, 0, 1])], config, pad_id=0)


def test_choice_keys_are_per_character_for_normalised_items() -> None:
    from adapters.lora_fit import choice_keys

    sums = torch.tensor([-4.0, -6.0])
    norm = ChoiceItem(context=[1], options=[[2], [3]], option_texts=["ab", "abcdef"], answer=0,
                      method="loglik_norm")
    plain = dataclasses.replace(norm, method="loglik")
    assert choice_keys(sums, norm).tolist() == [-2.0, -1.0]  # the longer option wins per char
    assert choice_keys(sums, plain).tolist() == [-4.0, -6.0]


def test_option_logprobs_equal_the_full_forward_pass_sums() -> None:
    from adapters.lora_fit import option_logprobs

    model = _tiny_llama()
    item = ChoiceItem(context=[3, 4, 5], options=[[7], [8, 9, 10]], option_texts=["x", "yz"],
                      answer=0, method="loglik")
    expected = []
    for option in item.options:
        ids = torch.tensor([item.context + option])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected.append(sum(float(logp[len(item.context) - 1 + i, t])
                            for i, t in enumerate(option)))
    assert option_logprobs(model, item, pad_id=0) == pytest.approx(expected, abs=1e-4)


def test_answer_perplexity_equals_the_full_forward_pass() -> None:
    from adapters.perplexity import Perplexity, answer_perplexity

    model = _tiny_llama()
    encoded = [([3, 4, 5, 6, 7], [0, 0, 0, 1, 1]), ([8, 9, 10], [0, 1, 1])]
    nll, tokens = 0.0, 0
    for ids, mask in encoded:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        for t in range(1, len(ids)):
            if mask[t]:
                nll -= float(logp[t - 1, ids[t]])
                tokens += 1
    got = answer_perplexity(model, encoded, pad_id=0)
    assert got.tokens == tokens
    assert got.value == pytest.approx(Perplexity(nll=nll / tokens, tokens=tokens).value, rel=1e-4)


def test_a_trial_that_would_pass_the_deadline_is_skipped() -> None:
    from adapters.remote_train import fits_before

    plain = TrainConfig(steps=600)
    choice = TrainConfig(steps=200, choice_weight=1.0)
    assert fits_before(0.0, plain, [], now=1e9)  # no deadline
    assert fits_before(100.0, plain, [], now=99.0)  # nothing timed yet: the first trial runs
    timed: list[dict[str, Any]] = [
        {"config": "current", "calib_accuracy": 0.3},  # untimed: not a basis
        {"steps": 100, "seconds": 10.0, "choice_weight": 0.0}]  # 0.1 s a step
    assert fits_before(100.0, plain, timed, now=30.0)  # ends at 90
    assert not fits_before(100.0, plain, timed, now=50.0)  # would end at 110
    # No choice-loss trial timed yet: judged at three times the plain rate (60 s).
    assert fits_before(100.0, choice, timed, now=30.0)
    assert not fits_before(100.0, choice, timed, now=50.0)


def test_results_of_a_stopped_run_keep_the_finished_trials_of_unfinished_domains(
        tmp_path: Path) -> None:
    import json

    from adapters.remote_train import PARTIAL_DIR, RESULTS_FILE, collect_results

    (tmp_path / RESULTS_FILE).write_text(json.dumps(
        {"base": {"base_id": "b"}, "domains": {"legal": {"domain": "legal", "chosen": "x"}}}))
    (tmp_path / PARTIAL_DIR).mkdir()
    for domain, chosen in (("legal", "stale"), ("physics", "s200"), ("finance", None)):
        (tmp_path / PARTIAL_DIR / f"{domain}.json").write_text(
            json.dumps({"domain": domain, "chosen": chosen}))
    summary = collect_results(tmp_path)
    assert summary["base"] == {"base_id": "b"}
    assert summary["domains"]["legal"]["chosen"] == "x"  # finished: the final result wins
    assert summary["domains"]["physics"] == {"domain": "physics", "chosen": "s200",
                                             "stopped": True}
    assert "finance" not in summary["domains"]  # no trial finished: nothing to import


def test_a_trial_out_of_accelerator_memory_is_recorded_and_the_grid_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import json

    from adapters import remote_train

    checkpoint = tmp_path / "base"
    _tiny_llama().save_pretrained(checkpoint)
    item = ChoiceItem(context=[5, 6, 7], options=[[8], [9]], option_texts=["a", "b"], answer=1,
                      method="loglik")
    encoded = [[[5, 6, 7, 9], [0, 0, 0, 1]]] * 8
    data = {"pad_id": 0, "domains": {"physics": {
        "train": encoded, "held_out": encoded[:2], "choices": [dataclasses.asdict(item)]}}}
    with gzip.open(tmp_path / "data.json.gz", "wt") as fh:
        json.dump(data, fh)
    real_fit = remote_train.fit_lora

    def fit_or_run_out(model: Any, examples: Any, config: TrainConfig, **kwargs: Any) -> Any:
        if config.steps == 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_fit(model, examples, config, **kwargs)

    monkeypatch.setattr(remote_train, "fit_lora", fit_or_run_out)
    job = remote_train.DomainJob(
        domain="physics", checkpoint=str(checkpoint), data_path=str(tmp_path / "data.json.gz"),
        out=str(tmp_path / "run"), max_choices=5, current="",
        grid=(TrainConfig(steps=3, first_layer=1), TrainConfig(steps=2, first_layer=1, rank=2)))
    result = remote_train._run_domain(job)
    assert [t["config"] for t in result["trials"]] == ["s3-lr0.0005-l1", "s2-lr0.0005-l1"]
    assert result["trials"][0]["skipped"] == "out of memory"
    assert result["chosen"] == "s2-lr0.0005-l1"
    assert (tmp_path / "run" / "adapters" / "physics" / "adapter_model.safetensors").exists()
    # Every trial out of memory and no published adapter: nothing chosen, nothing to import.
    alone = dataclasses.replace(job, out=str(tmp_path / "run2"), grid=job.grid[:1])
    assert remote_train._run_domain(alone)["chosen"] is None
    assert remote_train.collect_results(tmp_path / "run2")["domains"] == {}
