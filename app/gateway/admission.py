"""Admission: whether the caller's limits let the request in (who is calling: auth.py)."""

from __future__ import annotations

from .context import GatewayContext
from .errors import OpenAIError
from .keyfile import ApiKey
from .ratelimit import retry_after_header


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
