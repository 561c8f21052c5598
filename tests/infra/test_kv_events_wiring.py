"""Every site wires vLLM's KV cache events to the gateway end to end: vLLM publishes on wildcard
endpoints (it binds only those), the pod exposes the ports, the NetworkPolicy lets the gateway
in on them, and the gateway subscribes to the same ports and topic."""

from __future__ import annotations

import copy
import json

import pytest

from infra.plan.graph import Graph
from tests.stacks import SHIPPED


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def kv_wiring_problems(graph: Graph) -> list[str]:
    out = []
    deployments = {r.inputs["metadata"]["name"]: r for r in graph.of_type("kubernetes:apps/v1:Deployment")}
    gateways = [d for name, d in deployments.items() if name == "gateway"]
    policies = [
        r
        for r in graph.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "vllm-ingress"
    ]
    for site_gateway in gateways:
        site = graph.site_of(site_gateway)
        env = _env(site_gateway.inputs["spec"]["template"]["spec"]["containers"][0])
        ports = {int(env.get("GATEWAY_KV_EVENTS_PORT") or 0), int(env.get("GATEWAY_KV_REPLAY_PORT") or 0)}
        allowed = {
            p["port"]
            for pol in policies
            if graph.site_of(pol) == site
            for rule in pol.inputs["spec"]["ingress"]
            if any("gateway" in json.dumps(f) for f in rule.get("from") or [])
            for p in rule.get("ports") or []
        }
        if not ports <= allowed:
            out.append(f"{site}: the NetworkPolicy keeps the gateway off KV event ports {sorted(ports - allowed)}")
        for name, d in deployments.items():
            if not name.startswith("vllm-") or graph.site_of(d) != site:
                continue
            container = d.inputs["spec"]["template"]["spec"]["containers"][0]
            command = [*container.get("command", []), *container.get("args", [])]
            if "--kv-events-config" not in command:
                out.append(f"{name}: vLLM publishes no KV events")
                continue
            config = json.loads(command[command.index("--kv-events-config") + 1])
            published = {int(config[k].rsplit(":", 1)[1]) for k in ("endpoint", "replay_endpoint")}
            if not all("*" in config[k] for k in ("endpoint", "replay_endpoint")):
                out.append(f"{name}: a KV event endpoint without a wildcard makes vLLM connect out, not bind")
            if published != ports or config.get("topic", "") != env.get("GATEWAY_KV_EVENTS_TOPIC", ""):
                out.append(
                    f"{name}: publishes on {sorted(published)} topic {config.get('topic')!r}, the gateway "
                    f"listens on {sorted(ports)} topic {env.get('GATEWAY_KV_EVENTS_TOPIC')!r}"
                )
            exposed = {p["containerPort"] for p in container.get("ports") or []}
            if not published <= exposed:
                out.append(f"{name}: KV event ports {sorted(published - exposed)} not declared on the container")
    return out


@pytest.mark.parametrize("stack", SHIPPED)
def test_kv_events_reach_the_gateway(graphs, stack):
    assert kv_wiring_problems(graphs[stack]) == []


def test_a_break_anywhere_on_the_way_is_named(graphs):
    graph = copy.deepcopy(graphs["dev"])
    vllm = next(
        r for r in graph.of_type("kubernetes:apps/v1:Deployment") if r.inputs["metadata"]["name"].startswith("vllm-")
    )
    container = vllm.inputs["spec"]["template"]["spec"]["containers"][0]
    key = "args" if "--kv-events-config" in container.get("args", []) else "command"
    args = container[key]
    i = args.index("--kv-events-config") + 1
    args[i] = args[i].replace("tcp://*:", "tcp://127.0.0.1:")
    policy = next(
        r
        for r in graph.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "vllm-ingress"
    )
    policy.inputs["spec"]["ingress"] = policy.inputs["spec"]["ingress"][:1]
    problems = kv_wiring_problems(graph)
    assert any("without a wildcard" in p for p in problems), problems
    assert any("keeps the gateway off KV event ports [5557, 5558]" in p for p in problems), problems
