"""The workloads are the same on every cloud: the same model on an AWS, a GCP and an Azure
site gives the same Kubernetes objects, differing only where the Platform says so (node
selectors and tolerations, storage, load-balancer annotations, the image registry and Docker
Hub cache, pod
sizes from the node pool, the Redis CA where a cloud has a private one)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from infra.plan.graph import Graph
from tests.stacks import record_raw, stack_config

SYSTEM = {"aws": "m7i.large", "gcp": "n2-standard-4", "azure": "Standard_D4s_v5"}
# One L4 on AWS and GCP (identical node shapes), one T4 on Azure.
GPU = {"aws": "g6.xlarge", "gcp": "g2-standard-4", "azure": "Standard_NC4as_T4_v3"}
REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}

# Paths (list indexes as []) where a Platform decides the value; everything else must match.
PLATFORM_PATHS = tuple(
    re.compile(p)
    for p in (
        r"(^|\.)nodeSelector(\.|$)",  # pool labels, in pod specs and in chart values alike
        r"(^|\.)tolerations(\[\]|\.|$)",  # pool taints
        r"^spec\.template\.spec\.volumes",  # the model cache (RWO per pod or a shared RWX claim), the Redis CA
        r"^spec\.template\.spec\.containers\[\]\.volumeMounts",
        # images come from the site's registry and its Docker Hub cache:
        r"^spec\.template\.spec\.containers\[\]\.image$",
        r"(^|\.)image\.registry$",  # chart images from Docker Hub, through the same cache
        r"^spec\.template\.spec\.containers\[\]\.resources\.",  # sized from the node pool's allocatable
        r"(^|\.)storageClassName$",  # the platform's storage classes
        r"^metadata\.annotations\.(service\.beta\.kubernetes\.io|cloud\.google\.com)/",  # load balancer
    )
)
# The recorded node prices of the site's pools, which cost alerts join on.
PLATFORM_PATHS_BY_OBJECT = {
    "PrometheusRule/llm-platform-prices": (re.compile(r"^spec\.groups\[\]\.rules\[\]\."),),
    # The GPU driver's host directory, where a cloud installs it outside the runtime (GKE).
    "Release/dcgm-exporter": (
        re.compile(r"^values\.(extraHostVolumes|extraVolumeMounts|extraEnv|securityContext)(\[\]|\.|$)"),
    ),
}
# Objects only some platforms need: the shared cache claim (RWX storage), the Redis CA
# (a private CA), NVIDIA's device plugin (where the cloud does not run one).
PLATFORM_OBJECTS = re.compile(
    r"^(PersistentVolumeClaim/vllm-.*-cache|ConfigMap/gateway-redis-ca|Release/nvidia-device-plugin)$"
)


def _site(cloud: str, base: dict) -> dict:
    site = copy.deepcopy(base)
    site.update(
        name=f"{cloud}-site",
        cloud=cloud,
        region=REGION[cloud],
        systemPool={"instanceType": SYSTEM[cloud], "nodes": {"min": 1, "max": 3}},
    )
    site["gpuPools"][0]["instanceType"] = GPU[cloud]
    if cloud == "gcp":
        site["gcp"] = {"project": "llm-platform-test", "billingAccount": "01A2B3-C4D5E6-F7A8B9"}
    return site


@pytest.fixture(scope="module")
def three_clouds() -> Graph:
    raw = stack_config("dev")
    base = raw["llm-platform:sites"][0]
    raw["llm-platform:sites"] = [_site(c, base) for c in ("aws", "gcp", "azure")]
    return record_raw("same", raw)


def _objects(graph: Graph, site: str) -> dict[str, dict]:
    """The site's workload objects (the platform's own cluster add-ons are cloud-specific by design)."""
    out = {}
    for r in graph:
        chain = graph.ancestors(r)
        if not (r.type.startswith("kubernetes:") and r.custom and chain and chain[-1].name == site):
            continue
        if chain[-1].type == "llm-platform:workloads:Site":
            kind = r.inputs.get("kind") or r.type.rsplit(":", 1)[-1]
            name = (r.inputs.get("metadata") or {}).get("name") or r.inputs.get("name")
            out[f"{kind}/{name}"] = r.inputs
    return out


def _diff(a: Any, b: Any, path: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for x, y in zip(a, b, strict=True):
            yield from _diff(x, y, f"{path}[]")
    elif a != b:
        yield path


def _not_platform(path: str, key: str = "") -> bool:
    allowed = PLATFORM_PATHS + PLATFORM_PATHS_BY_OBJECT.get(key, ())
    return not any(p.search(path) for p in allowed)


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_workloads_match_the_aws_site_but_for_platform_data(three_clouds, cloud):
    aws = _objects(three_clouds, "aws-site")
    other = _objects(three_clouds, f"{cloud}-site")
    only = {k for k in set(aws) ^ set(other) if not PLATFORM_OBJECTS.match(k)}
    assert only == set(), f"objects on one site only: {sorted(only)}"
    assert any(k.startswith("Deployment/vllm-") for k in aws)
    for key in sorted(set(aws) & set(other)):
        stray = [p for p in _diff(aws[key], other[key]) if _not_platform(p, key)]
        assert stray == [], f"{key} differs outside Platform data: {stray}"


def test_vllm_on_identical_nodes_differs_only_in_placement_and_storage(three_clouds):
    """AWS g6.xlarge and GCP g2-standard-4 are the same node (4 vCPU, 16 GiB, one L4): the
    vLLM pods must then be sized identically, differing only in where they land."""
    aws = next(v for k, v in _objects(three_clouds, "aws-site").items() if k.startswith("Deployment/vllm-"))
    gcp = next(v for k, v in _objects(three_clouds, "gcp-site").items() if k.startswith("Deployment/vllm-"))
    paths = set(_diff(aws, gcp))
    assert paths, "the sites' pools should at least differ in their site label"
    assert paths <= {
        "spec.template.spec.nodeSelector.llm-platform.io/site",
        "spec.template.spec.tolerations[].value",  # GKE's own GPU taint value
        "spec.template.spec.volumes[].ephemeral.volumeClaimTemplate.spec.storageClassName",
        "spec.template.spec.containers[].image",  # the same image, through each site's own cache
    }, paths


def test_the_check_sees_a_stray_difference(three_clouds):
    aws = _objects(three_clouds, "aws-site")
    key = next(k for k in aws if k.startswith("Deployment/vllm-"))
    changed = copy.deepcopy(aws[key])
    changed["spec"]["template"]["spec"]["containers"][0]["args"].append("--enforce-eager")
    assert [p for p in _diff(aws[key], changed) if _not_platform(p)] == ["spec.template.spec.containers[].args"]
