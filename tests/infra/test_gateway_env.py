"""The gateway's environment, as every site of every shipped stack renders it, is what the gateway
reads: its own settings (app/gateway/settings.py) accept it whole, as its process would read it, and
the hosted providers, fallback chain, routes and prefill rate they end up with are the stack
config's. What a Kubernetes Secret supplies stands in as test values, the providers' keys built by
the function the program builds them with."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.gateway.settings import ENV_PREFIX, GatewaySettings, describe_error
from infra.config import ConfigError, StackConfig, parse
from infra.labels import GATEWAY_SELECTOR
from infra.plan.graph import Graph
from infra.plan.scheduling import pods
from infra.workloads.gateway import PROVIDERS_SECRET, REDIS_SECRET, provider_keys
from tests.stacks import SENTINELS, SHIPPED, record_raw, stack_config


def config(stack: str) -> StackConfig:
    return parse({k.split(":", 1)[1]: v for k, v in stack_config(stack).items() if k.startswith("llm-platform:")})


def gateway_containers(graph: Graph) -> dict[str, dict]:
    """{site: the gateway container}"""
    return {pod.site: pod.spec["containers"][0] for pod in pods(graph) if pod.name == "gateway"}


def process_env(container: dict, cfg: StackConfig, keys_file: Path) -> dict[str, str]:
    """The GATEWAY_* environment the gateway's process reads: literal values as rendered, each
    Secret-sourced value a test value, the mounted key file a local one, and the --port flag as
    the gateway's __main__ passes it on."""
    stand_ins = {
        (REDIS_SECRET, "url"): "redis://:sentinel@redis.test:6379/0",
        (PROVIDERS_SECRET, "keys"): provider_keys(SENTINELS["providerKeys"], cfg.gateway),
    }
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = stand_ins[(ref["name"], ref["key"])]
    env[f"{ENV_PREFIX}API_KEYS_FILE"] = str(keys_file)
    args = container["args"]
    env[f"{ENV_PREFIX}PORT"] = args[args.index("--port") + 1]
    return env


def read_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def hybrid_mismatches(s: GatewaySettings, cfg: StackConfig) -> list[str]:
    """Where the gateway's providers, keys, chain, rules or prefill rate differ from the config's."""
    gw = cfg.gateway
    got: dict[str, Any] = {
        "providers": [(p.name, p.base_url) for p in s.providers],
        "keys": sorted(s.provider_key_table()),
        "fallback": [str(hop) for hop in s.fallback_chain],
        "routes": [
            {
                "name": r.name,
                "match": _plain(r.match.model_dump()),
                "model": r.model,
                "providers": [str(h) for h in r.providers],
            }
            for r in s.routes
        ],
        "prefill": s.prefill_tokens_per_s,
    }
    want: dict[str, Any] = {
        "providers": [(p.name, p.base_url) for p in gw.providers],
        "keys": sorted(p.name for p in gw.providers),
        "fallback": list(gw.fallback),
        "routes": [
            {"name": r.name, "match": r.match.model_dump(), "model": r.model, "providers": list(r.providers)}
            for r in gw.routes
        ],
        "prefill": gw.prefill_tokens_per_second,
    }
    return [f"{key}: the gateway has {got[key]}, the config {want[key]}" for key in want if got[key] != want[key]]


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text("")
    return path


@pytest.mark.parametrize("stack", SHIPPED)
def test_the_gateway_reads_what_each_site_renders(graphs, stack, keys_file, monkeypatch):
    cfg = config(stack)
    containers = gateway_containers(graphs[stack])
    assert sorted(containers) == sorted(s.name for s in cfg.sites)
    for site, container in containers.items():
        settings = read_settings(process_env(container, cfg, keys_file), monkeypatch)
        assert hybrid_mismatches(settings, cfg) == [], site


def test_a_shipped_stack_exercises_every_part():
    # So that the test above is not vacuous: some stack has providers, a chain and each kind of rule.
    gateways = [config(stack).gateway for stack in SHIPPED]
    assert any(gw.providers and gw.fallback for gw in gateways)
    routes = [r for gw in gateways for r in gw.routes]
    assert any(r.model and r.providers for r in routes)
    assert any(r.model and not r.providers for r in routes)
    assert any(r.providers and not r.model for r in routes)


