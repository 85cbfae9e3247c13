"""The adapters across the replicas: which exist (the registry), where they are loaded, and every
change to either. Used by the request path (placement, pinning), the admin API and the shadow
evaluator alike.

The registry is **desired state** kept in the state backend (:mod:`gateway.state`) with a
version. An admin change is written there first (a versioned compare-and-set: a lost race is
retried on the winner's registry), then swapped in here and carried out on the replicas. Other
instances see the new version within ``state.poll_interval_s`` (:meth:`AdapterFleet.refresh`)
and converge: they load, upgrade and unload on their replicas what the change implies
(:meth:`AdapterFleet.converge`). The first instance to start on an empty store seeds it from the
manifest and config; from then on the stored registry wins over the manifest.

Fleet-wide unloads (``POST /admin/adapters/{name}/unload``) are part of the document as a short
list of numbered events, since an unload changes no entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from adapters.lifecycle import AdapterLoadError, AdapterManager
from adapters.registry import AdapterEntry, AdapterStatus, Registry, RegistryError
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.state import StaleWrite, StateBackend, StateUnavailable
from gateway.upstream import Replica, ReplicaPool, choose_replica
from router.policy import RoutingTable

logger = logging.getLogger(__name__)

REGISTRY = "registry"
MAX_UNLOAD_EVENTS = 64  # kept in the document; an instance further behind just reloads on use
WRITE_ATTEMPTS = 5  # compare-and-set rounds before an admin change gives up
# Statuses that domain routing sends traffic to: loaded on every replica, like the active ones.
ROUTED = frozenset({AdapterStatus.ACTIVE, AdapterStatus.CANARY})


class AdapterFleet:
    def __init__(self, settings: Settings, pool: ReplicaPool, loader: AdapterManager,
                 metrics: Metrics, registry: Registry, state: StateBackend) -> None:
        self.settings = settings
        self.pool = pool
        self.loader = loader
        self.metrics = metrics
        self.state = state
        self.registry = registry
        self.table = registry.routing_table(settings.base_aliases())
        self.version = 0  # of the stored registry this one is (0: none stored yet)
        self._unloads: list[dict[str, Any]] = []  # the document's unload events
        self._rejected = 0  # a stored version this instance could not accept (logged once)
        self._listeners: list[Callable[[Registry, RoutingTable], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one change (local or remote) at a time

    # ----------------------------------------------------------------- the registry
    def on_change(self, listener: Callable[[Registry, RoutingTable], None]) -> None:
        """Call ``listener`` after every registry swap (e.g. the gate follows active versions)."""
        self._listeners.append(listener)
        listener(self.registry, self.table)

    def set_registry(self, registry: Registry, version: int | None = None) -> None:
        """Swap in a new registry; requests routed from now on use it (one loop, no lock)."""
        self.registry = registry
        self.table = registry.routing_table(self.settings.base_aliases())
        if version is not None:
            self.version = version
            self.metrics.state_registry_version.set(version)
        for listener in self._listeners:
            listener(registry, self.table)

    def _document(self, registry: Registry) -> dict[str, Any]:
        return {"entries": [e.model_dump(mode="json", exclude_none=True) for e in registry],
                "unloads": self._unloads[-MAX_UNLOAD_EVENTS:]}

    def _parse(self, data: dict[str, Any]) -> Registry:
        """A stored document as a registry under this instance's rules (domains, allowed
        directories, files present): raises RegistryError or ValidationError."""
        entries = [AdapterEntry.model_validate(raw) for raw in data.get("entries", [])]
        return self.registry.replaced(entries)

    async def seed(self, *, converge: bool = False) -> None:
        """At start: adopt the stored registry, or store ours (manifest + config) if there is
        none. Redis unreachable: serve ours; the sync loop calls this again (``converge``: the
        replicas already serve ours, so carry out the difference)."""
        try:
            async with self._lock:
                snapshot = await self.state.read(REGISTRY)
                if snapshot is None:
                    try:
                        version = await self.state.write(
                            REGISTRY, self._document(self.registry), expect=0)
                        self.set_registry(self.registry, version)
                        logger.info("adapter registry seeded from the manifest and config "
                                    "(%d adapters, version %d)", len(self.registry), version)
                        return
                    except StaleWrite:  # another instance seeded it first
                        snapshot = await self.state.read(REGISTRY)
                change = (self._adopt(snapshot.version, snapshot.data, converge=False)
                          if snapshot is not None else None)
        except StateUnavailable as exc:
            logger.warning("registry not read from the shared state (%s): serving the "
                           "manifest's until it is reachable", exc)
            return
        if change is not None and converge:
            await self.converge(*change)

    async def refresh(self) -> None:
        """Adopt a newer stored registry and converge the replicas to it."""
        async with self._lock:
            snapshot = await self.state.read(REGISTRY)
            if snapshot is None or snapshot.version <= self.version:
                return
            change = self._adopt(snapshot.version, snapshot.data, converge=True)
        if change is not None:
            await self.converge(*change)

    def _adopt(self, version: int, data: dict[str, Any], *, converge: bool
               ) -> tuple[Registry, Registry, list[dict[str, Any]]] | None:
        try:
            registry = self._parse(data)
        except (RegistryError, ValidationError) as exc:
            if version != self._rejected:
                self._rejected = version
                logger.error("stored adapter registry version %d is not valid here, keeping "
                             "version %d: %s", version, self.version, exc)
            return None
        unloads = list(data.get("unloads", []))
        seen = max((u["seq"] for u in self._unloads), default=0)
        # At start an instance has nothing loaded that earlier unloads could concern.
        new_unloads = [u for u in unloads if u["seq"] > seen] if converge else []
        self._unloads = unloads
        before = self.registry
        self.set_registry(registry, version)
        logger.info("adapter registry version %d adopted (%d adapters)", version, len(registry))
        return before, registry, new_unloads

    async def change(self, edit: Callable[[Registry], Registry],
                     unload: tuple[str, str | None] | None = None) -> tuple[Registry, Registry]:
        """Apply ``edit`` to the current registry, store the result as the next version and
        swap it in; (before, after). Raises RegistryError (edit refused) and StateUnavailable
        (the store cannot be written: nothing changed)."""
        for _ in range(WRITE_ATTEMPTS):
            async with self._lock:
                before = self.registry
                after = edit(before)
                unloads = self._unloads
                if unload is not None:
                    seq = max((u["seq"] for u in self._unloads), default=0) + 1
                    self._unloads = [*unloads, {"seq": seq, "name": unload[0],
                                                "replica": unload[1]}][-MAX_UNLOAD_EVENTS:]
                try:
                    version = await self.state.write(REGISTRY, self._document(after),
                                                     expect=self.version)
                except StaleWrite:
                    self._unloads = unloads
                    snapshot = await self.state.read(REGISTRY)
                    change = (self._adopt(snapshot.version, snapshot.data, converge=True)
                              if snapshot is not None else None)
                except BaseException:
                    self._unloads = unloads
                    raise
                else:
                    self.set_registry(after, version)
                    return before, after
            if change is not None:  # someone else's change first, then ours on top of it
                await self.converge(*change)
        raise StateUnavailable("the registry kept changing under this write; try again")

    async def converge(self, before: Registry, after: Registry,
                       unloads: Iterable[dict[str, Any]] = ()) -> None:
        """Another instance changed the registry: do on the replicas what it did on its own
        (replicas are often shared; every operation here is idempotent there)."""
        for event in unloads:
            await self.unload_everywhere(event["name"], only=event.get("replica"), forget=True)
        for entry in after:
            old = before.get(entry.name)
            if entry.status is AdapterStatus.RETIRED:
                if old is not None and old.status is not AdapterStatus.RETIRED:
                    await self.unload_everywhere(entry.name, forget=True)
            elif old is None or old.status is AdapterStatus.RETIRED:
                await self.load_everywhere(entry)
            elif old.version != entry.version or old.path != entry.path:
                await self.upgrade(entry)
            elif entry.status in ROUTED and old.status not in ROUTED:
                await self.load_everywhere(entry)
        for entry in before:
            if after.get(entry.name) is None:
                await self.unload_everywhere(entry.name, forget=True)

    # ----------------------------------------------------------------- admin operations
    async def register(self, name: str, make: Callable[[AdapterEntry | None], AdapterEntry]
                       ) -> tuple[AdapterEntry, dict[str, str]]:
        """Register ``make(the current entry named name, or None)``: a new adapter, or a new
        version loaded in place where the old one is resident. Returns (entry, per replica)."""
        made: list[tuple[AdapterEntry | None, AdapterEntry]] = []

        def edit(registry: Registry) -> Registry:
            current = registry.get(name)
            entry = make(current)
            made[:] = [(current, entry)]
            return registry.with_entry(entry)

        await self.change(edit)
        current, entry = made[0]
        if entry.status is AdapterStatus.RETIRED:
            return entry, {}
        if current is not None:
            # Replicas holding the old version switch in place; others load it on first use.
            replicas = await self.upgrade(entry)
            return entry, replicas or await self.load_everywhere(entry)
        return entry, await self.load_everywhere(entry)

    async def set_status(
        self, name: str, status: AdapterStatus
    ) -> tuple[list[str], dict[str, str]]:
        """Promote (active), start a canary, roll back (shadow) or retire an adapter. Promoting
        retires the domain's previous active adapter; retired ones are unloaded everywhere; an
        active or canary one is loaded everywhere. Returns (retired names, load outcome). Raises
        RegistryError when the change is not allowed."""
        before, after = await self.change(lambda registry: registry.with_status(name, status))
        previous = {e.name for e in before if e.status is not AdapterStatus.RETIRED}
        retired = [e.name for e in after
                   if e.status is AdapterStatus.RETIRED and e.name in previous]
        for retired_name in retired:
            await self.unload_everywhere(retired_name)
        replicas: dict[str, str] = {}
        entry = after.get(name)
        if status in ROUTED and entry is not None:
            replicas = await self.load_everywhere(entry)
        return retired, replicas

    async def unload(self, name: str, *, only: str | None = None) -> dict[str, str]:
        """Unload from every replica (or the one named ``only``), here and, through the stored
        registry, on every instance."""
        if self.state.shared:
            await self.change(lambda registry: registry, unload=(name, only))
        return await self.unload_everywhere(name, only=only)

    # ----------------------------------------------------------------- replicas
    def on_replica_up(self, url: str) -> None:
        """A replica came (back) up: forget what it had and, if configured, preload."""
        self.loader.forget_replica(url)
        if self.settings.adapters.preload:
            task = asyncio.create_task(self.sync_replica(url), name=f"adapter-sync {url}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def sync_replica(self, url: str) -> None:
        active = [e for e in self.registry if e.status in ROUTED]
        replica = next((r for r in self.pool.replicas if r.url == url), None)
        if replica is None or not active:
            return
        outcome = await self.loader.sync_replica(url, active)
        for name, result in outcome.items():
            if result != "resident":
                self.metrics.adapter_loads.labels(replica.name, name, result).inc()
        self._count_resident(replica)
        logger.info(
            "replica %s: %d adapters loaded, %d failed",
            replica.name,
            sum(r != "failed" for r in outcome.values()),
            sum(r == "failed" for r in outcome.values()),
        )

    async def load_everywhere(
        self, entry: AdapterEntry, *, only: str | None = None
    ) -> dict[str, str]:
        """Load ``entry`` on every healthy replica (or the one named ``only``): replica name ->
        loaded/resident/failed/replica_down."""
        outcome: dict[str, str] = {}
        for replica in self.pool.replicas:
            if only is not None and replica.name != only:
                continue
            if not replica.healthy:
                outcome[replica.name] = "replica_down"
                continue
            result = await self.loader.sync_replica(replica.url, [entry])
            outcome[replica.name] = result[entry.name]
            self._count_resident(replica)
        return outcome

    async def upgrade(self, entry: AdapterEntry) -> dict[str, str]:
        """The new version of ``entry`` in place wherever an older one is resident."""
        upgraded = await self.loader.upgrade([r.url for r in self.pool.replicas], entry)
        names = {r.url: r.name for r in self.pool.replicas}
        return {names[url]: result for url, result in upgraded.items()}

    async def unload_everywhere(self, name: str, *, only: str | None = None,
                                forget: bool = False) -> dict[str, str]:
        """``forget``: a replica that refuses counts as not holding it any more (another
        instance sharing it may have unloaded it first; a wrong guess costs one reload)."""
        outcome: dict[str, str] = {}
        for replica in self.pool.replicas:
            if only is not None and replica.name != only:
                continue
            if not self.loader.is_resident(replica.url, name):
                continue
            try:
                await self.loader.unload(replica.url, name)
                outcome[replica.name] = "unloaded"
            except Exception as exc:  # one replica's failure must not stop the others
                if forget:
                    self.loader.forget(replica.url, name)
                else:
                    logger.warning("unloading %s from %s failed: %s", name, replica.name, exc)
                outcome[replica.name] = "failed"
            self._count_resident(replica)
        return outcome

    def _count_resident(self, replica: Replica) -> None:
        self.metrics.adapters_resident.labels(replica.name).set(
            len(self.loader.resident(replica.url)))

    def where_loaded(self, name: str) -> list[str]:
        return [r.name for r in self.pool.replicas if self.loader.is_resident(r.url, name)]

    def background_tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)

    # ----------------------------------------------------------------- one request's adapter
    def choose(self, adapter: str | None, exclude: Collection[str] = (),
               now: float | None = None, replicas: Sequence[Replica] | None = None
               ) -> Replica | None:
        """The replica for a request for ``adapter`` (None: the base), among ``replicas``
        (default: all): LoRA affinity + load."""
        return choose_replica(self.pool.replicas if replicas is None else replicas, adapter,
                              self.loader.is_resident,
                              now=time.monotonic() if now is None else now, exclude=exclude)

    async def ensure_adapter(self, replica: Replica, entry: AdapterEntry) -> None:
        """Load ``entry`` on ``replica`` unless resident, counting the load; raises
        AdapterLoadError."""
        try:
            seconds = await self.loader.ensure_loaded(replica.url, entry)
        except AdapterLoadError:
            self.metrics.adapter_loads.labels(replica.name, entry.name, "failed").inc()
            raise
        if seconds is not None:
            self.metrics.adapter_loads.labels(replica.name, entry.name, "loaded").inc()
            self.metrics.adapter_load_duration.labels(replica.name).observe(seconds)
            self._count_resident(replica)

    def pin(self, replica: Replica, name: str) -> None:
        """A request is about to use ``name`` on ``replica``: not evictable until unpinned."""
        self.loader.acquire(replica.url, name)

    def unpin(self, replica: Replica, name: str) -> None:
        self.loader.release(replica.url, name)

    @contextlib.asynccontextmanager
    async def pinned(self, entry: AdapterEntry | None) -> AsyncIterator[Replica]:
        """A replica chosen like a user request's, with ``entry`` loaded and pinned meanwhile
        (None: the base model). Raises RuntimeError (no replica) or AdapterLoadError."""
        # now=0: shadow work never takes an open breaker's half-open trial (users' requests do).
        replica = self.choose(entry.name if entry else None, now=0.0)
        if replica is None:
            raise RuntimeError("no replica is ready")
        if entry is None:
            yield replica
            return
        await self.ensure_adapter(replica, entry)
        self.pin(replica, entry.name)
        try:
            yield replica
        finally:
            self.unpin(replica, entry.name)
