"""A per-replica circuit breaker: consecutive failures open it, one trial request closes it."""

from __future__ import annotations

import time
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown_s: float, max_cooldown_s: float = 60.0) -> None:
        self._threshold = failures_to_open
        self._base_cooldown = cooldown_s
        self._max_cooldown = max(max_cooldown_s, cooldown_s)
        self._cooldown = cooldown_s
        self.state = State.CLOSED
        self.failures = 0
        self._open_until = 0.0
        self._trial_out = False

    def available(self, now: float | None = None) -> bool:
        """Whether a request may be sent now, without reserving the half-open trial."""
        if self.state is State.CLOSED:
            return True
        now = time.monotonic() if now is None else now
        if self.state is State.OPEN:
            return now >= self._open_until
        return not self._trial_out

    def acquire(self, now: float | None = None) -> bool:
        """Reserves the right to send; in half-open only one trial request is out at a time."""
        if self.state is State.CLOSED:
            return True
        now = time.monotonic() if now is None else now
        if self.state is State.OPEN:
            if now < self._open_until:
                return False
            self.state = State.HALF_OPEN
            self._trial_out = False
        if self._trial_out:
            return False
        self._trial_out = True
        return True

    def success(self) -> None:
        self.state = State.CLOSED
        self.failures = 0
        self._cooldown = self._base_cooldown
        self._trial_out = False

    def failure(self, now: float | None = None) -> bool:
        """Records a failure; returns True when this failure opened the circuit."""
        now = time.monotonic() if now is None else now
        self.failures += 1
        if self.state is State.HALF_OPEN or (self.state is State.CLOSED and self.failures >= self._threshold):
            if self.state is State.HALF_OPEN:
                # Still failing after a rest: rest longer before the next trial.
                self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self.state = State.OPEN
            self._open_until = now + self._cooldown
            self._trial_out = False
            return True
        return False

    def trip(self, now: float | None = None) -> bool:
        """Opens the circuit now (the replica was found hung); returns whether it was not open already."""
        if self.state is State.OPEN:
            return False
        now = time.monotonic() if now is None else now
        self.state = State.OPEN
        self._open_until = now + self._cooldown
        self._trial_out = False
        return True

    def release_trial(self) -> None:
        """A trial that ended without a verdict (the client left) frees the slot."""
        self._trial_out = False
