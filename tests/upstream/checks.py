"""Checks of a recorded graph against the facts upstream/ holds of the pinned charts (release
lists, values key paths, CRD schemas); each returns a list of problems (empty when the graph is
right), so the negative controls can show each one firing."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
from kubernetes_validate import utils as kubernetes_schemas
from packaging.version import Version
from referencing import Registry
from referencing import Resource as SchemaResource

from infra.charts import PINS, Chart
from infra.plan.graph import Graph, Resource
from tests.upstream import vendored
from tests.upstream.test_kubernetes_schemas import BUILT_IN_GROUPS, site_versions

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


@dataclass(frozen=True)
class KubernetesField:
    """A values map the chart renders verbatim (toYaml) into a field of a Kubernetes object, so
    its keys are that type's: checked, merged over the chart's default, against the type's
    strict schema from kubernetes-validate at the site's Kubernetes version."""

    schema: str  # kubernetes-validate's file for the type, e.g. "securitycontext-v1"
    why: str


# Narrow exceptions to "every key path is in values.yaml" (as upstream/charts/<chart>/values-keys.yaml
# lists them), keyed by chart, or chart/subchart for
# values passed through to a subchart; each path is relative to that chart's values, with why.
# Maps whose keys are not the chart's although values.yaml gives them non-empty defaults (an
# empty map there is open already), or whose keys belong to a Kubernetes type:
OPEN_MAPS: dict[str, dict[str, str | KubernetesField]] = {
    "cluster-autoscaler": {
        "extraArgs": "templates/deployment.yaml renders every key as a --key=value flag of the autoscaler",
    },
    "dcgm-exporter": {
        "securityContext": KubernetesField(
            "securitycontext-v1", "templates/daemonset.yaml: the exporter container's securityContext, toYaml"
        ),
    },
    "kube-prometheus-stack": {
        "prometheus.prometheusSpec.resources": KubernetesField(
            "resourcerequirements-v1",
            "templates/prometheus/prometheus.yaml: the Prometheus resource's spec.resources, toYaml",
        ),
    },
}
# Keys the chart's templates read although values.yaml does not declare them:
UNDECLARED: dict[str, dict[str, str]] = {
    "kube-prometheus-stack/grafana": {
        "fullnameOverride": (
            'grafana 12.11.1 templates/_helpers.tpl (define "grafana.fullname") reads .Values.fullnameOverride'
        ),
    },
}


def pin_for(chart: str) -> Chart | None:
    return next((p for p in PINS if p.chart == chart), None)


def helm_releases(graph: Graph) -> list[Resource]:
    return graph.of_type(HELM_RELEASE)


# --- chart versions ------------------------------------------------------------------------


def pin_problems(pin: Chart) -> list[str]:
    """A pin that was never released, or whose facts in upstream/ are of another version or repo."""
    try:
        versions = vendored.release_versions(pin.chart)
        listed = vendored.releases(pin.chart)
        at = vendored.vendored_version(pin.chart)
    except (LookupError, FileNotFoundError) as exc:
        return [f"{pin.chart}: {exc}"]
    out = []
    if pin.version not in versions:
        out.append(
            f"{pin.chart} {pin.version} was never released by {listed['repo']} "
            f"(newest {versions[0] if versions else 'none'}, read {listed['read']})"
        )
    if listed["helm_repo"] != pin.repo:
        out.append(
            f"{pin.chart}: pinned repo {pin.repo}, "
            f"vendored release list is of {listed['helm_repo']}; {vendored.REFRESH}"
        )
    if at != pin.version:
        out.append(f"{pin.chart}: pinned {pin.version}, upstream/ holds {at}; {vendored.REFRESH}")
    return out


def release_problems(release: Resource) -> list[str]:
    """A Helm release whose chart is not pinned in infra/charts.py, or whose version or repo is not the pin's."""
    chart, version = release.inputs.get("chart"), release.inputs.get("version")
    repo = (release.inputs.get("repositoryOpts") or {}).get("repo")
    pin = pin_for(chart)
    if pin is None:
        return [f"{release.name}: chart {chart!r} has no pin in infra/charts.py"]
    out = []
    if version != pin.version:
        out.append(f"{release.name}: {chart} {version!r}, the pin is {pin.version}")
    if repo != pin.repo:
        out.append(f"{release.name}: {chart} from {repo!r}, the pin's repo is {pin.repo}")
    if version not in vendored.release_versions(chart):
        out.append(f"{release.name}: {chart} {version!r} is not a release of {vendored.releases(chart)['repo']}")
    return out


# --- values --------------------------------------------------------------------------------


