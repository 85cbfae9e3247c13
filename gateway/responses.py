"""Stateful Responses API: which replica stored which response, read off the answers in passing.

vLLM keeps stored responses in the memory of the replica that made them (and only with
``VLLM_ENABLE_RESPONSES_API_STORE=1``), so a request naming ``previous_response_id`` must go to
that replica. The gateway learns the owner from the answer itself: the JSON's ``id``, or, in a
stream, the ``response.created`` event (the id) and the ``response.completed`` event (stored
now: vLLM stores before it sends that event). vLLM 0.32's answers carry no ``store`` field, so
a response counts as stored unless the request said ``store: false`` or the answer does (as
OpenAI's do); when the engine did not store it after all, the follow-up's 404 from the replica
becomes the same 400 as an unknown id.

``ResponseDirectory`` is the seam for several gateway instances: an implementation over the
shared state backend can replace :class:`LocalResponseDirectory` without touching the proxy.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import GatewayError, responses_sse_error_frame


class ResponseDirectory(Protocol):
    def owner(self, response_id: str) -> str | None:
        """The URL of the replica that stored ``response_id``; None: unknown or forgotten."""

    def remember(self, response_id: str, replica_url: str) -> None: ...

    def forget(self, response_id: str) -> None: ...


class LocalResponseDirectory:
    """In-process and bounded: the ``capacity`` most recently made or used responses. An id
    forgotten here gets a 400 (the gateway cannot know which replica holds it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, response_id: str) -> str | None:
        url = self._owners.get(response_id)
        if url is not None:
            self._owners.move_to_end(response_id)  # a conversation in use stays remembered
        return url

    def remember(self, response_id: str, replica_url: str) -> None:
        self._owners[response_id] = replica_url
        self._owners.move_to_end(response_id)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget(self, response_id: str) -> None:
        self._owners.pop(response_id, None)


def stored_response_id(content: bytes, *, requested: bool = True) -> str | None:
    """The id of a non-streamed Responses answer if the upstream stored it, else None.
    ``requested``: whether the request asked to store (its ``store`` was not false)."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    return _stored_id(data, requested)


def _stored_id(response: Any, requested: bool) -> str | None:
    if not isinstance(response, dict) or response.get("store", requested) is not True:
        return None
    response_id = response.get("id")
    return response_id if isinstance(response_id, str) and response_id else None


_CREATED, _COMPLETED = b"response.created", b"response.completed"


class ResponseStreamWatcher:
    """Reads a Responses event stream as it is relayed (it holds nothing back): the stored
    response's id from ``response.created``, its completion from ``response.completed`` (then
    ``on_stored(id)``), and how many events went by, the ``sequence_number`` an error event of
    the gateway's own must carry."""

    def __init__(self, on_stored: Callable[[str], None], *, requested: bool = True) -> None:
        self._on_stored = on_stored
        self._requested = requested
        self.events = 0
        self._event = b""
        self._partial = b""
        self._response_id: str | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        last = lines.pop()
        for line in lines:
            if line.startswith(b"event:"):
                self.events += 1
                self._event = line[6:].strip()
                if self._event == _COMPLETED and self._response_id is not None:
                    self._on_stored(self._response_id)  # vLLM stores it before this event
                    self._response_id = None
            elif line.startswith(b"data:") and self._event == _CREATED:
                self._on_created(line[5:])
        # A data line of an event we do not read may be long (a whole answer): keep only its
        # prefix, which is all the next chunk's continuation needs to be skipped too.
        self._partial = b"data:" if last.startswith(b"data:") and \
            self._event != _CREATED else last

    def _on_created(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict):
            self._response_id = _stored_id(event.get("response"), self._requested)

    def error_frame(self, exc: GatewayError) -> bytes:
        return responses_sse_error_frame(exc, self.events)
