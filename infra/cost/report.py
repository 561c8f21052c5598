"""The cost estimate of a recorded graph: a table, cost.json and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from infra.cost import SCALES, Estimate, Item, estimate
from infra.plan.graph import Graph


def items(graph: Graph) -> list[Item]:
    return [Item(r.type, r.name, r.inputs, graph.site_of(r), r.parent) for r in graph if r.custom]


def of_graph(graph: Graph) -> Estimate:
    return estimate(items(graph))


def table(est: Estimate) -> str:
    rows = [("site", "component", *SCALES)]
    for site, comps in _site_components(est).items():
        for comp, monthly in comps.items():
            rows.append((site, comp, *(f"{monthly[s]:,.2f}" for s in SCALES)))
    rows.append(("total", "", *(f"{est.total(s):,.2f}" for s in SCALES)))
    if est.budget is not None:
        rows.append(("budget", "", *(f"{est.budget:,.2f}" for _ in SCALES)))
        rows.append(("headroom", "", *(f"{est.budget - est.total(s):,.2f}" for s in SCALES)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"monthly cost ({est.currency}) at minimum, expected and maximum scale"]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _site_components(est: Estimate) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for line in est.lines:
        comp = out.setdefault(line.site, {}).setdefault(line.component, {s: 0.0 for s in SCALES})
        for s in SCALES:
            comp[s] += line.monthly[s]
    return {site: dict(sorted(comps.items())) for site, comps in sorted(out.items())}


def chart(est: Estimate, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    expected, maximum = est.by("component", "expected"), est.by("component", "max")
    names = list(maximum)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [maximum[n] for n in names], height=0.4, label="maximum scale", color="#c9d7ea")
    ax.barh(
        [y - 0.2 for y in ys], [expected.get(n, 0) for n in names], height=0.4, label="expected scale", color="#2f6db5"
    )
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{est.currency} per month")
    if est.budget:
        ax.axvline(est.budget, color="#b52f2f", linestyle="--", label=f"budget {est.budget:,.0f}")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(est: Estimate, out_dir: Path, stack: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cost_json = out_dir / "cost.json"
    cost_json.write_text(json.dumps(est.to_json(), indent=2) + "\n")
    png = out_dir / "cost.png"
    chart(est, png, f"llm-platform {stack}: monthly cost by component")
    return {"json": cost_json, "png": png}
