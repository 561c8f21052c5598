"""Lifecycle rules: every cluster's Kubernetes version is one its cloud still supports for a
while after the plan's date, and every Helm chart the site installs supports that version."""

from __future__ import annotations

import datetime

from pulumi_policy import EnforcementLevel, ReportViolation, Severity, StackValidationArgs, StackValidationPolicy

from infra.catalog import kubernetes_support
from infra.charts import PINS
from infra.plan import kinds
from infra.plan.kinds import ClusterRecord
from policy.rules.facts import graph_of

DEFAULT_MIN_DAYS = 60


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def _versions_supported(args: StackValidationArgs, report: ReportViolation) -> None:
    config = args.get_config()
    min_days = int(config.get("minDaysOfStandardSupport", DEFAULT_MIN_DAYS))
    as_of = datetime.date.fromisoformat(config["asOf"]) if config.get("asOf") else datetime.date.today()
    graph = graph_of(args.resources)
    charts = {pin.chart: pin for pin in PINS}
    for r, cluster in kinds.records(graph, ClusterRecord):
        cloud, site, minor = cluster.cloud, cluster.site, _minor(cluster.version)
        support = kubernetes_support(cloud, minor, cluster.channel)
        if support.not_offered:
            report(f"{site}: Kubernetes {minor}: {support.not_offered}", r.urn)
        elif support.end_of_standard_support is None:
            report(f"{site}: no end of standard support known for {cloud} {minor}", r.urn)
        else:
            left = (support.end_of_standard_support - as_of).days
            if left < min_days:
                report(
                    f"{site}: {cloud} standard support for Kubernetes {minor} ends {support.end_of_standard_support} "
                    f"({left} days after {as_of}; at least {min_days} wanted)",
                    r.urn,
                )
        for release in graph.of_type("kubernetes:helm.sh/v3:Release"):
            pin = charts.get(release.inputs.get("chart"))
            if graph.site_of(release) != site or pin is None:
                continue
            if not pin.supports(minor):
                upper = pin.kube_max or "any newer"
                report(
                    (
                        f"{site}: chart {pin.chart} {pin.version} supports Kubernetes "
                        f"{pin.kube_min} to {upper}, not {minor}"
                    ),
                    release.urn,
                )


POLICIES = [
    StackValidationPolicy(
        name="kubernetes-version-supported",
        description="Each cluster runs a Kubernetes minor its cloud offers and supports for minDaysOfStandardSupport "
        f"(default {DEFAULT_MIN_DAYS}) after the plan's date, and every chart pin supports it "
        "(upstream/kubernetes/support.yaml, infra/charts.py).",
        validate=_versions_supported,
        # A version the cloud will not create, or a chart that does not run on it, fails the deploy.
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.HIGH,
        remediation_steps="Set sites[].kubernetesVersion to a minor in standard support that every pin in "
        "infra/charts.py supports; refresh the calendar with `make upstream`.",
    ),
]
