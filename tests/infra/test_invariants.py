"""Invariants over the whole recorded graph of every shipped stack."""

from __future__ import annotations

import json
import re

import pytest

from infra.catalog.vllm_flags import vllm_cli
from infra.plan import report
from infra.plan.graph import SECRET, Graph
from infra.plan.scheduling import gpu_pools, pods, unschedulable_gpu_pods, why_not
from infra.workloads.monitoring import BUDGET_RECORD
from tests.infra.invariants import (
    COST_TAGS,
    budget_mismatches,
    leaked_values,
    missing_redis,
    open_redis,
    provider_mismatches,
    site_clouds,
    tag_input,
    untagged,
    vllm_upstream,
)
from tests.stacks import SENTINELS, SHIPPED, record_raw, stack_config


def _sentinel_strings() -> list[str]:
    out = []
    for value in SENTINELS.values():
        out += list(value.values()) if isinstance(value, dict) else [value]
    return out


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_gpu_pod_is_schedulable(graphs, stack):
    graph = graphs[stack]
    gpu_pods = [p for p in pods(graph) if p.gpus]
    assert gpu_pods, "no pod asks for nvidia.com/gpu"
    assert unschedulable_gpu_pods(graph) == []


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_schedulability_check_catches_a_broken_pod(graphs, cloud):
    graph = graphs["prod"]
    sites = {s for s, c in site_clouds(graph).items() if c == cloud}
    pool = next(p for p in gpu_pools(graph) if p.site in sites and p.spot)
    pod = next(p for p in pods(graph) if p.gpus and p.site == pool.site and why_not(p, pool) is None)
    assert why_not(pod, pool) is None
    untolerated = type(pod)(pod.site, pod.name, {**pod.spec, "tolerations": []})
    assert "not tolerated" in why_not(untolerated, pool)
    greedy = json.loads(json.dumps(pod.spec))
    greedy["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = str(pool.gpus + 1)
    assert "GPUs" in why_not(type(pod)(pod.site, pod.name, greedy), pool)
    wrong_pool = {**pod.spec, "nodeSelector": {"llm-platform.io/pool": "elsewhere"}}
    assert "nodeSelector" in why_not(type(pod)(pod.site, pod.name, wrong_pool), pool)


@pytest.mark.parametrize("stack", SHIPPED)
def test_no_secret_in_plan_or_manifests(graphs_with_secrets, stack, tmp_path):
    graph = graphs_with_secrets[stack]
    written = report.write(graph, tmp_path)
    texts = [written["plan"].read_text()] + [p.read_text() for p in written["manifests"].rglob("*.yaml")]
    # The generated Redis AUTH token must not leak either; read it from the mock's answer.
    token_inputs = [r for r in graph if r.type == "random:index/randomPassword:RandomPassword"]
    assert token_inputs
    generated = leaked_values(graph)
    for text in texts:
        for sentinel in _sentinel_strings():
            assert sentinel not in text
        for value in generated:
            assert value not in text
        assert "offline-secret" not in text
    secrets = [r for r in graph if r.type == "kubernetes:core/v1:Secret"]
    assert {r.inputs["metadata"]["name"] for r in secrets} >= {"hf-token", "gateway-api-keys", "gateway-redis"}
    for r in secrets:
        assert r.inputs["stringData"] == SECRET
    assert graph.outputs and all(v == SECRET for k, v in graph.outputs.items() if k.endswith("kubeconfig"))


@pytest.mark.parametrize("stack", SHIPPED)
def test_no_secret_as_env_literal(graphs_with_secrets, stack):
    secretish = re.compile(r"TOKEN$|KEYS?$|PASSWORD|SECRET|REDIS_URL")
    for pod in pods(graphs_with_secrets[stack]):
        for container in pod.spec["containers"]:
            for env in container.get("env", []):
                if secretish.search(env["name"]) and not env["name"].endswith("_FILE"):
                    assert "valueFrom" in env and "value" not in env, f"{pod.name}: {env['name']} is a literal"


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_taggable_resource_has_cost_tags(graphs, stack):
    graph: Graph = graphs[stack]
    clouds = set(site_clouds(graph).values())
    for prefix, cloud in (("aws:", "aws"), ("gcp:", "gcp"), ("azure-native:", "azure")):
        taggable = [r for r in graph if r.custom and r.type.startswith(prefix) and tag_input(r.type)]
        assert (len(taggable) > 5) == (cloud in clouds), f"{cloud}: {len(taggable)} taggable resources"
    assert untagged(graph) == []
    # Providers tag (label) what a resource forgets, instances and disks included.
    for provider in graph.of_type("pulumi:providers:aws"):
        assert set(COST_TAGS) <= set(json.loads(provider.inputs["defaultTags"])["tags"])
    for provider in graph.of_type("pulumi:providers:gcp"):
        assert set(COST_TAGS) <= set(json.loads(provider.inputs["defaultLabels"]))


def test_tag_check_can_fail():
    assert tag_input("aws:ec2/vpc:Vpc") == "tags"
    assert tag_input("aws:iam/rolePolicyAttachment:RolePolicyAttachment") is None
    assert tag_input("gcp:redis/instance:Instance") == "labels"
    assert tag_input("gcp:container/cluster:Cluster") == "resourceLabels"
    assert tag_input("gcp:compute/network:Network") is None
    assert tag_input("azure-native:containerservice:ManagedCluster") == "tags"
    assert tag_input("azure-native:network:Subnet") is None
    graph = Graph(stack="s")
    from infra.plan.graph import Resource

    graph.add(Resource("urn:x", "gcp:redis/instance:Instance", "r", None, None, True, (), {"labels": {"team": "t"}}))
    assert untagged(graph) and "lacks" in untagged(graph)[0]


@pytest.mark.parametrize("stack", SHIPPED)
def test_redis_never_open_to_the_internet(graphs, stack):
    graph = graphs[stack]
    assert missing_redis(graph) == []
    assert open_redis(graph) == []


def test_redis_check_can_fail(graphs):
    from dataclasses import replace

    graph = graphs["prod"]
    broken = Graph(stack="prod")
    for r in graph:
        if r.type == "azure-native:redisenterprise:RedisEnterprise":
            r = replace(r, inputs={**r.inputs, "publicNetworkAccess": "Enabled"})
        if r.type == "gcp:redis/instance:Instance":
            r = replace(r, inputs={**r.inputs, "connectMode": "DIRECT_PEERING"})
        broken.add(r)
    problems = open_redis(broken)
    assert any("public network access" in p for p in problems)
    assert any("private service access" in p for p in problems)


def test_dev_gpu_pools_scale_to_zero(graphs):
    pools = gpu_pools(graphs["dev"])
    assert pools
    assert all(p.min_nodes == 0 for p in pools)


@pytest.mark.parametrize("stack", SHIPPED)
def test_kubernetes_objects_use_a_site_provider(graphs, stack):
    graph = graphs[stack]
    assert any(r.custom and r.type.startswith("kubernetes:") for r in graph)
    assert provider_mismatches(graph) == []


@pytest.mark.parametrize("stack", SHIPPED)
def test_vllm_runs_the_release_its_flags_are_checked_against(graphs, stack):
    # The commands themselves go through that release's parser (tests/infra/test_vllm_parser.py).
    graph = graphs[stack]
    checked = 0
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "vllm":
                assert vllm_upstream(graph, r, c).endswith(f"/vllm/vllm-openai:v{vllm_cli().version}")
                checked += 1
    assert checked


@pytest.mark.parametrize("stack", SHIPPED)
def test_plan_json_shape(graphs, stack, tmp_path):
    plan = json.loads(report.write(graphs[stack], tmp_path)["plan"].read_text())
    assert plan["stack"] == stack
    urns = {r["urn"] for r in plan["resources"]}
    assert len(urns) == len(plan["resources"])
    for r in plan["resources"]:
        assert set(r) == {"urn", "type", "name", "parent", "provider", "inputs", "options"}
        assert isinstance(r["inputs"], dict) and isinstance(r["options"], dict)
        # Every URN an option names is a resource of the same plan.
        assert set(r["options"].get("dependsOn", [])) <= urns
        assert r["provider"] is None or r["provider"].startswith("urn:pulumi:")


def test_prod_plan_holds_every_cloud(graphs, tmp_path):
    """What `make plan STACK=prod` writes holds, per cloud: the cluster, a GPU node pool with a
    GPU type, the managed Redis, the budget, and the vLLM and gateway Deployments on that
    cluster's Kubernetes provider."""
    from tests.infra.invariants import BUDGET_TYPES, CLUSTER_TYPES, GPU_POOL_TYPES, REDIS_TYPES

    plan = json.loads(report.write(graphs["prod"], tmp_path)["plan"].read_text())
    by_urn = {r["urn"]: r for r in plan["resources"]}

    def site_of(entry: dict) -> str:
        while entry["parent"] in by_urn:
            entry = by_urn[entry["parent"]]
        return entry["name"]

    def of_type(typ: str) -> list[dict]:
        return [r for r in plan["resources"] if r["type"] == typ]

    gpu_type = {
        "aws": lambda r: r["inputs"]["amiType"].endswith("NVIDIA") and r["inputs"]["instanceTypes"],
        "gcp": lambda r: (
            (r["inputs"]["nodeConfig"].get("guestAccelerators") or [{}])[0].get("type", "").startswith("nvidia-")
        ),
        "azure": lambda r: r["inputs"]["vmSize"].startswith("Standard_N") and "gpuProfile" in r["inputs"],
    }
    for cloud in ("aws", "gcp", "azure"):
        clusters = of_type(CLUSTER_TYPES[cloud])
        assert clusters, f"{cloud}: no cluster"
        assert any(gpu_type[cloud](p) for p in of_type(GPU_POOL_TYPES[cloud])), f"{cloud}: no GPU node pool"
        assert of_type(REDIS_TYPES[cloud]) and len(of_type(BUDGET_TYPES[cloud])) == 1
        for cluster in clusters:
            site = site_of(cluster)
            providers = [p["urn"] for p in of_type("pulumi:providers:kubernetes") if site_of(p) == site]
            assert len(providers) == 1
            on_cluster = {
                d["inputs"]["metadata"]["name"]
                for d in of_type("kubernetes:apps/v1:Deployment")
                if d["provider"] == providers[0] and site_of(d) == site
            }
            assert "gateway" in on_cluster and any(n.startswith("vllm-") for n in on_cluster), f"{site}: {on_cluster}"
    assert {r["type"] for r in plan["resources"] if r["type"].startswith("pulumi:providers:")} >= {
        "pulumi:providers:aws",
        "pulumi:providers:gcp",
        "pulumi:providers:azure-native",
        "pulumi:providers:kubernetes",
    }


@pytest.mark.parametrize("stack", SHIPPED)
def test_kubeconfigs_are_secrets(graphs, stack):
    providers = graphs[stack].of_type("pulumi:providers:kubernetes")
    assert providers and all(p.inputs["kubeconfig"] == SECRET for p in providers)


def test_aks_kubeconfig_signs_in_through_entra_id():
    import base64

    import yaml

    from infra.platform.azure import AKS_AAD_SERVER_APP, _kubelogin_config

    cluster = {"server": "https://c.hcp.eastus.azmk8s.io:443", "certificate-authority-data": "Q0E="}
    aks = {"clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": {"token": "local-token"}}]}
    text = _kubelogin_config(
        "c", [{"name": "clusterUser", "value": base64.b64encode(yaml.safe_dump(aks).encode()).decode()}]
    )
    config = json.loads(text)
    assert config["clusters"][0]["cluster"] == cluster
    assert config["users"][0]["user"]["exec"]["command"] == "kubelogin"
    assert AKS_AAD_SERVER_APP in config["users"][0]["user"]["exec"]["args"]
    assert "local-token" not in text


