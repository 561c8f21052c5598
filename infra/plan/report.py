"""Readers of the graph that write the plan: the tree on screen, plan.json, manifests."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from infra.plan.graph import Graph, Resource

_KEY_ORDER = {"apiVersion": 0, "kind": 1, "metadata": 2, "spec": 3}


def tree(graph: Graph) -> str:
    """Resources as a tree of components, leaves folded into counts by type."""
    lines: list[str] = []
    total = Counter(r.type for r in graph if r.custom)

    def walk(parent: str | None, depth: int) -> None:
        children = graph.children(parent)
        components = [c for c in children if not c.custom and not c.is_provider]
        leaves = Counter(c.type for c in children if c.custom or c.is_provider)
        pad = "  " * depth
        for typ, n in sorted(leaves.items()):
            lines.append(f"{pad}{n:>3} x {typ}")
        for comp in components:
            count = _count_below(graph, comp.urn)
            lines.append(f"{pad}{comp.type} {comp.name} ({count} resources)")
            walk(comp.urn, depth + 1)

    known = {r.urn for r in graph}
    for root in sorted({r.parent for r in graph if r.parent not in known}, key=str):
        walk(root, 0)
    lines.append(f"{sum(total.values())} resources in {len(total)} types")
    return "\n".join(lines)


def _count_below(graph: Graph, urn: str) -> int:
    count = 0
    for child in graph.children(urn):
        count += 1 if child.custom else _count_below(graph, child.urn)
    return count


def _ordered(obj: Any) -> Any:
    if isinstance(obj, dict):
        keys = sorted(obj, key=lambda k: (_KEY_ORDER.get(k, 9), k))
        return {k: _ordered(obj[k]) for k in keys}
    if isinstance(obj, list):
        return [_ordered(v) for v in obj]
    return obj


def manifest(resource: Resource) -> dict[str, Any]:
    """The Kubernetes object a resource applies (the provider's inputs are the object)."""
    return _ordered(resource.inputs)


def manifest_path(graph: Graph, resource: Resource) -> Path:
    obj = resource.inputs
    meta = obj.get("metadata") or {}
    site = graph.site_of(resource) or "cluster"
    namespace = meta.get("namespace", "_cluster")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{obj.get('kind', 'Object')}-{meta.get('name', resource.name)}")
    return Path(site) / namespace / f"{name}.yaml"


def write(graph: Graph, out_dir: Path) -> dict[str, Path]:
    """Write plan.json and manifests/ under out_dir; return what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / "plan.json"
    plan_path.write_text(json.dumps(graph.to_plan(), indent=2, sort_keys=False) + "\n")
    manifests = out_dir / "manifests"
    if manifests.exists():
        for old in sorted(manifests.rglob("*.yaml")):
            old.unlink()
    for resource in graph:
        if not resource.is_kubernetes_object:
            continue
        path = manifests / manifest_path(graph, resource)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(manifest(resource), sort_keys=False))
    return {"plan": plan_path, "manifests": manifests}
