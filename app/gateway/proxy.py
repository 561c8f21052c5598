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
from .attempt import Attempt, Failure, Outcome
from .context import GatewayContext
from .errors import JSON, OpenAIError, error_body
from .hybrid import Hop, with_model
from .keyfile import ApiKey
from .routing import Decision
from .stream_filter import StreamFilter
from .upstreams import Upstream

log = logging.getLogger("gateway.access")

# What a streamed answer goes out with: not cached, and not buffered by a proxy in between
# (nginx reads X-Accel-Buffering).
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Refused(Exception):
    """The limit check said no after the request went upstream."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


class Cancelled(Enum):
    """Why the request's work stopped before its end. The first reason wins."""

    CLIENT_LEFT = "client_left"  # the client hung up: nobody to answer
    REFUSED = "refused"  # the limit check said no: the client gets its error instead
    # The pool found the replica of the attempt under way hung: that attempt ends, not the
    # request, and the reason is cleared once the attempt has handled it.
    REPLICA_HUNG = "replica_hung"


@dataclass(slots=True)
class ProxyPlan:
    endpoint: str
    model: str  # what replicas are asked for: the model asked, or the one a routing rule names
    asked: str  # the model or alias the client asked for
    model_label: str
    key: ApiKey
    body: bytes
    stream: bool
    client_wants_usage: bool
    prefix: str | None
    token_ids: list[int] | None  # the prompt as vLLM tokenizes it, where replicas report their caches
    prompt_chars: int
    output_cap: int | None
    request_id: str
    started: float
    self_hosted: bool = True  # replicas here serve it first
    chain: tuple[Hop, ...] = ()  # hosted providers, in order, when replicas do not or cannot
    rule: str | None = None  # the routing rule that decided, if one did
    ttft_budget_s: float | None = None  # past this predicted TTFT on a replica, the chain takes it
    # Wait for the limit check before going upstream (the key was refused lately).
    limits_first: bool = False


