"""An Azure site: VNet, AKS, agent pools, Azure Managed Redis, ACR, budget -> Platform.

What the subscription needs before the first `pulumi up` (README, "First deploy on Azure"):
the resource providers in RESOURCE_PROVIDERS registered, the EncryptionAtHost feature, GPU
vCPU quota for each pool's VM family (spot pools: the regional Spot vCPU quota), and a
deployer that may create role assignments.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.consumption as consumption
import pulumi_azure_native.containerregistry as containerregistry
import pulumi_azure_native.containerservice as containerservice
import pulumi_azure_native.keyvault as keyvault
import pulumi_azure_native.managedidentity as managedidentity
import pulumi_azure_native.network as network
import pulumi_azure_native.privatedns as privatedns
import pulumi_azure_native.provider as azure_provider
import pulumi_azure_native.redisenterprise as redisenterprise
import pulumi_azure_native.resources as resources
import pulumi_kubernetes as k8s
import pulumi_random as random
import pulumiverse_time as pulumi_time
import yaml
from pulumi.runtime.mocks import MockMonitor

from infra.config import GpuPool, Site, StackConfig, azure_pool_name
from infra.platform import (
    GPU_TAINT_KEY,
    ClusterArgs,
    DockerHubLogin,
    ImageRegistry,
    NetworkArgs,
    NodeGroupArgs,
    NodePool,
    RedisArgs,
    RedisEndpoint,
    RegistryArgs,
    RegistryLogin,
    SiteArgs,
    SiteParts,
    StorageClasses,
    Taint,
    exec_kubeconfig,
)

# Resource providers the site's resources live in, for `az provider register` before the first deploy.
RESOURCE_PROVIDERS = (
    "Microsoft.ContainerService",
    "Microsoft.Compute",
    "Microsoft.Network",
    "Microsoft.ManagedIdentity",
    "Microsoft.Cache",
    "Microsoft.ContainerRegistry",
    "Microsoft.KeyVault",
    "Microsoft.Consumption",
)

# Azure Cache for Redis is retiring (Basic/Standard/Premium on 2028-09-30, new caches blocked
# from 2026-04-01 for new customers; Azure Advisor recommendation 2bb28cf0-969d-43a3-baf8-51328ac497fc,
# https://learn.microsoft.com/azure/azure-cache-for-redis/retirement-faq, read 2026-12-01), so the
# site runs Azure Managed Redis (Microsoft.Cache/redisEnterprise; azure-native's redisenterprise
# module defaults to API 2025-07-01, which has the Balanced SKUs and publicNetworkAccess).
# Balanced (4 GB per vCPU) because the gateway's Redis holds little (rate-limit buckets and API
# keys) but takes a call per request; each size has the same or more memory than the Azure Cache
# SKU it replaces (C1 1 GB -> B1 1 GB, C2 2.5 GB -> B3 3 GB, P1 6 GB -> B5 6 GB), which is
# Microsoft's sizing rule for the move (MicrosoftDocs/azure-docs:articles/redis/migrate/
# migrate-basic-standard-premium-understand.md, "Choose the right memory size", read 2026-12-01).
# replicas > 0 turns on high availability (a replicated second node, zone redundant where the
# region has zones); without it the cache is one node with no SLA, as Basic was.
REDIS_SKUS = {"small": "Balanced_B1", "medium": "Balanced_B3", "large": "Balanced_B5"}
# Managed Redis serves one database named "default" on port 10000, TLS or plaintext, never both
# (MicrosoftDocs/azure-docs:articles/redis/private-link.md and the 2025-07-01 RedisEnterpriseDatabasesCreate
# example in Azure/azure-rest-api-specs, read 2026-12-01).
REDIS_DATABASE = "default"
REDIS_PORT = 10000
# The gateway is a plain (non-cluster) redis-py client whose Lua script takes two keys that
# share one hash tag. EnterpriseCluster serves the whole cache on one endpoint through a proxy
# that routes each command, so non-cluster clients work; multi-key commands must stay in one
# slot, which the hash tag ensures. OSSCluster would need a cluster-aware client and NoCluster
# is preview and limited to 25 GB (MicrosoftDocs/azure-docs:articles/redis/architecture.md,
# "Cluster policies" and "Multi-key commands", read 2026-12-01).
REDIS_CLUSTERING_POLICY = "EnterpriseCluster"
# Private endpoint sub-resource and zone for Managed Redis; clients keep using the public
# name <cache>.<region>.redis.azure.net, which the zone resolves to the endpoint inside the VNet
# (MicrosoftDocs/azure-docs:articles/redis/private-link.md, read 2026-12-01).
REDIS_PRIVATE_LINK_GROUP = "redisEnterprise"
REDIS_PRIVATE_DNS_ZONE = "privatelink.redis.azure.net"
# AKS taints spot nodes itself; pods must tolerate it, so it is part of the pool's data.
SPOT_TAINT = Taint("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule")
# The AKS AAD server application every Entra-integrated cluster's tokens are issued for.
AKS_AAD_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"
# Built-in role definition ids (the same in every tenant;
# https://learn.microsoft.com/azure/role-based-access-control/built-in-roles, read 2026-12-01).
ROLE_NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
ROLE_ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"
ROLE_AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
# A new Azure RBAC for Kubernetes role assignment "can take up to five minutes to propagate and
# be updated by the authorization server"; until then the deployer's Kubernetes calls get 403
# (MicrosoftDocs/azure-aks-docs@fb060ab:articles/aks/entra-id-authorization.md, read 2026-12-01).
AKS_RBAC_PROPAGATION = "5m"
# Other role assignments (ACR push and pull, Key Vault) are read through Azure Resource Manager,
# where "it can take up to 10 minutes for changes to take effect"
# (MicrosoftDocs/azure-docs:articles/role-based-access-control/troubleshooting.md, read 2026-12-01).
ARM_RBAC_PROPAGATION = "10m"
# ACR's artifact cache pulls Docker Hub only with credentials: "Supports authenticated pulls
# only", and a Docker Hub cache rule cannot be created without a credential set whose secrets
# live in Key Vault (MicrosoftDocs/azure-management-docs:articles/container-registry/
# artifact-cache-overview.md and artifact-cache-cli.md, read 2026-12-01). The rule maps every
# Docker Hub repository under one prefix, as jenkins-infra runs it (jenkins-infra/azure:
# dockerhub-mirror.tf, source_repo "docker.io/*"), so <acr>/dockerhub/vllm/vllm-openai:<tag>
# is docker.io/vllm/vllm-openai:<tag>. Cache rules work on every ACR tier.
DOCKER_HUB_CACHE_PREFIX = "dockerhub"
# `docker login` with an ACR refresh token takes this user name
# (Azure/acr:docs/AAD-OAuth.md, "Authenticating docker with an ACR refresh token", read 2026-12-01).
ACR_REFRESH_TOKEN_USER = "00000000-0000-0000-0000-000000000000"
# Each pool's pods per node; AKS reserves kubelet memory per pod, and 110 keeps that
# reservation within what infra.platform.allocatable assumes.
MAX_PODS = 110
# Overlay pod and service ranges live outside the VNet; the first that does not overlap it.
_POD_CIDRS = ("10.244.0.0/16", "172.20.0.0/16", "192.168.0.0/16")
_SERVICE_CIDRS = ("172.16.0.0/16", "10.250.0.0/16", "192.168.0.0/20")

# ACR's cache cannot pull Docker Hub anonymously (DOCKER_HUB_CACHE_PREFIX), and without a cache
# every GPU node would pull Docker Hub anonymously through the NAT's one address.
DOCKER_HUB_LOGIN_REQUIRED = True


def _stack_site(site: Site) -> str:
    return f"{pulumi.get_stack()}-{site.name}"


def _outside(candidates: tuple[str, ...], *taken: str) -> ipaddress.IPv4Network:
    used = [ipaddress.ip_network(t) for t in taken]
    return next(
        ipaddress.ip_network(c) for c in candidates if not any(ipaddress.ip_network(c).overlaps(u) for u in used)
    )


def _role(subscription: pulumi.Output[str], role_id: str) -> pulumi.Output[str]:
    return subscription.apply(
        lambda s: f"/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
    )


class Network(pulumi.ComponentResource):
    """A resource group and VNet with a node subnet (egress through a NAT gateway, so
    nodes need no public addresses) and a subnet for private endpoints."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:azure:Network", name, None, opts)
        site, tags = args.site, args.tags
        child = pulumi.ResourceOptions(parent=self)
        net = ipaddress.ip_network(site.network_cidr)
        # Overlay networking gives pods addresses outside the VNet, so nodes get most of it.
        nodes, rest = net.subnets(prefixlen_diff=1)
        endpoints = next(rest.subnets(new_prefix=max(24, rest.prefixlen)))
        self.resource_group = resources.ResourceGroup(
            f"{name}-rg", resource_group_name=f"rg-llm-{_stack_site(site)}", location=site.region, tags=tags, opts=child
        )
        rg = self.resource_group.name
        self.vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=rg,
            virtual_network_name=f"vnet-llm-{_stack_site(site)}",
            location=site.region,
            address_space={"address_prefixes": [site.network_cidr]},
            tags=tags,
            # Subnets are their own resources below; the VNet must not fight over them.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )
        # Every node's egress, so the one address the API server must accept from nodes.
        self.nat_ip = network.PublicIPAddress(
            f"{name}-nat-ip",
            resource_group_name=rg,
            location=site.region,
            sku={"name": "Standard", "tier": "Regional"},
            public_ip_allocation_method="Static",
            public_ip_address_version="IPv4",
            tags=tags,
            opts=child,
        )
        self.nat = network.NatGateway(
            f"{name}-nat",
            resource_group_name=rg,
            location=site.region,
            sku={"name": "Standard"},
            public_ip_addresses=[{"id": self.nat_ip.id}],
            idle_timeout_in_minutes=10,
            tags=tags,
            opts=child,
        )
        self.nodes = network.Subnet(
            f"{name}-nodes",
            resource_group_name=rg,
            virtual_network_name=self.vnet.name,
            subnet_name="nodes",
            address_prefix=str(nodes),
            nat_gateway={"id": self.nat.id},
            default_outbound_access=False,
            opts=child,
        )
        self.endpoints = network.Subnet(
            f"{name}-endpoints",
            resource_group_name=rg,
            virtual_network_name=self.vnet.name,
            subnet_name="private-endpoints",
            address_prefix=str(endpoints),
            private_endpoint_network_policies="Enabled",
            default_outbound_access=False,
            # Azure updates one subnet of a VNet at a time.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.nodes]),
        )
        self.register_outputs({"vnet": self.vnet.id})


