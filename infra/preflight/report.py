"""What preflight found, and how it is printed.

Each GPU pool gets one line: `ok`, or what to request and where. A cloud that cannot be
checked here (its SDK is missing) gets one `skipped` line per site saying what to install.
Exit codes: 0 all ok (skips included), 1 something must be requested or changed, 2 the
check itself could not run (no credentials, no permission, no network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TextIO

Status = Literal["ok", "request", "skipped"]


class PreflightError(Exception):
    """The check could not run at all: a one-line reason, exit 2."""


@dataclass(frozen=True)
class Quota:
    """One quota a site draws on: its current value against what the pools need at max."""

    cloud: str
    region: str
    code: str  # AWS quota code, GCP metric, Azure usage name
    name: str  # the name the console shows
    unit: str  # "vCPU" or "GPU"
    current: float
    needed: float
    pools: tuple[str, ...]
    console_url: str

    @property
    def enough(self) -> bool:
        return self.current >= self.needed

    def request_lines(self) -> tuple[str, str]:
        return (
            f"request quota '{self.name}' ({self.code}) in {self.region}: current {_num(self.current)} {self.unit}, "
            f"needed {_num(self.needed)} {self.unit} for {', '.join(self.pools)} at max nodes",
            f"at {self.console_url}",
        )


@dataclass(frozen=True)
class PoolResult:
    name: str
    instance_type: str
    spot: bool
    max_nodes: int
    zones: tuple[str, ...] = ()  # zones of the region that offer the type
    offered: bool = True
    problems: tuple[str, ...] = ()  # what to change, each a full sentence
    quotas: tuple[Quota, ...] = ()
    notes: tuple[str, ...] = ()  # worth knowing, not blocking

    @property
    def status(self) -> Status:
        if self.problems or not self.offered or any(not q.enough for q in self.quotas):
            return "request"
        return "ok"


@dataclass(frozen=True)
class SiteResult:
    name: str
    cloud: str
    region: str
    pools: tuple[PoolResult, ...] = ()
    skipped: str | None = None  # why this site was not checked
    account: str | None = None

    @property
    def status(self) -> Status:
        if self.skipped:
            return "skipped"
        return "request" if any(p.status == "request" for p in self.pools) else "ok"


@dataclass
class Report:
    stack: str
    sites: list[SiteResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(s.status == "request" for s in self.sites) else 0

    def write(self, out: TextIO) -> None:
        out.write(f"preflight {self.stack}: GPU instance offerings and quotas at each pool's max nodes\n")
        for site in self.sites:
            where = f"{site.cloud} {site.region}" + (f", account {site.account}" if site.account else "")
            if site.skipped:
                out.write(f"{site.name} ({where}): skipped: {site.skipped}\n")
                continue
            out.write(f"{site.name} ({where})\n")
            width = max(len(p.name) for p in site.pools)
            heads = {p.name: _head(p) for p in site.pools}
            head_width = max(map(len, heads.values()))
            for pool in site.pools:
                out.write(f"  {pool.name:<{width}}  {heads[pool.name]:<{head_width}}  {_status(pool)}\n")
                for problem in pool.problems:
                    out.write(f"  {'':<{width}}    - {problem}\n")
                for quota in pool.quotas:
                    if not quota.enough:
                        what, where = quota.request_lines()
                        out.write(f"  {'':<{width}}    - {what}\n  {'':<{width}}      {where}\n")
                for note in pool.notes:
                    out.write(f"  {'':<{width}}    note: {note}\n")
        counts = {s: sum(1 for site in self.sites for p in site.pools if p.status == s) for s in ("ok", "request")}
        skipped = sum(1 for site in self.sites if site.skipped)
        verdict = "ok" if self.exit_code == 0 else "action needed"
        out.write(
            f"{verdict}: {counts['ok']} pool(s) ok, {counts['request']} need action"
            + (f", {skipped} site(s) skipped" if skipped else "")
            + "\n"
        )


def _head(pool: PoolResult) -> str:
    return f"{pool.instance_type} {'spot' if pool.spot else 'on-demand'} x{pool.max_nodes}"


def _status(pool: PoolResult) -> str:
    if not pool.offered:
        return "NOT OFFERED"
    zones = f"zones {', '.join(pool.zones)}" if pool.zones else "zones unknown"
    quotas = "; ".join(f"{q.code} needs {_num(q.needed)} of {_num(q.current)} {q.unit}" for q in pool.quotas)
    detail = zones + (f"; quota {quotas}" if quotas else "")
    return f"{'ok' if pool.status == 'ok' else 'REQUEST'}  {detail}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
