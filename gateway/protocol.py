"""OpenAI request schemas: the fields the gateway reads are typed strictly; the rest pass through.

Unknown fields are kept (``extra="allow"``) and forwarded to vLLM, which supports many
extensions (``top_k``, ``min_p``, ``guided_json``...) and rejects what it does not know.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from gateway.errors import InvalidRequestError
from gateway.settings import LimitSettings
from router.conversation import user_turns

NonEmptyStr = Annotated[StrictStr, Field(min_length=1, max_length=256)]


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" (what the OpenAPI schema promises) includes 5.0; strings and
    # booleans stay refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeInt = Annotated[StrictInt, BeforeValidator(_whole_number)]
PositiveInt = Annotated[StrictInt, Ge(1), BeforeValidator(_whole_number)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: NonEmptyStr
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[StrictInt, Ge(1), Le(16), BeforeValidator(_whole_number)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: WholeInt | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None

    def routing_turns(self) -> list[str]:
        """What the classifier looks at: the user turns, oldest first (plain text parts only;
        the system prompt and assistant turns stay out — see router/conversation.py)."""
        return user_turns((m.role, _text_of(m.content)) for m in self.messages)


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]

    def routing_turns(self) -> list[str]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], str):
            return [str(self.prompt[-1])]
        return []  # token ids: nothing to classify


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's plain text (text parts joined; images and audio have none)."""
    return _text_of(content)


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return " ".join(
        str(part.get("text", "")) for part in content if part.get("type") == "text"
    )


def check_request(body: ChatCompletionRequest | CompletionRequest, limits: LimitSettings) -> None:
    """Refuse, with a 400 naming the field, what the gateway will not forward: oversized or
    too many messages, max_tokens beyond the bound, unknown fields (when rejected), and text
    that is not valid Unicode (lone surrogates, which JSON's \\u escapes can carry)."""
    texts: list[tuple[str, str]] = []
    if isinstance(body, ChatCompletionRequest):
        if len(body.messages) > limits.max_messages:
            raise InvalidRequestError(
                f"messages: at most {limits.max_messages} messages are accepted "
                f"(got {len(body.messages)}).", param="messages", code="too_many_messages")
        for i, message in enumerate(body.messages):
            texts.append((f"messages.{i}.content", _text_of(message.content)))
    elif isinstance(body.prompt, str):
        texts.append(("prompt", body.prompt))
    elif body.prompt and isinstance(body.prompt[0], str):
        texts += [(f"prompt.{i}", str(p)) for i, p in enumerate(body.prompt)]
    for param, text in texts:
        if len(text) > limits.max_message_chars:
            raise InvalidRequestError(
                f"{param}: at most {limits.max_message_chars} characters are accepted "
                f"(got {len(text)}).", param=param, code="message_too_long")
        _require_unicode(text, param)
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name, None)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequestError(
                f"{name}: at most {limits.max_tokens} (got {value}).", param=name,
                code="invalid_value")
    extra = body.model_extra or {}
    if extra and limits.unknown_fields == "reject":
        names = ", ".join(sorted(extra)[:10])
        raise InvalidRequestError(f"Unknown request fields: {names}.", param=sorted(extra)[0],
                                  code="unknown_field")
    if extra:
        _require_unicode(json.dumps(extra, ensure_ascii=False), "request")


def _require_unicode(text: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            f"{param}: the text is not valid Unicode (a lone surrogate escape such as \\ud800).",
            param=param, code="invalid_unicode") from None


def estimate_tokens(body: ChatCompletionRequest | CompletionRequest, default_max: int) -> int:
    """Tokens a request may use, for the per-key token budget: its prompt at ~4 characters per
    token plus what it may generate."""
    if isinstance(body, ChatCompletionRequest):
        chars = sum(len(_text_of(m.content)) for m in body.messages)
        limit = body.max_completion_tokens or body.max_tokens
    else:
        prompt = body.prompt
        chars = len(prompt) * 4 if not isinstance(prompt, str) and prompt and \
            not isinstance(prompt[0], str) else len(str(prompt))
        limit = body.max_tokens
    return chars // 4 + (limit or default_max) * (body.n or 1)