def _agent_pool(site: Site, pool: NodePool, subnet_id: pulumi.Input[str], disk_gb: int, tags: dict[str, str]) -> dict:
    """Settings every pool shares: autoscaled in the node subnet, encrypted at host, GPU
    drivers installed by AKS, our labels and taints."""
    profile = {
        "vm_size": pool.instance_type,
        "os_type": "Linux",
        "os_sku": "Ubuntu",
        "os_disk_size_gb": disk_gb,
        "os_disk_type": "Managed",
        "type": "VirtualMachineScaleSets",
        "mode": "User" if pool.instance else "System",
        "count": pool.min_nodes,
        "enable_auto_scaling": True,
        "min_count": pool.min_nodes,
        "max_count": pool.max_nodes,
        "max_pods": MAX_PODS,
        "vnet_subnet_id": subnet_id,
        "enable_node_public_ip": False,
        # Temp disks and caches encrypted too (needs the EncryptionAtHost feature on the subscription).
        "enable_encryption_at_host": True,
        "node_labels": dict(pool.labels),
        "node_taints": [f"{t.key}={t.value}:{t.effect}" for t in pool.taints],
        "tags": tags,
    }
    if pool.instance:
        profile["gpu_profile"] = {"driver": "Install"}
    if pool.spot:
        profile.update(
            scale_set_priority="Spot",
            scale_set_eviction_policy="Delete",
            # -1: pay up to the on-demand price, so capacity, not price, decides eviction.
            spot_max_price=-1,
        )
    else:
        profile["upgrade_settings"] = {"max_surge": "1" if pool.instance else "33%"}
    return profile


