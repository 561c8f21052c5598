"""Everything a request needs, built once per worker by the lifespan and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from redis.asyncio import Redis

from .accounting import DecodeRates
from .auth import KeyStore
from .hybrid import Provider
from .metrics import GatewayMetrics
from .ratelimit import RateLimiter
from .settings import GatewaySettings
from .upstreams import UpstreamPool


@dataclass(frozen=True, slots=True)
class GatewayContext:
    settings: GatewaySettings
    metrics: GatewayMetrics
    redis: Redis
    keys: KeyStore
    limiter: RateLimiter
    session: aiohttp.ClientSession
    pool: UpstreamPool
    upstream_headers: dict[str, str]
    providers: dict[str, Provider]  # hosted providers by name
    provider_headers: dict[str, dict[str, str]]  # by provider: its key
    decode_rates: DecodeRates
