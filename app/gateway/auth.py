"""Who is calling: the API key of a request's Authorization header, looked up by digest in a
mounted Secret file (see keyfile.py) and/or a Redis hash; or a JWT from a configured issuer,
verified against its JWKS (jwt_auth.py).

`authenticate` is the one check, for the completion routes (raw ASGI, completions.py) and the
FastAPI routes (`Depends(caller)`, main.py) alike; it raises OpenAIError, so both answer alike.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import OpenAIError
from .jwt_auth import TokenRefused, TokenVerifier, looks_like_jwt
from .keyfile import ApiKey, KeyFileError, digest_of, load_key_file, parse_entry

if TYPE_CHECKING:  # the context holds a KeyStore
    from .context import GatewayContext

log = logging.getLogger("gateway")


class KeyStore:
    """Looks keys up by digest; the file is re-read when it changes (Kubernetes updates Secrets in place)."""

    _RELOAD_CHECK_S = 5.0
    _CACHE_TTL_S = 30.0
    _CACHE_MAX = 10_000

    def __init__(
        self, path: Path | None, redis: Redis | None, redis_hash: str | None, tokens: TokenVerifier | None = None
    ) -> None:
        self._path = path
        self._tokens = tokens
        self._redis = redis
        self._hash = redis_hash
        self._by_digest: dict[str, ApiKey] = {}
        self._mtime = 0.0
        self._checked = 0.0
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        if path is not None:
            self._by_digest = load_key_file(path)
            self._mtime = os.stat(path).st_mtime

    def _maybe_reload(self, now: float) -> None:
        if self._path is None or now - self._checked < self._RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime != self._mtime:
                self._by_digest = load_key_file(self._path)
                self._mtime = mtime
                log.info("api keys reloaded", extra={"keys": len(self._by_digest)})
        except (OSError, KeyFileError) as exc:
            # Keep serving with the keys we have rather than locking everyone out.
            log.error("api key file reload failed; keeping previous keys", extra={"error": str(exc)})

    async def lookup(self, presented: str) -> ApiKey | None:
        if self._tokens is not None and looks_like_jwt(presented):
            try:
                return await self._tokens.verify(presented)
            except TokenRefused as why:
                log.info("token refused", extra={"reason": str(why)})
                return None
        now = time.monotonic()
        self._maybe_reload(now)
        # The table is keyed by digest, so lookup timing depends only on a hash of the secret;
        # the final comparison is still constant-time.
        digest = digest_of(presented)
        entry = self._by_digest.get(digest)
        if entry is None and self._redis is not None and self._hash:
            entry = await self._lookup_redis(digest, now)
        if entry is not None and hmac.compare_digest(entry.digest, digest):
            return entry
        return None

    async def _lookup_redis(self, digest: str, now: float) -> ApiKey | None:
        if self._redis is None or self._hash is None:
            return None
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._CACHE_TTL_S:
            return cached[1]
        try:
            value = await self._redis.hget(self._hash, digest)
        except (RedisError, OSError):
            return cached[1] if cached else None
        entry = None
        if value:
            fields = value.decode().split() if isinstance(value, bytes) else str(value).split()
            try:
                entry = parse_entry(fields[0], digest, fields[1:], f"redis hash {self._hash}")
            except (KeyFileError, IndexError):
                log.error("malformed api key entry in redis", extra={"hash": self._hash})
        self._cache[digest] = (now, entry)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._CACHE_MAX:
            self._cache.popitem(last=False)
        return entry


async def authenticate(ctx: GatewayContext, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey:
    """The key for a request's headers (ASGI's, lower-case names); 401 in OpenAI's shape when
    the Authorization header is missing or wrong, 400 when there is more than one."""
    authorization = [value.decode("latin-1") for name, value in headers if name == b"authorization"]
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