@dataclass(frozen=True)
class AksClusterArgs(ClusterArgs["Network"]):
    system_pool: NodePool  # AKS needs its system pool inline in the cluster


class Cluster(pulumi.ComponentResource):
    """AKS with a user-assigned control-plane identity, Entra ID sign-in with Azure RBAC
    and no local accounts, OIDC issuer and workload identity, Azure CNI overlay with
    Cilium network policy, and an API server that is private unless the config lists CIDRs."""

    def __init__(self, name: str, args: AksClusterArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:azure:Cluster", name, None, opts)
        site, net, system_pool, tags = args.site, args.network, args.system_pool, args.tags
        child = pulumi.ResourceOptions(parent=self)
        # Who runs the program, in which tenant and subscription.
        self.client = client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        self.cluster_name = f"aks-llm-{_stack_site(site)}"
        rg = net.resource_group.name
        subscription = client.subscription_id
        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_group_name=rg, location=site.region, tags=tags, opts=child
        )
        # The control plane attaches load balancers and NICs in our VNet, so it needs the
        # VNet before the cluster exists (a system-assigned identity would come too late).
        vnet_access = authorization.RoleAssignment(
            f"{name}-vnet-access",
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            role_definition_id=_role(subscription, ROLE_NETWORK_CONTRIBUTOR),
            scope=net.vnet.id,
            opts=child,
        )
        pods = _outside(_POD_CIDRS, site.network_cidr)
        services = _outside(_SERVICE_CIDRS, site.network_cidr, str(pods))
        private = not site.api_allowed_cidrs
        # AKS adds only its own API server address and a Standard load balancer's outbound
        # address to the authorized ranges; with a NAT gateway as the outbound type, the NAT's
        # address must be listed or kubelets cannot reach the API server
        # (MicrosoftDocs/azure-aks-docs@fb060ab:articles/aks/api-server-authorized-ip-ranges.md, read 2026-12-01).
        authorized = net.nat_ip.ip_address.apply(lambda ip: [*site.api_allowed_cidrs, f"{ip}/32"])
        admin_groups = list(site.azure.admin_group_object_ids) if site.azure else []
        self.cluster = containerservice.ManagedCluster(
            f"{name}-aks",
            resource_group_name=rg,
            resource_name_=self.cluster_name,
            location=site.region,
            dns_prefix=self.cluster_name,
            kubernetes_version=site.kubernetes_version,
            sku={"name": "Base", "tier": "Standard"},
            identity={"type": "UserAssigned", "user_assigned_identities": [identity.id]},
            node_resource_group=f"rg-llm-{_stack_site(site)}-nodes",
            enable_rbac=True,
            aad_profile={"managed": True, "enable_azure_rbac": True, "admin_group_object_ids": admin_groups},
            disable_local_accounts=True,
            oidc_issuer_profile={"enabled": True},
            security_profile={
                "workload_identity": {"enabled": True},
                "image_cleaner": {"enabled": True, "interval_hours": 168},
            },
            network_profile={
                "network_plugin": "azure",
                "network_plugin_mode": "overlay",
                "network_dataplane": "cilium",
                "network_policy": "cilium",
                "pod_cidr": str(pods),
                "service_cidr": str(services),
                "dns_service_ip": str(services.network_address + 10),
                "outbound_type": "userAssignedNATGateway",
                "load_balancer_sku": "standard",
            },
            api_server_access_profile=(
                {"enable_private_cluster": True}
                if private
                else {"enable_private_cluster": False, "authorized_ip_ranges": authorized}
            ),
            auto_upgrade_profile={"upgrade_channel": "patch", "node_os_upgrade_channel": "NodeImage"},
            # AKS cannot exist without a system pool, so it is declared inline.
            agent_pool_profiles=[
                {"name": "system", **_agent_pool(site, system_pool, net.nodes.id, site.system_pool.disk_gb, tags)}
            ],
            tags=tags,
            # The autoscaler owns the node counts once the cluster exists.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[vnet_access], ignore_changes=["agentPoolProfiles[0].count"]
            ),
        )
        # Whoever runs `pulumi up` deploys the workloads through Azure RBAC, not a local account.
        self.deployer_admin = authorization.RoleAssignment(
            f"{name}-deployer-admin",
            principal_id=client.object_id,
            principal_type=site.azure.deployer_principal_type if site.azure else "User",
            role_definition_id=_role(subscription, ROLE_AKS_RBAC_CLUSTER_ADMIN),
            scope=self.cluster.id,
            opts=child,
        )
        # The Kubernetes provider waits this out: its first calls would otherwise get 403.
        # Re-run whenever the assignment is replaced, which is when it propagates again.
        self.admin_propagated = pulumi_time.Sleep(
            f"{name}-deployer-admin-propagation",
            create_duration=AKS_RBAC_PROPAGATION,
            triggers={"roleAssignment": self.deployer_admin.id},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployer_admin]),
        )
        self.kubelet_object_id = self.cluster.identity_profile.apply(_kubelet_object_id)
        self.resource_group = rg
        self.kubeconfig = self._kubeconfig()
        # The Kubernetes API answers the deployer once its admin grant has propagated.
        self.api_ready: tuple[pulumi.Resource, ...] = (self.cluster, self.deployer_admin, self.admin_propagated)
        self.register_outputs({"name": self.cluster.name, "fqdn": self.cluster.fqdn})

    def _kubeconfig(self) -> pulumi.Output[str]:
        """A kubeconfig that signs in through kubelogin (Entra ID); only the server and CA come
        from AKS, which publishes its CA in no other cluster property."""
        creds = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=self.resource_group,
            resource_name=self.cluster.name,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        return pulumi.Output.secret(
            pulumi.Output.all(self.cluster.name, creds.kubeconfigs).apply(lambda a: _kubelogin_config(a[0], a[1]))
        )


