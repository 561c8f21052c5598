"""The simulator's KV cache events and /tokenize, read with the gateway's own reader of vLLM's
(app/gateway/kv_events.py): the index built from a simulator's events predicts its prefix
cache hits token for token, follows its evictions, catches up from its replay socket, and holds
the very token ids /tokenize gives; a gateway over simulators routes by them."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import msgspec
import pytest
from gateway_testkit import FAST, gateway_env, metric_sum, run_in_new_loop, scrape

from app.devstack import KV_EVENTS_TOPIC, VLLM_PYTHON, start_gateway, start_simulator
from app.gateway.kv_events import KvEventFeed, Removed, Stored, parse_batch
from app.simulator.kv_events import AllBlocksCleared, EventBatch, removed, stored
from app.simulator.settings import SimulatorSettings

MODEL = "sim-model"
SIZE = 16  # the simulator's default block size


async def _until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


@contextmanager
def _feeds(*sims, replay: bool = True) -> Iterator[list[KvEventFeed]]:
    """A running feed per simulator, on the current loop (used inside a scenario)."""
    feeds = [KvEventFeed(s.kv_events[0], s.kv_events[1] if replay else None, topic=KV_EVENTS_TOPIC) for s in sims]
    tasks = [asyncio.get_running_loop().create_task(f.run()) for f in feeds]
    try:
        yield feeds
    finally:
        for t in tasks:
            t.cancel()


def _words(tag: str, n: int) -> str:
    rng = random.Random(tag)
    return " ".join(f"{tag}{rng.randrange(10**6)}" for _ in range(n))


def _conversation(tag: str, n: int = 100) -> list[dict]:
    return [{"role": "system", "content": _words(tag, n)}, {"role": "user", "content": f"first question of {tag}"}]


async def _chat(client: httpx.AsyncClient, sim, messages: list[dict], max_tokens: int = 8, **extra) -> dict:
    r = await client.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": max_tokens, **extra},
    )
    r.raise_for_status()
    return r.json()


async def _next_turn(client: httpx.AsyncClient, sim, messages: list[dict]) -> list[dict]:
    """The conversation as a chat client continues it: the answer, then a new question."""
    answer = (await _chat(client, sim, messages))["choices"][0]["message"]["content"]
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]


async def _tokenize(client: httpx.AsyncClient, sim, **body) -> list[int]:
    r = await client.post(f"{sim.url}/tokenize", json={"model": MODEL, **body})
    r.raise_for_status()
    out = r.json()
    assert out["count"] == len(out["tokens"])
    return out["tokens"]


def _hits(sim) -> float:
    return metric_sum(scrape(sim.url), "vllm:prefix_cache_hits_total")


@pytest.fixture(scope="module")
def fleet(log_dir, procs):
    """Three simulators publishing their KV events."""
    started = [procs(start_simulator(log_dir, wait=False, kv_events=True, **FAST)) for _ in range(3)]
    for sim in started:
        sim.wait_http("/health")
    return started


# -- the wire format ---------------------------------------------------------------------------------

_SAMPLE = EventBatch(
    ts=2.5,
    events=[stored([11, 12], None, list(range(8)), 4), removed([11]), AllBlocksCleared()],
    data_parallel_rank=0,
)

VLLM_ENCODE = """
import msgspec, sys
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
batch = KVEventBatch(ts=2.5, events=[
    BlockStored(block_hashes=[11, 12], parent_block_hash=None, token_ids=list(range(8)),
                block_size=4, lora_id=None, medium="GPU", lora_name=None),
    BlockRemoved(block_hashes=[11], medium="GPU"),
    AllBlocksCleared(),
], data_parallel_rank=0)
sys.stdout.write(msgspec.msgpack.Encoder().encode(batch).hex())
"""


def test_a_batch_is_written_byte_for_byte_as_vllm_writes_it():
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c", VLLM_ENCODE], capture_output=True, text=True, timeout=300, check=True
    )
    assert msgspec.msgpack.encode(_SAMPLE).hex() == proc.stdout.strip().splitlines()[-1]


def test_the_gateway_reads_the_simulators_batches():
    ts, events = parse_batch(msgspec.msgpack.encode(_SAMPLE))
    assert ts == 2.5
    assert events[:2] == [
        Stored(block_hashes=(11, 12), parent=None, token_ids=tuple(range(8)), block_size=4, extra_keys=None),
        Removed(block_hashes=(11,)),
    ]
    assert len(events) == 3


def test_a_replay_socket_needs_an_event_socket():
    with pytest.raises(ValueError, match="needs SIM_KV_EVENTS_PORT"):
        SimulatorSettings(kv_replay_port=5558)
    assert SimulatorSettings(kv_events_port=5557, kv_replay_port=5558).kv_replay_port == 5558


# -- /tokenize ---------------------------------------------------------------------------------------


def test_tokenize_gives_the_ids_the_chat_route_caches(fleet):
    """The blocks a chat request stores hold exactly the ids /tokenize gives for its messages
    (on any replica: the ids are the same in every process), then its answer's, with or without
    the generation prompt; the ids of the other setting are not what was stored."""
    sim, other = fleet[0], fleet[1]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            with _feeds(sim) as (feed,):
                await asyncio.sleep(0.3)  # the SUB socket joins before anything is published
                for flag in (True, False):
                    messages = _conversation(f"tokenize-{flag}")
                    ids = await _tokenize(client, other, messages=messages, add_generation_prompt=flag)
                    opposite = await _tokenize(client, other, messages=messages, add_generation_prompt=not flag)
                    assert ids != opposite
                    # Two output blocks and more: what is stored runs past the prompt's last block.
                    body = await _chat(client, sim, messages, max_tokens=2 * SIZE + 1, add_generation_prompt=flag)
                    assert body["usage"]["prompt_tokens"] == len(ids)
                    answer = await _tokenize(client, other, prompt=body["choices"][0]["message"]["content"])
                    # The last output token's KV is never computed, so never cached.
                    computed, other_way = ids + answer[:-1], opposite + answer[:-1]
                    await _until(lambda c=computed: feed.index.cached_tokens(c) == len(c) // SIZE * SIZE)
                    assert feed.index.cached_tokens(other_way) < len(other_way) // SIZE * SIZE

    run_in_new_loop(scenario())


def test_tokenize_of_a_prompt_and_its_errors(fleet):
    sim = fleet[0]
    r = httpx.post(f"{sim.url}/tokenize", json={"prompt": "one two  three", "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == 3 and body["token_strs"] == ["one", "two", "three"]
    assert all(0 <= t < 2**31 for t in body["tokens"])
    completion = httpx.post(
        f"{sim.url}/v1/completions", json={"model": MODEL, "prompt": body["tokens"], "max_tokens": 1}
    )
    assert completion.json()["usage"]["prompt_tokens"] == 3
    assert httpx.post(f"{sim.url}/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404
    both = {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}
    assert httpx.post(f"{sim.url}/tokenize", json={"model": MODEL, **both}).status_code == 400
    assert httpx.post(f"{sim.url}/tokenize", json={"model": MODEL, **both, "add_generation_prompt": False}).is_success


# -- the index against the simulator's own counters ---------------------------------------------------


def test_the_index_predicts_the_simulators_hits_token_for_token(fleet):
    """A conversation's next turn: the replica that served the first predicts hits, by its
    events, and its vllm:prefix_cache_hits_total grows by exactly that; the others predict none
    and count none. An unrelated prompt predicts and hits nothing anywhere."""
    sims = fleet[:2]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            with _feeds(*sims) as feeds:
                await asyncio.sleep(0.3)
                conversation = await _next_turn(client, sims[0], _conversation("predict"))
                await _next_turn(client, sims[1], _conversation("predict-elsewhere"))
                ids = await _tokenize(client, sims[1], messages=conversation)
                await _until(lambda: feeds[0].index.cached_tokens(ids) > 0)
                predicted = [f.index.predicted_hits(ids) for f in feeds]
                # The system prompt, the question and the answer: all but the newest question's blocks.
                assert predicted[0] >= 100 // SIZE * SIZE and predicted[1] == 0, predicted
                for sim, expected in zip(sims, predicted, strict=True):
                    before = _hits(sim)
                    await _chat(client, sim, conversation, max_tokens=1)
                    assert _hits(sim) - before == expected

                unrelated = _conversation("predict-unrelated")
                ids = await _tokenize(client, sims[0], messages=unrelated)
                assert [f.index.predicted_hits(ids) for f in feeds] == [0, 0]
                before = _hits(sims[0])
                await _chat(client, sims[0], unrelated, max_tokens=1)
                assert _hits(sims[0]) == before

    run_in_new_loop(scenario())


def test_a_prompt_of_whole_blocks_still_computes_its_last_token(fleet):
    """As vLLM: a prompt cached entire hits all but the block holding its last token."""
    sim = fleet[2]
    prompt = _words("whole", 4 * SIZE)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            with _feeds(sim) as (feed,):
                await asyncio.sleep(0.3)
                ids = await _tokenize(client, sim, prompt=prompt)
                r = await client.post(
                    f"{sim.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}
                )
                r.raise_for_status()
                await _until(lambda: feed.index.cached_tokens(ids) == 4 * SIZE)
                assert feed.index.predicted_hits(ids) == 3 * SIZE
                before = _hits(sim)
                r = await client.post(
                    f"{sim.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}
                )
                assert _hits(sim) - before == 3 * SIZE

    run_in_new_loop(scenario())


# -- eviction, replay, reset -------------------------------------------------------------------------


def test_evicted_blocks_are_removed_from_the_index(log_dir, procs):
    """A cache of 8 blocks: a second long prompt evicts the first one's blocks, the events say
    so, and the index predicts no hit where the simulator then counts none; before that, it
    predicted the hit the simulator counted."""
    sim = procs(start_simulator(log_dir, kv_events=True, prefix_cache_blocks=8, **FAST))
    first, second = _words("evict-a", 6 * SIZE), _words("evict-b", 6 * SIZE)

    async def complete(client: httpx.AsyncClient, prompt: str) -> None:
        r = await client.post(f"{sim.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1})
        r.raise_for_status()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            with _feeds(sim) as (feed,):
                await asyncio.sleep(0.3)
                ids = await _tokenize(client, sim, prompt=first)
                await complete(client, first)
                await _until(lambda: len(feed.index) == 6)
                before = _hits(sim)
                await complete(client, first)
                assert _hits(sim) - before == feed.index.predicted_hits(ids) == 5 * SIZE

                await complete(client, second)  # 6 more blocks in a cache of 8: 4 of the first go
                await _until(lambda: len(feed.index) == 8)
                assert feed.index.cached_tokens(ids) < 6 * SIZE
                # vLLM frees a request's blocks tail first: the first prompt kept its opening blocks.
                assert feed.index.predicted_hits(ids) == 2 * SIZE
                await complete(client, _words("evict-c", 8 * SIZE))
                await _until(lambda: feed.index.predicted_hits(ids) == 0)
                assert len(feed.index) == 8
                before = _hits(sim)
                await complete(client, first)
                assert _hits(sim) == before

    run_in_new_loop(scenario())


def test_a_late_subscriber_catches_up_from_the_replay_socket(fleet):
    """Blocks published before a feed joined come back from the replay buffer; a feed that
    joins as late without a replay socket never learns of them."""
    sim = fleet[1]
    early = _conversation("late-early")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await _chat(client, sim, early)  # nobody here listens yet
            ids = await _tokenize(client, sim, messages=early)
            with _feeds(sim) as (feed,), _feeds(sim, replay=False) as (deaf,):
                await asyncio.sleep(0.3)
                await _chat(client, sim, _conversation("late-next"))
                await _until(lambda: feed.stats.replayed > 0 and deaf.stats.batches > 0)
                assert feed.stats.gaps >= 1
                assert feed.index.cached_tokens(ids) == len(ids) // SIZE * SIZE
                assert deaf.index.cached_tokens(ids) == 0

    run_in_new_loop(scenario())


def test_resetting_the_prefix_cache_clears_the_index(log_dir, procs):
    sim = procs(start_simulator(log_dir, kv_events=True, **FAST))

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            with _feeds(sim) as (feed,):
                await asyncio.sleep(0.3)
                await _chat(client, sim, _conversation("reset"))
                await _until(lambda: len(feed.index) > 0)
                (await client.post(f"{sim.url}/reset_prefix_cache")).raise_for_status()
                await _until(lambda: len(feed.index) == 0)
                before = _hits(sim)
                await _chat(client, sim, _conversation("reset"))
                assert _hits(sim) == before

    run_in_new_loop(scenario())


# -- a gateway routing by them -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv_gateway(log_dir, procs, keys, redis_server, fleet):
    endpoints = ",".join(f"{s.url} {s.kv_events[0]} {s.kv_events[1]}" for s in fleet)
    env = gateway_env(
        keys, redis_server.url, [s.url for s in fleet], kv_event_endpoints=endpoints, kv_events_topic=KV_EVENTS_TOPIC
    )
    return procs(start_gateway(log_dir, env))


def _requests(sim) -> float:
    return metric_sum(scrape(sim.url), "vllm:request_success_total")


def test_the_gateway_sends_each_conversation_back_to_the_replica_holding_it(kv_gateway, keys, fleet):
    """Six conversations, each begun directly on one of three simulators, two per simulator,
    where no hash of the gateway's put them: their next turns through the gateway are each
    decided by the KV cache and reach the simulator that holds them, which hits their prefix. A
    conversation no replica holds is not decided by the KV cache."""
    holders = [fleet[i % 3] for i in range(6)]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            turns = [await _next_turn(client, sim, _conversation(f"gateway-{i}")) for i, sim in enumerate(holders)]
            for sim in fleet:
                await _until(
                    lambda s=sim: (
                        metric_sum(scrape(kv_gateway.metrics_url), "gateway_upstream_kv_blocks", upstream=s.url) > 0
                    ),
                    timeout=20,
                )

            def decisions() -> tuple[float, float]:
                """(all route decisions, those the KV cache made)."""
                samples = scrape(kv_gateway.metrics_url)
                return (
                    metric_sum(samples, "gateway_route_decisions_total"),
                    metric_sum(samples, "gateway_route_decisions_total", reason="kv_cache"),
                )

            start = decisions()
            before = [(_requests(s), _hits(s)) for s in fleet]
            for messages in turns:
                r = await client.post(
                    f"{kv_gateway.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": messages, "max_tokens": 1},
                    headers={"authorization": f"Bearer {keys.alice}"},
                )
                r.raise_for_status()
            made, by_kv = (after - before for after, before in zip(decisions(), start, strict=True))
            assert made == by_kv > 0, (made, by_kv)
            for (requests, hits), sim in zip(before, fleet, strict=True):
                assert _requests(sim) - requests == 2, sim.url
                assert _hits(sim) - hits >= 2 * (100 // SIZE * SIZE), sim.url

            r = await client.post(
                f"{kv_gateway.url}/v1/chat/completions",
                json={"model": MODEL, "messages": _conversation("gateway-new"), "max_tokens": 1},
                headers={"authorization": f"Bearer {keys.alice}"},
            )
            r.raise_for_status()
            made_new, by_kv_new = (after - before for after, before in zip(decisions(), start, strict=True))
            assert made_new > made and by_kv_new == by_kv

    run_in_new_loop(scenario())


def test_a_replica_whose_event_socket_cannot_bind_exits(log_dir):
    """Not a process left running without its events (an open zmq socket would hold it at exit)."""
    from app.devstack import free_port

    port = free_port()
    with pytest.raises(RuntimeError, match="exited"):
        start_simulator(log_dir, kv_events_port=port, kv_replay_port=port)
