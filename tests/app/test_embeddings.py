"""/v1/embeddings: the real openai client through the gateway to simulator replicas, and the
simulator's vLLM pooling answer itself."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import openai
import pytest
from gateway_testkit import FAST, Switchboard, eventually, gateway_env, metric_sum, scrape

from app.devstack import start_gateway, start_simulator
from app.simulator.api import EMBEDDING_DIM

MODEL = "sim-model"


@pytest.fixture(scope="module")
def client(gateway, keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys.alice, max_retries=0, timeout=30)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_one_string(client):
    out = client.embeddings.create(model=MODEL, input="the quick brown fox", encoding_format="float")
    assert out.object == "list" and out.model == MODEL
    assert [d.index for d in out.data] == [0] and out.data[0].object == "embedding"
    assert len(out.data[0].embedding) == EMBEDDING_DIM
    assert _norm(out.data[0].embedding) == pytest.approx(1.0)
    assert out.usage.prompt_tokens == out.usage.total_tokens == 4


def test_several_strings_one_vector_each_and_the_same_input_the_same_vector(client):
    out = client.embeddings.create(model=MODEL, input=["a b", "c", "a b"], encoding_format="float")
    vectors = [d.embedding for d in sorted(out.data, key=lambda d: d.index)]
    assert len(vectors) == 3
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]  # control: another input, another vector
    assert out.usage.prompt_tokens == 5


def test_token_ids_and_dimensions(client):
    out = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4]], dimensions=8, encoding_format="float")
    assert [len(d.embedding) for d in out.data] == [8, 8]
    assert all(_norm(d.embedding) == pytest.approx(1.0) for d in out.data)
    assert out.usage.prompt_tokens == 4


def test_base64_is_decoded_by_the_client(client, gateway, keys):
    floats = client.embeddings.create(model=MODEL, input="hello there", encoding_format="float").data[0].embedding
    # The client asks for base64 by default and decodes it to floats.
    decoded = client.embeddings.create(model=MODEL, input="hello there").data[0].embedding
    assert decoded == pytest.approx(floats, abs=1e-6)
    raw = httpx.post(
        gateway.url + "/v1/embeddings",
        json={"model": MODEL, "input": "hello there", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {keys.alice}"},
        timeout=10,
    ).json()
    text = raw["data"][0]["embedding"]
    assert isinstance(text, str)  # control: on the wire it is base64, float32 little-endian
    values = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(text))
    assert list(values) == pytest.approx(floats, abs=1e-6)


def test_refusals(gateway, keys):
    url = gateway.url + "/v1/embeddings"
    body = {"model": MODEL, "input": "hi"}

    def post(json: object, key: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(url, json=json, headers=headers, timeout=10)

    assert post(body, None).status_code == 401
    forbidden = post(body, keys.other_models)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "model_not_allowed"
    for bad in (5, [1.5], [], [["a"]], {"text": "hi"}):
        r = post({"model": MODEL, "input": bad}, keys.alice)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == "input", r.json()
    missing = post({"model": MODEL}, keys.alice)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"
    unknown = post({"model": "no-such-model", "input": "hi"}, keys.alice)
    assert unknown.status_code == 404
    # The replica's own 400 (a field the gateway passes through) reaches the client.
    too_wide = post({**body, "dimensions": EMBEDDING_DIM + 1}, keys.alice)
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "dimensions"
    assert post(body, keys.alice).status_code == 200  # control: the same body, a good key


def test_openai_client_errors(gateway, keys, client):
    anonymous = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        anonymous.embeddings.create(model=MODEL, input="hi")
    limited = openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys.other_models, max_retries=0, timeout=10)
    with pytest.raises(openai.PermissionDeniedError):
        limited.embeddings.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=3.5)  # type: ignore[arg-type]
    assert err.value.param == "input"


def test_requests_and_prompt_tokens_are_counted(gateway, client):
    before = scrape(gateway.metrics_url)
    out = client.embeddings.create(model=MODEL, input=["one two three", "four five"], encoding_format="float")
    assert out.usage.prompt_tokens == 5

    def counted():
        after = scrape(gateway.metrics_url)
        delta = lambda name, **kw: metric_sum(after, name, **kw) - metric_sum(before, name, **kw)  # noqa: E731
        assert delta("gateway_requests_total", key_id="alice", endpoint="/v1/embeddings", status="200") == 1
        assert delta("gateway_requests_total", key_id="alice", endpoint="/v1/completions") == 0  # control
        assert delta("gateway_prompt_tokens_total", key_id="alice") == out.usage.prompt_tokens
        assert delta("gateway_completion_tokens_total", key_id="alice") == 0
        return True

    eventually(counted, timeout=5)


def test_openapi_describes_embeddings(gateway):
    doc = httpx.get(gateway.metrics_url + "/openapi.json", timeout=5).json()
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/EmbeddingRequest")


def test_simulator_answers_as_vllm(replicas):
    url = replicas[0].url + "/v1/embeddings"
    r = httpx.post(url, json={"model": MODEL, "input": ["x y", "z"], "dimensions": 4}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("embd-") and body["model"] == MODEL
    assert [(d["index"], d["object"], len(d["embedding"])) for d in body["data"]] == [
        (0, "embedding", 4),
        (1, "embedding", 4),
    ]
    assert body["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 3,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }
    assert httpx.post(url, json={"model": "other", "input": "x"}, timeout=10).status_code == 404
    bad = httpx.post(url, json={"model": MODEL, "input": "x", "encoding_format": "hex"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "encoding_format"


def test_kv_routing_does_not_tokenize_an_embeddings_body(log_dir, procs, keys, redis_server):
    """Where a replica reports its cache, a completion is tokenized for routing (the control);
    an embeddings body is not, even one carrying a `prompt` field beside its `input`."""
    sim = procs(start_simulator(log_dir, kv_events=True, **FAST))
    recorder = Switchboard(sim.url)  # keeps what the gateway sent the replica
    try:
        endpoints = f"{recorder.url} {sim.kv_events[0]} {sim.kv_events[1]}"
        gw = procs(
            start_gateway(log_dir, gateway_env(keys, redis_server.url, [recorder.url], kv_event_endpoints=endpoints))
        )
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=keys.alice, max_retries=0, timeout=30)
        words = " ".join(f"w{i}" for i in range(200))
        client.completions.create(model=MODEL, prompt=words, max_tokens=1)
        eventually(lambda: metric_sum(scrape(gw.metrics_url), "gateway_upstream_kv_blocks") > 0, timeout=10)
        client.completions.create(model=MODEL, prompt=words, max_tokens=1)
        assert b"POST /tokenize" in recorder.sent  # control: a completion is tokenized once blocks are known
        recorder.sent.clear()
        out = client.embeddings.create(model=MODEL, input=words, extra_body={"prompt": words}, encoding_format="float")
        assert out.usage.prompt_tokens == 200
        assert b"POST /v1/embeddings" in recorder.sent
        assert b"POST /tokenize" not in recorder.sent
    finally:
        recorder.close()
