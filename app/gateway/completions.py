"""The completion routes' (and /v1/embeddings') ASGI endpoint, mounted as ordinary Starlette routes (main.py).

Every token of every stream passes through here, so the endpoint does without what FastAPI adds
to each request (dependency solving, body parsing into a Request): it reads the body itself,
streamed and bounded. Starlette's middleware and exception handlers still see the route; that
costs about 17 µs a request (bench/dispatch.py). It checks, in this order, each answered in
OpenAI's error shape: body size (413, before reading), API key (401), JSON and field types (400), model access (403) and
existence (404). The OpenAPI document still describes both routes from the same pydantic
models (see main.py).

The per-key limits (429, or 503 when Redis is down and the fail mode is closed) are checked in
Redis while the request already goes upstream: the check returns within a millisecond, long
before a replica's prefill yields a first token, so the Redis round trip never delays that
token. No byte of the answer reaches the client before the check has passed; a refused request
is cancelled upstream (vLLM aborts it) and answered with the 429. A key refused once is checked
before going upstream until its Retry-After passes, so a client that keeps hammering past its
limit does not reach a replica at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from .accounting import prompt_tokens_estimate
from .admission import enforce_limits
from .auth import authenticate
from .context import GatewayContext
from .errors import OpenAIError, log_refusal, validation_message
from .hybrid import Hop, RouteInput, first_match, with_model
from .keyfile import ApiKey
from .proxy import ProxyPlan, ProxyResponse
from .requestid import pick
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, GatewayRequest

log = logging.getLogger("gateway")

# Path to the request model it takes.
EMBEDDINGS = "/v1/embeddings"
ROUTES: dict[str, type[GatewayRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    # A pooling model's: the same auth, limits, routing and retries; one JSON answer, never a stream.
    EMBEDDINGS: EmbeddingRequest,
}


class CompletionsEndpoint:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        given_id = length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"x-request-id":
                given_id = value.decode("latin-1")
        rid = pick(given_id)
        response: ProxyResponse | None = None
        try:
            plan, limits = await self._admit(scope, receive, length, rid, started)
            response = ProxyResponse(self.ctx, plan, limits)
            await response(scope, receive, send)
        except _ClientGone:
            return  # nothing to answer, and the server logged why if it cut the client off
        except OpenAIError as err:
            log_refusal(err, rid, scope["path"], scope.get("client"))
            await err.send(send, rid)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client: OpenAI's 500 with the request id
            log.error("unhandled error", extra={"request_id": rid, "error": type(exc).__name__})
            if response is None or not response.started:
                await OpenAIError(500, f"Internal error; request id {rid}.", "server_error").send(send, rid)

    async def _admit(
        self, scope: Scope, receive: Receive, length: bytes | None, rid: str, started: float
    ) -> tuple[ProxyPlan, asyncio.Future[None]]:
        ctx, path = self.ctx, scope["path"]
        limit = ctx.settings.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise _too_large(limit)
        key = await authenticate(ctx, scope["headers"])
        try:
            raw = await _read_body(receive, limit)
            body, forwarded = _parse(ROUTES[path], raw)
            asked = body.model
            if not key.may_use(asked):
                ctx.metrics.auth_failures.labels("model_not_allowed").inc()
                raise OpenAIError(
                    403, f"This API key may not use model '{asked}'.", param="model", code="model_not_allowed"
                )
            route = _route(ctx, key, asked, scope["headers"], prompt_tokens_estimate(body.prompt_chars()))
        except OpenAIError as err:
            err.key_id = key.key_id
            raise
        limits = asyncio.ensure_future(enforce_limits(ctx, key))
        if route.model != asked:
            forwarded = with_model(forwarded, route.model)
        chars = ctx.settings.affinity_prefix_chars
        # Only where some replica reports its cache: one /tokenize round trip buys exact routing.
        # Not for embeddings: a pooling request leaves nothing in the cache to route by.
        token_ids = (
            await _token_ids(ctx, route.model, forwarded)
            if path != EMBEDDINGS and route.self_hosted and ctx.pool.kv_ready(route.model)
            else None
        )
        plan = ProxyPlan(
            endpoint=path,
            model=route.model,
            asked=asked,
            # Metric labels only carry served model names, so made-up names cannot grow the series count.
            model_label=route.model if ctx.pool.serves(route.model) else "other",
            key=key,
            body=forwarded,
            stream=bool(body.stream),
            client_wants_usage=body.wants_usage(),
            prefix=body.prefix(chars) if chars else None,
            token_ids=token_ids,
            prompt_chars=body.prompt_chars(),
            output_cap=body.output_cap(),
            request_id=rid,
            started=started,
            self_hosted=route.self_hosted,
            chain=route.chain,
            rule=route.rule,
            ttft_budget_s=route.ttft_budget_s,
            limits_first=ctx.limiter.recently_refused(key),
        )
        ctx.metrics.route_rules.labels(route.rule or "default").inc()
        return plan, limits


@dataclass(frozen=True, slots=True)
class _Route:
    model: str  # the model to ask for: the one asked, or the one a rule names
    self_hosted: bool  # whether replicas here serve it first
    chain: tuple[Hop, ...]  # hosted providers, in order, when they do not or cannot
    rule: str | None
    ttft_budget_s: float | None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k == name), None)


def _route(ctx: GatewayContext, key: ApiKey, asked: str, headers: list[tuple[bytes, bytes]], est: int) -> _Route:
    """Where the request goes, by the routing rules (hybrid.py); 404 when nowhere serves it."""
    s = ctx.settings
    budget_ms: float | None = key.ttft_budget_ms
    given = _header(headers, b"x-ttft-budget-ms")
    if given is not None:
        try:
            budget_ms = float(given)
        except ValueError:
            budget_ms = -1.0
        if not 0 < budget_ms < 86_400_000:
            raise OpenAIError(
                400,
                f"Header x-ttft-budget-ms must be a number of milliseconds above 0, not {given[:40]!r}.",
                param="x-ttft-budget-ms",
            )
    task = _header(headers, b"x-task")
    rule = first_match(s.routes, RouteInput(key.tier, asked, est, budget_ms, task))
    model = rule.model if rule is not None and rule.model else asked
    self_hosted = ctx.pool.serves(model) and not (rule is not None and rule.model is None)
    chain = rule.providers if rule is not None and rule.providers else s.default_chain()
    if not self_hosted and not chain:
        raise OpenAIError(
            404, f"The model '{asked}' does not exist or is not served here.", param="model", code="model_not_found"
        )
    return _Route(
        model,
        self_hosted,
        chain,
        rule.name if rule is not None else None,
        budget_ms / 1000 if budget_ms is not None else None,
    )


# What vLLM's /tokenize takes beside the messages, so it renders the prompt as the chat request would.
_CHAT_TEMPLATE_KEYS = ("add_generation_prompt", "continue_final_message", "chat_template_kwargs", "tools")


async def _token_ids(ctx: GatewayContext, model: str, forwarded: bytes) -> list[int] | None:
    """The prompt's token ids as the replica will see them; None for what the cache index
    cannot match (several prompts, images) or when no replica tokenizes in time."""
    request = orjson.loads(forwarded)
    if "messages" in request:
        messages = request["messages"]
        if any(isinstance(m.get("content"), list) for m in messages if isinstance(m, dict)):
            return None  # content parts may carry images, whose blocks carry extra keys
        tokenize = {"model": model, "messages": messages, "add_generation_prompt": True}
        tokenize |= {k: request[k] for k in _CHAT_TEMPLATE_KEYS if k in request}
        return await ctx.pool.tokenize(model, tokenize)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return await ctx.pool.tokenize(model, {"model": model, "prompt": prompt})
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    return None


class _ClientGone(Exception):
    """The connection closed before the whole body arrived."""


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large")


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            # A chunked upload has no length up front: stop reading at the limit.
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse(model: type[GatewayRequest], raw: bytes) -> tuple[GatewayRequest, bytes]:
    """The validated request, and the bytes to send upstream: the client's own, unless usage must be asked for."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(
            400, f"We could not parse the JSON body of your request: it is not valid JSON ({exc})."
        ) from None
    try:
        body = model.model_validate(obj)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise OpenAIError(400, message, param=param) from None
    if body.stream and not body.wants_usage():
        # vLLM reports token usage on a stream only when asked; the gateway needs it to charge TPM.
        options = obj.get("stream_options") or {}
        obj["stream_options"] = {**options, "include_usage": True}
        return body, orjson.dumps(obj)
    return body, raw
