"""The one reader of the recorded graph (infra/plan/kinds.py): it knows every pool, cluster,
Redis and budget the shipped stacks record, and what it reads back is what the stack config
asked for."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from infra.catalog import catalog
from infra.config import StackConfig, parse
from infra.cost import report as cost_report
from infra.labels import POOL_LABEL
from infra.plan import kinds
from infra.plan.graph import Graph
from infra.plan.kinds import BudgetRecord, ClusterRecord, PoolRecord, RedisRecord
from tests.stacks import SHIPPED, stack_config

# The components each platform registers per concept (llm-platform:<cloud>:<Component>); each
# holds exactly one resource of that concept. Budgets are stack-level, one per cloud.
COMPONENT_CONCEPTS = {"NodeGroup": PoolRecord, "Cluster": ClusterRecord, "Redis": RedisRecord}
CLOUD_PACKAGES = ("aws:", "gcp:", "azure-native:")
K8S_EFFECTS = {"NoSchedule", "NoExecute", "PreferNoSchedule"}


def config_of(stack: str) -> StackConfig:
    return parse({k.split(":", 1)[1]: v for k, v in stack_config(stack).items()})


def labelled_pools(value: Any) -> list[str]:
    """Every value of a POOL_LABEL key anywhere in a resource's inputs: the node pools it makes."""
    if isinstance(value, dict):
        found = [value[POOL_LABEL]] if isinstance(value.get(POOL_LABEL), str) else []
        return found + [name for k, v in value.items() if k != POOL_LABEL for name in labelled_pools(v)]
    if isinstance(value, list):
        return [name for v in value for name in labelled_pools(v)]
    return []


def unread(graph: Graph) -> list[str]:
    """Pools, clusters, Redis and budgets in the graph that the table does not read, found
    without the table: from the concept's component, the pool label, and the stack's budgets."""
    by_urn: dict[str, list[kinds.Record]] = {}
    for r, record in kinds.all_records(graph):
        by_urn.setdefault(r.urn, []).append(record)
    problems = []
    for component in graph:
        parts = component.type.split(":")
        if component.custom or parts[0] != "llm-platform" or parts[2] not in COMPONENT_CONCEPTS:
            continue
        cloud, concept = parts[1], COMPONENT_CONCEPTS[parts[2]]
        children = graph.children(component.urn)
        got = [rec for c in children for rec in by_urn.get(c.urn, []) if isinstance(rec, concept)]
        if [rec.cloud for rec in got] != [cloud]:
            problems.append(
                f"{component.name} ({component.type}): {len(got)} {concept.__name__} read from "
                f"{sorted({c.type for c in children})}"
            )
    for r in graph:
        if not r.type.startswith(CLOUD_PACKAGES):
            continue
        wanted = labelled_pools(r.inputs)
        read = [rec.name for rec in by_urn.get(r.urn, []) if isinstance(rec, PoolRecord)]
        if sorted(wanted) != sorted(read):
            problems.append(f"{r.type} {r.name}: makes pools {wanted}, the table reads {read}")
    clouds = {r.type.split(":")[0].removesuffix("-native") for r in graph if r.custom and not r.is_provider}
    clouds &= set(kinds.CLOUDS)
    stack_level = [r for r in graph if r.custom and not r.is_provider and graph.site_of(r) is None]
    budgets = [rec for r in stack_level for rec in by_urn.get(r.urn, []) if isinstance(rec, BudgetRecord)]
    if sorted(b.cloud for b in budgets) != sorted(clouds):
        problems.append(
            f"budgets read for {sorted(b.cloud for b in budgets)}, clouds in use {sorted(clouds)}; "
            f"stack-level resources: {sorted({r.type for r in stack_level})}"
        )
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_pool_cluster_redis_and_budget_the_stacks_record_is_in_the_table(graphs, stack):
    assert unread(graphs[stack]) == []


def test_a_concept_type_missing_from_the_table_is_caught(graphs, monkeypatch):
    """Negative controls: each type prod records, taken out of the table in turn; and a pool
    recorded under a type the table has never heard of."""
    graph = graphs["prod"]
    recorded = sorted({r.type for r in graph} & set(kinds.KINDS))
    assert len(recorded) == len(kinds.KINDS)
    for token in recorded:
        with monkeypatch.context() as m:
            m.delitem(kinds.KINDS, token)
            problems = unread(graph)
        assert any(token in p for p in problems), (token, problems)
    renamed = Graph(stack=graph.stack)
    pool_type = kinds.type_of("azure", "pool")
    for r in graph:
        renamed.add(replace(r, type=pool_type + "V2") if r.type == pool_type else r)
    problems = unread(renamed)
    assert any(pool_type + "V2" in p for p in problems), problems
    assert unread(graph) == []


