"""What a request is charged when vLLM never reported its usage: the client left before the answer.

vLLM stops an aborted request but reports nothing of what it did, and a non-streaming request
left early has no events to count. Charging it nothing would let a caller dodge its token limit
by hanging up; so it is charged its prompt (about 4 characters a token, without tokenizing) and
the output tokens the replica had time to make: the time it ran times the model's decode rate as
measured on this gateway's answered requests, at most the request's max_tokens.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4
# Too few tokens or too short a time say more about prefill and the network than about decoding.
_MIN_TOKENS = 8
_MIN_SECONDS = 0.05
_WEIGHT = 0.2  # of each new reading in the moving average


def prompt_tokens_estimate(prompt_chars: int) -> int:
    return prompt_chars // CHARS_PER_TOKEN


class DecodeRates:
    """Output tokens per second per model, an exponential moving average over answered requests."""

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}

    def observe(self, model: str, tokens: int, seconds: float) -> None:
        if tokens < _MIN_TOKENS or seconds < _MIN_SECONDS:
            return
        rate = tokens / seconds
        old = self._rates.get(model)
        self._rates[model] = rate if old is None else old + _WEIGHT * (rate - old)

    def rate(self, model: str) -> float | None:
        return self._rates.get(model)

    def estimate(self, model: str, seconds: float, cap: int | None) -> int:
        """Output tokens a replica could have made in `seconds`; 0 before any answer was measured."""
        rate = self._rates.get(model)
        tokens = int(rate * max(seconds, 0.0)) if rate is not None else 0
        return min(tokens, cap) if cap is not None else tokens
