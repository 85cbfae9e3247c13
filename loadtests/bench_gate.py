"""The quality gate under continuous monitoring: the old t-interval rule vs the anytime-valid gate.

Synthetic streams of paired deltas (specialized - general), ``--looks`` (2,000) each, the gate
consulted after every one, as the shadow evaluator does:

* ``ternary``: deltas in {-1, 0, +1} with P(+1) = 0.2 + d/2, P(-1) = 0.2 - d/2 (mean d; at
  d = 0 the 0.2 / 0.6 / 0.2 of issue 15), what accuracy-scored items give;
* ``gaussian``: Normal(d, 0.25) clipped to [-1, 1], what ROUGE-L-scored items look like.

True deltas 0, -0.1, -0.2 and +0.1 (stationary), and *recovery*: -0.3 until the rule first
closes the gate, +0.1 from the next look on (the comparison changed in the adapter's favour: does
the gate reopen, how soon, and does it stay open).

Rules compared, per stream:

* ``old``: the rule before issue 15 (kept here only as the baseline): a Student-t 95% interval over
  the last 200 paired deltas, recomputed after every one; closed once >= 30 deltas and the whole
  interval < 0; a closed domain stays closed while the window's mean < 0.
* ``new``: :class:`router.gate.GateTrack`, the code the gateway runs, with the rule the gateway
  builds from its default settings (:func:`gateway.shadow.gate_rule`). The one change: the grid
  of *reported* bounds is 3 points instead of 401, which makes thousands of streams cheap and
  changes no decision (decisions read the capitals at 0 only; tests/unit/test_gate.py checks
  that the trajectories are identical).

Reported: the share of streams ever closed, the median (and 90th percentile) first closure, state
changes per stream, the share of looks closed. Also, on 200 equal-adapter streams with the full
401-point grid: how often the sequence ever missed the true mean, and its median width.

    python -m loadtests.bench_gate [--streams 1000] [--looks 2000] [--seed 15]

Results go to ``results/gate_simulation.json``; ``python -m loadtests.report`` renders them into
BENCHMARKS.md. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from gateway.settings import ShadowSettings
from gateway.shadow import gate_rule
from router.gate import GateRule, GateTrack
from router.sequence import BettingSequence

ROOT = Path(__file__).resolve().parents[1]

OLD_WINDOW, OLD_MIN_SAMPLES, OLD_CONFIDENCE = 200, 30, 0.95
RECOVERY = (-0.3, 0.1)  # the true delta before and after the first closure

# Issue 15's targets for the new gate.
TARGETS = {
    "false_closures_at_0": "streams ever closed <= 5% when the true delta is 0",
    "closes_at_-0.1": "closed in >= 90% of streams, median first closure <= 600 at delta -0.1",
    "closes_at_-0.2": "median first closure <= 200 at delta -0.2",
}


def ternary(rng: np.random.Generator, shape: tuple[int, int], mean: float) -> np.ndarray:
    u = rng.random(shape)
    p_down = 0.2 - mean / 2
    p_up = 0.2 + mean / 2
    return np.where(u < p_down, -1.0, np.where(u < p_down + p_up, 1.0, 0.0))


def gaussian(rng: np.random.Generator, shape: tuple[int, int], mean: float) -> np.ndarray:
    return np.clip(rng.normal(0.0, 0.25, shape) + mean, -1.0, 1.0)


NOISES: dict[str, Callable[[np.random.Generator, tuple[int, int], float], np.ndarray]] = {
    "ternary": ternary, "gaussian": gaussian}


class OldRule:
    """The pre-issue-15 rule, one look at a time over a batch of streams."""

    def __init__(self, streams: int) -> None:
        self.window = np.zeros((streams, OLD_WINDOW))
        self.total = np.zeros(streams)
        self.squares = np.zeros(streams)
        self.n = 0
        self.closed = np.zeros(streams, dtype=bool)
        self.quantile = student_t.ppf((1 + OLD_CONFIDENCE) / 2,
                                      np.maximum(np.arange(OLD_WINDOW + 1) - 1, 1))

    def observe(self, x: np.ndarray) -> np.ndarray:
        slot = self.n % OLD_WINDOW
        if self.n >= OLD_WINDOW:  # the oldest delta leaves the window
            old = self.window[:, slot]
            self.total -= old
            self.squares -= old**2
        self.window[:, slot] = x
        self.total += x
        self.squares += x**2
        self.n += 1
        n = min(self.n, OLD_WINDOW)
        if n < OLD_MIN_SAMPLES:
            return self.closed
        mean = self.total / n
        variance = np.maximum(self.squares - n * mean**2, 0.0) / (n - 1)
        high = mean + self.quantile[n] * np.sqrt(variance / n)
        self.closed = (high < 0) | (self.closed & (mean < 0))
        return self.closed


class NewGate:
    """The gateway's gate (:class:`router.gate.GateTrack`) over a batch of streams."""

    def __init__(self, streams: int, rule: GateRule) -> None:
        self.rule = rule
        self.track = GateTrack.start(rule, (streams,))

    def observe(self, x: np.ndarray) -> np.ndarray:
        self.track = self.track.observe(x, self.rule)
        return self.track.closed


