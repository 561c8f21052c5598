"""What an abandoned request is charged without vLLM's usage (app/gateway/accounting.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.gateway.accounting import DecodeRates, prompt_tokens_estimate
from app.gateway.schemas import ChatCompletionRequest


def test_nothing_is_guessed_before_a_rate_was_measured():
    assert DecodeRates().estimate("m", 10.0, None) == 0


def test_short_answers_do_not_set_the_rate():
    rates = DecodeRates()
    rates.observe("m", 3, 1.0)  # 3 tokens say more about prefill than decoding
    rates.observe("m", 100, 0.01)
    assert rates.rate("m") is None


@given(
    tokens=st.integers(8, 10_000),
    seconds=st.floats(0.05, 600),
    ran=st.floats(0, 600),
    cap=st.none() | st.integers(1, 100_000),
)
def test_estimate_is_rate_times_time_within_max_tokens(tokens, seconds, ran, cap):
    rates = DecodeRates()
    rates.observe("m", tokens, seconds)
    got = rates.estimate("m", ran, cap)
    assert got == min(int(tokens / seconds * ran), cap if cap is not None else got + 1)
    assert rates.estimate("other", ran, cap) == 0  # per model


def test_text_content_parts_count_toward_the_prompt():
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a" * 40}, {"type": "image_url", "image_url": {}}],
                },
                {"role": "user", "content": "b" * 8},
            ],
        }
    )
    assert prompt_tokens_estimate(body.prompt_chars()) == 12
