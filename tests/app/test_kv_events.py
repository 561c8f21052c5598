"""The gateway's reading of vLLM's KV cache events (app/gateway/kv_events.py): batches as vLLM's
own encoder writes them, the per-replica block index, and, against real vLLM engines, that the
replica the index says holds a prompt's prefix is the one whose prefix cache hits grow, by the
predicted number of tokens."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time

import httpx
import msgspec
import pytest
from gateway_testkit import gateway_env, metric_sum, run_in_new_loop, scrape
from pydantic import ValidationError

from app.devstack import KV_EVENTS_TOPIC, TINY_MODEL_NAME, VLLM_PYTHON, start_gateway
from app.gateway.kv_events import BlockIndex, Cleared, EventError, KvEventFeed, Removed, Stored, parse_batch
from app.gateway.metrics import GatewayMetrics
from app.gateway.settings import GatewaySettings, describe_error
from app.gateway.upstreams import UpstreamPool

SIZE = 4


def _encoded(events: list[dict]) -> bytes:
    """A batch in vLLM's wire shape: msgpack [ts, events, dp_rank], events tagged by `type`."""
    return msgspec.msgpack.encode([1.0, events, None])


def _stored(hashes, parent, tokens, extra=None) -> dict:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": SIZE,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        **({"extra_keys": extra} if extra else {}),
    }


# -- what vLLM itself writes -----------------------------------------------------------------------

VLLM_ENCODE = """
import json, msgspec, sys
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
batch = KVEventBatch(ts=2.5, events=[
    BlockStored(block_hashes=[b"\\x01" * 32, 17], parent_block_hash=None, token_ids=list(range(8)),
                block_size=4, lora_id=None, medium="GPU", lora_name=None),
    BlockRemoved(block_hashes=[17], medium="GPU"),
    AllBlocksCleared(),
])
sys.stdout.write(msgspec.msgpack.Encoder().encode(batch).hex())
"""


def test_a_batch_vllms_own_encoder_writes_is_read():
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c", VLLM_ENCODE], capture_output=True, text=True, timeout=300, check=True
    )
    ts, events = parse_batch(bytes.fromhex(proc.stdout.strip().splitlines()[-1]))
    assert ts == 2.5
    assert events == [
        Stored(block_hashes=(b"\x01" * 32, 17), parent=None, token_ids=tuple(range(8)), block_size=4, extra_keys=None),
        Removed(block_hashes=(17,)),
        Cleared(),
    ]


@pytest.mark.parametrize("payload", [b"\xc1", msgspec.msgpack.encode({"ts": 1}), _encoded([{"type": "BlockStored"}])])
def test_what_is_not_an_event_batch_is_refused(payload):
    with pytest.raises(EventError):
        parse_batch(payload)


# -- the index --------------------------------------------------------------------------------------


def _index(*events: dict) -> BlockIndex:
    index = BlockIndex()
    for event in parse_batch(_encoded(list(events)))[1]:
        index.apply(event)
    return index


def test_a_prompt_is_cached_as_far_as_its_full_blocks_chain():
    index = _index(_stored([10, 11, 12], None, list(range(12))))
    assert index.cached_tokens(list(range(12))) == 12
    assert index.cached_tokens([*range(8), 99, 99, 99, 99]) == 8
    assert index.cached_tokens([*range(6)]) == 4  # a partial block is never cached
    assert index.cached_tokens([1, *range(11)]) == 0  # same tokens, another chain
    # vLLM always computes the prompt's last token again.
    assert index.predicted_hits(list(range(12))) == 8
    assert index.predicted_hits([*range(12), 5]) == 12


def test_blocks_stored_in_later_batches_extend_the_chain():
    index = _index(_stored([10], None, [0, 1, 2, 3]), _stored([11, 12], 10, [4, 5, 6, 7, 8, 9, 10, 11]))
    assert index.cached_tokens(list(range(12))) == 12


def test_removed_blocks_and_cleared_caches_stop_the_chain():
    index = _index(_stored([10, 11, 12], None, list(range(12))), {"type": "BlockRemoved", "block_hashes": [11]})
    assert index.cached_tokens(list(range(12))) == 4
    index.apply(Cleared())
    assert index.cached_tokens(list(range(12))) == 0 and len(index) == 0


