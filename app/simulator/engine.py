"""The simulated engine: a scheduler with a batch limit, a prefix cache, and token timing.

Timing follows vLLM's shape rather than its numbers: the first token costs a fixed time plus a
per-token prefill cost for the part of the prompt that is not already in the prefix cache, and
every later token costs a fixed inter-token time. With prefill_queue, the prefills of requests
running at once take turns, so a replica prefills at most its rate in tokens per second, as a
GPU does; without it, each costs its own time alone.

The prefix cache (prefix_cache.py) holds the prompt's full blocks once it is scheduled and each
block the output fills as it fills, as vLLM caches a request's blocks, so a conversation's next
turn hits its earlier answers too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .metrics import VllmMetrics
from .prefix_cache import PrefixCache, Publish
from .settings import SimulatorSettings
from .tokens import token_ids

_VOCAB = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly "
    "hex every jolly box of bright amber pixels near the old stone bridge"
).split()
_VOCAB_IDS = token_ids(_VOCAB)


@dataclass(slots=True)
class Generation:
    prompt_tokens: int
    max_tokens: int
    # A request without max_tokens ends as if the model emitted its end-of-sequence token.
    natural_stop: bool = False
    completion_tokens: int = 0
    finish_reason: str | None = None


class Engine:
    def __init__(self, settings: SimulatorSettings, metrics: VllmMetrics, publish: Publish | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.prefix_cache = PrefixCache(settings.prefix_cache_blocks, settings.block_size, publish)
        self._slots = asyncio.Semaphore(settings.max_num_seqs)
        self._prefill_turn = asyncio.Lock()  # with prefill_queue, the replica's one prefill at a time
        self._running = 0
        self._waiting = 0
        self._kv_blocks_used = 0

    def _set_kv(self, delta_blocks: int) -> None:
        self._kv_blocks_used += delta_blocks
        self.metrics.kv_usage.set(min(1.0, self._kv_blocks_used / self.settings.kv_cache_blocks))

    def token_text(self, index: int) -> str:
        return " " + _VOCAB[index % len(_VOCAB)]

    async def generate(self, prompt: list[int], gen: Generation) -> AsyncIterator[str]:
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

            cache = self.prefix_cache
            hashes = cache.extend_chain(prompt, [])
            cached = cache.hits(hashes, len(prompt))
            cache.store(prompt, hashes)
            m.prefix_queries.inc(len(prompt))
            m.prefix_hits.inc(cached)
            m.prompt_tokens.inc(gen.prompt_tokens)
            prefill_s = s.prefill_ms_per_token * max(0, gen.prompt_tokens - cached) / 1000
            if s.prefill_queue and prefill_s:
                async with self._prefill_turn:  # an asyncio.Lock wakes its waiters in arrival order
                    await asyncio.sleep(prefill_s)
                prefill_s = 0.0
            if prefill_s + s.ttft_ms:
                await asyncio.sleep(prefill_s + s.ttft_ms / 1000)
            last = time.perf_counter()
            m.ttft.observe(last - start)
            itl_s = s.itl_ms / 1000
            sequence = list(prompt)
            for i in range(gen.max_tokens):
                if i:
                    if itl_s:
                        await asyncio.sleep(itl_s)
                    now = time.perf_counter()
                    m.itl.observe(now - last)
                    last = now
                    # This step computed the previous output token's KV: cache the block it filled.
                    if len(sequence) // s.block_size > len(hashes):
                        first = len(hashes)
                        cache.store(sequence, cache.extend_chain(sequence, hashes), first)
                gen.completion_tokens += 1
                m.generation_tokens.inc()
                sequence.append(_VOCAB_IDS[i % len(_VOCAB)])
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
