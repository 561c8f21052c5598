"""The SSE pass-through: usage read from the stream, stripped unless asked for, split reads rejoined."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.gateway.stream_filter import StreamFilter


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


TOKENS = [_event({"choices": [{"index": 0, "delta": {"content": f" t{i}"}}], "usage": None}) for i in range(3)]
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
STREAM = b"".join(TOKENS) + USAGE + b"data: [DONE]\n\n"
COUNTS = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def _through(stream: StreamFilter, pieces: list[bytes]) -> bytes:
    return b"".join(stream.feed(piece) for piece in pieces) + stream.finish()


@pytest.mark.parametrize("cut", [1, 7, 50, len(STREAM) - len(USAGE) - 16, len(STREAM) - 20, len(STREAM) - 1])
@pytest.mark.parametrize("wants", [True, False])
def test_any_split_gives_the_same_events(cut, wants):
    stream = StreamFilter(keep_usage=wants)
    out = stream.feed(STREAM[:cut]) + stream.feed(STREAM[cut:]) + stream.finish()
    expected = STREAM if wants else STREAM.replace(USAGE, b"")
    assert out == expected
    assert stream.usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_token_events_pass_through_untouched_and_at_once():
    stream = StreamFilter(keep_usage=False)
    assert stream.feed(TOKENS[0]) == TOKENS[0]
    assert stream.feed(TOKENS[1][:10]) == b""  # half an event waits for the rest
    assert stream.feed(TOKENS[1][10:]) == TOKENS[1]


@pytest.mark.parametrize("wants", [True, False])
def test_the_usage_event_cut_at_every_byte_is_read_and_kept_only_when_asked(wants):
    for cut in range(len(USAGE) + 1):
        stream = StreamFilter(keep_usage=wants)
        first, second = stream.feed(USAGE[:cut]), stream.feed(USAGE[cut:])
        assert first == (USAGE if wants and cut == len(USAGE) else b""), cut
        assert first + second + stream.finish() == (USAGE if wants else b""), cut
        assert stream.usage == COUNTS, cut


@pytest.mark.parametrize("wants", [True, False])
def test_the_whole_stream_cut_at_every_byte_gives_the_same_answer(wants):
    expected = STREAM if wants else STREAM.replace(USAGE, b"")
    for cut in range(len(STREAM) + 1):
        stream = StreamFilter(keep_usage=wants)
        assert _through(stream, [STREAM[:cut], STREAM[cut:]]) == expected, cut
        assert stream.usage == COUNTS and stream.done and stream.events == 5, cut


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12), wants=st.booleans())
def test_the_stream_in_any_number_of_reads_gives_the_same_answer(cuts, wants):
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    stream = StreamFilter(keep_usage=wants)
    outputs = [stream.feed(piece) for piece in pieces]
    assert all(out.endswith(b"\n\n") for out in outputs if out)  # only whole events go on
    assert b"".join(outputs) + stream.finish() == (STREAM if wants else STREAM.replace(USAGE, b""))
    assert stream.usage == COUNTS and stream.done and stream.events == 5


def test_usage_on_a_token_event_is_read_and_the_event_kept():
    # With continuous usage stats vLLM puts usage on every event; only the usage-only one is the gateway's.
    event = _event({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": COUNTS})
    stream = StreamFilter(keep_usage=False)
    assert stream.feed(event) == event
    assert stream.usage == COUNTS


def test_nothing_is_read_from_a_stream_without_usage():
    stream = StreamFilter(keep_usage=False)
    body = b"".join(TOKENS)
    assert _through(stream, [body]) == body
    assert stream.usage is None and not stream.done and stream.events == 3


def test_an_unfinished_last_event_is_passed_on_at_the_end():
    stream = StreamFilter(keep_usage=False)
    assert stream.feed(TOKENS[0] + b"data: {") == TOKENS[0]
    assert stream.finish() == b"data: {"
    assert stream.finish() == b""


def test_a_long_read_with_no_event_end_is_not_held_back():
    blob = b"x" * ((1 << 16) + 1)
    stream = StreamFilter(keep_usage=False)
    assert stream.feed(blob) == blob
    assert stream.finish() == b""


def test_usage_is_read_from_a_whole_json_answer():
    stream = StreamFilter(keep_usage=False)
    stream.read_body(orjson.dumps({"id": "x", "choices": [{"index": 0}], "usage": COUNTS}))
    assert stream.usage == COUNTS


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"usage": null}', b'{"usage": 7}', b"{}"])
def test_a_whole_answer_without_a_usage_object_reads_none(body):
    stream = StreamFilter(keep_usage=False)
    stream.read_body(body)
    assert stream.usage is None
