"""Per-key limits shared through Redis by several gateways, the Lua script itself, and Redis outages."""

from __future__ import annotations

import time
from importlib import resources

import httpx
import pytest
import redis
from gateway_testkit import eventually, gateway_env, metric_sum, scrape

from app.devstack import free_port, start_gateway

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _post(url: str, key: str, body: dict = CHAT) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_rpm_limit_is_shared_by_two_gateways(gateway, gateway_b, keys):
    statuses = [_post(gw.url, keys.rpm5).status_code for gw in [gateway, gateway_b] * 5]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 5, statuses
    refused = _post(gateway_b.url, keys.rpm5)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 13  # one request every 12 s at rpm=5
    err = refused.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    samples = scrape(gateway.metrics_url)
    assert metric_sum(samples, "gateway_ratelimit_rejections_total", key_id="rpm5", limit="rpm") >= 1


def _upstream_requests(replicas) -> tuple[float, float]:
    """(requests finished, of which aborted) over the simulator replicas."""
    finished = aborted = 0.0
    for replica in replicas:
        samples = scrape(replica.url)
        finished += metric_sum(samples, "vllm:request_success_total")
        aborted += metric_sum(samples, "vllm:request_success_total", finished_reason="abort")
    return finished, aborted


def test_refused_request_is_cancelled_upstream_then_the_key_is_checked_first(gateway, keys, replicas):
    key = keys.by_id["rpm1"]
    assert _post(gateway.url, key).status_code == 200
    _, aborted = _upstream_requests(replicas)
    # The limit check runs while the request goes upstream: the refusal aborts it on the replica.
    assert _post(gateway.url, key).status_code == 429
    eventually(lambda: _upstream_requests(replicas)[1] == aborted + 1, timeout=5)
    # Refused once, the key now waits for the check, so its next request never reaches a replica.
    finished, aborted = _upstream_requests(replicas)
    refused = _post(gateway.url, key)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
    time.sleep(0.3)
    assert _upstream_requests(replicas) == (finished, aborted)


def test_tokens_are_charged_from_reported_usage(gateway, gateway_b, keys):
    # tpm=60; a 50-token completion plus its prompt drains the bucket, so the next request waits.
    first = _post(gateway.url, keys.tpm, {**CHAT, "max_tokens": 50, "stream": True})
    assert first.status_code == 200 and b"[DONE]" in first.content

    def refused():
        r = _post(gateway_b.url, keys.tpm)
        assert r.status_code == 429, r.status_code
        return r

    r = eventually(refused, timeout=5)
    assert r.json()["error"]["type"] == "tokens"
    assert int(r.headers["retry-after"]) >= 1


@pytest.fixture()
def limiter(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    script = client.register_script(resources.files("app.gateway").joinpath("ratelimit.lua").read_text())
    prefix = f"test:{time.monotonic_ns()}"
    yield lambda *args: script(keys=[prefix + ":req", prefix + ":tok"], args=list(args))
    client.close()


def test_gcra_admits_a_burst_of_the_limit_then_refuses(limiter):
    results = [limiter(3, 0, "admit", 0) for _ in range(4)]
    assert [r[0] for r in results] == [1, 1, 1, 0]
    assert [r[3] for r in results[:3]] == [2, 1, 0]  # remaining requests
    allowed, refused_by, retry_us = results[3][:3]
    assert refused_by == 1
    assert 19_000_000 < retry_us <= 20_000_000  # 60 s / 3


def test_token_charges_go_into_debt_and_block_admission(limiter):
    assert limiter(0, 100, "admit", 0)[0] == 1
    limiter(0, 100, "charge", 150)  # 50 tokens of debt beyond a full minute's budget
    allowed, refused_by, retry_us, _, _ = limiter(0, 100, "admit", 0)
    assert (allowed, refused_by) == (0, 2)
    assert 29_000_000 < retry_us <= 30_600_000  # 51 tokens at 0.6 s each


def test_unlimited_when_both_limits_are_zero(limiter):
    assert all(limiter(0, 0, "admit", 0)[0] == 1 for _ in range(20))


@pytest.fixture(scope="module")
def gateways_without_redis(log_dir, procs, keys, replicas):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    urls = [r.url for r in replicas]
    closed = procs(
        start_gateway(log_dir, gateway_env(keys, dead_redis, urls, redis_fail_mode="closed"), wait="/healthz")
    )
    opened = procs(start_gateway(log_dir, gateway_env(keys, dead_redis, urls, redis_fail_mode="open")))
    return closed, opened


def test_redis_down_fail_closed_refuses_and_counts(gateways_without_redis, keys):
    closed, _ = gateways_without_redis
    r = _post(closed.url, keys.alice)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "rate_limiter_unavailable"
    assert metric_sum(scrape(closed.metrics_url), "gateway_ratelimit_redis_errors_total", fail_mode="closed") >= 1
    ready = httpx.get(closed.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["redis"] is False


def test_redis_down_fail_open_serves_and_counts(gateways_without_redis, keys):
    _, opened = gateways_without_redis
    assert _post(opened.url, keys.alice).status_code == 200
    assert metric_sum(scrape(opened.metrics_url), "gateway_ratelimit_redis_errors_total", fail_mode="open") >= 1
    assert httpx.get(opened.url + "/readyz").status_code == 200
