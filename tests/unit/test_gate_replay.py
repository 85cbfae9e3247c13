"""`slm-gateway gate replay` as a user runs it (a subprocess): one line out per line in, counts per
domain, bounds that hold the truth, closes on bad adapters, not on equal ones, new versions start
clean, bad input is refused, and it is the very gate the gateway runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.settings import Settings
from gateway.shadow import gate_rule
from router.gate import VersionGate

ROOT = Path(__file__).resolve().parents[2]


def replay(lines: list[str]) -> subprocess.CompletedProcess[str]:
    # The gateway's defaults: no config file, no SLM_GATEWAY_* overrides from the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_GATEWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "gateway.cli", "gate", "replay"],
                          input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, check=False)


def records(domain: str, deltas: np.ndarray, **extra: object) -> list[dict[str, object]]:
    return [{"domain": domain, "delta": float(d), **extra} for d in deltas]


def paired(seed: int, n: int, p_down: float, p_up: float) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return np.where(u < p_down, -1.0, np.where(u < p_down + p_up, 1.0, 0.0))


def interleave(*streams: list[dict[str, object]]) -> list[dict[str, object]]:
    """Round-robin, as the shadow evaluator takes domains."""
    out: list[dict[str, object]] = []
    for i in range(max(len(s) for s in streams)):
        out += [s[i] for s in streams if i < len(s)]
    return out


@pytest.fixture(scope="module")
def mixed() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Four domains, interleaved: equal (mean 0), slightly worse (-0.1), much worse (-0.4),
    better (+0.3); 600 deltas each. One run of the CLI for the properties below."""
    inputs = interleave(records("equal", paired(1, 600, 0.2, 0.2)),
                        records("worse", paired(2, 600, 0.25, 0.15)),
                        records("bad", paired(3, 600, 0.5, 0.1)),
                        records("good", paired(4, 600, 0.05, 0.35)))
    result = replay([json.dumps(r) for r in inputs])
    assert result.returncode == 0, result.stderr
    return inputs, [json.loads(line) for line in result.stdout.splitlines()]


TRUE_MEAN = {"equal": 0.0, "worse": -0.1, "bad": -0.4, "good": 0.3}


def test_one_line_out_per_line_in_with_n_counted_per_domain(mixed: tuple[list, list]) -> None:
    inputs, outputs = mixed
    assert len(outputs) == len(inputs)
    seen: dict[str, int] = {}
    for given, got in zip(inputs, outputs, strict=True):
        seen[given["domain"]] = seen.get(given["domain"], 0) + 1
        assert set(got) == {"domain", "n", "state", "low", "high"}
        assert got["domain"] == given["domain"] and got["n"] == seen[given["domain"]]
        assert got["state"] in ("open", "closed")


def test_bounds_are_ordered_and_hold_the_true_mean_at_every_line(mixed: tuple[list, list]
                                                                  ) -> None:
    for got in mixed[1]:
        assert -1 <= got["low"] <= got["high"] <= 1
        assert got["low"] <= TRUE_MEAN[got["domain"]] <= got["high"]


def test_bad_adapters_are_closed_and_equal_or_better_ones_stay_open(mixed: tuple[list, list]
                                                                    ) -> None:
    outputs = mixed[1]

    def first_closed(domain: str) -> int | None:
        return next((o["n"] for o in outputs if o["domain"] == domain
                     and o["state"] == "closed"), None)

    assert first_closed("bad") is not None and first_closed("bad") <= 100  # type: ignore[operator]
    assert first_closed("worse") is not None
    assert first_closed("equal") is None and first_closed("good") is None
    # Each closure happens on a line whose whole sequence is below zero.
    previous: dict[str, str] = {}
    for o in outputs:
        if o["state"] == "closed" and previous.get(o["domain"], "open") == "open":
            assert o["high"] < 0
        previous[o["domain"]] = o["state"]


def test_an_equal_adapter_stays_open_over_2000_looks() -> None:
    result = replay([json.dumps(r) for r in records("legal", paired(42, 2000, 0.2, 0.2))])
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outputs) == 2000 and all(o["state"] == "open" for o in outputs)
    assert outputs[-1]["high"] - outputs[-1]["low"] < 0.2


def test_a_new_version_starts_a_new_sequence() -> None:
    inputs = records("legal", np.full(40, -1.0), version=1) + records(
        "legal", np.zeros(3), version=2)
    outputs = [json.loads(line) for line in replay([json.dumps(r) for r in inputs]).stdout
               .splitlines()]
    assert outputs[39]["state"] == "closed" and outputs[39]["n"] == 40
    assert [o["n"] for o in outputs[40:]] == [1, 2, 3]
    assert all(o["state"] == "open" for o in outputs[40:])


def test_replay_is_the_gate_the_gateway_runs_with_its_default_settings() -> None:
    deltas = np.concatenate([paired(7, 300, 0.3, 0.1), paired(8, 300, 0.05, 0.4)])
    outputs = [json.loads(line) for line in replay(
        [json.dumps(r) for r in records("legal", deltas)]).stdout.splitlines()]
    gate = VersionGate.start(gate_rule(Settings().shadow))  # what ShadowEvaluator builds
    for delta, got in zip(deltas, outputs, strict=True):
        gate = gate.observe(float(delta))
        evidence = gate.evidence()
        assert got == {"domain": "legal", "n": gate.n, "state": gate.state.value,
                       "low": round(evidence.low, 4), "high": round(evidence.high, 4)}
    assert {o["state"] for o in outputs} == {"open", "closed"}  # it closed and reopened


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not JSON"),
    ('["legal", 0.5]', "JSON object"),
    ('{"delta": 0.5}', "'domain'"),
    ('{"domain": "legal", "delta": "0.5"}', "'delta' must be a number"),
    ('{"domain": "legal", "delta": 1.5}', "[-1, 1]"),
    ('{"domain": "legal", "delta": NaN}', "[-1, 1]"),
    ('{"domain": "legal", "delta": 0.5, "version": [2]}', "'version'"),
])
def test_a_bad_line_stops_the_replay_with_a_clear_error(line: str, message: str) -> None:
    result = replay(['{"domain": "legal", "delta": 0.5}', "", line,
                     '{"domain": "legal", "delta": 0.5}'])
    assert result.returncode == 1
    assert result.stderr.startswith("error: line 3: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1  # what came before the bad line
