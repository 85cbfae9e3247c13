"""The shadow evaluator: keeps scoring each domain's adapter against the general model.

A background task of the gateway. It takes the suite items (:mod:`adapters.evaluation`, the test
split: never trained on) one domain after the other, answers each with the general model, the
domain's active adapter and any shadow versions, scores the answers, and feeds the paired deltas
to anytime-valid confidence sequences per adapter version (:class:`Evidence`). After every item
the quality gate (:mod:`router.gate`) decides which domains the general model serves; a shadow
version whose sequence against the active one lies above zero may be promoted
(``auto_promote``).

Sampled live traffic (``live_sample_rate``) is answered by both variants too and both answers are
kept in the pair store for review; it has no reference answer, so it is not scored and does not
move the gate.

Budget: shadow calls go through :class:`ShadowBudget` (concurrency, calls per second, and a pause
while user requests are in flight), and a shadow call still running when user requests arrive is
abandoned (vLLM aborts it; the item is scored again later). Shadow calls never count as a
replica's outstanding user requests.
Paired records go to a JSON-lines store with a pair id, never into metric labels.

One evaluator runs per fleet: every instance builds one, and the instance holding the shadow lease
(:class:`gateway.state.lease.Leadership`) runs it (:meth:`ShadowEvaluator.lead`). The leader hands
its verdicts to routing (:class:`gateway.gates.GateState`) and, with shared state, writes them and
its report to the state backend for the other instances, and its evidence for a successor.

The evaluator sees the gateway through narrow collaborators only: the :class:`AdapterFleet`
(registry, placement, promotion), the :class:`GateState`, the upstream HTTP client and a
``user_load()`` callable. The gateway sees it as an offer/report sink (``gateway.proxy.ShadowTap``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from adapters.evaluation.scoring import rouge_l
from adapters.evaluation.statistics import Estimate, finite, mean
from adapters.evaluation.suite import ItemScore, Preempted, VllmScorer
from adapters.registry import AdapterEntry, AdapterStatus
from gateway.fleet import AdapterFleet
from gateway.gates import GATE, GateState
from gateway.metrics import NONE, Metrics
from gateway.settings import ShadowSettings
from gateway.state import StateBackend, StateUnavailable
from router.gate import Bounds, GateRule, GateTrack, VersionGate
from router.gate import GateState as Verdict
from router.sequence import BettingSequence

if TYPE_CHECKING:
    from adapters.evaluation.items import SuiteItem
    from gateway.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)

GENERAL = NONE  # the `adapter` label value of the general model's scores
METHOD = ("betting confidence sequence (hedged capital, Waudby-Smith & Ramdas 2024), "
          "anytime-valid")
LIVE_MAX_TOKENS = 128


class ShadowBudget:
    """Admits shadow calls: at most ``max_concurrency`` at once, starts spaced by
    ``1 / calls_per_second``, and none while ``busy()`` says user traffic needs the replicas."""

    def __init__(
        self,
        max_concurrency: int,
        calls_per_second: float,
        busy: Callable[[], bool] = lambda: False,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.05,
    ) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._interval = 1.0 / calls_per_second
        self._busy = busy
        self._clock = clock
        self._poll_s = poll_s
        self._next_start = 0.0
        self.in_flight = 0
        self.started = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            while True:
                wait = self._next_start - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif self._busy():
                    await asyncio.sleep(self._poll_s)
                else:
                    break
            self._next_start = self._clock() + self._interval
            self.in_flight += 1
            self.started += 1
            try:
                yield
            finally:
                self.in_flight -= 1


Key = tuple[str, int]  # (adapter name, version): a new version starts a new record


def key(entry: AdapterEntry) -> Key:
    return (entry.name, entry.version)


def gate_rule(settings: ShadowSettings) -> GateRule:
    """The gate the gateway runs, from its settings (``slm-gateway gate replay`` uses this too)."""
    return GateRule(confidence=settings.confidence, min_samples=settings.min_samples)


@dataclass(frozen=True)
class Observation:
    """One item's paired scores for one adapter version: its score, the general model's, and for
    a shadow version the active version's (key and score)."""

    adapter: Key
    score: float
    general: float
    active: tuple[Key, float] | None = None


