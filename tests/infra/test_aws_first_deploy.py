"""What a first `pulumi up` of an AWS site needs from AWS itself, checked over the recorded
graph of every shipped stack: node volumes Auto Scaling can encrypt, images pulled through
the site's own ECR, NetworkPolicy enforced, resource metrics served, GPU groups the cluster
autoscaler can scale from zero, spot pools with more than one instance type, a controller
behind the load-balancer annotations, and cluster admins beside the cluster's creator.

The upstream facts each test relies on are written here with their source (read
2026-12-01), so the program is checked against them, not against its own constants."""

from __future__ import annotations

import copy
import json
import re

import pytest

from infra.catalog import catalog
from infra.config import ConfigError
from infra.plan import kinds
from infra.plan.graph import SECRET, Graph, Resource
from infra.plan.mocks import mock_ecr_password
from infra.plan.run import record, to_engine_config
from infra.stack import run as program
from tests.infra.invariants import COST_TAGS, closure, image_build, site_clouds, vllm_upstream
from tests.stacks import SHIPPED, record_raw, stack_config

AWS_STACKS = [s for s in SHIPPED if any(site["cloud"] == "aws" for site in stack_config(s)["llm-platform:sites"])]

# Upstream facts, each with where it is stated.
# Auto Scaling's service-linked role, which launches managed node groups' instances and needs a
# key policy grant on any customer managed key (docs.aws.amazon.com/autoscaling/ec2/userguide/
# key-policy-requirements-EBS-encryption.html).
AUTOSCALING_SLR = "AWSServiceRoleForAutoScaling"
# ECR's Docker Hub upstream and the credential ARN it accepts (API_PullThroughCacheRule,
# docs.aws.amazon.com/AmazonECR/latest/APIReference/).
DOCKER_HUB_UPSTREAM = "registry-1.docker.io"
CREDENTIAL_ARN = re.compile(
    r"^arn:aws:secretsmanager:[a-zA-Z0-9-:]+:secret:ecr\-pullthroughcache\/[a-zA-Z0-9\/_+=.@-]+$"
)
# What the puller needs for a cache's first pull (docs.aws.amazon.com/AmazonECR/latest/userguide/
# pull-through-cache-iam.html).
PULL_THROUGH_ACTIONS = {"ecr:BatchImportUpstreamImage", "ecr:CreateRepository"}
# cluster-autoscaler's AWS provider: the GPU label (aws_cloud_provider.go GPULabel) and the ASG
# node-template tags (aws_manager.go; cloudprovider/aws/README.md), kubernetes/autoscaler.
CA_GPU_LABEL = "k8s.amazonaws.com/accelerator"
CA_TEMPLATE = "k8s.io/cluster-autoscaler/node-template/"
GPU_RESOURCE = "nvidia.com/gpu"
# AWS Load Balancer Controller v3.5.0 docs/guide/service/annotations.md: the values of
# aws-load-balancer-type it reconciles, and the annotations deprecated for
# aws-load-balancer-attributes.
LBC_TYPES = {"external", "nlb-ip"}
LBC_DEPRECATED = {
    "service.beta.kubernetes.io/aws-load-balancer-access-log-enabled",
    "service.beta.kubernetes.io/aws-load-balancer-access-log-s3-bucket-name",
    "service.beta.kubernetes.io/aws-load-balancer-access-log-s3-bucket-prefix",
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled",
}
# What the controller calls to put an NLB in front of a Service (kubernetes-sigs/
# aws-load-balancer-controller v3.5.0 docs/install/iam_policy.json and docs/guide/service/nlb.md).
LBC_NLB_ACTIONS = {
    "iam:CreateServiceLinkedRole",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "ec2:CreateSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:CreateLoadBalancer",
    "elasticloadbalancing:CreateTargetGroup",
    "elasticloadbalancing:CreateListener",
    "elasticloadbalancing:RegisterTargets",
    "elasticloadbalancing:ModifyTargetGroupAttributes",
    "elasticloadbalancing:DeleteLoadBalancer",
}
# Writes that must touch only what this cluster's controller made.
LBC_DESTRUCTIVE = {
    "elasticloadbalancing:DeleteLoadBalancer",
    "elasticloadbalancing:DeleteTargetGroup",
    "ec2:DeleteSecurityGroup",
    "elasticloadbalancing:ModifyLoadBalancerAttributes",
}
# EKS access policy for cluster admin (docs.aws.amazon.com/eks/latest/userguide/access-policy-permissions.html).
EKS_CLUSTER_ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"


def _aws_sites(graph: Graph) -> list[str]:
    return [name for name, cloud in site_clouds(graph).items() if cloud == "aws"]


