"""The app factory. Nothing happens at import; the lifespan owns every long-lived collaborator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor

import httpx
from fastapi import FastAPI
from httpx_aiohttp import AiohttpTransport

from adapters.evaluation.items import SuiteItem, load_suite
from adapters.lifecycle import AdapterManager
from adapters.registry import Registry, load_manifest
from gateway.api import admin, console, health, openai
from gateway.api.guard import Guard
from gateway.canary import LatencyBook
from gateway.classify import ClassifierService
from gateway.console import TrafficWindow
from gateway.engine import EngineSupervisor
from gateway.errors import install_error_handlers
from gateway.fleet import AdapterFleet
from gateway.gates import GateState
from gateway.limits import Admission, KeyRing
from gateway.metrics import ENDPOINT_LABELS, NONE, Metrics
from gateway.proxy import Gateway
from gateway.responses import LocalResponseDirectory
from gateway.settings import Settings
from gateway.shadow import ShadowEvaluator
from gateway.state import SHADOW_ROLE, StateBackend, open_backend
from gateway.state.lease import Leadership
from gateway.state.sync import StateSync
from gateway.upstream import ReplicaPool
from router.classifier import BatchClassifier, FullStageBudget
from router.taxonomy import load_taxonomy

logger = logging.getLogger(__name__)


def build_registry(settings: Settings) -> Registry:
    taxonomy = load_taxonomy(settings.routing.taxonomy_file)
    config = settings.adapters
    entries = load_manifest(config.manifest) if config.manifest is not None else []
    return Registry(
        [*entries, *config.entries],
        domains=taxonomy.ids,
        reserved_names=settings.base_aliases(),
        allowed_dirs=config.allowed_dirs,
    )


def instance_id() -> str:
    """This gateway process among its fleet (lease holder, logs, /readyz): host, pid, random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    classifier: BatchClassifier | None = None,
    classifier_executor: Executor | None = None,
    metrics: Metrics | None = None,
    shadow_items: Sequence[SuiteItem] | None = None,
    engine: EngineSupervisor | None = None,
    state: StateBackend | None = None,
) -> FastAPI:
    """Build the gateway. ``transport`` lets tests put a fake upstream behind httpx.

    ``classifier`` serves `auto` (None: `auto` goes to the general model); with
    ``classifier_executor`` (a process pool initialised by ``router.worker.init``) batches are
    classified in that process and only the cache lives here. ``shadow_items``: the shadow
    evaluator's items (default: the evaluation suite, rendered in a child process at start).
    ``engine``: the embedded vLLM's supervisor (`slm-gateway run`), run as a lifespan task
    when ``settings.engine.supervise``; its configuration shows in /readyz and metrics.
    ``state``: the state backend (default: as ``settings.state`` says); tests share one
    :class:`gateway.state.memory.MemoryState` between several apps.
    """
    # Validate the registry now, so a bad config fails before the server binds.
    registry = build_registry(settings)
    keys = KeyRing((k.get_secret_value() for k in settings.api_keys), settings.api_key_hashes)
    caps = settings.limits
    metrics = metrics or Metrics()
    up = settings.upstream
    service = None
    if classifier is not None:
        service = ClassifierService(
            classifier,
            metrics,
            max_batch=settings.routing.max_batch,
            max_full=settings.routing.max_full_per_batch,
            budget=FullStageBudget(settings.routing.full_stage_cpu_share),
            executor=classifier_executor,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(
            connect=up.connect_timeout_s,
            read=up.read_timeout_s,
            write=up.write_timeout_s,
            pool=up.pool_timeout_s,
        )
        limits = httpx.Limits(
            max_connections=up.max_connections,
            max_keepalive_connections=up.max_connections,
            keepalive_expiry=60.0,
        )
        # httpx's own pool scans every pooled connection on each request (O(n) syscalls), which
        # capped the gateway at ~250 req/s with 32 clients; aiohttp's pool behind the same httpx
        # API does not (see loadtests/bench_overhead.py). Tests pass a MockTransport instead.
        upstream_transport = transport or AiohttpTransport(limits=limits)
        backend = state or open_backend(settings.state, metrics)
        await backend.start()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(backend.close)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=upstream_transport, timeout=timeout))
            loader = AdapterManager(
                client,
                timeout_s=settings.adapters.load_timeout_s,
                capacity=settings.adapters.max_per_replica,
            )
            pool = ReplicaPool(
                up.base_urls(), client, metrics, health_interval_s=up.health_interval_s,
                breaker_failures=up.breaker_failures, breaker_cooldown_s=up.breaker_cooldown_s,
            )
            fleet = AdapterFleet(settings, pool, loader, metrics, registry, backend)
            gate = GateState(metrics, settings.canary.initial_share)
            latency = LatencyBook(settings.canary.latency_window)
            fleet.on_change(gate.follow)  # verdicts are per version: follow the active ones
            await fleet.seed()  # the stored registry, or ours stored as its first version
            gateway = Gateway(
                settings=settings,
                client=client,
                transport=upstream_transport,
                pool=pool,
                fleet=fleet,
                gate=gate,
                metrics=metrics,
                classifier=service,
                keys=keys,
                state=backend,
                responses=LocalResponseDirectory(up.response_owners),
                limiter=backend.limiter(caps.requests_per_minute, caps.tokens_per_minute),
                admission=Admission(caps.max_in_flight, caps.max_queue, caps.queue_timeout_s),
                latency=latency,
            )
            # A replica that comes (back) up gets the active adapters loaded again.
            pool.on_restart = fleet.on_replica_up
            tasks = []
            holder = instance_id()
            shadow = None
            if settings.shadow.enabled:
                shadow = ShadowEvaluator(
                    fleet, gate, client, settings.shadow, metrics,
                    general_model=up.served_model_name,
                    user_load=lambda: sum(r.outstanding for r in pool.replicas),
                    state=backend, holder=holder,
                    evidence_interval_s=settings.state.evidence_interval_s,
                    canary=settings.canary, latencies=latency.recent,
                    items=shadow_items, load_items=lambda n: load_suite(per_domain=n))
                gateway.shadow = shadow
                gateway.leadership = Leadership(backend, SHADOW_ROLE, holder,
                                                settings.state.lease_ttl_s, metrics)
            if backend.shared:
                leadership = gateway.leadership
                sync = StateSync(backend, fleet, gate, settings.state.poll_interval_s,
                                 leading=lambda: leadership is not None and leadership.leading)
                tasks.append(asyncio.create_task(sync.run(), name="state-sync"))
            app.state.gateway = gateway
            if keys.open:
                logger.warning(
                    "NO API KEYS CONFIGURED: /v1/* is open to anyone who can reach %s:%d. Set "
                    "SLM_GATEWAY_API_KEYS (comma-separated) before exposing it.",
                    settings.host, settings.port)
            if service is not None:
                await service.warm_up()
            await pool.check_all()
            if not pool.ready():
                logger.warning("no upstream is ready yet: %s", ", ".join(up.base_urls()))
            tasks.append(asyncio.create_task(pool.run_health_loop(), name="replica-health"))
            if engine is not None:
                gateway.engine = engine
                if engine.engine.plan is not None:
                    labels = engine.engine.plan.choice.labels(engine.engine.plan.caps)
                    metrics.engine_info.labels(**labels).set(1)
                engine.on_restart = lambda reason: metrics.engine_restarts.labels(reason).inc()
                if settings.engine.supervise:
                    tasks.append(asyncio.create_task(engine.run(), name="engine-supervisor"))
            if shadow is not None and gateway.leadership is not None:
                # One evaluator per fleet: this instance runs it while it holds the lease.
                tasks.append(asyncio.create_task(gateway.leadership.run(shadow.lead),
                                                 name="shadow-leadership"))
            if settings.console.enabled:
                window = app.state.console_window = TrafficWindow(metrics, settings.console)
                tasks.append(asyncio.create_task(window.run(), name="console-snapshots"))
            try:
                yield
            finally:
                for task in (*tasks, *gateway.background_tasks()):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def count_invalid(path: str) -> None:
        endpoint = ENDPOINT_LABELS.get(path)
        if endpoint is not None:  # only known paths: the label set stays bounded
            metrics.requests.labels(endpoint, NONE, NONE, NONE, "4xx").inc()

    app = FastAPI(title="slm-gateway", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        Guard, keys=keys, max_body_bytes=caps.max_body_bytes,
        protect_probes=settings.protect_probes,
        on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
    )
    install_error_handlers(app, on_invalid=count_invalid)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    if settings.console.enabled:
        console.install(app)
    return app
