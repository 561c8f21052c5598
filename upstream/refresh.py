"""Rewrite upstream/charts/ and upstream/crds/ from the charts' own source repositories, for the
pins in infra/charts.py.

    make upstream                       # clones (or updates) each source under build/upstream/
    python -m upstream.refresh --git-dir prometheus-community/helm-charts=/path/to/repo.git ...

What it writes are facts read from the pinned chart, each file headed by its source (repo, ref,
commit, path, date read). Verbatim copies of the charts' files are not kept: what the checks in
tests/upstream/ need of them is written out here, and the rest stays upstream.

For every pin, under upstream/charts/<chart>/:
  releases.yaml     every final release of the chart, newest first, with the source repo, the
                    tag pattern and the date read
  chart.yaml        the pinned Chart.yaml's version, appVersion, kubeVersion and dependencies
                    (name, version, repository, alias)
  values-keys.yaml  every key path the pinned values.yaml declares, with its kind; and the same
                    for each subchart the chart depends on at an exact version, prefixed with
                    the key the parent passes its values under, so those can be checked too
and under upstream/crds/<group>/<Kind>.yaml the served versions' openAPIV3Schema of each CRD the
program creates (CRDS below), reduced to the keywords a validator evaluates. upstream/SOURCES.yaml
indexes all of them with their sources.

Sources are read with git from GitHub, never from a Helm repository: a partial clone
(--filter=blob:none) brings every tag with its tree, and only the few files read here are
downloaded. `make test` reads only what this wrote and needs no network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.charts import PINS, Chart  # noqa: E402

UPSTREAM = REPO / "upstream"
CACHE = REPO / "build" / "upstream"
# The folders this script owns; each is replaced whole, so nothing stale survives a dropped pin.
OWNED = ("charts", "crds")
SEMVER = r"(?P<version>\d+\.\d+\.\d+)"


@dataclass(frozen=True)
class Tags:
    """A chart released by git tag: one tag per chart version, the chart at `paths` in it."""

    repo: str  # GitHub owner/name
    tag: str  # regex over the whole tag name with a `version` group
    pattern: str  # the same, as people write it
    paths: tuple[str, ...]  # the chart's directory; the first that exists at a tag wins (charts move)
    crds: tuple[str, ...] = ()  # files under the chart directory


@dataclass(frozen=True)
class Pages:
    """A chart released into a Helm index on a branch (chart-releaser's gh-pages): its versions
    are the index's entries and its files are read from the packaged .tgz of the pinned one."""

    repo: str
    branch: str
    index: str
    crds: tuple[str, ...] = ()  # files inside the package, under the chart's directory


# Where each pinned chart is released. CRD files: only the kinds the program creates, plus
# ServiceMonitor, which the charts' own values turn on.
SOURCES: dict[str, Tags | Pages] = {
    "cluster-autoscaler": Tags(
        "kubernetes/autoscaler",
        rf"cluster-autoscaler-chart-{SEMVER}",
        "cluster-autoscaler-chart-{version}",
        ("cluster-autoscaler/charts/cluster-autoscaler", "charts/cluster-autoscaler"),
    ),
    "nvidia-device-plugin": Tags(
        "NVIDIA/k8s-device-plugin", rf"v{SEMVER}", "v{version}", ("deployments/helm/nvidia-device-plugin",)
    ),
    "kube-prometheus-stack": Tags(
        "prometheus-community/helm-charts",
        rf"kube-prometheus-stack-{SEMVER}",
        "kube-prometheus-stack-{version}",
        ("charts/kube-prometheus-stack",),
        crds=(
            "charts/crds/crds/crd-podmonitors.yaml",
            "charts/crds/crds/crd-prometheusrules.yaml",
            "charts/crds/crds/crd-servicemonitors.yaml",
        ),
    ),
    # Tags are <DCGM version>-<exporter version>; the chart's version is the exporter's.
    "dcgm-exporter": Tags("NVIDIA/dcgm-exporter", rf"\d+\.\d+\.\d+-{SEMVER}", "<dcgm>-{version}", ("deployment",)),
    "keda": Tags(
        "kedacore/charts", rf"v{SEMVER}", "v{version}", ("keda",), crds=("templates/crds/crd-scaledobjects.yaml",)
    ),
    # eks-charts tags the whole repository (v0.0.N), not a chart; its Helm index says what was released.
    "aws-load-balancer-controller": Pages("aws/eks-charts", "gh-pages", "index.yaml"),
}

# Subcharts whose values a parent passes through, by dependency name. A dependency with no
# repository lives in the parent's charts/ directory and is read from the parent's tag.
SUBCHARTS: dict[str, Tags] = {
    "kube-state-metrics": Tags(
        "prometheus-community/helm-charts",
        rf"kube-state-metrics-{SEMVER}",
        "kube-state-metrics-{version}",
        ("charts/kube-state-metrics",),
    ),
    "prometheus-node-exporter": Tags(
        "prometheus-community/helm-charts",
        rf"prometheus-node-exporter-{SEMVER}",
        "prometheus-node-exporter-{version}",
        ("charts/prometheus-node-exporter",),
    ),
    "grafana": Tags("grafana-community/helm-charts", rf"grafana-{SEMVER}", "grafana-{version}", ("charts/grafana",)),
}


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# --- facts derived from a chart's files ----------------------------------------------------

# Chart.yaml fields the checks use: the pin's appVersion and Kubernetes range are compared with
# them, and dependencies say which values keys belong to which subchart.
_DEPENDENCY_FIELDS = ("name", "version", "repository", "alias")


def chart_facts(meta: dict) -> dict:
    out: dict[str, Any] = {"name": meta["name"], "version": str(meta["version"])}
    for key in ("appVersion", "kubeVersion"):
        if meta.get(key) is not None:
            out[key] = str(meta[key])
    deps = [{k: str(d[k]) for k in _DEPENDENCY_FIELDS if d.get(k)} for d in meta.get("dependencies") or []]
    if deps:
        out["dependencies"] = deps
    return out


# A key path is its keys joined with "."; a key that would make that ambiguous (it holds a ".",
# as "grafana.ini" or "prometheus.io/scrape" do) is written as a JSON string in brackets.
_BARE_KEY = re.compile(r'[^.\[\]"\s]+')
_QUOTED_KEY = re.compile(r'\[("(?:[^"\\]|\\.)*")\]')


def _key(key: Any) -> str:
    # Helm reads values as JSON, whose keys are strings: a YAML `true:` key is "true".
    return key if isinstance(key, str) else json.dumps(key)


def join_key_path(keys: list[str]) -> str:
    out = ""
    for key in keys:
        if _BARE_KEY.fullmatch(key):
            out += f".{key}" if out else key
        else:
            out += f"[{json.dumps(key)}]"
    return out


def split_key_path(path: str) -> list[str]:
    keys: list[str] = []
    at = 0
    while at < len(path):
        if m := _QUOTED_KEY.match(path, at):
            keys.append(json.loads(m[1]))
        elif m := _BARE_KEY.match(path, at + 1 if keys and path[at] == "." else at):
            if keys and path[at] != ".":
                raise ValueError(f"not a key path: {path!r}")
            keys.append(m[0])
        else:
            raise ValueError(f"not a key path: {path!r}")
        at = m.end()
    if not keys:
        raise ValueError("an empty key path")
    return keys


# The kinds a values key can have. An empty map or list is the chart's "put your own here": the
# checks take any keys under an open map.
MAP, OPEN_MAP, LIST, OPEN_LIST = "map", "open map", "list", "open list"
_SCALARS = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float",
    type(None): "null",
    dt.date: "timestamp",
    dt.datetime: "timestamp",
}


