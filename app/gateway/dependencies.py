"""FastAPI dependencies: the context, the caller's key, and the per-key limits."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .keyfile import ApiKey
from .context import GatewayContext
from .errors import OpenAIError
from .ratelimit import retry_after_header

# auto_error=False: a missing key must get OpenAI's 401 body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key issued for this gateway.")


def get_context(request: Request) -> GatewayContext:
    return request.app.state.ctx


async def authenticate(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ctx: GatewayContext = Depends(get_context),
) -> ApiKey:
    if credentials is None or not credentials.credentials:
        ctx.metrics.auth_failures.labels("missing").inc()
        raise OpenAIError(
            401,
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            code="invalid_api_key",
        )
    key = await ctx.keys.lookup(credentials.credentials)
    if key is None:
        ctx.metrics.auth_failures.labels("invalid").inc()
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return key


async def enforce_limits(key: ApiKey = Depends(authenticate), ctx: GatewayContext = Depends(get_context)) -> ApiKey:
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
