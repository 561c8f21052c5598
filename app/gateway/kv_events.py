"""What each vLLM replica holds in its prefix cache, read from the KV cache events it publishes.

vLLM started with `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'`
sends each batch of events as a three-frame message on a PUB socket: the topic, a sequence
number (8 bytes, big-endian) and an msgpack `EventBatch` `[ts, events, data_parallel_rank]`.
Each event is a map tagged by `type`:

- `BlockStored`: `block_hashes`, `parent_block_hash` (of the block before the first one),
  `token_ids` (all the blocks' tokens, `block_size` each), `extra_keys` (LoRA, multimodal and
  cache-salt keys per block, or None);
- `BlockRemoved`: `block_hashes`;
- `AllBlocksCleared`.

Batches missed on the PUB socket can be asked for again on the replay ROUTER socket: send the
first missing sequence number; each buffered batch comes back as (topic, seq, payload), then a
frame with sequence -1. (vllm/distributed/kv_events.py, `ZmqEventPublisher`, vLLM v0.32.0.)

The index keeps each block by (parent hash, tokens, extra keys), so the cached prefix of a
request is found by walking its token ids one full block at a time: the same blocks vLLM's
prefix cache hits, without reproducing vLLM's hash function (which depends on
`--prefix-caching-hash-algo` and, for the builtin hash, on a per-process seed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger("gateway.kv_events")

END_SEQ = -1  # the replay socket's end-of-replay marker
BlockHash = bytes | int  # vLLM's ExternalBlockHash


class EventError(ValueError):
    """A batch that is not vLLM's EventBatch."""


@dataclass(frozen=True, slots=True)
class Stored:
    block_hashes: tuple[BlockHash, ...]
    parent: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    extra_keys: tuple[Any, ...] | None  # one entry per block, or None


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared
_DECODER = msgspec.msgpack.Decoder()


def _hashable(value: Any) -> Any:
    """Extra keys arrive as msgpack arrays (lists); the index needs them hashable."""
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value


def parse_batch(payload: bytes) -> tuple[float, list[Event]]:
    """One EventBatch as (timestamp, events); events of kinds this gateway does not use are skipped."""
    try:
        batch = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventError(f"not msgpack: {exc}") from None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        raise EventError("not an EventBatch [ts, events, ...]")
    events: list[Event] = []
    for raw in batch[1]:
        kind = raw.get("type") if isinstance(raw, dict) else None
        try:
            if kind == "BlockStored":
                extra = raw.get("extra_keys")
                events.append(
                    Stored(
                        block_hashes=tuple(raw["block_hashes"]),
                        parent=raw.get("parent_block_hash"),
                        token_ids=tuple(raw["token_ids"]),
                        block_size=int(raw["block_size"]),
                        extra_keys=tuple(_hashable(e) for e in extra) if extra else None,
                    )
                )
            elif kind == "BlockRemoved":
                events.append(Removed(tuple(raw["block_hashes"])))
            elif kind == "AllBlocksCleared":
                events.append(Cleared())
        except (KeyError, TypeError, ValueError) as exc:
            raise EventError(f"{kind} without {exc}") from None
    return float(batch[0]), events


