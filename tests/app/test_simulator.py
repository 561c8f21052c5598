"""The simulator on its own: OpenAI wire format, vLLM metric names, prefix cache timing."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from gateway_testkit import metric_sum, scrape

VLLM_METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
]


@pytest.fixture(scope="module")
def sim(replicas):
    return replicas[0]


def test_chat_stream_with_usage(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    chunks = list(
        client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_completion_without_max_tokens_stops_naturally(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    out = client.completions.create(model="sim-model", prompt="hello world")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 2 and out.usage.completion_tokens == 16


def test_exposes_current_vllm_metric_names_with_model_label(sim):
    samples = scrape(sim.url)
    for name in VLLM_METRICS:
        assert any(k.split("{")[0] == name and 'model_name="sim-model"' in k for k in samples), name


def test_context_length_is_enforced_like_vllm(sim):
    r = httpx.post(sim.url + "/v1/completions", json={"model": "sim-model", "prompt": "x", "max_tokens": 10**6})
    assert r.status_code == 400
    assert "maximum context length" in r.json()["error"]["message"]


def test_prefix_cache_shortens_time_to_first_token(log_dir, procs):
    from app.devstack import start_simulator

    sim = procs(start_simulator(log_dir, ttft_ms=5, prefill_ms_per_token=2, itl_ms=1))
    prompt = " ".join(f"w{i}" for i in range(160))  # 160 uncached tokens: ~320 ms of prefill

    def ttft(text: str) -> float:
        start = time.perf_counter()
        with httpx.stream(
            "POST",
            sim.url + "/v1/completions",
            json={"model": "sim-model", "prompt": text, "max_tokens": 2, "stream": True},
        ) as r:
            for _ in r.iter_bytes():
                return time.perf_counter() - start
        raise AssertionError("no bytes")

    cold = ttft(prompt)
    warm = ttft(prompt + " and a new ending")
    assert cold > 0.25
    assert warm < cold / 3
    samples = scrape(sim.url)
    assert metric_sum(samples, "vllm:prefix_cache_hits_total") >= 160


def test_a_chat_stream_begins_with_its_first_token(log_dir, procs):
    """vLLM writes a chat stream's role chunk with the first token, after the prefill; the
    first body byte is the time to first token, as clients and the benches measure it."""
    from app.devstack import start_simulator

    sim = procs(start_simulator(log_dir, ttft_ms=300, itl_ms=1))
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body) as r:
        first = next(r.iter_raw())
        elapsed = time.perf_counter() - start
    assert b'"role":"assistant"' in first
    assert elapsed >= 0.3


@pytest.mark.parametrize("queue", [True, False])
def test_prefills_take_turns_with_a_prefill_queue(log_dir, procs, queue):
    """Two uncached 100-token prompts at once, 2 ms a token: with the queue the second's first
    token waits for the first's prefill (~400 ms); without it both take ~200 ms."""
    from app.devstack import start_simulator

    sim = procs(start_simulator(log_dir, ttft_ms=1, prefill_ms_per_token=2, itl_ms=1, prefill_queue=queue))

    async def ttfts() -> list[float]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(tag: str) -> float:
                start = time.perf_counter()
                body = {"model": "sim-model", "prompt": " ".join(f"{tag}{i}" for i in range(100)), "max_tokens": 1}
                async with client.stream("POST", sim.url + "/v1/completions", json={**body, "stream": True}) as r:
                    async for _ in r.aiter_raw():
                        return time.perf_counter() - start
                raise AssertionError("no bytes")

            return sorted(await asyncio.gather(one(f"a{queue}"), one(f"b{queue}")))

    loop = asyncio.new_event_loop()
    try:
        fast, slow = loop.run_until_complete(ttfts())
    finally:
        loop.close()
    assert 0.19 < fast < 0.35
    assert (slow > 0.38) if queue else (slow < 0.35)
