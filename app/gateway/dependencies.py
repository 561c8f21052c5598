"""FastAPI dependencies: the context, the caller's key, and the per-key limits."""

from __future__ import annotations

from fastapi import Depends, Request

from .keyfile import ApiKey
from .context import GatewayContext
from .errors import OpenAIError
from .ratelimit import retry_after_header

def get_context(request: Request) -> GatewayContext:
    return request.app.state.ctx


async def authenticate(request: Request) -> ApiKey:
    # Read by hand rather than through fastapi.security: every dependency costs time on each
    # request, and a missing key must get OpenAI's 401 body, not FastAPI's 403.
    ctx = get_context(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        ctx.metrics.auth_failures.labels("missing").inc()
        raise OpenAIError(
            401,
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            code="invalid_api_key",
        )
    key = await ctx.keys.lookup(token)
    if key is None:
        ctx.metrics.auth_failures.labels("invalid").inc()
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return key


async def enforce_limits(request: Request, key: ApiKey = Depends(authenticate)) -> ApiKey:
    ctx = get_context(request)
    decision = await ctx.limiter.admit(key)
    if decision.allowed:
        return key
    if decision.limit == "redis":
        raise OpenAIError(
            503,
            "Rate limiting is unavailable, so requests are refused. Try again shortly.",
            "server_error",
            code="rate_limiter_unavailable",
            headers={"retry-after": retry_after_header(decision.retry_after_s)},
        )
    rpm, tpm = ctx.limiter.limits(key)
    if decision.limit == "rpm":
        message = f"Rate limit reached for key '{key.key_id}' on requests per minute: limit {rpm}."
        headers = {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": "0"}
    else:
        message = f"Rate limit reached for key '{key.key_id}' on tokens per minute: limit {tpm}."
        headers = {"x-ratelimit-limit-tokens": str(tpm), "x-ratelimit-remaining-tokens": "0"}
    headers["retry-after"] = retry_after_header(decision.retry_after_s)
    raise OpenAIError(429, message, "requests" if decision.limit == "rpm" else "tokens", code="rate_limit_exceeded",
                      headers=headers)
