"""Every bad value fails before any resource exists, with one line naming the key path."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from infra.catalog import catalog
from infra.config import ConfigError, parse
from tests.stacks import REPO, SHIPPED, stack_config


def base() -> dict:
    return {
        k.split(":", 1)[1]: copy.deepcopy(v) for k, v in stack_config("dev").items() if k.startswith("llm-platform:")
    }


def error_for(mutate) -> ConfigError:
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse(raw)
    text = str(info.value)
    assert "\n" not in text
    return info.value


@pytest.mark.parametrize("stack", SHIPPED)
def test_shipped_stacks_parse(stack):
    raw = {k.split(":", 1)[1]: v for k, v in stack_config(stack).items() if k.startswith("llm-platform:")}
    cfg = parse(raw)
    assert cfg.sites and cfg.models


def test_unknown_gpu_type_lists_known_ones():
    err = error_for(lambda r: r["sites"][0]["gpuPools"][0].update(instanceType="g9.huge"))
    assert err.path == "sites[0].gpuPools[0].instanceType"
    assert "g9.huge" in err.message
    for known in catalog("aws").instances:
        assert known in err.message


def test_negative_count():
    err = error_for(lambda r: r["sites"][0]["gpuPools"][0]["nodes"].update(min=-1))
    assert err.path == "sites[0].gpuPools[0].nodes.min"
    assert "greater than or equal to 0" in err.message


def test_min_above_max():
    err = error_for(lambda r: r["models"][0]["replicas"].update(min=5, max=2))
    assert err.path == "models[0].replicas"
    assert "min (5) must be <= max (2)" in err.message


def test_tensor_parallel_must_divide_gpus_per_node():
    def mutate(r):
        r["sites"][0]["gpuPools"][0]["instanceType"] = "g6.12xlarge"  # 4 GPUs
        r["models"][0]["tensorParallelSize"] = 3

    err = error_for(mutate)
    assert err.path == "models[0].tensorParallelSize"
    assert "valid: 1, 2, 4" in err.message


def test_tensor_parallel_larger_than_node():
    err = error_for(lambda r: r["models"][0].update(tensorParallelSize=2))
    assert err.path == "models[0].tensorParallelSize"
    assert "valid: 1" in err.message


def test_unknown_cloud():
    err = error_for(lambda r: r["sites"][0].update(cloud="oracle"))
    assert err.path == "sites[0].cloud"
    assert "'aws'" in err.message and "'gcp'" in err.message and "'azure'" in err.message


def test_missing_region():
    err = error_for(lambda r: r["sites"][0].pop("region"))
    assert err.path == "sites[0].region"
    assert "missing" in err.message


def test_unknown_key_is_named():
    err = error_for(lambda r: r["sites"][0]["gpuPools"][0].update(gpuCount=4))
    assert err.path == "sites[0].gpuPools[0].gpuCount"
    assert "unknown key" in err.message


def test_unknown_top_level_key():
    err = error_for(lambda r: r.update(site=[]))
    assert err.path == "llm-platform:site"


def test_model_pool_must_exist_on_each_site():
    err = error_for(lambda r: r["models"][0].update(gpuPool="h100"))
    assert err.path == "sites[0].models[0]"
    assert "'h100'" in err.message and "l4-spot" in err.message


def test_site_model_must_exist():
    err = error_for(lambda r: r["sites"][0]["models"].append("nope"))
    assert err.path == "sites[0].models[1]"


def test_duplicate_pool_names():
    err = error_for(lambda r: r["sites"][0]["gpuPools"].append(copy.deepcopy(r["sites"][0]["gpuPools"][0])))
    assert err.path == "sites[0].gpuPools[1].name"
    assert "duplicate" in err.message


def test_unserved_model():
    def mutate(r):
        extra = copy.deepcopy(r["models"][0])
        extra["name"] = "orphan"
        r["models"].append(extra)

    err = error_for(mutate)
    assert err.path == "models[1]"
    assert "served by no site" in err.message


def test_api_open_to_the_world_is_refused():
    err = error_for(lambda r: r["sites"][0].update(apiAllowedCidrs=["0.0.0.0/0"]))
    assert err.path == "sites[0].apiAllowedCidrs"


def test_extra_args_must_be_real_vllm_flags():
    err = error_for(lambda r: r["models"][0].update(extraArgs=["--swap-space", "4"]))
    assert err.path == "models[0].extraArgs"
    assert "--swap-space" in err.message and "vLLM 0.33" in err.message


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-num-seqs-x", "64"], "did you mean --max-num-seqs"),
        (["--max-num-seq", "64"], "--max-num-seq abbreviates --max-num-seqs; write it in full"),
        (["--dtype", "fp64"], "--dtype takes one of auto, bfloat16"),
        (["--scheduling-policy=lifo"], "--scheduling-policy takes one of fcfs, priority; not 'lifo'"),
        (["--max-num-seqs"], "--max-num-seqs takes a value"),
        (["--enforce-eager=yes"], "--enforce-eager is a switch"),
        (["--enforce-eager", "64"], "'64' is neither a flag nor the value of one"),
        (["--max-model-len.x", "1"], "--max-model-len.x is not a `vllm serve` flag"),
        (["-tp", "2"], "-tp is set from the model's own keys"),
        (["--served_model_name", "other"], "--served_model_name is set from the model's own keys"),
        (["--hf-token", "hf_x"], "--hf-token would put a secret in the pod spec"),
        (["--api-key", "k"], "--api-key would put a secret in the pod spec"),
    ],
)
def test_extra_args_vllm_would_refuse_are_refused(args, says):
    err = error_for(lambda r: r["models"][0].update(extraArgs=args))
    assert err.path == "models[0].extraArgs"
    assert says in err.message, err.message


def test_extra_args_accept_what_vllm_reads():
    raw = base()
    accepted = [
        "--max-num-seqs",
        "64",
        "--no-enable-prefix-caching",
        "--disable-chunked-prefill",
        "--kv-cache-dtype=fp8",
        "--max_num_batched_tokens",
        "8192",
        "-O3",
        "--compilation-config.cudagraph_mode",
        "FULL",
    ]
    raw["models"][0]["extraArgs"] = accepted
    assert parse(raw).models[0].extra_args == accepted


def test_extra_args_cannot_override_derived_flags():
    err = error_for(lambda r: r["models"][0].update(extraArgs=["--port", "9000"]))
    assert "--port" in err.message


def test_latest_image_refused():
    err = error_for(lambda r: r["images"].update(vllm="vllm/vllm-openai:latest"))
    assert err.path == "images.vllm"


def test_tag_values_follow_label_rules():
    err = error_for(lambda r: r["tags"].update(team="ML Platform"))
    assert err.path == "tags"


def test_budget_share_over_total():
    err = error_for(lambda r: r["budget"].update(byCloud={"aws": 10_000}))
    assert err.path == "budget.byCloud"


def test_cli_exits_2_with_one_line(tmp_path):
    raw = stack_config("dev")
    raw["llm-platform:sites"][0]["gpuPools"][0]["nodes"]["min"] = -3
    import yaml

    (tmp_path / "Pulumi.broken.yaml").write_text(yaml.safe_dump({"config": raw}))
    proc = subprocess.run(
        [sys.executable, "-m", "infra", "plan", "broken"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "config error: sites[0].gpuPools[0].nodes.min: Input should be greater than or equal to 0 (got -3)"
    ]
    assert not (tmp_path / "build").exists()


def test_cli_unknown_stack(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "infra", "plan", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Pulumi.nope.yaml" in proc.stderr and "dev" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_schema_file_is_current():
    import json

    from infra.config import json_schema

    shipped = json.loads((REPO / "config.schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: .venv/bin/python -m infra schema config.schema.json"
    assert "gpuPools" in json.dumps(shipped)


def _on(cloud: str, raw: dict, **site) -> dict:
    systems = {"gcp": "n2-standard-4", "azure": "Standard_D4s_v5"}
    gpus = {"gcp": "g2-standard-8", "azure": "Standard_NC4as_T4_v3"}
    s = raw["sites"][0]
    s.update(cloud=cloud, region={"gcp": "us-central1", "azure": "eastus"}[cloud])
    s["systemPool"]["instanceType"] = systems[cloud]
    s["gpuPools"][0]["instanceType"] = gpus[cloud]
    s.update(site)
    return raw


GCP_BLOCK = {"project": "llm-platform-test", "billingAccount": "01A2B3-C4D5E6-F7A8B9"}


def test_gcp_site_needs_its_project_and_billing_account():
    err = error_for(lambda r: _on("gcp", r))
    assert err.path == "sites[0].gcp"
    assert "project" in err.message and "billingAccount" in err.message


def test_gcp_billing_account_format():
    err = error_for(lambda r: _on("gcp", r, gcp={**GCP_BLOCK, "billingAccount": "123"}))
    assert err.path == "sites[0].gcp.billingAccount"


def test_gcp_zones_belong_to_the_region():
    err = error_for(lambda r: _on("gcp", r, gcp={**GCP_BLOCK, "gpuZones": ["europe-west4-a"]}))
    assert err.path == "sites[0].gcp.gpuZones[0]"
    assert "us-central1" in err.message


def test_cloud_block_only_on_its_cloud():
    err = error_for(lambda r: r["sites"][0].update(gcp=GCP_BLOCK))
    assert err.path == "sites[0].gcp"
    assert "only for cloud gcp" in err.message


def test_gcp_and_azure_sites_parse():
    raw = _on("gcp", base(), gcp={**GCP_BLOCK, "gpuZones": ["us-central1-a"]})
    assert parse(raw).sites[0].gcp.billing_account == GCP_BLOCK["billingAccount"]
    raw = _on("azure", base(), azure={"subscriptionId": "00000000-0000-4000-8000-000000000001"})
    assert parse(raw).sites[0].azure.deployer_principal_type == "User"
    assert parse(_on("azure", base())).sites[0].azure is None


def test_azure_subscription_is_a_uuid():
    err = error_for(lambda r: _on("azure", r, azure={"subscriptionId": "my-sub"}))
    assert err.path == "sites[0].azure.subscriptionId"


def test_azure_pool_names_must_stay_distinct_when_shortened():
    def mutate(r):
        _on("azure", r)
        second = copy.deepcopy(r["sites"][0]["gpuPools"][0])
        r["sites"][0]["gpuPools"][0]["name"] = "a100-on-demand-1"
        second["name"] = "a100-on-demand-2"
        r["sites"][0]["gpuPools"].append(second)

    err = error_for(mutate)
    assert err.path == "sites[0].gpuPools[1].name"
    assert "a100ondemand" in err.message


def test_azure_budget_notification_limit():
    def mutate(r):
        _on("azure", r)
        r["budget"].update(actualThresholdsPct=[25, 50, 75, 100], forecastThresholdsPct=[90, 100])

    err = error_for(mutate)
    assert err.path == "budget.actualThresholdsPct"
    assert "5" in err.message


# -- hosted providers and routing rules (gateway.providers, fallback, routes; providerKeys) ----------

PROVIDERS = [
    {"name": "openai", "baseUrl": "https://api.openai.com/v1"},
    {"name": "together", "baseUrl": "https://api.together.ai/v1"},
]
KEYS = {"openai": {"secure": "v1:a"}, "together": {"secure": "v1:b"}}
SET_KEY = "pulumi config set --secret --path 'providerKeys.{0}' <api key>"


def hybrid(raw: dict, **gateway) -> dict:
    """dev with prod's two providers and their keys, and these gateway keys."""
    raw["gateway"].update(providers=copy.deepcopy(PROVIDERS), **gateway)
    raw["providerKeys"] = copy.deepcopy(KEYS)
    return raw


