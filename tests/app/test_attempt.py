"""An attempt's value: what the replica's circuit and the connection pool are told from it."""

from __future__ import annotations

import pytest

from app.gateway.attempt import Attempt, Outcome


@pytest.mark.parametrize(
    ("result", "outcome", "verdict", "reusable"),
    [
        (None, None, None, False),  # cut short before the upstream was judged (the client left)
        ("ok", None, True, False),  # judged, then cut short while the answer went out
        ("ok", Outcome.DONE, True, True),
        ("connect_error", Outcome.RETRY, False, False),
        ("http_5xx", Outcome.RETRY, False, False),
        ("broken_stream", Outcome.DONE, False, False),
        ("hung", Outcome.DONE, False, False),
    ],
)
def test_verdict_and_reuse_follow_the_result_and_outcome(result, outcome, verdict, reusable):
    attempt = Attempt("http://r1:8000", None, 0.0, result=result, outcome=outcome)
    assert attempt.verdict is verdict
    assert attempt.reusable is reusable