def _union(a: Any, b: Any) -> Any:
    """Both sides' keys, for a subchart key that the parent's values.yaml also sets."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(b)
        for k, v in a.items():
            out[k] = _union(v, out[k]) if k in out else v
        return out
    return a if vendored.is_empty(b) else b


def _merged(default: Any, given: Any) -> Any:
    """Helm's merge of user values over a chart default: maps merge, anything else replaces."""
    if isinstance(default, dict) and isinstance(given, dict):
        out = dict(default)
        for k, v in given.items():
            out[k] = _merged(default.get(k), v)
        return out
    return given


# upstream/ records the type of each values.yaml default, not its value: for a map typed by
# Kubernetes, the chart's own keys stand in as values of their type, so that what the program gives
# is validated merged into them as Helm merges it (a field the chart sets counts for `required`).
_PLACEHOLDERS = {"string": "", "timestamp": "", "int": 0, "float": 0.0, "bool": False, "list": [], "open list": []}


def _skeleton(default: Any) -> Any:
    if isinstance(default, dict):
        return {k: _skeleton(v) for k, v in default.items()}
    if isinstance(default, vendored.Kind):
        return _PLACEHOLDERS[default.name]
    return default


def _given(value: Any, path) -> bool:
    """Whether `path` in the merged map is (inside) what the program gave rather than a chart default."""
    node = value
    for part in path:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _placeholder_error(e: jsonschema.ValidationError, value: Any) -> bool:
    # Only a placeholder's type is the chart's; an enum, pattern or bound it fails is about a value
    # upstream/ does not record, of the chart's default rather than the program's.
    return e.validator != "type" and not isinstance(e.instance, dict) and not _given(value, e.absolute_path)


def _is_open(default: Any) -> bool:
    # An empty map (or null) in values.yaml is the chart's "put your own keys here".
    return default is None or default == {}


@cache
def _kubernetes_type_validator(schema: str, minor: str) -> jsonschema.Validator:
    # The newest schema set kubernetes-validate ships that is not newer than the cluster.
    versions = [v for v in kubernetes_schemas.all_versions() if Version(v) <= Version(f"{minor}.99")]
    version = versions[-1] if versions else kubernetes_schemas.all_versions()[0]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    root = kubernetes_schemas.schema_contents(f"{folder}/{schema}.json", version)
    definitions = kubernetes_schemas.schema_contents(f"{folder}/_definitions.json", version)
    registry = SchemaResource.from_contents(definitions) @ (SchemaResource.from_contents(root) @ Registry())
    return jsonschema.Draft202012Validator(root, registry=registry)


@dataclass(frozen=True)
class _Scope:
    name: str  # chart, or chart/subchart
    kubernetes: str  # the site's Kubernetes minor


def _walk(given: dict, defaults: dict, path: str, scope: _Scope, out: list[str]) -> None:
    open_maps, undeclared = OPEN_MAPS.get(scope.name, {}), UNDECLARED.get(scope.name, {})
    for key, value in given.items():
        here = f"{path}.{key}" if path else str(key)
        if here in undeclared:
            continue
        if not isinstance(defaults, dict) or key not in defaults:
            out.append(f"{here}: no such key in values.yaml")
            continue
        default = defaults[key]
        field = open_maps.get(here)
        if isinstance(field, KubernetesField):
            validator = _kubernetes_type_validator(field.schema, scope.kubernetes)
            for e in validator.iter_errors(_merged(_skeleton(default), value)):
                if _placeholder_error(e, value):
                    continue
                at = ".".join([here, *map(str, e.absolute_path)])
                out.append(f"{at}: {e.message} (Kubernetes {scope.kubernetes} {field.schema})")
            continue
        if field is not None or _is_open(default):
            continue
        if isinstance(value, dict):
            if isinstance(default, dict):
                _walk(value, default, here, scope, out)
            else:
                out.append(f"{here}: a map is given, values.yaml has a {vendored.kind_name(default)}")
        elif isinstance(default, dict) and value is not None:
            out.append(f"{here}: {type(value).__name__} given, values.yaml has a map")


def newest_kubernetes() -> str:
    return kubernetes_schemas.major_minor(kubernetes_schemas.latest_version())


def unknown_values(chart: str, given: dict, kubernetes: str | None = None) -> list[str]:
    """Key paths of `given` that the pinned chart's values.yaml (or its subcharts') does not have.
    Helm ignores such keys without a word, so a renamed key silently stops doing anything.
    `kubernetes`: the cluster's minor, for maps typed by Kubernetes (newest known if None)."""
    kubernetes = kubernetes or newest_kubernetes()
    defaults = vendored.values(chart)
    subcharts = vendored.subchart_values(chart)
    keys = vendored.subchart_keys(chart)
    out: list[str] = []
    for key, value in (given or {}).items():
        if key in keys and isinstance(value, dict):
            if key not in subcharts:
                out.append(
                    f"{key}: values for subchart {key} are not vendored (exact version needed; see upstream/refresh.py)"
                )
                continue
            # A subchart takes its own values.yaml's keys and whatever the parent's values.yaml sets under its name.
            sub_out: list[str] = []
            _walk(
                value,
                _union(defaults.get(key) or {}, subcharts[key]),
                "",
                _Scope(f"{chart}/{key}", kubernetes),
                sub_out,
            )
            out.extend(f"{key}.{p}" for p in sub_out)
            continue
        _walk({key: value}, defaults, "", _Scope(chart, kubernetes), out)
    return [f"{chart} {vendored.vendored_version(chart)}: {p}" for p in out]