@dataclass(frozen=True)
class Advance:
    """The new gate and sequences after some observations (computed off the event loop)."""

    gates: dict[Key, VersionGate]
    vs_active: dict[tuple[Key, Key], BettingSequence]


class Evidence:
    """What the shadow evaluator knows, per adapter version:

    * its **gate** (:class:`router.gate.VersionGate`): confidence sequences of the paired delta
      adapter - general over every item since the version started; anytime-valid, so acting on
      it after every item is sound;
    * for a shadow version, a confidence sequence of the delta against the active version
      (started afresh whenever the active version changes), which promotion acts on;
    * the last ``window`` paired scores, for the reported mean scores only.

    Gates and sequences are immutable values: :meth:`advance` computes the next ones (numpy work,
    run in a thread) and :meth:`commit` swaps them in on the event loop, so readers (the admin API,
    metrics) never see one half-updated.
    """

    def __init__(self, window: int, rule: GateRule) -> None:
        self.window = window
        self.rule = rule
        self.recent: dict[Key, deque[tuple[float, float]]] = {}
        self.gates: dict[Key, VersionGate] = {}
        self.vs_active: dict[tuple[Key, Key], BettingSequence] = {}

    def gate(self, entry: AdapterEntry) -> VersionGate:
        return self.gates.get(key(entry)) or VersionGate.start(self.rule)

    def against_active(self, entry: AdapterEntry, active: AdapterEntry) -> Bounds:
        sequence = self.vs_active.get((key(entry), key(active))) or self.rule.sequence()
        return Bounds.of(sequence)

    def scores(self, entry: AdapterEntry) -> tuple[list[float], list[float]]:
        pairs = self.recent.get(key(entry), ())
        return [a for a, _ in pairs], [b for _, b in pairs]

    def advance(self, observations: Sequence[Observation]) -> Advance:
        """Pure: the gates and sequences after ``observations``. Deltas are clipped to [-1, 1]
        (scores are in [0, 1], so they already are, barring rounding)."""
        gates: dict[Key, VersionGate] = {}
        vs_active: dict[tuple[Key, Key], BettingSequence] = {}
        for o in observations:
            gate = gates.get(o.adapter) or self.gates.get(o.adapter) or VersionGate.start(
                self.rule)
            gates[o.adapter] = gate.observe(_delta(o.score, o.general))
            if o.active is not None:
                pair = (o.adapter, o.active[0])
                sequence = (vs_active.get(pair) or self.vs_active.get(pair)
                            or self.rule.sequence())
                vs_active[pair] = sequence.update(_delta(o.score, o.active[1]))
        return Advance(gates, vs_active)

    def commit(self, observations: Sequence[Observation], advance: Advance) -> None:
        for o in observations:
            self.recent.setdefault(o.adapter, deque(maxlen=self.window)).append(
                (o.score, o.general))
        self.gates.update(advance.gates)
        for pair, sequence in advance.vs_active.items():
            # A shadow version compared with an earlier active version: that record is moot.
            for stale in [p for p in self.vs_active if p[0] == pair[0] and p[1] != pair[1]]:
                del self.vs_active[stale]
            self.vs_active[pair] = sequence


    # ---------------------------------------------------------------- for a successor
    def dump(self) -> bytes:
        """The gates and sequences (not the recent scores: they only feed reported means), as
        JSON with the arrays in base64: no pickle, so a successor can trust what it reads."""
        return json.dumps({
            "rule": _rule_id(self.rule),
            "gates": [[list(k), _track_dict(g.track)] for k, g in self.gates.items()],
            "vs_active": [[list(a), list(b), _sequence_dict(s)]
                          for (a, b), s in self.vs_active.items()],
        }).encode()

    def restore(self, blob: bytes) -> int:
        """Take over a predecessor's gates and sequences (same rule only); how many gates."""
        document = json.loads(blob)
        if document.get("rule") != _rule_id(self.rule):
            logger.warning("stored evidence was gathered under another gate rule: starting "
                           "afresh")
            return 0
        self.gates = {(str(k[0]), int(k[1])): VersionGate(self.rule, _track(t))
                      for k, t in document["gates"]}
        self.vs_active = {((str(a[0]), int(a[1])), (str(b[0]), int(b[1]))): _sequence(s)
                          for a, b, s in document["vs_active"]}
        return len(self.gates)