def route(**fields) -> dict:
    return {"name": "r", "model": "qwen2-5-1-5b", **fields}


def prod() -> dict:
    return {k.split(":", 1)[1]: v for k, v in stack_config("prod").items() if k.startswith("llm-platform:")}


def test_providers_chain_and_routes_parse():
    cfg = parse(
        hybrid(
            base(),
            fallback=["openai:gpt-4o-mini", "together"],
            routes=[
                route(name="alias", match={"models": ["gpt-4o-mini"]}),
                {"name": "long", "match": {"tiers": ["free"], "minPromptTokens": 8000}, "providers": ["together"]},
            ],
            prefillTokensPerSecond=4000,
        )
    )
    gw = cfg.gateway
    assert [p.name for p in gw.providers] == ["openai", "together"]
    assert gw.fallback == ["openai:gpt-4o-mini", "together"]
    assert gw.routes[1].match.min_prompt_tokens == 8000 and gw.routes[0].providers == []
    assert gw.prefill_tokens_per_second == 4000


def test_a_key_for_a_provider_not_configured_is_no_error():
    # Only the configured providers' keys reach the cluster (infra/workloads/gateway.py provider_keys).
    raw = hybrid(base())
    raw["providerKeys"]["retired"] = {"secure": "v1:c"}
    assert [p.name for p in parse(raw).gateway.providers] == ["openai", "together"]