@pytest.mark.parametrize("stack", SHIPPED)
def test_pools_read_back_as_the_config_asked(graphs, stack):
    want = {}
    for site in config_of(stack).sites:
        system = site.system_pool
        want[(site.name, "system")] = (
            site.cloud,
            system.instance_type,
            system.nodes.min,
            system.nodes.max,
            False,
            system.disk_gb,
        )
        for pool in site.gpu_pools:
            want[(site.name, pool.name)] = (
                site.cloud,
                pool.instance_type,
                pool.nodes.min,
                pool.nodes.max,
                pool.spot,
                pool.disk_gb,
            )
    pools = kinds.pools(graphs[stack])
    got = {(p.site, p.name): (p.cloud, p.instance_type, p.min_nodes, p.max_nodes, p.spot, p.disk_gb) for p in pools}
    assert len(got) == len(pools)
    assert got == want
    for p in pools:
        assert all(effect in K8S_EFFECTS for _, _, effect in p.taints), p
        assert p.labels[POOL_LABEL] == p.name
        if p.cloud == "gcp" and p.name != "system":
            assert p.accelerator_count == catalog("gcp").instances[p.instance_type].gpus, p


@pytest.mark.parametrize("stack", SHIPPED)
def test_budgets_read_back_as_budget_by_cloud(graphs, stack):
    cfg = config_of(stack)
    budgets = kinds.budgets(graphs[stack])
    assert sorted(b.cloud for b in budgets) == sorted(cfg.clouds())
    # GCP budgets take whole units.
    assert {b.cloud: b.amount for b in budgets} == pytest.approx(cfg.budget_by_cloud(), abs=1)
    for b in budgets:
        # An Azure budget is in its billing account's currency.
        assert b.currency == (None if b.cloud == "azure" else cfg.budget.currency)
        assert b.alerts == {"actual", "forecast"}


@pytest.mark.parametrize("stack", SHIPPED)
def test_clusters_and_redis_read_back_per_site(graphs, stack):
    cfg = config_of(stack)
    clusters = {c.site: c for c in kinds.clusters(graphs[stack])}
    redises = {r.site: r for r in kinds.redises(graphs[stack])}
    for site in cfg.sites:
        cluster, redis = clusters[site.name], redises[site.name]
        assert (cluster.cloud, cluster.version) == (site.cloud, site.kubernetes_version)
        # Every shipped site lists apiAllowedCidrs, none of them open.
        assert not cluster.public_endpoint
        # AKS Secrets are not KMS-encrypted by the program (policy checks EKS and GKE only).
        assert cluster.secrets_encrypted == (site.cloud != "azure")
        assert redis.cloud == site.cloud and not redis.public and redis.at_rest_encrypted
        assert redis.tls is not False and redis.auth is not False
    assert len(clusters) == len(redises) == len(cfg.sites)


@pytest.mark.parametrize("stack", SHIPPED)
def test_the_cost_estimates_items_read_as_the_graph_does(graphs, stack):
    """The cost estimate hands over `Item`s (inputs as `props`, its own site); same records."""
    graph = graphs[stack]
    assert kinds.all_records(cost_report.items(graph)) != []
    assert [rec for _, rec in kinds.all_records(cost_report.items(graph))] == [
        rec for r, rec in kinds.all_records(graph) if r.custom
    ]


def test_type_tokens_with_an_api_version_or_an_old_module_are_the_same_kind():
    assert (
        kinds.kind("azure-native:containerservice/v20240901:AgentPool") is kinds.KINDS[kinds.type_of("azure", "pool")]
    )
    assert kinds.concept_of("azure-native:cache:RedisEnterprise") == "redis"
    assert kinds.concept_of("azure-native:cache/v20230301preview:RedisEnterprise") == "redis"
    assert kinds.concept_of("azure-native:containerservice:ManagedClusterSnapshot") is None
    assert kinds.concept_of("aws:ec2/launchTemplate:LaunchTemplate") is None


def test_taints_read_in_kubernetes_spelling():
    eks = kinds.read(
        kinds.type_of("aws", "pool"),
        {
            "instanceTypes": ["g6.xlarge"],
            "scalingConfig": {"minSize": 0, "maxSize": 1},
            "taints": [
                {"key": "a", "value": "b", "effect": "PREFER_NO_SCHEDULE"},
                {"key": "c", "effect": "NO_EXECUTE"},
            ],
        },
    )
    aks = kinds.read(kinds.type_of("azure", "pool"), {"vmSize": "x", "nodeTaints": ["a=b:NoSchedule", "c:NoExecute"]})
    assert isinstance(eks, PoolRecord) and isinstance(aks, PoolRecord)
    assert eks.taints == (("a", "b", "PreferNoSchedule"), ("c", "", "NoExecute"))
    assert aks.taints == (("a", "b", "NoSchedule"), ("c", "", "NoExecute"))
