"""The SSE pass-through: usage read from the stream, stripped unless asked for, split reads rejoined."""

from __future__ import annotations

import orjson
import pytest

from app.gateway.keyfile import ApiKey
from app.gateway.proxy import ProxyPlan, ProxyResponse


def _response(client_wants_usage: bool) -> ProxyResponse:
    plan = ProxyPlan(
        "/v1/chat/completions",
        "m",
        "m",
        ApiKey("k", "0" * 64),
        b"{}",
        True,
        client_wants_usage,
        None,
        0,
        None,
        "rid",
        0.0,
    )
    return ProxyResponse(ctx=None, plan=plan)  # type: ignore[arg-type]


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


TOKENS = [_event({"choices": [{"index": 0, "delta": {"content": f" t{i}"}}], "usage": None}) for i in range(3)]
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
STREAM = b"".join(TOKENS) + USAGE + b"data: [DONE]\n\n"


@pytest.mark.parametrize("cut", [1, 7, 50, len(STREAM) - len(USAGE) - 16, len(STREAM) - 20, len(STREAM) - 1])
@pytest.mark.parametrize("wants", [True, False])
def test_any_split_gives_the_same_events(cut, wants):
    resp = _response(wants)
    out = resp._filter(STREAM[:cut]) + resp._filter(STREAM[cut:]) + resp._tail
    expected = STREAM if wants else STREAM.replace(USAGE, b"")
    assert out == expected
    assert resp.usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_token_events_pass_through_untouched_and_at_once():
    resp = _response(False)
    assert resp._filter(TOKENS[0]) == TOKENS[0]
    assert resp._filter(TOKENS[1][:10]) == b""  # half an event waits for the rest
    assert resp._filter(TOKENS[1][10:]) == TOKENS[1]
