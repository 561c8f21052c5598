"""Replica choice: the replica whose KV cache holds the most of the prompt (from vLLM's KV
events, kv_events.py), else prefix affinity by consistent hashing, both with bounded load, else
least outstanding.

Where replicas publish KV events and the prompt's token ids are known, each candidate's cached
prefix is read from its block index: the one holding the most tokens wins, unless its load is
past the bound, then the next. Without a cached prefix anywhere, the hashing below decides.

A prompt's leading characters are hashed onto a ring of replicas, so requests sharing a prefix
(a system prompt, a few-shot preamble) land on the replica whose KV cache already holds it. The
bound (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads") keeps a hot
prefix from piling onto one replica: a replica is skipped along the ring once its load exceeds
`load_factor` times the mean. The hash is stable across processes, so every gateway replica and
worker maps a prefix to the same vLLM replica.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    url: str

    def load(self) -> float: ...

    def pressure(self) -> float: ...

    def cached(self, token_ids: Sequence[int]) -> int: ...  # prompt tokens its prefix cache would hit


C = TypeVar("C", bound=Candidate)


def stable_hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, urls: Iterable[str], vnodes: int = 100) -> None:
        points = sorted((stable_hash(f"{url}#{i}"), url) for url in set(urls) for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._urls = [u for _, u in points]
        self.members = frozenset(self._urls)

    def walk(self, key_hash: int) -> Iterator[str]:
        """Distinct replicas in ring order, starting at the key's position."""
        if not self._urls:
            return
        start = bisect.bisect(self._hashes, key_hash)
        seen: set[str] = set()
        n = len(self._urls)
        for i in range(n):
            url = self._urls[(start + i) % n]
            if url not in seen:
                seen.add(url)
                yield url
                if len(seen) == len(self.members):
                    return


class Router:
    def __init__(self, load_factor: float) -> None:
        self._load_factor = load_factor
        self._ring = HashRing(())
        self._tiebreak = itertools.count()

    def update_members(self, urls: Iterable[str]) -> None:
        urls = frozenset(urls)
        if urls != self._ring.members:
            self._ring = HashRing(urls)

    def choose(self, candidates: Sequence[C], prefix: str | None, token_ids: Sequence[int] | None = None) -> C | None:
        return self.decide(candidates, prefix, token_ids)[0]

    def decide(
        self, candidates: Sequence[C], prefix: str | None, token_ids: Sequence[int] | None = None
    ) -> tuple[C | None, str]:
        """The replica, and why: `kv_cache`, `affinity`, `least_loaded` (or `none`)."""
        if not candidates:
            return None, "none"
        if len(candidates) > 1:
            total = sum(c.load() for c in candidates) + 1
            bound = math.ceil(self._load_factor * total / len(candidates))
            if token_ids:
                ranked = sorted(((c.cached(token_ids), c) for c in candidates), key=lambda hc: (-hc[0], hc[1].load()))
                for hits, c in ranked:
                    if hits <= 0:
                        break
                    if c.load() + 1 <= bound:
                        return c, "kv_cache"
            if prefix:
                by_url = {c.url: c for c in candidates}
                for url in self._ring.walk(stable_hash(prefix)):
                    on_ring = by_url.get(url)
                    if on_ring is not None and on_ring.load() + 1 <= bound:
                        return on_ring, "affinity"
        return self.least_loaded(candidates), "least_loaded"

    def least_loaded(self, candidates: Sequence[C]) -> C:
        # Rotating the start spreads ties (an idle fleet) instead of always picking the first replica.
        n = len(candidates)
        offset = next(self._tiebreak) % n
        rotated = [candidates[(offset + i) % n] for i in range(n)]
        return min(rotated, key=lambda c: (c.load(), c.pressure()))
