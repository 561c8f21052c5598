"""Routing, circuit breaking and stream filtering as plain objects."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

from app.devstack import ROOT
from app.gateway.circuit import CircuitBreaker, State
from app.gateway.routing import HashRing, Router, stable_hash
from app.gateway.upstreams import parse_vllm_load


@dataclass
class Replica:
    url: str
    inflight: int = 0
    kv: float = 0.0
    holds: int = 0  # prompt tokens its prefix cache would hit
    backlog: float = 0.0  # prompt tokens queued ahead of a new request
    blocks: int = 0  # KV cache blocks it holds

    def load(self) -> float:
        return self.inflight

    def backlog_tokens(self, prompt_tokens: int) -> float:
        return self.backlog

    def footprint(self) -> int:
        return self.blocks

    def pressure(self) -> float:
        return self.kv

    def cached(self, token_ids) -> int:
        return min(self.holds, len(token_ids))


def test_the_replica_holding_the_most_of_the_prompt_wins_over_the_hash():
    a, b, c = (Replica(f"http://10.0.0.{i}:8000") for i in range(3))
    router = Router(load_factor=1.25)
    router.update_members([a.url, b.url, c.url])
    prefix = "shared system prompt"
    by_hash = router.choose([a, b, c], prefix)
    holder = next(r for r in (a, b, c) if r is not by_hash)
    holder.holds = 256
    assert picked(router.decide([a, b, c], prefix, list(range(300)))) == (holder, "kv_cache")
    # Another replica holding less does not take it; without token ids the hash decides as before.
    by_hash.holds = 128
    assert picked(router.decide([a, b, c], prefix, list(range(300)))) == (holder, "kv_cache")
    assert picked(router.decide([a, b, c], prefix)) == (by_hash, "affinity")


def picked(decision):
    return decision.replica, decision.reason


def test_a_holder_past_the_load_bound_gives_way_to_the_next():
    a, b, c = (Replica(f"http://10.0.0.{i}:8000") for i in range(3))
    router = Router(load_factor=3.0, kv_load_factor=1.25)  # the KV choice has its own bound
    router.update_members([a.url, b.url, c.url])
    a.holds, b.holds = 512, 256
    a.inflight = 10  # bound: ceil(1.25 * 11 / 3) = 5
    assert picked(router.decide([a, b, c], None, list(range(600)))) == (b, "kv_cache")
    b.inflight = 10
    assert picked(router.decide([a, b, c], None, list(range(600)))) == (c, "least_loaded")


def test_a_holder_whose_queue_costs_more_than_the_prefill_it_saves_loses():
    # 10,000 prompt tokens a second; a 1,000-token prompt; `a` holds 512 of it.
    a, b = Replica("http://a", holds=512), Replica("http://b")
    router = Router(load_factor=4.0, prefill_tokens_per_s=10_000, kv_load_factor=4.0)
    d = router.decide([a, b], None, list(range(1000)))
    assert picked(d) == (a, "kv_cache")
    assert d.ttft_s == 0.0488 and d.uncached == 488  # (0 queued + 488 uncached) / 10,000
    # Uncached tokens weigh double in the choice (a copy evicts as much elsewhere): `a` keeps it
    # while its queue is under twice the 512 tokens it saves, 1023 + 2 x 488 < 2 x 1000 ...
    a.backlog = 1023
    assert router.decide([a, b], None, list(range(1000))).replica is a
    a.backlog = 1025  # ... and gives it up past that
    d = router.decide([a, b], None, list(range(1000)))
    assert picked(d) == (b, "least_loaded") and d.ttft_s == 0.1 and d.uncached == 1000


def test_a_prompt_cached_nowhere_goes_where_the_fewest_blocks_are():
    a, b, c = Replica("http://a", blocks=900), Replica("http://b", blocks=300), Replica("http://c", blocks=600)
    router = Router(load_factor=1.25, kv_load_factor=1.25)
    router.update_members([a.url, b.url, c.url])
    for _ in range(5):  # whatever the tie-break's turn
        assert picked(router.decide([a, b, c], "some prefix", list(range(100)))) == (b, "kv_balance")
    b.inflight = 3  # past the bound, ceil(1.25 * 4 / 3) = 2: the next fewest
    assert picked(router.decide([a, b, c], "some prefix", list(range(100)))) == (c, "kv_balance")
    # A prefill waiting on it counts first: the idle replica takes the new prefix.
    b.inflight, c.backlog = 0, 2000
    assert router.decide([a, b, c], "some prefix", list(range(100))).replica is b
    b.backlog = 2500
    assert router.decide([a, b, c], "some prefix", list(range(100))).replica is a
    # Without token ids (no events, or content the index cannot match) the ring decides.
    assert router.decide([a, b, c], "some prefix").reason == "affinity"


def test_stable_hash_does_not_depend_on_the_process():
    # Python's hash() is salted per process; gateway replicas must agree on the ring.
    code = "from app.gateway.routing import stable_hash; print(stable_hash('system prompt'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(stable_hash("system prompt"))}
    assert stable_hash("a") != stable_hash("b")


def test_ring_moves_only_the_keys_of_a_removed_replica():
    urls = [f"http://10.0.0.{i}:8000" for i in range(5)]
    full, smaller = HashRing(urls), HashRing(urls[:-1])
    keys = [stable_hash(f"prefix-{i}") for i in range(2000)]
    before = {k: next(full.walk(k)) for k in keys}
    after = {k: next(smaller.walk(k)) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == urls[-1] for k in moved)
    share = Counter(before.values())
    assert min(share.values()) > 2000 / 5 * 0.5  # virtual nodes keep the split roughly even


def test_same_prefix_same_replica_until_the_load_bound():
    replicas = [Replica(f"http://r{i}") for i in range(3)]
    router = Router(load_factor=1.25)
    router.update_members(r.url for r in replicas)
    first = router.choose(replicas, "You are a helpful assistant.")
    assert all(router.choose(replicas, "You are a helpful assistant.") is first for _ in range(10))
    first.inflight = 10  # hot: far above 1.25 x the mean
    other = router.choose(replicas, "You are a helpful assistant.")
    assert other is not first


def test_bounded_load_spreads_one_hot_prefix():
    replicas = [Replica(f"http://r{i}") for i in range(4)]
    router = Router(load_factor=1.25)
    router.update_members(r.url for r in replicas)
    for _ in range(100):
        router.choose(replicas, "the same prefix").inflight += 1
    loads = sorted(r.inflight for r in replicas)
    assert loads[-1] <= 32  # ceil(1.25 x 100 / 4) + 1
    assert loads[0] >= 1


def test_least_outstanding_without_prefix_and_kv_pressure_breaks_ties():
    a, b, c = Replica("http://a", 3), Replica("http://b", 1, kv=0.9), Replica("http://c", 1, kv=0.1)
    router = Router(load_factor=1.25)
    assert all(router.choose([a, b, c], None) is c for _ in range(5))


def test_breaker_opens_after_consecutive_failures_and_probes_back():
    br = CircuitBreaker(failures_to_open=3, cooldown_s=5)
    assert not br.failure(now=0) and not br.failure(now=0)
    assert br.failure(now=0) and br.state is State.OPEN
    assert not br.acquire(now=4.9)
    assert br.acquire(now=5.0) and br.state is State.HALF_OPEN
    assert not br.acquire(now=5.0)  # one trial at a time
    br.failure(now=5.1)  # the trial failed: open again, for twice as long
    assert br.state is State.OPEN and not br.acquire(now=14.0) and br.acquire(now=15.2)
    br.success()
    assert br.state is State.CLOSED and br.acquire(now=15.3)


def test_breaker_success_resets_the_failure_count():
    br = CircuitBreaker(failures_to_open=2, cooldown_s=1)
    br.failure(now=0)
    br.success()
    assert not br.failure(now=0) and br.state is State.CLOSED


def test_vllm_load_is_read_from_metrics_text():
    text = b"""# HELP vllm:num_requests_waiting x
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:num_requests_waiting_by_reason{reason="x"} 99
"""
    assert parse_vllm_load(text) == {"waiting": 5.0, "running": 7.0, "kv_usage": 0.5}


def test_shared_blocks_counts_the_full_blocks_two_prompts_begin_with():
    from app.gateway.kv_events import shared_blocks

    a = list(range(100))
    assert shared_blocks(a, list(range(40)) + [-1] * 60, 16) == 32  # blocks 0 and 1; block 2 differs
    assert shared_blocks(a, a, 16) == 96  # never the whole prompt: its last token is computed again
    assert shared_blocks(a, [-1] + a[1:], 16) == 0
    assert shared_blocks(a, a[:20], 16) == 16  # only full blocks of the other
