"""The simulated engine: a scheduler with a batch limit, a prefix cache, and token timing.

Timing follows vLLM's shape rather than its numbers: the first token costs a fixed time plus a
per-token prefill cost for the part of the prompt that is not already in the prefix cache, and
every later token costs a fixed inter-token time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .metrics import VllmMetrics
from .settings import SimulatorSettings

_VOCAB = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly "
    "hex every jolly box of bright amber pixels near the old stone bridge"
).split()


def tokenize(text: str) -> list[str]:
    """Whitespace words stand in for tokens: cheap, deterministic and prefix-stable."""
    return text.split()


class PrefixCache:
    """An LRU of prompt blocks, keyed by a hash chained over all earlier blocks, as in vLLM."""

    def __init__(self, capacity_blocks: int, block_size: int) -> None:
        self._capacity = capacity_blocks
        self._block_size = block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def block_hashes(self, tokens: Sequence[str]) -> list[int]:
        hashes: list[int] = []
        parent = 0
        full = len(tokens) - len(tokens) % self._block_size
        for start in range(0, full, self._block_size):
            parent = hash((parent, tuple(tokens[start : start + self._block_size])))
            hashes.append(parent)
        return hashes

    def lookup_and_insert(self, tokens: Sequence[str]) -> int:
        """Returns how many leading prompt tokens were cached, then caches the whole prompt."""
        hashes = self.block_hashes(tokens)
        hit_blocks = 0
        for h in hashes:
            if h not in self._blocks:
                break
            hit_blocks += 1
        if self._capacity:
            for h in hashes:
                self._blocks[h] = None
                self._blocks.move_to_end(h)
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)
        return hit_blocks * self._block_size


@dataclass(slots=True)
class Generation:
    prompt_tokens: int
    max_tokens: int
    # A request without max_tokens ends as if the model emitted its end-of-sequence token.
    natural_stop: bool = False
    completion_tokens: int = 0
    finish_reason: str | None = None


class Engine:
    def __init__(self, settings: SimulatorSettings, metrics: VllmMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.prefix_cache = PrefixCache(settings.prefix_cache_blocks, settings.block_size)
        self._slots = asyncio.Semaphore(settings.max_num_seqs)
        self._running = 0
        self._waiting = 0
        self._kv_blocks_used = 0

    def _set_kv(self, delta_blocks: int) -> None:
        self._kv_blocks_used += delta_blocks
        self.metrics.kv_usage.set(min(1.0, self._kv_blocks_used / self.settings.kv_cache_blocks))

    def token_text(self, index: int) -> str:
        return " " + _VOCAB[index % len(_VOCAB)]

    async def generate(self, prompt: list[str], gen: Generation) -> AsyncIterator[str]:
        """Yields output token texts at the simulated pace; records vLLM's metrics as it goes.

        Cancellation (a client that went away) is recorded as an aborted request, as vLLM does.
        """
        s, m = self.settings, self.metrics
        start = time.perf_counter()
        self._waiting += 1
        m.waiting.set(self._waiting)
        acquired = False
        kv_blocks = 0
        try:
            await self._slots.acquire()
            acquired = True
            self._waiting -= 1
            m.waiting.set(self._waiting)
            self._running += 1
            m.running.set(self._running)
            kv_blocks = -(-(gen.prompt_tokens + gen.max_tokens) // s.block_size)
            self._set_kv(kv_blocks)

            cached = self.prefix_cache.lookup_and_insert(prompt)
            m.prefix_queries.inc(len(prompt))
            m.prefix_hits.inc(cached)
            m.prompt_tokens.inc(gen.prompt_tokens)
            prefill_s = (s.ttft_ms + s.prefill_ms_per_token * max(0, gen.prompt_tokens - cached)) / 1000
            if prefill_s:
                await asyncio.sleep(prefill_s)
            last = time.perf_counter()
            m.ttft.observe(last - start)
            itl_s = s.itl_ms / 1000
            for i in range(gen.max_tokens):
                if i:
                    if itl_s:
                        await asyncio.sleep(itl_s)
                    now = time.perf_counter()
                    m.itl.observe(now - last)
                    last = now
                gen.completion_tokens += 1
                m.generation_tokens.inc()
                yield self.token_text(i)
            gen.finish_reason = "stop" if gen.natural_stop else "length"
        finally:
            if gen.finish_reason is None:
                gen.finish_reason = "abort"
            m.success[gen.finish_reason].inc()
            m.e2e.observe(time.perf_counter() - start)
            if acquired:
                self._running -= 1
                m.running.set(self._running)
                self._set_kv(-kv_blocks)
                self._slots.release()
            else:
                self._waiting -= 1
                m.waiting.set(self._waiting)
