"""What a cloud hands to the workloads: one `Platform` type for AWS, GCP and Azure.

Everything cloud-specific that the workloads need (node labels and taints, load-balancer
annotations, storage classes, the registry, whether the cloud ships its own GPU device
plugin) is data on the Platform, so the workloads never branch on the cloud.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import pulumi
import pulumi_kubernetes as k8s

from infra.catalog import InstanceType, instance
from infra.config import ConfigError, GpuPool, Site, StackConfig
from infra.labels import GPU_LABEL, POOL_LABEL, SITE_LABEL
from infra.platform.allocatable import allocatable
from infra.secrets import Secrets

GPU_TAINT_KEY = "nvidia.com/gpu"


# A taint effect as the EKS and GKE APIs spell it (eks.NodeGroup taints[].effect,
# container.NodePool nodeConfig.taints[].effect); AKS writes Kubernetes' own spelling.
API_EFFECTS = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # Kubernetes spelling: NoSchedule, PreferNoSchedule, NoExecute

    @property
    def api_effect(self) -> str:
        return API_EFFECTS[self.effect]


@dataclass(frozen=True)
class NodePool:
    name: str
    instance: InstanceType | None  # None for the CPU-only system pool
    instance_type: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    allocatable_cpu_millis: int
    allocatable_memory_mib: int
    min_nodes: int
    max_nodes: int
    spot: bool

    @property
    def gpus_per_node(self) -> int:
        return self.instance.gpus if self.instance else 0


@dataclass(frozen=True)
class RedisEndpoint:
    host: pulumi.Output[str]
    port: int
    tls: bool
    auth_token: pulumi.Output[str]  # a Pulumi secret
    # PEM of the private CA that signed the server's certificate, where clients cannot
    # verify it against the public roots (Memorystore); None where they can.
    ca_cert: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class StorageClasses:
    rwo: str  # per-pod volumes
    rwx: str | None  # shared model cache, where the platform has a shared file system


@dataclass(frozen=True)
class RegistryLogin:
    """How the program signs in to push the images it builds (short-lived, from the cloud)."""

    address: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]  # a Pulumi secret


@dataclass(frozen=True)
class ImageRegistry:
    """Where a site's nodes pull images from: all of it inside the site's own cloud, so a
    first `pulumi up` never depends on a registry that does not exist yet or on Docker Hub's
    anonymous pull limit."""

    # Prefix of the site's own repositories, where the program pushes what it builds (the
    # gateway): <prefix>/gateway.
    own: pulumi.Output[str]
    # Prefix under which Docker Hub images are pulled through the site's cache:
    # <prefix>/vllm/vllm-openai:<tag> for docker.io/vllm/vllm-openai:<tag>.
    docker_hub: pulumi.Output[str]
    login: RegistryLogin
    # Resources that must exist before a node can pull through the cache (cache rules, IAM).
    ready: tuple[pulumi.Resource, ...] = field(default=())


@dataclass(frozen=True)
class DockerHubLogin:
    """The Docker Hub account a site's pull-through cache signs in with."""

    user: str
    token: pulumi.Output[str]  # a Pulumi secret


# The component contract every cloud module follows: each component takes (name, args, opts)
# with one of these args types (a cloud adds the fields its API needs at the end), and
# exposes the same attributes per concept, which the site skeleton below reads.
NetworkT = TypeVar("NetworkT")
ClusterT = TypeVar("ClusterT")


@dataclass(frozen=True)
class ComponentArgs:
    site: Site
    tags: dict[str, str]  # cost tags (labels on GCP)


@dataclass(frozen=True)
class NetworkArgs(ComponentArgs):
    pass


@dataclass(frozen=True)
class ClusterArgs(ComponentArgs, Generic[NetworkT]):
    network: NetworkT


@dataclass(frozen=True)
class NodeGroupArgs(ComponentArgs, Generic[ClusterT, NetworkT]):
    cluster: ClusterT
    network: NetworkT
    pool: NodePool
    disk_gb: int


