"""One reader of the recorded graph: what a node pool, a cluster, a managed Redis and a budget
look like in each cloud's recorded inputs.

`KINDS` is one table keyed by Pulumi type token; each entry says the cloud, the concept
(pool, cluster, redis, budget), what the cloud calls the product, and how to read the inputs
into the concept's record. The cost estimate, the scheduling check, the diagram, the policy
rules and the graph invariants all read pools, clusters, Redis and budgets through it, so a
property name or a default is written once.

Sources: a `Graph` (sites come from its component tree), or any iterable of resources that
carry `type`, `name`, their inputs as `inputs` (the graph's `Resource`) or `props` (the cost
estimate's `Item`), and optionally `site` and `parent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from infra.labels import POOL_LABEL
from infra.plan.graph import Graph
from infra.platform import API_EFFECTS

CLOUDS = ("aws", "gcp", "azure")
# An EKS node group's disks are in its launch template, a sibling under the same component.
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
_OPEN = ("0.0.0.0/0", "::/0")
# EKS and GKE spell taint effects in capitals; Kubernetes (and AKS) as NoSchedule. Read back
# through the map the platform writes them with.
_EFFECTS = {api: kubernetes for kubernetes, api in API_EFFECTS.items()}

Taint = tuple[str, str, str]  # (key, value, effect), the effect in Kubernetes spelling


def is_open(cidrs: Any) -> bool:
    """Whether a list of CIDRs lets in the whole internet."""
    return any(c in _OPEN for c in (cidrs or []))


@dataclass(frozen=True)
class PoolRecord:
    cloud: str
    site: str | None
    name: str  # the pool label; else the AKS profile's or the resource's name
    instance_type: str
    labels: dict[str, str]
    taints: tuple[Taint, ...]
    min_nodes: int
    max_nodes: int
    spot: bool
    disk_gb: int | None  # per node; None where the resource does not say (an EKS group without a launch template)
    accelerator_count: int | None  # GPUs the pool attaches per node (GKE); None where the machine type decides


@dataclass(frozen=True)
class ClusterRecord:
    cloud: str
    site: str | None
    name: str  # the `name` input where the cloud takes one (EKS, GKE), else the resource's name
    version: str  # the Kubernetes version as written, e.g. "1.35"
    channel: str | None  # GKE's release channel; None where the cloud has none
    location: str | None  # region or zone where the resource names one (GKE, AKS); EKS's is its provider's region
    public_endpoint: bool  # the API server is reachable from the whole internet
    secrets_encrypted: bool  # Kubernetes Secrets are envelope-encrypted with a KMS key
    log_types: tuple[str, ...]  # control-plane log types or components switched on, in the cloud's words
    private_nodes: bool | None  # None where the cluster resource does not decide it (EKS, AKS: subnets and pools)


@dataclass(frozen=True)
class RedisRecord:
    cloud: str
    site: str | None
    name: str
    sku: str | None  # what the price depends on: ElastiCache node type, Memorystore tier, Azure SKU
    nodes: int | None  # nodes billed; None where the price is per GB (Memorystore)
    memory_gb: float | None  # capacity billed per GB (Memorystore); None elsewhere
    tls: bool | None  # None where TLS is set on another resource (Azure: its Database)
    auth: bool | None  # None where auth is set on another resource (Azure: its Database)
    at_rest_encrypted: bool  # Memorystore and Azure Managed Redis always are
    public: bool  # reachable from the internet (only Azure Managed Redis can be)
    min_tls_version: str | None


@dataclass(frozen=True)
class BudgetRecord:
    cloud: str
    site: str | None
    name: str
    amount: float  # per month
    currency: str | None  # None where the budget is in the billing account's currency (Azure)
    alerts: frozenset[str]  # which spend it alerts on: "actual", "forecast"


Record = PoolRecord | ClusterRecord | RedisRecord | BudgetRecord


@dataclass(frozen=True)
class Kind:
    type: str
    cloud: str
    concept: str  # "pool", "cluster", "redis" or "budget"
    product: str  # what the cloud calls it
    read: Callable[[Mapping[str, Any], str, str | None], Record]  # (inputs, resource name, site)
    # Pools a resource of another concept holds inline (an AKS cluster's agentPoolProfiles).
    inline_pools: Callable[[Mapping[str, Any], str, str | None], list[PoolRecord]] | None = None


# Pools


def _eks_pool(inputs: Mapping[str, Any], name: str, site: str | None) -> PoolRecord:
    labels = inputs.get("labels") or {}
    scaling = inputs["scalingConfig"]
    return PoolRecord(
        cloud="aws",
        site=site,
        name=labels.get(POOL_LABEL, name),
        instance_type=inputs["instanceTypes"][0],
        labels=labels,
        taints=tuple((t["key"], t.get("value", ""), _EFFECTS[t["effect"]]) for t in inputs.get("taints") or []),
        min_nodes=scaling["minSize"],
        max_nodes=scaling["maxSize"],
        spot=inputs.get("capacityType") == "SPOT",
        disk_gb=inputs.get("diskSize"),
        accelerator_count=None,
    )


def _gke_pool(inputs: Mapping[str, Any], name: str, site: str | None) -> PoolRecord:
    node = inputs["nodeConfig"]
    labels = node.get("labels") or {}
    auto = inputs.get("autoscaling") or {}
    fixed = inputs.get("nodeCount", 1)
    return PoolRecord(
        cloud="gcp",
        site=site,
        name=labels.get(POOL_LABEL, name),
        instance_type=node["machineType"],
        labels=labels,
        taints=tuple((t["key"], t.get("value", ""), _EFFECTS[t["effect"]]) for t in node.get("taints") or []),
        min_nodes=auto.get("totalMinNodeCount", auto.get("minNodeCount", fixed)),
        max_nodes=auto.get("totalMaxNodeCount", auto.get("maxNodeCount", fixed)),
        spot=bool(node.get("spot")),
        disk_gb=node.get("diskSizeGb", 100),
        # The GPUs a GKE node gets are the accelerators the pool asks for, not the machine name.
        accelerator_count=sum(a["count"] for a in node.get("guestAccelerators") or []),
    )


def _aks_taint(text: str) -> Taint:
    """`key=value:Effect` (AKS's spelling) as (key, value, effect)."""
    kv, _, effect = text.rpartition(":")
    key, _, value = kv.partition("=")
    return key, value, effect


def _aks_pool(profile: Mapping[str, Any], name: str, site: str | None) -> PoolRecord:
    labels = profile.get("nodeLabels") or {}
    fixed = profile.get("count", 1)
    autoscale = profile.get("enableAutoScaling")
    return PoolRecord(
        cloud="azure",
        site=site,
        name=labels.get(POOL_LABEL, profile.get("name", name)),
        instance_type=profile["vmSize"],
        labels=labels,
        taints=tuple(_aks_taint(t) for t in profile.get("nodeTaints") or []),
        min_nodes=profile.get("minCount", fixed) if autoscale else fixed,
        max_nodes=profile.get("maxCount", fixed) if autoscale else fixed,
        spot=profile.get("scaleSetPriority") == "Spot",
        disk_gb=profile.get("osDiskSizeGB", 128),
        accelerator_count=None,
    )


def _aks_inline_pools(inputs: Mapping[str, Any], name: str, site: str | None) -> list[PoolRecord]:
    # AKS needs its system pool inline in the cluster; the rest are AgentPool resources.
    return [_aks_pool(p, name, site) for p in inputs.get("agentPoolProfiles") or []]


# Clusters


def _eks_cluster(inputs: Mapping[str, Any], name: str, site: str | None) -> ClusterRecord:
    vpc = inputs.get("vpcConfig") or {}
    cidrs = vpc.get("publicAccessCidrs")
    encrypted = [r for c in [inputs.get("encryptionConfig") or {}] for r in c.get("resources", [])]
    return ClusterRecord(
        cloud="aws",
        site=site,
        name=inputs.get("name", name),
        version=str(inputs.get("version", "")),
        channel=None,
        location=None,
        public_endpoint=bool(vpc.get("endpointPublicAccess", True) and (not cidrs or is_open(cidrs))),
        secrets_encrypted="secrets" in encrypted,
        log_types=tuple(inputs.get("enabledClusterLogTypes") or []),
        private_nodes=None,
    )


def _gke_cluster(inputs: Mapping[str, Any], name: str, site: str | None) -> ClusterRecord:
    private = inputs.get("privateClusterConfig") or {}
    nets = (inputs.get("masterAuthorizedNetworksConfig") or {}).get("cidrBlocks") or []
    return ClusterRecord(
        cloud="gcp",
        site=site,
        name=inputs.get("name", name),
        version=str(inputs.get("minMasterVersion", "")),
        channel=(inputs.get("releaseChannel") or {}).get("channel"),
        location=inputs.get("location", ""),
        public_endpoint=bool(
            not private.get("enablePrivateEndpoint") and (not nets or is_open([n.get("cidrBlock") for n in nets]))
        ),
        secrets_encrypted=(inputs.get("databaseEncryption") or {}).get("state") == "ENCRYPTED",
        log_types=tuple((inputs.get("loggingConfig") or {}).get("enableComponents") or []),
        private_nodes=bool(private.get("enablePrivateNodes")),
    )


def _aks_cluster(inputs: Mapping[str, Any], name: str, site: str | None) -> ClusterRecord:
    access = inputs.get("apiServerAccessProfile") or {}
    ranges = access.get("authorizedIPRanges") or []
    kms = ((inputs.get("securityProfile") or {}).get("azureKeyVaultKms")) or {}
    return ClusterRecord(
        cloud="azure",
        site=site,
        name=inputs.get("name", name),
        version=str(inputs.get("kubernetesVersion", "")),
        channel=None,
        location=inputs.get("location"),
        public_endpoint=bool(not access.get("enablePrivateCluster") and (not ranges or is_open(ranges))),
        secrets_encrypted=bool(kms.get("enabled")),
        # AKS sends control-plane logs through diagnostic settings, not the cluster resource.
        log_types=(),
        private_nodes=None,
    )


# Managed Redis


def _elasticache(inputs: Mapping[str, Any], name: str, site: str | None) -> RedisRecord:
    return RedisRecord(
        cloud="aws",
        site=site,
        name=name,
        sku=inputs.get("nodeType"),
        nodes=inputs.get("numCacheClusters", 1),
        memory_gb=None,
        tls=bool(inputs.get("transitEncryptionEnabled")),
        auth=bool(inputs.get("authToken") or inputs.get("userGroupIds")),
        at_rest_encrypted=bool(inputs.get("atRestEncryptionEnabled")),
        public=False,
        min_tls_version=None,
    )


def _memorystore(inputs: Mapping[str, Any], name: str, site: str | None) -> RedisRecord:
    return RedisRecord(
        cloud="gcp",
        site=site,
        name=name,
        sku=inputs.get("tier", "BASIC"),
        nodes=None,
        memory_gb=inputs.get("memorySizeGb"),
        tls=inputs.get("transitEncryptionMode") == "SERVER_AUTHENTICATION",
        auth=bool(inputs.get("authEnabled")),
        at_rest_encrypted=True,
        # Memorystore has no public address; it is reached through the VPC only.
        public=False,
        min_tls_version=None,
    )


def _managed_redis(inputs: Mapping[str, Any], name: str, site: str | None) -> RedisRecord:
    return RedisRecord(
        cloud="azure",
        site=site,
        name=name,
        sku=(inputs.get("sku") or {}).get("name"),
        # Billed per node; high availability (the default) runs two.
        nodes=1 if inputs.get("highAvailability") == "Disabled" else 2,
        memory_gb=None,
        tls=None,
        auth=None,
        at_rest_encrypted=True,
        # publicNetworkAccess has no default to rely on.
        public=inputs.get("publicNetworkAccess") != "Disabled",
        min_tls_version=inputs.get("minimumTlsVersion"),
    )


# Budgets


def _aws_budget(inputs: Mapping[str, Any], name: str, site: str | None) -> BudgetRecord:
    spend = {"ACTUAL": "actual", "FORECASTED": "forecast"}
    return BudgetRecord(
        cloud="aws",
        site=site,
        name=inputs.get("name", name),
        amount=float(inputs["limitAmount"]),
        currency=inputs.get("limitUnit"),
        alerts=frozenset(spend[n["notificationType"]] for n in inputs.get("notifications") or []),
    )


def _gcp_budget(inputs: Mapping[str, Any], name: str, site: str | None) -> BudgetRecord:
    specified = (inputs.get("amount") or {}).get("specifiedAmount", {})
    spend = {"CURRENT_SPEND": "actual", "FORECASTED_SPEND": "forecast"}
    basis = {t.get("spendBasis", "CURRENT_SPEND") for t in inputs.get("thresholdRules") or []}
    return BudgetRecord(
        cloud="gcp",
        site=site,
        name=inputs.get("displayName", name),
        amount=float(specified.get("units", 0)),
        currency=specified.get("currencyCode"),
        alerts=frozenset(spend[b] for b in basis if b in spend),
    )


def _azure_budget(inputs: Mapping[str, Any], name: str, site: str | None) -> BudgetRecord:
    spend = {"actual": "actual", "forecasted": "forecast"}
    types = {str(n.get("thresholdType", "Actual")).lower() for n in (inputs.get("notifications") or {}).values()}
    return BudgetRecord(
        cloud="azure",
        site=site,
        name=inputs.get("budgetName", name),
        amount=float(inputs.get("amount", 0)),
        currency=None,
        alerts=frozenset(spend[t] for t in types if t in spend),
    )


KINDS: dict[str, Kind] = {
    k.type: k
    for k in (
        Kind("aws:eks/nodeGroup:NodeGroup", "aws", "pool", "EKS managed node group", _eks_pool),
        Kind("gcp:container/nodePool:NodePool", "gcp", "pool", "GKE node pool", _gke_pool),
        Kind("azure-native:containerservice:AgentPool", "azure", "pool", "AKS agent pool", _aks_pool),
        Kind("aws:eks/cluster:Cluster", "aws", "cluster", "EKS", _eks_cluster),
        Kind("gcp:container/cluster:Cluster", "gcp", "cluster", "GKE", _gke_cluster),
        Kind(
            "azure-native:containerservice:ManagedCluster",
            "azure",
            "cluster",
            "AKS",
            _aks_cluster,
            inline_pools=_aks_inline_pools,
        ),
        Kind("aws:elasticache/replicationGroup:ReplicationGroup", "aws", "redis", "ElastiCache", _elasticache),
        Kind("gcp:redis/instance:Instance", "gcp", "redis", "Memorystore", _memorystore),
        Kind("azure-native:redisenterprise:RedisEnterprise", "azure", "redis", "Azure Managed Redis", _managed_redis),
        Kind("aws:budgets/budget:Budget", "aws", "budget", "AWS Budgets", _aws_budget),
        Kind("gcp:billing/budget:Budget", "gcp", "budget", "Cloud Billing budget", _gcp_budget),
        Kind("azure-native:consumption:Budget", "azure", "budget", "Azure Cost Management budget", _azure_budget),
    )
}
# Earlier azure-native releases kept Azure Managed Redis in the cache module.
_ALIASES = {"azure-native:cache:RedisEnterprise": "azure-native:redisenterprise:RedisEnterprise"}


def _canonical(type_token: str) -> str:
    """An azure-native token without its API version (containerservice/v20240901:AgentPool)."""
    package, _, rest = type_token.partition(":")
    if package != "azure-native" or "/" not in rest.partition(":")[0]:
        return _ALIASES.get(type_token, type_token)
    module, _, name = rest.partition(":")
    plain = f"{package}:{module.split('/', 1)[0]}:{name}"
    return _ALIASES.get(plain, plain)


def kind(type_token: str) -> Kind | None:
    return KINDS.get(_canonical(type_token))


def concept_of(type_token: str) -> str | None:
    """The concept of a type token: pool, cluster, redis or budget; None for any other type."""
    k = kind(type_token)
    return k.concept if k else None


def types_of(concept: str) -> dict[str, str]:
    """{cloud: type token} of the resources that are `concept` on each cloud."""
    return {k.cloud: k.type for k in KINDS.values() if k.concept == concept}


def type_of(cloud: str, concept: str) -> str:
    return types_of(concept)[cloud]


def product(cloud: str, concept: str) -> str:
    return KINDS[type_of(cloud, concept)].product


def read(type_token: str, inputs: Mapping[str, Any], name: str = "", site: str | None = None) -> Record | None:
    """The record of one resource's own concept (a cluster's, not its inline pools), or None."""
    k = kind(type_token)
    return k.read(inputs, name, site) if k else None


def _inputs(resource: Any) -> Mapping[str, Any]:
    return resource.props if hasattr(resource, "props") else resource.inputs


def _template_disk(inputs: Mapping[str, Any]) -> int:
    return sum(b["ebs"]["volumeSize"] for b in inputs.get("blockDeviceMappings", []))


def all_records(source: Graph | Iterable[Any]) -> list[tuple[Any, Record]]:
    """(resource, record) for each pool, cluster, Redis and budget in `source`, in its order; a
    resource holding inline pools gives its own record first, then theirs."""
    graph = source if isinstance(source, Graph) else None
    resources = list(source)
    disks = {getattr(r, "parent", None): _template_disk(_inputs(r)) for r in resources if r.type == LAUNCH_TEMPLATE}
    out: list[tuple[Any, Record]] = []
    for r in resources:
        k = kind(r.type)
        if k is None:
            continue
        inputs = _inputs(r)
        site = graph.site_of(r) if graph is not None else getattr(r, "site", None)
        found: list[Record] = [k.read(inputs, r.name, site)]
        if k.inline_pools:
            found += k.inline_pools(inputs, r.name, site)
        parent = getattr(r, "parent", None)
        for record in found:
            if isinstance(record, PoolRecord) and record.cloud == "aws" and record.disk_gb is None and parent in disks:
                record = replace(record, disk_gb=disks[parent])
            out.append((r, record))
    return out


R = TypeVar("R", PoolRecord, ClusterRecord, RedisRecord, BudgetRecord)


def records(source: Graph | Iterable[Any], of: type[R]) -> list[tuple[Any, R]]:
    """(resource, record) for each record of one concept, e.g. `records(graph, ClusterRecord)`."""
    return [(r, record) for r, record in all_records(source) if isinstance(record, of)]


def pools(source: Graph | Iterable[Any]) -> list[PoolRecord]:
    """Every node pool: pool resources and the pools clusters hold inline."""
    return [record for _, record in records(source, PoolRecord)]


def clusters(source: Graph | Iterable[Any]) -> list[ClusterRecord]:
    return [record for _, record in records(source, ClusterRecord)]


def redises(source: Graph | Iterable[Any]) -> list[RedisRecord]:
    return [record for _, record in records(source, RedisRecord)]


def budgets(source: Graph | Iterable[Any]) -> list[BudgetRecord]:
    return [record for _, record in records(source, BudgetRecord)]
