"""OpenAI-style traffic through the gateway, for locust.

Each request draws a domain from the configured mix, a prompt of that domain (the evaluation
suite's test items and the router's held-out realistic requests), streaming or not, and either
``model: "auto"`` or the domain id, as a chat completion or (``load.responses_share``) through
the Responses API. Requests are named ``chat/<domain>``, ``stream/<domain>``,
``responses/<domain>`` and ``responses-stream/<domain>`` (the domain the prompt belongs to), so
locust's statistics are per domain; streams also report their time to first token as request
type ``TTFT``. A chat stream counts as failed when it carries an error event or ends without
``[DONE]``, a Responses stream when it carries an ``error`` event or ends without
``response.completed``.

The load shape and thresholds come from ``--slo-config`` (``loadtests/slo.yaml``, what
``python -m loadtests.slo_gate`` passes); with it, the run's exit code is the SLO verdict and the
verdict is written to ``--slo-report``. Run it directly with e.g.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 4 -t 30s
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.stats import StatsEntry

from loadtests.slo import DEFAULT_CONFIG, GateConfig, LoadShape, Observed, evaluate, load_config

OUT_OF_TAXONOMY = "out_of_taxonomy"
TTFT = "TTFT"


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--slo-config", default=str(DEFAULT_CONFIG),
                        help="YAML or JSON gate config: load shape and thresholds")
    parser.add_argument("--slo-report", default="", help="write the SLO verdict here (JSON)")
    parser.add_argument("--api-key", default=os.environ.get("SLM_GATEWAY_API_KEY", ""),
                        help="bearer key for the gateway (env SLM_GATEWAY_API_KEY)")


def prompt_pools() -> dict[str, list[str]]:
    """Prompts per domain: suite items (test split) and held-out realistic router requests;
    realistic requests outside every domain go to ``out_of_taxonomy``."""
    from adapters.evaluation.render import suite_items
    from router.data import REALISTIC, authored_examples

    pools: dict[str, list[str]] = defaultdict(list)
    for item in suite_items(per_domain=40):
        pools[item.domain].append(item.prompt)
    for example in authored_examples():
        if example.split == REALISTIC:
            pools[example.domain or OUT_OF_TAXONOMY].append(example.text)
    return dict(pools)


class _Traffic:
    """What every user draws from; built once per locust process at init."""

    def __init__(self, shape: LoadShape, pools: dict[str, list[str]], api_key: str) -> None:
        unknown = set(shape.domain_mix) - set(pools)
        if unknown:
            raise ValueError(f"domain_mix names unknown domains: {sorted(unknown)}")
        mix = shape.domain_mix or {domain: 1.0 for domain in pools}
        self.domains = [d for d, w in mix.items() if w > 0]
        self.weights = [mix[d] for d in self.domains]
        self.pools = pools
        self.shape = shape
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}


_traffic: _Traffic | None = None
_config: GateConfig | None = None


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _traffic, _config
    options = environment.parsed_options
    _config = load_config(Path(options.slo_config)) if options else GateConfig()
    _traffic = _Traffic(_config.load, prompt_pools(), options.api_key if options else "")
    OpenAIUser.wait_time = between(_config.load.wait_min_s, _config.load.wait_max_s)
    if _config.load.max_requests is not None:
        _stop_after(environment, _config.load.max_requests)


def _stop_after(environment: Environment, max_requests: int) -> None:
    """Quit once ``max_requests`` HTTP requests (TTFT entries excluded) have completed."""
    done = 0

    def on_request(request_type: str, **_: Any) -> None:
        nonlocal done
        if request_type == TTFT:
            return
        done += 1
        if done == max_requests and environment.runner is not None:
            # Not from inside the request's own greenlet: quitting kills the users.
            gevent.spawn(environment.runner.quit)

    environment.events.request.add_listener(on_request)


class OpenAIUser(HttpUser):
    wait_time = between(0, 1)

    @task
    def chat(self) -> None:
        assert _traffic is not None
        shape = _traffic.shape
        domain = random.choices(_traffic.domains, _traffic.weights)[0]
        auto = domain == OUT_OF_TAXONOMY or random.random() < shape.auto_share
        stream = random.random() < shape.stream_share
        prompt = random.choice(_traffic.pools[domain])
        if random.random() < shape.responses_share:
            self._respond({"model": "auto" if auto else domain, "input": prompt,
                           "max_output_tokens": shape.max_tokens, "temperature": 0,
                           "stream": stream},
                          f"responses-stream/{domain}" if stream else f"responses/{domain}")
            return
        body = {
            "model": "auto" if auto else domain,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": shape.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if stream:
            self._stream(body, f"stream/{domain}")
        else:
            self._complete(body, f"chat/{domain}")

    def _complete(self, body: dict[str, Any], name: str) -> None:
        with self.client.post("/v1/chat/completions", json=body, name=name,
                              headers=_traffic.headers if _traffic else {},
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_message(response.text)}")
                return
            try:
                answer = response.json()
                if not answer["choices"]:
                    response.failure("no choices in the answer")
            except (ValueError, KeyError, TypeError):
                response.failure("the answer is not a chat completion")

    def _stream(self, body: dict[str, Any], name: str) -> None:
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=body, name=name, stream=True,
                              headers=_traffic.headers if _traffic else {},
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_message(response.text)}")
                return
            first_token = None
            done = False
            error = None
            for line in response.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    error = _error_message(json.dumps(event))
                    break
                if first_token is None and _has_token(event):
                    first_token = _report_first_token(name, started)
            # The request's own time is the whole stream, not the time to its headers.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if error is not None:
                response.failure(f"error event in stream: {error}")
            elif not done:
                response.failure("stream ended without [DONE]")


    def _respond(self, body: dict[str, Any], name: str) -> None:
        """One Responses API request: the answer must be a completed response; a stream must
        end with ``response.completed`` and carry no ``error`` event."""
        started = time.perf_counter()
        with self.client.post("/v1/responses", json=body, name=name, stream=body["stream"],
                              headers=_traffic.headers if _traffic else {},
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_message(response.text)}")
                return
            if not body["stream"]:
                try:
                    if response.json()["status"] != "completed":
                        response.failure(f"response status {response.json()['status']}")
                except (ValueError, KeyError, TypeError):
                    response.failure("the answer is not a response object")
                return
            first_token = None
            completed = False
            error = None
            for line in response.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                kind = event.get("type")
                if kind == "error" or (kind is None and "error" in event):
                    error = _error_message(json.dumps(event))
                    break
                if kind == "response.completed":
                    completed = True
                    break
                if first_token is None and kind == "response.output_text.delta" and \
                        event.get("delta"):
                    first_token = _report_first_token(name, started)
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if error is not None:
                response.failure(f"error event in stream: {error}")
            elif not completed:
                response.failure("stream ended without response.completed")


def _report_first_token(name: str, started: float) -> float:
    """Record a stream's time to first token as its own locust entry (type TTFT)."""
    first_token = time.perf_counter() - started
    events.request.fire(request_type=TTFT, name=name, response_time=first_token * 1000,
                        response_length=0, exception=None, context={})
    return first_token


