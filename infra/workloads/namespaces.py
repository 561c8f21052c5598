"""The namespaces the workloads create: one shape, the Pod Security level each one needs."""

from __future__ import annotations

from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

from infra.labels import PART_OF


def namespace(
    resource_name: str,
    name: str,
    pod_security: Literal["restricted", "baseline", "privileged"],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Namespace:
    """A namespace of ours, with the Pod Security Standard level its pods are held to
    (kubernetes.io/docs/concepts/security/pod-security-admission/, the `enforce` label)."""
    return k8s.core.v1.Namespace(
        resource_name,
        metadata={
            "name": name,
            "labels": {"pod-security.kubernetes.io/enforce": pod_security, PART_OF: "llm-platform"},
        },
        opts=opts,
    )
