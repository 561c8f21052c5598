"""`python -m infra <command> <stack>`: the offline tools over the recorded graph.

A bad config exits 2 with one line naming the key; nothing else a user can cause prints
a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.config import ConfigError

BUILD = Path("build")


def _policy_check(graph, stack: str, pack_config: str | None):
    from infra.plan import policy_run
    from policy.rules import POLICIES

    path = Path(pack_config) if pack_config else Path("policy") / f"config.{stack}.json"
    violations = policy_run.run(graph, POLICIES, policy_run.load_pack_config(path))
    return policy_run.summary(violations, POLICIES), policy_run.blocking(violations)


def _plan(args: argparse.Namespace) -> int:
    from infra.cost import report as cost_report
    from infra.plan import report
    from infra.plan.run import record_stack

    graph = record_stack(args.stack)
    print(f"stack {args.stack}: plan")
    print(report.tree(graph))
    written = report.write(graph, BUILD / args.stack)
    count = sum(1 for _ in written["manifests"].rglob("*.yaml"))
    from infra.plan import diagram

    picture = diagram.write(graph, BUILD / args.stack)
    est = cost_report.of_graph(graph)
    costs = cost_report.write(est, BUILD / args.stack, args.stack)
    print()
    print(cost_report.table(est))
    print()
    text, _ = _policy_check(graph, args.stack, args.pack_config)
    print(text)
    print()
    print(
        f"wrote {written['plan']}, {count} manifests under {written['manifests']}/, "
        f"{costs['json']}, {costs['png']}, {picture}"
    )
    return 0


def _policy(args: argparse.Namespace) -> int:
    from infra.plan.run import record_stack

    text, blocked = _policy_check(record_stack(args.stack), args.stack, args.pack_config)
    print(text)
    return 1 if blocked else 0


def _cost(args: argparse.Namespace) -> int:
    from infra.cost import report as cost_report
    from infra.plan.run import record_stack

    est = cost_report.of_graph(record_stack(args.stack))
    print(cost_report.table(est))
    written = cost_report.write(est, BUILD / args.stack, args.stack)
    print(f"wrote {written['json']} and {written['png']}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    import json

    from infra.config import json_schema

    Path(args.stack).write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {args.stack}")
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from infra.preflight import run as preflight

    return preflight(args.stack)


COMMANDS = {"plan": _plan, "policy": _policy, "cost": _cost, "schema": _schema, "preflight": _preflight}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("stack", help="stack name: reads Pulumi.<stack>.yaml (for schema: the output file)")
    parser.add_argument(
        "--pack-config", help="policy pack config (default: policy/config.<stack>.json, as in CI)", default=None
    )
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
