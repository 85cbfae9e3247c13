"""The shadow evaluator: keeps scoring each domain's adapter against the general model.

A background task of the gateway. It takes the suite items (:mod:`adapters.evaluation`, the test
split: never trained on) one domain after the other, answers each with the general model, the
domain's active adapter and any shadow versions, scores the answers, and feeds the paired deltas
to anytime-valid confidence sequences per adapter version (:class:`Evidence`). After every item
the quality gate (:mod:`router.gate`) decides which domains the general model serves; a shadow
version whose sequence against the active one lies above zero may be promoted
(``auto_promote``).

A domain's **canary** version (:mod:`router.canary`) is answered on the same items too, its
paired delta against the active version (the general model where the domain has none) feeds a
confidence sequence of its own, and after each item its rollout steps: its traffic share grows,
holds, or it is promoted (the registry's promote path, through the fleet) or rolled back to
``shadow``. The shares go to routing with the gate's verdicts (:class:`GateState`).

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
from adapters.registry import AdapterEntry, AdapterStatus, RegistryError
from gateway.fleet import AdapterFleet
from gateway.gates import GATE, GateState
from gateway.metrics import NONE, Metrics
from gateway.settings import CanarySettings, ShadowSettings
from gateway.state import StateBackend, StateUnavailable
from router.canary import (
    TERMINAL,
    CanaryPhase,
    CanaryProgress,
    CanaryRule,
    Standing,
    latency_within,
    p95,
    standing,
    step,
)
from router.gate import Bounds, GateRule, GateTrack, VersionGate
from router.gate import GateState as Verdict
from router.sequence import BettingSequence

if TYPE_CHECKING:
    from adapters.evaluation.items import SuiteItem
    from gateway.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)

GENERAL = NONE  # the `adapter` label value of the general model's scores
# The general model as a canary's baseline in a domain without an active version (no adapter
# has version 0, so this key is never an adapter's).
GENERAL_KEY = (GENERAL, 0)
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


def canary_rule(shadow: ShadowSettings, canary: CanarySettings) -> CanaryRule:
    """Canary rollouts decide at the quality gate's confidence and ``min_samples``."""
    return CanaryRule(
        initial_share=canary.initial_share, growth=canary.growth,
        step_samples=canary.step_samples, max_share=canary.max_share,
        min_samples=shadow.min_samples, promote_margin=canary.promote_margin,
        latency_slo_s=canary.latency_slo_s, latency_ratio=canary.latency_ratio,
        latency_min_samples=canary.latency_min_samples)


@dataclass(frozen=True)
class CanaryCheck:
    """One canary version's rollout after an item: its evidence against the baseline, its
    standing, latency and the stepped progress."""

    bounds: Bounds
    standing: Standing
    progress: CanaryProgress
    latency_p95_s: float | None
    baseline_latency_p95_s: float | None


