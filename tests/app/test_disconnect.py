"""A client that goes away cancels the upstream request at once, streaming or not."""

from __future__ import annotations

import threading

import httpx
import pytest
from gateway_testkit import eventually, metric_sum, read_events, scrape

LONG = {"model": "sim-model", "max_tokens": 2000}  # 10 s of tokens at 5 ms each


def _aborted(replicas) -> float:
    return sum(metric_sum(scrape(r.url), "vllm:request_success_total", finished_reason="abort") for r in replicas)


def _running(replicas) -> float:
    return sum(metric_sum(scrape(r.url), "vllm:num_requests_running") for r in replicas)


@pytest.fixture()
def idle(replicas):
    eventually(lambda: _running(replicas) == 0, timeout=10)
    return _aborted(replicas)


def test_stream_disconnect_aborts_upstream(gateway, keys, replicas, idle):
    body = {**LONG, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    headers = {"authorization": f"Bearer {keys.alice}"}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            chunks = read_events(r, 3)  # noqa: F841  (held open until the block ends)
            assert _running(replicas) == 1
            assert _aborted(replicas) == idle
    # Leaving the block closes the connection mid-stream.
    eventually(lambda: _aborted(replicas) == idle + 1, timeout=3)
    assert _running(replicas) == 0
    eventually(lambda: metric_sum(scrape(gateway.metrics_url), "gateway_client_disconnects_total") >= 1, timeout=3)


def test_non_streaming_disconnect_aborts_upstream(gateway, keys, replicas, idle):
    body = {**LONG, "prompt": "go"}
    headers = {"authorization": f"Bearer {keys.alice}"}
    outcome: list[BaseException] = []

    def call():
        try:
            httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=0.5)
        except httpx.TimeoutException as exc:  # the client gives up and closes the connection
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(10)
    assert outcome, "the request should have timed out on the client"
    eventually(lambda: _aborted(replicas) == idle + 1, timeout=3)
    assert _running(replicas) == 0
