"""Fixtures shared by every test directory: the recorded graphs of the shipped stacks, built
once per session. Fixtures of one directory stay in its own conftest (tests/app/conftest.py)."""

from __future__ import annotations

import pytest

from infra.plan.graph import Graph
from infra.plan.run import record_stack
from tests.stacks import REPO, SENTINELS, SHIPPED, record_raw, stack_config


@pytest.fixture(scope="session")
def graphs() -> dict[str, Graph]:
    """{stack: graph} for every shipped Pulumi.<stack>.yaml."""
    assert SHIPPED, "no Pulumi.<stack>.yaml files found"
    return {stack: record_stack(stack, REPO) for stack in SHIPPED}


@pytest.fixture(scope="session")
def graphs_with_secrets() -> dict[str, Graph]:
    """Every shipped stack again, with every secret config key set to a sentinel."""
    return {stack: record_raw(stack, stack_config(stack), SENTINELS) for stack in SHIPPED}
