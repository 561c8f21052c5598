"""Helm charts the platform and workloads install, pinned in one place so an upgrade is one diff.

Each pin carries the chart's appVersion and the Kubernetes minors it supports, with where
that range is stated. `make upstream` writes facts derived from each pinned chart (its release
list, Chart.yaml facts, the key paths of its values.yaml, the schemas of the CRDs the program
uses) into upstream/, and tests/upstream/ checks the program against them: a pin that was never
released, a values key the chart does not have, or a custom resource its CRD rejects fails there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi_kubernetes as k8s


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class Chart:
    repo: str
    chart: str
    version: str
    # The chart's Chart.yaml appVersion at `version`.
    app_version: str
    # Kubernetes minors the pin supports ("1.35"); kube_max None where upstream states no upper bound.
    kube_min: str
    kube_max: str | None

    def release(self, resource_name: str, release_name: str, **kwargs: Any) -> k8s.helm.v3.Release:
        """A Helm release of this pin: the chart, version and repository always come from here."""
        return k8s.helm.v3.Release(
            resource_name,
            name=release_name,
            chart=self.chart,
            version=self.version,
            repository_opts={"repo": self.repo},
            **kwargs,
        )

    def supports(self, kubernetes_version: str) -> bool:
        """Whether a cluster at this Kubernetes version ("1.35" or "1.35.2") is in the pin's range."""
        minor = _minor(kubernetes_version)
        if minor < _minor(self.kube_min):
            return False
        return self.kube_max is None or minor <= _minor(self.kube_max)


# Chart 9.59.0 runs cluster-autoscaler 1.35.0 (appVersion). The autoscaler's README ("Releases")
# pairs each CA minor with the same Kubernetes minor and tests no other pairing.
CLUSTER_AUTOSCALER = Chart(
    "https://kubernetes.github.io/autoscaler",
    "cluster-autoscaler",
    "9.59.0",
    app_version="1.35.0",
    kube_min="1.35",
    kube_max="1.35",
)
# Chart.yaml kubeVersion ">= 1.10.0-0"; the README's prerequisites say "Kubernetes version >= 1.10".
NVIDIA_DEVICE_PLUGIN = Chart(
    "https://nvidia.github.io/k8s-device-plugin",
    "nvidia-device-plugin",
    "0.20.0",
    app_version="0.20.0",
    kube_min="1.10",
    kube_max=None,
)
# Chart.yaml kubeVersion ">=1.25.0-0"; prometheus-operator's compatibility page: CEL in its CRDs
# needs Kubernetes >= 1.25, and no upper bound beyond client-go's own matrix.
KUBE_PROMETHEUS_STACK = Chart(
    "https://prometheus-community.github.io/helm-charts",
    "kube-prometheus-stack",
    "88.5.3",
    app_version="v0.93.1",
    kube_min="1.25",
    kube_max=None,
)
# Chart.yaml kubeVersion ">= 1.19.0-0".
DCGM_EXPORTER = Chart(
    "https://nvidia.github.io/dcgm-exporter/helm-charts",
    "dcgm-exporter",
    "4.8.2",
    app_version="4.8.2",
    kube_min="1.19",
    kube_max=None,
)
# KEDA's compatibility table (keda-docs content/docs/2.20/operate/cluster.md): v2.20 is tested on
# v1.33 - v1.35. The chart's own kubeVersion (">=v1.23.0-0") is looser than what KEDA tests.
KEDA = Chart(
    "https://kedacore.github.io/charts",
    "keda",
    "2.20.2",
    app_version="2.20.2",
    kube_min="1.33",
    kube_max="1.35",
)
# No kubeVersion in Chart.yaml; the controller's installation guide (kubernetes-sigs/
# aws-load-balancer-controller docs/deploy/installation.md): "v2.5.0+ requires Kubernetes 1.22+".
AWS_LOAD_BALANCER_CONTROLLER = Chart(
    "https://aws.github.io/eks-charts",
    "aws-load-balancer-controller",
    "3.5.0",
    app_version="v3.5.0",
    kube_min="1.22",
    kube_max=None,
)

PINS: tuple[Chart, ...] = (
    CLUSTER_AUTOSCALER,
    NVIDIA_DEVICE_PLUGIN,
    KUBE_PROMETHEUS_STACK,
    DCGM_EXPORTER,
    KEDA,
    AWS_LOAD_BALANCER_CONTROLLER,
)