def _in(graph: Graph, site: str, *types: str) -> list[Resource]:
    return [r for r in graph.of_type(*types) if graph.site_of(r) == site]


def _one(graph: Graph, site: str, typ: str) -> Resource:
    found = _in(graph, site, typ)
    assert len(found) == 1, f"{site}: {len(found)} {typ}"
    return found[0]


def _region(graph: Graph, site: str) -> str:
    return _one(graph, site, "pulumi:providers:aws").inputs["region"]


def _statements(policy: str | dict) -> list[dict]:
    doc = json.loads(policy) if isinstance(policy, str) else policy
    statements = doc["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _deps(r: Resource) -> set[str]:
    return set(r.dependencies)


@pytest.fixture(scope="module")
def aws_graphs(graphs) -> dict[str, Graph]:
    assert AWS_STACKS, "no shipped stack has an AWS site"
    return {s: graphs[s] for s in AWS_STACKS}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_node_root_volumes_use_a_key_auto_scaling_may_use(aws_graphs, stack):
    """A managed node group's instances are launched by Auto Scaling's service-linked role; a
    customer managed key whose policy does not grant that role makes every launch fail."""
    graph = aws_graphs[stack]
    keys = {r.urn: r for r in graph.of_type("aws:kms/key:Key")}
    problems = []
    for template in graph.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        for device in template.inputs.get("blockDeviceMappings") or []:
            ebs = device.get("ebs") or {}
            if ebs.get("encrypted") not in ("true", True):
                problems.append(f"{template.name}: {device['deviceName']} is not encrypted")
            if "kmsKeyId" not in ebs:
                continue
            for urn in _deps(template) & set(keys):
                grants = [
                    st
                    for st in _statements(keys[urn].inputs.get("policy") or '{"Statement": []}')
                    if st.get("Effect") == "Allow"
                    and any(AUTOSCALING_SLR in p for p in _listed((st.get("Principal") or {}).get("AWS", [])))
                    and {"kms:CreateGrant"} & set(_listed(st.get("Action", [])))
                ]
                if not grants:
                    problems.append(
                        f"{template.name}: root volume key {keys[urn].name} grants {AUTOSCALING_SLR} nothing"
                    )
    assert problems == []


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_docker_hub_images_are_pulled_through_the_sites_ecr(aws_graphs, stack):
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        rules = [
            r
            for r in _in(graph, site, "aws:ecr/pullThroughCacheRule:PullThroughCacheRule")
            if r.inputs["upstreamRegistryUrl"] == DOCKER_HUB_UPSTREAM
        ]
        assert len(rules) == 1, f"{site}: no Docker Hub pull-through cache"
        rule = rules[0]
        prefix = rule.inputs["ecrRepositoryPrefix"]
        assert 2 <= len(prefix) <= 30, f"{site}: ECR allows 2-30 characters, not {prefix!r}"

        # The credential: a secret ECR can read, holding nothing in plain text.
        credential = rule.inputs["credentialArn"]
        assert CREDENTIAL_ARN.match(credential), credential
        secret = next(r for r in _in(graph, site, "aws:secretsmanager/secret:Secret") if r.id == credential)
        # "You must use the default aws/secretsmanager encryption key" (pull-through-cache-creating-secret.html).
        assert "kmsKeyId" not in secret.inputs, f"{site}: ECR cannot read a secret under a customer managed key"
        versions = [
            v
            for v in _in(graph, site, "aws:secretsmanager/secretVersion:SecretVersion")
            if v.inputs["secretId"] == secret.id
        ]
        assert [v.inputs["secretString"] for v in versions] == [SECRET]
        assert set(versions[0].dependencies) | set(rule.dependencies) >= {secret.urn}

        # Cached repositories are created with our key and cost tags.
        templates = [
            t
            for t in _in(graph, site, "aws:ecr/repositoryCreationTemplate:RepositoryCreationTemplate")
            if t.inputs["prefix"] == prefix and "PULL_THROUGH_CACHE" in t.inputs["appliedFors"]
        ]
        assert len(templates) == 1, f"{site}: no creation template for {prefix}"
        template = templates[0].inputs
        assert [e["encryptionType"] for e in template["encryptionConfigurations"]] == ["KMS"]
        assert template.get("customRoleArn"), "ECR applies a template's KMS key and tags only through a custom role"
        assert all(t in template["resourceTags"] for t in COST_TAGS)

        # Every node may make the cache import an image into repositories under the prefix.
        node_roles = {
            ng.inputs["nodeRoleArn"].rsplit("/", 1)[-1] for ng in _in(graph, site, "aws:eks/nodeGroup:NodeGroup")
        }
        granted: set[str] = set()
        for policy in _in(graph, site, "aws:iam/rolePolicy:RolePolicy"):
            if policy.inputs["role"] not in node_roles:
                continue
            for st in _statements(policy.inputs["policy"]):
                if st["Effect"] == "Allow" and any(
                    res.endswith(f":repository/{prefix}/*") or res == "*" for res in _listed(st["Resource"])
                ):
                    granted |= set(_listed(st["Action"]))
        assert PULL_THROUGH_ACTIONS <= granted, f"{site}: nodes lack {PULL_THROUGH_ACTIONS - granted}"

        # And the GPU workloads pull through it, after it exists.
        cache = re.compile(
            rf"^\d{{12}}\.dkr\.ecr\.{re.escape(_region(graph, site))}\.amazonaws\.com/{re.escape(prefix)}/"
        )
        gpu_deployments = [
            d
            for d in _in(graph, site, "kubernetes:apps/v1:Deployment")
            if any(
                GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {})
                for c in d.inputs["spec"]["template"]["spec"]["containers"]
            )
        ]
        assert gpu_deployments, f"{site}: no GPU Deployment"
        for d in gpu_deployments:
            for c in d.inputs["spec"]["template"]["spec"]["containers"]:
                # images/vllm is built FROM the upstream image, pulled through the cache.
                base = vllm_upstream(graph, d, c)
                assert cache.match(base), f"{d.name}: {base} is not pulled through {prefix}"
                build = image_build(graph, d, c["image"])
                assert build is not None and rule.urn in closure(graph, build), (
                    f"{d.name}: built before the cache exists"
                )
            assert rule.urn in _deps(d), f"{d.name} does not wait for the pull-through cache"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_registry_password_never_reaches_the_plan(aws_graphs, stack):
    graph = aws_graphs[stack]
    text = json.dumps(graph.to_plan())
    for site in _aws_sites(graph):
        assert mock_ecr_password(_region(graph, site)) not in text