def test_dev_plan_holds_the_required_resources(graphs):
    types = {r.type for r in graphs["dev"]}
    for required in (
        "aws:eks/cluster:Cluster",
        "aws:eks/nodeGroup:NodeGroup",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:budgets/budget:Budget",
    ):
        assert required in types
    deployments = {r.inputs["metadata"]["name"] for r in graphs["dev"].of_type("kubernetes:apps/v1:Deployment")}
    assert "gateway" in deployments and any(d.startswith("vllm-") for d in deployments)
    services = graphs["dev"].of_type("kubernetes:core/v1:Service")
    assert any(s.inputs["spec"].get("type") == "LoadBalancer" for s in services)


@pytest.mark.parametrize("stack", SHIPPED)
def test_gateway_env_is_what_the_gateway_reads(graphs_with_secrets, stack):
    from app.gateway.settings import ENV_PREFIX, GatewaySettings

    fields = {ENV_PREFIX + name.upper() for name in GatewaySettings.model_fields}
    gateways = [p for p in pods(graphs_with_secrets[stack]) if p.name == "gateway"]
    assert gateways
    for pod in gateways:
        env = pod.spec["containers"][0]["env"]
        names = {e["name"] for e in env}
        assert names <= fields, f"unknown gateway settings: {sorted(names - fields)}"
        assert {"GATEWAY_UPSTREAM_DNS", "GATEWAY_REDIS_URL", "GATEWAY_API_KEYS_FILE"} <= names
        dns = next(e["value"] for e in env if e["name"] == "GATEWAY_UPSTREAM_DNS")
        # Parsed by the gateway's own validator, so the format cannot drift.
        GatewaySettings.model_validate({"upstream_dns": dns, "api_keys_redis_hash": "k"})
        served = next(e["value"] for e in env if e["name"] == "GATEWAY_MODELS").split(",")
        site = next(s for s in stack_config(stack)["llm-platform:sites"] if s["name"] == pod.site)
        assert sorted(served) == sorted(site["models"])
        # Every value, with the Secret-sourced ones standing in, passes the gateway's own
        # validation together: tests/infra/test_gateway_env.py.