def simulate(rule: OldRule | NewGate, before: np.ndarray, after: np.ndarray | None = None
             ) -> np.ndarray:
    """Closed (streams x looks). With ``after``, each stream draws from ``after`` from the look
    following its first closure on (recovery), else from ``before``."""
    streams, looks = before.shape
    closed = np.zeros((streams, looks), dtype=bool)
    ever = np.zeros(streams, dtype=bool)
    for i in range(looks):
        x = before[:, i] if after is None else np.where(ever, after[:, i], before[:, i])
        closed[:, i] = rule.observe(x)
        ever |= closed[:, i]
    return closed


def summarise(closed: np.ndarray, recovery: bool = False) -> dict[str, Any]:
    """Per-rule numbers from the closed matrix; for recovery, also what follows the first
    closure."""
    ever = closed.any(axis=1)
    first = np.where(ever, closed.argmax(axis=1), -1)  # index of the first closed look
    changes = np.abs(np.diff(closed.astype(np.int8), axis=1, prepend=0)).sum(axis=1)
    out: dict[str, Any] = {
        "ever_closed": float(ever.mean()),
        "median_first_closure": float(np.median(first[ever] + 1)) if ever.any() else None,
        "p90_first_closure": float(np.percentile(first[ever] + 1, 90)) if ever.any() else None,
        "mean_state_changes": float(changes.mean()),
        "share_of_looks_closed": float(closed.mean()),
    }
    if recovery:
        looks = closed.shape[1]
        after_first = np.arange(looks)[None, :] > first[:, None]
        reopen_at = np.where(ever, np.argmax(after_first & ~closed, axis=1), 0)
        reopened = ever & (reopen_at > 0)
        out |= {
            "reopened": float(reopened.sum() / max(ever.sum(), 1)),
            "median_looks_to_reopen": float(np.median(reopen_at[reopened] - first[reopened]))
            if reopened.any() else None,
            "mean_changes_after_reopening": float((changes[reopened] - 2).mean())
            if reopened.any() else None,
            "open_at_end": float((~closed[:, -1]).mean()),
        }
    return out


def sequence_quality(rule: GateRule, looks: int, seed: int, streams: int = 200
                     ) -> dict[str, Any]:
    """Coverage and width of the full-grid sequence on equal-adapter (ternary, 0) streams."""
    rng = np.random.default_rng(seed)
    deltas = ternary(rng, (streams, looks), 0.0)
    sequence = BettingSequence.start(1 - rule.confidence, rule.grid_points, (streams,),
                                     rule.truncation)
    missed = np.zeros(streams, dtype=bool)
    widths: dict[str, float] = {}
    checkpoints = {n for n in (100, 500, 1000, 2000, looks) if n <= looks}
    for i in range(looks):
        sequence = sequence.update(deltas[:, i])
        low, high = sequence.bounds()
        missed |= (low > 0) | (high < 0)
        if i + 1 in checkpoints:
            widths[str(i + 1)] = float(np.median(high - low))
    return {"streams": streams, "ever_missed_true_mean": float(missed.mean()),
            "median_width_at": widths}


