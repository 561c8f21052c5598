"""The recorded graph: every resource the program registered, ordered by URN. Registration
order differs from run to run (registrations are answered concurrently), so readers that
iterate the graph (the cost lines, the diagram) would otherwise differ between two runs of
the same program.

One mechanism, many readers: the plan report, the manifests, the tests (and later the
policy run and the cost estimate) all read this.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SECRET = "[secret]"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str) -> float:
    """A Pulumi custom timeout ("1h30m", "45m", "90s", Go's duration syntax) in seconds; 0 where unset."""
    text = text or ""
    parts = _DURATION.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise ValueError(f"customTimeouts: {text!r} is not a duration like 45m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    name: str
    parent: str | None
    provider: str | None  # the provider resource's URN
    custom: bool
    dependencies: tuple[str, ...]
    inputs: dict[str, Any]
    has_secret: bool = False
    id: str = ""  # the id the (mock) provider gave it
    # dependsOn, customTimeouts, ignoreChanges, protect, deleteBeforeReplace,
    # replaceOnChanges, aliases, retainOnDelete: only those the program set.
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_provider(self) -> bool:
        return self.type.startswith("pulumi:providers:")

    @property
    def is_kubernetes_object(self) -> bool:
        # Kubernetes objects the provider applies as-is; a Helm release is not one of them.
        return self.type.startswith("kubernetes:") and not self.type.startswith("kubernetes:helm.sh/")

    def as_plan_entry(self) -> dict[str, Any]:
        return {
            "urn": self.urn,
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "provider": self.provider,
            "inputs": self.inputs,
            "options": self.options,
        }


@dataclass
class Graph:
    stack: str
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def add(self, resource: Resource) -> None:
        bisect.insort(self.resources, resource, key=lambda r: r.urn)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources)

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def by_id(self) -> dict[str, Resource]:
        return {r.id: r for r in self.resources if r.id}

    def by_urn(self) -> dict[str, Resource]:
        return {r.urn: r for r in self.resources}

    def children(self, urn: str | None) -> list[Resource]:
        return [r for r in self.resources if r.parent == urn]

    def ancestors(self, resource: Resource) -> list[Resource]:
        index = self.by_urn()
        out = []
        parent = resource.parent
        while parent in index:
            out.append(index[parent])
            parent = index[parent].parent
        return out

    def site_of(self, resource: Resource) -> str | None:
        """The site a resource belongs to: the name of its outermost component."""
        chain = self.ancestors(resource)
        return chain[-1].name if chain else None

    def to_plan(self) -> dict[str, Any]:
        return {"stack": self.stack, "resources": [r.as_plan_entry() for r in self.resources]}
