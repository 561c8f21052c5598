"""`python -m infra preflight <stack>`: before `pulumi up`, ask the real cloud APIs what most
often breaks a GPU deploy.

For every site and GPU pool: is the instance type offered in the site's region, in which
zones, and does the account's GPU quota cover the pools at their maximum size? Prints one
line per pool, `ok` or what to request and where, and exits 0 (all ok), 1 (something to
request or change) or 2 (the check could not run: bad config, no credentials, no access).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from infra.config import PROJECT, SECRET_KEYS, ConfigError, Site, StackConfig, parse
from infra.plan.run import read_stack_file
from infra.preflight import aws, azure, gcp
from infra.preflight.report import PreflightError, Report, SiteResult

Checker = Callable[[Site], SiteResult]
CHECKERS: dict[str, Checker] = {"aws": aws.check_site, "gcp": gcp.check_site, "azure": azure.check_site}

__all__ = ["CHECKERS", "PreflightError", "Report", "load", "preflight", "run"]


def load(stack: str, root: Path | None = None) -> StackConfig:
    """The stack's typed config from `Pulumi.<stack>.yaml`; secrets are not needed here."""
    config, _ = read_stack_file(stack, root)
    raw: dict[str, object] = {}
    for full_key, value in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != PROJECT or key in SECRET_KEYS:
            continue
        try:
            raw[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            raw[key] = value
    return parse(raw)


def preflight(stack: str, cfg: StackConfig, checkers: dict[str, Checker] | None = None) -> Report:
    checkers = {**CHECKERS, **(checkers or {})}
    report = Report(stack)
    for site in cfg.sites:
        try:
            report.sites.append(checkers[site.cloud](site))
        except PreflightError as exc:
            raise PreflightError(f"{site.name}: {exc}") from None
    return report


def run(
    stack: str,
    *,
    root: Path | None = None,
    checkers: dict[str, Checker] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        report = preflight(stack, load(stack, root), checkers)
    except ConfigError as exc:
        print(f"config error: {exc}", file=err)
        return 2
    except PreflightError as exc:
        print(f"error: {exc}", file=err)
        return 2
    report.write(out)
    return report.exit_code
