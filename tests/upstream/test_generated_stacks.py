"""The upstream checks (chart pins, values keys, custom resources against their CRDs, built-in
objects against Kubernetes' own schemas) over
stack configs hypothesis makes up, with sites on any of the three clouds: each cloud's
platform feeds the charts and custom resources different values."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.infra.test_generated_stacks import stack_configs
from tests.stacks import SENTINELS, record_raw
from tests.upstream import checks
from tests.upstream.test_kubernetes_schemas import schema_problems


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack_configs())
def test_generated_stacks_match_the_upstream_artifacts(raw):
    graph = record_raw("gen", raw, SENTINELS)
    assert checks.helm_releases(graph) and checks.custom_resources(graph)
    assert checks.graph_problems(graph) == []
    assert schema_problems(graph) == []
