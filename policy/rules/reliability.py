"""Reliability rules: GPU taints and tolerations, gateway HA, zones, vLLM probes."""

from __future__ import annotations

from collections import defaultdict

from pulumi_policy import (
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.plan import kinds
from infra.plan.scheduling import gpu_pools, unschedulable_gpu_pods
from infra.workloads.sizing import IMAGE_PULL_SECONDS, NODE_FROM_ZERO_SECONDS
from policy.rules.facts import graph_of, pod_spec

GPU_TAINT = "nvidia.com/gpu"


def _gpu_pools_tainted(args: StackValidationArgs, report: ReportViolation) -> None:
    graph = graph_of(args.resources)
    for pool in gpu_pools(graph):
        if not any(key == GPU_TAINT and effect == "NoSchedule" for key, _, effect in pool.taints):
            report(
                f"{pool.site}/{pool.name}: GPU pool lacks the {GPU_TAINT}:NoSchedule taint, "
                "so CPU pods can take GPU nodes"
            )
    for problem in unschedulable_gpu_pods(graph):
        report(problem)


def _gateway_ha(args: StackValidationArgs, report: ReportViolation) -> None:
    minimum = int(args.get_config().get("minReplicas", 2))
    graph = graph_of(args.resources)
    pdbs = defaultdict(set)
    for r in graph.of_type("kubernetes:policy/v1:PodDisruptionBudget"):
        pdbs[graph.site_of(r)].add(r.inputs["metadata"]["name"])
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        if r.inputs["metadata"]["name"] != "gateway":
            continue
        site = graph.site_of(r)
        if r.inputs["spec"].get("replicas", 1) < minimum:
            report(
                f"{site}: gateway runs {r.inputs['spec'].get('replicas', 1)} replica(s); "
                f"needs >= {minimum} (gateway.replicas.min)"
            )
        if "gateway" not in pdbs[site]:
            report(f"{site}: gateway has no PodDisruptionBudget")


def _subnets_multi_zone(args: StackValidationArgs, report: ReportViolation) -> None:
    graph = graph_of(args.resources)
    zones = defaultdict(set)
    for r in graph.of_type("aws:ec2/subnet:Subnet"):
        zones[graph.site_of(r)].add(r.inputs.get("availabilityZone"))
    for site, names in zones.items():
        if len(names) < 2:
            report(f"{site}: subnets span {len(names)} zone(s); need >= 2")
    for cluster in kinds.clusters(graph):
        # Only GKE's location can name a zone; EKS and AKS control planes are regional.
        location = cluster.location or ""
        if cluster.cloud == "gcp" and location.count("-") >= 2 and location[-2] == "-":
            report(f"{cluster.site}: GKE cluster is zonal ({location}); use a region")


def _vllm_probes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != "kubernetes:apps/v1:Deployment":
        return
    spec = pod_spec(args.props) or {}
    for c in spec.get("containers") or []:
        if c.get("name") == "vllm":
            for probe in ("readinessProbe", "startupProbe"):
                if not c.get(probe):
                    report(f"vLLM container lacks a {probe}; model load takes minutes")


def _vllm_await_covers_startup(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """`pulumi up` gives up on a Deployment after 10 minutes unless told otherwise; a vLLM
    replica may need a GPU node from zero, a 10 GB image and its whole startup-probe budget."""
    if args.resource_type != "kubernetes:apps/v1:Deployment":
        return
    spec = pod_spec(args.props) or {}
    for c in spec.get("containers") or []:
        probe = c.get("startupProbe") if c.get("name") == "vllm" else None
        if not probe:
            continue
        startup = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
            "failureThreshold", 3
        )
        needed = NODE_FROM_ZERO_SECONDS + IMAGE_PULL_SECONDS + startup
        timeouts = args.opts.custom_timeouts if args.opts else None
        for action in ("create", "update"):
            got = getattr(timeouts, f"{action}_seconds", 0) if timeouts else 0
            if got < needed:
                report(
                    f"vLLM Deployment's {action} timeout is {got or 600:g}s (Pulumi's default when unset is 600s); "
                    f"its node, image pull and startup probe need {needed}s"
                )


POLICIES = [
    StackValidationPolicy(
        name="gpu-pools-tainted-and-tolerated",
        description="GPU pools carry the nvidia.com/gpu taint and every GPU pod tolerates and fits its pool.",
        validate=_gpu_pools_tainted,
        severity=Severity.HIGH,
        remediation_steps=(
            "Taint GPU pools with nvidia.com/gpu=true:NoSchedule; give GPU pods matching tolerations and selectors."
        ),
    ),
    StackValidationPolicy(
        name="gateway-ha",
        description="The gateway runs at least two replicas (config minReplicas) with a PodDisruptionBudget.",
        validate=_gateway_ha,
        severity=Severity.MEDIUM,
        remediation_steps="Set gateway.replicas.min >= 2.",
    ),
    StackValidationPolicy(
        name="subnets-multi-zone",
        description="Each site's network spans at least two zones.",
        validate=_subnets_multi_zone,
        severity=Severity.MEDIUM,
        remediation_steps="Use subnets in two or more availability zones and regional clusters.",
    ),
    ResourceValidationPolicy(
        name="vllm-await-covers-startup",
        description="`pulumi up` waits on a vLLM Deployment at least as long as a replica may take to start.",
        validate=_vllm_await_covers_startup,
        severity=Severity.HIGH,
        remediation_steps=(
            "Give the Deployment customTimeouts create/update >= GPU node + image pull + startup probe budget."
        ),
    ),
    ResourceValidationPolicy(
        name="vllm-probes",
        description="vLLM containers have readiness and startup probes.",
        validate=_vllm_probes,
        severity=Severity.MEDIUM,
        remediation_steps="Keep the startup probe sized for model load and a readiness probe on /health.",
    ),
]