def value_kind(value: Any) -> str:
    if isinstance(value, dict):
        return MAP if value else OPEN_MAP
    if isinstance(value, list):
        return LIST if value else OPEN_LIST
    return _SCALARS[type(value)]


def value_keys(values: dict | None, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """{key path: kind} for every key of a values.yaml, in the file's order. Lists are not
    entered: Helm replaces a list whole, so no key inside one is merged with the chart's."""
    out: dict[str, str] = {}

    def walk(node: dict, at: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*at, _key(key))
            out[join_key_path(list(here))] = value_kind(value)
            if isinstance(value, dict):
                walk(value, here)

    walk(values or {}, prefix)
    return out


# Helm template actions inside a chart's templates/crds/*.yaml (KEDA ships its CRDs that way):
# whole-line actions go, inline ones become a placeholder. Only metadata carries them.
_ACTION_LINE = re.compile(r"^\s*\{\{.*\}\}\s*$")
_ACTION = re.compile(r"\{\{.*?\}\}")

# The openAPIV3Schema keywords a JSON Schema validator evaluates (OpenAPI 3.0 schema objects are
# draft 4's), and the Kubernetes extensions that change what an object accepts. Everything else
# (descriptions, defaults, format, x-kubernetes-list-type, CEL x-kubernetes-validations) is not
# evaluated by tests/upstream/checks.py, so it is left upstream.
SCHEMA_KEYWORDS = (
    "type",
    "nullable",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "properties",
    "additionalProperties",
    "required",
    "minProperties",
    "maxProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
)


def reduce_schema(node: dict) -> dict:
    out: dict[str, Any] = {}
    for key in SCHEMA_KEYWORDS:
        if key not in node:
            continue
        value = node[key]
        if key == "properties":
            value = {name: reduce_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            value = reduce_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            value = [reduce_schema(sub) for sub in value]
        out[key] = value
    return out


def crd_facts(text: str) -> list[dict]:
    """{group, kind, versions: {name: openAPIV3Schema}} of each CRD in a file, served versions only."""
    lines = [line for line in text.splitlines() if not _ACTION_LINE.match(line)]
    out = []
    for doc in yaml.safe_load_all("\n".join(_ACTION.sub("templated", line) for line in lines)):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        versions = {
            v["name"]: {"openAPIV3Schema": reduce_schema(v["schema"]["openAPIV3Schema"])}
            for v in spec["versions"]
            if v.get("served", True)
        }
        out.append({"group": spec["group"], "kind": spec["names"]["kind"], "versions": versions})
    return out


# --- reading the sources -------------------------------------------------------------------


class Git:
    """One source repository, read through git (bare, partial)."""

    def __init__(self, repo: str, git_dir: Path):
        self.repo = repo
        self.dir = git_dir

    def run(self, *args: str, data: bytes | None = None) -> bytes:
        done = subprocess.run(["git", "--git-dir", str(self.dir), *args], input=data, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"git {' '.join(args)} in {self.repo}: {done.stderr.decode().strip()}")
        return done.stdout

    def show(self, ref: str, path: str) -> bytes:
        return self.run("show", f"{ref}:{path}")

    def commit(self, ref: str) -> str:
        return self.run("rev-parse", f"{ref}^{{commit}}").decode().strip()

    def commit_date(self, ref: str) -> str:
        return self.run("log", "-1", "--format=%cs", ref).decode().strip()

    def tags(self) -> dict[str, str]:
        """{tag: date}, the date the tag (or its commit) was made."""
        out = self.run("for-each-ref", "--format=%(refname:strip=2)%09%(creatordate:short)", "refs/tags")
        return dict(line.split("\t", 1) for line in out.decode().splitlines() if line)

    def has(self, ref: str, paths: tuple[str, ...]) -> list[str]:
        """Which of `paths` exist at `ref`. ls-tree reads trees only; asking for the blob itself
        (cat-file) would make a blobless clone download it."""
        out = self.run("ls-tree", "--name-only", ref, "--", *paths)
        return out.decode().splitlines()

    def head(self) -> dict[str, str]:
        branch = self.run("symbolic-ref", "--short", "HEAD").decode().strip()
        return {"ref": branch, "commit": self.commit("HEAD"), "date": self.commit_date("HEAD")}


def open_git(repo: str, overrides: dict[str, Path], offline: bool) -> Git:
    if repo in overrides:
        return Git(repo, overrides[repo])
    path = CACHE / (repo.replace("/", "+") + ".git")
    url = f"https://github.com/{repo}.git"
    if offline and not path.is_dir():
        raise SystemExit(f"{repo}: no clone at {path} and --offline given")
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"clone {url}", file=sys.stderr)
        subprocess.run(["git", "clone", "--quiet", "--bare", "--filter=blob:none", url, str(path)], check=True)
    elif not offline:
        print(f"fetch {url}", file=sys.stderr)
        subprocess.run(
            [
                "git",
                "--git-dir",
                str(path),
                "fetch",
                "--quiet",
                "--prune",
                "--tags",
                "--filter=blob:none",
                url,
                "+refs/heads/*:refs/heads/*",
            ],
            check=True,
        )
    return Git(repo, path)


# --- writing -------------------------------------------------------------------------------


class Block(dict):
    """A mapping written one entry a line, however flat: a file's top level, a list of key paths."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Block, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=False))


def _header(what: str, sources: list[dict], read: str) -> str:
    lines = [f"# {line}" for line in textwrap.wrap(what, 98)]
    lines.append("# Derived by upstream/refresh.py (make upstream) from:")
    for s in sources:
        lines.append(f"#   {s['repo']} {s['ref']} (commit {s['commit']}) {s['path']}")
    lines.append(f"# read {read}. Regenerate with `make upstream` rather than edit.")
    return "\n".join(lines) + "\n"


@dataclass
class Writer:
    """Writes into a staging folder; `commit` swaps it in, so a refresh that fails half-way
    leaves upstream/ as it was."""

    read: str
    root: Path
    index: list[dict] = field(default_factory=list)

    def write(self, rel: str, data: dict, what: str, role: str, sources: list[dict], **facts: str) -> None:
        path = self.root / rel
        if path.exists():
            raise SystemExit(f"{rel}: written twice (two CRDs of one kind?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        sources = [dict(s) for s in sources]  # one dict in two entries would be written as a YAML alias
        # Innermost collections in flow style: one line per release, per dependency, per schema leaf.
        body = yaml.dump(
            Block(data), Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=None, allow_unicode=True
        )
        path.write_text(_header(what, sources, self.read) + body)
        self.index.append({"file": rel, "role": role, **facts, "from": sources, "read": self.read})

    def facts(self, rel: str) -> dict:
        return yaml.safe_load((self.root / rel).read_text())

    def commit(self) -> None:
        index = sorted(self.index, key=lambda s: s["file"])
        head = (
            "# Index of the files under upstream/charts/ and upstream/crds/, each with what it was derived from.\n"
            "# Written by upstream/refresh.py (make upstream); regenerate rather than edit.\n"
        )
        (self.root / "SOURCES.yaml").write_text(head + yaml.safe_dump({"files": index}, sort_keys=False, width=200))
        for folder in OWNED:
            shutil.rmtree(UPSTREAM / folder, ignore_errors=True)
            (self.root / folder).mkdir(exist_ok=True)
            (self.root / folder).rename(UPSTREAM / folder)
        (self.root / "SOURCES.yaml").replace(UPSTREAM / "SOURCES.yaml")


def tagged_releases(git: Git, src: Tags) -> list[dict]:
    """Final releases (no pre-release suffix): tags matching the pattern that hold the chart."""
    rx = re.compile(rf"^{src.tag}$")
    charts = tuple(f"{p}/Chart.yaml" for p in src.paths)
    out = [
        {"version": m["version"], "tag": tag, "date": date}
        for tag, date in git.tags().items()
        if (m := rx.match(tag)) and git.has(tag, charts)
    ]
    return sorted(out, key=lambda r: _vkey(r["version"]), reverse=True)


def chart_dir(git: Git, src: Tags, tag: str) -> str:
    present = set(git.has(tag, tuple(f"{p}/Chart.yaml" for p in src.paths)))
    for p in src.paths:
        if f"{p}/Chart.yaml" in present:
            return p
    raise SystemExit(f"{git.repo}@{tag}: no chart at {', '.join(src.paths)}")


@dataclass
class Read:
    """One pinned chart as read from its source: its files' contents and where each came from."""

    chart: bytes
    values: bytes
    crds: list[tuple[bytes, dict]]
    where: dict  # repo, ref, commit; `path` is per file
    base: str  # the chart's directory, or package:chart/, that file paths are under
    subcharts: list[tuple[str, dict, bytes, dict]] = field(default_factory=list)  # key, facts, values, source


def read_tagged(pin: Chart, git: Git, src: Tags, gits: Callable[[str], Git]) -> tuple[Read, dict]:
    releases = tagged_releases(git, src)
    by_version = {r["version"]: r for r in releases}
    if pin.version not in by_version:
        newest = releases[0]["version"] if releases else "none"
        raise SystemExit(f"{pin.chart} {pin.version}: no such release in {git.repo} (newest {newest})")
    tag = by_version[pin.version]["tag"]
    path = chart_dir(git, src, tag)
    where = {"repo": git.repo, "ref": tag, "commit": git.commit(tag)}
    read = Read(
        chart=git.show(tag, f"{path}/Chart.yaml"),
        values=git.show(tag, f"{path}/values.yaml"),
        crds=[(git.show(tag, f"{path}/{crd}"), {**where, "path": f"{path}/{crd}"}) for crd in src.crds],
        where=where,
        base=f"{path}/",
    )
    for dep in yaml.safe_load(read.chart).get("dependencies") or []:
        name, version = dep["name"], str(dep.get("version", ""))
        key = dep.get("alias", name)
        facts = {"chart": name, "version": version}
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            print(
                f"{pin.chart}: subchart {name} {version!r} is not an exact version; its values keys are not read",
                file=sys.stderr,
            )
            continue
        if not dep.get("repository"):
            local = f"{path}/charts/{name}/values.yaml"
            read.subcharts.append((key, facts, git.show(tag, local), {**where, "path": local}))
            continue
        if name not in SUBCHARTS:
            print(
                f"{pin.chart}: subchart {name} has no source in SUBCHARTS; its values keys are not read",
                file=sys.stderr,
            )
            continue
        sub_src = SUBCHARTS[name]
        sub_git = gits(sub_src.repo)
        sub_tag = sub_src.pattern.format(version=version)
        sub_path = chart_dir(sub_git, sub_src, sub_tag)
        read.subcharts.append(
            (
                key,
                facts,
                sub_git.show(sub_tag, f"{sub_path}/values.yaml"),
                {
                    "repo": sub_git.repo,
                    "ref": sub_tag,
                    "commit": sub_git.commit(sub_tag),
                    "path": f"{sub_path}/values.yaml",
                },
            )
        )
    found = {
        "source": {"repo": git.repo, "tag_pattern": src.pattern, "chart_path": path},
        "head": git.head(),
        "versions": releases,
    }
    return read, found


def read_pages(pin: Chart, git: Git, src: Pages) -> tuple[Read, dict]:
    index = yaml.safe_load(git.show(src.branch, src.index))
    entries = index.get("entries", {}).get(pin.chart, [])
    finals = [e for e in entries if re.fullmatch(r"\d+\.\d+\.\d+", str(e["version"]))]
    releases = sorted(({"version": str(e["version"])} for e in finals), key=lambda r: _vkey(r["version"]), reverse=True)
    if pin.version not in {r["version"] for r in releases}:
        raise SystemExit(f"{pin.chart} {pin.version}: not in {git.repo} {src.branch}:{src.index}")
    package = f"{pin.chart}-{pin.version}.tgz"
    commit = git.commit(src.branch)
    where = {"repo": git.repo, "ref": src.branch, "commit": commit}
    base = f"{package}:{pin.chart}/"
    with tarfile.open(fileobj=io.BytesIO(git.show(src.branch, package)), mode="r:gz") as tar:

        def member(name: str) -> bytes:
            f = tar.extractfile(f"{pin.chart}/{name}")
            assert f is not None
            return f.read()

        read = Read(
            chart=member("Chart.yaml"),
            values=member("values.yaml"),
            crds=[(member(crd), {**where, "path": f"{base}{crd}"}) for crd in src.crds],
            where=where,
            base=base,
        )
    found = {
        "source": {
            "repo": git.repo,
            "index": f"{src.branch}:{src.index}",
            "package": f"{src.branch}:{pin.chart}-{{version}}.tgz",
        },
        "head": {"ref": src.branch, "commit": commit, "date": git.commit_date(src.branch)},
        # The index regenerates every entry's `created` on each publish, so it dates nothing.
        "versions": releases,
    }
    return read, found


def write_chart(w: Writer, pin: Chart, read: Read) -> None:
    base = f"charts/{pin.chart}"
    pinned = {"chart": pin.chart, "version": pin.version}
    meta = yaml.safe_load(read.chart)
    if str(meta.get("version")) != pin.version:
        raise SystemExit(
            f"{pin.chart}: {read.where['repo']}@{read.where['ref']} {read.base}Chart.yaml "
            f"says version {meta.get('version')}"
        )
    facts = chart_facts(meta)
    w.write(
        f"{base}/chart.yaml",
        facts,
        f"{pin.chart} {pin.version}: facts of the chart's Chart.yaml.",
        "chart",
        [{**read.where, "path": f"{read.base}Chart.yaml"}],
        **pinned,
    )
    if facts.get("appVersion") != pin.app_version:
        print(
            f"{pin.chart} {pin.version}: Chart.yaml appVersion is {facts.get('appVersion')}, "
            f"infra/charts.py says {pin.app_version}",
            file=sys.stderr,
        )

    values_source = {**read.where, "path": f"{read.base}values.yaml"}
    subcharts = {
        key: {**sub, "keys": Block(value_keys(yaml.safe_load(raw), (key,)))} for key, sub, raw, _ in read.subcharts
    }
    data: dict[str, Any] = {**pinned, "keys": Block(value_keys(yaml.safe_load(read.values)))}
    if subcharts:
        data["subcharts"] = subcharts
    what = (
        f"{pin.chart} {pin.version}: every key path its values.yaml declares, with its kind (map, list, or the "
        "scalar's YAML type; 'open' marks an empty map or list); under subcharts, the same for each "
        "subchart's values.yaml, prefixed with the key the chart passes its values under. A key holding "
        'a "." is written ["like.this"].'
    )
    w.write(
        f"{base}/values-keys.yaml", data, what, "values", [values_source, *(s for *_, s in read.subcharts)], **pinned
    )

    for raw, source in read.crds:
        for crd in crd_facts(raw.decode()):
            what = (
                f"{crd['kind']} ({crd['group']}), as {pin.chart} {pin.version} installs it: each served version's "
                "openAPIV3Schema, only the keywords a validator evaluates."
            )
            w.write(
                f"crds/{crd['group']}/{crd['kind']}.yaml",
                crd,
                what,
                "crd",
                [source],
                **pinned,
                group=crd["group"],
                kind=crd["kind"],
            )


def refresh(w: Writer, gits: Callable[[str], Git]) -> None:
    for pin in PINS:
        src = SOURCES[pin.chart]
        git = gits(src.repo)
        read, found = read_pages(pin, git, src) if isinstance(src, Pages) else read_tagged(pin, git, src, gits)
        write_chart(w, pin, read)
        newest = found["versions"][0]["version"]
        listed = found["source"].get("index") or f"refs/tags {found['source']['tag_pattern']}"
        w.write(
            f"charts/{pin.chart}/releases.yaml",
            {
                "chart": pin.chart,
                "helm_repo": pin.repo,
                **found["source"],
                "read": w.read,
                "head": found["head"],
                "pinned": pin.version,
                "newest": newest,
                "versions": found["versions"],
            },
            f"{pin.chart}: every final release, newest first.",
            "releases",
            [
                {
                    "repo": git.repo,
                    "ref": listed,
                    "commit": found["head"]["commit"],
                    "path": found["source"].get("chart_path", found["source"].get("package", "")),
                }
            ],
            chart=pin.chart,
            version=pin.version,
        )
        print(f"{pin.chart}: pinned {pin.version}, newest {newest}, {len(found['versions'])} releases", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--git-dir",
        action="append",
        default=[],
        metavar="OWNER/NAME=PATH",
        help="read this repository from an existing git directory instead of cloning it",
    )
    ap.add_argument("--offline", action="store_true", help="use the clones under build/upstream/ as they are")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.git_dir:
        repo, _, path = item.partition("=")
        overrides[repo] = Path(path)

    opened: dict[str, Git] = {}

    def gits(repo: str) -> Git:
        if repo not in opened:
            opened[repo] = open_git(repo, overrides, args.offline)
        return opened[repo]

    missing = [p.chart for p in PINS if p.chart not in SOURCES]
    if missing:
        raise SystemExit(f"no source in upstream/refresh.py SOURCES for: {', '.join(missing)}")

    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upstream-refresh-", dir=CACHE.parent) as staging:
        w = Writer(read=dt.date.today().isoformat(), root=Path(staging))
        refresh(w, gits)
        w.commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
