"""The program: config -> a platform per site -> workloads on it -> stack outputs."""

from __future__ import annotations

import pulumi

from infra import config as stack_config
from infra.platform import build_budget, build_platform, check_clouds
from infra.secrets import from_pulumi as read_secrets
from infra.workloads import deploy


def run() -> None:
    cfg = stack_config.from_pulumi()
    secrets = read_secrets()
    check_clouds(cfg, secrets)
    for cloud, amount in cfg.budget_by_cloud().items():
        first_site = next(s for s in cfg.sites if s.cloud == cloud)
        build_budget(cfg, amount, first_site)

    sites = {}
    for site in cfg.sites:
        platform = build_platform(cfg, site, secrets)
        workloads = deploy(cfg, platform, secrets)
        sites[site.name] = {
            "cloud": site.cloud,
            "region": site.region,
            "clusterName": platform.cluster_name,
            "gatewayUrl": workloads.gateway_url,
            "redisEndpoint": pulumi.Output.format("{0}:{1}", platform.redis.host, platform.redis.port),
        }
        pulumi.export(f"{site.name}.kubeconfig", platform.kubeconfig)
    pulumi.export("sites", sites)
    first = cfg.sites[0].name
    pulumi.export("gatewayUrl", sites[first]["gatewayUrl"])
    pulumi.export("clusterName", sites[first]["clusterName"])
    pulumi.export("redisEndpoint", sites[first]["redisEndpoint"])
