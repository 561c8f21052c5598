"""The simulator's prefix cache, with vLLM's semantics (vllm/v1/core/kv_cache_manager.py,
block_pool.py): only full blocks are cached, each keyed by a hash chained over its parent
block's hash and its own token ids; a request hits its leading cached blocks, but never its
whole prompt, since vLLM always computes the last prompt token again; blocks are kept in an
LRU of a fixed number of blocks. Storing and evicting blocks are reported as vLLM's KV cache
events (kv_events.py).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .kv_events import AllBlocksCleared, KvEvent, removed, stored

Publish = Callable[[list[KvEvent]], None]


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """63 bits of blake2b: the same in every process, and a signed 64-bit integer in msgpack,
    as vLLM's builtin-hash block hashes are."""
    h = hashlib.blake2b(b"\x00" if parent is None else b"\x01" + parent.to_bytes(8, "big"), digest_size=8)
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return int.from_bytes(h.digest(), "big") >> 1


class PrefixCache:
    def __init__(self, capacity_blocks: int, block_size: int, publish: Publish | None = None) -> None:
        self.capacity = capacity_blocks
        self.block_size = block_size
        self._publish = publish
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, h: int) -> bool:
        return h in self._blocks

    def extend_chain(self, token_ids: Sequence[int], hashes: list[int]) -> list[int]:
        """Appends to `hashes` (those of the leading full blocks of `token_ids`, or none) the
        hashes of the rest of its full blocks."""
        size = self.block_size
        for i in range(len(hashes), len(token_ids) // size):
            hashes.append(block_hash(hashes[-1] if hashes else None, token_ids[i * size : (i + 1) * size]))
        return hashes

    def hits(self, hashes: Sequence[int], prompt_len: int) -> int:
        """Prompt tokens vLLM counts as prefix cache hits: the leading cached blocks within all
        but the last prompt token."""
        blocks = 0
        for h in hashes[: max(0, prompt_len - 1) // self.block_size]:
            if h not in self._blocks:
                break
            blocks += 1
        return blocks * self.block_size

    def store(self, token_ids: Sequence[int], hashes: Sequence[int], first: int = 0) -> None:
        """Caches the full blocks `hashes[first:]` of `token_ids` (a request stores its prompt's
        blocks, then each block its output fills), then evicts the least recently used blocks
        beyond the capacity; one event batch says what changed."""
        if not self.capacity:
            return  # prefix caching off: nothing is kept, nothing is published
        size = self.block_size
        events: list[KvEvent] = []
        run: list[int] = []  # consecutive new blocks, published as one BlockStored
        run_start = first

        def flush() -> None:
            if run:
                parent = hashes[run_start - 1] if run_start else None
                tokens = list(token_ids[run_start * size : (run_start + len(run)) * size])
                events.append(stored(list(run), parent, tokens, size))
                run.clear()

        for i in range(first, len(hashes)):
            h = hashes[i]
            if h in self._blocks:
                flush()
            else:
                if not run:
                    run_start = i
                self._blocks[h] = None
                run.append(h)
        flush()
        # The whole chain is used again, its first block last: vLLM frees a request's blocks
        # tail first, so under pressure a prompt loses its ending before its shared opening.
        for h in reversed(hashes):
            if h in self._blocks:  # an earlier block may have been evicted since it was stored
                self._blocks.move_to_end(h)
        evicted = [self._blocks.popitem(last=False)[0] for _ in range(len(self._blocks) - self.capacity)]
        if evicted:
            events.append(removed(evicted))
        if events and self._publish is not None:
            self._publish(events)

    def clear(self) -> None:
        self._blocks.clear()
        if self._publish is not None:
            self._publish([AllBlocksCleared()])
