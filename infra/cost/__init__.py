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
from infra.plan import kinds

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


# What each cloud's node disks are called, and where in the price list its Redis is.
_DISK_WORDS = {"aws": "root volumes", "gcp": "boot disks", "azure": "OS disks"}
_REDIS_PRICES = {"aws": "redis", "gcp": "redis_gb", "azure": "managed_redis"}


def estimate(items: Iterable[Item], currency: str = "USD") -> Estimate:
    items = list(items)
    p = list_prices()
    clouds = _cloud_of(items)
    demand = _replica_demand(items)
    est = Estimate(currency=currency, budget=None)
    budgets = []
    # Pools, clusters, Redis and budgets as infra/plan/kinds.py reads them, per item.
    found: dict[int, list[kinds.Record]] = defaultdict(list)
    for item, record in kinds.all_records(items):
        found[id(item)].append(record)

    def add(component: str, what: str, monthly: dict[str, float]) -> None:
        est.lines.append(Line(site=item.site or "stack", component=component, what=what, monthly=monthly))

    for item in items:
        props, t = item.props, item.type
        cloud = clouds.get(item.site or "", "aws")
        for record in found.get(id(item), []):
            if isinstance(record, kinds.BudgetRecord):
                budgets.append(record.amount)
            elif isinstance(record, kinds.ClusterRecord):
                what = f"{kinds.product(record.cloud, 'cluster')} {record.name}"
                add("control plane", what, _flat(p[record.cloud]["control_plane"]))
            elif isinstance(record, kinds.PoolRecord):
                _pool_lines(record, demand, add)
            elif isinstance(record, kinds.RedisRecord):
                _redis_line(record, add)
        if id(item) in found:
            continue
        if t == "aws:ec2/natGateway:NatGateway":
            add("network", "NAT gateway", _flat(p["aws"]["nat_gateway"]))
        elif t == "aws:ec2/eip:Eip":
            add("network", "public IPv4", _flat(p["aws"]["public_ipv4"]))
        elif t == "aws:kms/key:Key":
            add("network", "KMS key", {s: p["aws"]["kms_key_month"] for s in SCALES})
        elif t == "kubernetes:core/v1:Service" and (props.get("spec") or {}).get("type") == "LoadBalancer":
            add("load balancers", f"{props['metadata']['name']} load balancer", _flat(p[cloud]["load_balancer"]))
        elif t == "kubernetes:apps/v1:Deployment":
            _volume_lines(item, props, cloud, add)
        elif t == "gcp:compute/routerNat:RouterNat":
            add("network", "Cloud NAT", _flat(p["gcp"]["nat_gateway"]))
        elif t.startswith("azure-native:network:NatGateway"):
            add("network", "NAT gateway", _flat(p["azure"]["nat_gateway"]))

    est.budget = round(sum(budgets), 2) if budgets else None
    return est


def _pool_lines(pool: kinds.PoolRecord, demand, add) -> None:
    """A node pool's nodes and their disks, at each scale."""
    p = list_prices()
    hourly, gpus, is_gpu = _instance_hourly(pool.cloud, pool.instance_type, pool.spot)
    nodes = _pool_nodes(pool.site or "", pool.name, pool.min_nodes, pool.max_nodes, gpus, demand)
    add(
        "GPU nodes" if is_gpu else "system nodes",
        f"{pool.name}: {pool.instance_type}{' spot' if pool.spot else ''} x {pool.min_nodes}..{pool.max_nodes}",
        _per_node(hourly, nodes),
    )
    if pool.disk_gb:
        price = p[pool.cloud]["disk_gb_month"]
        add(
            "disks",
            f"{pool.name} {_DISK_WORDS[pool.cloud]} {pool.disk_gb} GB",
            {s: pool.disk_gb * price * nodes[s] for s in SCALES},
        )


def _redis_line(redis: kinds.RedisRecord, add) -> None:
    table = list_prices()[redis.cloud][_REDIS_PRICES[redis.cloud]]
    name = kinds.product(redis.cloud, "redis")
    if redis.sku not in table:
        raise KeyError(f"no price for {name} SKU {redis.sku!r}; add it to infra/catalog/prices.yaml")
    if redis.nodes is None:
        # Memorystore is priced per GB of its tier.
        add("redis", f"{name} {redis.sku} {redis.memory_gb} GB", _flat(table[redis.sku], redis.memory_gb))
    else:
        add("redis", f"{name} {redis.sku} x {redis.nodes}", _flat(table[redis.sku], redis.nodes))


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
