"""The ``slm-gateway`` console script.

    slm-gateway run            base model + embedded vLLM-CPU + gateway (what `make run` does)
    slm-gateway serve          the gateway only, in front of existing vLLM servers
    slm-gateway prepare-base   GGUF -> checkpoint, cached
    slm-gateway adapters train --domain D   train a domain LoRA adapter, add it to the manifest
    slm-gateway adapters compare-base       held-out perplexity of the bf16 vs 4-bit base
    slm-gateway adapters list|register|load|unload|promote|canary|retire   the admin API
    slm-gateway adapters init-random   a random LoRA adapter (for tests and smoke runs)
    slm-gateway classify       JSON lines {"text": ...} or {"messages": [...]} in,
                               {"domain", "confidence", "route"} out
    slm-gateway router train   train (or load) the domain classifier for the configured taxonomy
    slm-gateway router tune    retrain the router's MiniLM LoRA adapter (router/published)
    slm-gateway router eval    accuracy, macro-F1, recall, confusion, latency on held-out data
    slm-gateway suite run      general vs domain adapters on the evaluation suite: table, JSON, plot
    slm-gateway gate replay    JSON lines {"domain", "delta"} in, the quality gate per line out
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from gateway.engine import EngineSupervisor
    from router.classifier import DomainClassifier

logger = logging.getLogger("slm_gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # httpx logs every request at INFO, health checks included: too noisy for operators.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _banner(settings: Settings, engine: object = None) -> str:
    url = f"http://{settings.host}:{settings.port}"
    auth = ("  -H 'authorization: Bearer <your key>'"
            if settings.api_keys or settings.api_key_hashes else "")
    warning = ("" if auth else "WARNING: no API keys configured (SLM_GATEWAY_API_KEYS): the API "
               "is open to anyone who can reach it.\n")
    # Who may read the console: see gateway/api/console.py.
    if settings.admin_token is not None:
        console_note = "  (asks for the admin token)"
    elif auth:
        console_note = "  (off until SLM_GATEWAY_ADMIN_TOKEN is set)"
    else:
        console_note = ""
    return warning + (
        f"\nslm-gateway is listening on {url}  (OpenAI base URL: {url}/v1)\n"
        "Try:\n"
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json'{auth} \\\n"
        "    -d '{\"model\": \"auto\", \"messages\": [{\"role\": \"user\", "
        "\"content\": \"What is the capital of France?\"}], \"max_tokens\": 32}'\n"
        f"Models: curl -s {url}/v1/models   Metrics: {url}/metrics   Stop: Ctrl-C\n"
        + (f"Console: {url}/ui/{console_note}\n" if settings.console.enabled else "")
        + (f"Engine: {engine}\n" if engine else "")
    )


def _ensure_port_free(host: str, port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex((host, port)) == 0:
            raise SystemExit(f"error: {host}:{port} is already in use (set {setting})")


def _install_stop_signals() -> None:
    """SIGTERM raises SystemExit and SIGINT KeyboardInterrupt, whatever was inherited, so every
    ``finally`` (stop vLLM, the classifier worker) runs.

    uvicorn handles both while serving and, once shut down, raises the signal again with the
    handler that was there before it started: for SIGTERM that was the default handler, which
    ends the process on the spot and left the classifier worker and vLLM running. A process
    started in the background by a shell inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C/SIGINT during start-up (waiting for vLLM) did nothing.
    """
    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(0)  # a stop on request that cleaned up is a success, like Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _serve(settings: Settings, engine: EngineSupervisor | None = None) -> None:
    import uvicorn

    from gateway.app import create_app

    classifier = _load_classifier(settings)
    executor = None
    if classifier is not None and settings.routing.worker_process:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from router import worker

        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init,
            initargs=(settings.routing.taxonomy_file, settings.routing.cache_dir),
        )
    app = create_app(settings, classifier=classifier, classifier_executor=executor,
                     engine=engine)
    banner = _banner(settings, engine.info()["description"] if engine else None)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                # Everything built so far lives until exit: keep it out of the collector's scans,
                # which otherwise show up as tail-latency spikes under load.
                gc.freeze()
                print(banner, flush=True)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        # SIGTERM: stop accepting, let requests and streams in flight finish within this.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    try:
        _Server(config).run()
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def _load_classifier(settings: Settings) -> DomainClassifier | None:
    """The domain classifier for `auto`, or None when routing.classifier is off."""
    if not settings.routing.classifier:
        logger.warning("domain classifier disabled: `auto` requests go to the general model")
        return None
    return _build_classifier(settings)


def _build_classifier(settings: Settings, *, force: bool = False) -> DomainClassifier:
    """Trained on first use and cached in routing.cache_dir (progress shown)."""
    from router.taxonomy import load_taxonomy
    from router.train import load_or_train

    taxonomy = load_taxonomy(settings.routing.taxonomy_file)
    classifier = load_or_train(
        taxonomy, settings.routing.cache_dir, progress=logger.info, force=force
    )
    classifier.cache_size = settings.routing.cache_size
    return classifier


def cmd_hash_key(args: argparse.Namespace) -> int:
    from gateway.limits import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        print("error: give the key on stdin, e.g. `slm-gateway hash-key < keyfile`",
              file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _install_stop_signals()
    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    _serve(settings)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base
    from adapters.registry import load_manifest, trained_on_other_bases
    from gateway.engine import EmbeddedEngine, EngineStartError, EngineSupervisor, plan_engine

    _install_stop_signals()
    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    engine_settings = settings.engine
    _ensure_port_free(settings.host, settings.port, "SLM_GATEWAY_PORT")
    _ensure_port_free(engine_settings.host, engine_settings.port, "SLM_GATEWAY_ENGINE__PORT")
    plan = plan_engine(engine_settings)
    logger.info("engine: %s (CPU: %s, kernels: %s)", plan.describe(), plan.caps.cpu_model,
                plan.caps.kernel_library)
    model_path = engine_settings.model_path
    if model_path is None:
        prepared = prepare_base(engine_settings.cache_dir, quantization=plan.choice.quantization)
        model_path = prepared.path
        manifest = settings.adapters.manifest
        if manifest is not None and manifest.is_file():
            others = trained_on_other_bases(load_manifest(manifest), prepared.base_id)
            if others:
                logger.warning("adapters trained on another base than %s (served anyway): %s",
                               prepared.base_id, ", ".join(others))
    engine = EmbeddedEngine(engine_settings, model_path, settings.upstream.served_model_name,
                            plan=plan)
    try:
        url = engine.start()
        # The gateway keeps no more adapters registered than this vLLM caches.
        capacity = min(settings.adapters.max_per_replica, engine_settings.max_cpu_loras)
        settings = settings.model_copy(update={
            "upstream": settings.upstream.model_copy(update={
                "urls": [url],
                "tool_calls": (settings.upstream.tool_calls
                               or bool(engine_settings.tool_call_parser)),
            }),
            "adapters": settings.adapters.model_copy(update={"max_per_replica": capacity}),
        })
        supervisor = EngineSupervisor(
            engine, interval_s=engine_settings.health_interval_s,
            failures_to_restart=engine_settings.health_failures_to_restart)
        _serve(settings, engine=supervisor)
    except EngineStartError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    return 0


def cmd_prepare_base(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base

    _setup_logging("info")
    prepared = prepare_base(args.cache_dir, quantization=args.quantization, force=args.force)
    print(prepared.path)
    return 0


def cmd_adapters_init_random(args: argparse.Namespace) -> int:
    from adapters.init_adapter import create_random_adapter

    _setup_logging("info")
    print(create_random_adapter(args.base, args.out, rank=args.rank, seed=args.seed))
    return 0


def cmd_adapters_compare_base(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base
    from adapters.compare import compare_bases, format_table, save

    _setup_logging("info")
    bf16 = prepare_base(args.cache_dir, quantization="none")
    gptq = prepare_base(args.cache_dir, quantization="w4a16")
    results = compare_bases(bf16, gptq, per_domain=args.per_domain)
    print(format_table(results))
    save(results, args.out)
    print(f"\nsaved {args.out}")
    return 0


def adapter_name(domain: str) -> str:
    return f"{domain}-lora"


def cmd_adapters_train(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base
    from adapters.lora_fit import TrainConfig
    from adapters.registry import AdapterEntry, AdapterStatus, load_manifest, upsert, write_manifest
    from adapters.train import train_adapter
    from router.taxonomy import load_taxonomy

    _setup_logging("info")
    domains = load_taxonomy().ids
    wanted = list(domains) if args.domain == "all" else [args.domain]
    unknown = [d for d in wanted if d not in domains]
    if unknown:
        print(f"error: unknown domain {unknown[0]!r} (known: {', '.join(domains)})",
              file=sys.stderr)
        return 2
    base = prepare_base(args.cache_dir)
    config = TrainConfig(steps=args.steps, rank=args.rank)
    for number, domain in enumerate(wanted, 1):
        logger.info("[%d/%d] training the %s adapter", number, len(wanted), domain)
        entries = load_manifest(args.manifest) if args.manifest.is_file() else []
        name = adapter_name(domain)
        versions = [e.version for e in entries if e.name == name]
        version = args.version or (max(versions) + 1 if versions and args.new_version else
                                   max(versions, default=1))
        out_dir = args.out_dir / name / f"v{version}"
        record = train_adapter(base, domain, out_dir, config)
        entry = AdapterEntry(
            name=name, domain=domain, path=out_dir.resolve(), version=version,
            status=AdapterStatus(args.status), base=base.base_id, training=record.summary(),
        )
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(args.manifest, upsert(entries, entry))
        print(json.dumps({"name": name, "version": version, "path": str(out_dir),
                          "perplexity_before": record.perplexity_before,
                          "perplexity_after": record.perplexity_after,
                          "train_loss": record.train_loss, "seconds": record.seconds}),
              flush=True)
    return 0


def cmd_adapters_report(args: argparse.Namespace) -> int:
    from adapters.report import format_markdown, plot, training_report

    report = training_report(args.manifest)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    base_quality = None
    if args.base_quality.is_file():
        base_quality = json.loads(args.base_quality.read_text())
    plot(report, args.plot, base_quality)
    print(format_markdown(report))
    print(f"\nsaved {args.out} and {args.plot}")
    return 0


def cmd_adapters_admin(args: argparse.Namespace) -> int:
    """`adapters list|register|load|unload|promote|canary|retire`: a client of the gateway's
    admin API."""
    import os

    import httpx

    token = args.token or os.environ.get("SLM_GATEWAY_ADMIN_TOKEN")
    if not token:
        print("error: an admin token is needed (--token or SLM_GATEWAY_ADMIN_TOKEN)",
              file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    action = args.adapters_command
    if action == "list":
        method, path, body = "GET", "/admin/adapters", None
    elif action == "register":
        body = {"name": args.name, "domain": args.domain, "path": str(args.path.resolve()),
                "status": args.status}
        if args.version is not None:
            body["version"] = args.version
        method, path = "POST", "/admin/adapters"
    else:
        method, path, body = "POST", f"/admin/adapters/{args.name}/{action}", None
    replica = getattr(args, "replica", None)
    try:
        response = httpx.request(method, url + path, json=body, timeout=args.timeout,
                                 params={"replica": replica} if replica else None,
                                 headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    try:
        payload = response.json()
    except ValueError:
        payload = {"status": response.status_code, "body": response.text[:500]}
    print(json.dumps(payload, indent=2))
    return 0 if response.is_success else 1


def cmd_suite_run(args: argparse.Namespace) -> int:
    """Score the general model and every domain adapter on the suite; table, JSON and plot."""
    import asyncio
    import time

    from adapters.base_model import prepare_base
    from adapters.evaluation.render import suite_items
    from adapters.evaluation.report import format_table, merge_previous, plot, save, summarise
    from adapters.evaluation.suite import run_suite
    from adapters.registry import AdapterStatus, load_manifest
    from gateway.engine import EmbeddedEngine, EngineStartError, plan_engine

    settings = load_settings(args.config)
    _setup_logging("info")
    try:
        items = suite_items(args.domains, per_domain=args.limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = {item.domain for item in items}
    if args.slm_bench:  # SLM-Bench's own data sets from the hub where it has them (network)
        from adapters.evaluation.slm_bench import SOURCES, load_items

        hub = sorted(wanted & set(SOURCES))
        logger.info("suite: SLM-Bench hub data for %s", ", ".join(hub))
        items = [i for i in items if i.domain not in hub] + [
            item for domain in hub for item in load_items(domain, args.limit)]
    manifest = settings.adapters.manifest
    entries = load_manifest(manifest) if manifest is not None and manifest.is_file() else []
    adapters = {e.domain: (e.name, str(e.path)) for e in entries
                if e.status is AdapterStatus.ACTIVE and e.domain in wanted}
    base_model = settings.upstream.served_model_name
    engine = None
    url = args.url
    if url is None:
        engine_settings = settings.engine.model_copy(update={
            "max_cpu_loras": max(len(adapters), settings.engine.max_loras),
            "log_file": Path("var/log/suite-vllm.log")})
        plan = plan_engine(engine_settings)
        engine = EmbeddedEngine(
            engine_settings,
            prepare_base(engine_settings.cache_dir, quantization=plan.choice.quantization).path,
            base_model, plan=plan)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 40) == 0 or done == total:  # about 40 lines a run
            elapsed = time.monotonic() - started
            logger.info("suite: %d/%d scored, %.0f s, ETA %.0f s", done, total, elapsed,
                        elapsed / done * (total - done))

    try:
        if engine is not None:
            url = engine.start()
        logger.info("suite: %d items in %d domains, %d adapters, on %s", len(items), len(wanted),
                    len(adapters), url)
        scores = asyncio.run(run_suite(url, base_model, adapters, items,
                                       concurrency=args.concurrency, progress=progress))
    except EngineStartError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        if engine is not None:
            engine.stop()
    names = {d: name for d, (name, _) in adapters.items()}
    if args.merge and args.out.is_file():
        scores, names = merge_previous(json.loads(args.out.read_text()), scores, names)
    summary = summarise(scores, base_model, names)
    save(summary, scores, args.out)
    plot(summary, args.plot)
    print(format_table(summary))
    print(f"\nsaved {args.out} and {args.plot}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from router.conversation import user_turns

    settings = load_settings(args.config)
    _setup_logging("warning")
    classifier = _build_classifier(settings)
    threshold = settings.routing.confidence_threshold
    bad = 0
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            turns = _classify_input(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            bad += 1
            error = (f"line {number}: expected a JSON object with a string 'text' or OpenAI "
                     f"chat 'messages' ({exc})")
            print(json.dumps({"error": error}), flush=True)
            continue
        # The same logic as the gateway's `auto`: the conversation's user turns, resolved.
        result = classifier.classify_turns(user_turns(turns))
        confident = result.domain is not None and result.confidence >= threshold
        route = result.domain if confident else "base"
        print(json.dumps({"domain": result.domain, "confidence": result.confidence,
                          "route": route}), flush=True)
    return 1 if bad else 0


def _classify_input(record: Any) -> list[tuple[str, str]]:
    """(role, text) pairs of one `classify` input line: {"text": ...} is one user turn."""
    from gateway.protocol import ChatMessage, message_text

    if not isinstance(record, dict):
        raise TypeError("not a JSON object")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise TypeError("'messages' must be a non-empty list")
        parsed = [ChatMessage.model_validate(m) for m in messages]
        return [(m.role, message_text(m.content)) for m in parsed]
    text = record["text"]
    if not isinstance(text, str):
        raise TypeError("'text' must be a string")
    return [("user", text)]


def cmd_router_train(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _setup_logging("info")
    classifier = _build_classifier(settings, force=args.force)
    print(json.dumps(classifier.info, indent=2))
    return 0


def cmd_router_tune(args: argparse.Namespace) -> int:
    from router.data import load_corpus
    from router.taxonomy import load_taxonomy
    from router.train import training_examples
    from router.tune import PUBLISHED_ENCODER, TuneConfig, tune_encoder

    settings = load_settings(args.config)
    _setup_logging("info")
    examples = training_examples(load_taxonomy(settings.routing.taxonomy_file), load_corpus())
    config = TuneConfig()
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs)
    if args.rank is not None:
        config = dataclasses.replace(config, rank=args.rank)
    record = tune_encoder(
        examples, args.out or PUBLISHED_ENCODER, config, progress=lambda m: print(m, flush=True)
    )
    print(json.dumps({k: record[k] for k in ("epochs", "chosen_epoch", "seconds")}, indent=2))
    print("`slm-gateway router train` refits the heads on it (the cache key changed).")
    return 0


def cmd_router_eval(args: argparse.Namespace) -> int:
    from router import evaluate
    from router.data import conversations, load_corpus

    settings = load_settings(args.config)
    _setup_logging("info")
    classifier = _build_classifier(settings)
    threshold = args.threshold if args.threshold is not None else (
        settings.routing.confidence_threshold
    )
    logger.info("scoring held-out sets and timing %d requests", args.latency_samples)
    result = evaluate.evaluate(classifier, load_corpus(), conversations(), threshold,
                               latency_samples=args.latency_samples)
    print(evaluate.format_report(result))
    evaluate.save(result, args.out)
    evaluate.plot(result, args.plot)
    print(f"\nsaved {args.out} and {args.plot}")
    return 0


def _replay_record(line: str) -> tuple[str, float, object]:
    """(domain, delta, version) of one `gate replay` input line; ValueError says what is wrong."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    domain, delta = record.get("domain"), record.get("delta")
    if not isinstance(domain, str) or not domain:
        raise ValueError("'domain' must be a non-empty string")
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise ValueError("'delta' must be a number")
    if not -1.0 <= delta <= 1.0:  # NaN and infinities fail this too
        raise ValueError(f"'delta' must lie in [-1, 1] (paired scores in [0, 1]), got {delta}")
    version = record.get("version")
    if version is not None and (isinstance(version, bool)
                                or not isinstance(version, int | str)):
        raise ValueError("'version' must be an integer or a string when given")
    return domain, float(delta), version


