"""Run the Pulumi program in-process under the recording mocks and return its graph.

The program is `infra.stack.run`, the very function `pulumi up` runs; only the monitor
underneath differs. Config comes from `Pulumi.<stack>.yaml` exactly as the engine would
pass it: structured values as JSON strings, secure values as secrets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.config import PROJECT, ConfigError
from infra.plan.graph import SECRET, Graph
from infra.plan.mocks import PlanMocks, RecordingMonitor


def offline_secret(key: str) -> str:
    """What a `secure:` value stands for offline, where nothing can decrypt it."""
    return f"offline-secret-{key.replace(':', '-')}"


def _engine_value(key: str, value: Any) -> tuple[Any, bool]:
    """A stack-file value as the engine passes it, and whether it is secret."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        return offline_secret(key), True
    if isinstance(value, dict):
        pairs = {k: _engine_value(f"{key}.{k}", v) for k, v in value.items()}
        return {k: p[0] for k, p in pairs.items()}, any(p[1] for p in pairs.values())
    if isinstance(value, list):
        pairs = [_engine_value(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    return value, False


def stack_names(root: Path) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))


def read_stack_file(stack: str, root: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(config map, secret keys) for `pulumi.runtime.set_all_config`, from the project
    directory (where Pulumi.yaml is; the working directory by default)."""
    root = root or Path.cwd()
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(stack_names(root)) or "none"
        raise ConfigError("", f"no stack file {path.name}; stacks here: {known}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(path.name, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    raw = doc.get("config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: config", "must be a mapping of keys to values")
    return to_engine_config(raw)


def to_engine_config(raw: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in raw.items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        engine_value, secret = _engine_value(full_key, value)
        config[full_key] = engine_value if isinstance(engine_value, str) else json.dumps(engine_value)
        if secret:
            secret_keys.append(full_key)
    return config, secret_keys


def record(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str] | None = None,
    program: Callable[[], None] | None = None,
) -> Graph:
    """Run the program under the recording mocks and return everything it registered."""
    from infra import stack as program_module  # the program itself, as `pulumi up` runs it

    graph = Graph(stack=stack)
    mocks = PlanMocks()
    settings.reset_options(project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=stack,
        preview=False,
        monitor=RecordingMonitor(mocks, graph),
        logger=_quiet_logger(),
    )
    pulumi.runtime.set_all_config(dict(config), list(secret_keys or []))
    _sync_await(run_pulumi_func(program or program_module.run))
    graph.outputs.update(_stack_outputs())
    return graph


def _stack_outputs() -> dict[str, Any]:
    """The program's exports, resolved, with secret ones masked."""
    root = settings.get_root_resource()
    resolved: dict[str, Any] = {}
    for name, value in getattr(root, "outputs", {}).items():
        output = pulumi.Output.from_input(value)
        secret = _sync_await(output.is_secret())
        resolved[name] = SECRET if secret else _sync_await(output.future())
    return resolved


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("llm-platform.plan")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def record_stack(stack: str, root: Path | None = None) -> Graph:
    config, secret_keys = read_stack_file(stack, root)
    return record(stack, config, secret_keys)
