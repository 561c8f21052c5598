"""A GCP site: VPC, GKE, node pools, Memorystore, Artifact Registry, budget -> Platform.

APIs the project needs enabled before the first `pulumi up` (GKE_APIS): a missing one fails
the first resource that uses it, after everything before it was created.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.config import ConfigError, GpuPool, Site, StackConfig
from infra.platform import (
    GPU_TAINT_KEY,
    ClusterArgs,
    ImageRegistry,
    NetworkArgs,
    NodeGroupArgs,
    RedisArgs,
    RedisEndpoint,
    RegistryArgs,
    RegistryLogin,
    SiteArgs,
    SiteParts,
    StorageClasses,
    Taint,
    exec_kubeconfig,
    resource_tags,
)

# Artifact Registry's Docker Hub remote repository pulls anonymously unless given credentials
# (cloud.google.com/artifact-registry/docs/docker/configure-remote-auth-docker-hub, read 2026-12-01).
DOCKER_HUB_LOGIN_REQUIRED = False
REDIS_MEMORY_GB = {"small": 1, "medium": 5, "large": 16}
# Memorystore serves TLS on 6378 once in-transit encryption is on.
REDIS_TLS_PORT = 6378
RELEASE_CHANNEL = "REGULAR"
# Every API the site's resources call, for `gcloud services enable` before the first deploy.
GKE_APIS = (
    "compute.googleapis.com",
    "container.googleapis.com",
    "cloudkms.googleapis.com",
    "iam.googleapis.com",
    "servicenetworking.googleapis.com",
    "redis.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "monitoring.googleapis.com",
    "logging.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
)
# Where GKE's driver installer puts the NVIDIA driver on the host (COS and Ubuntu nodes).
# GKE's runtime mounts it only into containers that request a GPU, so node agents that do
# not (the DCGM exporter) must mount it themselves, as Google's own DCGM manifest does
# (GoogleCloudPlatform/prometheus-engine@2ffde4e:examples/nvidia-dcgm/exporter.yaml, read 2026-12-01).
GKE_DRIVER_DIR = "/home/kubernetes/bin/nvidia"
# Workload vulnerability scanning can no longer be enabled on GKE Standard: VULNERABILITY_BASIC
# is "no longer supported" and VULNERABILITY_ENTERPRISE needs GKE Enterprise; BASIC keeps the
# workload configuration audit (https://cloud.google.com/kubernetes-engine/docs/deprecations/vulnerability-scanning-gkee,
# and SecurityPostureConfig.VulnerabilityMode in the GKE v1 API reference, read 2026-12-01).
SECURITY_POSTURE = {"mode": "BASIC", "vulnerability_mode": "VULNERABILITY_DISABLED"}
# The cluster's node_config and initial_node_count describe only the default pool, which is
# deleted as soon as the cluster exists; GKE then reports the first remaining pool's config
# there ("For responses, this field will be populated with the node configuration of the
# first node pool", GKE v1 API, Cluster.nodeConfig), so any later diff on them would replace
# the cluster. terraform-google-kubernetes-engine ignores them the same way
# (v44.2.0:cluster.tf, ignore_changes = [node_pool, initial_node_count], read 2026-12-01).
DEFAULT_POOL_INPUTS = ("nodeConfig", "initialNodeCount")
# The user name Artifact Registry's access-token login takes, at <region>-docker.pkg.dev
# (https://cloud.google.com/artifact-registry/docs/docker/authentication, read 2026-12-01).
REGISTRY_USER = "oauth2accesstoken"
# GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule itself; declaring the same
# taint keeps one taint per key and effect, and lets the scheduling checks see it.
GPU_TAINT_VALUE = "present"
# The one role Google recommends for a node service account: logs, metrics, and nothing else.
NODE_ROLES = ("roles/container.defaultNodeServiceAccount",)


def _stack_site(site: Site) -> str:
    return f"{pulumi.get_stack()}-{site.name}"


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor.split("-")[0])


def channel_version(minor: str, channel: str, offered: gcp.container.GetEngineVersionsResult, where: str) -> str:
    """The configured minor as the cluster's version, once the channel offers it here.

    Asked for by minor, GKE picks the channel's current patch and keeps upgrading it, so the
    input never drifts from what runs. A minor the channel does not offer fails here, at
    preview, instead of after the network, keys and accounts are created. `offered` is read
    with version_prefix "<minor>.": its release_channel_latest_version holds a channel only
    where that channel has a version of the minor (hashicorp/terraform-provider-google,
    google/services/container/data_source_google_container_engine_versions.go, read 2026-12-01).
    """
    in_channel = (offered.release_channel_latest_version or {}).get(channel)
    if in_channel and in_channel.startswith(f"{minor}."):
        return minor
    default = (offered.release_channel_default_version or {}).get(channel, "unknown")
    newer = _minor(minor) > _minor(default) if default != "unknown" else False
    hint = "it has not reached the channel yet" if newer else "the channel no longer offers it"
    raise ConfigError(
        where,
        f"GKE's {channel} channel has no {minor} version in this location ({hint}; the channel's "
        f"default is {default}); set a minor the channel offers (gcloud container get-server-config)",
    )


class Network(pulumi.ComponentResource):
    """A custom-mode VPC with one subnet for nodes and secondary ranges for pods and
    services (VPC-native GKE), Cloud NAT for private nodes, and a private services
    range peered with Google for Memorystore."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Network", name, None, opts)
        site, labels = args.site, args.tags
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
            log_config={
                "aggregation_interval": "INTERVAL_5_MIN",
                "flow_sampling": 0.5,
                "metadata": "INCLUDE_ALL_METADATA",
            },
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