def cmd_gate_replay(args: argparse.Namespace) -> int:
    """Replays paired deltas through the quality gate the gateway runs (its rule from the same
    settings, defaults unless --config or SLM_GATEWAY_* say otherwise). Stops at the first bad
    line with an error on stderr and exit status 1: a replay that skipped lines would show a
    trajectory the gateway never had."""
    from gateway.shadow import gate_rule
    from router.gate import VersionGate

    rule = gate_rule(load_settings(args.config).shadow)
    gates: dict[str, tuple[object, VersionGate]] = {}
    out = sys.stdout
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            domain, delta, version = _replay_record(line)
        except ValueError as exc:
            out.flush()
            print(f"error: line {number}: {exc}", file=sys.stderr)
            return 1
        known = gates.get(domain)
        # A new adapter version starts a new sequence, as in the gateway.
        gate = known[1] if known is not None and known[0] == version else VersionGate.start(rule)
        gate = gate.observe(delta)
        gates[domain] = (version, gate)
        evidence = gate.evidence()
        out.write(json.dumps({"domain": domain, "n": gate.n, "state": gate.state.value,
                              "low": round(evidence.low, 4), "high": round(evidence.high, 4)})
                  + "\n")
    out.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from adapters.evaluation.items import SUITE_PER_DOMAIN  # the standard library only

    parser = argparse.ArgumentParser(prog="slm-gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, help_ in (
        ("run", cmd_run, "start vLLM-CPU with the base model and the gateway in front of it"),
        ("serve", cmd_serve, "start the gateway in front of the configured upstream URLs"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, default=None, help="YAML settings file")
        p.set_defaults(func=func)

    p = sub.add_parser("hash-key", help="print the SHA-256 of an API key read from stdin, for "
                       "api_key_hashes (the config then holds no key)")
    p.set_defaults(func=cmd_hash_key)

    p = sub.add_parser("prepare-base", help="convert the shipped GGUF into a vLLM checkpoint")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    p.add_argument("--quantization", choices=["w4a16", "none"], default="w4a16",
                   help="w4a16: 4-bit GPTQ checkpoint (default, what `run` serves); none: bf16")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_base)

    adapters = sub.add_parser("adapters", help="adapter tools").add_subparsers(
        dest="adapters_command", required=True
    )
    p = adapters.add_parser("init-random", help="write a randomly initialised LoRA adapter")
    p.add_argument("--base", type=Path, required=True, help="prepared base checkpoint dir")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_adapters_init_random)

    from adapters.registry import PUBLISHED_DIR, PUBLISHED_MANIFEST

    p = adapters.add_parser("train", help="train a domain LoRA adapter and register it")
    p.add_argument("--domain", required=True, help="a taxonomy domain id, or 'all'")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    p.add_argument("--out-dir", type=Path, default=PUBLISHED_DIR)
    p.add_argument("--manifest", type=Path, default=PUBLISHED_MANIFEST)
    p.add_argument("--status", choices=["active", "shadow", "canary"], default="active")
    p.add_argument("--version", type=int, default=None, help="default: the current version")
    p.add_argument("--new-version", action="store_true", help="write the next version")
    p.set_defaults(func=cmd_adapters_train)

    def admin_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = adapters.add_parser(name, help=help_)
        p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
        p.add_argument("--token", default=None, help="default: $SLM_GATEWAY_ADMIN_TOKEN")
        p.add_argument("--timeout", type=float, default=120.0)
        p.set_defaults(func=cmd_adapters_admin)
        return p

    admin_parser("list", "list adapters and the replicas they are loaded on")
    p = admin_parser("register", "register (and load) an adapter or a new version of one")
    p.add_argument("--name", required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--path", type=Path, required=True)
    p.add_argument("--status", choices=["active", "shadow", "canary"], default="shadow")
    p.add_argument("--version", type=int, default=None)
    for name, help_ in (("load", "load on every replica (warm-up)"),
                        ("unload", "unload from every replica (reloads on next use)")):
        p = admin_parser(name, help_)
        p.add_argument("name")
        p.add_argument("--replica", default=None, help="only this replica (r0, r1, ...)")
    for name, help_ in (("promote", "make a shadow adapter its domain's active one"),
                        ("canary", "roll an adapter out as its domain's canary"),
                        ("retire", "stop serving an adapter")):
        admin_parser(name, help_).add_argument("name")

    p = adapters.add_parser("report", help="per-domain training report of published adapters")
    p.add_argument("--manifest", type=Path, default=PUBLISHED_MANIFEST)
    p.add_argument("--base-quality", type=Path, default=Path("results/base_quantization.json"),
                   help="compare-base results, plotted alongside when present")
    p.add_argument("--out", type=Path, default=Path("results/adapter_training.json"))
    p.add_argument("--plot", type=Path, default=Path("results/adapter_training.png"))
    p.set_defaults(func=cmd_adapters_report)

    p = adapters.add_parser("compare-base", help="held-out perplexity: bf16 vs 4-bit base")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    p.add_argument("--per-domain", type=int, default=24, help="test items per domain")
    p.add_argument("--out", type=Path, default=Path("results/base_quantization.json"))
    p.set_defaults(func=cmd_adapters_compare_base)

    p = sub.add_parser(
        "classify", help="classify JSON lines {\"text\": ...} or {\"messages\": [...]} from stdin"
    )
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.set_defaults(func=cmd_classify)

    router = sub.add_parser("router", help="domain classifier tools").add_subparsers(
        dest="router_command", required=True
    )
    p = router.add_parser("train", help="train (or load from cache) the domain classifier")
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(func=cmd_router_train)
    p = router.add_parser(
        "tune", help="train the router's MiniLM LoRA adapter on the routing labels (~30 min)"
    )
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to run (default 4); the best on the calib split is kept")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16)")
    p.add_argument("--out", type=Path, default=None,
                   help="adapter directory (default: router/published/minilm-domains)")
    p.set_defaults(func=cmd_router_tune)
    p = router.add_parser("eval", help="evaluate the classifier on the held-out sets")
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold (default: routing.confidence_threshold)")
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("results/router_eval.json"))
    p.add_argument("--plot", type=Path, default=Path("results/router_eval.png"))
    p.set_defaults(func=cmd_router_eval)

    suite = sub.add_parser("suite", help="the 14-domain evaluation suite").add_subparsers(
        dest="suite_command", required=True
    )
    p = suite.add_parser("run", help="score the general model vs each domain adapter")
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument("--domains", type=lambda s: [d for d in s.split(",") if d], default=None,
                   help="comma-separated domain ids (default: all)")
    p.add_argument("--limit", type=int, default=SUITE_PER_DOMAIN,
                   help=f"items per domain (default {SUITE_PER_DOMAIN})")
    p.add_argument("--url", default=None,
                   help="an existing vLLM server (default: start one with the 4-bit base)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--slm-bench", action="store_true",
                   help="use SLM-Bench's data sets from the Hugging Face hub where it has them "
                        "(needs network and `pip install .[hub]`)")
    p.add_argument("--out", type=Path, default=Path("results/suite.json"))
    p.add_argument("--plot", type=Path, default=Path("results/suite.png"))
    p.add_argument("--merge", action="store_true",
                   help="keep the other domains' scores already in --out (re-score some domains)")
    p.set_defaults(func=cmd_suite_run)

    gate = sub.add_parser("gate", help="the quality gate").add_subparsers(
        dest="gate_command", required=True
    )
    p = gate.add_parser(
        "replay", help="replay paired deltas through the quality gate",
        description="Reads JSON lines {\"domain\": str, \"delta\": float in [-1, 1], "
                    "\"version\": optional} (paired specialized - general scores, in arrival "
                    "order) on stdin and writes one line {\"domain\", \"n\", \"state\", "
                    "\"low\", \"high\"} per input: the gate the gateway runs with these "
                    "settings. A change of version starts a new sequence for that domain. "
                    "Stops with exit status 1 at the first bad line.")
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.set_defaults(func=cmd_gate_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
