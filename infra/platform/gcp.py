"""A GCP site: VPC, GKE, node pools, Memorystore, Artifact Registry, budget -> Platform."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.config import Site, StackConfig
from infra.platform import (
    GPU_TAINT_KEY,
    ImageRegistry,
    NodePool,
    Platform,
    RedisEndpoint,
    RegistryLogin,
    StorageClasses,
    Taint,
    exec_kubeconfig,
    gpu_node_pool,
    resource_tags,
    system_node_pool,
)
from infra.secrets import Secrets

REDIS_MEMORY_GB = {"small": 1, "medium": 5, "large": 16}
# Memorystore serves TLS on 6378 once in-transit encryption is on.
REDIS_TLS_PORT = 6378
RELEASE_CHANNEL = "REGULAR"
# GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule itself; declaring the same
# taint keeps one taint per key and effect, and lets the scheduling checks see it.
GPU_TAINT_VALUE = "present"
_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}
# The one role Google recommends for a node service account: logs, metrics, and nothing else.
NODE_ROLES = ("roles/container.defaultNodeServiceAccount",)


def _stack_site(site: Site) -> str:
    return f"{pulumi.get_stack()}-{site.name}"


class Network(pulumi.ComponentResource):
    """A custom-mode VPC with one subnet for nodes and secondary ranges for pods and
    services (VPC-native GKE), Cloud NAT for private nodes, and a private services
    range peered with Google for Memorystore."""

    def __init__(self, name: str, site: Site, labels: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        net = ipaddress.ip_network(site.network_cidr)
        # Pods get half the space: every pod takes a VPC address from its node's /24.
        pods, rest = net.subnets(prefixlen_diff=1)
        nodes, services = rest.subnets(prefixlen_diff=1)
        self.pods_range, self.services_range = "pods", "services"

        self.vpc = gcp.compute.Network(
            f"{name}-vpc",
            name=f"llm-{_stack_site(site)}",
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=child,
        )
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-nodes",
            name=f"llm-{_stack_site(site)}-nodes",
            region=site.region,
            network=self.vpc.id,
            ip_cidr_range=str(nodes),
            secondary_ip_ranges=[
                {"range_name": self.pods_range, "ip_cidr_range": str(pods)},
                {"range_name": self.services_range, "ip_cidr_range": str(services)},
            ],
            # Private nodes reach Google APIs (Artifact Registry, logging) without NAT.
            private_ip_google_access=True,
            log_config={"aggregation_interval": "INTERVAL_5_MIN", "flow_sampling": 0.5, "metadata": "INCLUDE_ALL_METADATA"},
            opts=child,
        )
        router = gcp.compute.Router(f"{name}-router", region=site.region, network=self.vpc.id, opts=child)
        gcp.compute.RouterNat(
            f"{name}-nat",
            router=router.name,
            region=site.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
            opts=child,
        )
        # Private service access: Google allocates Memorystore's addresses from this range.
        self.services_address = gcp.compute.GlobalAddress(
            f"{name}-psa",
            purpose="VPC_PEERING",
            address_type="INTERNAL",
            prefix_length=20,
            network=self.vpc.id,
            labels=labels,
            opts=child,
        )
        self.services_peering = gcp.servicenetworking.Connection(
            f"{name}-psa",
            network=self.vpc.id,
            service="servicenetworking.googleapis.com",
            reserved_peering_ranges=[self.services_address.name],
            opts=child,
        )
        self.register_outputs({"network": self.vpc.id, "subnet": self.subnet.id})


class Cluster(pulumi.ComponentResource):
    """GKE with private nodes, an API endpoint that is private unless the config lists
    CIDRs allowed to reach it, Workload Identity, Shielded nodes, Dataplane V2 (network
    policy built in), secrets encrypted with our KMS key, and a node service account that
    may only write logs and metrics."""

    def __init__(
        self,
        name: str,
        site: Site,
        network: Network,
        project: pulumi.Output[gcp.organizations.GetProjectResult],
        labels: dict[str, str],
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:gcp:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.cluster_name = _stack_site(site)
        ring = gcp.kms.KeyRing(f"{name}-keys", name=f"llm-{self.cluster_name}", location=site.region, opts=child)
        self.key = gcp.kms.CryptoKey(
            f"{name}-secrets",
            name="gke",
            key_ring=ring.id,
            rotation_period=f"{90 * 24 * 3600}s",
            labels=labels,
            opts=child,
        )
        # GKE encrypts etcd secrets and Compute Engine encrypts node boot disks as their own
        # service agents, so each needs the key.
        agent_grants = [
            gcp.kms.CryptoKeyIAMMember(
                f"{name}-{agent}-key",
                crypto_key_id=self.key.id,
                role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
                member=project.number.apply(lambda n, a=domain: f"serviceAccount:service-{n}@{a}"),
                opts=child,
            )
            for agent, domain in (
                ("gke", "container-engine-robot.iam.gserviceaccount.com"),
                ("compute", "compute-system.iam.gserviceaccount.com"),
            )
        ]
        self.node_account = gcp.serviceaccount.Account(
            f"{name}-nodes",
            account_id=f"llm-{self.cluster_name}"[:24] + "-nodes",
            display_name=f"GKE nodes of {self.cluster_name}",
            opts=child,
        )
        self.node_roles = [
            gcp.projects.IAMMember(
                f"{name}-nodes-{role.rsplit('.', 1)[-1]}",
                project=project.project_id,
                role=role,
                member=self.node_account.member,
                opts=child,
            )
            for role in NODE_ROLES
        ]
        private_endpoint = not site.api_allowed_cidrs
        self.cluster = gcp.container.Cluster(
            f"{name}-gke",
            name=self.cluster_name,
            location=site.region,
            min_master_version=site.kubernetes_version,
            release_channel={"channel": RELEASE_CHANNEL},
            network=network.vpc.id,
            subnetwork=network.subnet.id,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy={
                "cluster_secondary_range_name": network.pods_range,
                "services_secondary_range_name": network.services_range,
            },
            private_cluster_config={
                "enable_private_nodes": True,
                "enable_private_endpoint": private_endpoint,
                "master_global_access_config": {"enabled": False},
            },
            master_authorized_networks_config={
                "cidr_blocks": [{"cidr_block": c, "display_name": f"allowed-{i}"} for i, c in enumerate(site.api_allowed_cidrs)],
                "gcp_public_cidrs_access_enabled": False,
            },
            master_auth={"client_certificate_config": {"issue_client_certificate": False}},
            workload_identity_config={"workload_pool": project.project_id.apply(lambda p: f"{p}.svc.id.goog")},
            enable_shielded_nodes=True,
            # Dataplane V2 enforces NetworkPolicy itself; the Calico add-on must stay off.
            datapath_provider="ADVANCED_DATAPATH",
            database_encryption={"state": "ENCRYPTED", "key_name": self.key.id},
            logging_config={"enable_components": ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "WORKLOADS"]},
            monitoring_config={
                "enable_components": ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER"],
                "managed_prometheus": {"enabled": False},
            },
            addons_config={
                "http_load_balancing": {"disabled": False},
                "horizontal_pod_autoscaling": {"disabled": False},
                "gce_persistent_disk_csi_driver_config": {"enabled": True},
            },
            cluster_autoscaling={"autoscaling_profile": "OPTIMIZE_UTILIZATION"},
            cost_management_config={"enabled": True},
            security_posture_config={"mode": "BASIC", "vulnerability_mode": "VULNERABILITY_BASIC"},
            maintenance_policy={"daily_maintenance_window": {"start_time": "03:00"}},
            # GKE cannot start without a node pool; it is replaced by ours at once, but
            # even its few minutes run with our service account and hardening.
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config=_node_config(self, "e2-small", 20, {}, {}, (), labels, None),
            resource_labels=labels,
            deletion_protection=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*agent_grants, *self.node_roles]),
        )
        self.register_outputs({"name": self.cluster.name, "endpoint": self.cluster.endpoint})

    def kubeconfig(self) -> pulumi.Output[str]:
        c = self.cluster
        return pulumi.Output.secret(
            pulumi.Output.all(c.name, c.endpoint, c.master_auth.cluster_ca_certificate).apply(
                lambda a: exec_kubeconfig(
                    a[0],
                    f"https://{a[1]}",
                    a[2],
                    {
                        "command": "gke-gcloud-auth-plugin",
                        "installHint": "gcloud components install gke-gcloud-auth-plugin",
                        "provideClusterInfo": True,
                    },
                )
            )
        )


def _node_config(
    cluster: Cluster,
    machine_type: str,
    disk_gb: int,
    k8s_labels: dict[str, str],
    accelerator: dict | None,
    taints: tuple[Taint, ...],
    labels: dict[str, str],
    spot: bool | None,
) -> dict:
    """Node settings every pool shares: our service account, the GKE metadata server
    (pods cannot read the node's credentials), Shielded VMs, a CMEK-encrypted boot disk."""
    config = {
        "machine_type": machine_type,
        "disk_size_gb": disk_gb,
        "disk_type": "pd-balanced",
        "image_type": "COS_CONTAINERD",
        "boot_disk_kms_key": cluster.key.id,
        "service_account": cluster.node_account.email,
        # Access is governed by the service account's IAM roles, not by legacy scopes.
        "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        "workload_metadata_config": {"mode": "GKE_METADATA"},
        "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
        "metadata": {"disable-legacy-endpoints": "true"},
        "labels": k8s_labels,
        "resource_labels": labels,
        "taints": [{"key": t.key, "value": t.value, "effect": _EFFECT[t.effect]} for t in taints],
    }
    if accelerator:
        config["guest_accelerators"] = [accelerator]
    if spot is not None:
        config["spot"] = spot
    return config


class NodeGroup(pulumi.ComponentResource):
    """A GKE node pool autoscaled between the pool's total min and max over the region's
    zones, auto-repaired and auto-upgraded; GPU pools get their accelerators with the
    driver installed by GKE."""

    def __init__(
        self,
        name: str,
        site: Site,
        cluster: Cluster,
        pool: NodePool,
        disk_gb: int,
        labels: dict[str, str],
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:gcp:NodeGroup", name, None, opts)
        accelerator = None
        if pool.instance:
            accelerator = {
                "type": pool.instance.accelerator,
                "count": pool.instance.gpus,
                "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"},
            }
        zones = site.gcp.gpu_zones if pool.instance and site.gcp and site.gcp.gpu_zones else None
        self.node_pool = gcp.container.NodePool(
            f"{name}-np",
            name=pool.name,
            cluster=cluster.cluster.id,
            location=site.region,
            node_locations=zones,
            initial_node_count=1 if pool.min_nodes else 0,
            autoscaling={
                "total_min_node_count": pool.min_nodes,
                "total_max_node_count": pool.max_nodes,
                # Spot and GPU capacity is where it is: let the autoscaler use any zone.
                "location_policy": "ANY" if pool.instance else "BALANCED",
            },
            management={"auto_repair": True, "auto_upgrade": True},
            # GPU nodes are scarce: replace one at a time instead of surging a spare.
            upgrade_settings={"max_surge": 0 if pool.instance else 1, "max_unavailable": 1 if pool.instance else 0},
            node_config=_node_config(
                cluster, pool.instance_type, disk_gb, dict(pool.labels), accelerator, pool.taints, labels, pool.spot
            ),
            # The autoscaler owns the size once the pool exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["initialNodeCount"]),
        )
        self.register_outputs({"name": self.node_pool.name})


class Redis(pulumi.ComponentResource):
    """Memorystore for Redis on private service access: AUTH on, TLS with the instance's
    own CA, no public address, standard tier (a replica in another zone) when replicas are asked for."""

    def __init__(self, name: str, site: Site, network: Network, labels: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Redis", name, None, opts)
        self.instance = gcp.redis.Instance(
            f"{name}-memorystore",
            name=f"llm-{_stack_site(site)}",
            display_name=f"llm-platform gateway limits for {site.name}",
            region=site.region,
            tier="STANDARD_HA" if site.redis.replicas else "BASIC",
            memory_size_gb=REDIS_MEMORY_GB[site.redis.size],
            redis_version="REDIS_7_2",
            authorized_network=network.vpc.id,
            connect_mode="PRIVATE_SERVICE_ACCESS",
            reserved_ip_range=network.services_address.name,
            auth_enabled=True,
            transit_encryption_mode="SERVER_AUTHENTICATION",
            maintenance_policy={
                "weekly_maintenance_windows": [{"day": "SUNDAY", "start_time": {"hours": 3, "minutes": 0}}]
            },
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[network.services_peering]),
        )
        self.auth = pulumi.Output.secret(self.instance.auth_string)
        self.ca_cert = self.instance.server_ca_certs.apply(lambda certs: certs[0].cert if certs else "")
        self.register_outputs({"host": self.instance.host})


class Registry(pulumi.ComponentResource):
    """An Artifact Registry Docker repository with immutable tags, the newest 50 versions
    kept, and pull access for the node service account only."""

    def __init__(self, name: str, site: Site, cluster: Cluster, labels: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository = gcp.artifactregistry.Repository(
            f"{name}-docker",
            repository_id=f"llm-platform-{_stack_site(site)}",
            location=site.region,
            format="DOCKER",
            description=f"llm-platform images for {site.name}",
            docker_config={"immutable_tags": True},
            cleanup_policies=[
                {"id": "keep-newest-50", "action": "KEEP", "most_recent_versions": {"keep_count": 50}},
                {"id": "delete-older", "action": "DELETE", "condition": {"tag_state": "ANY", "older_than": "2592000s"}},
            ],
            labels=labels,
            opts=child,
        )
        gcp.artifactregistry.RepositoryIamMember(
            f"{name}-node-pull",
            repository=self.repository.name,
            location=site.region,
            role="roles/artifactregistry.reader",
            member=cluster.node_account.member,
            opts=child,
        )
        self.prefix = pulumi.Output.format(
            "{0}-docker.pkg.dev/{1}/{2}", site.region, self.repository.project, self.repository.repository_id
        )
        self.register_outputs({"prefix": self.prefix})


def _provider(name: str, site: Site, labels: dict[str, str], opts: pulumi.ResourceOptions) -> gcp.Provider:
    assert site.gcp is not None  # config validation requires the block on gcp sites
    return gcp.Provider(
        name,
        project=site.gcp.project,
        region=site.region,
        default_labels=labels,
        # Budgets and other billing calls need a quota project when run with user credentials.
        billing_project=site.gcp.project,
        user_project_override=True,
        opts=opts,
    )


def build(cfg: StackConfig, site: Site, secrets: Secrets, opts: pulumi.ResourceOptions) -> Platform:
    labels = resource_tags(cfg, site)
    site_component = pulumi.ComponentResource("llm-platform:gcp:Site", site.name, None, opts)
    provider = _provider(f"{site.name}-gcp", site, labels, pulumi.ResourceOptions(parent=site_component))
    child = pulumi.ResourceOptions(parent=site_component, providers={"gcp": provider})
    project = gcp.organizations.get_project_output(opts=pulumi.InvokeOutputOptions(provider=provider))

    network = Network(f"{site.name}-net", site, labels, child)
    cluster = Cluster(f"{site.name}-cluster", site, network, project, labels, child)
    system_pool = system_node_pool(site)
    system = NodeGroup(f"{site.name}-system", site, cluster, system_pool, site.system_pool.disk_gb, labels, child)
    gpu_pools = tuple(gpu_node_pool(site, p, (Taint(GPU_TAINT_KEY, GPU_TAINT_VALUE, "NoSchedule"),)) for p in site.gpu_pools)
    groups = [
        NodeGroup(f"{site.name}-{pool.name}", site, cluster, pool, spec.disk_gb, labels, child)
        for pool, spec in zip(gpu_pools, site.gpu_pools)
    ]
    kubeconfig = cluster.kubeconfig()
    k8s_provider = k8s.Provider(
        f"{site.name}-k8s",
        kubeconfig=kubeconfig,
        opts=pulumi.ResourceOptions(parent=site_component, depends_on=[system.node_pool]),
    )
    redis = Redis(f"{site.name}-redis", site, network, labels, child)
    registry = Registry(f"{site.name}-registry", site, cluster, labels, child)
    site_component.register_outputs({"cluster": cluster.cluster.name})

    return Platform(
        site=site,
        provider=k8s_provider,
        cluster_name=cluster.cluster.name,
        kubeconfig=kubeconfig,
        system_pool=system_pool,
        gpu_pools=gpu_pools,
        redis=RedisEndpoint(
            host=redis.instance.host, port=REDIS_TLS_PORT, tls=True, auth_token=redis.auth, ca_cert=redis.ca_cert
        ),
        # A backend-service-based external passthrough load balancer (GKE's current default
        # for new Services), which keeps client source addresses with externalTrafficPolicy Local.
        lb_annotations={"cloud.google.com/l4-rbs": "enabled"},
        # GKE ships both classes; pd-balanced (standard-rwo) works on every GPU machine series.
        storage=StorageClasses(rwo="standard-rwo", rwx=None),
        # Placeholder until the site's pull-through cache and push login are built.
        images=ImageRegistry(
            own=registry.prefix,
            docker_hub=pulumi.Output.from_input("docker.io"),
            login=RegistryLogin(registry.prefix, pulumi.Output.from_input(""), pulumi.Output.secret("")),
        ),
        # GKE installs the driver (gpu_driver_installation_config) and runs its own device plugin.
        needs_device_plugin=False,
        ready=(*(g.node_pool for g in groups),),
    )


def build_budget(cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions) -> gcp.billing.Budget:
    """A monthly budget on the billing account over this stack's spend in the site's project
    (filtered on the `stack` label), alerting on actual and forecast spend."""
    assert site.gcp is not None
    stack = pulumi.get_stack()
    labels = resource_tags(cfg, None)
    provider = _provider("budget-gcp", site, labels, opts)
    child = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider))
    project = gcp.organizations.get_project_output(opts=pulumi.InvokeOutputOptions(provider=provider))
    # Budgets mail billing admins by default; the config's addresses need channels of their own.
    channels = [
        gcp.monitoring.NotificationChannel(
            f"budget-gcp-{i}",
            display_name=f"llm-platform {stack} budget: {email}",
            type="email",
            labels={"email_address": email},
            user_labels=labels,
            opts=child,
        )
        for i, email in enumerate(cfg.budget.emails)
    ]
    rules = [{"threshold_percent": pct / 100, "spend_basis": "CURRENT_SPEND"} for pct in cfg.budget.actual_thresholds_pct]
    rules += [
        {"threshold_percent": pct / 100, "spend_basis": "FORECASTED_SPEND"} for pct in cfg.budget.forecast_thresholds_pct
    ]
    return gcp.billing.Budget(
        "budget-gcp",
        billing_account=site.gcp.billing_account,
        display_name=f"llm-platform-{stack}",
        amount={"specified_amount": {"currency_code": cfg.budget.currency, "units": str(int(round(amount)))}},
        budget_filter={
            "projects": [project.number.apply(lambda n: f"projects/{n}")],
            # Counts only this stack's spend; provider default labels put `stack` on everything.
            "labels": {"stack": stack},
            "calendar_period": "MONTH",
        },
        threshold_rules=rules,
        all_updates_rule={"monitoring_notification_channels": [c.id for c in channels], "disable_default_iam_recipients": False},
        opts=child,
    )
