"""Keys, rate limits, admission, circuit breaker and input limits as plain objects."""

from __future__ import annotations

import asyncio
import math

import pytest

from gateway.errors import InvalidRequestError
from gateway.limits import ANONYMOUS, Admission, KeyRing, Overloaded, RateLimiter, hash_key
from gateway.protocol import ChatCompletionRequest, CompletionRequest, check_request
from gateway.settings import LimitSettings, Settings
from gateway.upstream import BreakerState, CircuitBreaker, Replica, choose_replica


def test_keyring_keeps_only_digests_and_identifies_by_a_short_id() -> None:
    ring = KeyRing(["sk-alpha"], [hash_key("sk-beta")])
    assert "sk-alpha" not in repr(vars(ring))
    assert ring.identify("Bearer sk-alpha") == hash_key("sk-alpha")[:8]
    assert ring.identify("bearer sk-beta") == hash_key("sk-beta")[:8]
    assert ring.identify("Bearer sk-gamma") is None
    assert ring.identify("sk-alpha") is None  # no scheme
    assert ring.identify(None) is None


def test_keyring_without_keys_lets_everyone_in_as_anonymous() -> None:
    assert KeyRing().open
    assert KeyRing().identify(None) == ANONYMOUS


def test_api_keys_come_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLM_GATEWAY_API_KEYS", "sk-one, sk-two,,")
    monkeypatch.setenv("SLM_GATEWAY_API_KEY_HASHES", hash_key("sk-three").upper())
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-one", "sk-two"]
    assert settings.api_key_hashes == [hash_key("sk-three")]
    assert "sk-one" not in repr(settings)


def test_a_malformed_key_hash_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        Settings(api_key_hashes=["abc"])


def test_request_limit_refuses_the_burst_past_a_minute_and_refills() -> None:
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=None)
    assert [limiter.check("k", 10, now=0.0)[1] for _ in range(3)] == [None, None, None]
    wait, limit = limiter.check("k", 10, now=0.0)
    assert limit == "requests" and wait == pytest.approx(20.0)  # one request per 20 s
    assert limiter.check("other", 10, now=0.0) == (0.0, None)  # per key
    assert limiter.check("k", 10, now=20.0) == (0.0, None)


def test_token_limit_charges_admitted_requests_and_refuses_one_that_never_fits() -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600)
    assert limiter.check("k", 500, now=0.0) == (0.0, None)
    wait, limit = limiter.check("k", 200, now=0.0)
    assert limit == "tokens" and wait == pytest.approx(10.0)  # 100 missing at 10 per second
    wait, limit = limiter.check("k", 601, now=100.0)
    assert limit == "tokens" and math.isinf(wait)


async def test_admission_queues_up_to_its_bound_then_refuses_at_once() -> None:
    admission = Admission(max_in_flight=2, max_queue=1, timeout_s=5.0)
    await admission.acquire()
    await admission.acquire()
    queued = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert admission.waiting == 1
    with pytest.raises(Overloaded):
        await admission.acquire()  # in flight and queue both full
    admission.release()  # the slot passes to the queued request
    await queued
    assert admission.in_flight == 2 and admission.waiting == 0
    admission.release()
    admission.release()
    assert admission.in_flight == 0


async def test_admission_wait_times_out_and_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    admission = Admission(max_in_flight=1, max_queue=4, timeout_s=0.05)
    await admission.acquire()
    with pytest.raises(Overloaded):
        await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    admission.release()
    assert admission.in_flight == 0 and admission.waiting == 0


def test_breaker_opens_after_consecutive_failures_and_probes_once_when_cooled_down() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=10.0)
    for _ in range(2):
        breaker.failed(now=0.0)
    breaker.succeeded()  # consecutive failures only
    for _ in range(3):
        breaker.failed(now=1.0)
    assert breaker.state is BreakerState.OPEN and not breaker.allows(now=5.0)
    assert breaker.allows(now=11.0) and breaker.state is BreakerState.HALF_OPEN
    breaker.dispatched()
    assert not breaker.allows(now=11.5)  # one trial at a time
    breaker.failed(now=12.0)
    assert breaker.state is BreakerState.OPEN and not breaker.allows(now=13.0)
    assert breaker.allows(now=22.0)
    breaker.dispatched()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allows(now=22.0)


def test_a_half_open_trial_the_client_abandoned_does_not_block_the_next_one() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0)
    breaker.failed(now=0.0)
    assert breaker.allows(now=2.0)
    breaker.dispatched()
    breaker.abandoned()
    assert breaker.allows(now=2.0) and breaker.state is BreakerState.HALF_OPEN


def test_placement_skips_open_breakers_and_replicas_that_failed_this_request() -> None:
    a, b = Replica("r0", "http://a", healthy=True), Replica("r1", "http://b", healthy=True)
    b.outstanding = 5
    assert choose_replica([a, b], None, lambda url, name: False) is a
    assert choose_replica([a, b], None, lambda url, name: False, exclude=["http://a"]) is b
    for _ in range(a.breaker.threshold):
        a.breaker.failed(now=0.0)
    assert choose_replica([a, b], None, lambda url, name: False, now=1.0) is b
    assert choose_replica([a], None, lambda url, name: False, now=1.0) is None


LIMITS = LimitSettings(max_messages=3, max_message_chars=50, max_tokens=100)


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "base", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (chat(messages=[{"role": "user", "content": "x"}] * 4), "too_many_messages"),
        (chat(messages=[{"role": "user", "content": "x" * 51}]), "message_too_long"),
        (chat(max_tokens=101), "invalid_value"),
        (chat(max_completion_tokens=101), "invalid_value"),
        (chat(messages=[{"role": "user", "content": "bad \ud800 text"}]), "invalid_unicode"),
        (chat(logit_bias={"\udfff": 1}), "invalid_unicode"),
        (CompletionRequest(model="base", prompt=["ok", "y" * 51]), "message_too_long"),
    ],
)
def test_hostile_requests_are_refused_with_a_named_code(
    request_: ChatCompletionRequest | CompletionRequest, code: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_request(request_, LIMITS)
    assert info.value.code == code


def test_unknown_fields_are_forwarded_or_rejected_by_policy() -> None:
    body = chat(top_k=5)
    check_request(body, LIMITS)  # forwarded (vLLM extension)
    with pytest.raises(InvalidRequestError, match="top_k"):
        check_request(body, LIMITS.model_copy(update={"unknown_fields": "reject"}))


def test_requests_within_limits_pass() -> None:
    check_request(chat(max_tokens=100, messages=[{"role": "user", "content": "x" * 50}] * 3),
                  LIMITS)
