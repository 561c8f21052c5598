"""Two gateway processes route the same request to the same replica: each derives its view of
what the replicas hold from the same KV events, so there is nothing to drift."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
from gateway_testkit import eventually, gateway_env, metric_sum, scrape

from app.devstack import start_gateway, start_simulator

SIM = {"ttft_ms": 2, "itl_ms": 1, "prefill_ms_per_token": 0.01, "prefix_cache_blocks": 20_000}


def _endpoints(sims) -> str:
    return ",".join(f"{s.url} {s.kv_events[0]} {s.kv_events[1]}" for s in sims)


@pytest.fixture(scope="module")
def fleet(log_dir, procs, keys, redis_server):
    sims = [procs(start_simulator(log_dir, kv_events=True, **SIM)) for _ in range(3)]
    urls = [s.url for s in sims]
    # Prefix hashing off: what routes is the KV view, or (the control) nothing but load.
    common = {"affinity_prefix_chars": 0, "health_interval_s": 0.2}
    a, b = (
        procs(
            start_gateway(
                log_dir, gateway_env(keys, redis_server.url, urls, kv_event_endpoints=_endpoints(sims), **common)
            )
        )
        for _ in range(2)
    )
    blind = procs(start_gateway(log_dir, gateway_env(keys, redis_server.url, urls, **common)))
    return sims, a, b, blind


def _send(gw, key: str, messages) -> str:
    """Sends one chat request and returns the replica that served it, from the gateway's log."""
    rid = uuid.uuid4().hex
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    client.chat.completions.create(
        model="sim-model", messages=messages, max_tokens=4, extra_headers={"x-request-id": rid}
    )

    def served() -> str | None:
        for line in gw.log().splitlines():
            if rid in line:
                entry = json.loads(line)
                if entry.get("msg") == "request":
                    return entry["upstream"]
        return None

    return eventually(served, timeout=5)


def _blocks(gw) -> float:
    return metric_sum(scrape(gw.metrics_url), "gateway_upstream_kv_blocks")


def _conversation(i: int) -> list[dict[str, str]]:
    system = f"tenant {i} " + " ".join(f"rule{i}-{j}" for j in range(200))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]


def test_two_gateways_send_each_turn_where_the_other_sent_the_last(fleet, keys):
    sims, a, b, blind = fleet
    agreed = []
    for i in range(9):
        convo = _conversation(i)
        first = _send(a, keys.alice, convo)
        # Both gateways read the same feeds: once B has the blocks A's request stored, their views agree.
        eventually(lambda: _blocks(b) == _blocks(a) > 0, timeout=5)
        convo = [*convo, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and then?"}]
        second = _send(b, keys.alice, convo)
        convo = [*convo, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "thanks"}]
        eventually(lambda: _blocks(b) == _blocks(a), timeout=5)
        third = _send(a, keys.alice, convo)
        agreed.append(first == second == third)
    assert all(agreed), agreed
    spread = {_send(a, keys.alice, _conversation(i)) for i in range(9)}
    assert len(spread) > 1  # the nine conversations did not all land on one replica
    # B served the nine second turns, each decided once, by what the replicas hold.
    b_metrics = scrape(b.metrics_url)
    assert metric_sum(b_metrics, "gateway_route_decisions_total") == 9
    assert metric_sum(b_metrics, "gateway_route_decisions_total", reason="kv_cache") == 9


def test_control_a_gateway_without_the_events_does_not_follow(fleet, keys):
    # The same conversations through a gateway that sees no KV events: nothing keeps a
    # conversation on the replica holding it, so some turn lands elsewhere.
    sims, a, _, blind = fleet
    followed = []
    for i in range(100, 106):
        convo = _conversation(i)
        first = _send(a, keys.alice, convo)
        convo = [*convo, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and then?"}]
        followed.append(_send(blind, keys.alice, convo) == first)
    assert not all(followed)
