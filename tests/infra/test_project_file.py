"""Pulumi.yaml as the engine reads it: every key it declares without a default must be set by
every shipped stack, or `pulumi preview` stops before the program runs ("Stack 'dev' is missing
configuration value ..." from pulumi/pulumi sdk/go/common/workspace/project.go,
ValidateStackConfigAndApplyProjectConfig)."""

from __future__ import annotations

import yaml

from tests.stacks import REPO, SHIPPED, stack_config


def missing_declared_keys(project: dict, stack_keys: set[str]) -> list[str]:
    name = project["name"]
    missing = []
    for key, spec in (project.get("config") or {}).items():
        full = key if ":" in key else f"{name}:{key}"
        if isinstance(spec, dict) and "default" not in spec and "value" not in spec and full not in stack_keys:
            missing.append(full)
    return missing


def test_every_shipped_stack_sets_what_the_project_declares_required():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    for stack in SHIPPED:
        assert missing_declared_keys(project, set(stack_config(stack))) == [], stack


def test_a_declared_key_no_stack_sets_is_caught():
    project = {"name": "llm-platform", "config": {"hfToken": {"type": "string", "secret": True}}}
    assert missing_declared_keys(project, set(stack_config("dev"))) == ["llm-platform:hfToken"]