def targets(results: dict[str, Any]) -> dict[str, Any]:
    def new(noise: str, scenario: str) -> dict[str, Any]:
        return results[noise][scenario]["new"]  # type: ignore[no-any-return]

    checks: dict[str, Any] = {}
    for noise in NOISES:
        zero, m1, m2 = new(noise, "0"), new(noise, "-0.1"), new(noise, "-0.2")
        checks[f"false_closures_at_0/{noise}"] = {
            "target": TARGETS["false_closures_at_0"], "value": zero["ever_closed"],
            "met": zero["ever_closed"] <= 0.05}
        checks[f"closes_at_-0.1/{noise}"] = {
            "target": TARGETS["closes_at_-0.1"],
            "value": [m1["ever_closed"], m1["median_first_closure"]],
            "met": m1["ever_closed"] >= 0.9 and (m1["median_first_closure"] or 1e9) <= 600}
        checks[f"closes_at_-0.2/{noise}"] = {
            "target": TARGETS["closes_at_-0.2"], "value": m2["median_first_closure"],
            "met": (m2["median_first_closure"] or 1e9) <= 200}
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gate_simulation.json")
    args = parser.parse_args()

    gateway_rule = gate_rule(ShadowSettings())
    rule = dataclasses.replace(gateway_rule, grid_points=3)
    scenarios = ["0", "-0.1", "-0.2", "0.1", "recovery"]
    shape = (args.streams, args.looks)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for n_index, (noise, draw) in enumerate(NOISES.items()):
        results[noise] = {}
        for s_index, scenario in enumerate(scenarios):
            rng = np.random.default_rng([args.seed, n_index, s_index])
            recovery = scenario == "recovery"
            first = draw(rng, shape, RECOVERY[0] if recovery else float(scenario))
            then = draw(rng, shape, RECOVERY[1]) if recovery else None
            # The same draws for both rules.
            results[noise][scenario] = {
                "old": summarise(simulate(OldRule(args.streams), first, then), recovery),
                "new": summarise(simulate(NewGate(args.streams, rule), first, then), recovery),
            }
            r = results[noise][scenario]
            print(f"{noise:<9} {scenario:>8}  ever closed old {r['old']['ever_closed']:6.1%} "
                  f"new {r['new']['ever_closed']:6.1%}   median first closure old "
                  f"{r['old']['median_first_closure']} new {r['new']['median_first_closure']}"
                  f"   changes/stream old {r['old']['mean_state_changes']:.2f} new "
                  f"{r['new']['mean_state_changes']:.2f}", flush=True)
            if recovery:
                print(f"{'':<19}reopened: old {r['old']['reopened']:.1%} (median "
                      f"{r['old']['median_looks_to_reopen']} looks after closing) new "
                      f"{r['new']['reopened']:.1%} (median "
                      f"{r['new']['median_looks_to_reopen']})", flush=True)
    quality = sequence_quality(gateway_rule, args.looks, args.seed)
    print(f"sequence (401-point grid, {quality['streams']} equal-adapter streams): ever missed "
          f"the true mean {quality['ever_missed_true_mean']:.1%}, median width "
          f"{quality['median_width_at']}")
    checks = targets(results)
    for name, check in checks.items():
        print(f"target {name}: {check['value']} -> {'met' if check['met'] else 'NOT met'}")
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "command": " ".join(["python -m loadtests.bench_gate", *sys.argv[1:]]),
        "settings": {"streams": args.streams, "looks": args.looks, "seed": args.seed,
                     "recovery": {"before": RECOVERY[0], "after": RECOVERY[1]},
                     "old": {"window": OLD_WINDOW, "min_samples": OLD_MIN_SAMPLES,
                             "confidence": OLD_CONFIDENCE},
                     "new": dataclasses.asdict(gateway_rule)},
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
        "sequence": quality,
        "targets": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out} ({report['seconds']} s)")
    return 0 if all(c["met"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