def _rule_id(rule: GateRule) -> list[float]:
    return [rule.confidence, rule.min_samples, rule.grid_points, rule.truncation]


def _array(values: Any) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()


def _from_array(text: str) -> Any:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


def _sequence_dict(s: BettingSequence) -> dict[str, Any]:
    return {"alpha": s.alpha, "n": int(s.n), "total": float(s.total),
            "squares": float(s.squares), "log_up": _array(s.log_up),
            "log_down": _array(s.log_down), "truncation": s.truncation}


def _sequence(d: dict[str, Any]) -> BettingSequence:
    return BettingSequence(float(d["alpha"]), np.array(d["n"], np.int64),
                           np.array(d["total"], np.float64),
                           np.array(d["squares"], np.float64), _from_array(d["log_up"]),
                           _from_array(d["log_down"]), float(d["truncation"]))


def _track_dict(t: GateTrack) -> dict[str, Any]:
    return {"closed": bool(t.closed), "n": int(t.n), "changes": int(t.changes),
            "sequence": _sequence_dict(t.sequence), "recovery": _sequence_dict(t.recovery)}


def _track(d: dict[str, Any]) -> GateTrack:
    return GateTrack(np.array(d["closed"], np.bool_), np.array(d["n"], np.int64),
                     np.array(d["changes"], np.int64),
                     _sequence(d["sequence"]), _sequence(d["recovery"]))


def _delta(score: float, other: float) -> float:
    return min(1.0, max(-1.0, score - other))


def bounds_dict(bounds: Bounds) -> dict[str, float | int | None]:
    """For JSON, like every estimate the admin API shows."""
    return Estimate(bounds.n, bounds.mean, bounds.low, bounds.high).as_dict()