def test_every_secret_the_gateway_reads_is_on_its_site(graphs):
    for stack in SHIPPED:
        graph = graphs[stack]
        secrets = {(graph.site_of(r), r.inputs["metadata"]["name"]) for r in graph.of_type("kubernetes:core/v1:Secret")}
        for site, container in gateway_containers(graph).items():
            for e in container["env"]:
                if "valueFrom" in e:
                    assert (site, e["valueFrom"]["secretKeyRef"]["name"]) in secrets, (stack, site, e["name"])


def test_a_difference_from_the_config_is_named(graphs, keys_file, monkeypatch):
    cfg = config("prod")
    container = copy.deepcopy(next(iter(gateway_containers(graphs["prod"]).values())))
    for e in container["env"]:
        if e["name"] == "GATEWAY_ROUTES":
            e["value"] = json.dumps(json.loads(e["value"])[1:])
        if e["name"] == "GATEWAY_FALLBACK_CHAIN":
            e["value"] = ",".join(reversed(e["value"].split(",")))
    problems = hybrid_mismatches(read_settings(process_env(container, cfg, keys_file), monkeypatch), cfg)
    assert [p.split(":", 1)[0] for p in problems] == ["fallback", "routes"], problems


def test_a_rendered_env_without_a_providers_key_fails_the_gateway(graphs, keys_file, monkeypatch):
    cfg = config("prod")
    env = process_env(next(iter(gateway_containers(graphs["prod"]).values())), cfg, keys_file)
    keys = json.loads(env["GATEWAY_PROVIDER_KEYS"])
    del keys["together"]
    env["GATEWAY_PROVIDER_KEYS"] = json.dumps(keys)
    with pytest.raises(ValidationError) as err:
        read_settings(env, monkeypatch)
    assert describe_error(err.value) == "GATEWAY_PROVIDER_KEYS has no key for provider 'together'"


def test_a_route_to_an_unknown_provider_fails_at_config_time():
    raw = stack_config("prod")
    raw["llm-platform:gateway"]["routes"][0]["providers"].append("anthropic:claude-haiku")
    with pytest.raises(ConfigError) as err:
        record_raw("prod", raw, SENTINELS)
    assert (
        str(err.value) == "gateway.routes[0].providers[2]: unknown provider 'anthropic' (providers: openai, together)"
    )


def test_the_engines_provider_keys_are_checked_by_name():
    # The names come from the running program's config, as `pulumi up` hands it over.
    with pytest.raises(ConfigError) as err:
        record_raw("prod", stack_config("prod"), {**SENTINELS, "providerKeys": {"openai": "sk-SENTINEL0openai0key"}})
    assert str(err.value) == (
        "providerKeys.together: no API key for gateway.providers[1] (together); "
        "set it with `pulumi config set --secret --path 'providerKeys.together' <api key>`"
    )


def egress_closed(graph: Graph) -> list[str]:
    """Gateway sites where a NetworkPolicy selecting the gateway restricts its egress without
    letting it reach HTTPS anywhere (hosted providers have no fixed addresses)."""
    out = []
    for r in graph.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        spec = r.inputs["spec"]
        selects_gateway = spec["podSelector"].get("matchLabels", {}).items() >= GATEWAY_SELECTOR.items()
        if not selects_gateway or "Egress" not in spec.get("policyTypes", []):
            continue
        https_anywhere = any(
            not rule.get("to") and any(p.get("port") in (443, None) for p in rule.get("ports") or [{}])
            for rule in spec.get("egress") or []
        )
        if not https_anywhere:
            out.append(f"{graph.site_of(r)}: NetworkPolicy {r.inputs['metadata']['name']} keeps the gateway off 443")
    return out


@pytest.mark.parametrize("stack", SHIPPED)
def test_the_gateway_may_reach_hosted_providers(graphs, stack):
    assert egress_closed(graphs[stack]) == []


def test_an_egress_policy_that_shuts_out_443_is_named(graphs):
    graph = copy.deepcopy(graphs["prod"])
    policy = next(
        r
        for r in graph.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "gateway"
    )
    policy.inputs["spec"]["policyTypes"].append("Egress")
    policy.inputs["spec"]["egress"] = [{"ports": [{"protocol": "UDP", "port": 53}]}]
    assert len(egress_closed(graph)) == 1
    policy.inputs["spec"]["egress"].append({"ports": [{"protocol": "TCP", "port": 443}]})
    assert egress_closed(graph) == []
