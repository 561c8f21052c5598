"""Azure: whether each pool's VM size is available to the subscription in the region (and in
which zones), and the regional vCPU quotas it draws on: the VM family's quota and "Total
Regional vCPUs" for on-demand pools, "Total Regional Low-priority vCPUs" for Spot pools.

Needs `azure-mgmt-compute` and `azure-identity` (not dependencies of this project); without
them each Azure site is reported as skipped with what to install.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from infra.catalog import instance
from infra.config import Site
from infra.preflight.report import PoolResult, PreflightError, Quota, SiteResult

SKIP = "install azure-mgmt-compute and azure-identity to check Azure offerings and quotas"
CONSOLE = "https://portal.azure.com/#view/Microsoft_Azure_Capacity/QuotaMenuBlade/~/myQuotas"
TOTAL = "cores"
SPOT = "lowPriorityCores"


def default_client(subscription: str | None = None) -> tuple[Any, str]:
    try:
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.compute import ComputeManagementClient
    except ImportError:
        raise ImportError(SKIP) from None
    subscription = subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription:
        raise PreflightError("azure: no subscription; set the site's azure.subscriptionId or AZURE_SUBSCRIPTION_ID")
    return ComputeManagementClient(DefaultAzureCredential(), subscription), subscription


def check_site(site: Site, client: Any = None, subscription: str | None = None) -> SiteResult:
    if client is None:
        try:
            client, subscription = default_client(getattr(getattr(site, "azure", None), "subscription_id", None))
        except ImportError:
            return SiteResult(name=site.name, cloud="azure", region=site.region, skipped=SKIP)
    try:
        return _check(site, client, subscription)
    except PreflightError:
        raise
    except Exception as exc:  # noqa: BLE001 - azure.core and azure.identity errors vary; one line either way
        name = type(exc).__name__
        if name in {"ClientAuthenticationError", "CredentialUnavailableError"}:
            raise PreflightError(
                "azure: no usable credentials; run `az login` or set AZURE_CLIENT_ID/AZURE_TENANT_ID"
            ) from None
        raise PreflightError(f"azure: {name}: {exc}".splitlines()[0]) from None


def _sku_restricted(sku: Any) -> bool:
    return any(
        getattr(r, "reason_code", None) == "NotAvailableForSubscription" and getattr(r, "type", None) == "Location"
        for r in getattr(sku, "restrictions", None) or ()
    )


def _check(site: Site, client: Any, subscription: str | None) -> SiteResult:
    region = site.region
    wanted = {p.instance_type for p in site.gpu_pools}
    skus: dict[str, Any] = {}
    for sku in client.resource_skus.list(filter=f"location eq '{region}'"):
        if getattr(sku, "resource_type", None) == "virtualMachines" and sku.name in wanted:
            skus[sku.name] = sku
    usages = {u.name.value: u for u in client.usage.list(region)}

    needed: dict[str, float] = defaultdict(float)
    users: dict[str, list[str]] = defaultdict(list)
    families: dict[str, str] = {}
    for pool in site.gpu_pools:
        sku = skus.get(pool.instance_type)
        vcpus = pool.nodes.max * instance("azure", pool.instance_type).vcpu
        names = [SPOT] if pool.spot else [TOTAL] + ([sku.family] if sku is not None and sku.family else [])
        families[pool.name] = names[-1]
        for name in names:
            needed[name] += vcpus
            users[name].append(pool.name)
    quotas: dict[str, Quota] = {}
    for name, vcpus in needed.items():
        usage = usages.get(name)
        shown = usage.name.localized_value if usage is not None else name
        limit = float(usage.limit) if usage is not None else 0.0
        quotas[name] = Quota("azure", region, name, shown, "vCPU", limit, vcpus, tuple(users[name]), CONSOLE)

    pools = []
    for pool in site.gpu_pools:
        sku = skus.get(pool.instance_type)
        offered = sku is not None and not _sku_restricted(sku)
        zones: tuple[str, ...] = ()
        if sku is not None:
            info = next(
                (i for i in getattr(sku, "location_info", None) or () if (i.location or "").lower() == region), None
            )
            zones = tuple(sorted(f"{region}-{z}" for z in (getattr(info, "zones", None) or ())))
        problems = (
            []
            if offered
            else [
                f"{pool.instance_type} is not available to this subscription in {region}; "
                "pick another region or ask support to enable it"
            ]
        )
        names = [SPOT] if pool.spot else [TOTAL] + ([families[pool.name]] if families[pool.name] != TOTAL else [])
        pools.append(
            PoolResult(
                name=pool.name,
                instance_type=pool.instance_type,
                spot=pool.spot,
                max_nodes=pool.nodes.max,
                zones=zones,
                offered=offered,
                problems=tuple(problems),
                quotas=tuple(quotas[n] for n in names),
            )
        )
    return SiteResult(name=site.name, cloud="azure", region=region, pools=tuple(pools), account=subscription)