class PairStore:
    """Appends paired records as JSON lines; rotates to ``<name>.1`` past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = 50 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > self.max_bytes:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def append(self, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self._append, json.dumps(record, ensure_ascii=False))


@dataclass(frozen=True)
class LiveSample:
    domain: str
    messages: list[dict[str, Any]]
    max_tokens: int


class ShadowEvaluator:
    def __init__(
        self,
        fleet: AdapterFleet,
        gate: GateState,
        client: httpx.AsyncClient,
        settings: ShadowSettings,
        metrics: Metrics,
        *,
        general_model: str,
        user_load: Callable[[], int],
        state: StateBackend,
        holder: str = "local",
        evidence_interval_s: float = 5.0,
        items: Sequence[SuiteItem] | None = None,
        load_items: Callable[[int], Sequence[SuiteItem]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.fleet = fleet
        self.gate = gate
        self.client = client
        self.general_model = general_model
        self.user_load = user_load
        self.state = state
        self.holder = holder
        self.evidence_interval_s = evidence_interval_s
        self.leading = False
        self._evidence_saved = 0.0
        self.settings = settings
        self.metrics = metrics
        self.budget = ShadowBudget(settings.max_concurrency, settings.calls_per_second,
                                   busy=self._user_busy)
        self.rule = gate_rule(settings)
        self.evidence = Evidence(settings.window, self.rule)
        self.store = PairStore(settings.store)
        self._items = list(items) if items is not None else None
        self._load_items = load_items
        self._live: asyncio.Queue[LiveSample] = asyncio.Queue(settings.live_queue)
        self._rng = rng or random.Random()
        self._scorers: dict[str, VllmScorer] = {}
        self._users_arrived = asyncio.Event()
        self.items_scored = 0
        metrics.shadow_budget.set(settings.calls_per_second)

    # ------------------------------------------------------------------ budget and live input
    def _user_busy(self) -> bool:
        return self.user_load() > self.settings.yield_above

    def offer(self, domain: str | None, body: ChatCompletionRequest) -> None:
        """Maybe sample one live `auto` chat request (never blocks, never raises)."""
        if domain is None or self.settings.live_sample_rate <= 0:
            return
        if self._rng.random() >= self.settings.live_sample_rate:
            return
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        cap = min(body.max_completion_tokens or body.max_tokens or LIVE_MAX_TOKENS,
                  LIVE_MAX_TOKENS)
        try:
            self._live.put_nowait(LiveSample(domain, messages, cap))
        except asyncio.QueueFull:
            self.metrics.shadow_live_dropped.inc()

    # ------------------------------------------------------------------ the loop
    async def lead(self) -> None:
        """Run as the fleet's evaluator (the leader), from the evidence a predecessor left."""
        if self.state.shared:
            try:
                blob = await self.state.read_blob("evidence")
                if blob is not None:
                    restored = await asyncio.to_thread(self.evidence.restore, blob)
                    logger.info("shadow evaluator resumes from stored evidence (%d adapter "
                                "versions)", restored)
                    self.apply_gate()
            except StateUnavailable:
                logger.warning("stored evidence unreachable: the shadow evaluator starts afresh")
        self.leading = True
        try:
            await self.run()
        finally:
            self.leading = False

    async def run(self) -> None:
        if self._items is None:
            self._items = await asyncio.to_thread(self._suite_items)
        logger.info("shadow evaluator: %d suite items, budget %.2f calls/s, %d at a time",
                    len(self._items), self.settings.calls_per_second,
                    self.settings.max_concurrency)
        failures = 0
        while True:
            try:
                if not self._live.empty():
                    await self.evaluate_live(self._live.get_nowait())
                    continue
                item = self._next_item()
                if item is None:
                    await asyncio.sleep(1.0)  # nothing to compare: no active adapter yet
                    continue
                await self.evaluate_item(item)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Preempted:
                # Users came first; the item comes round again later.
                self.metrics.shadow_preempted.inc()
            except Exception as exc:  # a shadow failure must never reach user traffic
                self.metrics.shadow_errors.inc()
                failures += 1
                # Back off (1 s doubling to 60 s) so a replica that is down is not hammered or
                # logged every second.
                delay = min(60.0, 2.0 ** (failures - 1))
                logger.warning("shadow evaluation failed (%d in a row, next try in %.0f s): "
                               "%s: %s", failures, delay, type(exc).__name__, exc)
                await asyncio.sleep(delay)

    def _suite_items(self) -> list[SuiteItem]:
        if self._load_items is None:
            return []
        try:
            return list(self._load_items(self.settings.items_per_domain))
        except Exception as exc:  # e.g. the benchmark data package is not installed
            logger.warning("shadow evaluator has no suite items (%s): live samples only", exc)
            return []

    def _active(self, domain: str) -> AdapterEntry | None:
        name = self.fleet.table.active.get(domain)
        return self.fleet.registry.get(name) if name else None

    def _next_item(self) -> SuiteItem | None:
        """Round-robin over domains with an active adapter; within a domain, an item drawn
        uniformly at random (with replacement). Answers are greedy, so an item scores the same
        each time: random draws make each delta an independent draw from the domain's suite,
        which the confidence sequences' guarantee assumes (items in a fixed cycle are not), and
        the gate's verdict is then about the suite's mean delta."""
        items = self._items or []
        domains = sorted({i.domain for i in items if self._active(i.domain) is not None})
        if not domains:
            return None
        domain = domains[self.items_scored % len(domains)]
        return self._rng.choice([i for i in items if i.domain == domain])

    def _shadows(self, domain: str) -> list[AdapterEntry]:
        return [e for e in self.fleet.registry
                if e.domain == domain and e.status is AdapterStatus.SHADOW]

    async def _on_replica(self, entry: AdapterEntry | None,
                          work: Callable[[VllmScorer, str], Any]) -> Any:
        """Run ``work(scorer, model)`` on a replica chosen like a user request's, with the
        adapter loaded and pinned (not evictable) meanwhile."""
        async with self.fleet.pinned(entry) as replica:
            scorer = self._scorers.get(replica.url)
            if scorer is None:
                scorer = self._scorers[replica.url] = VllmScorer(
                    self.client, base_url=replica.url, throttle=self._counted_slot,
                    preempt=self._until_users_need_it)
            return await work(scorer, entry.name if entry else self.general_model)

    def user_request_started(self) -> None:
        """Called by the gateway as a user request goes upstream."""
        if self._user_busy():
            self._users_arrived.set()

    async def _until_users_need_it(self) -> None:
        """Returns once user traffic exceeds the budget's threshold: the shadow call in flight
        is then abandoned, so a user request never waits behind shadow work for long."""
        if self._user_busy():
            return
        self._users_arrived.clear()
        await self._users_arrived.wait()

    @contextlib.asynccontextmanager
    async def _counted_slot(self) -> AsyncIterator[None]:
        async with self.budget.slot():
            self.metrics.shadow_calls_in_flight.set(self.budget.in_flight)
            try:
                yield
            finally:
                self.metrics.shadow_calls.inc()
                self.metrics.shadow_calls_in_flight.set(self.budget.in_flight - 1)

    async def evaluate_item(self, item: SuiteItem) -> dict[str, Any] | None:
        active = self._active(item.domain)
        if active is None:
            return None
        shadows = self._shadows(item.domain)
        variants: list[AdapterEntry | None] = [None, active, *shadows]
        scores: list[ItemScore] = []
        for entry in variants:
            scores.append(await self._on_replica(
                entry, lambda scorer, model: scorer.score(item, model)))
        general, active_score, *shadow_scores = scores
        observations = [Observation(key(active), active_score.score, general.score)]
        observations += [Observation(key(entry), s.score, general.score,
                                     (key(active), active_score.score))
                         for entry, s in zip(shadows, shadow_scores, strict=True)]
        # The sequences' numpy updates run off the event loop; the swap-in happens on it.
        advance = await asyncio.to_thread(self.evidence.advance, observations)
        self.evidence.commit(observations, advance)
        self.items_scored += 1
        self.metrics.shadow_samples.labels(item.domain, "suite").inc()
        record = {
            "pair_id": uuid.uuid4().hex, "time": time.time(), "source": "suite",
            "domain": item.domain, "item_id": item.id, "metric": item.metric,
            "variants": {s.model: {"version": e.version if e else None, "score": s.score,
                                   "answer": s.answer, "seconds": round(s.seconds, 3)}
                         for e, s in zip(variants, scores, strict=True)},
        }
        await self.store.append(record)
        self._publish(item.domain, active, shadows)
        await self._share(item.domain, active)
        if self.settings.auto_promote:
            await self._maybe_promote(active, shadows)
        return record

    async def evaluate_live(self, sample: LiveSample) -> dict[str, Any] | None:
        active = self._active(sample.domain)
        if active is None:
            return None
        answers: dict[str, tuple[str, float]] = {}
        for entry in (None, active):
            async def generate(scorer: VllmScorer, model: str) -> tuple[str, str, float]:
                started = time.perf_counter()
                text = await scorer.chat(model, sample.messages, sample.max_tokens)
                return model, text, time.perf_counter() - started

            model, text, seconds = await self._on_replica(entry, generate)
            answers[model] = (text, seconds)
        texts = [text for text, _ in answers.values()]
        self.metrics.shadow_samples.labels(sample.domain, "live").inc()
        record = {
            "pair_id": uuid.uuid4().hex, "time": time.time(), "source": "live",
            "domain": sample.domain, "messages": sample.messages,
            # No reference answer for live traffic: agreement (ROUGE-L between the two answers)
            # flags pairs worth a look; it is not a quality score.
            "agreement": round(await asyncio.to_thread(rouge_l, texts[1], [texts[0]]), 4),
            "variants": {m: {"answer": t, "seconds": round(s, 3)} for m, (t, s) in answers.items()},
        }
        await self.store.append(record)
        return record

    # ------------------------------------------------------------------ evidence -> state
    def report(self) -> dict[str, Any]:
        """Per domain with an active adapter: evidence and gate state (admin API)."""
        if not self.leading and self.gate.report is not None:
            return self.gate.report  # the fleet's evaluator runs on another instance
        domains: dict[str, Any] = {}
        for domain, name in sorted(self.fleet.table.active.items()):
            entry = self.fleet.registry.get(name)
            if entry is None:
                continue
            special, general = self.evidence.scores(entry)
            gate = self.evidence.gate(entry)
            recovery = gate.recovery()
            domains[domain] = {
                "adapter": entry.name, "version": entry.version,
                # What routing does (always "open" with shadow.gate: false) ...
                "gate": "closed" if domain in self.gate.gated else "open",
                # ... and what the evidence says, whether or not routing follows it.
                "verdict": gate.state.value,
                "samples": gate.n,
                "gate_changes": gate.changes,
                "score_adapter": finite(mean(special)),
                "score_general": finite(mean(general)),
                "delta": bounds_dict(gate.evidence()),
                "recovery": bounds_dict(recovery) if recovery is not None else None,
                "shadow": {
                    s.name: {"version": s.version,
                             "vs_general": bounds_dict(self.evidence.gate(s).evidence()),
                             "vs_active": bounds_dict(self.evidence.against_active(s, entry))}
                    for s in self._shadows(domain)
                },
            }
        return {"gate_enabled": self.settings.gate, "min_samples": self.settings.min_samples,
                "confidence": self.settings.confidence, "method": METHOD,
                "items_scored": self.items_scored, "evaluator": self.holder,
                "domains": domains}

    def _publish(self, domain: str, active: AdapterEntry,
                 shadows: Sequence[AdapterEntry]) -> None:
        m = self.metrics
        for entry in (active, *shadows):
            special, _ = self.evidence.scores(entry)
            delta = self.evidence.gate(entry).evidence()
            m.shadow_score.labels(domain, entry.name).set(mean(special))
            m.shadow_delta.labels(domain, entry.name).set(delta.mean)
            m.shadow_delta_low.labels(domain, entry.name).set(delta.low)
            m.shadow_delta_high.labels(domain, entry.name).set(delta.high)
            m.shadow_evidence.labels(domain, entry.name).set(delta.n)
        _, general = self.evidence.scores(active)
        m.shadow_score.labels(domain, GENERAL).set(mean(general))

    def apply_gate(self) -> frozenset[str]:
        """Hand routing the adapter versions whose gate is closed (none with ``gate: false``);
        the domains the gate now closes."""
        closed = ([k for k, gate in self.evidence.gates.items() if gate.state is Verdict.CLOSED]
                  if self.settings.gate else [])
        self.gate.set_closed(closed)
        return self.gate.gated

    async def _share(self, domain: str, active: AdapterEntry) -> None:
        """After an item: the verdicts to routing here, and with shared state to the fleet
        (the evidence for a successor at most every ``evidence_interval_s``)."""
        was = self.evidence.gates.get(key(active))
        self.apply_gate()
        gate = self.evidence.gate(active)
        if gate.state is Verdict.CLOSED and (was is None or was.state is not Verdict.CLOSED):
            delta = gate.evidence()
            logger.warning("quality gate evidence: %s v%d worse than general for %s (delta "
                           "%+.3f, confidence sequence [%+.3f, %+.3f] over %d samples)",
                           active.name, active.version, domain, delta.mean, delta.low,
                           delta.high, delta.n)
        if not self.state.shared:
            return
        try:
            self.gate.version = await self.state.write(
                GATE, self.gate.document(self.report(), self.holder))
            now = time.monotonic()
            if now - self._evidence_saved >= self.evidence_interval_s:
                blob = await asyncio.to_thread(self.evidence.dump)
                await self.state.write_blob("evidence", blob)
                self._evidence_saved = now
        except StateUnavailable:
            pass  # counted by the backend; routing here already follows

    async def _maybe_promote(self, active: AdapterEntry, shadows: Sequence[AdapterEntry]) -> None:
        """Promote the first shadow version whose whole confidence sequence against the active
        version is above zero (``min_samples`` pairs at least) and whose own gate is open."""
        need = self.settings.min_samples
        for entry in shadows:
            better = self.evidence.against_active(entry, active)
            if (better.n >= need and better.low > 0
                    and self.evidence.gate(entry).state is Verdict.OPEN):
                logger.warning("auto-promoting %s v%d over %s v%d (delta %+.3f, confidence "
                               "sequence [%+.3f, %+.3f] over %d samples)", entry.name,
                               entry.version, active.name, active.version, better.mean,
                               better.low, better.high, better.n)
                await self.fleet.set_status(entry.name, AdapterStatus.ACTIVE)
                return