def _stack_models(stack: str) -> dict[str, dict]:
    return {m["name"]: m for m in stack_config(stack)["llm-platform:models"]}


@pytest.mark.parametrize("stack", SHIPPED)
def test_only_models_that_scale_to_zero_hold_requests(graphs_with_secrets, stack):
    models = _stack_models(stack)
    for pod in (p for p in pods(graphs_with_secrets[stack]) if p.name == "gateway"):
        env = {e["name"]: e.get("value") for e in pod.spec["containers"][0]["env"]}
        held = {m for m in env["GATEWAY_SCALE_FROM_ZERO_MODELS"].split(",") if m}
        known = set(env["GATEWAY_MODELS"].split(","))
        assert held == {m for m in known if models[m]["replicas"]["min"] == 0}


@pytest.mark.parametrize("stack", SHIPPED)
def test_gateway_metrics_port_is_scraped_but_not_public(graphs, stack):
    """Prometheus scrapes the gateway's metrics port, which neither the load balancer nor any
    namespace but monitoring reaches."""
    from infra.workloads.monitoring import NAMESPACE as MONITORING

    graph = graphs[stack]
    gateways = [p for p in pods(graph) if p.name == "gateway"]
    monitors = [
        r
        for r in graph.of_type("kubernetes:monitoring.coreos.com/v1:PodMonitor")
        if r.inputs["metadata"]["name"] == "gateway"
    ]
    policies = [
        r
        for r in graph.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "gateway"
    ]
    services = [r for r in graph.of_type("kubernetes:core/v1:Service") if r.inputs["metadata"]["name"] == "gateway"]
    assert gateways and monitors and policies and services
    for pod in gateways:
        ports = {p["name"]: p["containerPort"] for p in pod.spec["containers"][0]["ports"]}
        for monitor in monitors:
            if graph.site_of(monitor) != pod.site:
                continue
            scraped = monitor.inputs["spec"]["podMetricsEndpoints"][0]["port"]
            assert scraped in ports and scraped != "http"
            for service in (s for s in services if graph.site_of(s) == pod.site):
                assert scraped not in {p["targetPort"] for p in service.inputs["spec"]["ports"]}
            for policy in (n for n in policies if graph.site_of(n) == pod.site):
                rules = [
                    r for r in policy.inputs["spec"]["ingress"] if any(p["port"] == ports[scraped] for p in r["ports"])
                ]
                assert rules and all(
                    r.get("from")
                    == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING}}}]
                    for r in rules
                )


