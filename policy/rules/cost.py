"""Cost rules: budgets per cloud, cost tags, dev scale-to-zero, estimate within budget."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.cost import Item, estimate
from infra.plan import kinds
from infra.plan.scheduling import gpu_pools
from policy.rules.facts import COST_TAGS, camel, graph_of, takes_tags

_CLOUD_PREFIX = {"aws": "aws:", "gcp": "gcp:", "azure": "azure-native:"}


def _budget_per_cloud(args: StackValidationArgs, report: ReportViolation) -> None:
    graph = graph_of(args.resources)
    budgets = kinds.budgets(graph)
    for cloud, prefix in _CLOUD_PREFIX.items():
        if not any(r.type.startswith(prefix) and r.custom and not r.is_provider for r in graph):
            continue
        alerts = set().union(*(b.alerts for b in budgets if b.cloud == cloud))
        if {"actual", "forecast"} - alerts:
            report(
                f"{cloud}: no budget alerting on both actual and forecast spend "
                f"(has: {', '.join(sorted(alerts)) or 'none'})"
            )


def _cost_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    key = takes_tags(args.resource_type)
    if not key:
        return
    required = args.get_config().get("requiredTags", list(COST_TAGS))
    tags = args.props.get(camel(key)) or {}
    missing = [t for t in required if t not in tags]
    if missing:
        report(f"missing cost {key}: {', '.join(missing)}")


def _dev_scale_to_zero(args: StackValidationArgs, report: ReportViolation) -> None:
    for pool in gpu_pools(graph_of(args.resources)):
        if pool.min_nodes > 0:
            report(
                f"{pool.site}/{pool.name}: GPU pool keeps {pool.min_nodes} node(s) up; dev pools should scale to zero"
            )


def _within_budget(args: StackValidationArgs, report: ReportViolation) -> None:
    graph = graph_of(args.resources)
    est = estimate(Item(r.type, r.name, r.inputs, graph.site_of(r), r.parent) for r in graph if r.custom)
    scale = args.get_config().get("scale", "max")
    if est.budget is None:
        report("no budget to compare the estimate with")
    elif est.total(scale) > est.budget:
        report(
            f"estimated {scale} monthly cost {est.total(scale):,.2f} {est.currency} "
            f"exceeds the budget {est.budget:,.2f}"
        )


POLICIES = [
    StackValidationPolicy(
        name="budget-per-cloud",
        description="Every cloud the stack uses has a budget alerting on actual and forecast spend.",
        validate=_budget_per_cloud,
        severity=Severity.HIGH,
        remediation_steps="Set budget.* in the stack config; the program creates one budget per cloud.",
    ),
    ResourceValidationPolicy(
        name="cost-tags",
        description="Every taggable resource carries the cost tags (labels on GCP).",
        validate=_cost_tags,
        severity=Severity.MEDIUM,
        remediation_steps="Pass resource_tags(...) as tags/labels; config requiredTags lists the keys.",
    ),
    StackValidationPolicy(
        name="dev-gpu-pools-scale-to-zero",
        description="GPU pools can scale to zero (for dev stacks; disabled in prod's pack config).",
        validate=_dev_scale_to_zero,
        severity=Severity.LOW,
        remediation_steps="Set sites[].gpuPools[].nodes.min: 0.",
    ),
    StackValidationPolicy(
        name="cost-within-budget",
        description="The stack's estimated monthly cost at maximum scale (config scale) stays within its budget.",
        validate=_within_budget,
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.HIGH,
        remediation_steps="Lower pool maximums or raise budget.monthlyAmount; see `python -m infra cost <stack>`.",
    ),
]