def values_problems(release: Resource, kubernetes: str | None = None) -> list[str]:
    chart = release.inputs.get("chart")
    if pin_for(chart) is None:
        return [f"{release.name}: chart {chart!r} has no pin, so upstream/ has no values keys for it"]
    return [f"{release.name}: {p}" for p in unknown_values(chart, release.inputs.get("values") or {}, kubernetes)]


def site_kubernetes(graph: Graph) -> dict[str | None, str]:
    """{site: Kubernetes minor of its cluster}."""
    return {site: ".".join(v.split(".")[:2]) for site, v in site_versions(graph).items()}


def graph_values_problems(graph: Graph) -> list[str]:
    versions = site_kubernetes(graph)
    return [p for r in helm_releases(graph) for p in values_problems(r, versions.get(graph.site_of(r)))]


# --- custom resources ----------------------------------------------------------------------


def strict_schema(schema: dict, root: bool = True) -> dict:
    """A CRD's openAPIV3Schema as a JSON Schema that rejects what the API server would prune:
    an object takes only the fields it declares unless it says x-kubernetes-preserve-unknown-fields."""
    node = copy.deepcopy(schema)

    def walk(n: dict, at_root: bool) -> dict:
        if n.get("x-kubernetes-int-or-string"):
            n.pop("type", None)
            n["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if n.get("nullable") and "type" in n:
            n["type"] = [n["type"], "null"]
        if n.get("x-kubernetes-embedded-resource"):
            props = n.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props.setdefault("metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
        for name, sub in (n.get("properties") or {}).items():
            # The root's metadata is ObjectMeta, checked by the API server (and kubernetes-validate), not the CRD.
            if at_root and name == "metadata":
                sub.setdefault("x-kubernetes-preserve-unknown-fields", True)
            walk(sub, False)
        if isinstance(n.get("items"), dict):
            walk(n["items"], False)
        if isinstance(n.get("additionalProperties"), dict):
            walk(n["additionalProperties"], False)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in n.get(key) or []:
                walk(sub, False)
        if isinstance(n.get("not"), dict):
            walk(n["not"], False)
        is_object = n.get("type") == "object" or "properties" in n
        if is_object and not n.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in n:
            n["additionalProperties"] = False
        return n

    return walk(node, root)


@cache
def _validator(key: tuple[str, str]) -> jsonschema.Draft4Validator:
    # OpenAPI v3.0's schema dialect is draft 4's (boolean exclusiveMinimum and all).
    schema, _ = vendored.crds()[key]
    return jsonschema.Draft4Validator(strict_schema(schema))


def custom_resource_problems(resource: Resource) -> list[str]:
    """Errors of one custom resource against the CRD the pinned chart installs for its apiVersion and kind."""
    body = {k: resource.inputs[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in resource.inputs}
    key = (body.get("apiVersion"), body.get("kind"))
    found = vendored.crds().get(key)
    if found is None:
        served = sorted(f"{a} {k}" for a, k in vendored.crds())
        return [
            f"{resource.name}: no vendored CRD serves {key[0]} {key[1]} (vendored: {', '.join(served)}); "
            "add its CRD file to the chart's crds in upstream/refresh.py SOURCES and run `make upstream`"
        ]
    _, source = found
    validator = _validator(key)
    where = f"{source['chart']} {source['version']} {source['from'][0]['path']}"
    return [
        f"{resource.name}: {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message} (CRD from {where})"
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    ]


def custom_resources(graph: Graph) -> list[Resource]:
    """Kubernetes objects of an apiVersion Kubernetes does not serve itself: every object is
    checked either against Kubernetes' schema (test_kubernetes_schemas.py) or here."""
    return [
        r
        for r in graph
        if r.is_kubernetes_object and "kind" in r.inputs and r.inputs.get("apiVersion") not in BUILT_IN_GROUPS
    ]


def graph_problems(graph: Graph) -> list[str]:
    """All three checks over one graph."""
    out = [p for r in helm_releases(graph) for p in release_problems(r)]
    out += graph_values_problems(graph)
    for r in custom_resources(graph):
        out += custom_resource_problems(r)
    return out
