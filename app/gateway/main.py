"""The FastAPI application: routes, and the lifespan that owns every client."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .accounting import DecodeRates
from .auth import KeyStore, authenticate
from .completions import ROUTES, CompletionsEndpoint
from .context import GatewayContext
from .errors import JSON, install
from .jwt_auth import TokenVerifier
from .keyfile import ApiKey
from .metrics import GatewayMetrics
from .ops import OpsServer
from .ratelimit import RateLimiter
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from .settings import GatewaySettings
from .upstreams import UpstreamPool

log = logging.getLogger("gateway")

_ERRORS: dict[int | str, dict[str, Any]] = {
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
async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
    # Everything opened here is closed in reverse order on the way out, also when start-up
    # fails halfway (a bad key file, a taken port): no client outlives a failed start.
    async with AsyncExitStack() as opened:
        settings: GatewaySettings = app.state.settings
        metrics = GatewayMetrics()
        opened.callback(metrics.close)
        # A blocking pool: a burst of checks beyond the pool waits (up to the timeout) for a
        # connection instead of failing with MaxConnectionsError, which is no Redis outage.
        # One immediate retry, on connection errors only, replaces a pooled connection Redis has
        # dropped (a restart, a failover, an idle cut); when Redis is really down the reconnect is
        # refused at once, and timeouts are not retried, so a check still fails fast.
        redis_pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        redis = Redis.from_pool(redis_pool)  # closes the pool with the client
        opened.push_async_callback(redis.aclose)
        connector = aiohttp.TCPConnector(
            limit=settings.max_upstream_connections,
            keepalive_timeout=settings.upstream_keepalive_s,
            ttl_dns_cache=int(settings.dns_refresh_s),
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        opened.push_async_callback(session.close)
        upstream_headers = {"content-type": "application/json"}
        if settings.upstream_api_key is not None:
            upstream_headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        keys = settings.provider_key_table()
        providers = settings.hosted_providers()
        provider_headers = {
            name: {"content-type": "application/json", "authorization": f"Bearer {keys[name].get_secret_value()}"}
            for name in providers
        }
        pool = UpstreamPool(settings, session, metrics)
        ctx = GatewayContext(
            settings=settings,
            metrics=metrics,
            redis=redis,
            keys=KeyStore(
                settings.api_keys_file,
                redis,
                settings.api_keys_redis_hash,
                TokenVerifier(settings.jwt_issuers, session) if settings.jwt_issuers else None,
            ),
            limiter=RateLimiter(redis, settings.default_rpm, settings.default_tpm, settings.redis_fail_mode, metrics),
            session=session,
            pool=pool,
            upstream_headers=upstream_headers,
            providers=providers,
            provider_headers=provider_headers,
            decode_rates=DecodeRates(),
        )
        app.state.ctx = ctx
        app.completions = CompletionsEndpoint(ctx)
        ops = OpsServer(settings.host, settings.metrics_port, metrics, app.openapi)
        # In reverse: ops.stop, pool.stop, limiter.drain, session.close, redis.aclose, metrics.close.
        opened.push_async_callback(ctx.limiter.drain)
        opened.push_async_callback(pool.stop)
        opened.push_async_callback(ops.stop)
        await pool.start()
        # A port already taken stops start-up here, and the clients above are still closed.
        await ops.start()
        # Everything built so far lives as long as the worker: move it out of the collector's
        # sight, so full collections stay short and do not stall streams in flight.
        gc.collect()
        gc.freeze()
        log.info(
            "gateway ready",
            extra={
                "upstreams": len(pool.members()),
                "healthy": pool.healthy_count(),
                "metrics_port": settings.metrics_port,
            },
        )
        yield


class GatewayApp(FastAPI):
    """FastAPI, with the worker's CompletionsEndpoint (built at start-up) for the routes below."""

    completions: CompletionsEndpoint | None = None


class _CompletionRoute:
    """The ASGI endpoint of a completion path: an ordinary Starlette route, so middleware and
    exception handlers see it like any other; the endpoint reads the body itself (streaming,
    bounded) instead of FastAPI parsing it (completions.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope["app"].completions
        if endpoint is None:  # the lifespan has not run: no clients to serve with yet
            raise RuntimeError("the gateway's lifespan has not started")
        await endpoint(scope, receive, send)


def _openapi_document(app: GatewayApp) -> Callable[[], dict[str, Any]]:
    """The served routes' OpenAPI document, with the completion routes described by their
    request and error schemas (declared on an app that only documents them)."""
    described = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @described.post("/v1/chat/completions", response_model=None, responses=_ERRORS, tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest) -> None: ...

    @described.post("/v1/completions", response_model=None, responses=_ERRORS, tags=["openai"])
    async def completions(body: CompletionRequest) -> None: ...

    @described.post("/v1/embeddings", response_model=None, responses=_ERRORS, tags=["openai"])
    async def embeddings(body: EmbeddingRequest) -> None: ...

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            routes = [*described.routes, *app.routes]
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=routes
            )
        return app.openapi_schema

    return document


def get_context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.ctx
    return ctx


async def caller(request: Request) -> ApiKey:
    """The FastAPI routes' API key check, the same as the completion routes' (auth.py)."""
    return await authenticate(get_context(request), request.headers.raw)


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    app = GatewayApp(
        title="llm-platform gateway",
        description="OpenAI-compatible gateway in front of vLLM replicas.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # The schema is served on the operations port (ops.py), not to the internet.
        openapi_url=None,
        # No 307 to the slashless path: its Location would echo the client's Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings or GatewaySettings()
    install(app)

    # Other methods on these paths get Starlette's 405, in OpenAI's shape (errors.py).
    for path in ROUTES:
        app.router.routes.append(Route(path, _CompletionRoute(), methods=["POST"], include_in_schema=False))
    app.openapi = _openapi_document(app)  # type: ignore[method-assign]  # FastAPI's documented override

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]}, tags=["openai"])
    async def models(key: ApiKey = Depends(caller), ctx: GatewayContext = Depends(get_context)) -> ModelList:
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
        # A gateway that knows its models stays in the Service with no replica up: it holds the
        # requests of a model scaling up from zero, and answers the others 503 at once, which is
        # better for a client than a load balancer with no backend.
        s = ctx.settings
        can_serve = healthy > 0 or bool(s.default_chain() or s.models or s.scale_from_zero_models)
        ready = can_serve and (redis_ok or not redis_needed)
        body = {"ready": ready, "healthy_upstreams": healthy, "redis": redis_ok}
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON)

    return app
