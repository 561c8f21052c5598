"""GCP: which zones of the region offer each pool's accelerator, and the regional GPU quota
(`NVIDIA_L4_GPUS`, or `PREEMPTIBLE_NVIDIA_L4_GPUS` for Spot pools) and the project-wide
`GPUS_ALL_REGIONS` against the pools at max nodes.

Needs `google-cloud-compute` (not a dependency of this project); without it each GCP site
is reported as skipped with what to install.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from infra.catalog import instance
from infra.config import Site
from infra.preflight.report import PoolResult, PreflightError, Quota, SiteResult

SKIP = "install google-cloud-compute to check GCP offerings and quotas (pip install google-cloud-compute)"

# accelerator type -> regional quota metric
METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
}


def metric(accelerator: str, spot: bool) -> str:
    base = METRICS.get(accelerator, accelerator.upper().replace("-", "_") + "_GPUS")
    return f"PREEMPTIBLE_{base}" if spot else base


def console_url(project: str, metric_name: str) -> str:
    return f"https://console.cloud.google.com/iam-admin/quotas?project={project}&metric={metric_name}"


class Clients:
    """The three compute_v1 clients preflight reads, and the project they read."""

    def __init__(self, project: str, regions: Any, projects: Any, accelerators: Any):
        self.project = project
        self.regions = regions
        self.projects = projects
        self.accelerators = accelerators


def default_clients(project: str | None = None) -> Clients:
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import compute_v1
    except ImportError:
        raise ImportError(SKIP) from None
    try:
        _, project = google.auth.default()
    except DefaultCredentialsError:
        raise PreflightError(
            "gcp: no credentials found; run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or project
    if not project:
        raise PreflightError("gcp: no project; set the site's gcp.project or GOOGLE_CLOUD_PROJECT")
    return Clients(
        project, compute_v1.RegionsClient(), compute_v1.ProjectsClient(), compute_v1.AcceleratorTypesClient()
    )


def _zones_by_accelerator(clients: Clients, region: str, accelerators: set[str]) -> dict[str, list[str]]:
    zones: dict[str, set[str]] = defaultdict(set)
    request = {"project": clients.project, "filter": " OR ".join(f'(name = "{a}")' for a in sorted(accelerators))}
    for scope, scoped in clients.accelerators.aggregated_list(request=request):
        zone = scope.rsplit("/", 1)[-1]
        if not zone.startswith(region + "-"):
            continue
        for acc in getattr(scoped, "accelerator_types", None) or ():
            if acc.name in accelerators:
                zones[acc.name].add(zone)
    return {name: sorted(z) for name, z in zones.items()}


def _configured_zones(site: Site) -> list[str]:
    return list(getattr(getattr(site, "gcp", None), "gpu_zones", None) or ())


def check_site(site: Site, clients: Clients | None = None) -> SiteResult:
    if clients is None:
        try:
            clients = default_clients(getattr(getattr(site, "gcp", None), "project", None))
        except ImportError:
            return SiteResult(name=site.name, cloud="gcp", region=site.region, skipped=SKIP)
    try:
        return _check(site, clients)
    except PreflightError:
        raise
    except Exception as exc:  # noqa: BLE001 - google.api_core errors vary; one line either way
        raise PreflightError(f"gcp: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def _check(site: Site, clients: Clients) -> SiteResult:
    region = site.region
    specs = {p.name: instance("gcp", p.instance_type) for p in site.gpu_pools}
    accelerators = {s.accelerator for s in specs.values() if s.accelerator}
    zones = _zones_by_accelerator(clients, region, accelerators)
    regional = {q.metric: q for q in clients.regions.get(project=clients.project, region=region).quotas}
    project_quotas = {q.metric: q for q in clients.projects.get(project=clients.project).quotas}

    needed: dict[str, float] = defaultdict(float)
    users: dict[str, list[str]] = defaultdict(list)
    for pool in site.gpu_pools:
        spec = specs[pool.name]
        gpus = pool.nodes.max * spec.gpus
        for name in (metric(spec.accelerator or "", pool.spot), "GPUS_ALL_REGIONS"):
            needed[name] += gpus
            users[name].append(pool.name)
    quotas: dict[str, Quota] = {}
    for name, gpus in needed.items():
        source = project_quotas if name == "GPUS_ALL_REGIONS" else regional
        where = "global" if name == "GPUS_ALL_REGIONS" else region
        limit = float(source[name].limit) if name in source else 0.0
        quotas[name] = Quota(
            "gcp", where, name, name, "GPU", limit, gpus, tuple(users[name]), console_url(clients.project, name)
        )

    pools = []
    for pool in site.gpu_pools:
        spec = specs[pool.name]
        pool_zones = zones.get(spec.accelerator or "", [])
        problems = (
            []
            if pool_zones
            else [
                f"{spec.accelerator} ({pool.instance_type}) is not offered in any zone of {region}; pick another region"
            ]
        )
        lacking = [z for z in _configured_zones(site) if pool_zones and z not in pool_zones]
        if lacking:
            problems.append(
                f"gcp.gpuZones {', '.join(lacking)} lack {spec.accelerator}; use zones from {', '.join(pool_zones)}"
            )
        pools.append(
            PoolResult(
                name=pool.name,
                instance_type=pool.instance_type,
                spot=pool.spot,
                max_nodes=pool.nodes.max,
                zones=tuple(pool_zones),
                offered=bool(pool_zones),
                problems=tuple(problems),
                quotas=(quotas[metric(spec.accelerator or "", pool.spot)], quotas["GPUS_ALL_REGIONS"]),
            )
        )
    return SiteResult(name=site.name, cloud="gcp", region=region, pools=tuple(pools), account=clients.project)
