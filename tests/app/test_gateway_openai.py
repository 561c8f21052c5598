"""The real openai client through the gateway to simulator replicas."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_testkit import eventually, metric_sum, scrape


@pytest.fixture(scope="module")
def client(gateway, keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys.alice, max_retries=0, timeout=30)


def test_models_lists_what_replicas_serve(client):
    assert [m.id for m in client.models.list()] == ["sim-model"]


def test_chat_completion(client):
    out = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert out.choices[0].message.role == "assistant"
    assert len(out.choices[0].message.content.split()) == 4
    assert out.usage.completion_tokens == 4


def test_chat_stream_hides_usage_the_client_did_not_ask_for(client):
    chunks = list(
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
    )
    assert all(c.choices for c in chunks), "the usage chunk the gateway asked for leaked to the client"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == "the quick brown fox jumps over".split()
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_stream_keeps_usage_when_asked(client):
    chunks = list(
        client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3


def test_text_completions_both_ways(client):
    out = client.completions.create(model="sim-model", prompt="Say", max_tokens=2)
    assert out.choices[0].text.split() == ["the", "quick"]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="sim-model", prompt="Say", max_tokens=2, stream=True)
        if c.choices
    )
    assert streamed.split() == ["the", "quick"]


def test_stream_headers_disable_proxy_buffering(gateway, keys):
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 2}
    headers = {"authorization": f"Bearer {keys.alice}", "x-request-id": "trace-abc.123"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-request-id"] == "trace-abc.123"
        assert r.read().rstrip().endswith(b"data: [DONE]")


def test_requests_and_tokens_are_counted(gateway, client):
    before = scrape(gateway.metrics_url)
    client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "a b c"}], max_tokens=7)
    list(
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "a b c"}], max_tokens=5, stream=True
        )
    )

    def counted():
        after = scrape(gateway.metrics_url)
        delta = lambda name, **kw: metric_sum(after, name, **kw) - metric_sum(before, name, **kw)  # noqa: E731
        assert delta("gateway_requests_total", key_id="alice", model="sim-model", status="200") == 2
        assert delta("gateway_completion_tokens_total", key_id="alice") == 12
        assert delta("gateway_prompt_tokens_total", key_id="alice") > 0
        assert delta("gateway_time_to_first_token_seconds_count", stream="true") == 1
        assert metric_sum(after, "gateway_requests_waiting", model="sim-model") == 0
        assert metric_sum(after, "gateway_upstream_healthy") == 2
        return True

    eventually(counted, timeout=5)
