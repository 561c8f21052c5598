"""The pass-through of an answer's bytes, reading the token `usage` the gateway charges.

A stream's chunks go on as they arrive, without decoding, except the event that carries
`usage`: it is parsed, and dropped when it is the usage-only event the gateway asked vLLM for
(`stream_options.include_usage`, see completions.py) and the client did not. Network reads cut
events anywhere, so an event cut across reads waits for its end before it goes on.
"""

from __future__ import annotations

from typing import Any

import orjson

# Past this, a chunk with no event end in it is not SSE the gateway knows: forwarded as it is.
_MAX_TAIL = 1 << 16


class StreamFilter:
    """One answer's filter: `feed` each read, `finish` at the stream's end, then read `usage`."""

    __slots__ = ("_keep_usage", "_tail", "_events", "_done", "_usage")

    def __init__(self, keep_usage: bool) -> None:
        self._keep_usage = keep_usage  # the client asked for the usage event itself
        self._tail = b""
        self._events = 0
        self._done = False
        self._usage: dict[str, Any] | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The `usage` object the answer reported, if any."""
        return self._usage

    @property
    def events(self) -> int:
        """How many complete SSE events were fed through, the usage event included."""
        return self._events

    @property
    def done(self) -> bool:
        """Whether the stream's final `data: [DONE]` event went through."""
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Returns the complete SSE events in hand; an event cut across reads waits for its end."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        cut = data.rfind(b"\n\n")
        if cut < 0:
            if len(data) > _MAX_TAIL:
                return data
            self._tail = data
            return b""
        if cut + 2 < len(data):
            self._tail = data[cut + 2 :]
            data = data[: cut + 2]
        self._events += data.count(b"\n\n")
        if data.endswith(b"data: [DONE]\n\n"):
            self._done = True
        if b'"usage":{' in data or b'"usage": {' in data:
            data = self._take_usage(data)
        return data

    def finish(self) -> bytes:
        """What is left when the stream ends: an unfinished last event, passed on as it is."""
        tail, self._tail = self._tail, b""
        return tail

    def read_body(self, body: bytes) -> None:
        """Reads `usage` from a whole JSON answer (not a stream)."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]

    def _take_usage(self, data: bytes) -> bytes:
        kept: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if b'"usage"' in event and event.startswith(b"data:"):
                try:
                    obj = orjson.loads(event[5:])
                except orjson.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                    self._usage = obj["usage"]
                    if not self._keep_usage and obj.get("choices") == []:
                        continue
            kept.append(event + b"\n\n")
        return b"".join(kept)
