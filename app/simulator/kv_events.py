"""vLLM's KV cache events, published by the simulator as vLLM 0.32 publishes them
(vllm/distributed/kv_events.py: the msgspec structs and `ZmqEventPublisher`).

Wire format, so that a reader of real vLLM (app/gateway/kv_events.py) reads the simulator too:

- PUB socket, one message per batch: [topic, sequence number (8 bytes, big-endian, from 0),
  msgpack `EventBatch`]. The batch is an array `[ts, events, data_parallel_rank]`; each event is
  a map tagged by `type`, with fields left out where they hold their default.
- ROUTER replay socket: a DEALER sends `[b"", first missing sequence number]` and gets back
  `[b"", topic, seq, payload]` for each buffered batch from there, then `[b"", b"", -1, b""]`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger("simulator.kv_events")

BUFFER_STEPS = 10_000  # batches kept for replay: vLLM's default buffer_steps
END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM_GPU = "GPU"


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """The tag (the class name, under `type`) tells the kinds apart, as in vLLM."""


class BlockStored(KVCacheEvent):
    # vLLM's fields in vLLM's order. lora_id, medium and lora_name have no default there, so
    # they are always written; of the defaulted fields after them only extra_keys is kept here.
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


def stored(block_hashes: list[int], parent: int | None, token_ids: list[int], block_size: int) -> BlockStored:
    """Plain-text blocks on the GPU: no LoRA, no extra keys."""
    return BlockStored(block_hashes, parent, token_ids, block_size, lora_id=None, medium=MEDIUM_GPU, lora_name=None)


def removed(block_hashes: list[int]) -> BlockRemoved:
    return BlockRemoved(block_hashes, medium=MEDIUM_GPU)


class KvEventPublisher:
    """vLLM's PUB socket and replay ROUTER, on the simulator's event loop rather than on a
    thread of their own: encoding a batch costs microseconds, and a thread polling for replay
    requests would cost the CPU the simulated replicas share."""

    def __init__(self, endpoint: str, replay_endpoint: str | None, topic: str = "") -> None:
        self._topic = topic.encode()
        self._seq = itertools.count()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=BUFFER_STEPS)
        self._encoder = msgspec.msgpack.Encoder()
        # PUB sends are made synchronously where the engine makes a batch (a PUB send never
        # blocks: a slow subscriber loses messages and asks the replay socket for them);
        # the replay socket is served by a task, on an asyncio context over the same one.
        self._ctx = zmq.Context()
        self._actx = zmq.asyncio.Context.shadow(self._ctx.underlying)
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            self._pub.set_hwm(100_000)  # vLLM's default hwm
            self._pub.bind(endpoint)
            if replay_endpoint:
                self._replay = self._actx.socket(zmq.ROUTER)
                self._replay.bind(replay_endpoint)
        except zmq.ZMQError:
            # A socket left open would keep the context's term() at exit waiting for ever, and
            # the process, which failed to start, alive.
            self._close_sockets()
            raise
        if self._replay is not None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[KvEvent]) -> None:
        if not events:
            return
        seq = next(self._seq)
        payload = self._encoder.encode(EventBatch(ts=time.time(), events=list(events), data_parallel_rank=0))
        frames = (self._topic, seq.to_bytes(8, "big"), payload)
        try:
            self._pub.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("KV event batch not sent: %s", exc)
        self._buffer.append((seq, payload))

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid replay request of %d frames", len(frames))
                continue
            client, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            # A copy: batches published while this reply is sent must not change what it walks.
            for seq, payload in [b for b in self._buffer if b[0] >= start]:
                await self._replay.send_multipart((client, b"", self._topic, seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()
