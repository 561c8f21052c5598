"""Routing with real replicas: prefix affinity, a replica killed mid-run, 5xx retries, fallback, DNS."""

from __future__ import annotations

import threading
import time

import httpx
import openai
from gateway_testkit import FAST, eventually, gateway_env, metric_sum, scrape

from app.devstack import free_port, start_gateway, start_simulator


def _served(replica) -> float:
    return metric_sum(scrape(replica.url), "vllm:request_success_total")


def _client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_shared_prefix_sticks_to_one_replica(gateway, keys, replicas):
    system = "You are a meticulous assistant for the llm-platform test suite. " * 6  # > 256 characters
    before = [_served(r) for r in replicas]
    hits_before = [metric_sum(scrape(r.url), "vllm:prefix_cache_hits_total") for r in replicas]
    client = _client(gateway, keys.alice)
    for question in ["one", "two", "three", "four", "five", "six"]:
        client.chat.completions.create(
            model="sim-model",
            max_tokens=1,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
    served = sorted(_served(r) - b for r, b in zip(replicas, before, strict=True))
    assert served == [0, 6]
    hits = [
        metric_sum(scrape(r.url), "vllm:prefix_cache_hits_total") - h
        for r, h in zip(replicas, hits_before, strict=True)
    ]
    assert max(hits) >= 5 * 16  # five warm requests, each hitting at least one cached block


def test_different_prefixes_spread_over_replicas(gateway, keys, replicas):
    before = [_served(r) for r in replicas]
    client = _client(gateway, keys.alice)
    for i in range(12):
        client.completions.create(model="sim-model", prompt=f"distinct prompt number {i} " * 3, max_tokens=1)
    served = [_served(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == 12 and min(served) >= 1


def test_replica_killed_mid_run_is_routed_around(log_dir, procs, keys, redis_server):
    sims = [procs(start_simulator(log_dir, **FAST)) for _ in range(2)]
    gw = procs(start_gateway(log_dir, gateway_env(keys, redis_server.url, [s.url for s in sims])))
    client = _client(gw, keys.alice)
    killed_at: list[float] = []
    results: list[tuple[float, bool, bool]] = []  # (start time, stream, ok)
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(20):
            stream = (i + n) % 2 == 0
            started = time.monotonic()
            try:
                if stream:
                    text = "".join(
                        c.choices[0].delta.content or ""
                        for c in client.chat.completions.create(
                            model="sim-model",
                            messages=[{"role": "user", "content": f"w{n} r{i}"}],
                            max_tokens=8,
                            stream=True,
                        )
                        if c.choices
                    )
                else:
                    text = (
                        client.chat.completions.create(
                            model="sim-model", messages=[{"role": "user", "content": f"w{n} r{i}"}], max_tokens=8
                        )
                        .choices[0]
                        .message.content
                    )
                ok = len(text.split()) == 8
            except openai.APIError:
                ok = False
            with lock:
                results.append((started, stream, ok))
            if n == 0 and i == 5:
                sims[0].kill()
                killed_at.append(time.monotonic())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert killed_at and len(results) == 80
    after_kill = [ok for started, _, ok in results if started > killed_at[0]]
    assert after_kill and all(after_kill), "a request that started after the kill failed"
    assert all(ok for _, stream, ok in results if not stream), "non-streaming requests are retried before any byte"
    # Only a stream already flowing from the killed replica may break.
    assert sum(not ok for _, _, ok in results) <= 4
    eventually(
        lambda: metric_sum(scrape(gw.metrics_url), "gateway_upstream_healthy", upstream=sims[0].url) == 0, timeout=5
    )


def test_5xx_is_retried_on_another_replica_and_opens_the_circuit(log_dir, procs, keys, redis_server, replicas):
    broken = procs(start_simulator(log_dir, fail_rate=1.0, **FAST))
    gw = procs(
        start_gateway(
            log_dir,
            gateway_env(
                keys, redis_server.url, [broken.url, replicas[0].url], affinity_prefix_chars=0, breaker_cooldown_s=60
            ),
        )
    )
    client = _client(gw, keys.alice)
    for i in range(10):
        out = client.completions.create(model="sim-model", prompt=f"p{i}", max_tokens=2)
        assert out.choices[0].text.split() == ["the", "quick"]
    samples = scrape(gw.metrics_url)
    assert metric_sum(samples, "gateway_retries_total") >= 1
    assert metric_sum(samples, "gateway_upstream_requests_total", upstream=broken.url, outcome="http_5xx") == 3
    assert metric_sum(samples, "gateway_circuit_opened_total", upstream=broken.url) == 1
    assert metric_sum(samples, "gateway_upstream_healthy", upstream=broken.url) == 0


def test_hosted_fallback_takes_requests_no_replica_can(log_dir, procs, keys, redis_server):
    hosted = procs(start_simulator(log_dir, api_key="sk-hosted-fallback", **FAST))
    assert httpx.post(hosted.url + "/v1/completions", json={"model": "sim-model", "prompt": "x"}).status_code == 401
    dead = f"http://127.0.0.1:{free_port()}"
    gw = procs(
        start_gateway(
            log_dir,
            gateway_env(
                keys,
                redis_server.url,
                [dead],
                fallback_base_url=hosted.url + "/v1",
                fallback_api_key="sk-hosted-fallback",
            ),
        )
    )
    client = _client(gw, keys.alice)
    out = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert out.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert metric_sum(scrape(gw.metrics_url), "gateway_hosted_requests_total", provider="fallback", outcome="ok") == 2
    assert "sk-hosted-fallback" not in gw.log()


def test_upstreams_found_through_dns(log_dir, procs, keys, redis_server, replicas):
    port = replicas[1].url.rsplit(":", 1)[1]
    env = gateway_env(keys, redis_server.url, [], upstream_dns=f"localhost:{port}")
    gw = procs(start_gateway(log_dir, env))
    out = _client(gw, keys.alice).completions.create(model="sim-model", prompt="dns", max_tokens=2)
    assert out.choices[0].text.split() == ["the", "quick"]
    assert metric_sum(scrape(gw.metrics_url), "gateway_upstream_healthy", upstream=f"http://127.0.0.1:{port}") == 1


def test_request_is_held_until_a_replica_of_a_scaled_to_zero_model_starts(log_dir, procs, keys, redis_server):
    port = free_port()
    env = gateway_env(
        keys, redis_server.url, [f"http://127.0.0.1:{port}"], scale_from_zero_models="sim-model", hold_timeout_s=60
    )
    gw = procs(start_gateway(log_dir, env, wait="/healthz"))
    # Ready with no replica at all: the load balancer must send it the request that wakes the model.
    assert httpx.get(gw.url + "/readyz").status_code == 200
    assert [m.id for m in _client(gw, keys.alice).models.list()] == ["sim-model"]
    result: list[object] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            _client(gw, keys.alice).completions.create(model="sim-model", prompt="wake up", max_tokens=2)
        )
    )
    waiter.start()
    eventually(
        lambda: metric_sum(scrape(gw.metrics_url), "gateway_requests_waiting", model="sim-model") == 1, timeout=10
    )
    procs(start_simulator(log_dir, port=port, **FAST))
    waiter.join(60)
    assert result and result[0].choices[0].text.split() == ["the", "quick"]
    assert metric_sum(scrape(gw.metrics_url), "gateway_requests_waiting", model="sim-model") == 0


def test_known_model_with_no_replica_up_is_503_at_once_not_404_and_not_held(log_dir, procs, keys, redis_server):
    """A model that does not scale to zero, all of its replicas down (here: never started), on a
    gateway started during the outage: 503 with Retry-After straight away, not a 404 clients take
    as permanent, and not a wait of hold_timeout_s for a replica nothing will start."""
    port = free_port()
    env = gateway_env(keys, redis_server.url, [f"http://127.0.0.1:{port}"], models="sim-model", hold_timeout_s=20)
    gw = procs(start_gateway(log_dir, env, wait="/healthz"))
    assert httpx.get(gw.url + "/readyz").status_code == 200  # still in the Service: it answers
    started = time.monotonic()
    resp = httpx.post(
        gw.url + "/v1/completions",
        headers={"authorization": f"Bearer {keys.alice}"},
        json={"model": "sim-model", "prompt": "x", "max_tokens": 2},
        timeout=30,
    )
    took = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "no_upstream_available"
    assert resp.headers["retry-after"] == "1"
    assert took < 5, f"held {took:.1f}s for a model that does not scale from zero (hold_timeout_s=20)"
    # A model it does not know is still a 404.
    other = httpx.post(
        gw.url + "/v1/completions",
        headers={"authorization": f"Bearer {keys.alice}"},
        json={"model": "no-such-model", "prompt": "x"},
        timeout=30,
    )
    assert other.status_code == 404
