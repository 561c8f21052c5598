"""The simulator held to real vLLM: the same requests to both, the same shapes.

Compared: the keys of every JSON object in an answer (values differ: the model differs), the
SSE framing of streams and their usage chunk, error bodies, and the names and label names of
the metrics the platform reads (vLLM's series also carry `engine`).
"""

from __future__ import annotations

import httpx
import orjson
import pytest
from gateway_testkit import platform_vllm_names

from app.devstack import TINY_MODEL_NAME

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
COMPLETION = {"prompt": "hello", "max_tokens": 4}


@pytest.fixture(scope="module")
def pair(engines, replicas):
    """(base URL, model) of a real vLLM replica and of a simulator replica."""
    return {"vllm": (engines[0].url, TINY_MODEL_NAME), "simulator": (replicas[0].url, "sim-model")}


def _shape(value: object) -> object:
    """The structure of a JSON value: dict keys (recursively), list element shapes, leaf types."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if value is None:
        return None
    return type(value).__name__


def _keys(value: object, prefix: str = "") -> set[str]:
    """Every key path in a JSON value, e.g. 'choices[].message.content'."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(prefix + k)
            out |= _keys(v, prefix + k + ".")
    elif isinstance(value, list) and value:
        out |= _keys(value[0], prefix.rstrip(".") + "[].")
    return out


def _post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=60)


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    return [e for e in raw.split(b"\n\n") if e]


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_answers_have_the_same_keys(pair, path, body):
    got = {name: _post(base, path, {**body, "model": model}) for name, (base, model) in pair.items()}
    assert {name: r.status_code for name, r in got.items()} == {"vllm": 200, "simulator": 200}
    keys = {name: _keys(r.json()) for name, r in got.items()}
    assert keys["simulator"] == keys["vllm"], {
        "only in vLLM": sorted(keys["vllm"] - keys["simulator"]),
        "only in the simulator": sorted(keys["simulator"] - keys["vllm"]),
    }


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_streams_have_the_same_framing_and_usage_chunk(pair, path, body):
    shapes = {}
    for name, (base, model) in pair.items():
        req = {**body, "model": model, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", base + path, json=req, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _events(r.read())
        assert events[-1] == b"data: [DONE]"
        assert all(e.startswith(b"data: ") for e in events)
        chunks = [orjson.loads(e[6:]) for e in events[:-1]]
        usage = chunks[-1]
        assert usage["choices"] == [] and set(usage["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert all(c.get("usage") is None for c in chunks[:-1])
        shapes[name] = {"token": _keys(chunks[1]), "usage": _keys(usage)}
    assert shapes["simulator"] == shapes["vllm"]


TOKENIZE_CHAT = {"messages": CHAT["messages"], "add_generation_prompt": True}


@pytest.mark.parametrize(
    "body",
    [TOKENIZE_CHAT, {"prompt": "hello there"}, {**TOKENIZE_CHAT, "return_token_strs": True}],
    ids=["chat", "prompt", "token-strs"],
)
def test_tokenize_answers_have_the_same_shape(pair, body):
    """/tokenize, which the gateway asks for a prompt's token ids to route by the KV cache."""
    got = {name: _post(base, "/tokenize", {**body, "model": model}) for name, (base, model) in pair.items()}
    assert {name: r.status_code for name, r in got.items()} == {"vllm": 200, "simulator": 200}
    shapes = {name: _shape(r.json()) for name, r in got.items()}
    assert shapes["simulator"] == shapes["vllm"]
    assert all(r.json()["count"] == len(r.json()["tokens"]) for r in got.values())


@pytest.mark.parametrize("bad", [{"max_tokens": 10**9}, {"model": "no-such-model"}])
def test_errors_have_the_same_status_and_shape(pair, bad):
    got = {}
    for name, (base, model) in pair.items():
        r = _post(base, "/v1/chat/completions", {**CHAT, "model": model, **bad})
        got[name] = (r.status_code, _shape(r.json()))
    assert got["simulator"] == got["vllm"]


@pytest.mark.parametrize(
    "bad",
    [{"model": "no-such-model", "prompt": "x"}, {**TOKENIZE_CHAT, "continue_final_message": True}],
    ids=["model", "two-endings"],
)
def test_tokenize_errors_have_the_same_status_and_shape(pair, bad):
    got = {}
    for name, (base, model) in pair.items():
        r = _post(base, "/tokenize", {"model": model, **bad})
        got[name] = (r.status_code, _shape(r.json()))
    assert got["simulator"] == got["vllm"]


def _label_names(base: str) -> dict[str, set[str]]:
    text = httpx.get(base + "/metrics", timeout=10).text
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name, _, rest = line.partition("{")
            labels = {part.split("=", 1)[0] for part in rest.rsplit("}", 1)[0].split(",") if "=" in part}
            out.setdefault(name.split(" ", 1)[0], set()).update(labels)
    return out


def test_metrics_the_platform_reads_have_the_same_names_and_labels(pair):
    vllm, sim = (_label_names(pair[n][0]) for n in ("vllm", "simulator"))
    for name in sorted(platform_vllm_names()):
        assert name in sim, f"the simulator does not publish {name}"
        assert sim[name] == vllm[name], f"{name}: simulator {sorted(sim[name])}, vLLM {sorted(vllm[name])}"
