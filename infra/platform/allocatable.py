"""What a node leaves for pods after the kubelet's reservations and the DaemonSets.

The formula is the one EKS and GKE both use for kube-reserved CPU (6% of the first core,
1% of the second, 0.5% of the next two, 0.25% of the rest) and a conservative memory
reservation; on top of that we hold back room for the DaemonSets every node runs (CNI,
kube-proxy, device plugin, DCGM exporter, node exporter). Workloads size their requests
from this, and the schedulability checks test against it.
"""

from __future__ import annotations

DAEMONSET_CPU_MILLIS = 500
DAEMONSET_MEMORY_MIB = 1024
EVICTION_MEMORY_MIB = 100


def _reserved_cpu_millis(vcpu: int) -> int:
    steps = [(1, 0.06), (1, 0.01), (2, 0.005)]
    reserved, left = 0.0, vcpu
    for cores, share in steps:
        used = min(left, cores)
        reserved += used * 1000 * share
        left -= used
    reserved += max(left, 0) * 1000 * 0.0025
    return int(reserved + 0.999)


def _reserved_memory_mib(memory_gib: int) -> int:
    # GKE's tiers: 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8,
    # 6% of the next 112, 2% of the rest.
    tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06)]
    reserved, left = 0.0, float(memory_gib)
    for size, share in tiers:
        used = min(left, size)
        reserved += used * 1024 * share
        left -= used
    reserved += max(left, 0) * 1024 * 0.02
    return int(reserved + 0.999)


def allocatable(vcpu: int, memory_gib: int) -> tuple[int, int]:
    """(CPU millicores, memory MiB) a node of this size leaves for our pods."""
    cpu = vcpu * 1000 - _reserved_cpu_millis(vcpu) - DAEMONSET_CPU_MILLIS
    memory = memory_gib * 1024 - _reserved_memory_mib(memory_gib) - EVICTION_MEMORY_MIB - DAEMONSET_MEMORY_MIB
    return cpu, memory
