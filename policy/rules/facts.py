"""Reading resources the way the rules need: pod specs, tags, node pools, the graph.

Stack rules turn the analyzer's resources into the same `Graph` the offline plan records,
so scheduling and cost are computed by one piece of code everywhere.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

from pulumi_policy import PolicyResource, ResourceValidationPolicy, Severity

from infra.plan.graph import Graph, Resource
from infra.plan.kinds import is_open as is_open

WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")
SECRETISH_ENV = re.compile(r"(TOKEN|PASSWORD|SECRET|API_?KEY|CREDENTIALS?)$|_KEYS?$|REDIS_URL$", re.IGNORECASE)
COST_TAGS = ("project", "stack", "site", "managed-by")


def pod_spec(props: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = (props.get("spec") or {}).get("template", {}).get("spec")
    return spec if isinstance(spec, dict) else None


def containers(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


@cache
def takes_tags(type_token: str) -> str | None:
    """The cost-tag input of a cloud resource type (`tags`; GCP's `labels` and kin), or None."""
    package, module_path, name = type_token.split(":")
    sdk = {"aws": "pulumi_aws", "gcp": "pulumi_gcp", "azure-native": "pulumi_azure_native"}.get(package)
    if not sdk:
        return None
    module_name = sdk if module_path == "index" else f"{sdk}.{module_path.split('/')[0]}"
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    params = inspect.signature(cls._internal_init).parameters
    # user_labels before labels: on a monitoring notification channel `labels` is its address.
    # GCP's `tags`, where a type has it, binds Resource Manager tags, never cost labels.
    keys = ("user_labels", "resource_labels", "labels") if package == "gcp" else ("tags",)
    for key in keys:
        if key in params:
            return key
    return None


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def graph_of(resources: list[PolicyResource], stack: str = "") -> Graph:
    graph = Graph(stack=stack)
    for r in resources:
        if r.resource_type == "pulumi:pulumi:Stack":
            continue
        graph.add(
            Resource(
                urn=r.urn,
                type=r.resource_type,
                name=r.name,
                parent=r.parent.urn if r.parent else None,
                provider=r.provider.urn if r.provider else None,
                custom=not r.resource_type.startswith("llm-platform:"),
                dependencies=tuple(d.urn for d in r.dependencies or []),
                inputs=dict(r.props),
                options=_options(r.opts),
            )
        )
    return graph


def _options(opts) -> dict:
    """The analyzer's resource options in the plan's own spelling (see infra/plan/mocks.py)."""
    if opts is None:
        return {}
    out: dict = {}
    if opts.protect:
        out["protect"] = True
    if opts.ignore_changes:
        out["ignoreChanges"] = list(opts.ignore_changes)
    if opts.delete_before_replace is not None:
        out["deleteBeforeReplace"] = opts.delete_before_replace
    if opts.aliases:
        out["aliases"] = list(opts.aliases)
    t = opts.custom_timeouts
    timeouts = {
        k: f"{v:g}s"
        for k, v in (("create", t.create_seconds), ("update", t.update_seconds), ("delete", t.delete_seconds))
        if v
    }
    if timeouts:
        out["customTimeouts"] = timeouts
    return out


def resource_rule(
    name: str, description: str, validate: Callable[..., None], severity: Severity, remediation: str
) -> ResourceValidationPolicy:
    """A resource rule in the pack's one shape: every rule has a severity and a remediation."""
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, severity=severity, remediation_steps=remediation
    )