@dataclass(frozen=True)
class GkeClusterArgs(ClusterArgs["Network"]):
    site_index: int  # where in the config a refused Kubernetes version points


class Cluster(pulumi.ComponentResource):
    """GKE with private nodes, an API endpoint that is private unless the config lists
    CIDRs allowed to reach it, Workload Identity, Shielded nodes, Dataplane V2 (network
    policy built in), secrets encrypted with our KMS key, and a node service account that
    may only write logs and metrics."""

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Cluster", name, None, opts)
        site, site_index, network, labels = args.site, args.site_index, args.network, args.tags
        child = pulumi.ResourceOptions(parent=self)
        project = gcp.organizations.get_project_output(opts=pulumi.InvokeOutputOptions(parent=self))
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
        offered = gcp.container.get_engine_versions_output(
            location=site.region,
            version_prefix=f"{site.kubernetes_version}.",
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        where = f"sites[{site_index}].kubernetesVersion"
        self.cluster = gcp.container.Cluster(
            f"{name}-gke",
            name=self.cluster_name,
            location=site.region,
            min_master_version=offered.apply(
                lambda o: channel_version(site.kubernetes_version, RELEASE_CHANNEL, o, where)
            ),
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
                "cidr_blocks": [
                    {"cidr_block": c, "display_name": f"allowed-{i}"} for i, c in enumerate(site.api_allowed_cidrs)
                ],
                "gcp_public_cidrs_access_enabled": False,
            },
            master_auth={"client_certificate_config": {"issue_client_certificate": False}},
            workload_identity_config={"workload_pool": project.project_id.apply(lambda p: f"{p}.svc.id.goog")},
            enable_shielded_nodes=True,
            # Dataplane V2 enforces NetworkPolicy itself; the Calico add-on must stay off.
            datapath_provider="ADVANCED_DATAPATH",
            database_encryption={"state": "ENCRYPTED", "key_name": self.key.id},
            logging_config={
                "enable_components": ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "WORKLOADS"]
            },
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
            security_posture_config=SECURITY_POSTURE,
            maintenance_policy={"daily_maintenance_window": {"start_time": "03:00"}},
            # GKE cannot start without a node pool; it is replaced by ours at once, but
            # even its few minutes run with our service account and hardening.
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config=_node_config(self, "e2-small", 20, {}, {}, (), labels, None),
            resource_labels=labels,
            deletion_protection=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*agent_grants, *self.node_roles],
                ignore_changes=list(DEFAULT_POOL_INPUTS),
            ),
        )
        self.kubeconfig = self._kubeconfig()
        self.api_ready: tuple[pulumi.Resource, ...] = ()
        self.register_outputs({"name": self.cluster.name, "endpoint": self.cluster.endpoint})

    def _kubeconfig(self) -> pulumi.Output[str]:
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
        "taints": [{"key": t.key, "value": t.value, "effect": t.api_effect} for t in taints],
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

    def __init__(self, name: str, args: NodeGroupArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:NodeGroup", name, None, opts)
        site, cluster, pool, disk_gb, labels = args.site, args.cluster, args.pool, args.disk_gb, args.tags
        accelerator = None
        if pool.instance:
            accelerator = {
                "type": pool.instance.accelerator,
                "count": pool.instance.gpus,
                "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"},
            }
        zones = site.gcp.gpu_zones if pool.instance and site.gcp and site.gcp.gpu_zones else None
        self.nodes = gcp.container.NodePool(
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
        self.register_outputs({"name": self.nodes.name})


class Redis(pulumi.ComponentResource):
    """Memorystore for Redis on private service access: AUTH on, TLS with the instance's
    own CA, no public address, standard tier (a replica in another zone) when replicas are asked for."""

    def __init__(self, name: str, args: RedisArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Redis", name, None, opts)
        site, network, labels = args.site, args.network, args.tags
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
        self.endpoint = RedisEndpoint(
            host=self.instance.host,
            port=REDIS_TLS_PORT,
            tls=True,
            auth_token=pulumi.Output.secret(self.instance.auth_string),
            ca_cert=self.instance.server_ca_certs.apply(lambda certs: certs[0].cert if certs else ""),
        )
        self.register_outputs({"host": self.instance.host})


class Registry(pulumi.ComponentResource):
    """Two Artifact Registry Docker repositories in the site's region: ours, where the program
    pushes what it builds (immutable tags, the newest 50 versions kept), and a remote
    repository that pulls Docker Hub images on first use and serves them from the region
    after. The node service account may read both; nodes reach them over Private Google
    Access, so no pull ever leaves Google's network for Docker Hub.

    Docker Hub is pulled anonymously unless a Docker Hub user and access token are set, which
    Google recommends for the higher download limit; the token is then kept in Secret Manager,
    where Artifact Registry's service agent reads it
    (https://cloud.google.com/artifact-registry/docs/docker/configure-remote-auth-docker-hub, read 2026-12-01)."""

    def __init__(self, name: str, args: RegistryArgs[Cluster], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:gcp:Registry", name, None, opts)
        site, cluster, docker_hub, labels = args.site, args.cluster, args.docker_hub, args.tags
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
        upstream: dict = {}
        upstream_ready: list[pulumi.Resource] = []
        if docker_hub is not None:
            user, token = docker_hub.user, docker_hub.token
            secret = gcp.secretmanager.Secret(
                f"{name}-docker-hub-token",
                secret_id=f"llm-{_stack_site(site)}-docker-hub-token",
                replication={"auto": {}},
                labels=labels,
                opts=child,
            )
            version = gcp.secretmanager.SecretVersion(
                f"{name}-docker-hub-token", secret=secret.id, secret_data=token, opts=child
            )
            # The agent exists once the API is enabled; asking for it makes sure it does
            # before the grant names it.
            agent = gcp.projects.ServiceIdentity(
                f"{name}-artifactregistry-agent", service="artifactregistry.googleapis.com", opts=child
            )
            upstream_ready.append(
                gcp.secretmanager.SecretIamMember(
                    f"{name}-docker-hub-token-agent",
                    secret_id=secret.id,
                    role="roles/secretmanager.secretAccessor",
                    member=agent.member,
                    opts=child,
                )
            )
            upstream = {"username_password_credentials": {"username": user, "password_secret_version": version.name}}
        self.docker_hub_repository = gcp.artifactregistry.Repository(
            f"{name}-docker-hub",
            repository_id=f"llm-platform-{_stack_site(site)}-docker-hub",
            location=site.region,
            format="DOCKER",
            mode="REMOTE_REPOSITORY",
            description=f"Docker Hub, cached in {site.region} for {site.name}",
            remote_repository_config={
                "description": "Docker Hub",
                "docker_repository": {"public_repository": "DOCKER_HUB"},
                **({"upstream_credentials": upstream} if upstream else {}),
            },
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=upstream_ready),
        )
        ready: tuple[pulumi.Resource, ...] = (
            self.repository,
            self.docker_hub_repository,
            *(
                gcp.artifactregistry.RepositoryIamMember(
                    f"{name}-{suffix}",
                    repository=repo.name,
                    location=site.region,
                    role="roles/artifactregistry.reader",
                    member=cluster.node_account.member,
                    opts=child,
                )
                for suffix, repo in (
                    ("node-pull", self.repository),
                    ("node-pull-docker-hub", self.docker_hub_repository),
                )
            ),
        )
        host = f"{site.region}-docker.pkg.dev"
        own = pulumi.Output.format("{0}/{1}/{2}", host, self.repository.project, self.repository.repository_id)
        docker_hub_prefix = pulumi.Output.format(
            "{0}/{1}/{2}", host, self.docker_hub_repository.project, self.docker_hub_repository.repository_id
        )
        client = gcp.organizations.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        self.images = ImageRegistry(
            own=own,
            docker_hub=docker_hub_prefix,
            # A short-lived token of whoever runs `pulumi up`, who needs
            # roles/artifactregistry.writer on the project (or the repository).
            login=RegistryLogin(
                address=pulumi.Output.from_input(host),
                username=pulumi.Output.from_input(REGISTRY_USER),
                password=pulumi.Output.secret(client.access_token),
            ),
            ready=ready,
        )
        self.register_outputs({"prefix": own, "dockerHubPrefix": docker_hub_prefix})


PROVIDER_KEY = "gcp"
# GKE installs the driver (gpu_driver_installation_config) and runs its own device plugin.
NEEDS_DEVICE_PLUGIN = False
# GKE ships both classes; pd-balanced (standard-rwo) works on every GPU machine series.
STORAGE = StorageClasses(rwo="standard-rwo", rwx=None)
GPU_DRIVER_HOST_DIR = GKE_DRIVER_DIR


def provider(name: str, site: Site, tags: dict[str, str], opts: pulumi.ResourceOptions) -> gcp.Provider:
    assert site.gcp is not None  # config validation requires the block on gcp sites
    return gcp.Provider(
        name,
        project=site.gcp.project,
        region=site.region,
        default_labels=tags,
        # Budgets and other billing calls need a quota project when run with user credentials.
        billing_project=site.gcp.project,
        user_project_override=True,
        opts=opts,
    )


def gpu_taints(pool: GpuPool) -> tuple[Taint, ...]:
    return (Taint(GPU_TAINT_KEY, GPU_TAINT_VALUE, "NoSchedule"),)


def build_site(args: SiteArgs, opts: pulumi.ResourceOptions) -> SiteParts:
    site, labels = args.site, args.tags
    network = Network(f"{site.name}-net", NetworkArgs(site, labels), opts)
    cluster = Cluster(f"{site.name}-cluster", GkeClusterArgs(site, labels, network, args.cfg.sites.index(site)), opts)
    system, *gpu_groups = (
        NodeGroup(f"{site.name}-{pool.name}", NodeGroupArgs(site, labels, cluster, network, pool, disk_gb), opts)
        for pool, disk_gb in args.node_groups(with_system=True)
    )
    redis = Redis(f"{site.name}-redis", RedisArgs(site, labels, cluster, network), opts)
    registry = Registry(f"{site.name}-registry", RegistryArgs(site, labels, cluster, args.docker_hub), opts)
    return SiteParts(network, cluster, system, tuple(gpu_groups), redis, registry)


def lb_annotations(tags: dict[str, str]) -> dict[str, str]:
    # A backend-service-based external passthrough load balancer (GKE's current default
    # for new Services), which keeps client source addresses with externalTrafficPolicy Local.
    return {"cloud.google.com/l4-rbs": "enabled"}


def build_addons(
    args: SiteArgs, parts: SiteParts, kubernetes: k8s.Provider, opts: pulumi.ResourceOptions
) -> tuple[pulumi.Resource, ...]:
    return ()  # GKE builds in what EKS needs add-ons for: autoscaling, load balancers, the CSI driver


def build_budget(cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions) -> gcp.billing.Budget:
    """A monthly budget on the billing account over this stack's spend in the site's project
    (filtered on the `stack` label), alerting on actual and forecast spend."""
    assert site.gcp is not None
    stack = pulumi.get_stack()
    labels = resource_tags(cfg, None)
    budget_provider = provider("budget-gcp", site, labels, opts)
    child = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=budget_provider))
    project = gcp.organizations.get_project_output(opts=pulumi.InvokeOutputOptions(provider=budget_provider))
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
    rules = [
        {"threshold_percent": pct / 100, "spend_basis": "CURRENT_SPEND"} for pct in cfg.budget.actual_thresholds_pct
    ]
    rules += [
        {"threshold_percent": pct / 100, "spend_basis": "FORECASTED_SPEND"}
        for pct in cfg.budget.forecast_thresholds_pct
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
        all_updates_rule={
            "monitoring_notification_channels": [c.id for c in channels],
            "disable_default_iam_recipients": False,
        },
        opts=child,
    )