def _without(raw: dict, key: str) -> dict:
    raw = copy.deepcopy(raw)
    if key == "dockerHubToken":
        raw.pop("llm-platform:dockerHubToken", None)
    else:
        raw["llm-platform:images"].pop(key, None)
    return raw


@pytest.mark.parametrize("stack", AWS_STACKS)
@pytest.mark.parametrize(
    ("missing", "path", "how"),
    [
        ("dockerHubToken", "dockerHubToken", "pulumi config set --secret dockerHubToken"),
        ("dockerHubUser", "images.dockerHubUser", "llm-platform:images.dockerHubUser"),
    ],
)
def test_missing_docker_hub_credentials_stop_the_aws_site_before_it_builds(stack, missing, path, how):
    config, secret_keys = to_engine_config(_without(stack_config(stack), missing))
    errors: list[ConfigError] = []

    def until_config_error():
        try:
            program()
        except ConfigError as exc:
            errors.append(exc)

    graph = record(stack, config, secret_keys, program=until_config_error)
    assert errors, f"{stack} without {missing} raised no ConfigError"
    assert errors[0].path == path and how in errors[0].message, str(errors[0])
    assert "\n" not in str(errors[0])
    aws_sites = [s["name"] for s in stack_config(stack)["llm-platform:sites"] if s["cloud"] == "aws"]
    assert [r.name for r in graph if graph.site_of(r) in aws_sites or r.name in aws_sites] == []


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_vpc_cni_enforces_network_policies(aws_graphs, stack):
    """NetworkPolicy objects do nothing unless the VPC CNI runs its network policy agent
    (`enableNetworkPolicy`, docs.aws.amazon.com/eks/latest/userguide/cni-network-policy-configure.html)."""
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        if not _in(graph, site, "kubernetes:networking.k8s.io/v1:NetworkPolicy"):
            continue
        cni = [a for a in _in(graph, site, "aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"]
        assert len(cni) == 1, f"{site}: {len(cni)} vpc-cni add-ons"
        values = json.loads(cni[0].inputs.get("configurationValues") or "{}")
        assert str(values.get("enableNetworkPolicy")).lower() == "true", f"{site}: NetworkPolicy is not enforced"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_every_eks_cluster_serves_resource_metrics(aws_graphs, stack):
    """CPU-based scaling (HPA, KEDA's cpu trigger) reads the resource metrics API, which EKS
    does not serve by default (docs.aws.amazon.com/eks/latest/userguide/metrics-server.html)."""
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        addons = [a for a in _in(graph, site, "aws:eks/addon:Addon") if a.inputs["addonName"] == "metrics-server"]
        charts = [
            r for r in _in(graph, site, "kubernetes:helm.sh/v3:Release") if r.inputs.get("chart") == "metrics-server"
        ]
        assert len(addons) + len(charts) == 1, f"{site}: no metrics-server"


def _asg_tags(graph: Graph, group: Resource) -> tuple[set[str], dict[str, str]]:
    tags = [t for t in graph.of_type("aws:autoscaling/tag:Tag") if group.urn in _deps(t)]
    return {t.inputs["autoscalingGroupName"] for t in tags}, {
        t.inputs["tag"]["key"]: t.inputs["tag"]["value"] for t in tags
    }


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_node_groups_describe_their_nodes_to_the_autoscaler(aws_graphs, stack):
    """Managed node group labels and taints stay off the ASG, so an empty group is described
    to cluster-autoscaler by node-template tags on the ASG; GPU groups also carry the GPU label
    CA waits on while the device plugin starts."""
    graph = aws_graphs[stack]
    problems = []
    for group in graph.of_type("aws:eks/nodeGroup:NodeGroup"):
        inputs = group.inputs
        gpu = inputs["amiType"].endswith("NVIDIA")
        labels = inputs.get("labels") or {}
        if gpu and CA_GPU_LABEL not in labels:
            problems.append(f"{group.name}: no {CA_GPU_LABEL} label")
        asgs, tags = _asg_tags(graph, group)
        if len(asgs) != 1:
            problems.append(f"{group.name}: node-template tags on {len(asgs)} Auto Scaling groups")
        want = {f"{CA_TEMPLATE}label/{k}": v for k, v in labels.items()}
        (pool,) = kinds.pools([group])
        want.update({f"{CA_TEMPLATE}taint/{key}": f"{value}:{effect}" for key, value, effect in pool.taints})
        if gpu:
            want[f"{CA_TEMPLATE}resources/{GPU_RESOURCE}"] = str(
                catalog("aws").instances[inputs["instanceTypes"][0]].gpus
            )
        for key, value in want.items():
            if tags.get(key) != value:
                problems.append(f"{group.name}: ASG tag {key}={tags.get(key)!r}, nodes have {value!r}")
    assert problems == []


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_spot_gpu_pools_offer_several_matching_instance_types(aws_graphs, stack):
    graph = aws_graphs[stack]
    instances = catalog("aws").instances
    spot = [g for g in graph.of_type("aws:eks/nodeGroup:NodeGroup") if g.inputs.get("capacityType") == "SPOT"]
    assert spot, f"{stack} has no spot node group to check"
    for group in spot:
        primary, *others = [instances[t] for t in group.inputs["instanceTypes"]]
        assert others, f"{group.name}: one instance type, so one spot pool's capacity decides"
        for other in others:
            # Same GPUs, and no smaller than the primary the autoscaler and the pods are sized by.
            assert (other.gpu, other.gpus) == (primary.gpu, primary.gpus), f"{group.name}: {other.name}"
            assert other.vcpu >= primary.vcpu and other.memory_gib >= primary.memory_gib, f"{group.name}: {other.name}"


def _lb_services(graph: Graph, site: str) -> list[Resource]:
    return [
        s
        for s in _in(graph, site, "kubernetes:core/v1:Service")
        if (s.inputs.get("spec") or {}).get("type") == "LoadBalancer"
        and any(
            k.startswith("service.beta.kubernetes.io/aws-load-balancer-")
            for k in (s.inputs["metadata"].get("annotations") or {})
        )
    ]


def _controller(graph: Graph, site: str) -> Resource:
    found = [
        r
        for r in _in(graph, site, "kubernetes:helm.sh/v3:Release")
        if r.inputs.get("chart") == "aws-load-balancer-controller"
    ]
    assert len(found) == 1, f"{site}: {len(found)} AWS Load Balancer Controller releases"
    return found[0]


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_load_balancer_annotations_have_their_controller(aws_graphs, stack):
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        services = _lb_services(graph, site)
        assert services, f"{site}: no LoadBalancer Service to check"
        for svc in services:
            notes = svc.inputs["metadata"]["annotations"]
            assert notes.get("service.beta.kubernetes.io/aws-load-balancer-type") in LBC_TYPES, svc.name
            assert notes.get("service.beta.kubernetes.io/aws-load-balancer-nlb-target-type") in ("ip", "instance"), (
                svc.name
            )
            # The controller's default scheme is internal.
            assert "service.beta.kubernetes.io/aws-load-balancer-scheme" in notes, svc.name
            assert not LBC_DEPRECATED & set(notes), f"{svc.name}: deprecated {LBC_DEPRECATED & set(notes)}"

        controller = _controller(graph, site)
        values = controller.inputs["values"]
        cluster = _one(graph, site, "aws:eks/cluster:Cluster")
        vpc = _one(graph, site, "aws:ec2/vpc:Vpc")
        assert values["clusterName"] == cluster.inputs["name"]
        # Pods cannot reach instance metadata (hop limit 1), so region and VPC come from values.
        assert values["region"] == _region(graph, site) and values["vpcId"] == vpc.id
        account = values["serviceAccount"]["name"]
        identity = [
            p
            for p in _in(graph, site, "aws:eks/podIdentityAssociation:PodIdentityAssociation")
            if (p.inputs["namespace"], p.inputs["serviceAccount"]) == (controller.inputs["namespace"], account)
        ]
        assert len(identity) == 1, f"{site}: the controller's service account has no pod identity"
        role = identity[0].inputs["roleArn"].rsplit("/", 1)[-1]
        policies = {p.id: p for p in _in(graph, site, "aws:iam/policy:Policy")}
        attached = [
            json.loads(policies[a.inputs["policyArn"]].inputs["policy"])
            for a in _in(graph, site, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
            if a.inputs["role"] == role and a.inputs["policyArn"] in policies
        ]
        statements = [st for doc in attached for st in doc["Statement"] if st["Effect"] == "Allow"]
        allowed = {a for st in statements for a in _listed(st["Action"])}
        assert LBC_NLB_ACTIONS <= allowed, f"{site}: the controller may not {sorted(LBC_NLB_ACTIONS - allowed)}"
        for st in statements:
            for action in LBC_DESTRUCTIVE & set(_listed(st["Action"])):
                assert cluster.inputs["name"] in json.dumps(st.get("Condition", {})), (
                    f"{site}: {action} is not limited to resources tagged for cluster {cluster.inputs['name']}"
                )


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_load_balancer_services_wait_for_their_controller(aws_graphs, stack):
    """The controller's Service webhook fails Service creation until its pods answer, so a
    LoadBalancer Service created before the controller's release is ready fails."""
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        controller = _controller(graph, site)
        for svc in _lb_services(graph, site):
            assert controller.urn in _deps(svc), f"{svc.name} does not wait for the AWS Load Balancer Controller"


ADMINS = ["arn:aws:iam::123456789012:role/ci/llm-platform-deployer", "arn:aws:iam::123456789012:user/oncall"]


@pytest.fixture(scope="module")
def with_admins() -> dict[str, Graph]:
    out = {}
    for stack in AWS_STACKS:
        raw = stack_config(stack)
        for site in raw["llm-platform:sites"]:
            if site["cloud"] == "aws":
                site["aws"] = {**site.get("aws", {}), "adminPrincipalArns": ADMINS}
        out[stack] = record_raw(stack, raw)
    return out


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_listed_principals_get_cluster_admin(with_admins, stack):
    """Without an access entry, only the identity that created the cluster can use it."""
    graph = with_admins[stack]
    for site in _aws_sites(graph):
        cluster = _one(graph, site, "aws:eks/cluster:Cluster").inputs["name"]
        entries = {
            e.inputs["principalArn"]
            for e in _in(graph, site, "aws:eks/accessEntry:AccessEntry")
            if e.inputs["clusterName"] == cluster
        }
        assert entries >= set(ADMINS), f"{site}: no access entry for {set(ADMINS) - entries}"
        admins = {
            a.inputs["principalArn"]
            for a in _in(graph, site, "aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
            if a.inputs["clusterName"] == cluster
            and a.inputs["policyArn"] == EKS_CLUSTER_ADMIN
            and a.inputs["accessScope"]["type"] == "cluster"
        }
        assert admins >= set(ADMINS), f"{site}: {set(ADMINS) - admins} lack cluster-wide admin"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_every_eks_add_on_is_pinned_to_a_version_eks_offers(aws_graphs, stack):
    """Unpinned, an add-on takes whatever EKS defaults to at create time and the plan cannot
    show it; each pin is read from EKS for the cluster's own Kubernetes minor."""
    graph = aws_graphs[stack]
    for site in _aws_sites(graph):
        minor = _one(graph, site, "aws:eks/cluster:Cluster").inputs["version"]
        addons = _in(graph, site, "aws:eks/addon:Addon")
        assert len(addons) >= 6
        for addon in addons:
            # The offline answer for DescribeAddonVersions names the minor it was asked for.
            assert addon.inputs.get("addonVersion", "").endswith(minor), f"{addon.name}: not pinned for {minor}"
