"""Per-key RPM and TPM limits shared by every gateway replica through one Redis Lua script."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError

from .keyfile import ApiKey
from .metrics import GatewayMetrics

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: Literal["rpm", "tpm", "redis", ""] = ""
    retry_after_s: float = 0.0
    remaining_requests: int = -1
    remaining_tokens: int = -1


class RateLimiter:
    # After a Redis failure, skip Redis for this long rather than adding a timeout to every request.
    _BACKOFF_S = 1.0
    # Finished requests' tokens are summed per key and charged in one pipelined round trip per
    # interval: under load that halves the gateway's Redis writes, at the cost of TPM seeing
    # a request's tokens this much later.
    _CHARGE_INTERVAL_S = 0.05

    def __init__(
        self,
        redis: Redis,
        default_rpm: int,
        default_tpm: int,
        fail_mode: Literal["open", "closed"],
        metrics: GatewayMetrics,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(resources.files(__package__).joinpath("ratelimit.lua").read_text())
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._fail_mode = fail_mode
        self._metrics = metrics
        self._down_until = 0.0
        self._owed: dict[str, tuple[ApiKey, int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        # Keys refused lately, until their Retry-After passes: their next requests are checked
        # before they go upstream (see completions.py).
        self._refused_until: dict[str, float] = {}

    def recently_refused(self, key: ApiKey) -> bool:
        until = self._refused_until.get(key.key_id)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._refused_until[key.key_id]
        return False

    def limits(self, key: ApiKey) -> tuple[int, int]:
        rpm = self._default_rpm if key.rpm is None else key.rpm
        tpm = self._default_tpm if key.tpm is None else key.tpm
        return rpm, tpm

    @staticmethod
    def _keys(key: ApiKey) -> list[str]:
        # One hash tag so both buckets live in the same Redis Cluster slot.
        return [f"gateway:rl:{{{key.key_id}}}:req", f"gateway:rl:{{{key.key_id}}}:tok"]

    @staticmethod
    def _saturated(exc: BaseException) -> bool:
        """Every pooled connection busy for the whole wait (BlockingConnectionPool raises a
        ConnectionError from the wait's timeout), or a plain pool's MaxConnectionsError: this
        worker is overloaded, Redis is not down."""
        if isinstance(exc, MaxConnectionsError):
            return True
        return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, asyncio.TimeoutError)

    def _failed(self, exc: BaseException) -> Decision:
        self._metrics.redis_errors.labels(self._fail_mode).inc()
        saturated = self._saturated(exc)
        if not saturated:
            # An outage: skip Redis for a while rather than waiting on it in every request.
            self._down_until = time.monotonic() + self._BACKOFF_S
        log.warning(
            "rate limiter cannot reach redis",
            extra={"fail_mode": self._fail_mode, "error": type(exc).__name__, "pool_saturated": saturated},
        )
        return self._degraded()

    def _degraded(self) -> Decision:
        if self._fail_mode == "open":
            return Decision(True)
        return Decision(False, "redis", self._BACKOFF_S)

    async def admit(self, key: ApiKey) -> Decision:
        rpm, tpm = self.limits(key)
        if rpm == 0 and tpm == 0:
            return Decision(True)
        if time.monotonic() < self._down_until:
            self._metrics.redis_errors.labels(self._fail_mode).inc()
            return self._degraded()
        try:
            allowed, by, retry_us, rem_req, rem_tok = await self._script(
                keys=self._keys(key), args=[rpm, tpm, "admit", 0]
            )
        except (TimeoutError, RedisError, OSError) as exc:
            return self._failed(exc)
        if allowed:
            return Decision(True, remaining_requests=int(rem_req), remaining_tokens=int(rem_tok))
        limit: Literal["rpm", "tpm"] = "rpm" if by == 1 else "tpm"
        self._metrics.ratelimited.labels(key.key_id, limit).inc()
        retry_after_s = int(retry_us) / 1e6
        self._refused_until[key.key_id] = time.monotonic() + retry_after_s
        return Decision(False, limit, retry_after_s, int(rem_req), int(rem_tok))

    def charge(self, key: ApiKey, tokens: int) -> None:
        """Charges a finished request's tokens without holding up its response."""
        _, tpm = self.limits(key)
        if tpm == 0 or tokens <= 0 or time.monotonic() < self._down_until:
            return
        owed = self._owed.get(key.key_id)
        self._owed[key.key_id] = (key, tokens + (owed[1] if owed else 0))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._CHARGE_INTERVAL_S)
        await self.flush()

    async def flush(self) -> None:
        owed, self._owed = self._owed, {}
        if not owed:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, tokens in owed.values():
                    rpm, tpm = self.limits(key)
                    await self._script(keys=self._keys(key), args=[rpm, tpm, "charge", tokens], client=pipe)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)

    async def drain(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