@dataclass(frozen=True)
class RedisArgs(ComponentArgs, Generic[ClusterT, NetworkT]):
    cluster: ClusterT
    network: NetworkT


@dataclass(frozen=True)
class RegistryArgs(ComponentArgs, Generic[ClusterT]):
    cluster: ClusterT
    docker_hub: DockerHubLogin | None


class ClusterPart(Protocol):
    cluster: pulumi.CustomResource  # the managed cluster; its `name` is the cluster's name
    kubeconfig: pulumi.Output[str]  # a Pulumi secret
    # What the Kubernetes API needs before it answers the program (access grants, their
    # propagation), beyond the cluster itself.
    api_ready: tuple[pulumi.Resource, ...]


class NodeGroupPart(Protocol):
    nodes: pulumi.CustomResource  # the cloud's node pool resource


class RedisPart(Protocol):
    endpoint: RedisEndpoint


class RegistryPart(Protocol):
    images: ImageRegistry


@dataclass(frozen=True)
class SiteArgs:
    """What the site skeleton hands a cloud module's `build_site`."""

    cfg: StackConfig
    site: Site
    tags: dict[str, str]
    system_pool: NodePool
    gpu_pools: tuple[NodePool, ...]
    docker_hub: DockerHubLogin | None

    def node_groups(self, with_system: bool) -> list[tuple[NodePool, int]]:
        """The pools that get a node group of their own, each with its nodes' disk size: the
        system pool first where the cluster does not carry it inline, then the GPU pools."""
        gpu = list(zip(self.gpu_pools, (p.disk_gb for p in self.site.gpu_pools), strict=True))
        return [(self.system_pool, self.site.system_pool.disk_gb), *gpu] if with_system else gpu


@dataclass(frozen=True)
class SiteParts:
    """What a cloud module's `build_site` hands back: the same components on every cloud."""

    network: pulumi.ComponentResource
    cluster: ClusterPart
    # The system pool's own node group; None where the cluster carries it inline (AKS).
    system: NodeGroupPart | None
    gpu_groups: tuple[NodeGroupPart, ...]
    redis: RedisPart
    registry: RegistryPart


@dataclass(frozen=True)
class Platform:
    site: Site
    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]  # a Pulumi secret
    system_pool: NodePool
    gpu_pools: tuple[NodePool, ...]
    redis: RedisEndpoint
    lb_annotations: Mapping[str, str]
    storage: StorageClasses
    images: ImageRegistry
    needs_device_plugin: bool  # False where the cloud installs NVIDIA's device plugin itself
    # Cluster-side resources workloads must wait for (node pools, CSI drivers, ...).
    ready: tuple[pulumi.Resource, ...] = field(default=())
    # Host directory of the NVIDIA driver where the cloud installs it outside the container
    # runtime's reach (GKE: /home/kubernetes/bin/nvidia); None where the runtime injects it.
    gpu_driver_host_dir: str | None = None

    def gpu_pool(self, name: str) -> NodePool:
        return next(pool for pool in self.gpu_pools if pool.name == name)


def gpu_pool_labels(site: Site, pool_name: str, instance: InstanceType) -> dict[str, str]:
    # nvidia.com/gpu.present is what NVIDIA's device-plugin chart selects nodes by when no
    # node-feature-discovery runs; the rest is ours, for selectors and cost attribution.
    return {
        POOL_LABEL: pool_name,
        SITE_LABEL: site.name,
        GPU_LABEL: instance.gpu.model.lower(),
        "nvidia.com/gpu.present": "true",
    }


