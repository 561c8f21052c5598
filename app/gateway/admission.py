"""Admission: who is calling (the API key) and whether their limits let the request in.

Both raise OpenAIError, so the completions endpoint and FastAPI's /v1/models answer alike.
"""

from __future__ import annotations

from .context import GatewayContext
from .errors import OpenAIError
from .keyfile import ApiKey
from .ratelimit import retry_after_header


async def authenticate(ctx: GatewayContext, authorization: list[str]) -> ApiKey:
    """The key for the request's Authorization header values (as ASGI gives them, latin-1);
    401 in OpenAI's shape when it is missing or wrong, 400 when there is more than one."""
    if len(authorization) > 1:
        # Which one counts would depend on who reads them; HTTP allows one (RFC 9110, 11.6.2).
        ctx.metrics.auth_failures.labels("ambiguous").inc()
        raise OpenAIError(400, "Send one Authorization header, not several.", code="invalid_api_key")
    scheme, _, token = (authorization[0] if authorization else "").partition(" ")
    try:
        # Header bytes arrive as latin-1; a key is text sent as UTF-8, so a non-ASCII key matches too.
        token = token.strip().encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        token = ""
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


async def enforce_limits(ctx: GatewayContext, key: ApiKey) -> None:
    """Takes one request from the key's limits, or raises 429 (limit reached) or 503 (limiter down, fail closed)."""
    decision = await ctx.limiter.admit(key)
    if decision.allowed:
        return
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
    raise OpenAIError(
        429, message, "requests" if decision.limit == "rpm" else "tokens", code="rate_limit_exceeded", headers=headers
    )