def _kubelet_object_id(profile) -> str:
    kubelet = (profile or {})["kubeletidentity"]
    return kubelet["object_id"] if isinstance(kubelet, dict) else kubelet.object_id


def _kubelogin_config(name: str, kubeconfigs) -> str:
    first = kubeconfigs[0]
    value = first["value"] if isinstance(first, dict) else first.value
    cluster = yaml.safe_load(base64.b64decode(value))["clusters"][0]["cluster"]
    return exec_kubeconfig(
        name,
        cluster["server"],
        cluster["certificate-authority-data"],
        {
            "command": "kubelogin",
            # The Azure CLI's sign-in; CI overrides it with AAD_LOGIN_METHOD.
            "args": ["get-token", "--login", "azurecli", "--server-id", AKS_AAD_SERVER_APP],
            "installHint": "az aks install-cli (installs kubelogin)",
            "provideClusterInfo": False,
        },
    )


class NodeGroup(pulumi.ComponentResource):
    """An AKS user agent pool for one GPU pool."""

    def __init__(self, name: str, args: NodeGroupArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:azure:NodeGroup", name, None, opts)
        site, cluster, net, pool, disk_gb, tags = (
            args.site,
            args.cluster,
            args.network,
            args.pool,
            args.disk_gb,
            args.tags,
        )
        self.nodes = containerservice.AgentPool(
            f"{name}-pool",
            resource_group_name=cluster.resource_group,
            resource_name_=cluster.cluster.name,
            agent_pool_name=azure_pool_name(pool.name),
            **_agent_pool(site, pool, net.nodes.id, disk_gb, tags),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["count"]),
        )
        self.register_outputs({"name": self.nodes.name})


