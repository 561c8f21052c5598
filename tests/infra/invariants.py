"""Graph invariants shared by the shipped-stack tests and the generated-stack tests.

Each check reads only the recorded graph and returns one line per problem, so a failing
assertion says which resource broke which rule, on whichever cloud.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
from functools import cache

from infra.plan import kinds
from infra.plan.graph import SECRET, Graph, Resource
from infra.plan.kinds import RedisRecord
from infra.plan.mocks import MOCK_AZURE_ACCESS_TOKEN, azure_autoname, mock_auth_string, mock_redis_key
from infra.workloads.monitoring import BUDGET_RECORD

COST_TAGS = ("project", "stack", "site", "team", "env", "cost-center", "managed-by")
_SDKS = {"aws": "pulumi_aws", "gcp": "pulumi_gcp", "azure-native": "pulumi_azure_native"}
# Where a type's `labels` input is its configuration, not cost labels, and what carries them instead.
_LABEL_INPUT_OVERRIDES = {"gcp:monitoring/notificationChannel:NotificationChannel": "userLabels"}

# {cloud: type token} of each concept, from the one table (infra/plan/kinds.py).
REDIS_TYPES = kinds.types_of("redis")
CLUSTER_TYPES = kinds.types_of("cluster")
GPU_POOL_TYPES = kinds.types_of("pool")
BUDGET_TYPES = kinds.types_of("budget")


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


@cache
def tag_input(type_token: str) -> str | None:
    """The input (camelCase, as recorded) a cloud resource type takes its cost tags in:
    `tags` on AWS and Azure, `labels`/`resource_labels` on GCP; None where it takes none.
    Read from the SDK class itself, so a new resource type is checked without a list."""
    if type_token in _LABEL_INPUT_OVERRIDES:
        return _LABEL_INPUT_OVERRIDES[type_token]
    package, module_path, name = type_token.split(":")
    sdk = _SDKS.get(package)
    if sdk is None:
        return None
    module = importlib.import_module(sdk if module_path == "index" else f"{sdk}.{module_path.split('/')[0]}")
    params = inspect.signature(getattr(module, name)._internal_init).parameters
    # GCP's `tags`, where a type has it, binds Resource Manager tags, never cost labels.
    for key in ("labels", "resource_labels") if package == "gcp" else ("tags",):
        if key in params:
            return _camel(key)
    return None


def untagged(graph: Graph) -> list[str]:
    """Taggable cloud resources (and GKE nodes, whose labels sit in nodeConfig) without the cost tags."""
    problems = []
    for r in graph:
        if not r.custom or r.is_provider:
            continue
        key = tag_input(r.type)
        carriers = []
        if key:
            carriers.append((key, r.inputs.get(key) or {}))
        if r.type == GPU_POOL_TYPES["gcp"]:
            carriers.append(("nodeConfig.resourceLabels", r.inputs["nodeConfig"].get("resourceLabels") or {}))
        for where, tags in carriers:
            missing = [t for t in COST_TAGS if t not in tags]
            if missing:
                problems.append(f"{r.type} {r.name}: {where} lacks {missing}")
            elif tags["stack"] != graph.stack:
                problems.append(f"{r.type} {r.name}: {where} has stack={tags['stack']}, not {graph.stack}")
    return problems


def _open(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def _aws_redis(graph: Graph, group: Resource, redis: RedisRecord) -> list[str]:
    ids = graph.by_id()
    out = []
    inputs = group.inputs
    if not (redis.tls and redis.at_rest_encrypted):
        out.append(f"{group.name}: TLS or encryption at rest is off")
    if inputs.get("authToken") != SECRET:
        out.append(f"{group.name}: the AUTH token is not a secret")
    for sg_id in inputs["securityGroupIds"]:
        for rule in ids[sg_id].inputs.get("ingress") or []:
            if any(_open(c) for c in rule.get("cidrBlocks", []) + rule.get("ipv6CidrBlocks", [])):
                out.append(f"{group.name}: security group {sg_id} is open to the internet")
        rules = [
            r
            for r in graph.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
            if r.inputs["securityGroupId"] == sg_id
        ]
        if not rules:
            out.append(f"{group.name}: security group {sg_id} has no ingress rule at all")
        for rule in rules:
            if "cidrIpv4" in rule.inputs or "cidrIpv6" in rule.inputs:
                out.append(f"{group.name}: ingress by CIDR instead of the cluster's security group")
    subnet_group = next(
        r
        for r in graph.of_type("aws:elasticache/subnetGroup:SubnetGroup")
        if r.inputs["name"] == inputs["subnetGroupName"]
    )
    for subnet_id in subnet_group.inputs["subnetIds"]:
        subnet = ids[subnet_id]
        if "kubernetes.io/role/internal-elb" not in subnet.inputs["tags"] or subnet.inputs.get("mapPublicIpOnLaunch"):
            out.append(f"{group.name}: subnet {subnet_id} is not private")
    return out


def _gcp_redis(graph: Graph, instance: Resource, redis: RedisRecord) -> list[str]:
    inputs = instance.inputs
    out = []
    site = redis.site
    networks = {r.id for r in graph.of_type("gcp:compute/network:Network") if graph.site_of(r) == site}
    if inputs.get("connectMode") != "PRIVATE_SERVICE_ACCESS" or inputs.get("authorizedNetwork") not in networks:
        out.append(f"{instance.name}: not on private service access to its site's VPC")
    if not (redis.auth and redis.tls):
        out.append(f"{instance.name}: AUTH or TLS is off")
    # Memorystore has no public address; only a firewall rule could widen who reaches the VPC.
    for fw in graph.of_type("gcp:compute/firewall:Firewall"):
        if any(_open(c) for c in fw.inputs.get("sourceRanges") or []):
            out.append(f"{fw.name}: firewall open to the internet in {site}")
    return out


def _azure_redis(graph: Graph, cache_: Resource, redis: RedisRecord) -> list[str]:
    out = []
    if redis.public:
        out.append(f"{cache_.name}: public network access is on")
    if redis.min_tls_version != "1.2":
        out.append(f"{cache_.name}: TLS below 1.2 is allowed")
    cache_name = cache_.id.rsplit("/", 1)[-1]
    databases = [
        d for d in graph.of_type("azure-native:redisenterprise:Database") if d.inputs.get("clusterName") == cache_name
    ]
    if not databases:
        out.append(f"{cache_.name}: no database")
    for db in databases:
        if db.inputs.get("clientProtocol", "Encrypted") != "Encrypted":
            out.append(f"{cache_.name}: database {db.name} takes plaintext connections")
    subnets = {r.id for r in graph.of_type("azure-native:network:Subnet") if graph.site_of(r) == redis.site}
    endpoints = [
        e
        for e in graph.of_type("azure-native:network:PrivateEndpoint")
        if any(c.get("privateLinkServiceId") == cache_.id for c in e.inputs.get("privateLinkServiceConnections") or [])
    ]
    if not endpoints or any(e.inputs["subnet"]["id"] not in subnets for e in endpoints):
        out.append(f"{cache_.name}: no private endpoint in its site's VNet")
    return out


_REDIS_CHECKS = {"aws": _aws_redis, "gcp": _gcp_redis, "azure": _azure_redis}


def open_redis(graph: Graph) -> list[str]:
    """Managed Redis that the internet could reach, or that takes connections without TLS and AUTH."""
    problems = []
    for r, redis in kinds.records(graph, RedisRecord):
        problems += _REDIS_CHECKS[redis.cloud](graph, r, redis)
    return problems


def site_clouds(graph: Graph) -> dict[str, str]:
    """{site name: cloud} from the site components the platforms register."""
    return {
        r.name: r.type.split(":")[1]
        for r in graph
        if not r.custom
        and r.type.startswith("llm-platform:")
        and r.type.endswith(":Site")
        and ":workloads:" not in r.type
    }


def missing_redis(graph: Graph) -> list[str]:
    have = {redis.site for redis in kinds.redises(graph)}
    return [f"{site}: no managed Redis" for site in site_clouds(graph) if site not in have]


def leaked_values(graph: Graph) -> list[str]:
    """Generated secrets the mock clouds answered with: none may appear anywhere the plan writes."""
    values = [mock_auth_string(r.name) for r in graph.of_type(REDIS_TYPES["gcp"])]
    values += [
        mock_redis_key(r.inputs.get("clusterName") or azure_autoname(r.name))
        for r in graph.of_type(REDIS_TYPES["azure"])
    ]
    if graph.of_type(REDIS_TYPES["azure"]):
        values.append(MOCK_AZURE_ACCESS_TOKEN)
    return values


def provider_mismatches(graph: Graph) -> list[str]:
    """Kubernetes objects not on a Kubernetes provider of their own site."""
    providers = {r.urn: r for r in graph.of_type("pulumi:providers:kubernetes")}
    out = []
    for r in graph:
        if not (r.custom and r.type.startswith("kubernetes:")):
            continue
        provider = providers.get(r.provider or "")
        if provider is None:
            # A default provider would deploy to whatever cluster the user's kubeconfig points at.
            out.append(f"{r.type} {r.name}: uses {r.provider}")
        elif graph.site_of(provider) != graph.site_of(r):
            out.append(f"{r.type} {r.name}: on {graph.site_of(r)} but uses {graph.site_of(provider)}'s cluster")
    return out


def closure(graph: Graph, r: Resource) -> set[str]:
    """Every URN `r` waits for, directly or through what it waits for (dependencies of its
    inputs and its dependsOn)."""
    index = graph.by_urn()
    seen: set[str] = set()
    todo = [*r.dependencies, *r.options.get("dependsOn", [])]
    while todo:
        urn = todo.pop()
        if urn in seen:
            continue
        seen.add(urn)
        if urn in index:
            todo += [*index[urn].dependencies, *index[urn].options.get("dependsOn", [])]
    return seen


def image_build(graph: Graph, workload: Resource, image: str) -> Resource | None:
    """The docker-build Image this run pushes and `workload` runs as `image` (its ref,
    <repository>@<digest>), when the workload waits for it; None for an image built elsewhere."""
    repository = image.split("@", 1)[0]
    waits_for = closure(graph, workload)
    for build in graph.of_type("docker-build:index:Image"):
        if build.urn in waits_for and any(t.rsplit(":", 1)[0] == repository for t in build.inputs.get("tags") or []):
            return build
    return None


def vllm_upstream(graph: Graph, workload: Resource, container: dict) -> str:
    """The upstream vLLM image a container runs: the base of images/vllm where this run built
    it (its VLLM_IMAGE build argument), else the container's image itself."""
    build = image_build(graph, workload, container["image"])
    if build is None:
        return container["image"]
    return build.inputs["buildArgs"]["VLLM_IMAGE"]


def budget_mismatches(graph: Graph) -> list[str]:
    """Clouds whose budget resource's amount differs from the sum of the budget records
    (llm_platform:budget_monthly_usd) its monitored sites' Prometheus carries."""
    clouds = site_clouds(graph)
    budgets = {budget.cloud: budget.amount for budget in kinds.budgets(graph)}
    records: dict[str, float] = {}
    for r in graph.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule"):
        for group in r.inputs["spec"]["groups"]:
            for rule in group["rules"]:
                if rule.get("record") == BUDGET_RECORD:
                    cloud = clouds[graph.site_of(r)]
                    records[cloud] = records.get(cloud, 0.0) + float(rule["expr"].removeprefix("vector(").rstrip(")"))
    problems = []
    for cloud, total in records.items():
        # GCP budgets take whole units, and the records are written with 6 significant digits.
        if abs(budgets.get(cloud, 0.0) - total) > 1 + total * 1e-5:
            problems.append(f"{cloud}: budget {budgets.get(cloud)} but its sites' records add up to {total:.2f}")
    return problems