@dataclass
class BlockIndex:
    """The blocks one replica holds, as its events say."""

    block_size: int | None = None  # learned from the first BlockStored
    _by_hash: dict[BlockHash, tuple[BlockHash | None, tuple[int, ...], Any]] = field(default_factory=dict)
    _by_chain: dict[tuple[BlockHash | None, tuple[int, ...], Any], BlockHash] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._by_hash)

    def apply(self, event: Event) -> None:
        if isinstance(event, Stored):
            self._store(event)
        elif isinstance(event, Removed):
            for h in event.block_hashes:
                key = self._by_hash.pop(h, None)
                if key is not None and self._by_chain.get(key) == h:
                    del self._by_chain[key]
        else:
            self._by_hash.clear()
            self._by_chain.clear()

    def _store(self, event: Stored) -> None:
        size = event.block_size
        self.block_size = size
        parent = event.parent
        for i, h in enumerate(event.block_hashes):
            tokens = event.token_ids[i * size : (i + 1) * size]
            if len(tokens) < size:
                break  # vLLM stores full blocks only; a short one would never match
            extra = event.extra_keys[i] if event.extra_keys and i < len(event.extra_keys) else None
            key = (parent, tokens, extra)
            self._by_hash[h] = key
            self._by_chain[key] = h
            parent = h

    def cached_tokens(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of a plain-text request are in cached full blocks."""
        size = self.block_size
        if not size:
            return 0
        parent: BlockHash | None = None
        cached = 0
        for start in range(0, len(token_ids) - size + 1, size):
            h = self._by_chain.get((parent, tuple(token_ids[start : start + size]), None))
            if h is None:
                break
            cached += size
            parent = h
        return cached

    def predicted_hits(self, token_ids: Sequence[int]) -> int:
        """The prompt tokens vLLM will count as prefix cache hits: cached full blocks, but never
        the whole prompt, since the last token is always computed again (the cache hit may be at
        most the prompt's length minus one; vllm/v1/core/kv_cache_manager.py get_computed_blocks)."""
        size = self.block_size
        if not size or not token_ids:
            return 0
        return min(self.cached_tokens(token_ids), (len(token_ids) - 1) // size * size)


def shared_blocks(a: Sequence[int], b: Sequence[int], size: int) -> int:
    """Tokens in the full blocks that `a` begins with and `b` holds too, capped as vLLM caps a
    hit (the last token of `a` is always computed again)."""
    limit = min((len(a) - 1) // size, len(b) // size)
    n = 0
    while n < limit and a[n * size : (n + 1) * size] == b[n * size : (n + 1) * size]:
        n += 1
    return n * size


@dataclass
class FeedStats:
    batches: int = 0
    gaps: int = 0  # times a sequence number was skipped
    replayed: int = 0  # batches caught up from the replay socket
    restarts: int = 0  # times the publisher started again from sequence 0
    bad: int = 0  # batches that did not parse


class KvEventFeed:
    """One replica's events, applied to its index as they arrive: subscribe to the PUB socket,
    and where a sequence number is skipped, or the feed joins late, catch up on the replay
    socket before applying anything newer."""

    def __init__(self, endpoint: str, replay_endpoint: str | None = None, topic: str = "") -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self.index = BlockIndex()
        self.stats = FeedStats()
        self._next_seq: int | None = None
        self._ctx = zmq.asyncio.Context.instance()

    def handle(self, seq: int, payload: bytes) -> None:
        """Apply one batch in order. A publisher numbers its batches from 0 and the replay socket
        answers from the number asked for, so a number that goes back means the replica started
        again, with an empty cache."""
        if self._next_seq is not None and seq < self._next_seq:
            self.stats.restarts += 1
            self.index.apply(Cleared())
        try:
            _, events = parse_batch(payload)
        except EventError as exc:
            self.stats.bad += 1
            log.warning("bad KV event batch", extra={"endpoint": self.endpoint, "error": str(exc)})
            return
        for event in events:
            self.index.apply(event)
        self.stats.batches += 1
        self._next_seq = seq + 1

    async def run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        sub.connect(self.endpoint)
        try:
            while True:
                _topic, seq_bytes, payload = await sub.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                expected = 0 if self._next_seq is None else self._next_seq
                if seq > expected and self.replay_endpoint:
                    self.stats.gaps += 1
                    await self._replay(expected, until=seq)
                self.handle(seq, payload)
        finally:
            sub.close(linger=0)

    async def _replay(self, start: int, until: int) -> None:
        """Ask the replay socket for every buffered batch from `start`, applying those before `until`."""
        assert self.replay_endpoint is not None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.connect(self.replay_endpoint)
        try:
            await dealer.send_multipart((b"", start.to_bytes(8, "big")))
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), timeout=5)
                _empty, _topic, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq == END_SEQ:
                    return
                if seq < until:
                    self.handle(seq, payload)
                    self.stats.replayed += 1
        except (TimeoutError, ValueError) as exc:
            log.warning("KV event replay failed", extra={"endpoint": self.replay_endpoint, "error": repr(exc)})
        finally:
            dealer.close(linger=0)
