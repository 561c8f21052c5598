"""The HTTP/1.1 connection: uvicorn's httptools protocol, with the limits and timeouts it lacks.

uvicorn 0.54's httptools protocol (uvicorn/protocols/http/httptools_impl.py) caps neither the
size of a request head nor the time a client takes to send it, its body, or to read the answer,
and httptools joins a header that arrives in pieces by concatenation, so its CPU cost grows with
the square of the header's size. Everything here happens per connection, outside the request
path the benchmarks measure:

- a request head (request line and headers) larger than max_header_bytes is answered 431 and
  the connection closed, before the parser sees the excess;
- a head must arrive within header_timeout_s of the connection opening or of its first byte
  (slowloris, idle connections that never send a request): 408;
- a body must arrive within body_timeout_s of its head: 408;
- a client that stops reading for send_timeout_s while an answer waits to be written is cut
  off, which ends its request upstream (vLLM aborts it and frees the slot);
- the parser's own 400 is in OpenAI's error shape, like every other error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body
from .settings import GatewaySettings

log = logging.getLogger("gateway.access")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@functools.cache
def _settings() -> GatewaySettings:
    # Read once per worker from the same GATEWAY_* variables as the app; uvicorn builds one
    # protocol per connection and passes it nothing of ours.
    return GatewaySettings()


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = _settings()
        self._max_head = s.max_header_bytes
        self._header_timeout = s.header_timeout_s
        self._body_timeout = s.body_timeout_s
        self._send_timeout = s.send_timeout_s
        self._head_open = True  # bytes now arriving belong to a request head
        self._head_seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------------

    # uvicorn's HttpToolsProtocol narrows asyncio's BaseTransport to Transport the same way, with
    # the same ignore (uvicorn/protocols/http/httptools_impl.py, 0.54.0).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while self._head_open and len(data) > self._max_head - self._head_seen:
            # Feed the parser only up to the limit: if that does not end the head, refuse.
            room = self._max_head - self._head_seen
            chunk, data = data[:room], data[room:]
            self._head_seen = self._max_head
            super().data_received(chunk)
            if self.transport.is_closing():
                return
            if self._head_open and self._head_seen >= self._max_head:
                self._refuse(
                    431,
                    f"The request line and headers are larger than the limit of {self._max_head} bytes.",
                    "request_header_too_large",
                )
                return
            # The head ended (or a whole pipelined request did) within the chunk: go on.
        if self._head_open:
            self._head_seen += len(data)
        if data:
            super().data_received(data)

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            # A kept-alive connection's next request: its head gets the same time as the first.
            self._arm(self._header_timeout, "header_timeout")

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm()
        super().on_headers_complete()
        self._arm(self._body_timeout, "body_timeout")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        self._head_open = True
        self._head_seen = 0

    # -- writing -------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self._send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        self._send_timer = None
        log.info("client cut off", extra={"reason": "send_timeout", "client": self._client_host()})
        # abort, not close: close would wait for a buffer the client is not reading.
        self.transport.abort()

    # -- refusals ------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"The request is not valid HTTP/1.1: {msg}", "invalid_http_request")

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, reason: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        what = "request headers" if reason == "header_timeout" else "request body"
        limit = self._header_timeout if reason == "header_timeout" else self._body_timeout
        self._refuse(408, f"The {what} did not arrive within {limit:g} seconds.", reason)

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answers on the raw connection (no ASGI app has the request, or it never will) and closes it."""
        self._disarm()
        cycle = self.cycle
        started = cycle is not None and not cycle.response_complete and cycle.response_started
        if not started:
            body = error_body(message, "invalid_request_error", code=code)
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
            )
            self.transport.write(head + body)
        if cycle is not None and not cycle.response_complete:
            # The app may be waiting for a body that will not come: it sees the client leave,
            # and anything it still sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        log.info("refused", extra={"status": status, "code": code, "client": self._client_host()})
        self.transport.close()

    def _client_host(self) -> str | None:
        return self.client[0] if self.client else None
