"""The same invariants over stack configs hypothesis makes up: any valid config, with sites
on any of the three clouds, gives a graph whose GPU pods schedule, whose taggable resources
carry the cost tags (labels on GCP), whose Redis is private, whose secrets stay secret, and
whose gateways read the hosted providers, chain and routing rules the config gives."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.gateway.settings import ENV_PREFIX, GatewaySettings
from infra.catalog import catalog
from infra.catalog.vllm_flags import vllm_cli
from infra.config import DERIVED_DESTS, SECRET_DESTS, StackConfig, parse
from infra.plan.graph import SECRET
from infra.plan.scheduling import gpu_pools, pods, unschedulable_gpu_pods
from tests.infra.invariants import (
    budget_mismatches,
    leaked_values,
    missing_redis,
    open_redis,
    provider_mismatches,
    untagged,
)
from tests.infra.test_gateway_env import gateway_containers, hybrid_mismatches, process_env
from tests.stacks import SENTINELS, record_raw

CLOUDS = ("aws", "gcp", "azure")
GPU_TYPES = {cloud: sorted(catalog(cloud).instances) for cloud in CLOUDS}
REGIONS = {
    "aws": ["us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1"],
    "gcp": ["us-central1", "europe-west4", "asia-northeast1"],
    "azure": ["eastus", "westeurope", "japaneast"],
}
SYSTEM_TYPES = {"aws": "m7i.large", "gcp": "n2-standard-4", "azure": "Standard_D4s_v5"}
# Flags a model's extraArgs may carry, from the catalog of the pinned vLLM's own parser:
# switches (every spelling: --no-, --disable-, short aliases) and flags with a fixed set of
# values. The rest take values whose type only vLLM knows.
_FLAGS = {o: f for o, f in vllm_cli().flags.items() if f.dest not in DERIVED_DESTS | SECRET_DESTS.keys()}
SWITCHES = sorted(o for o, f in _FLAGS.items() if f.value is None)
CHOICES = sorted((o, f.choices) for o, f in _FLAGS.items() if f.choices and f.value == "one")


@st.composite
def extra_args(draw) -> list[str]:
    """`vllm serve` flags as a user writes them: either spelling of a name, `--x v` or `--x=v`."""
    args: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            option = draw(st.sampled_from(SWITCHES))
            args.append(option)
            continue
        option, choices = draw(st.sampled_from(CHOICES))
        if option.startswith("--") and draw(st.booleans()):
            option = "--" + option[2:].replace("-", "_")
        value = draw(st.sampled_from(choices))
        args += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    if draw(st.integers(0, 4)) == 0:
        args.append(f"-O{draw(st.integers(0, 3))}")
    return args


def _cloud_block(draw, cloud: str) -> dict:
    if cloud == "gcp":
        return {
            "gcp": {
                "project": draw(st.sampled_from(["llm-gen-a", "llm-gen-b1"])),
                "billingAccount": "01A2B3-C4D5E6-F7A8B9",
            }
        }
    if cloud == "azure" and draw(st.booleans()):
        return {
            "azure": {
                "subscriptionId": "00000000-0000-4000-8000-000000000002",
                "deployerPrincipalType": "ServicePrincipal",
            }
        }
    return {}


PROVIDERS = {"openai": "https://api.openai.com/v1", "together": "https://api.together.ai/v1"}


@st.composite
def hops(draw, providers: list[str]) -> list[str]:
    names = draw(st.lists(st.sampled_from(providers), min_size=1, max_size=3))
    return [
        f"{n}:{draw(st.sampled_from(['gpt-4o-mini', 'org/model-7b']))}" if draw(st.booleans()) else n for n in names
    ]


@st.composite
def gateway_block(draw, models: list[str]) -> dict:
    """Hosted providers, a fallback chain and routing rules, in the stack file's shape."""
    providers = draw(st.lists(st.sampled_from(sorted(PROVIDERS)), unique=True, max_size=2))
    block: dict = {"providers": [{"name": n, "baseUrl": PROVIDERS[n]} for n in providers]}
    if providers:
        block["fallback"] = draw(st.just([]) | hops(providers))
    routes = []
    for r in range(draw(st.integers(0, 3))):
        match = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "tiers": st.lists(st.sampled_from(["free", "pro"]), min_size=1, unique=True),
                    "models": st.lists(st.sampled_from(["gpt-4o-mini", *models]), min_size=1, unique=True),
                    "tasks": st.lists(st.sampled_from(["summarize", "code"]), min_size=1, unique=True),
                    "minPromptTokens": st.integers(0, 1000),
                    "maxTtftBudgetMs": st.integers(1, 5000),
                },
            )
        )
        route: dict = {"name": f"rule-{r}", "match": match}
        if not providers or draw(st.booleans()):
            route["model"] = draw(st.sampled_from(models))
        if providers and (draw(st.booleans()) or "model" not in route):
            route["providers"] = draw(hops(providers))
        routes.append(route)
    block["routes"] = routes
    block["prefillTokensPerSecond"] = draw(st.sampled_from([2500, 10_000, 40_000.5]))
    return block


