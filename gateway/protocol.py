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

    def routing_text(self) -> str:
        """The text a classifier looks at: the last user turn (plain text parts only)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return _text_of(message.content)
        return ""


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Only what the gateway reads is typed; vLLM validates the rest
    (``input`` items, ``text``, ``reasoning``...), so its own 400s reach the client."""

    model_config = ConfigDict(extra="allow")

    model: NonEmptyStr
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    stream: StrictBool = False
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    previous_response_id: NonEmptyStr | None = None
    # OpenAI's default is to store; vLLM stores only with VLLM_ENABLE_RESPONSES_API_STORE=1
    # (engine.responses_store) and otherwise answers store=false.
    store: StrictBool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None

    def conversation(self) -> list[ChatMessage]:
        """The ``input`` as chat turns, the shape chat routing reads: message items only (tool
        calls, their outputs and reasoning items carry no routing signal). ``instructions`` are
        left out, like a system prompt, and so are turns stored upstream under
        ``previous_response_id`` (the gateway never sees them)."""
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        turns = []
        for item in self.input:
            role = item.get("role")
            if item.get("type", "message") != "message" or role not in _CHAT_ROLES:
                continue
            turns.append(ChatMessage(role=role, content=_item_text(item.get("content"))))
        return turns

    def routing_text(self) -> str:
        return ChatCompletionRequest.model_construct(messages=self.conversation()).routing_text()


_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant"})


def _item_text(content: Any) -> str:
    """A Responses message item's text: a string, or its input_text/output_text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        str(part.get("text", "")) for part in content
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
    )


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]

    def routing_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if self.prompt and isinstance(self.prompt[0], str):
            return str(self.prompt[-1])
        return ""  # token ids: nothing to classify


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return " ".join(
        str(part.get("text", "")) for part in content if part.get("type") == "text"
    )


OpenAIRequest = ChatCompletionRequest | CompletionRequest | ResponsesRequest


def check_request(body: OpenAIRequest, limits: LimitSettings) -> None:
    """Refuse, with a 400 naming the field, what the gateway will not forward: oversized or
    too many messages (or input items), max_tokens beyond the bound, unknown fields (when
    rejected), and text that is not valid Unicode (lone surrogates, which JSON's \\u escapes
    can carry)."""
    texts: list[tuple[str, str]] = []
    if isinstance(body, ChatCompletionRequest):
        _check_count("messages", len(body.messages), limits)
        for i, message in enumerate(body.messages):
            texts.append((f"messages.{i}.content", _text_of(message.content)))
    elif isinstance(body, ResponsesRequest):
        texts.append(("instructions", body.instructions or ""))
        if isinstance(body.input, str):
            texts.append(("input", body.input))
        else:
            _check_count("input", len(body.input), limits)
            texts += [(f"input.{i}.content", _item_text(item.get("content")))
                      for i, item in enumerate(body.input)]
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
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
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


def _check_count(param: str, count: int, limits: LimitSettings) -> None:
    if count > limits.max_messages:
        raise InvalidRequestError(
            f"{param}: at most {limits.max_messages} messages are accepted (got {count}).",
            param=param, code="too_many_messages")


def check_tools(body: OpenAIRequest, tool_calls: bool) -> None:
    """Without a tool-call parser in the engine (upstream.tool_calls false), a request that lets
    the model call tools gets a 400 here instead of vLLM's, which names engine flags the client
    cannot set. ``tool_choice: "none"`` passes: the model may not call them, so nothing needs
    parsing (vLLM accepts it without a parser). Chat's legacy ``functions`` count as tools."""
    if tool_calls or isinstance(body, CompletionRequest):
        return
    extra = body.model_extra or {}
    if isinstance(body, ResponsesRequest):
        tools, choice = body.tools, body.tool_choice
    else:
        tools, choice = extra.get("tools"), extra.get("tool_choice")
        if not tools and extra.get("functions"):
            tools, choice = extra["functions"], extra.get("function_call")
    if tools and choice != "none":
        raise InvalidRequestError(
            "Tool calls are not enabled for this model: its engine runs without a tool-call "
            "parser (engine.tool_call_parser). Send no `tools`, or tool_choice \"none\".",
            param="tools", code="tool_calls_not_enabled")


def _require_unicode(text: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            f"{param}: the text is not valid Unicode (a lone surrogate escape such as \\ud800).",
            param=param, code="invalid_unicode") from None


def estimate_tokens(body: OpenAIRequest, default_max: int) -> int:
    """Tokens a request may use, for the per-key token budget: its prompt at ~4 characters per
    token plus what it may generate."""
    if isinstance(body, ChatCompletionRequest):
        chars = sum(len(_text_of(m.content)) for m in body.messages)
        limit = body.max_completion_tokens or body.max_tokens
    elif isinstance(body, ResponsesRequest):
        chars = len(body.instructions or "") + sum(len(_text_of(m.content))
                                                   for m in body.conversation())
        return chars // 4 + (body.max_output_tokens or default_max)
    else:
        prompt = body.prompt
        chars = len(prompt) * 4 if not isinstance(prompt, str) and prompt and \
            not isinstance(prompt[0], str) else len(str(prompt))
        limit = body.max_tokens
    return chars // 4 + (limit or default_max) * (body.n or 1)
