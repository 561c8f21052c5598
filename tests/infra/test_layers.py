"""Imports run one way (docs/architecture.md, "Layers"): facts, config, platform, workloads,
the program, then the readers of the recorded graph, then the command line. Nothing imports a
layer above its own; the gateway and the simulator import nothing of infra/."""

from __future__ import annotations

import ast

from tests.stacks import REPO

RANK = {
    # facts: leaves
    "infra.catalog": 0,
    "infra.labels": 0,
    "infra.charts": 0,
    "infra.secrets": 0,
    "infra.config": 1,
    "infra.platform": 2,
    "infra.workloads": 3,
    "infra.stack": 4,
    # the readers of the recorded graph (they may read each other)
    "infra.plan": 5,
    "infra.cost": 5,
    "infra.preflight": 5,
    "policy": 5,
    "infra.cli": 6,
    "infra.__main__": 6,
}
SEALED = ("app",)  # imports nothing of infra/ or policy/


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "infra" else ".".join(parts[:2])


def imports(source: str, module: str) -> set[str]:
    """Absolute modules a source imports, with `from infra import config` read as infra.config."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("infra", "policy"):
                out |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def upward_imports(files: dict[str, str]) -> list[str]:
    """`module imports other` for every import that runs against the layers."""
    out = []
    for module, source in sorted(files.items()):
        src = layer_of(module)
        for imported in sorted(imports(source, module)):
            dst = layer_of(imported)
            if src in SEALED and dst.split(".")[0] in ("infra", "policy"):
                out.append(f"{module} imports {imported}: {src} imports nothing of infra/ or policy/")
            elif src in RANK and dst in RANK and dst != src and RANK[dst] > RANK[src]:
                out.append(f"{module} imports {imported}, a layer above it")
    return out


def _sources() -> dict[str, str]:
    files = {}
    for root in ("infra", "policy", "app"):
        for path in (REPO / root).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            files[module] = path.read_text()
    return files


def test_imports_run_one_way():
    files = _sources()
    assert {layer_of(m) for m in files if m.startswith("infra.")} <= set(RANK), "a layer missing from RANK"
    assert upward_imports(files) == []


def test_an_import_against_the_layers_is_named():
    """Negative control: workloads reading the plan, config reading the platform, and the
    gateway reading the config are each reported."""
    files = {
        "infra.workloads.x": "from infra.plan.graph import Graph\n",
        "infra.config": "from infra import platform\n",
        "app.gateway.x": "import infra.config\n",
        "infra.cost.x": "from infra.plan import graph\nfrom infra.labels import POOL_LABEL\n",
    }
    assert upward_imports(files) == [
        "app.gateway.x imports infra.config: app imports nothing of infra/ or policy/",
        "infra.config imports infra.platform, a layer above it",
        "infra.workloads.x imports infra.plan.graph, a layer above it",
    ]


def test_every_layer_is_in_the_architecture_page():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for layer in RANK:
        path = layer.replace(".", "/")
        named = f"`{path}/`" in doc or f"`{path}.py`" in doc or f"`{path}/`," in doc
        assert named, f"docs/architecture.md does not name the layer {path}"