def test_blocks_with_extra_keys_do_not_match_a_plain_prompt():
    """A LoRA's or an image's blocks have the same tokens but another hash in vLLM."""
    index = _index(_stored([10], None, [0, 1, 2, 3], extra=[["adapter-a"]]))
    assert index.cached_tokens([0, 1, 2, 3]) == 0


def test_the_feed_clears_its_index_when_the_replica_starts_again():
    feed = KvEventFeed("tcp://127.0.0.1:1")
    feed.handle(0, _encoded([_stored([10], None, [0, 1, 2, 3])]))
    feed.handle(1, _encoded([_stored([11], 10, [4, 5, 6, 7])]))
    assert feed.index.cached_tokens(list(range(8))) == 8 and feed.stats.restarts == 0
    feed.handle(0, _encoded([_stored([20], None, [9, 9, 9, 9])]))  # seq 0 again: the replica restarted
    assert feed.stats.restarts == 1
    assert feed.index.cached_tokens(list(range(8))) == 0 and feed.index.cached_tokens([9, 9, 9, 9]) == 4
    feed.handle(1, b"\xc1")
    assert feed.stats.bad == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GATEWAY_KV_EVENT_ENDPOINTS": "http://10.0.0.5:8000 10.0.0.5:5557"},
            "GATEWAY_KV_EVENT_ENDPOINTS='http://10.0.0.5:8000 10.0.0.5:5557': "
            "'http://10.0.0.5:8000 10.0.0.5:5557' is not `<replica url> tcp://host:port",
        ),
        ({"GATEWAY_KV_REPLAY_PORT": "5558"}, "GATEWAY_KV_REPLAY_PORT needs GATEWAY_KV_EVENTS_PORT"),
        ({"GATEWAY_KV_EVENTS_PORT": "70000"}, "GATEWAY_KV_EVENTS_PORT='70000': Input should be less than or equal"),
    ],
)
def test_bad_kv_event_settings_name_the_variable(env, message, tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("")
    monkeypatch.setenv("GATEWAY_UPSTREAMS", "http://10.0.0.5:8000")
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", str(keys))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        GatewaySettings()
    assert describe_error(err.value).startswith(message), describe_error(err.value)


def test_replicas_found_by_dns_follow_the_events_on_their_own_address():
    settings = GatewaySettings(
        upstreams=("http://10.0.0.5:8000", "http://[fd00::7]:8000", "http://10.0.0.9:8000"),
        api_keys_redis_hash="keys",
        kv_events_port=5557,
        kv_replay_port=5558,
        kv_event_endpoints="http://10.0.0.9:8000 tcp://127.0.0.1:6000",
    )
    feeds = {url: UpstreamPool(settings, None, GatewayMetrics())._kv_feed(url) for url in settings.upstreams}
    assert {u: (f.endpoint, f.replay_endpoint) for u, f in feeds.items() if f} == {
        "http://10.0.0.5:8000": ("tcp://10.0.0.5:5557", "tcp://10.0.0.5:5558"),
        "http://[fd00::7]:8000": ("tcp://[fd00::7]:5557", "tcp://[fd00::7]:5558"),
        "http://10.0.0.9:8000": ("tcp://127.0.0.1:6000", None),
    }


# -- against real vLLM ------------------------------------------------------------------------------


def _complete(engine, prompt: list[int]) -> None:
    r = httpx.post(
        f"{engine.url}/v1/completions",
        json={"model": TINY_MODEL_NAME, "prompt": prompt, "max_tokens": 1},
        timeout=120,
    )
    r.raise_for_status()


def _hits(engine) -> float:
    return metric_sum(scrape(engine.url), "vllm:prefix_cache_hits_total")


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(5, 380) for _ in range(n)]  # inside the tiny model's vocabulary (384)


