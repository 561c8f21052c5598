"""Alert rules and dashboards: promtool checks and unit-tests the rules, and every PromQL
expression in rules and dashboards is valid and names only metrics something exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.gateway.metrics import GatewayMetrics
from infra.workloads.monitoring import DASHBOARDS_DIR, GENERATED_RECORDS, RULES_DIR, generated_rules

REPO = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO / "monitoring" / "tests"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing; `make tools` installs Debian's prometheus"
)

RULE_FILES = sorted(RULES_DIR.glob("*.yaml"))
DASHBOARDS = sorted(DASHBOARDS_DIR.glob("*.json"))


def rules() -> list[dict]:
    return [rule for f in RULE_FILES for group in yaml.safe_load(f.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        walk(board["panels"])
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            match = re.fullmatch(r"label_values\((\w[\w:]*),\s*\w+\)", query) if isinstance(query, str) else None
            if match:
                out.append((f"{path.stem}: ${var['name']}", match.group(1)))
    return out


def all_exprs() -> list[str]:
    return [r["expr"] for r in rules()] + [e for _, e in dashboard_exprs()]


def _grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@needs_promtool
def test_promtool_check_rules():
    result = _run("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    tests = sorted(TESTS_DIR.glob("*_test.yaml"))
    assert tests
    result = _run("test", "rules", *(t.name for t in tests), cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_generated_price_rules_are_valid(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(generated_rules({"system": 0.1008, "l4-spot": 0.36}, 1500.0)))
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_documented_and_has_a_runbook():
    readme = (REPO / "README.md").read_text().lower()
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "alert names repeat"
    for alert in alerts():
        ann = alert.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(ann), f"{alert['alert']}: annotations {sorted(ann)}"
        anchor = ann["runbook"].split("#", 1)[1]
        assert f"#### {alert['alert'].lower()}" in readme, f"README has no '#### {alert['alert']}' section ({anchor})"


def test_every_alert_has_tests_that_fire_it_and_that_do_not():
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS_DIR.glob("*_test.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test keeps quiet"


def test_every_dashboard_target_uses_a_prometheus_datasource():
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"]
        for panel in board["panels"]:
            assert panel["datasource"]["type"] == "prometheus", f"{path.name}: {panel['title']}"


@needs_promtool
def test_every_expression_parses(tmp_path):
    # promtool parses expressions only inside rule files: one recording rule per expression.
    exprs = all_exprs()
    rules_file = {
        "groups": [
            {
                "name": "parse",
                "rules": [{"record": f"parse:expr_{i}", "expr": _grafana_to_promql(e)} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump(rules_file))
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names -----------------------------------------------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "x",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not functions, keywords,
    label names inside {...}, by/on/... lists, durations or numbers."""
    text = _grafana_to_promql(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    catalog = yaml.safe_load((REPO / "infra" / "catalog" / "metric_names.yaml").read_text())
    names: set[str] = set()

    def add(name: str, kind: str) -> None:
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")

    for section in catalog.values():
        for metric in section:
            add(metric["name"], metric.get("type", "gauge"))
    for family in GatewayMetrics().registry.collect():
        add(family.name, family.type)
    names.update(r["record"] for r in rules() if "record" in r)
    names.update(GENERATED_RECORDS)
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (le, model) (rate(a_bucket{le="2.5", x=~"$m"}[5m])) / on() b * 1e6') == {
        "a_bucket",
        "b",
    }
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(vllm:ttft_bucket[$__rate_interval])))") == {
        "vllm:ttft_bucket"
    }


@pytest.mark.parametrize("expr", all_exprs())
def test_expression_reads_only_exported_metrics(expr):
    unknown = metric_names(expr) - exported_names()
    assert not unknown, (
        f"not exported by vLLM, the gateway, DCGM, kube-state-metrics or a recording rule: {sorted(unknown)}"
    )
