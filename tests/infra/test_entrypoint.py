"""`infra/__main__.py` as the engine runs it: the same graph as the plan, one-line errors."""

from __future__ import annotations

import runpy

import pulumi
import pytest

from infra.plan.run import read_stack_file, record
from tests.stacks import REPO


def _run_entry():
    # pulumi-language-python-exec does this: runpy on the program directory, as __main__.
    runpy.run_path(str(REPO / "infra"), run_name="__main__")


def test_engine_entry_registers_the_plan_graph():
    config, secret_keys = read_stack_file("dev", REPO)
    via_entry = record("dev", config, secret_keys, program=_run_entry)
    via_plan = record("dev", config, secret_keys)
    assert sorted(r.urn for r in via_entry) == sorted(r.urn for r in via_plan)
    assert len(via_entry.resources) > 50


def test_engine_entry_reports_config_errors_as_one_line():
    config, secret_keys = read_stack_file("dev", REPO)
    config["llm-platform:sites"] = config["llm-platform:sites"].replace('"g6.xlarge"', '"g6.nope"')
    with pytest.raises(pulumi.RunError) as info:
        record("dev", config, secret_keys, program=_run_entry)
    message = str(info.value)
    assert message.startswith("config error: sites[0].gpuPools[0].instanceType: unknown aws GPU type 'g6.nope'")
    assert "\n" not in message