def exec_kubeconfig(name: str, server: str, ca_data: str, exec_spec: dict) -> str:
    """A one-cluster kubeconfig whose user signs in through the cloud's exec plugin, so no
    long-lived credential is ever written into state."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [
                {"name": name, "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", **exec_spec}}}
            ],
        }
    )


def gpu_node_pool(site: Site, pool: GpuPool, taints: tuple[Taint, ...]) -> NodePool:
    """A GPU pool as the workloads see it; each cloud passes the taints its nodes carry."""
    spec = instance(site.cloud, pool.instance_type)
    cpu, mem = allocatable(spec.vcpu, spec.memory_gib)
    return NodePool(
        name=pool.name,
        instance=spec,
        instance_type=pool.instance_type,
        labels=gpu_pool_labels(site, pool.name, spec),
        taints=taints,
        allocatable_cpu_millis=cpu,
        allocatable_memory_mib=mem,
        min_nodes=pool.nodes.min,
        max_nodes=pool.nodes.max,
        spot=pool.spot,
    )


def system_node_pool(site: Site) -> NodePool:
    """The CPU pool. Its instance types are not in the GPU catalog, so it is sized as the
    smallest type we allow (2 vCPU, 8 GiB): conservative for scheduling checks."""
    cpu, mem = allocatable(2, 8)
    return NodePool(
        name="system",
        instance=None,
        instance_type=site.system_pool.instance_type,
        labels={POOL_LABEL: "system", SITE_LABEL: site.name},
        taints=(),
        allocatable_cpu_millis=cpu,
        allocatable_memory_mib=mem,
        min_nodes=site.system_pool.nodes.min,
        max_nodes=site.system_pool.nodes.max,
        spot=False,
    )


def resource_tags(cfg: StackConfig, site: Site | None) -> dict[str, str]:
    """Cost tags every taggable resource carries (labels on GCP); stack-wide resources
    such as budgets carry `site: all`."""
    return {
        **cfg.tags,
        "project": "llm-platform",
        "stack": pulumi.get_stack(),
        "site": site.name if site else "all",
        "managed-by": "pulumi",
    }


class CloudModule(Protocol):
    """What `infra/platform/aws.py`, `gcp.py` and `azure.py` each provide, so that the site
    skeleton below is written once and the modules hold only what their cloud's API differs in."""

    PROVIDER_KEY: str  # the package name a component's `providers` map is keyed by
    DOCKER_HUB_LOGIN_REQUIRED: bool  # the cloud's cache cannot pull Docker Hub anonymously
    NEEDS_DEVICE_PLUGIN: bool  # False where the cloud installs NVIDIA's device plugin itself
    STORAGE: StorageClasses
    GPU_DRIVER_HOST_DIR: str | None

    def provider(
        self, name: str, site: Site, tags: dict[str, str], opts: pulumi.ResourceOptions
    ) -> pulumi.ProviderResource: ...

    def gpu_taints(self, pool: GpuPool) -> tuple[Taint, ...]: ...

    def build_site(self, args: SiteArgs, opts: pulumi.ResourceOptions) -> SiteParts: ...

    def lb_annotations(self, tags: dict[str, str]) -> dict[str, str]: ...

    def build_addons(
        self, args: SiteArgs, parts: SiteParts, kubernetes: k8s.Provider, opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Resource, ...]: ...

    def build_budget(
        self, cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource: ...


def _cloud_module(cfg: StackConfig, site: Site) -> CloudModule:
    # Imported on use, so a stack on one cloud never loads another cloud's SDK.
    if site.cloud == "aws":
        from infra.platform import aws

        return aws
    if site.cloud == "gcp":
        from infra.platform import gcp

        return gcp
    if site.cloud == "azure":
        from infra.platform import azure

        return azure
    raise ConfigError(f"sites[{cfg.sites.index(site)}].cloud", f"unknown cloud {site.cloud!r}; use aws, gcp or azure")


def docker_hub_login(cfg: StackConfig, secrets: Secrets, site: Site, required: bool) -> DockerHubLogin | None:
    """The Docker Hub user and token a site's cache signs in with: both or neither, and both
    where the cloud's cache cannot pull Docker Hub anonymously (`required`)."""
    user, token = cfg.images.docker_hub_user, secrets.docker_hub_token
    if user is not None and token is not None:
        return DockerHubLogin(user, token)
    if user is None and (required or token is not None):
        raise ConfigError(
            "images.dockerHubUser",
            f"site {site.name!r} ({site.cloud}) pulls Docker Hub images through a cache that signs in as this "
            "Docker Hub user; set llm-platform:images.dockerHubUser in Pulumi.<stack>.yaml",
        )
    if token is None and (required or user is not None):
        raise ConfigError(
            "dockerHubToken",
            f"site {site.name!r} ({site.cloud}) pulls Docker Hub images through a cache that signs in with a "
            "Docker Hub access token; set it with `pulumi config set --secret dockerHubToken <token>`",
        )
    return None


def check_clouds(cfg: StackConfig, secrets: Secrets) -> None:
    """Fail on an unbuildable site before any resource is registered."""
    for site in cfg.sites:
        module = _cloud_module(cfg, site)
        docker_hub_login(cfg, secrets, site, module.DOCKER_HUB_LOGIN_REQUIRED)


def build_platform(cfg: StackConfig, site: Site, secrets: Secrets) -> Platform:
    """Build one site on its cloud and hand back what the workloads need. Every cloud goes
    through the same steps in the same order: its provider; network, cluster, node groups,
    Redis and registry (the cloud module's `build_site`); the Kubernetes provider; the
    cluster add-ons the cloud does not build in."""
    cloud = _cloud_module(cfg, site)
    tags = resource_tags(cfg, site)
    component = pulumi.ComponentResource(f"llm-platform:{site.cloud}:Site", site.name, None, pulumi.ResourceOptions())
    provider = cloud.provider(f"{site.name}-{site.cloud}", site, tags, pulumi.ResourceOptions(parent=component))
    child = pulumi.ResourceOptions(parent=component, providers={cloud.PROVIDER_KEY: provider})
    args = SiteArgs(
        cfg=cfg,
        site=site,
        tags=tags,
        system_pool=system_node_pool(site),
        gpu_pools=tuple(gpu_node_pool(site, p, cloud.gpu_taints(p)) for p in site.gpu_pools),
        docker_hub=docker_hub_login(cfg, secrets, site, cloud.DOCKER_HUB_LOGIN_REQUIRED),
    )
    parts = cloud.build_site(args, child)
    cluster = parts.cluster
    kubernetes = k8s.Provider(
        f"{site.name}-k8s",
        kubeconfig=cluster.kubeconfig,
        # Workloads need somewhere to run: the system pool's nodes, where it is a group of its own.
        opts=pulumi.ResourceOptions(
            parent=component,
            depends_on=[*cluster.api_ready, *([parts.system.nodes] if parts.system else [])],
        ),
    )
    addons = cloud.build_addons(args, parts, kubernetes, child)
    component.register_outputs({"cluster": cluster.cluster.name})
    return Platform(
        site=site,
        provider=kubernetes,
        cluster_name=cluster.cluster.name,
        kubeconfig=cluster.kubeconfig,
        system_pool=args.system_pool,
        gpu_pools=args.gpu_pools,
        redis=parts.redis.endpoint,
        lb_annotations=cloud.lb_annotations(tags),
        storage=cloud.STORAGE,
        images=parts.registry.images,
        needs_device_plugin=cloud.NEEDS_DEVICE_PLUGIN,
        ready=(*addons, *(g.nodes for g in parts.gpu_groups)),
        gpu_driver_host_dir=cloud.GPU_DRIVER_HOST_DIR,
    )


def build_budget(cfg: StackConfig, amount: float, site: Site) -> pulumi.Resource:
    """The cloud's budget over this stack's spend, built once per cloud the stack uses
    (with that cloud's first site's region and credentials)."""
    return _cloud_module(cfg, site).build_budget(cfg, amount, site, pulumi.ResourceOptions())