@st.composite
def stack_configs(draw):
    pool_names = draw(st.lists(st.sampled_from(["a10", "l4", "l40s", "big"]), min_size=1, max_size=3, unique=True))
    site_count = draw(st.integers(1, 3))
    sites = []
    gpus_by_pool: dict[str, int] = {}
    for s in range(site_count):
        cloud = draw(st.sampled_from(CLOUDS))
        pools = []
        for name in pool_names:
            itype = draw(st.sampled_from(GPU_TYPES[cloud]))
            gpus = catalog(cloud).instances[itype].gpus
            gpus_by_pool[name] = min(gpus_by_pool.get(name, gpus), gpus)
            low = draw(st.integers(0, 2))
            pools.append(
                {
                    "name": name,
                    "instanceType": itype,
                    "spot": draw(st.booleans()),
                    "nodes": {"min": low, "max": low + draw(st.integers(1, 4))},
                }
            )
        sites.append(
            {
                "name": f"site-{s}",
                "cloud": cloud,
                "region": draw(st.sampled_from(REGIONS[cloud])),
                "networkCidr": f"10.{s * 16}.0.0/16",
                "apiAllowedCidrs": draw(st.sampled_from([[], ["198.51.100.0/24"]])),
                "natPerZone": draw(st.booleans()),
                "systemPool": {"instanceType": SYSTEM_TYPES[cloud], "nodes": {"min": 1, "max": 3}},
                "gpuPools": pools,
                "redis": {
                    "size": draw(st.sampled_from(["small", "medium", "large"])),
                    "replicas": draw(st.integers(0, 2)),
                },
                "models": [],
                **_cloud_block(draw, cloud),
            }
        )
    models = []
    for m in range(draw(st.integers(1, 3))):
        pool = draw(st.sampled_from(pool_names))
        gpus = gpus_by_pool[pool]
        tp = draw(st.sampled_from([d for d in (1, 2, 4, 8) if gpus % d == 0 and d <= gpus]))
        low = draw(st.integers(0, 2))
        models.append(
            {
                "name": f"model-{m}",
                "hfRepo": "org/model",
                "paramsBillion": draw(st.floats(0.5, 70)),
                "tensorParallelSize": tp,
                "maxModelLen": draw(st.sampled_from([2048, 8192, 32768])),
                "gpuPool": pool,
                "replicas": {"min": low, "max": low + draw(st.integers(1, 3))},
                "quantization": draw(st.sampled_from([None, "awq", "fp8"])),
                "extraArgs": draw(extra_args()),
            }
        )
        for site in sites:
            site["models"].append(f"model-{m}")
    amount = draw(st.floats(100, 1e6))
    used = sorted({s["cloud"] for s in sites}, key=CLOUDS.index)
    # byCloud for some of the stack's clouds (or none), within the whole amount.
    listed = draw(st.lists(st.sampled_from(used), unique=True, max_size=len(used)))
    by_cloud = {c: round(amount * draw(st.floats(0.0, 1.0)) / (len(used) + 1), 2) for c in listed}
    return {
        "llm-platform:budget": {"monthlyAmount": amount, "emails": ["a@example.com"], "byCloud": by_cloud},
        "llm-platform:tags": {"team": "t", "env": "gen", "cost-center": "c1"},
        "llm-platform:models": models,
        "llm-platform:images": {"dockerHubUser": "genuser"},
        "llm-platform:gateway": draw(gateway_block([m["name"] for m in models])),
        "llm-platform:sites": sites,
    }


def parse_generated(raw: dict) -> StackConfig:
    """A generated stack file's config, with the provider keys its secrets would give."""
    return parse({**{k.split(":", 1)[1]: v for k, v in raw.items()}, "providerKeys": SENTINELS["providerKeys"]})


_KEYS_FILE = Path(tempfile.mkdtemp()) / "keys"
_KEYS_FILE.write_text("")


def gateway_reads(env: dict[str, str]) -> GatewaySettings:
    """The gateway's settings from the environment its process gets (as init values, which
    come before anything in this process's own environment)."""
    return GatewaySettings(**{name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items()})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack_configs())
def test_generated_stacks_hold_the_invariants(raw):
    graph = record_raw("gen", raw, SENTINELS)
    assert unschedulable_gpu_pods(graph) == []
    assert len(gpu_pools(graph)) == sum(len(s["gpuPools"]) for s in raw["llm-platform:sites"])
    gpu_pods = [p for p in pods(graph) if p.gpus]
    assert len(gpu_pods) == sum(len(s["models"]) for s in raw["llm-platform:sites"])
    text = str(graph.to_plan())
    for value in (
        "hf_SENTINEL0hf0token0value",
        "sk-SENTINEL0openai0key",
        "SENTINEL0together0key",
        "sk-SENTINEL0team0a0key",
        "dckr_pat_SENTINEL0docker0hub",
        *leaked_values(graph),
    ):
        assert value not in text
    for r in graph.of_type("kubernetes:core/v1:Secret"):
        assert r.inputs["stringData"] == SECRET
    assert untagged(graph) == []
    assert missing_redis(graph) == [] and open_redis(graph) == []
    assert provider_mismatches(graph) == []
    assert budget_mismatches(graph) == []
    cfg = parse_generated(raw)
    for site, container in gateway_containers(graph).items():
        assert hybrid_mismatches(gateway_reads(process_env(container, cfg, _KEYS_FILE)), cfg) == [], site
