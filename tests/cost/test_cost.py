"""The cost estimate: its shape, its ordering, and that it tracks what the graph holds."""

from __future__ import annotations

import copy
import json

import pytest

from infra.catalog import instance
from infra.catalog import list_prices as prices
from infra.cost import SCALES
from infra.cost import report as cost_report
from tests.stacks import SHIPPED, stack_config


@pytest.mark.parametrize("stack", SHIPPED)
def test_cost_json_shape_and_order(graphs, stack, tmp_path):
    est = cost_report.of_graph(graphs[stack])
    written = cost_report.write(est, tmp_path, stack)
    data = json.loads(written["json"].read_text())
    assert data["currency"] == "USD"
    assert data["budget"] == pytest.approx(stack_config(stack)["llm-platform:budget"]["monthlyAmount"])
    low, mid, high = (data["monthly"][s] for s in SCALES)
    assert 0 < low <= mid <= high
    assert sum(data["by_component"].values()) == pytest.approx(mid, abs=0.05)
    assert sum(data["by_component_max"].values()) == pytest.approx(high, abs=0.05)
    assert {"control plane", "GPU nodes", "redis", "network", "load balancers"} <= set(data["by_component"])
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_nodes_at_max_are_priced_from_the_catalog(graphs):
    est = cost_report.of_graph(graphs["dev"])
    pool = stack_config("dev")["llm-platform:sites"][0]["gpuPools"][0]
    spec = instance("aws", pool["instanceType"])
    hourly = spec.hourly(pool.get("spot", False))
    expected = hourly * prices()["hours_per_month"] * pool["nodes"]["max"]
    assert est.by("component", "max")["GPU nodes"] == pytest.approx(expected, abs=0.01)
    assert est.by("component", "min")["GPU nodes"] == pytest.approx(hourly * 730 * pool["nodes"]["min"], abs=0.01)


def test_raising_a_pool_maximum_raises_max_cost_only(graphs):
    graph = copy.deepcopy(graphs["dev"])
    before = cost_report.of_graph(graph)
    group = next(
        r for r in graph.of_type("aws:eks/nodeGroup:NodeGroup") if "nvidia.com/gpu.present" in r.inputs["labels"]
    )
    group.inputs["scalingConfig"]["maxSize"] += 3
    after = cost_report.of_graph(graph)
    assert after.total("max") > before.total("max")
    assert after.total("min") == before.total("min")


def test_table_lists_every_site_and_the_budget(graphs):
    text = cost_report.table(cost_report.of_graph(graphs["prod"]))
    for site in stack_config("prod")["llm-platform:sites"]:
        assert site["name"] in text
    assert "budget" in text and "headroom" in text


def test_every_node_pool_of_every_cloud_is_priced(graphs):
    """Each site's system pool and GPU pools show up as cost lines, inline pools included."""
    est = cost_report.of_graph(graphs["prod"])
    for site in stack_config("prod")["llm-platform:sites"]:
        components = {line.component for line in est.lines if line.site == site["name"]}
        assert {"system nodes", "GPU nodes", "control plane", "redis"} <= components, site["name"]
