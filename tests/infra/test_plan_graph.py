"""The recorded graph reads the same whatever order the engine answered registrations in, so
two runs of `make plan` write the same files."""

from __future__ import annotations

import random

import pytest

from infra.cost.report import of_graph as estimate_graph
from infra.plan import diagram
from infra.plan.graph import Graph
from tests.stacks import SHIPPED


def _reordered(graph: Graph, seed: int) -> Graph:
    shuffled = list(graph.resources)
    random.Random(seed).shuffle(shuffled)
    out = Graph(stack=graph.stack, outputs=dict(graph.outputs))
    for r in shuffled:
        out.add(r)
    return out


@pytest.mark.parametrize("stack", SHIPPED)
def test_readers_do_not_depend_on_registration_order(graphs, stack):
    graph = graphs[stack]
    other = _reordered(graph, seed=len(graph.resources))
    assert [r.urn for r in other] == [r.urn for r in graph]
    assert other.to_plan() == graph.to_plan()
    assert estimate_graph(other).lines == estimate_graph(graph).lines
    assert diagram.svg(other) == diagram.svg(graph)


def test_a_graph_kept_in_arrival_order_would_differ(graphs):
    """Negative control: the same resources in arrival order, as a plain list keeps them, give a
    different cost line order."""
    graph = graphs["prod"]
    arrival = Graph(stack=graph.stack, resources=list(reversed(graph.resources)))
    assert estimate_graph(arrival).lines != estimate_graph(graph).lines
