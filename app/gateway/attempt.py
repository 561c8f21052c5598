"""One try of a request on one replica, or on a hosted provider, as the retry loop sees it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .upstreams import Upstream


class Outcome(Enum):
    DONE = "done"  # the client has its answer, or the part that came and an error event
    RETRY = "retry"  # nothing reached the client: another replica may try


@dataclass(frozen=True, slots=True)
class Failure:
    """An upstream's 5xx answer, passed on to the client when no other attempt does better."""

    status: int
    content_type: bytes
    body: bytes


@dataclass(slots=True)
class Attempt:
    """Filled in as the attempt goes, so that one cut short by a cancellation still says how far it got."""

    label: str  # the replica's URL, or hosted:<provider>: the `upstream` of metrics and logs
    replica: Upstream | None  # None for a hosted provider
    started: float  # when the request went upstream
    uncached: int = 0  # prompt tokens the replica was predicted to prefill, held in its backlog
    prefilled: bool = False  # out of the replica's backlog: its first byte came, or it ended
    status: int | None = None  # the upstream's HTTP status, once it answered
    first_byte_at: float | None = None  # when the first byte of its answer was ready for the client
    result: str | None = None  # the `outcome` label of gateway_upstream_requests, once the upstream is judged
    error: str | None = None  # the type of the transport error that ended it
    failure: Failure | None = None
    outcome: Outcome | None = None  # None while under way, or when an exception ended it

    @property
    def verdict(self) -> bool | None:
        """For the replica's circuit: whether the upstream did its part; None when it was not judged."""
        return None if self.result is None else self.result == "ok"

    @property
    def reusable(self) -> bool:
        """Whether the upstream connection may go back to the pool: its answer was read to the end."""
        return self.outcome is Outcome.DONE and self.result == "ok"
