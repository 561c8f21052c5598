"""The shipped stacks and how tests record graphs of them (and of configs made up from them)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from infra.plan.graph import Graph
from infra.plan.run import record, stack_names, to_engine_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = stack_names(REPO)
# Values that must never show up in plain text anywhere the plan writes.
SENTINELS = {
    "hfToken": "hf_SENTINEL0hf0token0value",
    "apiKeys": {"team-a": "sk-SENTINEL0team0a0key", "team-b": "sk-SENTINEL0team0b0key"},
    # Keys for prod's providers; a stack without providers sends none of them to the cluster.
    "providerKeys": {"openai": "sk-SENTINEL0openai0key", "together": "SENTINEL0together0key"},
    "dockerHubToken": "dckr_pat_SENTINEL0docker0hub",
}


def stack_config(stack: str) -> dict:
    return yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]


def record_raw(stack: str, raw: dict, secrets: dict | None = None) -> Graph:
    """Record a graph from a raw stack-file config mapping, secrets passed as secure values."""
    config, secret_keys = to_engine_config(raw)
    for key, value in (secrets or {}).items():
        full = f"llm-platform:{key}"
        config[full] = value if isinstance(value, str) else json.dumps(value)
        secret_keys.append(full)
    return record(stack, config, secret_keys)
