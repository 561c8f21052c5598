"""ASGI middleware at the edge: stamps each request's arrival time and refuses oversized bodies.

Pure ASGI rather than BaseHTTPMiddleware, which would add a task and a copy to every request.
"""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge, OpenAIError


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Latency metrics start here, before the body is read and parsed.
        scope.setdefault("state", {})["started"] = time.perf_counter()
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await _refuse(scope, send, self.max_bytes)
                    return
                break
        limit = self.max_bytes
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Chunked uploads have no length up front; stop reading at the limit.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    err = OpenAIError(413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large")
    response = err.response(uuid.uuid4().hex)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
