"""What upstream/ holds, read back: release lists, Chart.yaml facts, values key paths and CRD
schemas of the pinned versions, each derived from its source by upstream/refresh.py.

Files are found through upstream/SOURCES.yaml, the index upstream/refresh.py writes with the
repo, ref and path each file was derived from, so this reader and the refresh share no layout
but that index and the key path notation (upstream.refresh.split_key_path).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from upstream.refresh import MAP, OPEN_LIST, OPEN_MAP, UPSTREAM, split_key_path

REFRESH = "run `make upstream` (upstream/refresh.py)"


@cache
def sources() -> tuple[dict, ...]:
    return tuple(yaml.safe_load((UPSTREAM / "SOURCES.yaml").read_text())["files"])


def _files(role: str, chart: str | None = None) -> list[dict]:
    return [s for s in sources() if s["role"] == role and (chart is None or s["chart"] == chart)]


def _one(role: str, chart: str) -> dict:
    found = _files(role, chart)
    if len(found) != 1:
        raise LookupError(f"upstream/SOURCES.yaml has {len(found)} {role} files for chart {chart}; {REFRESH}")
    return found[0]


def _load(entry: dict):
    return yaml.safe_load((UPSTREAM / entry["file"]).read_text())


@cache
def releases(chart: str) -> dict:
    return _load(_one("releases", chart))


def release_versions(chart: str) -> list[str]:
    return [r["version"] for r in releases(chart)["versions"]]


@cache
def chart_meta(chart: str) -> dict:
    """The pinned version's Chart.yaml facts: version, appVersion, kubeVersion, dependencies."""
    return _load(_one("chart", chart))


def vendored_version(chart: str) -> str:
    """The chart version the files under upstream/ were derived at."""
    versions = {s["version"] for s in sources() if s["chart"] == chart}
    if len(versions) != 1:
        raise LookupError(f"upstream/ holds chart {chart} at {sorted(versions) or 'no'} versions; {REFRESH}")
    return versions.pop()


# --- values.yaml, as its key paths ---------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a values.yaml key holds where that is not a map: a list or a scalar's YAML type.
    `null` is kept as None and an empty map as {}, the two values.yaml ways of leaving a key open."""

    name: str  # "list", "open list", "string", "int", ...

    @property
    def empty(self) -> bool:
        return self.name == OPEN_LIST


def _tree(keys: dict[str, str], prefix: int = 0) -> dict:
    """The nested form of {key path: kind}: a map is a dict of its keys, anything else a Kind."""
    root: dict = {}
    for path, kind in keys.items():
        *parents, last = split_key_path(path)[prefix:]
        node = root
        for key in parents:
            node = node[key]
        if kind in (MAP, OPEN_MAP):
            node[last] = {}
        elif kind == "null":
            node[last] = None
        else:
            node[last] = Kind(kind)
    return root


@cache
def _values_keys(chart: str) -> dict:
    return _load(_one("values", chart))


@cache
def values(chart: str) -> dict:
    """The pinned values.yaml's keys, nested. Shared between callers: the checks build merged
    copies and never change it."""
    return _tree(_values_keys(chart)["keys"])


@cache
def subchart_values(chart: str) -> dict[str, dict]:
    """{key the parent passes values under (alias or name): that subchart's values.yaml keys}."""
    subcharts = _values_keys(chart).get("subcharts") or {}
    return {key: _tree(sub["keys"], prefix=1) for key, sub in subcharts.items()}


def subchart_keys(chart: str) -> set[str]:
    """Every key under which the pinned chart hands values to a subchart, read or not."""
    return {d.get("alias", d["name"]) for d in chart_meta(chart).get("dependencies") or []}


def kind_name(default: Any) -> str:
    if isinstance(default, Kind):
        return default.name
    if default is None:
        return "null"
    return MAP if default else OPEN_MAP


def is_empty(default: Any) -> bool:
    """None, an empty map or an empty list: Helm's merge lets the other side win over these."""
    return default is None or default == {} or (isinstance(default, Kind) and default.empty)


# --- CRDs ----------------------------------------------------------------------------------


@cache
def crds() -> dict[tuple[str, str], tuple[dict, dict]]:
    """{(apiVersion, kind): (that version's openAPIV3Schema, its SOURCES entry)}, served versions only."""
    out: dict[tuple[str, str], tuple[dict, dict]] = {}
    for s in _files("crd"):
        crd = _load(s)
        for name, version in crd["versions"].items():
            out[(f"{crd['group']}/{name}", crd["kind"])] = (version["openAPIV3Schema"], s)
    return out