class Redis(pulumi.ComponentResource):
    """Azure Managed Redis reachable only through a private endpoint in the VNet: TLS 1.2+ only,
    public network access off, one non-clustered-looking endpoint for the gateway's plain client,
    signed in with the database's access key."""

    def __init__(self, name: str, args: RedisArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:azure:Redis", name, None, opts)
        site, net, tags = args.site, args.network, args.tags
        child = pulumi.ResourceOptions(parent=self)
        rg = net.resource_group.name
        self.cache = redisenterprise.RedisEnterprise(
            f"{name}-cache",
            resource_group_name=rg,
            # Cache names are DNS names: left to Pulumi's autonaming (random suffix).
            location=site.region,
            sku={"name": REDIS_SKUS[site.redis.size]},
            high_availability="Enabled" if site.redis.replicas else "Disabled",
            minimum_tls_version="1.2",
            public_network_access="Disabled",
            tags=tags,
            opts=child,
        )
        self.database = redisenterprise.Database(
            f"{name}-db",
            resource_group_name=rg,
            cluster_name=self.cache.name,
            database_name=REDIS_DATABASE,
            port=REDIS_PORT,
            client_protocol="Encrypted",
            clustering_policy=REDIS_CLUSTERING_POLICY,
            # New caches default to Microsoft Entra ID only; the gateway signs in with a key
            # (MicrosoftDocs/azure-docs:articles/redis/entra-for-authentication.md, read 2026-12-01).
            access_keys_authentication="Enabled",
            opts=child,
        )
        zone = privatedns.PrivateZone(
            f"{name}-dns",
            resource_group_name=rg,
            private_zone_name=REDIS_PRIVATE_DNS_ZONE,
            location="Global",
            tags=tags,
            opts=child,
        )
        privatedns.VirtualNetworkLink(
            f"{name}-dns-link",
            resource_group_name=rg,
            private_zone_name=zone.name,
            virtual_network={"id": net.vnet.id},
            registration_enabled=False,
            location="Global",
            tags=tags,
            opts=child,
        )
        self.endpoint = network.PrivateEndpoint(
            f"{name}-endpoint",
            resource_group_name=rg,
            location=site.region,
            subnet={"id": net.endpoints.id},
            private_link_service_connections=[
                {"name": "redis", "private_link_service_id": self.cache.id, "group_ids": [REDIS_PRIVATE_LINK_GROUP]}
            ],
            tags=tags,
            opts=child,
        )
        # The cache's public name resolves to the endpoint's address inside the VNet.
        network.PrivateDnsZoneGroup(
            f"{name}-dns-group",
            resource_group_name=rg,
            private_endpoint_name=self.endpoint.name,
            private_dns_zone_group_name="redis",
            private_dns_zone_configs=[{"name": "redis", "private_dns_zone_id": zone.id}],
            opts=child,
        )
        keys = redisenterprise.list_database_keys_output(
            cluster_name=self.cache.name,
            database_name=REDIS_DATABASE,
            resource_group_name=rg,
            # The keys exist once the database does.
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[self.database]),
        )
        self.endpoint = RedisEndpoint(
            host=self.cache.host_name, port=REDIS_PORT, tls=True, auth_token=pulumi.Output.secret(keys.primary_key)
        )
        self.register_outputs({"host": self.cache.host_name})


