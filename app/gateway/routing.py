"""Replica choice: the replica with the shortest predicted time to first token, given what its
KV cache holds (from vLLM's KV events, kv_events.py), or for a prompt cached nowhere the one
holding the fewest blocks; else prefix affinity by consistent hashing; all with bounded load;
else least outstanding.

Where replicas publish KV events and the prompt's token ids are known, each candidate's cached
prefix is read from its block index. Its predicted TTFT is the prompt tokens it must prefill
before this request's first token (those already queued on it, and this prompt's uncached
ones) over the prefill rate: a replica holding the prefix wins unless its queue costs more than
the prefill it saves, its uncached tokens weighing double in the choice (COPY_WEIGHT). Replicas
past the load bound (its own, looser factor: the prediction already weighs their queues) are
not chosen while one within it is. A prompt no replica holds any of goes to the replica with
the least prefill queued and then the fewest blocks, which spreads prefixes over the caches by
size. Without token ids (no replica publishes events, or content
the index cannot match), the hashing below decides.

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
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Candidate(Protocol):
    url: str

    def load(self) -> float: ...

    def pressure(self) -> float: ...

    def cached(self, token_ids: Sequence[int]) -> int: ...  # prompt tokens its prefix cache would hit

    def backlog_tokens(self, prompt_tokens: int) -> float: ...  # prompt tokens queued ahead of a new request

    def footprint(self) -> int: ...  # KV cache blocks it holds, as its events say (0 without events)


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Decision(Generic[C]):
    replica: C | None
    reason: str  # kv_cache, kv_balance, affinity, least_loaded, or none
    ttft_s: float  # the predicted time to first token on it; 0 with no replica
    uncached: int  # the prompt tokens it would prefill, which its backlog then holds until the first byte


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


# How much more a replica's uncached prompt tokens weigh than its queue, in choosing among
# replicas by what they cache. Prefilling a prefix a replica lacks copies it into a full cache,
# which evicts about as many tokens of other prefixes that a later request then prefills again:
# at 1 (the request's own TTFT alone) a holder with a long queue gave its prefix away, and the
# copies cost the fleet 8 points of hit rate on bench/prefix.py (85% against 93% at 2).
COPY_WEIGHT = 2.0


class Router:
    def __init__(self, load_factor: float, prefill_tokens_per_s: float = 10_000.0, kv_load_factor: float = 3.0) -> None:
        self._load_factor = load_factor
        self._kv_load_factor = kv_load_factor
        self._prefill_rate = prefill_tokens_per_s
        self._ring = HashRing(())
        self._tiebreak = itertools.count()

    def update_members(self, urls: Iterable[str]) -> None:
        urls = frozenset(urls)
        if urls != self._ring.members:
            self._ring = HashRing(urls)

    def predicted_ttft(self, c: Candidate, prompt_tokens: int, cached: int) -> float:
        return (c.backlog_tokens(prompt_tokens) + max(0, prompt_tokens - cached)) / self._prefill_rate

    @staticmethod
    def _cost(c: Candidate, prompt_tokens: int, cached: int) -> float:
        return c.backlog_tokens(prompt_tokens) + COPY_WEIGHT * max(0, prompt_tokens - cached)

    def choose(self, candidates: Sequence[C], prefix: str | None, token_ids: Sequence[int] | None = None) -> C | None:
        return self.decide(candidates, prefix, token_ids).replica

    def decide(
        self,
        candidates: Sequence[C],
        prefix: str | None,
        token_ids: Sequence[int] | None = None,
        prompt_tokens: int | None = None,
    ) -> Decision[C]:
        """The replica, why, and its predicted TTFT. `prompt_tokens` defaults to len(token_ids)."""
        n_prompt = len(token_ids) if token_ids else (prompt_tokens or 0)
        if not candidates:
            return Decision(None, "none", 0.0, 0)
        if len(candidates) > 1:
            total = sum(c.load() for c in candidates) + 1
            bound = math.ceil(self._load_factor * total / len(candidates))
            kv_bound = math.ceil(self._kv_load_factor * total / len(candidates))
            if token_ids:
                hits = [c.cached(token_ids) for c in candidates]
                if max(hits) > 0:
                    scored = [
                        (c.load() + 1 > kv_bound, self._cost(c, n_prompt, h), -h, c.load(), i)
                        for i, (c, h) in enumerate(zip(candidates, hits, strict=True))
                    ]
                    over, _, _, _, i = min(scored)
                    ttft = self.predicted_ttft(candidates[i], n_prompt, hits[i])
                    if not over:
                        # A replica holding none of it wins when the holders' queues cost more.
                        reason = "kv_cache" if hits[i] else "least_loaded"
                        return Decision(candidates[i], reason, ttft, max(0, n_prompt - hits[i]))
                else:
                    # Held nowhere: a new prefix goes where no prefill waits and the fewest blocks
                    # are cached, so that prefixes spread over the fleet's caches by their size,
                    # not by where a hash happens to put them (a ring leaves one replica a third more).
                    within = [c for c in candidates if c.load() + 1 <= kv_bound]
                    if within:
                        c = min(
                            self._rotated(within),
                            key=lambda c: (c.backlog_tokens(n_prompt), c.footprint(), c.load()),
                        )
                        return self._decision(c, "kv_balance", n_prompt, token_ids)
            if prefix:
                by_url = {c.url: c for c in candidates}
                for url in self._ring.walk(stable_hash(prefix)):
                    on_ring = by_url.get(url)
                    if on_ring is not None and on_ring.load() + 1 <= bound:
                        return self._decision(on_ring, "affinity", n_prompt, token_ids)
        return self._decision(self.least_loaded(candidates), "least_loaded", n_prompt, token_ids)

    def _decision(self, c: C, reason: str, n_prompt: int, token_ids: Sequence[int] | None) -> Decision[C]:
        cached = c.cached(token_ids) if token_ids else 0
        return Decision(c, reason, self.predicted_ttft(c, n_prompt, cached), max(0, n_prompt - cached))

    def least_loaded(self, candidates: Sequence[C]) -> C:
        return min(self._rotated(candidates), key=lambda c: (c.load(), c.pressure()))

    def _rotated(self, candidates: Sequence[C]) -> list[C]:
        # Rotating the start spreads ties (an idle fleet) instead of always picking the first replica.
        n = len(candidates)
        offset = next(self._tiebreak) % n
        return [candidates[(offset + i) % n] for i in range(n)]