def check_canary(progress: CanaryProgress, rule: CanaryRule, sequence: BettingSequence,
                 canary_seconds: Sequence[float], baseline_seconds: Sequence[float], *,
                 gate_closed: bool) -> CanaryCheck:
    """Pure (numpy: run off the event loop): the canary's next step."""
    bounds = Bounds.of(sequence)
    now = standing(bounds.n, bounds.low, bounds.high, rule)
    canary_p95 = p95(canary_seconds, rule.latency_min_samples)
    baseline_p95 = p95(baseline_seconds, rule.latency_min_samples)
    within = latency_within(canary_p95, baseline_p95, rule)
    after = step(progress, rule, n=bounds.n, standing=now, latency_ok=within,
                 gate_closed=gate_closed)
    return CanaryCheck(bounds, now, after, canary_p95, baseline_p95)


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
    * for a canary version, the same sequence against the active version (or the general
      model, :data:`GENERAL_KEY`, where the domain has none) and its rollout's progress;
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
        self.canaries: dict[Key, CanaryProgress] = {}

    def gate(self, entry: AdapterEntry) -> VersionGate:
        return self.gates.get(key(entry)) or VersionGate.start(self.rule)

    def against_active(self, entry: AdapterEntry, active: AdapterEntry) -> Bounds:
        return Bounds.of(self.versus(key(entry), key(active)))

    def versus(self, version: Key, baseline: Key) -> BettingSequence:
        """The sequence of ``version``'s delta against ``baseline`` (fresh when there is none)."""
        return self.vs_active.get((version, baseline)) or self.rule.sequence()

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
            "canaries": [[list(k), p.share, p.stepped_at, p.phase.value]
                         for k, p in self.canaries.items()],
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
        self.canaries = {(str(k[0]), int(k[1])): CanaryProgress(float(share), int(at),
                                                                CanaryPhase(phase))
                         for k, share, at, phase in document.get("canaries", [])}
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
        canary: CanarySettings | None = None,
        latencies: Callable[[str], list[float]] = lambda adapter: [],
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
        self.canary_rule = canary_rule(settings, canary or CanarySettings())
        # Recent request durations of an adapter (GENERAL: the general model's), this instance.
        self.latencies = latencies
        self.canary_checks: dict[Key, CanaryCheck] = {}  # the last check of each canary version
        self.canary_log: dict[str, dict[str, Any]] = {}  # per domain: its last decided canary
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
                    self._hand_over_canaries()
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

    def _canary(self, domain: str) -> AdapterEntry | None:
        name = self.fleet.table.canary.get(domain)
        return self.fleet.registry.get(name) if name else None

    def _next_item(self) -> SuiteItem | None:
        """Round-robin over domains with an active adapter or a canary; within a domain, an item
        drawn uniformly at random (with replacement). Answers are greedy, so an item scores the
        same each time: random draws make each delta an independent draw from the domain's
        suite, which the confidence sequences' guarantee assumes (items in a fixed cycle are
        not), and the gate's verdict is then about the suite's mean delta."""
        items = self._items or []
        domains = sorted({i.domain for i in items if self._active(i.domain) is not None
                          or self._canary(i.domain) is not None})
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
        canary = self._canary(item.domain)
        if active is None and canary is None:
            return None
        shadows = self._shadows(item.domain) if active is not None else []
        variants: list[AdapterEntry | None] = [None]
        variants += [e for e in (active, *shadows, canary) if e is not None]
        scores: list[ItemScore] = []
        for entry in variants:
            scores.append(await self._on_replica(
                entry, lambda scorer, model: scorer.score(item, model)))
        general = scores[0]
        score = {key(e): s.score for e, s in zip(variants, scores, strict=True) if e is not None}
        # The baseline shadow and canary versions are paired with: the active version, or the
        # general model in a domain without one (a first adapter rolled out as a canary).
        baseline = ((key(active), score[key(active)]) if active is not None
                    else (GENERAL_KEY, general.score))
        observations = []
        if active is not None:
            observations.append(Observation(key(active), score[key(active)], general.score))
        observations += [Observation(key(entry), score[key(entry)], general.score, baseline)
                         for entry in (*shadows, canary) if entry is not None]
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
        check = await self._judge_canary(canary, active) if canary is not None else None
        self._publish(item.domain, [e for e in variants if e is not None], check)
        await self._share(item.domain, active)
        if canary is not None and check is not None and await self._act_on_canary(
                item.domain, canary, active, check):
            return record  # the registry changed under this item's view of it
        if self.settings.auto_promote and active is not None:
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
                "domains": domains, "canaries": self._canary_report()}

    def _canary_report(self) -> dict[str, Any]:
        """Per domain: its canary's rollout, or else the last canary decided there."""
        canaries = dict(self.canary_log)
        for domain in sorted(self.fleet.table.canary):
            canary = self._canary(domain)
            if canary is not None:
                check = self.canary_checks.get(key(canary))
                canaries[domain] = self._canary_record(canary, self._active(domain), check)
        return dict(sorted(canaries.items()))

    def _canary_record(self, canary: AdapterEntry, active: AdapterEntry | None,
                       check: CanaryCheck | None) -> dict[str, Any]:
        progress = check.progress if check is not None else CanaryProgress.start(
            self.canary_rule)
        bounds = check.bounds if check is not None else Bounds(0, float("nan"), -1.0, 1.0)
        return {
            "adapter": canary.name, "version": canary.version,
            # What the canary is paired with: the active version, or null: the general model.
            "baseline": None if active is None else {"adapter": active.name,
                                                     "version": active.version},
            "state": progress.phase.value,
            "share": progress.share,
            "delta": bounds_dict(bounds),  # canary - baseline: n, mean, low, high
            "latency_p95_s": None if check is None else check.latency_p95_s,
            "baseline_latency_p95_s": None if check is None else check.baseline_latency_p95_s,
        }

    def _publish(self, domain: str, entries: Sequence[AdapterEntry],
                 canary: CanaryCheck | None) -> None:
        m = self.metrics
        for entry in entries:
            special, _ = self.evidence.scores(entry)
            delta = self.evidence.gate(entry).evidence()
            m.shadow_score.labels(domain, entry.name).set(mean(special))
            m.shadow_delta.labels(domain, entry.name).set(delta.mean)
            m.shadow_delta_low.labels(domain, entry.name).set(delta.low)
            m.shadow_delta_high.labels(domain, entry.name).set(delta.high)
            m.shadow_evidence.labels(domain, entry.name).set(delta.n)
        _, general = self.evidence.scores(entries[0])
        m.shadow_score.labels(domain, GENERAL).set(mean(general))
        if canary is not None:  # kept after the rollout ends: the last canary's evidence
            m.canary_delta.labels(domain).set(canary.bounds.mean)
            m.canary_delta_low.labels(domain).set(canary.bounds.low)
            m.canary_delta_high.labels(domain).set(canary.bounds.high)
            m.canary_evidence.labels(domain).set(canary.bounds.n)

    def apply_gate(self) -> frozenset[str]:
        """Hand routing the adapter versions whose gate is closed (none with ``gate: false``);
        the domains the gate now closes."""
        closed = ([k for k, gate in self.evidence.gates.items() if gate.state is Verdict.CLOSED]
                  if self.settings.gate else [])
        self.gate.set_closed(closed)
        return self.gate.gated

    async def _share(self, domain: str, active: AdapterEntry | None) -> None:
        """After an item: the verdicts to routing here, and with shared state to the fleet
        (the evidence for a successor at most every ``evidence_interval_s``)."""
        was = self.evidence.gates.get(key(active)) if active is not None else None
        self.apply_gate()
        gate = self.evidence.gate(active) if active is not None else None
        if (active is not None and gate is not None and gate.state is Verdict.CLOSED
                and (was is None or was.state is not Verdict.CLOSED)):
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

    # ------------------------------------------------------------------ canary rollouts
    async def _judge_canary(self, canary: AdapterEntry, active: AdapterEntry | None
                            ) -> CanaryCheck:
        """Step the canary's rollout on its evidence (off the event loop) and hand the shares
        to routing."""
        version = key(canary)
        baseline = key(active) if active is not None else GENERAL_KEY
        progress = self.evidence.canaries.get(version) or CanaryProgress.start(self.canary_rule)
        gate_closed = (self.settings.gate
                       and self.evidence.gate(canary).state is Verdict.CLOSED)
        check = await asyncio.to_thread(
            check_canary, progress, self.canary_rule, self.evidence.versus(version, baseline),
            self.latencies(canary.name), self.latencies(active.name if active else GENERAL),
            gate_closed=gate_closed)
        if check.progress.share != progress.share and check.progress.phase not in TERMINAL:
            logger.info("canary %s v%d: share %.3f -> %.3f (%s, delta %+.3f [%+.3f, %+.3f] over "
                        "%d samples)", canary.name, canary.version, progress.share,
                        check.progress.share, check.progress.phase.value, check.bounds.mean,
                        check.bounds.low, check.bounds.high, check.bounds.n)
        self.evidence.canaries[version] = check.progress
        self.canary_checks[version] = check
        self._hand_over_canaries()
        return check

    def _hand_over_canaries(self) -> None:
        """The current canary versions' progress to routing (here; the gate document carries it
        to the other instances). Versions no longer canaries are dropped."""
        current = {key(e) for e in self.fleet.registry if e.status is AdapterStatus.CANARY}
        self.evidence.canaries = {k: p for k, p in self.evidence.canaries.items()
                                  if k in current}
        self.canary_checks = {k: c for k, c in self.canary_checks.items() if k in current}
        self.gate.set_canaries({k: (p.share, p.phase.value)
                                for k, p in self.evidence.canaries.items()})

    async def _act_on_canary(self, domain: str, canary: AdapterEntry,
                             active: AdapterEntry | None, check: CanaryCheck) -> bool:
        """Promote (the registry's promote path: the active version is retired) or roll back (to
        shadow: it stops getting traffic and stays evaluated, its evidence on show) a canary
        whose evidence decided. True when the registry changed. A failed change (the state
        unreachable) is tried again after the canary's next item."""
        phase = check.progress.phase
        if phase not in TERMINAL:
            return False
        current = self.fleet.registry.get(canary.name)
        if (current is None or key(current) != key(canary)
                or current.status is not AdapterStatus.CANARY):
            return False  # changed meanwhile (a new version, an operator): not ours to decide
        promote = phase is CanaryPhase.PROMOTED
        b = check.bounds
        logger.warning("canary %s v%d %s against %s (delta %+.3f, confidence sequence [%+.3f, "
                       "%+.3f] over %d samples, share was %.3f)", canary.name, canary.version,
                       "promoted" if promote else "rolled back to shadow",
                       f"{active.name} v{active.version}" if active else "the general model",
                       b.mean, b.low, b.high, b.n, check.progress.share)
        try:
            await self.fleet.set_status(
                canary.name, AdapterStatus.ACTIVE if promote else AdapterStatus.SHADOW)
        except (RegistryError, StateUnavailable) as exc:
            logger.warning("canary %s v%d: the registry change failed (%s); trying again after "
                           "its next item", canary.name, canary.version, exc)
            return False
        self.metrics.canary_decisions.labels(domain, phase.value).inc()
        self.canary_log[domain] = self._canary_record(canary, active, check)
        self._hand_over_canaries()
        return True
