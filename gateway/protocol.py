"""OpenAI request schemas: the fields the gateway reads are typed strictly; the rest pass through.

Unknown fields are kept (``extra="allow"``) and forwarded to vLLM, which supports many
extensions (``top_k``, ``min_p``, ``guided_json``...) and rejects what it does not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

NonEmptyStr = Annotated[StrictStr, Field(min_length=1, max_length=256)]


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
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None

    def routing_text(self) -> str:
        """The text a classifier looks at: the last user turn (plain text parts only)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return _text_of(message.content)
        return ""


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