def test_the_replica_the_index_names_is_the_one_whose_prefix_hits_grow(engines):
    """Two engines, each sent its own prompt; a third prompt shares the first one's opening
    blocks. The index predicts hits on the first engine only, and vLLM's own counters agree,
    token for token."""
    rng = random.Random(time.time_ns())
    # The first prompt is whole blocks long: vLLM still computes its last token, so not all is a hit.
    first, second = _prompt(rng, 768), _prompt(rng, 700)
    shared = first[:400] + _prompt(rng, 300)

    async def scenario() -> None:
        feeds = [KvEventFeed(*e.kv_events, topic=KV_EVENTS_TOPIC) for e in engines]
        tasks = [asyncio.create_task(f.run()) for f in feeds]
        try:
            await asyncio.sleep(0.5)  # the SUB sockets join before anything is published
            for engine, feed, prompt in zip(engines, feeds, (first, second), strict=True):
                await asyncio.to_thread(_complete, engine, prompt)
                await _until(lambda f=feed, p=prompt: f.index.cached_tokens(p) > 0)
            size = feeds[0].index.block_size
            assert size, "no block size learned from the events"
            predicted = [f.index.predicted_hits(shared) for f in feeds]
            assert predicted == [400 // size * size, 0], predicted
            before = [_hits(e) for e in engines]
            await asyncio.to_thread(_complete, engines[0], shared)
            grown = [_hits(e) - b for e, b in zip(engines, before, strict=True)]
            assert grown == [predicted[0], 0], (grown, predicted)
            # And the whole first prompt, as vLLM counts it: all but its last token's block.
            before = _hits(engines[0])
            await asyncio.to_thread(_complete, engines[0], first)
            assert _hits(engines[0]) - before == feeds[0].index.predicted_hits(first) == 767 // size * size
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run_in_new_loop(scenario())


def test_a_feed_that_joins_late_catches_up_from_the_replay_socket(engines):
    """Events published before the feed subscribed come back from vLLM's replay buffer."""
    rng = random.Random(time.time_ns())
    prompt = _prompt(rng, 600)
    engine = engines[1]
    _complete(engine, prompt)  # published before anyone here listens

    async def scenario() -> None:
        feed = KvEventFeed(*engine.kv_events, topic=KV_EVENTS_TOPIC)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.sleep(0.5)
            # The next batch shows the gap, which the feed fills from the replay socket first.
            await asyncio.to_thread(_complete, engine, _prompt(rng, 300))
            await _until(lambda: feed.stats.replayed > 0)
            assert feed.stats.gaps >= 1
            assert feed.index.cached_tokens(prompt) >= 512, json.dumps(feed.stats.__dict__)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run_in_new_loop(scenario())


# -- the gateway routing by them ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv_gateway(log_dir, procs, keys, redis_server, engines):
    endpoints = ",".join(f"{e.url} {e.kv_events[0]} {e.kv_events[1]}" for e in engines)
    env = gateway_env(
        keys,
        redis_server.url,
        [e.url for e in engines],
        models=TINY_MODEL_NAME,
        kv_event_endpoints=endpoints,
        kv_events_topic=KV_EVENTS_TOPIC,
    )
    return procs(start_gateway(log_dir, env))


def test_the_gateway_sends_a_conversation_to_the_replica_that_cached_it(kv_gateway, keys, engines):
    """Conversations first served by the second engine directly, where no hash of the gateway's
    put them, come back through the gateway: each goes to that engine, on its KV events alone,
    and finds its prefix there."""
    rng = random.Random(time.time_ns())
    holder, other = engines[1], engines[0]
    conversations = [
        [
            {"role": "system", "content": " ".join(f"rule {rng.randrange(10**6)}" for _ in range(120))},
            {"role": "user", "content": f"question {i}"},
        ]
        for i in range(4)
    ]
    for messages in conversations:
        r = httpx.post(
            f"{holder.url}/v1/chat/completions",
            json={"model": TINY_MODEL_NAME, "messages": messages, "max_tokens": 1},
            timeout=120,
        )
        r.raise_for_status()
    deadline = time.monotonic() + 20
    while metric_sum(scrape(kv_gateway.metrics_url), "gateway_upstream_kv_blocks", upstream=holder.url) <= 0:
        assert time.monotonic() < deadline, "the gateway never indexed the engine's blocks"
        time.sleep(0.2)

    before = [_hits(e) for e in (holder, other)]
    routed = metric_sum(scrape(kv_gateway.metrics_url), "gateway_route_decisions_total", reason="kv_cache")
    for messages in conversations:
        r = httpx.post(
            f"{kv_gateway.url}/v1/chat/completions",
            json={"model": TINY_MODEL_NAME, "messages": messages, "max_tokens": 1},
            headers={"authorization": f"Bearer {keys.alice}"},
            timeout=120,
        )
        r.raise_for_status()
    grown = [_hits(e) - b for e, b in zip((holder, other), before, strict=True)]
    after = metric_sum(scrape(kv_gateway.metrics_url), "gateway_route_decisions_total", reason="kv_cache")
    assert after - routed == len(conversations)
    assert grown[1] == 0 and grown[0] >= len(conversations) * 128, grown
