"""Sending one request upstream and its answer back, over the client's ASGI connection.

While the work runs, a watcher waits on `receive()` for `http.disconnect` and cancels it,
which closes the upstream connection, which makes vLLM abort the request.

The per-key limit check may still be running in Redis when the request goes upstream (see
completions.py); the first send to the client waits for it, and a refusal cancels the upstream
request and answers with the limit's error instead.

Until the first byte of an answer reaches the client, a failed attempt (connection error, 5xx,
or a stream that ends before its first chunk) is retried on another replica; after it, a failure
ends the stream with an error event, since the client already holds part of an answer.
Stream chunks are forwarded as they arrive, without decoding, except the one event that carries
`usage`, which is parsed to charge tokens and dropped when the client did not ask for it
(stream_filter.py).

A replica the health checks find hung (upstreams.py) ends the attempts it holds the same way:
retried elsewhere before the first byte, an error event after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import Enum

import aiohttp
from starlette.types import Receive, Scope, Send

from .accounting import prompt_tokens_estimate
from .context import GatewayContext
from .errors import JSON, OpenAIError, error_body
from .keyfile import ApiKey
from .stream_filter import StreamFilter
from .upstreams import Upstream

log = logging.getLogger("gateway.access")

# Upstream headers worth passing to the client; hop-by-hop and server details stay behind.
_PASS_HEADERS = frozenset({b"content-type"})
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Refused(Exception):
    """The limit check said no after the request went upstream."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


class Outcome(Enum):
    DONE = "done"
    RETRY = "retry"


@dataclass(slots=True)
class ProxyPlan:
    endpoint: str
    model: str
    model_label: str
    key: ApiKey
    body: bytes
    stream: bool
    client_wants_usage: bool
    prefix: str | None
    prompt_chars: int
    output_cap: int | None
    request_id: str
    started: float
    # Wait for the limit check before going upstream (the key was refused lately).
    limits_first: bool = False


