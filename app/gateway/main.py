"""The FastAPI application: routes, and the lifespan that owns every client."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .auth import KeyStore
from .keyfile import ApiKey
from .context import GatewayContext
from .edge import EdgeMiddleware
from .dependencies import authenticate, enforce_limits, get_context
from .errors import JSON, OpenAIError, install
from .metrics import GatewayMetrics
from .proxy import ProxyPlan, ProxyResponse
from .ratelimit import RateLimiter
from .requestid import request_id
from .schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard, ModelList, StreamOptions
from .settings import GatewaySettings
from .upstreams import UpstreamPool

log = logging.getLogger("gateway")

_ERRORS = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in {
        400: "Malformed or invalid request",
        401: "Missing or wrong API key",
        403: "Key may not use this model",
        404: "Unknown model",
        413: "Body too large",
        429: "Rate limited",
        502: "Upstream failed",
        503: "No replica available",
    }.items()
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    metrics = GatewayMetrics()
    # No retries inside redis-py: a rate-limit check must fail fast and let the fail mode decide.
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    connector = aiohttp.TCPConnector(
        limit=settings.max_upstream_connections,
        keepalive_timeout=settings.upstream_keepalive_s,
        ttl_dns_cache=int(settings.dns_refresh_s),
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
    upstream_headers = {"content-type": "application/json"}
    if settings.upstream_api_key is not None:
        upstream_headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
    fallback_headers = {"content-type": "application/json"}
    if settings.fallback_api_key is not None:
        fallback_headers["authorization"] = f"Bearer {settings.fallback_api_key.get_secret_value()}"
    pool = UpstreamPool(settings, session, metrics)
    ctx = GatewayContext(
        settings=settings,
        metrics=metrics,
        redis=redis,
        keys=KeyStore(settings.api_keys_file, redis, settings.api_keys_redis_hash),
        limiter=RateLimiter(redis, settings.default_rpm, settings.default_tpm, settings.redis_fail_mode, metrics),
        session=session,
        pool=pool,
        upstream_headers=upstream_headers,
        fallback_headers=fallback_headers,
    )
    app.state.ctx = ctx
    await pool.start()
    log.info("gateway ready", extra={"upstreams": len(pool.members()), "healthy": pool.healthy_count()})
    try:
        yield
    finally:
        await pool.stop()
        await ctx.limiter.drain()
        await session.close()
        await redis.aclose()
        metrics.close()


def _model_label(ctx: GatewayContext, model: str) -> str:
    # Metric labels only carry served model names, so made-up names cannot grow the series count.
    return model if ctx.pool.serves(model) else "other"


def _plan(request: Request, ctx: GatewayContext, key: ApiKey, body: ChatCompletionRequest | CompletionRequest,
          endpoint: str) -> ProxyResponse:
    started = request.scope.get("state", {}).get("started") or time.perf_counter()
    model = body.model
    if not key.may_use(model):
        ctx.metrics.auth_failures.labels("model_not_allowed").inc()
        raise OpenAIError(403, f"This API key may not use model '{model}'.", param="model", code="model_not_allowed")
    if not ctx.pool.serves(model) and not ctx.settings.fallback_base_url:
        raise OpenAIError(404, f"The model '{model}' does not exist or is not served here.", param="model",
                          code="model_not_found")
    wants_usage = body.wants_usage()
    if body.stream:
        # vLLM reports token usage on a stream only when asked; the gateway needs it to charge TPM.
        if body.stream_options is None:
            body.stream_options = StreamOptions(include_usage=True)
        else:
            body.stream_options.include_usage = True
    chars = ctx.settings.affinity_prefix_chars
    plan = ProxyPlan(
        endpoint=endpoint,
        model=model,
        model_label=_model_label(ctx, model),
        key=key,
        body=body.model_dump_json(exclude_unset=True).encode(),
        stream=bool(body.stream),
        client_wants_usage=wants_usage,
        prefix=body.prefix(chars) if chars else None,
        prompt_chars=body.prompt_chars(),
        request_id=request_id(request),
        started=started,
    )
    return ProxyResponse(ctx, plan)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = FastAPI(
        title="llm-platform gateway",
        description="OpenAI-compatible gateway in front of vLLM replicas.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings or GatewaySettings()
    install(app)

    app.add_middleware(EdgeMiddleware, max_bytes=app.state.settings.max_body_bytes)

    @app.post("/v1/chat/completions", response_model=None, responses=_ERRORS, tags=["openai"])
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        key: ApiKey = Depends(enforce_limits),
    ) -> Response:
        return _plan(request, get_context(request), key, body, "/v1/chat/completions")

    @app.post("/v1/completions", response_model=None, responses=_ERRORS, tags=["openai"])
    async def completions(
        body: CompletionRequest,
        request: Request,
        key: ApiKey = Depends(enforce_limits),
    ) -> Response:
        return _plan(request, get_context(request), key, body, "/v1/completions")

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]}, tags=["openai"])
    async def models(key: ApiKey = Depends(authenticate), ctx: GatewayContext = Depends(get_context)) -> ModelList:
        names = sorted(m for m in ctx.pool.models() if key.may_use(m))
        return ModelList(data=[ModelCard(id=name) for name in names])

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "Not ready"}})
    async def readyz(ctx: GatewayContext = Depends(get_context)) -> Response:
        healthy = ctx.pool.healthy_count()
        try:
            redis_ok = bool(await ctx.redis.ping())
        except (RedisError, OSError):
            redis_ok = False
        # With fail-open limits a Redis outage must not take every gateway out of the Service.
        redis_needed = ctx.settings.redis_fail_mode == "closed"
        # Known models are held while they scale up from zero, so an empty pool is no reason to
        # leave the Service: a gateway out of the load balancer could never take that first request.
        can_serve = healthy > 0 or bool(ctx.settings.fallback_base_url) or bool(ctx.settings.models)
        ready = can_serve and (redis_ok or not redis_needed)
        body = {"ready": ready, "healthy_upstreams": healthy, "redis": redis_ok}
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON)

    @app.get("/metrics", tags=["ops"])
    async def metrics(ctx: GatewayContext = Depends(get_context)) -> Response:
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
