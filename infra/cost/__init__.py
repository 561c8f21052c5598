"""Monthly cost of a stack, priced from its resources alone.

Input is a list of `Item`s (type, name, props, site, parent): the recorded graph gives
them offline, and the policy pack builds the same from the analyzer's resources, so the
estimate the CLI prints and the one a policy enforces are the same computation.

Three scales: `min` (every pool at its minimum), `expected` (enough GPU nodes for each
model's expected replicas), `max` (every pool at its maximum).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infra.catalog import catalog, cpu_node_hourly, list_prices
from infra.labels import EXPECTED_REPLICAS, MAX_REPLICAS, POOL_LABEL

SCALES = ("min", "expected", "max")


@dataclass(frozen=True)
class Item:
    type: str
    name: str
    props: dict[str, Any]
    site: str | None
    parent: str | None = None


@dataclass
class Line:
    site: str
    component: str
    what: str
    monthly: dict[str, float]  # scale -> USD


@dataclass
class Estimate:
    currency: str
    budget: float | None
    lines: list[Line] = field(default_factory=list)

    def total(self, scale: str) -> float:
        return round(sum(line.monthly[scale] for line in self.lines), 2)

    def by(self, key: str, scale: str = "expected") -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for line in self.lines:
            out[getattr(line, key)] += line.monthly[scale]
        return {k: round(v, 2) for k, v in sorted(out.items())}

    def by_site(self) -> dict[str, dict[str, float]]:
        return {
            site: {s: self._site_total(site, s) for s in SCALES} for site in sorted({line.site for line in self.lines})
        }

    def _site_total(self, site: str, scale: str) -> float:
        return round(sum(line.monthly[scale] for line in self.lines if line.site == site), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "budget": self.budget,
            "monthly": {s: self.total(s) for s in SCALES},
            "by_component": self.by("component"),
            "by_component_max": self.by("component", "max"),
            "by_site": self.by_site(),
            "lines": [
                {
                    "site": line.site,
                    "component": line.component,
                    "what": line.what,
                    "monthly": {k: round(v, 2) for k, v in line.monthly.items()},
                }
                for line in self.lines
            ],
        }


def _flat(hourly: float, count: float = 1) -> dict[str, float]:
    monthly = hourly * list_prices()["hours_per_month"] * count
    return {s: monthly for s in SCALES}


def _per_node(hourly: float, nodes: dict[str, float]) -> dict[str, float]:
    return {s: hourly * list_prices()["hours_per_month"] * nodes[s] for s in SCALES}


def _cloud_of(items: list[Item]) -> dict[str, str]:
    clouds: dict[str, str] = {}
    for item in items:
        if item.site and item.type.split(":")[0] in ("aws", "gcp", "azure-native"):
            clouds.setdefault(
                item.site, {"azure-native": "azure"}.get(item.type.split(":")[0], item.type.split(":")[0])
            )
    return clouds


def _annotations(props: dict[str, Any]) -> dict[str, str]:
    return (props.get("metadata") or {}).get("annotations") or {}


def _replica_demand(items: list[Item]) -> dict[tuple[str, str], dict[str, float]]:
    """GPUs asked for per (site, pool) at each scale, from the vLLM Deployments."""
    demand: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {s: 0.0 for s in SCALES})
    for item in items:
        if item.type != "kubernetes:apps/v1:Deployment":
            continue
        pod = item.props["spec"]["template"]["spec"]
        gpus = sum(
            int(((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]
        )
        pool = (pod.get("nodeSelector") or {}).get(POOL_LABEL)
        if not gpus or not pool:
            continue
        ann = _annotations(item.props)
        replicas = {
            "min": float(item.props["spec"].get("replicas", 1)),
            "expected": float(ann.get(EXPECTED_REPLICAS, item.props["spec"].get("replicas", 1))),
            "max": float(ann.get(MAX_REPLICAS, item.props["spec"].get("replicas", 1))),
        }
        for s in SCALES:
            demand[(item.site or "", pool)][s] += replicas[s] * gpus
    return demand


def _pool_nodes(site: str, pool: str, low: int, high: int, gpus_per_node: int, demand) -> dict[str, float]:
    asked = demand.get((site, pool))
    if not gpus_per_node or not asked:
        return {"min": low, "expected": low, "max": high}
    expected = min(max(low, math.ceil(asked["expected"] / gpus_per_node)), high)
    return {"min": low, "expected": expected, "max": high}


def _instance_hourly(cloud: str, itype: str, spot: bool) -> tuple[float, int, bool]:
    """(USD/hour, GPUs per node, is GPU) for an instance type; unknown CPU types fail loudly."""
    gpu_types = catalog(cloud).instances
    if itype in gpu_types:
        spec = gpu_types[itype]
        return spec.hourly(spot), spec.gpus, True
    hourly = cpu_node_hourly(cloud, itype, spot)
    if hourly is None:
        raise KeyError(f"no price for {cloud} instance type {itype!r}; add it to infra/catalog/prices.yaml")
    return hourly, 0, False


def estimate(items: Iterable[Item], currency: str = "USD") -> Estimate:
    items = list(items)
    p = list_prices()
    clouds = _cloud_of(items)
    demand = _replica_demand(items)
    est = Estimate(currency=currency, budget=None)
    by_parent_disk: dict[str | None, float] = {}
    budgets = []

    for item in items:
        props = item.props
        t = item.type
        if t == "aws:ec2/launchTemplate:LaunchTemplate":
            by_parent_disk[item.parent] = sum(b["ebs"]["volumeSize"] for b in props.get("blockDeviceMappings", []))

    def add(component: str, what: str, monthly: dict[str, float]) -> None:
        est.lines.append(Line(site=item.site or "stack", component=component, what=what, monthly=monthly))

    for item in items:
        props, t = item.props, item.type
        cloud = clouds.get(item.site or "", "aws")
        if t == "aws:budgets/budget:Budget":
            budgets.append(float(props["limitAmount"]))
        elif t == "aws:eks/cluster:Cluster":
            add("control plane", f"EKS {props.get('name', item.name)}", _flat(p["aws"]["control_plane"]))
        elif t == "aws:eks/nodeGroup:NodeGroup":
            itype = props["instanceTypes"][0]
            spot = props.get("capacityType") == "SPOT"
            hourly, gpus, is_gpu = _instance_hourly("aws", itype, spot)
            scaling = props["scalingConfig"]
            pool = (props.get("labels") or {}).get(POOL_LABEL, item.name)
            nodes = _pool_nodes(item.site or "", pool, scaling["minSize"], scaling["maxSize"], gpus, demand)
            kind = "GPU nodes" if is_gpu else "system nodes"
            add(
                kind,
                f"{pool}: {itype}{' spot' if spot else ''} x {nodes['min']}..{nodes['max']}",
                _per_node(hourly, nodes),
            )
            disk = by_parent_disk.get(item.parent, 0)
            if disk:
                add(
                    "disks",
                    f"{pool} root volumes {disk} GB",
                    {s: disk * p["aws"]["disk_gb_month"] * nodes[s] for s in SCALES},
                )
        elif t == "aws:ec2/natGateway:NatGateway":
            add("network", "NAT gateway", _flat(p["aws"]["nat_gateway"]))
        elif t == "aws:ec2/eip:Eip":
            add("network", "public IPv4", _flat(p["aws"]["public_ipv4"]))
        elif t == "aws:kms/key:Key":
            add("network", "KMS key", {s: p["aws"]["kms_key_month"] for s in SCALES})
        elif t == "aws:elasticache/replicationGroup:ReplicationGroup":
            node = props["nodeType"]
            add(
                "redis",
                f"ElastiCache {node} x {props.get('numCacheClusters', 1)}",
                _flat(p["aws"]["redis"][node], props.get("numCacheClusters", 1)),
            )
        elif t == "kubernetes:core/v1:Service" and (props.get("spec") or {}).get("type") == "LoadBalancer":
            add("load balancers", f"{props['metadata']['name']} load balancer", _flat(p[cloud]["load_balancer"]))
        elif t == "kubernetes:apps/v1:Deployment":
            _volume_lines(item, props, cloud, add)
        else:
            _other_clouds(item, t, props, cloud, demand, add, budgets)

    est.budget = round(sum(budgets), 2) if budgets else None
    return est


def _volume_lines(item: Item, props: dict[str, Any], cloud: str, add) -> None:
    """Per-replica volumes (the vLLM model cache) at each replica scale."""
    pod = props["spec"]["template"]["spec"]
    gib = 0
    for volume in pod.get("volumes", []):
        template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate")
        if template:
            gib += int(str(template["spec"]["resources"]["requests"]["storage"]).rstrip("Gi"))
    if not gib:
        return
    ann = _annotations(props)
    replicas = {
        "min": props["spec"].get("replicas", 1),
        "expected": float(ann.get(EXPECTED_REPLICAS, props["spec"].get("replicas", 1))),
        "max": float(ann.get(MAX_REPLICAS, props["spec"].get("replicas", 1))),
    }
    price = list_prices()[cloud]["disk_gb_month"]
    add(
        "disks",
        f"{props['metadata']['name']} model cache {gib} GiB per replica",
        {s: gib * price * replicas[s] for s in SCALES},
    )


def _other_clouds(item, t, props, cloud, demand, add, budgets) -> None:
    """GKE and AKS resources: same components, their own property names."""
    p = list_prices()
    if t == "gcp:container/cluster:Cluster":
        add("control plane", f"GKE {props.get('name', item.name)}", _flat(p["gcp"]["control_plane"]))
    elif t == "gcp:container/nodePool:NodePool":
        machine = props["nodeConfig"]["machineType"]
        spot = bool(props["nodeConfig"].get("spot"))
        hourly, gpus, is_gpu = _instance_hourly("gcp", machine, spot)
        auto = props.get("autoscaling") or {}
        low = auto.get("totalMinNodeCount", auto.get("minNodeCount", props.get("nodeCount", 1)))
        high = auto.get("totalMaxNodeCount", auto.get("maxNodeCount", props.get("nodeCount", 1)))
        pool = (props["nodeConfig"].get("labels") or {}).get(POOL_LABEL, item.name)
        nodes = _pool_nodes(item.site or "", pool, low, high, gpus, demand)
        add(
            "GPU nodes" if is_gpu else "system nodes",
            f"{pool}: {machine}{' spot' if spot else ''} x {low}..{high}",
            _per_node(hourly, nodes),
        )
        disk = props["nodeConfig"].get("diskSizeGb", 100)
        add("disks", f"{pool} boot disks {disk} GB", {s: disk * p["gcp"]["disk_gb_month"] * nodes[s] for s in SCALES})
    elif t == "gcp:compute/routerNat:RouterNat":
        add("network", "Cloud NAT", _flat(p["gcp"]["nat_gateway"]))
    elif t == "gcp:redis/instance:Instance":
        tier = props.get("tier", "BASIC")
        add(
            "redis",
            f"Memorystore {tier} {props['memorySizeGb']} GB",
            _flat(p["gcp"]["redis_gb"][tier], props["memorySizeGb"]),
        )
    elif t == "gcp:billing/budget:Budget":
        budgets.append(float((props.get("amount") or {}).get("specifiedAmount", {}).get("units", 0)))
    elif t.startswith("azure-native:containerservice:ManagedCluster"):
        add("control plane", f"AKS {item.name}", _flat(p["azure"]["control_plane"]))
        # The system pool is inline in the cluster; it costs like any agent pool.
        for profile in props.get("agentPoolProfiles") or []:
            _aks_pool(item, profile, demand, add)
    elif t.startswith("azure-native:containerservice:AgentPool"):
        _aks_pool(item, props, demand, add)
    elif t.startswith("azure-native:network:NatGateway"):
        add("network", "NAT gateway", _flat(p["azure"]["nat_gateway"]))
    elif t.startswith(("azure-native:redisenterprise", "azure-native:cache")) and t.endswith(":RedisEnterprise"):
        sku = (props.get("sku") or {}).get("name")
        table = p["azure"]["managed_redis"]
        if sku not in table:
            raise KeyError(f"no price for Azure Managed Redis SKU {sku!r}; add it to infra/catalog/prices.yaml")
        # Billed per node; high availability (the default) runs two.
        nodes = 1 if props.get("highAvailability") == "Disabled" else 2
        add("redis", f"Azure Managed Redis {sku} x {nodes}", _flat(table[sku], nodes))
    elif t.startswith("azure-native:consumption:Budget"):
        budgets.append(float(props.get("amount", 0)))


def _aks_pool(item: Item, props: dict[str, Any], demand, add) -> None:
    p = list_prices()
    size = props["vmSize"]
    spot = props.get("scaleSetPriority") == "Spot"
    hourly, gpus, is_gpu = _instance_hourly("azure", size, spot)
    low, high = props.get("minCount", props.get("count", 1)), props.get("maxCount", props.get("count", 1))
    pool = (props.get("nodeLabels") or {}).get(POOL_LABEL, props.get("name", item.name))
    nodes = _pool_nodes(item.site or "", pool, low, high, gpus, demand)
    add(
        "GPU nodes" if is_gpu else "system nodes",
        f"{pool}: {size}{' spot' if spot else ''} x {low}..{high}",
        _per_node(hourly, nodes),
    )
    disk = props.get("osDiskSizeGB", 128)
    add("disks", f"{pool} OS disks {disk} GB", {s: disk * p["azure"]["disk_gb_month"] * nodes[s] for s in SCALES})