def _offline() -> bool:
    """True under `pulumi preview` and under the recording mocks: nothing is deployed, so no
    registry exists to answer."""
    return pulumi.runtime.is_dry_run() or isinstance(pulumi.runtime.settings.get_monitor(), MockMonitor)


def acr_refresh_token(login_server: str, tenant: str, aad_token: str) -> str:
    """An ACR refresh token for the identity behind `aad_token` (an Entra access token for Azure
    Resource Manager): ACR's documented exchange, what `az acr login` does. `docker login` takes
    it as the password of ACR_REFRESH_TOKEN_USER; it carries the identity's registry permissions
    as ARM reports them at exchange time (Azure/acr:docs/AAD-OAuth.md, "Calling POST
    /oauth2/exchange", read 2026-12-01)."""
    body = urllib.parse.urlencode(
        {"grant_type": "access_token", "service": login_server, "tenant": tenant, "access_token": aad_token}
    ).encode()
    request = urllib.request.Request(
        f"https://{login_server}/oauth2/exchange",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["refresh_token"]
    except urllib.error.HTTPError as exc:
        # RunError: the engine prints its message alone, without a traceback.
        raise pulumi.RunError(
            f"{login_server} refused to exchange the deployer's Entra token ({exc.code}); "
            "the deployer needs AcrPush on the registry, which this program grants and waits for"
        ) from None


class Registry(pulumi.ComponentResource):
    """An Azure Container Registry without an admin user: the program pushes what it builds with
    the deployer's own Entra identity (AcrPush), the kubelet identity pulls (AcrPull), and Docker
    Hub images come through the registry's artifact cache, so nodes never pull from Docker Hub
    themselves. The cache signs in to Docker Hub with credentials kept in a Key Vault, which the
    cache's credential set reads with its own identity."""

    def __init__(self, name: str, args: RegistryArgs[Cluster], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:azure:Registry", name, None, opts)
        site, cluster, docker_hub, tags = args.site, args.cluster, args.docker_hub, args.tags
        assert docker_hub is not None  # DOCKER_HUB_LOGIN_REQUIRED: the skeleton refuses a site without it
        client = cluster.client
        child = pulumi.ResourceOptions(parent=self)
        rg = cluster.resource_group
        # Registry and vault names are global, letters and digits only (vaults: 24 at most).
        suffix = random.RandomString(f"{name}-suffix", length=6, special=False, upper=False, opts=child)
        stem = "".join(ch for ch in f"llm{_stack_site(site)}" if ch.isalnum())
        self.registry = containerregistry.Registry(
            f"{name}-acr",
            resource_group_name=rg,
            registry_name=suffix.result.apply(lambda s: f"{stem[:40]}{s}"),
            location=site.region,
            sku={"name": "Standard"},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            tags=tags,
            opts=child,
        )
        pull = authorization.RoleAssignment(
            f"{name}-kubelet-pull",
            principal_id=cluster.kubelet_object_id,
            principal_type="ServicePrincipal",
            role_definition_id=_role(client.subscription_id, ROLE_ACR_PULL),
            scope=self.registry.id,
            opts=child,
        )
        push = authorization.RoleAssignment(
            f"{name}-deployer-push",
            principal_id=client.object_id,
            principal_type=site.azure.deployer_principal_type if site.azure else "User",
            role_definition_id=_role(client.subscription_id, ROLE_ACR_PUSH),
            scope=self.registry.id,
            opts=child,
        )
        cache_rule, secrets_grant = self._docker_hub_cache(name, site, rg, stem, suffix, client, docker_hub, tags)
        readers = [pull, secrets_grant]
        # Nodes pull, and the cache reads Key Vault, once their grants have reached ARM.
        pulls_allowed = pulumi_time.Sleep(
            f"{name}-pull-propagation",
            create_duration=ARM_RBAC_PROPAGATION,
            triggers={f"grant{i}": r.id for i, r in enumerate(readers)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=readers),
        )
        push_allowed = pulumi_time.Sleep(
            f"{name}-push-propagation",
            create_duration=ARM_RBAC_PROPAGATION,
            triggers={"grant": push.id},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[push]),
        )
        docker_hub_prefix = pulumi.Output.concat(self.registry.login_server, "/", DOCKER_HUB_CACHE_PREFIX)
        # Asked for after the push grant has propagated, and exchanged only when deploying.
        token = authorization.get_client_token_output(
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[push_allowed])
        )
        password = pulumi.Output.all(self.registry.login_server, client.tenant_id, token.token, push_allowed.id).apply(
            lambda a: "" if _offline() else acr_refresh_token(a[0], a[1], a[2])
        )
        self.images = ImageRegistry(
            own=self.registry.login_server,
            docker_hub=docker_hub_prefix,
            login=RegistryLogin(
                address=self.registry.login_server,
                username=pulumi.Output.from_input(ACR_REFRESH_TOKEN_USER),
                password=pulumi.Output.secret(password),
            ),
            ready=(self.registry, cache_rule, pulls_allowed),
        )
        self.register_outputs({"prefix": self.registry.login_server, "dockerHubPrefix": docker_hub_prefix})

    def _docker_hub_cache(
        self,
        name: str,
        site: Site,
        rg: pulumi.Input[str],
        stem: str,
        suffix: random.RandomString,
        client: pulumi.Output[authorization.GetClientConfigResult],
        login: DockerHubLogin,
        tags: dict[str, str],
    ) -> tuple[containerregistry.CacheRule, authorization.RoleAssignment]:
        """The Docker Hub cache rule and its credential set's grant on the Key Vault."""
        child = pulumi.ResourceOptions(parent=self)
        user, token = login.user, login.token
        vault = keyvault.Vault(
            f"{name}-kv",
            resource_group_name=rg,
            vault_name=suffix.result.apply(lambda s: f"{stem[:18]}{s}"),
            location=site.region,
            properties={
                "tenant_id": client.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enable_rbac_authorization": True,
            },
            tags=tags,
            opts=child,
        )
        # Written through ARM, which needs no data-plane role on the vault.
        secrets = {
            key: keyvault.Secret(
                f"{name}-docker-hub-{key}",
                resource_group_name=rg,
                vault_name=vault.name,
                secret_name=f"docker-hub-{key}",
                properties={"value": value},
                tags=tags,
                opts=child,
            )
            for key, value in (("user", pulumi.Output.from_input(user)), ("token", pulumi.Output.secret(token)))
        }
        credentials = containerregistry.CredentialSet(
            f"{name}-docker-hub-credentials",
            resource_group_name=rg,
            registry_name=self.registry.name,
            credential_set_name="docker-hub",
            login_server="docker.io",
            identity={"type": "SystemAssigned"},
            auth_credentials=[
                {
                    "name": "Credential1",
                    "username_secret_identifier": secrets["user"].properties.secret_uri,
                    "password_secret_identifier": secrets["token"].properties.secret_uri,
                }
            ],
            opts=child,
        )
        # Key Vault Secrets User is the least role with getSecret (artifact-cache-cli.md).
        grant = authorization.RoleAssignment(
            f"{name}-docker-hub-secrets",
            principal_id=credentials.identity.apply(lambda i: i.principal_id if i else ""),
            principal_type="ServicePrincipal",
            role_definition_id=_role(client.subscription_id, ROLE_KEY_VAULT_SECRETS_USER),
            scope=vault.id,
            opts=child,
        )
        rule = containerregistry.CacheRule(
            f"{name}-docker-hub",
            resource_group_name=rg,
            registry_name=self.registry.name,
            cache_rule_name="docker-hub",
            source_repository="docker.io/*",
            target_repository=f"{DOCKER_HUB_CACHE_PREFIX}/*",
            credential_set_resource_id=credentials.id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[grant]),
        )
        return rule, grant


