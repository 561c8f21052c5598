"""Every Helm release's values against the pinned chart's own values.yaml, as the key paths
upstream/charts/<chart>/values-keys.yaml lists: each key path must exist there, or in the
values.yaml of the subchart it is passed to. Helm ignores an unknown key without a word, so a key renamed between chart
versions silently stops doing anything."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from tests.stacks import SHIPPED
from tests.upstream import checks, vendored


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_release_value_is_a_key_of_its_chart(graphs, stack):
    assert checks.helm_releases(graphs[stack])
    assert checks.graph_values_problems(graphs[stack]) == []


def _lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("scope", sorted(checks.OPEN_MAPS))
def test_each_open_map_is_a_non_empty_map_of_the_chart(scope):
    """An exception that no longer matches the chart is removed, not carried along."""
    chart, _, sub = scope.partition("/")
    values = vendored.subchart_values(chart)[sub] if sub else vendored.values(chart)
    for path, field in checks.OPEN_MAPS[scope].items():
        default = _lookup(values, path)
        assert isinstance(default, dict), f"{scope} {path}: a {vendored.kind_name(default)} in values.yaml, not a map"
        # An untyped exception for a map that is empty anyway would be dead weight.
        assert default or isinstance(field, checks.KubernetesField), f"{scope} {path}: empty, so already open"


@pytest.mark.parametrize("scope", sorted(checks.UNDECLARED))
def test_each_undeclared_key_is_still_undeclared(scope):
    chart, _, sub = scope.partition("/")
    values = vendored.subchart_values(chart)[sub] if sub else vendored.values(chart)
    for path in checks.UNDECLARED[scope]:
        with pytest.raises(KeyError):
            _lookup(values, path)


def test_open_maps_take_any_keys():
    assert checks.unknown_values("keda", {"nodeSelector": {"any.example.com/label": "x"}}) == []
    assert checks.unknown_values("cluster-autoscaler", {"extraArgs": {"max-node-provision-time": "20m"}}) == []


def test_kubernetes_typed_maps_take_that_types_fields_only():
    assert (
        checks.unknown_values(
            "dcgm-exporter", {"securityContext": {"privileged": True, "allowPrivilegeEscalation": True}}
        )
        == []
    )
    problems = checks.unknown_values("dcgm-exporter", {"securityContext": {"privilegd": True}})
    assert any("securityContext" in p and "privilegd" in p for p in problems), problems
    problems = checks.unknown_values(
        "kube-prometheus-stack", {"prometheus": {"prometheusSpec": {"resources": {"request": {}}}}}
    )
    assert any("'request'" in p for p in problems), problems


# --- negative controls ---


def _kps(graph):
    return next(r for r in checks.helm_releases(graph) if r.inputs["chart"] == "kube-prometheus-stack")


def _with(release, change):
    broken = dataclasses.replace(release, inputs=copy.deepcopy(release.inputs))
    change(broken.inputs["values"])
    return broken


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda v: v.update(prometheusOperatr={"enabled": True}), "prometheusOperatr: no such key"),
        (
            lambda v: v["prometheus"]["prometheusSpec"].update(retentionSizeGB=5),
            "prometheus.prometheusSpec.retentionSizeGB: no such key",
        ),
        # Passed through to the grafana subchart: checked against grafana's own values.yaml.
        (
            lambda v: v["grafana"]["sidecar"]["dashboards"].update(searchNamespaces="ALL"),
            "grafana.sidecar.dashboards.searchNamespaces: no such key",
        ),
        (
            lambda v: v["kube-state-metrics"].update(metricLabelAllowlist=[]),
            "kube-state-metrics.metricLabelAllowlist: no such key",
        ),
        # A map where the chart expects a scalar.
        (lambda v: v.update(fullnameOverride={"name": "x"}), "fullnameOverride: a map is given"),
        # A subchart whose version the chart leaves open, so its values cannot be checked.
        (lambda v: v.update({"prometheus-windows-exporter": {"enabled": True}}), "not vendored"),
    ],
    ids=["top-level", "nested", "subchart", "subchart-list", "map-for-scalar", "unvendored-subchart"],
)
def test_an_unknown_values_key_is_caught(graphs, change, expected):
    release = _kps(graphs["dev"])
    assert checks.values_problems(release) == []
    problems = checks.values_problems(_with(release, change))
    assert any(expected in p for p in problems), problems
