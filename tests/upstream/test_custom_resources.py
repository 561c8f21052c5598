"""Every custom resource in the graph (PodMonitor, PrometheusRule, ScaledObject, any new
kind) against the CRD the pinned chart installs (its schema in upstream/crds/), strictly:
a field the CRD does not declare is an error unless the schema preserves unknown fields
(the API server would prune it without a word)."""

from __future__ import annotations

import copy
import dataclasses

import jsonschema
import pytest

from infra.charts import PINS
from tests.stacks import SHIPPED
from tests.upstream import checks, vendored

# (apiVersion, kind) of every custom resource kind a CRD in upstream/crds/ serves.
CRD_KINDS = frozenset(vendored.crds())


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_custom_resource_matches_its_crd(graphs, stack):
    resources = checks.custom_resources(graphs[stack])
    kinds = {r.inputs["kind"] for r in resources}
    assert {"PodMonitor", "PrometheusRule", "ScaledObject"} <= kinds
    assert [p for r in resources for p in checks.custom_resource_problems(r)] == []


def test_every_vendored_crd_is_from_a_pinned_chart_at_its_pin():
    pinned = {p.chart: p.version for p in PINS}
    for _, source in vendored.crds().values():
        assert pinned.get(source["chart"]) == source["version"], source


def _first(graph, kind):
    return next(r for r in checks.custom_resources(graph) if r.inputs["kind"] == kind)


def _broken(resource, change):
    out = dataclasses.replace(resource, inputs=copy.deepcopy(resource.inputs))
    change(out.inputs)
    return out


def _rule(inputs):
    return inputs["spec"]["groups"][0]["rules"][0]


def test_int_or_string_takes_both():
    schema = checks.strict_schema({"type": "object", "properties": {"v": {"x-kubernetes-int-or-string": True}}})
    v = jsonschema.Draft4Validator(schema)
    assert v.is_valid({"v": 5}) and v.is_valid({"v": "5%"})
    assert not v.is_valid({"v": 5.5}) and not v.is_valid({"v": [5]})


def test_preserved_unknown_fields_stay_open():
    schema = checks.strict_schema(
        {
            "type": "object",
            "properties": {
                "open": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"a": {"type": "string"}},
                },
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
        }
    )
    v = jsonschema.Draft4Validator(schema)
    assert v.is_valid({"open": {"a": "x", "b": 1}})
    assert not v.is_valid({"closed": {"a": "x", "b": 1}})
    assert not v.is_valid({"other": 1})


# --- negative controls ---


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [
        ("PodMonitor", lambda i: i["spec"].update(podMetricEndpoints=[]), "'podMetricEndpoints' was unexpected"),
        (
            "PodMonitor",
            lambda i: i["spec"]["podMetricsEndpoints"][0].update(scrapeInterval="15s"),
            "'scrapeInterval' was unexpected",
        ),
        ("ScaledObject", lambda i: i["spec"].update(cooldown=600), "'cooldown' was unexpected"),
        ("ScaledObject", lambda i: i["spec"].update(minReplicaCount="zero"), "is not of type 'integer'"),
        ("PrometheusRule", lambda i: _rule(i).update({"for": "5 minutes"}), "does not match"),
        ("PrometheusRule", lambda i: _rule(i).update(expr=0.5), "is not valid under any of the given schemas"),
        ("PrometheusRule", lambda i: i.update(apiVersion="monitoring.coreos.com/v2"), "no vendored CRD serves"),
    ],
    ids=[
        "unknown-field",
        "unknown-nested-field",
        "unknown-scaledobject-field",
        "wrong-type",
        "bad-pattern",
        "int-or-string-float",
        "unserved-version",
    ],
)
def test_a_broken_custom_resource_is_caught(graphs, kind, change, expected):
    resource = _first(graphs["dev"], kind)
    assert checks.custom_resource_problems(resource) == []
    problems = checks.custom_resource_problems(_broken(resource, change))
    assert any(expected in p for p in problems), problems
