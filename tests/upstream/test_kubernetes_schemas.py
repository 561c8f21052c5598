"""Every Kubernetes object the program applies, validated against Kubernetes' own OpenAPI
schema for the version its site's cluster runs, strictly: an unknown or misspelt field is an
error, as it is for `kubectl apply --validate=strict` (the API server drops it silently
otherwise). Schemas: kubernetes-validate (PyPI), generated from kubernetes/kubernetes
api/openapi-spec for each minor. Custom resources are checked against their CRDs elsewhere
(test_custom_resources.py)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from infra.plan.graph import SECRET, Graph
from tests.infra.invariants import CLUSTER_TYPES
from tests.stacks import SHIPPED
from tests.upstream import vendored

# What each cloud's cluster resource calls its Kubernetes version.
_VERSION_INPUT = {"aws": "version", "gcp": "minMasterVersion", "azure": "kubernetesVersion"}
# Kinds served by Kubernetes itself; anything else is a custom resource with its own CRD.
BUILT_IN_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "storage.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "scheduling.k8s.io/v1",
}


def site_versions(graph: Graph) -> dict[str, str]:
    """{site: Kubernetes minor} from the cluster each site creates."""
    out = {}
    for cloud, typ in CLUSTER_TYPES.items():
        for r in graph.of_type(typ):
            out[graph.site_of(r)] = str(r.inputs[_VERSION_INPUT[cloud]])
    return out


def built_in_objects(graph: Graph):
    for r in graph:
        if r.is_kubernetes_object and r.inputs.get("apiVersion") in BUILT_IN_GROUPS:
            yield r


def as_applied(obj: dict) -> dict:
    """The object with masked secret maps given back their shape (the values stay masked)."""
    out = copy.deepcopy(obj)
    for key in ("data", "stringData"):
        if out.get(key) == SECRET:
            out[key] = {"masked": SECRET}
    return out


def schema_problems(graph: Graph) -> list[str]:
    versions = site_versions(graph)
    problems = []
    for r in built_in_objects(graph):
        version = versions[graph.site_of(r)]
        try:
            kubernetes_validate.validate(as_applied(r.inputs), f"{version}.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{r.name} ({r.inputs['kind']}, Kubernetes {version}): {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{r.name}: no schema for Kubernetes {version}: {exc}")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_object_matches_the_schema_of_its_site_version(graphs, stack):
    graph = graphs[stack]
    assert len(list(built_in_objects(graph))) > 10
    assert schema_problems(graph) == []


def test_every_applied_kind_is_checked_here_or_against_a_crd(graphs):
    """No object slips past both checks by an apiVersion neither knows."""
    for graph in graphs.values():
        for r in graph:
            if r.is_kubernetes_object:
                kind = (r.inputs.get("apiVersion"), r.inputs.get("kind"))
                assert r.inputs.get("apiVersion") in BUILT_IN_GROUPS or kind in frozenset(vendored.crds()), kind


def _first(graph: Graph, kind: str):
    return next(r for r in built_in_objects(graph) if r.inputs["kind"] == kind)


@pytest.mark.parametrize(
    "breakage",
    [
        # A misspelt field the API server would drop without a word.
        lambda g: _first(g, "Deployment").inputs["spec"]["template"]["spec"].update(nodeSelecter={"a": "b"}),
        # A field of the wrong type.
        lambda g: _first(g, "Service").inputs["spec"]["ports"][0].update(port="eighty"),
        # A field that exists only in a later Kubernetes than the site runs.
        lambda g: (
            [r.inputs.update({_VERSION_INPUT["aws"]: "1.25"}) for r in g.of_type(CLUSTER_TYPES["aws"])]
            and _first(g, "Deployment")
            .inputs["spec"]["template"]["spec"]["containers"][0]
            .update(lifecycle={"preStop": {"sleep": {"seconds": 5}}})
        ),
    ],
    ids=["unknown-field", "wrong-type", "field-newer-than-the-cluster"],
)
def test_a_broken_object_is_caught(graphs, breakage):
    graph = copy.deepcopy(graphs["dev"])
    assert schema_problems(graph) == []
    breakage(graph)
    assert schema_problems(graph)