class ProxyResponse:
    """One request's answer, as an ASGI application called with the request's connection."""

    def __init__(self, ctx: GatewayContext, plan: ProxyPlan, limits: asyncio.Future[None] | None = None) -> None:
        self.status_code = 200
        self.ctx = ctx
        self.plan = plan
        self._limits = limits
        self._finished = False
        self._client_gone = False
        self._sent_start = False
        self._stream = StreamFilter(keep_usage=plan.client_wants_usage)
        self.upstream: str | None = None
        self.attempts = 0
        self.first_byte_at: float | None = None
        self._waiting = True
        self._last_failure: tuple[int, bytes, bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._checking = False
        self._refusal: OpenAIError | None = None
        self._replica: Upstream | None = None  # the replica of the attempt under way
        self._replica_hung = False
        self._sent_at: float | None = None  # when the request last went upstream

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        watcher = asyncio.ensure_future(self._watch(receive, task))
        if self._limits is not None:
            self._limits.add_done_callback(self._limits_decided)
        m, p = self.ctx.metrics, self.plan
        m.in_flight.labels(p.model_label).inc()
        m.waiting.labels(p.model_label).inc()
        try:
            await self._serve(send)
        except Refused as refused:
            await self._refuse(send, refused.error)
        except asyncio.CancelledError:
            if self._refusal is not None:
                task.uncancel()
                await self._refuse(send, self._refusal)
            elif self._client_gone:
                task.uncancel()
                # A client that hangs up once it has the stream's last event got the whole answer.
                if not self._stream.done:
                    self.status_code = 499
                    m.disconnects.labels(p.model_label).inc()
            else:
                raise
        finally:
            self._finished = True
            watcher.cancel()
            self._settle()

    @property
    def started(self) -> bool:
        """Whether the response has begun, after which an error can no longer be sent as a status."""
        return self._sent_start

    # -- the limit check -----------------------------------------------------------------------

    async def _check_limits(self) -> None:
        if self._limits is None:
            return
        self._checking = True
        try:
            # Shielded: a client leaving now must not cut a Redis command in half.
            await asyncio.shield(self._limits)
        except OpenAIError as err:
            raise Refused(err) from None
        finally:
            self._checking = False

    def _limits_decided(self, future: asyncio.Future[None]) -> None:
        """Stops the upstream work the moment the check refuses, whatever the attempt is waiting for."""
        if future.cancelled():
            return
        err = future.exception()  # also marks it seen when nobody awaits it (the client left)
        if (
            isinstance(err, OpenAIError)
            and not self._checking
            and not self._sent_start
            and not self._finished
            and self._task is not None
        ):
            self._refusal = err
            self._task.cancel()

    async def _refuse(self, send: Send, err: OpenAIError) -> None:
        # Nothing reached the client, and the upstream attempt was closed, so nothing is charged.
        self.first_byte_at = None
        self._sent_start = True
        self.status_code = err.status
        await err.send(send, self.plan.request_id)

    def replica_hung(self, up: Upstream) -> None:
        """Called by the pool when `up` stops answering: ends this request's attempt on it."""
        if (
            up is self._replica
            and not self._finished
            and not self._client_gone
            and self._refusal is None
            and not self._replica_hung
            and self._task is not None
        ):
            self._replica_hung = True
            self._task.cancel()

    async def _watch(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._finished:
            self._client_gone = True
            task.cancel()

    # -- attempts ------------------------------------------------------------------------------

    async def _serve(self, send: Send) -> None:
        ctx, p = self.ctx, self.plan
        if p.limits_first:
            await self._check_limits()
        ctx.metrics.overhead.observe(time.perf_counter() - p.started)
        tried: set[str] = set()
        fallback = ctx.settings.fallback_base_url
        while self.attempts < ctx.settings.max_attempts:
            up = ctx.pool.choose(p.model, p.prefix, tried)
            if up is None and not tried and not fallback and p.model in ctx.settings.scale_from_zero_models:
                await self._check_limits()  # a refused request must not wait for a scale-up
                up = await self._hold(tried)
            if up is None:
                break
            if self.attempts:
                ctx.metrics.retries.inc()
            self.attempts += 1
            tried.add(up.url)
            if await self._attempt(send, up.url, up, ctx.upstream_headers) is Outcome.DONE:
                return
        if fallback:
            # The fallback base URL already ends in /v1, like OpenAI's.
            outcome = await self._attempt(send, fallback.removesuffix("/v1"), None, ctx.fallback_headers)
            ctx.metrics.fallback.labels("ok" if outcome is Outcome.DONE else "error").inc()
            if outcome is Outcome.DONE:
                return
        await self._give_up(send, tried)

    async def _hold(self, tried: set[str]) -> Upstream | None:
        """Waits, counted in gateway_requests_waiting, for a replica of a model that has none up.

        This is what lets a model scale to zero: the autoscaler sees the waiting request and
        starts a replica, which the health probes and DNS refreshes then find.
        """
        ctx, p = self.ctx, self.plan
        deadline = p.started + ctx.settings.hold_timeout_s
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(self._HOLD_POLL_S, left))
            up = ctx.pool.choose(p.model, p.prefix, tried)
            if up is not None:
                return up
        return None

    _HOLD_POLL_S = 0.25

    async def _give_up(self, send: Send, tried: set[str]) -> None:
        if self._last_failure is not None:
            status, ctype, body = self._last_failure
            await self._send_whole(send, status, body, ctype)
            return
        if tried:
            await self._send_error(send, 502, "No replica could be reached for this request.", "upstream_unreachable")
        else:
            await self._send_error(
                send,
                503,
                f"No healthy replica is serving model '{self.plan.model}' right now.",
                "no_upstream_available",
                retry_after="1",
            )

    async def _attempt(self, send: Send, base: str, up: Upstream | None, headers: dict[str, str]) -> Outcome:
        ctx, p = self.ctx, self.plan
        label = up.url if up is not None else "fallback"
        if up is not None:
            up.in_flight += 1
            up.attempts.add(self)
            self._replica = up
            ctx.metrics.upstream_in_flight.labels(label).inc()
        resp: aiohttp.ClientResponse | None = None
        verdict: bool | None = None
        clean = False
        self._sent_at = time.perf_counter()
        try:
            try:
                resp = await ctx.session.post(
                    base + p.endpoint, data=p.body, headers={**headers, "x-request-id": p.request_id}
                )
            except _TRANSPORT_ERRORS as exc:
                verdict = False
                ctx.metrics.upstream_requests.labels(label, "connect_error").inc()
                log.warning(
                    "upstream unreachable",
                    extra={"request_id": p.request_id, "upstream": label, "error": type(exc).__name__},
                )
                return Outcome.RETRY
            self.upstream = label
            if resp.status >= 500:
                verdict = False
                ctx.metrics.upstream_requests.labels(label, "http_5xx").inc()
                try:
                    body = await resp.read()
                except _TRANSPORT_ERRORS:
                    body = error_body("Upstream failed.", "server_error")
                self._last_failure = (resp.status, resp.headers.get("content-type", JSON).encode(), body)
                return Outcome.RETRY
            if not p.stream or resp.status != 200:
                try:
                    body = await resp.read()
                except _TRANSPORT_ERRORS:
                    verdict = False
                    ctx.metrics.upstream_requests.labels(label, "broken_response").inc()
                    return Outcome.RETRY
                if resp.status == 200:
                    self._stream.read_body(body)
                self._first_byte()
                verdict = True
                ctx.metrics.upstream_requests.labels(label, "ok").inc()
                await self._send_whole(send, resp.status, body, resp.headers.get("content-type", JSON).encode())
                clean = True
                return Outcome.DONE
            try:
                first = await resp.content.readany()
            except _TRANSPORT_ERRORS:
                first = b""
            if not first:
                verdict = False
                ctx.metrics.upstream_requests.labels(label, "broken_response").inc()
                return Outcome.RETRY
            self._first_byte()
            await self._start(send, 200, resp.headers.get("content-type", "text/event-stream").encode(), stream=True)
            verdict = await self._pump(send, resp, first, label)
            clean = verdict
            return Outcome.DONE
        except asyncio.CancelledError:
            if not self._replica_hung:
                raise
            # The pool found this replica hung (see replica_hung): not a cancellation of the request.
            self._replica_hung = False
            task = asyncio.current_task()
            if task is not None:  # always, inside a task; the check is for the type checker
                task.uncancel()
            verdict = False
            ctx.metrics.upstream_requests.labels(label, "hung").inc()
            log.warning("upstream hung", extra={"request_id": p.request_id, "upstream": label})
            if not self._sent_start:
                return Outcome.RETRY
            self.status_code = 502
            event = (
                b"data: "
                + error_body("The upstream replica stopped answering mid-stream.", "server_error", code="upstream_hung")
                + b"\n\n"
            )
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return Outcome.DONE
        finally:
            self._replica = None
            if up is not None:
                up.attempts.discard(self)
                up.in_flight -= 1
                ctx.metrics.upstream_in_flight.labels(label).dec()
                if verdict is None:
                    up.breaker.release_trial()
                else:
                    ctx.pool.record(up, verdict)
            if resp is not None:
                if clean:
                    resp.release()
                else:
                    # Closing, not releasing, drops the connection: vLLM sees the client leave and aborts.
                    resp.close()

    async def _pump(self, send: Send, resp: aiohttp.ClientResponse, first: bytes, label: str) -> bool:
        """Forwards the stream; returns whether the upstream finished it cleanly."""
        feed = self._stream.feed
        chunk = feed(first)
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # readany() by hand rather than `async for ... in iter_any()`: one coroutine less per chunk.
        read = resp.content.readany
        try:
            while data := await read():
                chunk = feed(data)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _TRANSPORT_ERRORS as exc:
            self.ctx.metrics.upstream_requests.labels(label, "broken_stream").inc()
            log.warning(
                "upstream stream broke",
                extra={"request_id": self.plan.request_id, "upstream": label, "error": type(exc).__name__},
            )
            self.status_code = 502
            event = (
                b"data: "
                + error_body("The upstream replica failed mid-stream.", "server_error", code="upstream_stream_broken")
                + b"\n\n"
            )
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return False
        await send({"type": "http.response.body", "body": self._stream.finish(), "more_body": False})
        self.ctx.metrics.upstream_requests.labels(label, "ok").inc()
        return True

    # -- sending -------------------------------------------------------------------------------

    def _first_byte(self) -> None:
        self.first_byte_at = time.perf_counter()
        if self._waiting:
            self._waiting = False
            self.ctx.metrics.waiting.labels(self.plan.model_label).dec()

    async def _start(
        self,
        send: Send,
        status: int,
        content_type: bytes,
        stream: bool,
        length: int | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self._check_limits()
        self.status_code = status
        headers = [(b"content-type", content_type), (b"x-request-id", self.plan.request_id.encode())]
        if stream:
            headers += _STREAM_HEADERS
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        if extra:
            headers += extra
        self._sent_start = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _send_whole(
        self, send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self._start(send, status, content_type, stream=False, length=len(body), extra=extra)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(
        self, send: Send, status: int, message: str, code: str, retry_after: str | None = None
    ) -> None:
        extra = [(b"retry-after", retry_after.encode())] if retry_after else None
        body = error_body(message, "server_error", code=code)
        await self._send_whole(send, status, body, JSON.encode(), extra)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _settle(self) -> None:
        ctx, p, m = self.ctx, self.plan, self.ctx.metrics
        now = time.perf_counter()
        if self._waiting:
            self._waiting = False
            m.waiting.labels(p.model_label).dec()
        m.in_flight.labels(p.model_label).dec()
        status = str(self.status_code)
        stream = "true" if p.stream else "false"
        m.requests.labels(p.model_label, p.key.key_id, p.endpoint, status).inc()
        m.latency.labels(p.model_label, p.endpoint, stream).observe(now - p.started)
        if self.first_byte_at is not None:
            m.ttft.labels(p.model_label, p.endpoint, stream).observe(self.first_byte_at - p.started)
        prompt_tokens, completion_tokens, estimated = self._tokens(now)
        if prompt_tokens or completion_tokens:
            m.prompt_tokens.labels(p.model_label, p.key.key_id).inc(prompt_tokens)
            m.completion_tokens.labels(p.model_label, p.key.key_id).inc(completion_tokens)
            ctx.limiter.charge(p.key, prompt_tokens + completion_tokens)
        log.info(
            "request",
            extra={
                "request_id": p.request_id,
                "key_id": p.key.key_id,
                "model": p.model,
                "endpoint": p.endpoint,
                "stream": p.stream,
                "status": self.status_code,
                "upstream": self.upstream,
                "attempts": self.attempts,
                "duration_ms": round((now - p.started) * 1000, 2),
                "ttft_ms": round((self.first_byte_at - p.started) * 1000, 2) if self.first_byte_at else None,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "tokens_estimated": estimated,
                "client_disconnected": self._client_gone,
            },
        )

    def _tokens(self, now: float) -> tuple[int, int, bool]:
        """Prompt and output tokens to charge, and whether they are estimated (see accounting.py)."""
        p, usage = self.plan, self._stream.usage
        if usage is not None:
            try:
                prompt, output = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            except (TypeError, ValueError):
                pass
            else:
                if self.first_byte_at is not None and self._sent_at is not None and self.upstream != "fallback":
                    # Decoding time: from the first chunk on a stream; the whole wait otherwise.
                    began = self.first_byte_at if p.stream else self._sent_at
                    self.ctx.decode_rates.observe(p.model, output, now - began)
                return prompt, output, False
        if self.first_byte_at is None and not (self._client_gone and self._sent_at is not None):
            # Nothing was answered and the client did not leave: the replicas failed it, no charge.
            return 0, 0, False
        prompt = prompt_tokens_estimate(p.prompt_chars)
        if p.stream and self.first_byte_at is not None:
            return prompt, max(0, self._stream.events - 1), True  # one token per stream event
        ran = now - (self._sent_at or now)
        return prompt, self.ctx.decode_rates.estimate(p.model, ran, p.output_cap), True