@pytest.mark.parametrize("stack", SHIPPED)
def test_each_clouds_budget_is_the_sum_of_its_sites_budget_records(graphs, stack):
    assert budget_mismatches(graphs[stack]) == []


def test_budgets_agree_when_by_cloud_leaves_clouds_out():
    """prod without budget.byCloud: two AWS sites, one on GCP, one on Azure. The unassigned
    budget is split per cloud, and each cloud's share over its sites; a per-site split gave
    AWS's sites 36,000 of records against a 24,000 budget."""
    raw = stack_config("prod")
    raw["llm-platform:budget"] = {k: v for k, v in raw["llm-platform:budget"].items() if k != "byCloud"}
    graph = record_raw("prod", raw, SENTINELS)
    assert budget_mismatches(graph) == []
    # Control: one site's record off by a tenth is reported.
    rule = next(
        r
        for r in graph.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
        if any(x.get("record") == BUDGET_RECORD for g in r.inputs["spec"]["groups"] for x in g["rules"])
    )
    record = next(x for g in rule.inputs["spec"]["groups"] for x in g["rules"] if x.get("record") == BUDGET_RECORD)
    record["expr"] = f"vector({float(record['expr'][7:-1]) * 1.1:.6g})"
    assert len(budget_mismatches(graph)) == 1
