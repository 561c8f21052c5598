"""The limiter tells a Redis outage apart from a busy pool and from a stale connection: neither
of the last two may put a whole gateway worker into its fail mode."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis
from gateway_testkit import gateway_env, metric_sum, scrape

from app.devstack import start_gateway

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _post(url: str, key: str) -> int:
    return httpx.post(
        url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}, timeout=30
    ).status_code


@pytest.fixture(scope="module")
def closed_gateway(log_dir, procs, keys, redis_server, replicas):
    return procs(
        start_gateway(log_dir, gateway_env(keys, redis_server.url, [r.url for r in replicas], redis_fail_mode="closed"))
    )


@pytest.fixture(scope="module")
def open_gateway(log_dir, procs, keys, redis_server, replicas):
    return procs(
        start_gateway(log_dir, gateway_env(keys, redis_server.url, [r.url for r in replicas], redis_fail_mode="open"))
    )


def test_connections_redis_dropped_are_replaced_without_refusing_anyone(closed_gateway, redis_server, keys):
    # A Redis restart, a failover or an idle cut drops every pooled connection at once.
    assert all(_post(closed_gateway.url, keys.alice) == 200 for _ in range(10))
    admin = redis.Redis.from_url(redis_server.url)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    admin.close()
    statuses = [_post(closed_gateway.url, keys.alice) for _ in range(20)]
    assert statuses.count(503) == 0, statuses
    assert metric_sum(scrape(closed_gateway.metrics_url), "gateway_ratelimit_redis_errors_total") == 0


async def _burst(url: str, key: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> int:
            r = await client.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
            return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_more_limit_checks_in_flight_than_pooled_connections_keep_the_limit(open_gateway, keys):
    # 200 requests at once in one worker, more than redis-py's default pool of 100: a busy pool
    # is not an outage, so fail-open must not wave them through past rpm=60.
    # A loop of its own: asyncio.run would leave the main thread without one, which the Pulumi
    # SDK's synchronous helpers in later tests need.
    loop = asyncio.new_event_loop()
    try:
        statuses = loop.run_until_complete(_burst(open_gateway.url, keys.by_id["rpm60"], 200))
    finally:
        loop.close()
    assert statuses.count(200) <= 63, statuses.count(200)  # the burst, plus the refill while it runs
    assert statuses.count(429) >= 137
    assert metric_sum(scrape(open_gateway.metrics_url), "gateway_ratelimit_redis_errors_total") == 0
