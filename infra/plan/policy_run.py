"""Run the CrossGuard pack's own validate functions over the recorded graph, offline.

The arguments are the SDK's own classes (ResourceValidationArgs, StackValidationArgs with
PolicyResource parents and dependencies), filled as the analyzer fills them, and the
enforcement levels come from the same pack config file `pulumi preview --policy-pack-config`
reads, so a rule behaves here as it does in front of the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import _NotApplicableError

from infra.config import ConfigError
from infra.plan.graph import Graph, duration_seconds

PACK_DEFAULT = EnforcementLevel.ADVISORY


@dataclass(frozen=True)
class Violation:
    policy: str
    level: EnforcementLevel
    severity: str
    message: str
    urn: str | None
    remediation: str


def load_pack_config(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "must be a JSON object of policy name to level or settings")
    return raw


def _level(policy, pack_config: dict[str, Any]) -> tuple[EnforcementLevel, dict[str, Any]]:
    """Per-policy config, then `all`, then the policy's own level, then the pack's."""
    valid = [e.value for e in EnforcementLevel]
    entry = pack_config.get(policy.name)
    settings: dict[str, Any] = {}
    level = None
    if isinstance(entry, str):
        level = entry
    elif isinstance(entry, dict):
        settings = {k: v for k, v in entry.items() if k != "enforcementLevel"}
        level = entry.get("enforcementLevel")
    if level is None and isinstance(pack_config.get("all"), str):
        level = pack_config["all"]
    if level is not None and level not in valid:
        raise ConfigError(f"pack config {policy.name}", f"enforcement level {level!r}; allowed: {', '.join(valid)}")
    if level is None:
        return policy.enforcement_level or PACK_DEFAULT, settings
    return EnforcementLevel(level), settings


def policy_options(r) -> PolicyResourceOptions:
    """The analyzer's view of a resource's options, from what the plan recorded."""
    o = r.options
    timeouts = o.get("customTimeouts", {})
    return PolicyResourceOptions(
        protect=bool(o.get("protect")),
        ignore_changes=list(o.get("ignoreChanges", [])),
        delete_before_replace=o.get("deleteBeforeReplace"),
        aliases=list(o.get("aliases", [])),
        custom_timeouts=PolicyCustomTimeouts(
            *(duration_seconds(timeouts.get(k, "")) for k in ("create", "update", "delete"))
        ),
        additional_secret_outputs=[],
        parent=r.parent,
    )


def policy_resources(graph: Graph) -> dict[str, PolicyResource]:
    """PolicyResource per URN, with parents and dependencies linked as the analyzer does."""
    providers: dict[str, PolicyProviderResource] = {
        r.urn: PolicyProviderResource(r.type, r.inputs, r.urn, r.name) for r in graph if r.is_provider
    }
    out: dict[str, PolicyResource] = {}
    for r in graph:
        opts = policy_options(r)
        out[r.urn] = PolicyResource(
            resource_type=r.type,
            props=r.inputs,
            urn=r.urn,
            name=r.name,
            opts=opts,
            provider=providers.get(r.provider) if r.provider else None,
            parent=None,
            dependencies=[],
            property_dependencies={},
        )
    for r in graph:
        resource = out[r.urn]
        resource.parent = out.get(r.parent) if r.parent else None
        resource.dependencies = [out[d] for d in r.dependencies if d in out]
    return out


def run(graph: Graph, policies: list, pack_config: dict[str, Any]) -> list[Violation]:
    resources = policy_resources(graph)
    violations: list[Violation] = []
    for policy in policies:
        level, settings = _level(policy, pack_config)
        if level == EnforcementLevel.DISABLED:
            continue

        def report(message: str, urn: str | None = None, _p=policy, _l=level) -> None:
            violations.append(
                Violation(
                    _p.name,
                    _l,
                    (_p.severity.value if _p.severity else "medium"),
                    message,
                    urn,
                    _p.remediation_steps or "",
                )
            )

        if isinstance(policy, ResourceValidationPolicy):
            validators = policy.validate if isinstance(policy.validate, list) else [policy.validate]
            for resource in resources.values():
                if resource.resource_type.startswith(("pulumi:providers:", "llm-platform:")):
                    continue
                args = ResourceValidationArgs(
                    resource.resource_type,
                    resource.props,
                    resource.urn,
                    resource.name,
                    resource.opts,
                    resource.provider,
                    settings,
                )
                for validate in validators:
                    try:
                        validate(args, lambda m, u=None, _r=resource: report(m, u or _r.urn))
                    except _NotApplicableError:
                        pass
        elif isinstance(policy, StackValidationPolicy):
            try:
                policy.validate(StackValidationArgs(list(resources.values()), settings), report)
            except _NotApplicableError:
                pass
    return violations


def summary(violations: list[Violation], policies: list) -> str:
    lines = []
    by_policy: dict[str, list[Violation]] = {}
    for v in violations:
        by_policy.setdefault(v.policy, []).append(v)
    for policy in policies:
        found = by_policy.get(policy.name, [])
        if not found:
            continue
        level = found[0].level.value
        lines.append(f"{policy.name} [{level}, {found[0].severity}]: {len(found)} violation(s)")
        for v in found:
            where = v.urn.split("::")[-1] if v.urn else "stack"
            lines.append(f"  - {where}: {v.message}")
        lines.append(f"    fix: {found[0].remediation}")
    mandatory = sum(1 for v in violations if v.level == EnforcementLevel.MANDATORY)
    lines.append(
        f"policy: {len(policies)} rules, {len(violations)} violation(s), {mandatory} mandatory"
        + ("" if violations else " - all rules pass")
    )
    return "\n".join(lines)


def blocking(violations: list[Violation]) -> bool:
    return any(v.level == EnforcementLevel.MANDATORY for v in violations)
