"""Architecture diagram of a recorded graph as SVG: one column per site with its cluster,
node pools, services, data stores, monitoring and autoscaling. Plain SVG text, so no
graphviz or fonts are needed to draw it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from infra.plan import kinds
from infra.plan.graph import Graph, Resource

_SHOWN = ("Release", "PodMonitor", "ServiceMonitor", "PrometheusRule", "ScaledObject")
_STORE_WORDS = ("redis", "elasticache", "registry", "ecr/repository", "artifactregistry", "filestore", "efs/")

COLUMN_W = 300
ROW_H = 22
PAD = 12
COLORS = {
    "cluster": "#dbeafe",
    "pools": "#fef3c7",
    "services": "#dcfce7",
    "data stores": "#fce7f3",
    "monitoring": "#ede9fe",
    "autoscaling": "#e0f2fe",
}


@dataclass
class SiteView:
    name: str
    cloud: str = "?"
    sections: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    dashboards: int = 0


def _k8s_name(r: Resource) -> str:
    meta = r.inputs.get("metadata") or {}
    return meta.get("name") or r.inputs.get("name") or r.name


def sites(graph: Graph) -> list[SiteView]:
    views: dict[str, SiteView] = {}
    for r in graph:
        site = graph.site_of(r)
        if site is None:
            continue
        view = views.setdefault(site, SiteView(site))
        top = graph.ancestors(r)[-1] if graph.ancestors(r) else r
        parts = top.type.split(":")
        if len(parts) == 3 and parts[1] in ("aws", "gcp", "azure"):
            view.cloud = parts[1]
        components = {a.type.rsplit(":", 1)[-1] for a in graph.ancestors(r)}
        t = r.type
        record = kinds.read(t, r.inputs, r.name, site)
        if isinstance(record, kinds.ClusterRecord):
            view.sections["cluster"].append(f"{t.split(':')[0]} {r.name}")
        elif isinstance(record, kinds.PoolRecord):
            # A pool resource's own pool; a cluster's inline pools are not drawn.
            if record.name not in view.sections["pools"]:
                view.sections["pools"].append(record.name)
        elif "Monitoring" in components or "Autoscaling" in components:
            kind = t.rsplit(":", 1)[-1]
            if kind in _SHOWN:
                section = "monitoring" if "Monitoring" in components else "autoscaling"
                view.sections[section].append(f"{kind} {_k8s_name(r)}")
            elif t == "kubernetes:core/v1:ConfigMap":
                view.dashboards += 1
        elif t == "kubernetes:apps/v1:Deployment":
            view.sections["services"].append(f"Deployment {_k8s_name(r)}")
        elif t == "kubernetes:core/v1:Service" and (r.inputs.get("spec") or {}).get("type") == "LoadBalancer":
            view.sections["services"].append(f"LoadBalancer {_k8s_name(r)}")
        elif t == "kubernetes:helm.sh/v3:Release":
            view.sections["services"].append(f"Helm {r.inputs.get('chart', r.name)}")
        elif r.custom and any(w in t.lower() for w in _STORE_WORDS) and "subnet" not in t.lower():
            view.sections["data stores"].append(f"{t.rsplit(':', 1)[-1]} {r.name}")
    for view in views.values():
        if view.dashboards:
            view.sections["monitoring"].append(f"{view.dashboards} Grafana dashboards")
    return [views[k] for k in sorted(views)]


def svg(graph: Graph) -> str:
    views = sites(graph)
    heights = []
    for v in views:
        h = 40 + sum(ROW_H * (len(v.sections[s]) + 1) + PAD for s in COLORS)
        heights.append(h)
    width = PAD + len(views) * (COLUMN_W + PAD)
    height = 50 + max(heights, default=60) + PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<text x="{PAD}" y="28" font-size="18" font-weight="bold">{escape(graph.stack)}: architecture</text>',
    ]
    for i, v in enumerate(views):
        x = PAD + i * (COLUMN_W + PAD)
        y = 44
        out.append(
            f'<rect x="{x}" y="{y}" width="{COLUMN_W}" height="{heights[i]}" rx="8" fill="#f8fafc" stroke="#334155"/>'
        )
        out.append(
            f'<text x="{x + 10}" y="{y + 22}" font-size="14" font-weight="bold">'
            f"site {escape(v.name)} ({escape(v.cloud)})</text>"
        )
        y += 34
        for section, color in COLORS.items():
            items = v.sections[section]
            h = ROW_H * (len(items) + 1)
            out.append(
                f'<rect x="{x + 8}" y="{y}" width="{COLUMN_W - 16}" height="{h}" '
                f'rx="4" fill="{color}" stroke="#64748b"/>'
            )
            out.append(f'<text x="{x + 14}" y="{y + 15}" font-weight="bold">{escape(section)}</text>')
            for n, item in enumerate(items):
                out.append(f'<text x="{x + 22}" y="{y + 15 + ROW_H * (n + 1)}">{escape(item[:44])}</text>')
            y += h + PAD
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(graph: Graph, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "architecture.svg"
    path.write_text(svg(graph))
    return path