PROVIDER_KEY = "azure-native"
# AKS installs the GPU driver (gpu_profile) but not NVIDIA's device plugin.
NEEDS_DEVICE_PLUGIN = True
# Both classes ship with AKS; premium Azure Files gives a shared cache the throughput
# to load weights, so replicas of a model download them once.
STORAGE = StorageClasses(rwo="managed-csi", rwx="azurefile-csi-premium")
GPU_DRIVER_HOST_DIR = None  # the AKS GPU node image's container runtime injects the driver


def provider(name: str, site: Site, tags: dict[str, str], opts: pulumi.ResourceOptions) -> azure_provider.Provider:
    # azure-native has no default tags: every resource here passes `tags` itself.
    subscription = site.azure.subscription_id if site.azure else None
    return azure_provider.Provider(name, location=site.region, subscription_id=subscription, opts=opts)


def gpu_taints(pool: GpuPool) -> tuple[Taint, ...]:
    return (Taint(GPU_TAINT_KEY, "true", "NoSchedule"),) + ((SPOT_TAINT,) if pool.spot else ())


def build_site(args: SiteArgs, opts: pulumi.ResourceOptions) -> SiteParts:
    site, tags = args.site, args.tags
    network = Network(f"{site.name}-net", NetworkArgs(site, tags), opts)
    cluster = Cluster(f"{site.name}-cluster", AksClusterArgs(site, tags, network, args.system_pool), opts)
    gpu_groups = tuple(
        NodeGroup(f"{site.name}-{pool.name}", NodeGroupArgs(site, tags, cluster, network, pool, disk_gb), opts)
        for pool, disk_gb in args.node_groups(with_system=False)
    )
    redis = Redis(f"{site.name}-redis", RedisArgs(site, tags, cluster, network), opts)
    registry = Registry(f"{site.name}-registry", RegistryArgs(site, tags, cluster, args.docker_hub), opts)
    return SiteParts(network, cluster, None, gpu_groups, redis, registry)


