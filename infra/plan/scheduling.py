"""Can every GPU pod in the graph be scheduled? Read from the graph alone.

Node pools come from the recorded node-group resources as infra/plan/kinds.py reads them
(labels, taints, instance type, sizes) and the catalog; pods from the recorded Deployments.
Nothing here trusts the Python objects that produced them, so a mistake on either side shows up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from infra.catalog import instance
from infra.plan import kinds
from infra.plan.graph import Graph
from infra.plan.kinds import PoolRecord
from infra.platform.allocatable import allocatable

WORKLOAD_KINDS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet")


@dataclass(frozen=True)
class GraphPool:
    site: str
    name: str
    cloud: str
    instance_type: str
    labels: dict[str, str]
    taints: tuple[tuple[str, str, str], ...]  # (key, value, effect)
    gpus: int
    gpu_memory_gib: int
    cpu_millis: int
    memory_mib: int
    min_nodes: int
    max_nodes: int
    spot: bool


@dataclass(frozen=True)
class GraphPod:
    site: str
    name: str
    spec: dict[str, Any]

    def requests(self) -> dict[str, str]:
        total: dict[str, str] = {}
        for c in self.spec.get("containers", []):
            total.update((c.get("resources") or {}).get("requests") or {})
        return total

    @property
    def gpus(self) -> int:
        return int(self.requests().get("nvidia.com/gpu", 0))


def _graph_pool(pool: PoolRecord) -> GraphPool:
    # Only GPU pools are in the catalog; system pools read as GPU-less with no figures.
    spec = instance(pool.cloud, pool.instance_type) if pool.labels.get("nvidia.com/gpu.present") else None
    cpu, mem = allocatable(spec.vcpu, spec.memory_gib) if spec else (0, 0)
    gpus = spec.gpus if spec else 0
    # Where the pool attaches its GPUs itself (GKE), those are what a node gets.
    if gpus and pool.accelerator_count is not None:
        gpus = pool.accelerator_count
    return GraphPool(
        site=pool.site or "",
        name=pool.name,
        cloud=pool.cloud,
        instance_type=pool.instance_type,
        labels=pool.labels,
        taints=pool.taints,
        gpus=gpus,
        gpu_memory_gib=spec.gpu.memory_gib if spec else 0,
        cpu_millis=cpu,
        memory_mib=mem,
        min_nodes=pool.min_nodes,
        max_nodes=pool.max_nodes,
        spot=pool.spot,
    )


def node_pools(graph: Graph) -> list[GraphPool]:
    return [_graph_pool(pool) for pool in kinds.pools(graph)]


def gpu_pools(graph: Graph) -> list[GraphPool]:
    return [p for p in node_pools(graph) if p.gpus]


def pods(graph: Graph) -> Iterator[GraphPod]:
    for r in graph.of_type(*WORKLOAD_KINDS):
        spec = r.inputs["spec"]["template"]["spec"]
        yield GraphPod(site=graph.site_of(r) or "", name=r.inputs["metadata"]["name"], spec=spec)


def _millis(cpu: str) -> int:
    return int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)


def _mib(memory: str) -> int:
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in units.items():
        if memory.endswith(suffix):
            return int(float(memory[: -len(suffix)]) * factor)
    return int(int(memory) / 2**20)


def tolerated(pod_spec: dict[str, Any], taint: tuple[str, str, str]) -> bool:
    key, value, effect = taint
    for t in pod_spec.get("tolerations") or []:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", key):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == key and t.get("value", "") == value:
            return True
    return False


def why_not(pod: GraphPod, pool: GraphPool) -> str | None:
    """None if the pod fits a node of the pool, else the first reason it does not."""
    selector = pod.spec.get("nodeSelector") or {}
    for key, value in selector.items():
        if pool.labels.get(key) != value:
            return f"nodeSelector {key}={value} does not match the pool's labels"
    for taint in pool.taints:
        if taint[2] in ("NoSchedule", "NoExecute") and not tolerated(pod.spec, taint):
            return f"taint {taint[0]}={taint[1]}:{taint[2]} is not tolerated"
    requests = pod.requests()
    if pod.gpus > pool.gpus:
        return f"asks for {pod.gpus} GPUs, nodes have {pool.gpus}"
    if _millis(requests.get("cpu", "0")) > pool.cpu_millis:
        return f"asks for {requests.get('cpu')} CPU, nodes leave {pool.cpu_millis}m"
    if _mib(requests.get("memory", "0")) > pool.memory_mib:
        return f"asks for {requests.get('memory')} memory, nodes leave {pool.memory_mib}Mi"
    if pool.max_nodes < 1:
        return "the pool can never have a node"
    return None


def unschedulable_gpu_pods(graph: Graph) -> list[str]:
    """One line per GPU pod that no GPU pool of its site can run."""
    problems = []
    pools = gpu_pools(graph)
    for pod in pods(graph):
        if not pod.gpus:
            continue
        candidates = [p for p in pools if p.site == pod.site]
        reasons = [f"{p.name}: {why_not(pod, p)}" for p in candidates]
        if not any(why_not(pod, p) is None for p in candidates):
            problems.append(
                f"{pod.site}/{pod.name}: no GPU pool fits ({'; '.join(reasons) or 'the site has no GPU pools'})"
            )
    return problems
