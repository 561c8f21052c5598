"""Invariants over the whole recorded graph of every shipped stack."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from functools import cache

import pytest

from infra.catalog import vllm_cli
from infra.plan import report
from infra.plan.graph import SECRET, Graph
from infra.plan.scheduling import gpu_pools, pods, unschedulable_gpu_pods, why_not
from infra.workloads.vllm_args import flags
from tests.infra.conftest import SENTINELS, SHIPPED

COST_TAGS = ("project", "stack", "site", "team", "env", "cost-center", "managed-by")


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


def test_schedulability_check_catches_a_broken_pod(graphs):
    graph = graphs["dev"]
    pod = next(p for p in pods(graph) if p.gpus)
    pool = next(p for p in gpu_pools(graph) if p.site == pod.site)
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
    for text in texts:
        for sentinel in _sentinel_strings():
            assert sentinel not in text
        assert "offline-secret" not in text
    secrets = [r for r in graph if r.type == "kubernetes:core/v1:Secret"]
    assert {r.inputs["metadata"]["name"] for r in secrets} >= {"hf-token", "gateway-api-keys", "gateway-redis"}
    for r in secrets:
        assert r.inputs["stringData"] == SECRET
    assert graph.outputs and all(v == SECRET for k, v in graph.outputs.items() if k.endswith("kubeconfig"))


@pytest.mark.parametrize("stack", SHIPPED)
def test_no_secret_as_env_literal(graphs_with_secrets, stack):
    secretish = re.compile(r"TOKEN|KEY$|PASSWORD|SECRET|REDIS_URL")
    for pod in pods(graphs_with_secrets[stack]):
        for container in pod.spec["containers"]:
            for env in container.get("env", []):
                if secretish.search(env["name"]) and not env["name"].endswith("_FILE"):
                    assert "valueFrom" in env and "value" not in env, f"{pod.name}: {env['name']} is a literal"


@cache
def _takes_tags(type_token: str) -> bool:
    """Whether the pulumi_aws resource class for a type token has a `tags` input."""
    pkg, module_path, cls_name = type_token.split(":")
    module = importlib.import_module(f"pulumi_aws.{module_path.split('/')[0]}" if module_path != "index" else "pulumi_aws")
    cls = getattr(module, cls_name)
    return "tags" in inspect.signature(cls._internal_init).parameters


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_taggable_aws_resource_has_cost_tags(graphs, stack):
    graph: Graph = graphs[stack]
    aws = [r for r in graph if r.custom and r.type.startswith("aws:")]
    taggable = [r for r in aws if _takes_tags(r.type)]
    assert len(taggable) > 20
    for r in taggable:
        tags = r.inputs.get("tags") or {}
        missing = [t for t in COST_TAGS if t not in tags]
        assert not missing, f"{r.type} {r.name} lacks cost tags {missing}"
        assert tags["stack"] == stack
    # Providers tag what a resource forgets, instances included.
    for provider in graph.of_type("pulumi:providers:aws"):
        assert set(COST_TAGS) <= set(json.loads(provider.inputs["defaultTags"])["tags"])


def test_tag_check_can_fail():
    assert _takes_tags("aws:ec2/vpc:Vpc")
    assert not _takes_tags("aws:iam/rolePolicyAttachment:RolePolicyAttachment")


@pytest.mark.parametrize("stack", SHIPPED)
def test_redis_never_open_to_the_internet(graphs, stack):
    graph = graphs[stack]
    ids = graph.by_id()
    groups = graph.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    assert groups
    for group in groups:
        assert group.inputs["transitEncryptionEnabled"] and group.inputs["atRestEncryptionEnabled"]
        assert group.inputs["authToken"] == SECRET
        for sg_id in group.inputs["securityGroupIds"]:
            sg = ids[sg_id]
            for rule in sg.inputs.get("ingress") or []:
                assert "0.0.0.0/0" not in rule.get("cidrBlocks", []) and "::/0" not in rule.get("ipv6CidrBlocks", [])
            rules = [r for r in graph.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
                     if r.inputs["securityGroupId"] == sg_id]
            assert rules, "Redis security group has no ingress rule at all"
            for rule in rules:
                assert "cidrIpv4" not in rule.inputs and "cidrIpv6" not in rule.inputs
                assert rule.inputs["referencedSecurityGroupId"].startswith("sg-")
        subnet_group = next(
            r for r in graph.of_type("aws:elasticache/subnetGroup:SubnetGroup")
            if r.inputs["name"] == group.inputs["subnetGroupName"]
        )
        for subnet_id in subnet_group.inputs["subnetIds"]:
            subnet = ids[subnet_id]
            assert "kubernetes.io/role/internal-elb" in subnet.inputs["tags"]
            assert not subnet.inputs.get("mapPublicIpOnLaunch")


def test_dev_gpu_pools_scale_to_zero(graphs):
    pools = gpu_pools(graphs["dev"])
    assert pools
    assert all(p.min_nodes == 0 for p in pools)


@pytest.mark.parametrize("stack", SHIPPED)
def test_kubernetes_objects_use_a_site_provider(graphs, stack):
    graph = graphs[stack]
    providers = {r.urn for r in graph.of_type("pulumi:providers:kubernetes")}
    k8s = [r for r in graph if r.custom and r.type.startswith("kubernetes:")]
    assert k8s
    for r in k8s:
        # A default provider would deploy to whatever cluster the user's kubeconfig points at.
        assert r.provider in providers, f"{r.type} {r.name} uses {r.provider}"


@pytest.mark.parametrize("stack", SHIPPED)
def test_vllm_flags_exist_in_pinned_vllm(graphs, stack):
    cli = vllm_cli()
    containers = [c for p in pods(graphs[stack]) for c in p.spec["containers"] if c["name"] == "vllm"]
    assert containers
    for c in containers:
        assert c["command"] == ["vllm", "serve"]
        unknown = [f for f in flags(c["args"]) if not cli.accepts(f)]
        assert unknown == []
        assert c["image"].endswith(f":v{cli.version}")


@pytest.mark.parametrize("stack", SHIPPED)
def test_plan_json_shape(graphs, stack, tmp_path):
    plan = json.loads(report.write(graphs[stack], tmp_path)["plan"].read_text())
    assert plan["stack"] == stack
    urns = {r["urn"] for r in plan["resources"]}
    assert len(urns) == len(plan["resources"])
    for r in plan["resources"]:
        assert set(r) == {"urn", "type", "name", "parent", "provider", "inputs"}
        assert isinstance(r["inputs"], dict)
        assert r["provider"] is None or r["provider"].startswith("urn:pulumi:")


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
def test_cluster_hardening(graphs, stack):
    for cluster in graphs[stack].of_type("aws:eks/cluster:Cluster"):
        vpc = cluster.inputs["vpcConfig"]
        assert vpc["endpointPrivateAccess"]
        if vpc.get("endpointPublicAccess"):
            assert vpc["publicAccessCidrs"] and "0.0.0.0/0" not in vpc["publicAccessCidrs"]
        assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
        assert set(cluster.inputs["enabledClusterLogTypes"]) >= {"api", "audit", "authenticator"}
    for template in graphs[stack].of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        meta = template.inputs["metadataOptions"]
        assert meta["httpTokens"] == "required" and meta["httpPutResponseHopLimit"] == 1
        assert all(b["ebs"]["encrypted"] == "true" for b in template.inputs["blockDeviceMappings"])


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