class ProxyResponse:
    """One request's answer, as an ASGI application called with the request's connection."""

    def __init__(self, ctx: GatewayContext, plan: ProxyPlan, limits: asyncio.Future[None] | None = None) -> None:
        self.status_code = 200
        self.ctx = ctx
        self.plan = plan
        self._limits = limits
        self._task: asyncio.Task[None] | None = None
        self._checking = False  # awaiting the limit check, which then raises its refusal itself
        self._sent_start = False
        self._waiting = True  # counted in gateway_requests_waiting: no first byte yet
        self._finished = False
        self._cancelled: Cancelled | None = None
        self._attempts: list[Attempt] = []  # in order; the last one may be under way
        self._stream = StreamFilter(keep_usage=plan.client_wants_usage)
        self._spilled: str | None = None  # why the hosted chain took it from the replicas, if it did

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        watcher = asyncio.ensure_future(self._watch(receive))
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
            if self._cancelled is Cancelled.REFUSED:
                task.uncancel()
                await self._refuse(send, self._refusal())
            elif self._cancelled is Cancelled.CLIENT_LEFT:
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

    # -- cancellation --------------------------------------------------------------------------

    def _cancel(self, reason: Cancelled) -> None:
        """Stops the request's work, cancelling its task, unless it is over or stopping already."""
        if self._cancelled is None and not self._finished and self._task is not None:
            self._cancelled = reason
            self._task.cancel()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._cancel(Cancelled.CLIENT_LEFT)

    def replica_hung(self, up: Upstream) -> None:
        """Called by the pool when `up` stops answering: ends this request's attempt on it."""
        if self in up.attempts:  # an attempt is in `up.attempts` while it is under way on `up`
            self._cancel(Cancelled.REPLICA_HUNG)

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
        if isinstance(err, OpenAIError) and not self._checking and not self._sent_start:
            self._cancel(Cancelled.REFUSED)

    def _refusal(self) -> OpenAIError:
        """The limit check's error, once it has refused."""
        err = self._limits.exception() if self._limits is not None else None
        assert isinstance(err, OpenAIError)
        return err

    async def _refuse(self, send: Send, err: OpenAIError) -> None:
        # Nothing reached the client, and the upstream attempt was closed, so nothing is charged.
        if self._cancelled is None:  # refused while the check was awaited, not by a cancellation
            self._cancelled = Cancelled.REFUSED
        self._sent_start = True
        self.status_code = err.status
        await err.send(send, self.plan.request_id)

    # -- attempts ------------------------------------------------------------------------------

    async def _serve(self, send: Send) -> None:
        ctx, p = self.ctx, self.plan
        if p.limits_first:
            await self._check_limits()
        ctx.metrics.overhead.observe(time.perf_counter() - p.started)
        tried: set[str] = set()
        failure: Failure | None = None  # the last 5xx (or a provider's 429) answer, for want of a better one
        if p.self_hosted:
            done, failure = await self._on_replicas(send, tried)
            if done:
                return
        for hop in p.chain:
            attempt = await self._on_provider(send, hop)
            if attempt.outcome is Outcome.DONE:
                return
            failure = attempt.failure or failure
        await self._give_up(send, failure)

    async def _on_replicas(self, send: Send, tried: set[str]) -> tuple[bool, Failure | None]:
        """Tries replicas until one answers; False when the chain should take the request, or nobody can."""
        ctx, p = self.ctx, self.plan
        failure: Failure | None = None
        while len(tried) < ctx.settings.max_attempts:
            decision = ctx.pool.choose(p.model, p.prefix, tried, p.token_ids, self._prompt_tokens())
            up = decision.replica
            if not tried and p.chain and (spill := self._spill_reason(decision)):
                if up is not None:
                    ctx.pool.release(up)
                self._spilled = spill
                ctx.metrics.spills.labels(p.model_label, spill).inc()
                return False, None
            if up is None and not tried and not p.chain and p.model in ctx.settings.scale_from_zero_models:
                await self._check_limits()  # a refused request must not wait for a scale-up
                up = await self._hold(tried)
                decision = Decision(up, "least_loaded", 0.0, 0)
            if up is None:
                break
            ctx.metrics.route_decisions.labels(p.model, decision.reason).inc()
            if tried:
                ctx.metrics.retries.inc()
            tried.add(up.url)
            attempt = await self._attempt(send, up.url, up, ctx.upstream_headers, uncached=decision.uncached)
            if attempt.outcome is Outcome.DONE:
                return True, None
            failure = attempt.failure or failure
        if p.chain:
            self._spilled = "unavailable"
            ctx.metrics.spills.labels(p.model_label, "unavailable").inc()
        return False, failure

    def _spill_reason(self, decision: Decision[Upstream]) -> str | None:
        """Why the first choice goes to the chain instead: a model starting from zero, or a replica
        whose predicted TTFT is past the request's budget."""
        p = self.plan
        if decision.replica is None:
            return "cold_start" if p.model in self.ctx.settings.scale_from_zero_models else None
        if p.ttft_budget_s is not None and decision.ttft_s > p.ttft_budget_s:
            return "ttft_budget"
        return None

    def _prompt_tokens(self) -> int:
        p = self.plan
        return len(p.token_ids) if p.token_ids else prompt_tokens_estimate(p.prompt_chars)

    async def _on_provider(self, send: Send, hop: Hop) -> Attempt:
        ctx, p = self.ctx, self.plan
        provider = ctx.providers[hop.provider]
        body = with_model(p.body, hop.model) if hop.model and hop.model != p.model else p.body
        # The base URL ends in /v1, like OpenAI's; the endpoint path carries it too.
        attempt = await self._attempt(
            send,
            provider.base_url.removesuffix("/v1"),
            None,
            ctx.provider_headers[hop.provider],
            label=f"hosted:{hop.provider}",
            body=body,
        )
        ctx.metrics.hosted.labels(hop.provider, "ok" if attempt.outcome is Outcome.DONE else "error").inc()
        return attempt

    async def _hold(self, tried: set[str]) -> Upstream | None:
        """Waits, counted in gateway_requests_waiting, for a replica of a model that has none up.

        This is what lets a model scale to zero: the autoscaler sees the waiting request and
        starts a replica, which the health probes and DNS refreshes then find.
        """
        ctx, p = self.ctx, self.plan
        deadline = p.started + ctx.settings.hold_timeout_s
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(self._HOLD_POLL_S, left))
            up = ctx.pool.choose(p.model, p.prefix, tried, p.token_ids, self._prompt_tokens()).replica
            if up is not None:
                return up
        return None

    _HOLD_POLL_S = 0.25

    async def _give_up(self, send: Send, failure: Failure | None) -> None:
        if failure is not None:
            await self._send_whole(send, failure.status, failure.body, failure.content_type)
            return
        if self._attempts:
            where = "replica" if not self.plan.chain else "replica or hosted provider"
            await self._send_error(send, 502, f"No {where} could be reached for this request.", "upstream_unreachable")
        else:
            await self._send_error(
                send,
                503,
                f"No healthy replica is serving model '{self.plan.model}' right now.",
                "no_upstream_available",
                retry_after="1",
            )

    async def _attempt(
        self,
        send: Send,
        base: str,
        up: Upstream | None,
        headers: dict[str, str],
        uncached: int = 0,
        label: str | None = None,
        body: bytes | None = None,
    ) -> Attempt:
        """One try on a replica (`up`), or on a hosted provider (`label`, and the `body` for it)."""
        ctx, p = self.ctx, self.plan
        attempt = Attempt(label or base, up, time.perf_counter(), uncached=uncached)
        self._attempts.append(attempt)
        if up is not None:
            up.in_flight += 1
            up.attempts.add(self)
            up.pending += 1
            up.pending_tokens += uncached
            if p.token_ids:
                up.prefilling.append(p.token_ids)
            ctx.metrics.upstream_in_flight.labels(attempt.label).inc()
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                resp = await ctx.session.post(
                    base + p.endpoint,
                    data=p.body if body is None else body,
                    headers={**headers, "x-request-id": p.request_id},
                )
            except _TRANSPORT_ERRORS as exc:
                attempt.error = type(exc).__name__
                self._judge(attempt, "connect_error")
                log.warning(
                    "upstream unreachable",
                    extra={"request_id": p.request_id, "upstream": attempt.label, "error": attempt.error},
                )
                attempt.outcome = Outcome.RETRY
            else:
                attempt.status = resp.status
                attempt.outcome = await self._answer(send, attempt, resp)
        except asyncio.CancelledError:
            if self._cancelled is not Cancelled.REPLICA_HUNG:
                raise
            attempt.outcome = await self._end_on_hung_replica(send, attempt)
        finally:
            if up is not None:
                self._prefilled(attempt)
                up.attempts.discard(self)
                up.in_flight -= 1
                ctx.metrics.upstream_in_flight.labels(attempt.label).dec()
                if attempt.verdict is None:
                    up.breaker.release_trial()
                else:
                    ctx.pool.record(up, attempt.verdict)
            if resp is not None:
                if attempt.reusable:
                    resp.release()
                else:
                    # Closing, not releasing, drops the connection: vLLM sees the client leave and aborts.
                    resp.close()
        return attempt

    async def _answer(self, send: Send, attempt: Attempt, resp: aiohttp.ClientResponse) -> Outcome:
        """Passes the upstream's answer on to the client, unless another replica should try instead."""
        # A hosted provider's 429 passes the request to the next one in the chain.
        if resp.status >= 500 or (resp.status == 429 and attempt.replica is None):
            self._judge(attempt, "http_5xx" if resp.status >= 500 else "http_429")
            try:
                body = await resp.read()
            except _TRANSPORT_ERRORS:
                body = error_body("Upstream failed.", "server_error")
            attempt.failure = Failure(resp.status, resp.headers.get("content-type", JSON).encode(), body)
            return Outcome.RETRY
        if not self.plan.stream or resp.status != 200:
            try:
                body = await resp.read()
            except _TRANSPORT_ERRORS as exc:
                attempt.error = type(exc).__name__
                self._judge(attempt, "broken_response")
                return Outcome.RETRY
            if resp.status == 200:
                self._stream.read_body(body)
            self._first_byte(attempt)
            self._judge(attempt, "ok")
            await self._send_whole(send, resp.status, body, resp.headers.get("content-type", JSON).encode())
            return Outcome.DONE
        try:
            first = await resp.content.readany()
        except _TRANSPORT_ERRORS as exc:
            attempt.error = type(exc).__name__
            first = b""
        if not first:
            self._judge(attempt, "broken_response")
            return Outcome.RETRY
        self._first_byte(attempt)
        await self._start(send, 200, resp.headers.get("content-type", "text/event-stream").encode(), stream=True)
        await self._pump(send, resp, first, attempt)
        return Outcome.DONE

    async def _end_on_hung_replica(self, send: Send, attempt: Attempt) -> Outcome:
        """The pool found the attempt's replica hung (see replica_hung): not a cancellation of the request."""
        self._cancelled = None
        task = asyncio.current_task()
        if task is not None:  # always, inside a task; the check is for the type checker
            task.uncancel()
        self._judge(attempt, "hung")
        log.warning("upstream hung", extra={"request_id": self.plan.request_id, "upstream": attempt.label})
        if not self._sent_start:
            return Outcome.RETRY
        await self._end_stream_with_error(send, "The upstream replica stopped answering mid-stream.", "upstream_hung")
        return Outcome.DONE

    async def _end_stream_with_error(self, send: Send, message: str, code: str) -> None:
        """The client holds part of an answer: the stream ends with an error event, logged as 502."""
        self.status_code = 502
        event = b"data: " + error_body(message, "server_error", code=code) + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _pump(self, send: Send, resp: aiohttp.ClientResponse, first: bytes, attempt: Attempt) -> None:
        """Forwards the stream to its end, or to an error event when the upstream breaks it."""
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
            attempt.error = type(exc).__name__
            self._judge(attempt, "broken_stream")
            log.warning(
                "upstream stream broke",
                extra={"request_id": self.plan.request_id, "upstream": attempt.label, "error": attempt.error},
            )
            await self._end_stream_with_error(send, "The upstream replica failed mid-stream.", "upstream_stream_broken")
            return
        await send({"type": "http.response.body", "body": self._stream.finish(), "more_body": False})
        self._judge(attempt, "ok")

    def _judge(self, attempt: Attempt, result: str) -> None:
        """Counts the attempt in gateway_upstream_requests; its verdict goes to the replica's circuit."""
        attempt.result = result
        self.ctx.metrics.upstream_requests.labels(attempt.label, result).inc()

    def _prefilled(self, attempt: Attempt) -> None:
        """The replica is past this attempt's prefill (first byte, or the attempt ended): out of its backlog."""
        up = attempt.replica
        if up is not None and not attempt.prefilled:
            attempt.prefilled = True
            up.pending -= 1
            up.pending_tokens -= attempt.uncached
            if self.plan.token_ids:
                up.prefilling.remove(self.plan.token_ids)

    # -- sending -------------------------------------------------------------------------------

    def _first_byte(self, attempt: Attempt) -> None:
        attempt.first_byte_at = time.perf_counter()
        self._prefilled(attempt)
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
        first_byte_at = self._first_byte_at()
        answered = next((a for a in reversed(self._attempts) if a.status is not None), None)
        upstream = answered.label if answered is not None else None
        status = str(self.status_code)
        stream = "true" if p.stream else "false"
        m.requests.labels(p.model_label, p.key.key_id, p.endpoint, status).inc()
        m.latency.labels(p.model_label, p.endpoint, stream).observe(now - p.started)
        if first_byte_at is not None:
            m.ttft.labels(p.model_label, p.endpoint, stream).observe(first_byte_at - p.started)
        prompt_tokens, completion_tokens, estimated = self._tokens(now, first_byte_at, answered)
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
                "asked": p.asked,
                "rule": p.rule,
                "spilled": self._spilled,
                "endpoint": p.endpoint,
                "stream": p.stream,
                "status": self.status_code,
                "upstream": upstream,
                "attempts": sum(1 for a in self._attempts if a.replica is not None),
                "duration_ms": round((now - p.started) * 1000, 2),
                "ttft_ms": round((first_byte_at - p.started) * 1000, 2) if first_byte_at else None,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "tokens_estimated": estimated,
                "client_disconnected": self._cancelled is Cancelled.CLIENT_LEFT,
            },
        )

    def _first_byte_at(self) -> float | None:
        """When the first byte of an upstream's answer was ready for the client; None when it got a refusal."""
        if self._cancelled is Cancelled.REFUSED:
            return None
        return next((a.first_byte_at for a in reversed(self._attempts) if a.first_byte_at is not None), None)

    def _tokens(self, now: float, first_byte_at: float | None, answered: Attempt | None) -> tuple[int, int, bool]:
        """Prompt and output tokens to charge, and whether they are estimated (see accounting.py)."""
        p, usage = self.plan, self._stream.usage
        sent_at = self._attempts[-1].started if self._attempts else None  # when the request last went upstream
        if usage is not None:
            try:
                prompt, output = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            except (TypeError, ValueError):
                pass
            else:
                # Only replicas here teach the decode rate: a hosted provider's is not theirs.
                if first_byte_at is not None and sent_at is not None and answered and answered.replica:
                    # Decoding time: from the first chunk on a stream; the whole wait otherwise.
                    began = first_byte_at if p.stream else sent_at
                    self.ctx.decode_rates.observe(p.model, output, now - began)
                return prompt, output, False
        if first_byte_at is None and not (self._cancelled is Cancelled.CLIENT_LEFT and sent_at is not None):
            # Nothing was answered and the client did not leave: the replicas failed it, no charge.
            return 0, 0, False
        prompt = prompt_tokens_estimate(p.prompt_chars)
        if p.stream and first_byte_at is not None:
            return prompt, max(0, self._stream.events - 1), True  # one token per stream event
        ran = now - (sent_at or now)
        return prompt, self.ctx.decode_rates.estimate(p.model, ran, p.output_cap), True