def lb_annotations(tags: dict[str, str]) -> dict[str, str]:
    # The load balancer's public IP carries the cost tags like everything else.
    return {"service.beta.kubernetes.io/azure-pip-tags": ",".join(f"{k}={v}" for k, v in tags.items())}


def build_addons(
    args: SiteArgs, parts: SiteParts, kubernetes: k8s.Provider, opts: pulumi.ResourceOptions
) -> tuple[pulumi.Resource, ...]:
    return ()  # AKS builds in what EKS needs add-ons for: autoscaling, load balancers, the CSI drivers


def _month_start() -> str:
    today = datetime.datetime.now(datetime.UTC)
    return f"{today:%Y-%m}-01T00:00:00Z"


def build_budget(cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions) -> consumption.Budget:
    """A monthly cost budget over this stack's tagged spend in the subscription, alerting on
    actual and forecast spend. Subscription scope with a `stack` tag filter rather than the
    site's resource group: AKS puts the VMs (most of the spend) in its own node resource
    group, which carries the cluster's tags but sits outside ours."""
    stack = pulumi.get_stack()
    budget_provider = provider("budget-azure", site, {}, opts)
    client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(provider=budget_provider))
    notifications = {
        f"{kind.lower()}-{pct:g}".replace(".", "-"): {
            "enabled": True,
            "operator": "GreaterThan",
            "threshold": pct,
            "threshold_type": kind,
            "contact_emails": list(cfg.budget.emails),
        }
        for kind, thresholds in (
            ("Actual", cfg.budget.actual_thresholds_pct),
            ("Forecasted", cfg.budget.forecast_thresholds_pct),
        )
        for pct in thresholds
    }
    return consumption.Budget(
        "budget-azure",
        budget_name=f"llm-platform-{stack}",
        scope=client.subscription_id.apply(lambda s: f"/subscriptions/{s}"),
        amount=round(amount, 2),
        category="Cost",
        time_grain="Monthly",
        time_period={"start_date": _month_start()},
        filter={"tags": {"name": "stack", "operator": "In", "values": [stack]}},
        notifications=notifications,
        # Azure keeps the start date; a later month's run must not try to move it.
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(provider=budget_provider, ignore_changes=["timePeriod"])
        ),
    )