@pytest.mark.parametrize(
    "mutate, text",
    [
        (
            lambda r: hybrid(r, routes=[route(providers=["openai", "anthropic:claude-haiku"])]),
            "gateway.routes[0].providers[1]: unknown provider 'anthropic' (providers: openai, together)",
        ),
        (
            lambda r: hybrid(r, fallback=["openai", "ghost:gpt-4o"]),
            "gateway.fallback[1]: unknown provider 'ghost' (providers: openai, together)",
        ),
        (
            lambda r: r["gateway"].update(fallback=["openai"]),
            "gateway.fallback[0]: unknown provider 'openai' (no gateway.providers configured)",
        ),
        (
            lambda r: hybrid(r, routes=[route(model="llama-70b")]),
            "gateway.routes[0].model: unknown model 'llama-70b'; models: qwen2-5-1-5b",
        ),
        (
            lambda r: hybrid(r, routes=[route(), route(providers=["openai"])]),
            "gateway.routes[1].name: duplicate name 'r'; each must be unique",
        ),
        (
            lambda r: (hybrid(r), r["gateway"]["providers"].append(dict(PROVIDERS[0]))),
            "gateway.providers[2].name: duplicate name 'openai'; each must be unique",
        ),
        (
            lambda r: hybrid(r, routes=[route(match={"minPromptTokens": 9000, "maxPromptTokens": 100})]),
            "gateway.routes[0].match: minPromptTokens (9000) is above maxPromptTokens (100)",
        ),
        (
            lambda r: hybrid(r, routes=[{"name": "r", "match": {"tiers": ["free"]}}]),
            "gateway.routes[0]: route 'r' sets neither model nor providers; give one or both",
        ),
        (
            lambda r: hybrid(r, fallback=["openai gpt-4o"]),
            "gateway.fallback[0]: 'openai gpt-4o' is not <provider> or <provider>:<model>, like openai:gpt-4o-mini",
        ),
        (
            lambda r: hybrid(r, routes=[route(providers=["OpenAI"])]),
            "gateway.routes[0].providers[0]: 'OpenAI' is not <provider> or <provider>:<model>, like openai:gpt-4o-mini",
        ),
        (
            lambda r: hybrid(r, fallback=["openai:gpt-4o,together"]),
            "gateway.fallback[0]: 'openai:gpt-4o,together' is not <provider> or <provider>:<model>, "
            "like openai:gpt-4o-mini",
        ),
        (
            lambda r: (hybrid(r), r["gateway"]["providers"][0].update(baseUrl="http://api.openai.com/v1")),
            "gateway.providers[0].baseUrl: 'http://api.openai.com/v1' must be an https base URL ending in /v1, "
            "like https://api.openai.com/v1",
        ),
        (
            lambda r: (hybrid(r), r["gateway"]["providers"][1].update(baseUrl="https://api.together.ai")),
            "gateway.providers[1].baseUrl: 'https://api.together.ai' must be an https base URL ending in /v1, "
            "like https://api.openai.com/v1",
        ),
        (
            lambda r: (hybrid(r), r["gateway"]["providers"][1].update(name="Together")),
            "gateway.providers[1].name: got 'Together'; must match ^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$",
        ),
        (
            lambda r: hybrid(r, routes=[route(match={"tiers": ["Free"]})]),
            "gateway.routes[0].match.tiers[0]: got 'Free'; must match ^[a-z0-9][a-z0-9_-]{0,31}$",
        ),
        (
            lambda r: hybrid(r, routes=[route(match={"maxTtftBudgetMs": 0})]),
            "gateway.routes[0].match.maxTtftBudgetMs: Input should be greater than 0 (got 0)",
        ),
        (
            lambda r: (hybrid(r), r.pop("providerKeys")),
            "providerKeys: not set, and gateway.providers needs an API key for each provider; "
            f"set each with `{SET_KEY.format('openai')}`",
        ),
        (
            lambda r: (hybrid(r), r["providerKeys"].pop("together")),
            "providerKeys.together: no API key for gateway.providers[1] (together); "
            f"set it with `{SET_KEY.format('together')}`",
        ),
        (
            lambda r: r["gateway"].update(fallback={"baseUrl": "https://api.openai.com/v1"}),
            "gateway.fallback: {baseUrl} is replaced by a chain: list the provider under gateway.providers as "
            "{name, baseUrl} and name it here, e.g. fallback: [openai]",
        ),
        (
            lambda r: r.update(fallbackApiKey=None),
            "llm-platform:fallbackApiKey: replaced by providerKeys: `pulumi config rm fallbackApiKey`, then "
            f"`{SET_KEY.format('<provider>')}` for each of gateway.providers",
        ),
    ],
)
def test_hybrid_routing_mistakes_fail_with_one_line(mutate, text):
    assert str(error_for(mutate)) == text


def test_a_route_model_every_site_must_serve():
    raw = prod()
    raw["gateway"]["routes"][1]["model"] = "qwen2-5-32b-awq"
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert str(err.value) == (
        "gateway.routes[1].model: model 'qwen2-5-32b-awq' is not served by site 'aws-usw2' "
        "(its models: llama-3-1-8b); every site's gateway applies every route"
    )
