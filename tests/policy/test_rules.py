"""Every rule: passes on the shipped stacks, and fails on a graph broken just for it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from pulumi_policy import EnforcementLevel

from infra.plan import policy_run
from infra.plan.graph import Graph
from policy.rules import POLICIES
from tests.stacks import REPO, SHIPPED, stack_config

BY_NAME = {p.name: p for p in POLICIES}
STRICT = {"all": "mandatory"}


def first(graph: Graph, typ: str, where=lambda r: True):
    return next(r for r in graph if r.type == typ and where(r))


def vllm(r):
    return r.inputs["metadata"]["name"].startswith("vllm-")


def container(r):
    return r.inputs["spec"]["template"]["spec"]["containers"][0]


def _gpu_group(r):
    return "nvidia.com/gpu.present" in (r.inputs.get("labels") or {})


BREAKERS = {
    "cluster-endpoint-restricted": lambda g: (
        first(g, "aws:eks/cluster:Cluster")
        .inputs["vpcConfig"]
        .update(endpointPublicAccess=True, publicAccessCidrs=["0.0.0.0/0"])
    ),
    "kubernetes-secrets-encrypted": lambda g: first(g, "aws:eks/cluster:Cluster").inputs.pop("encryptionConfig"),
    "control-plane-logging": lambda g: first(g, "aws:eks/cluster:Cluster").inputs.update(
        enabledClusterLogTypes=["api"]
    ),
    "node-metadata-protected": lambda g: (
        first(g, "aws:ec2/launchTemplate:LaunchTemplate").inputs["metadataOptions"].update(httpTokens="optional")
    ),
    "disks-encrypted": lambda g: (
        first(g, "aws:ec2/launchTemplate:LaunchTemplate")
        .inputs["blockDeviceMappings"][0]["ebs"]
        .update(encrypted="false")
    ),
    "redis-tls-auth-private": lambda g: first(g, "aws:elasticache/replicationGroup:ReplicationGroup").inputs.update(
        transitEncryptionEnabled=False
    ),
    "least-privilege-identities": lambda g: first(g, "aws:iam/rolePolicy:RolePolicy").inputs.update(
        policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    ),
    "containers-hardened": lambda g: container(first(g, "kubernetes:apps/v1:Deployment", vllm))[
        "securityContext"
    ].update(allowPrivilegeEscalation=True),
    "no-secret-env-literal": lambda g: container(first(g, "kubernetes:apps/v1:Deployment", vllm))["env"].append(
        {"name": "HF_TOKEN", "value": "hf_plain"}
    ),
    "images-pinned": lambda g: container(first(g, "kubernetes:apps/v1:Deployment", vllm)).update(
        image="vllm/vllm-openai:latest"
    ),
    "gpu-pools-tainted-and-tolerated": lambda g: first(g, "aws:eks/nodeGroup:NodeGroup", _gpu_group).inputs.update(
        taints=[]
    ),
    "gateway-ha": lambda g: (
        first(g, "kubernetes:apps/v1:Deployment", lambda r: r.inputs["metadata"]["name"] == "gateway")
        .inputs["spec"]
        .update(replicas=1)
    ),
    "subnets-multi-zone": lambda g: [
        r.inputs.update(availabilityZone="us-east-1a") for r in g.of_type("aws:ec2/subnet:Subnet")
    ],
    # EKS ended 1.33's standard support on 2026-07-29.
    "kubernetes-version-supported": lambda g: first(g, "aws:eks/cluster:Cluster").inputs.update(version="1.33"),
    "vllm-await-covers-startup": lambda g: first(g, "kubernetes:apps/v1:Deployment", vllm).options.pop(
        "customTimeouts"
    ),
    "vllm-probes": lambda g: container(first(g, "kubernetes:apps/v1:Deployment", vllm)).pop("startupProbe"),
    "budget-per-cloud": lambda g: first(g, "aws:budgets/budget:Budget").inputs.update(
        notifications=[
            n
            for n in first(g, "aws:budgets/budget:Budget").inputs["notifications"]
            if n["notificationType"] == "ACTUAL"
        ]
    ),
    "cost-tags": lambda g: first(g, "aws:ec2/vpc:Vpc").inputs["tags"].pop("stack"),
    "dev-gpu-pools-scale-to-zero": lambda g: (
        first(g, "aws:eks/nodeGroup:NodeGroup", _gpu_group).inputs["scalingConfig"].update(minSize=1)
    ),
    "cost-within-budget": lambda g: first(g, "aws:budgets/budget:Budget").inputs.update(limitAmount="10.00"),
    "model-fits-gpu": lambda g: (
        first(g, "kubernetes:apps/v1:Deployment", vllm)
        .inputs["metadata"]["annotations"]
        .update({"llm-platform.io/params-billion": "70"})
    ),
    "network-policy-enforced": lambda g: first(
        g, "aws:eks/addon:Addon", lambda r: r.inputs["addonName"] == "vpc-cni"
    ).inputs.pop("configurationValues"),
    "central-sign-in": lambda g: (
        first(g, "aws:eks/cluster:Cluster").inputs["accessConfig"].update(authenticationMode="API_AND_CONFIG_MAP")
    ),
}


def test_a_plain_provider_keys_object_is_a_secret_literal(graphs):
    # GATEWAY_PROVIDER_KEYS holds several keys; the rule reads a plural name as a secret too.
    graph = copy.deepcopy(graphs["prod"])
    gateway = container(
        first(graph, "kubernetes:apps/v1:Deployment", lambda r: r.inputs["metadata"]["name"] == "gateway")
    )
    policy = BY_NAME["no-secret-env-literal"]
    assert policy_run.run(graph, [policy], STRICT) == []
    env = next(e for e in gateway["env"] if e["name"] == "GATEWAY_PROVIDER_KEYS")
    env.pop("valueFrom")
    env["value"] = '{"openai": "sk-plain"}'
    assert [v.policy for v in policy_run.run(graph, [policy], STRICT)] == ["no-secret-env-literal"]


def test_every_rule_has_a_breaker():
    # Rules with nothing to check on EKS are broken on prod's GKE and AKS sites only.
    assert set(BREAKERS) | {name for name, _ in CLOUD_BREAKERS.values()} == set(BY_NAME)


@pytest.mark.parametrize("stack", SHIPPED)
def test_shipped_stacks_pass_every_rule(graphs, stack):
    violations = policy_run.run(
        graphs[stack],
        POLICIES,
        STRICT
        | {
            "gateway-ha": "disabled" if stack == "dev" else "mandatory",
            "dev-gpu-pools-scale-to-zero": "mandatory" if stack == "dev" else "disabled",
        },
    )
    assert [f"{v.policy}: {v.message}" for v in violations] == []


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_rule_catches_its_breakage(graphs, name):
    graph = copy.deepcopy(graphs["prod" if name == "gateway-ha" else "dev"])
    policy = BY_NAME[name]
    assert policy_run.run(graph, [policy], STRICT) == []
    BREAKERS[name](graph)
    violations = policy_run.run(graph, [policy], STRICT)
    assert violations and all(v.policy == name for v in violations)
    assert policy_run.blocking(violations)


def test_rules_have_severity_and_remediation():
    for policy in POLICIES:
        assert policy.severity is not None and policy.remediation_steps and policy.description


def test_pack_config_levels():
    policy = BY_NAME["images-pinned"]
    assert policy_run._level(policy, {})[0] == EnforcementLevel.ADVISORY
    assert policy_run._level(policy, {"all": "mandatory"})[0] == EnforcementLevel.MANDATORY
    assert policy_run._level(policy, {"all": "mandatory", "images-pinned": "disabled"})[0] == EnforcementLevel.DISABLED
    assert policy_run._level(policy, {"images-pinned": {"enforcementLevel": "mandatory", "x": 1}}) == (
        EnforcementLevel.MANDATORY,
        {"x": 1},
    )
    assert policy_run._level(BY_NAME["model-fits-gpu"], {})[0] == EnforcementLevel.MANDATORY
    for stack in SHIPPED:
        config = json.loads((REPO / "policy" / f"config.{stack}.json").read_text())
        for name in config:
            assert name == "all" or name in BY_NAME, f"config.{stack}.json names unknown rule {name}"


def _policy_cli(tmp_path, mutate) -> subprocess.CompletedProcess:
    import yaml

    raw = stack_config("dev")
    mutate(raw)
    (tmp_path / "Pulumi.broken.yaml").write_text(yaml.safe_dump({"config": raw}))
    return subprocess.run(
        [sys.executable, "-m", "infra", "policy", "broken"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_fails_a_model_that_cannot_fit(tmp_path):
    def mutate(raw):
        raw["llm-platform:models"][0].update(paramsBillion=70, hfRepo="meta-llama/Llama-3.1-70B-Instruct")

    proc = _policy_cli(tmp_path, mutate)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "model-fits-gpu [mandatory" in proc.stdout


def test_cli_fails_a_stack_over_budget(tmp_path):
    proc = _policy_cli(tmp_path, lambda raw: raw["llm-platform:budget"].update(monthlyAmount=300))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cost-within-budget [mandatory" in proc.stdout and "exceeds the budget" in proc.stdout


@pytest.mark.parametrize("stack", SHIPPED)
def test_make_policy_passes_shipped_stacks(stack):
    proc = subprocess.run(
        [sys.executable, "-m", "infra", "policy", stack], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The same rules on the GCP and Azure resources of prod, each broken the way it is on AWS.
CLOUD_BREAKERS = {
    "gke-endpoint-open": (
        "cluster-endpoint-restricted",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(
            masterAuthorizedNetworksConfig={"cidrBlocks": [{"cidrBlock": "0.0.0.0/0"}]}
        ),
    ),
    "aks-endpoint-open": (
        "cluster-endpoint-restricted",
        lambda g: first(g, "azure-native:containerservice:ManagedCluster").inputs.update(
            apiServerAccessProfile={"enablePrivateCluster": False, "authorizedIPRanges": []}
        ),
    ),
    "gke-secrets-plain": (
        "kubernetes-secrets-encrypted",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(databaseEncryption={"state": "DECRYPTED"}),
    ),
    "gke-public-nodes": (
        "node-metadata-protected",
        lambda g: (
            first(g, "gcp:container/cluster:Cluster").inputs["privateClusterConfig"].update(enablePrivateNodes=False)
        ),
    ),
    "gke-node-metadata": (
        "node-metadata-protected",
        lambda g: (
            first(g, "gcp:container/nodePool:NodePool")
            .inputs["nodeConfig"]
            .update(workloadMetadataConfig={"mode": "GCE_METADATA"})
        ),
    ),
    "gke-default-sa": (
        "least-privilege-identities",
        lambda g: (
            first(g, "gcp:container/nodePool:NodePool")
            .inputs["nodeConfig"]
            .update(serviceAccount="123-compute@developer.gserviceaccount.com")
        ),
    ),
    "memorystore-no-auth": (
        "redis-tls-auth-private",
        lambda g: first(g, "gcp:redis/instance:Instance").inputs.update(authEnabled=False),
    ),
    "azure-redis-public": (
        "redis-tls-auth-private",
        lambda g: first(g, "azure-native:redisenterprise:RedisEnterprise").inputs.update(publicNetworkAccess="Enabled"),
    ),
    "gke-version-off-channel": (
        "kubernetes-version-supported",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(minMasterVersion="1.37"),
    ),
    "aks-version-lts-only": (
        "kubernetes-version-supported",
        lambda g: first(g, "azure-native:containerservice:ManagedCluster").inputs.update(kubernetesVersion="1.34"),
    ),
    "gke-no-workload-identity": (
        "workload-identity",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.pop("workloadIdentityConfig"),
    ),
    "aks-no-workload-identity": (
        "workload-identity",
        lambda g: (
            first(g, "azure-native:containerservice:ManagedCluster")
            .inputs["securityProfile"]
            .update(workloadIdentity={"enabled": False})
        ),
    ),
    "gke-no-dataplane-v2": (
        "network-policy-enforced",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(datapathProvider="LEGACY_DATAPATH"),
    ),
    "aks-no-policy-engine": (
        "network-policy-enforced",
        lambda g: (
            first(g, "azure-native:containerservice:ManagedCluster").inputs["networkProfile"].pop("networkPolicy")
        ),
    ),
    "aks-local-accounts": (
        "central-sign-in",
        lambda g: first(g, "azure-native:containerservice:ManagedCluster").inputs.update(disableLocalAccounts=False),
    ),
    "gke-client-certificate": (
        "central-sign-in",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(
            masterAuth={"clientCertificateConfig": {"issueClientCertificate": True}}
        ),
    ),
    "gke-no-secure-boot": (
        "nodes-hardened",
        lambda g: (
            first(g, "gcp:container/nodePool:NodePool")
            .inputs["nodeConfig"]
            .update(shieldedInstanceConfig={"enableSecureBoot": False, "enableIntegrityMonitoring": True})
        ),
    ),
    "gke-boot-disk-google-key": (
        "nodes-hardened",
        lambda g: first(g, "gcp:container/nodePool:NodePool").inputs["nodeConfig"].pop("bootDiskKmsKey"),
    ),
    "aks-public-node-ips": (
        "nodes-hardened",
        lambda g: first(g, "azure-native:containerservice:AgentPool").inputs.update(enableNodePublicIP=True),
    ),
    "aks-system-pool-unencrypted": (
        "nodes-hardened",
        lambda g: (
            first(g, "azure-native:containerservice:ManagedCluster")
            .inputs["agentPoolProfiles"][0]
            .update(enableEncryptionAtHost=False)
        ),
    ),
    "gke-no-channel": (
        "cluster-auto-upgrade",
        lambda g: first(g, "gcp:container/cluster:Cluster").inputs.update(releaseChannel={"channel": "UNSPECIFIED"}),
    ),
    "aks-no-upgrade-channel": (
        "cluster-auto-upgrade",
        lambda g: first(g, "azure-native:containerservice:ManagedCluster").inputs.update(
            autoUpgradeProfile={"upgradeChannel": "none"}
        ),
    ),
    "gcp-budget-actual-only": (
        "budget-per-cloud",
        lambda g: first(g, "gcp:billing/budget:Budget").inputs.update(
            thresholdRules=[{"thresholdPercent": 1.0, "spendBasis": "CURRENT_SPEND"}]
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CLOUD_BREAKERS))
def test_rule_catches_its_breakage_on_gcp_and_azure(graphs, case):
    name, breaker = CLOUD_BREAKERS[case]
    graph = copy.deepcopy(graphs["prod"])
    policy = BY_NAME[name]
    assert policy_run.run(graph, [policy], STRICT) == []
    breaker(graph)
    violations = policy_run.run(graph, [policy], STRICT)
    assert violations and all(v.policy == name for v in violations)


def test_version_rule_reads_the_plan_date_and_each_chart_range(graphs):
    policy = BY_NAME["kubernetes-version-supported"]
    graph = graphs["dev"]
    # The same stack, planned later: standard support ends too soon.
    late = policy_run.run(
        graph, [policy], {"kubernetes-version-supported": {"enforcementLevel": "mandatory", "asOf": "2027-03-01"}}
    )
    assert late and "ends 2027-03-27" in late[0].message
    # A minor EKS supports but a chart pin does not (KEDA 2.20 is tested on 1.33-1.35).
    broken = copy.deepcopy(graph)
    first(broken, "aws:eks/cluster:Cluster").inputs.update(version="1.36")
    messages = [v.message for v in policy_run.run(broken, [policy], STRICT)]
    assert any("chart keda" in m and "not 1.36" in m for m in messages), messages