def _has_token(event: dict[str, Any]) -> bool:
    return any((choice.get("delta") or {}).get("content") for choice in event.get("choices", []))


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
        return str((data.get("error") or data)["message"])[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return text[:200]


# ------------------------------------------------------------------------------- the verdict
def observed(environment: Environment) -> Observed:
    """Totals over the HTTP requests (TTFT entries excluded) and TTFT entries separately."""
    requests = StatsEntry(environment.stats, "requests", "POST")
    ttft = StatsEntry(environment.stats, TTFT, TTFT)
    for entry in environment.stats.entries.values():
        (ttft if entry.method == TTFT else requests).extend(entry)

    def p95(entry: StatsEntry) -> float | None:
        return float(entry.get_response_time_percentile(0.95)) if entry.num_requests else None

    return Observed(requests=requests.num_requests, failures=requests.num_failures,
                    p95_latency_ms=p95(requests), p95_ttft_ms=p95(ttft))


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    if _config is None:
        return
    seen = observed(environment)
    broken = evaluate(seen, _config.slo)
    verdict = {
        "passed": not broken,
        "broken": broken,
        "observed": {**seen.__dict__, "error_rate": seen.error_rate},
        "thresholds": _config.slo.model_dump(),
        "load": _config.load.model_dump(),
        "per_name": {
            f"{e.method} {e.name}": {"requests": e.num_requests, "failures": e.num_failures,
                                      "p95_ms": e.get_response_time_percentile(0.95)}
            for e in environment.stats.entries.values()
        },
    }
    options = environment.parsed_options
    if options is not None and options.slo_report:
        Path(options.slo_report).write_text(json.dumps(verdict, indent=2) + "\n")
    print("\nSLO gate: " + ("PASSED" if not broken else "FAILED"))
    print(f"  requests {seen.requests}, failures {seen.failures} "
          f"(error rate {seen.error_rate:.4f}, limit {_config.slo.max_error_rate})")
    print(f"  p95 latency {_fmt(seen.p95_latency_ms)} (limit {_fmt(_config.slo.p95_latency_ms)})")
    print(f"  p95 TTFT    {_fmt(seen.p95_ttft_ms)} (limit {_fmt(_config.slo.p95_ttft_ms)})")
    for line in broken:
        print(f"  broken: {line}")
    environment.process_exit_code = 0 if not broken else 1


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"
