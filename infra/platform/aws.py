"""An AWS site: VPC, EKS, managed node groups, ElastiCache, ECR, budget -> Platform."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.catalog import catalog
from infra.charts import AWS_LOAD_BALANCER_CONTROLLER, CLUSTER_AUTOSCALER
from infra.config import GpuPool, Site, StackConfig
from infra.platform import (
    GPU_TAINT_KEY,
    POOL_LABEL,
    ClusterArgs,
    ComponentArgs,
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
    resource_tags,
)

ZONES = 3
# ECR's pull-through cache signs in to Docker Hub; it has no anonymous mode for it
# (docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache-creating-rule.html, read 2026-12-01).
DOCKER_HUB_LOGIN_REQUIRED = True
REDIS_NODE_TYPES = {"small": "cache.t4g.small", "medium": "cache.m7g.large", "large": "cache.r7g.xlarge"}
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
_MANAGED = "arn:aws:iam::aws:policy/"
POD_IDENTITY = "pods.eks.amazonaws.com"

# The label cluster-autoscaler's AWS provider reads as "this node has GPUs" (GPULabel in
# kubernetes/autoscaler cluster-autoscaler/cloudprovider/aws/aws_cloud_provider.go; README
# "Special note on GPU instances": CA >= 1.15; read 2026-12-01). A node that carries it but
# does not yet advertise nvidia.com/gpu counts as not ready, so no second scale-up while the
# device plugin starts.
AUTOSCALER_GPU_LABEL = "k8s.amazonaws.com/accelerator"
# ASG tags the autoscaler builds an empty group's node template from (extractLabelsFromAsg,
# extractTaintsFromAsg with values `<value>:<Effect>`, extractAllocatableResourcesFromAsg in
# cluster-autoscaler/cloudprovider/aws/aws_manager.go; README "Auto-Discovery Setup"; read
# 2026-12-01). EKS copies none of a managed node group's labels or taints to its ASG.
NODE_TEMPLATE_TAG = "k8s.io/cluster-autoscaler/node-template/"
# Spot pools offer this many instance types at most: the primary and its cheapest matches.
SPOT_INSTANCE_TYPES = 4
# EKS access policy for cluster-wide admin (docs.aws.amazon.com/eks/latest/userguide/
# access-policy-permissions.html, AmazonEKSClusterAdminPolicy; read 2026-12-01).
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
# ECR's upstream URL for Docker Hub (API_CreatePullThroughCacheRule upstreamRegistryUrl,
# docs.aws.amazon.com/AmazonECR/latest/APIReference/; read 2026-12-01).
DOCKER_HUB_UPSTREAM = "registry-1.docker.io"
# Secrets for a pull-through cache must be named with this prefix
# (docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache-creating-rule.html; read 2026-12-01).
PULL_THROUGH_SECRET_PREFIX = "ecr-pullthroughcache/"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
# The controller's own IAM policy at the chart's appVersion (see the README beside it).
_KEEP_NEWEST_50 = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep the newest 50 images",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 50},
                "action": {"type": "expire"},
            }
        ]
    }
)


def allow(
    actions: Sequence[str],
    resources: Sequence[pulumi.Input[str]] = ("*",),
    conditions: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One Allow statement in `get_policy_document`'s shape; `conditions` as IAM writes them,
    {test: {variable: value or values}}."""
    statement: dict[str, Any] = {"effect": "Allow", "actions": list(actions), "resources": list(resources)}
    if conditions:
        statement["conditions"] = [
            {"test": test, "variable": variable, "values": values if isinstance(values, list) else [values]}
            for test, pairs in conditions.items()
            for variable, values in pairs.items()
        ]
    return statement


def policy_document(statements: Sequence[dict[str, Any]], parent: pulumi.Resource) -> pulumi.Output[str]:
    """An IAM policy as the AWS provider renders it (aws.iam.getPolicyDocument, through the
    parent's provider) rather than JSON written by hand."""
    return aws.iam.get_policy_document_output(
        statements=list(statements), opts=pulumi.InvokeOutputOptions(parent=parent)
    ).json


@dataclass(frozen=True)
class ServiceRole:
    role: aws.iam.Role
    grants: tuple[pulumi.Resource, ...]  # its policy attachments and inline policy


def service_role(
    name: str,
    service: str,
    tags: dict[str, str],
    parent: pulumi.Resource,
    *,
    attach: Mapping[str, pulumi.Input[str]] | None = None,
    inline: pulumi.Output[str] | None = None,
) -> ServiceRole:
    """The one way this module makes a role: assumed by an AWS service, with policies attached
    (resource name -> policy ARN) and an optional inline policy named like the role. EKS Pod
    Identity also tags the session, so its trust allows sts:TagSession
    (docs.aws.amazon.com/eks/latest/userguide/pod-id-role.html; read 2026-12-01)."""
    child = pulumi.ResourceOptions(parent=parent)
    actions = ["sts:AssumeRole", "sts:TagSession"] if service == POD_IDENTITY else ["sts:AssumeRole"]
    trust = aws.iam.get_policy_document_output(
        statements=[
            {"effect": "Allow", "actions": actions, "principals": [{"type": "Service", "identifiers": [service]}]}
        ],
        opts=pulumi.InvokeOutputOptions(parent=parent),
    ).json
    role = aws.iam.Role(name, assume_role_policy=trust, tags=tags, opts=child)
    grants: list[pulumi.Resource] = [
        aws.iam.RolePolicyAttachment(attachment, role=role.name, policy_arn=arn, opts=child)
        for attachment, arn in (attach or {}).items()
    ]
    if inline is not None:
        grants.append(aws.iam.RolePolicy(name, role=role.id, policy=inline, opts=child))
    return ServiceRole(role, tuple(grants))


class Network(pulumi.ComponentResource):
    """A VPC over three zones: public subnets for load balancers and NAT, private
    subnets for nodes and Redis, and NAT per zone or a single shared one."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Network", name, None, opts)
        site, tags = args.site, args.tags
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self)).names[:ZONES]
        net = ipaddress.ip_network(site.network_cidr)
        # Private subnets get most of the space: the VPC CNI gives every pod a VPC address.
        quarters = list(net.subnets(prefixlen_diff=2))
        private_cidrs = quarters[:ZONES]
        public_cidrs = list(quarters[3].subnets(prefixlen_diff=2))[:ZONES]

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=site.network_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**tags, "Name": f"{name}-vpc"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=tags, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags=tags,
            opts=child,
        )
        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        nats: list[aws.ec2.NatGateway] = []
        for i, zone in enumerate(zones):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=self.vpc.id,
                availability_zone=zone,
                cidr_block=str(public_cidrs[i]),
                map_public_ip_on_launch=False,
                tags={**tags, "Name": f"{name}-public-{zone}", "kubernetes.io/role/elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=public.id, route_table_id=public_rt.id, opts=child
            )
            self.public_subnets.append(public)
            if site.nat_per_zone or i == 0:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags=tags, opts=child)
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=public.id, tags=tags, opts=child
                    )
                )
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                availability_zone=zone,
                cidr_block=str(private_cidrs[i]),
                tags={**tags, "Name": f"{name}-private-{zone}", "kubernetes.io/role/internal-elb": "1"},
                opts=child,
            )
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nats[-1].id}],
                tags=tags,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=private.id, route_table_id=private_rt.id, opts=child
            )
            self.private_subnets.append(private)
        self.register_outputs({"vpcId": self.vpc.id})


class Cluster(pulumi.ComponentResource):
    """EKS with envelope-encrypted secrets, all control-plane logs, an API endpoint that is
    private unless the config lists CIDRs allowed to reach it, and cluster admin through
    access entries for the principals the site lists beside the one that creates it."""

    def __init__(self, name: str, args: ClusterArgs[Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Cluster", name, None, opts)
        site, network, tags = args.site, args.network, args.tags
        child = pulumi.ResourceOptions(parent=self)
        self.cluster_name = f"{pulumi.get_stack()}-{site.name}"
        self.key = aws.kms.Key(
            f"{name}-secrets",
            description=f"EKS secrets, Redis and images for {self.cluster_name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=child,
        )
        role = service_role(
            f"{name}-cluster",
            "eks.amazonaws.com",
            tags,
            self,
            attach={f"{name}-cluster": _MANAGED + "AmazonEKSClusterPolicy"},
        )
        # Created ahead of the cluster so the retention is ours, not "never expire".
        logs = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            name=f"/aws/eks/{self.cluster_name}/cluster",
            retention_in_days=90,
            tags=tags,
            opts=child,
        )
        public = bool(site.api_allowed_cidrs)
        self.cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=self.cluster_name,
            version=site.kubernetes_version,
            role_arn=role.role.arn,
            vpc_config={
                "subnet_ids": [s.id for s in network.private_subnets + network.public_subnets],
                "endpoint_private_access": True,
                "endpoint_public_access": public,
                "public_access_cidrs": site.api_allowed_cidrs if public else None,
            },
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": self.key.arn}},
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            # The add-ons come as managed EKS add-ons below, versioned with the cluster.
            bootstrap_self_managed_addons=False,
            upgrade_policy={"support_type": "STANDARD"},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*role.grants, logs]),
        )
        nodes = service_role(
            f"{name}-node",
            "ec2.amazonaws.com",
            tags,
            self,
            attach={
                f"{name}-node-{p}": _MANAGED + p
                for p in (
                    "AmazonEKSWorkerNodePolicy",
                    "AmazonEKS_CNI_Policy",
                    "AmazonEC2ContainerRegistryReadOnly",
                    "AmazonSSMManagedInstanceCore",
                )
            },
        )
        self.node_role, self.node_policies = nodes.role, list(nodes.grants)
        # Node root volumes use the AWS managed EBS key: Auto Scaling's service-linked role may
        # use it without any key policy ("Amazon EC2 Auto Scaling does not need additional
        # authorization to use the default AWS managed key", docs.aws.amazon.com/autoscaling/ec2/
        # userguide/key-policy-requirements-EBS-encryption.html; read 2026-12-01). A customer key
        # would need a policy naming AWSServiceRoleForAutoScaling, which KMS rejects while a fresh
        # account has no such role yet. DescribeKey on the predefined alias creates the managed key
        # where none exists yet (API_DescribeKey KeyId, docs.aws.amazon.com/kms/latest/APIReference/;
        # read 2026-12-01).
        self.volume_key_arn = aws.kms.get_key_output(key_id="alias/aws/ebs", opts=pulumi.InvokeOptions(parent=self)).arn
        admins = site.aws.admin_principal_arns if site.aws else []
        self.admins = [self._admin(name, arn, tags) for arn in admins]
        self.kubeconfig = self._kubeconfig(site.region)
        self.api_ready: tuple[pulumi.Resource, ...] = ()
        self.register_outputs({"name": self.cluster.name, "endpoint": self.cluster.endpoint})

    def _admin(self, name: str, principal_arn: str, tags: dict[str, str]) -> aws.eks.AccessPolicyAssociation:
        # Named after the ARN, so reordering the list replaces nothing. The identity that runs the
        # first `pulumi up` has its entry from bootstrap_cluster_creator_admin_permissions; listing
        # it here too makes EKS refuse a second entry for it.
        suffix = hashlib.sha256(principal_arn.encode()).hexdigest()[:8]
        child = pulumi.ResourceOptions(parent=self)
        entry = aws.eks.AccessEntry(
            f"{name}-admin-{suffix}",
            cluster_name=self.cluster.name,
            principal_arn=principal_arn,
            type="STANDARD",
            tags=tags,
            opts=child,
        )
        return aws.eks.AccessPolicyAssociation(
            f"{name}-admin-{suffix}",
            cluster_name=self.cluster.name,
            principal_arn=entry.principal_arn,
            policy_arn=CLUSTER_ADMIN_POLICY,
            access_scope={"type": "cluster"},
            opts=child,
        )

    def _kubeconfig(self, region: str) -> pulumi.Output[str]:
        c = self.cluster
        return pulumi.Output.secret(
            pulumi.Output.all(c.name, c.endpoint, c.certificate_authority.data).apply(
                lambda a: exec_kubeconfig(
                    a[0],
                    a[1],
                    a[2],
                    {"command": "aws", "args": ["eks", "get-token", "--cluster-name", a[0], "--region", region]},
                )
            )
        )


class NodeGroup(pulumi.ComponentResource):
    """A managed node group with a launch template that requires IMDSv2 with hop limit 1
    (pods cannot borrow the node's role) and encrypts the root volume, and the node-template
    tags on its Auto Scaling group that let the cluster autoscaler scale it up from zero."""

    def __init__(self, name: str, args: NodeGroupArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:NodeGroup", name, None, opts)
        cluster, network, pool, tags, disk_gb = args.cluster, args.network, args.pool, args.tags, args.disk_gb
        gpu = pool.instance is not None
        child = pulumi.ResourceOptions(parent=self)
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {
                        "volume_size": disk_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "kms_key_id": cluster.volume_key_arn,
                        "delete_on_termination": "true",
                    },
                }
            ],
            tag_specifications=[
                {"resource_type": "instance", "tags": tags},
                {"resource_type": "volume", "tags": tags},
            ],
            update_default_version=True,
            tags=tags,
            opts=child,
        )
        self.nodes = aws.eks.NodeGroup(
            f"{name}-ng",
            cluster_name=cluster.cluster.name,
            node_role_arn=cluster.node_role.arn,
            subnet_ids=[s.id for s in network.private_subnets],
            ami_type="AL2023_x86_64_NVIDIA" if gpu else "AL2023_x86_64_STANDARD",
            capacity_type="SPOT" if pool.spot else "ON_DEMAND",
            # The primary type first: the autoscaler sizes the group's node template from it.
            instance_types=instance_types(pool),
            scaling_config={"min_size": pool.min_nodes, "max_size": pool.max_nodes, "desired_size": pool.min_nodes},
            labels=node_labels(pool),
            taints=[{"key": t.key, "value": t.value, "effect": t.api_effect} for t in pool.taints],
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            update_config={"max_unavailable": 1},
            tags=tags,
            # The cluster autoscaler owns the desired size once the group exists.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=cluster.node_policies, ignore_changes=["scalingConfig.desiredSize"]
            ),
        )
        asg_name = self.nodes.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        self.autoscaler_tags = [
            aws.autoscaling.Tag(
                f"{name}-ca-{_tag_suffix(key)}",
                autoscaling_group_name=asg_name,
                # The ASG's own hint, not an instance tag: nothing to propagate.
                tag={"key": key, "value": value, "propagate_at_launch": False},
                opts=child,
            )
            for key, value in node_template_tags(pool).items()
        ]
        self.register_outputs({"name": self.nodes.node_group_name})


def node_labels(pool: NodePool) -> dict[str, str]:
    """The labels a pool's nodes carry: the pool's own, and on GPU pools the GPU label the
    cluster autoscaler reads, valued `nvidia-<model>` (nvidia-l4, nvidia-a10g)."""
    labels = dict(pool.labels)
    if pool.instance is not None and pool.gpus_per_node:
        labels[AUTOSCALER_GPU_LABEL] = "nvidia-" + re.sub(r"[^a-z0-9]+", "-", pool.instance.gpu.model.lower())
    return labels


def node_template_tags(pool: NodePool) -> dict[str, str]:
    """The cluster-autoscaler ASG tags that describe a pool's nodes before any exists."""
    out = {f"{NODE_TEMPLATE_TAG}label/{k}": v for k, v in node_labels(pool).items()}
    out.update({f"{NODE_TEMPLATE_TAG}taint/{t.key}": f"{t.value}:{t.effect}" for t in pool.taints})
    if pool.gpus_per_node:
        # The device plugin's resource name, which GPU pods request.
        out[f"{NODE_TEMPLATE_TAG}resources/nvidia.com/gpu"] = str(pool.gpus_per_node)
    return out


def _tag_suffix(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.removeprefix(NODE_TEMPLATE_TAG).lower()).strip("-")


def instance_types(pool: NodePool) -> list[str]:
    """What the pool's node group may launch. Spot pools add the catalog's types with the same
    GPU model and count and at least the primary's vCPU and memory, cheapest spot first, so one
    type's spot capacity running out does not stop the pool; the primary stays first and the
    NodePool's allocatable stays the primary's, the smallest of them."""
    if not pool.spot or pool.instance is None:
        return [pool.instance_type]
    primary = pool.instance
    matches = sorted(
        (
            t
            for t in catalog(primary.cloud).instances.values()
            if t.name != primary.name
            and t.gpu == primary.gpu
            and t.gpus == primary.gpus
            and t.vcpu >= primary.vcpu
            and t.memory_gib >= primary.memory_gib
        ),
        key=lambda t: (t.spot_hourly, t.name),
    )
    return [primary.name, *(t.name for t in matches[: SPOT_INSTANCE_TYPES - 1])]


class Redis(pulumi.ComponentResource):
    """ElastiCache Redis in the private subnets: TLS in transit, encrypted at rest, an
    AUTH token kept as a Pulumi secret, reachable only from the cluster's security group."""

    def __init__(self, name: str, args: RedisArgs[Cluster, Network], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Redis", name, None, opts)
        site, network, cluster, tags = args.site, args.network, args.cluster, args.tags
        child = pulumi.ResourceOptions(parent=self)
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-subnets",
            name=f"llm-platform-{pulumi.get_stack()}-{site.name}",
            description=f"{name} private subnets",
            subnet_ids=[s.id for s in network.private_subnets],
            tags=tags,
            opts=child,
        )
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description=f"{name}: Redis from the EKS cluster only",
            vpc_id=network.vpc.id,
            tags=tags,
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-cluster",
            security_group_id=group.id,
            referenced_security_group_id=cluster.cluster.vpc_config.cluster_security_group_id,
            ip_protocol="tcp",
            from_port=6379,
            to_port=6379,
            description="Redis from EKS nodes and pods",
            tags=tags,
            opts=child,
        )
        # ElastiCache AUTH tokens allow printable ASCII except @, " and /; alphanumerics are safe.
        self.token = random.RandomPassword(f"{name}-auth", length=48, special=False, opts=child)
        replicas = site.redis.replicas
        self.group = aws.elasticache.ReplicationGroup(
            f"{name}-rg",
            description=f"llm-platform gateway limits for {site.name}",
            engine="redis",
            engine_version="7.1",
            node_type=REDIS_NODE_TYPES[site.redis.size],
            num_cache_clusters=1 + replicas,
            automatic_failover_enabled=replicas > 0,
            multi_az_enabled=replicas > 0,
            port=6379,
            subnet_group_name=subnets.name,
            security_group_ids=[group.id],
            transit_encryption_enabled=True,
            at_rest_encryption_enabled=True,
            kms_key_id=cluster.key.arn,
            auth_token=self.token.result,
            snapshot_retention_limit=1 if replicas else 0,
            tags=tags,
            opts=child,
        )
        self.endpoint = RedisEndpoint(
            host=self.group.primary_endpoint_address, port=6379, tls=True, auth_token=self.token.result
        )
        self.register_outputs({"host": self.group.primary_endpoint_address})


class Registry(pulumi.ComponentResource):
    """ECR repositories for the images this project builds, immutable and scanned, and a
    pull-through cache of Docker Hub, so nodes pull upstream images (vLLM) from inside AWS:
    signed in to Docker Hub, and not once per node against its anonymous pull limit."""

    IMAGES = ("gateway", "vllm")

    def __init__(self, name: str, args: RegistryArgs[Cluster], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Registry", name, None, opts)
        site, cluster, docker_hub, tags = args.site, args.cluster, args.docker_hub, args.tags
        assert docker_hub is not None  # DOCKER_HUB_LOGIN_REQUIRED: the skeleton refuses a site without it
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        prefix = f"llm-platform-{stack}"
        self.repositories = {}
        for image in self.IMAGES:
            repo = aws.ecr.Repository(
                f"{name}-{image}",
                name=f"{prefix}/{image}",
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS", "kms_key": cluster.key.arn}],
                tags=tags,
                opts=child,
            )
            aws.ecr.LifecyclePolicy(f"{name}-{image}", repository=repo.name, policy=_KEEP_NEWEST_50, opts=child)
            self.repositories[image] = repo
        gateway = self.repositories["gateway"]
        gateway_url = gateway.repository_url
        prefix_url = gateway_url.apply(lambda url: url.rsplit("/", 1)[0])
        host = gateway_url.apply(lambda url: url.split("/", 1)[0])
        registry_id = gateway.registry_id

        cache_prefix = docker_hub_cache_prefix(stack, site.name)
        cached_repos = pulumi.Output.format(
            "arn:aws:ecr:{0}:{1}:repository/{2}/*", site.region, registry_id, cache_prefix
        )
        # ECR reads the credential as JSON with `username` and `accessToken`, from a secret under
        # the default aws/secretsmanager key: "Amazon ECR doesn't support using a customer managed
        # key" for it (docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache-creating-secret.html;
        # read 2026-12-01). Hence no kms_key_id here.
        secret = aws.secretsmanager.Secret(
            f"{name}-docker-hub",
            name=f"{PULL_THROUGH_SECRET_PREFIX}llm-platform-{stack}-{site.name}",
            description=f"Docker Hub sign-in for ECR's pull-through cache {cache_prefix}",
            # The token's home is the stack's Pulumi config; a name pending deletion would block
            # the next `pulumi up` after a destroy.
            recovery_window_in_days=0,
            tags=tags,
            opts=child,
        )
        credential = aws.secretsmanager.SecretVersion(
            f"{name}-docker-hub",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(
                pulumi.Output.json_dumps({"username": docker_hub.user, "accessToken": docker_hub.token})
            ),
            opts=child,
        )
        # Repositories the cache creates take our key and tags from a creation template, which ECR
        # applies through a role of ours (docs.aws.amazon.com/AmazonECR/latest/userguide/
        # repository-creation-templates-create.html; read 2026-12-01).
        template_role = service_role(
            f"{name}-cache-repos",
            "ecr.amazonaws.com",
            tags,
            self,
            inline=policy_document(
                [
                    allow(["ecr:CreateRepository", "ecr:ReplicateImage", "ecr:TagResource"], [cached_repos]),
                    allow(["kms:CreateGrant", "kms:RetireGrant", "kms:DescribeKey"], [cluster.key.arn]),
                ],
                self,
            ),
        )
        self.cache_template = aws.ecr.RepositoryCreationTemplate(
            f"{name}-docker-hub",
            prefix=cache_prefix,
            applied_fors=["PULL_THROUGH_CACHE"],
            description=f"Docker Hub images cached for {stack}/{site.name}",
            custom_role_arn=template_role.role.arn,
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": cluster.key.arn}],
            # The cache refreshes a tag when upstream moves it, so cached tags stay mutable.
            image_tag_mutability="MUTABLE",
            lifecycle_policy=_KEEP_NEWEST_50,
            resource_tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(template_role.grants)),
        )
        self.cache_rule = aws.ecr.PullThroughCacheRule(
            f"{name}-docker-hub",
            ecr_repository_prefix=cache_prefix,
            upstream_registry_url=DOCKER_HUB_UPSTREAM,
            credential_arn=secret.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[credential, self.cache_template]),
        )
        # A node's first pull of an image makes ECR create the cached repository and import the
        # image on the puller's behalf: ecr:CreateRepository and ecr:BatchImportUpstreamImage
        # (docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache-iam.html; read
        # 2026-12-01). Reads come from AmazonEC2ContainerRegistryReadOnly on the node role.
        self.node_pull = aws.iam.RolePolicy(
            f"{name}-pull-through",
            role=cluster.node_role.id,
            policy=policy_document(
                [allow(["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"], [cached_repos])], self
            ),
            opts=child,
        )
        docker_hub_prefix = pulumi.Output.concat(host, "/", cache_prefix)
        token = aws.ecr.get_authorization_token_output(registry_id=registry_id, opts=pulumi.InvokeOptions(parent=self))
        self.images = ImageRegistry(
            own=prefix_url,
            docker_hub=docker_hub_prefix,
            login=RegistryLogin(address=host, username=token.user_name, password=pulumi.Output.secret(token.password)),
            ready=(*self.repositories.values(), credential, self.cache_template, self.cache_rule, self.node_pull),
        )
        self.register_outputs({"prefix": prefix_url, "dockerHub": docker_hub_prefix})


def docker_hub_cache_prefix(stack: str, site: str) -> str:
    """The ECR repository prefix Docker Hub images are cached under for one site. Prefixes are
    unique per registry (account and region) and 2-30 characters of lowercase letters, digits
    and `._-/` separators (API_PullThroughCacheRule ecrRepositoryPrefix,
    docs.aws.amazon.com/AmazonECR/latest/APIReference/; read 2026-12-01)."""
    readable = re.sub(r"[^a-z0-9]+", "-", f"{stack}-{site}".lower()).strip("-") + "/docker-hub"
    if len(readable) <= 30:
        return readable
    return "docker-hub-" + hashlib.sha256(f"{stack}/{site}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ClusterAddonsArgs(ComponentArgs):
    network: Network
    cluster: Cluster
    system: NodeGroup
    kubernetes: k8s.Provider


class ClusterAddons(pulumi.ComponentResource):
    """Managed EKS add-ons (the VPC CNI enforcing NetworkPolicy, metrics-server for CPU-based
    scaling), the EBS CSI driver's identity, the default storage class, and what EKS, unlike
    GKE and AKS, does not build in: the cluster autoscaler and the AWS Load Balancer
    Controller that serves LoadBalancer Services."""

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:ClusterAddons", name, None, opts)
        site, network, cluster, system, provider, tags = (
            args.site,
            args.network,
            args.cluster,
            args.system,
            args.kubernetes,
            args.tags,
        )
        child = pulumi.ResourceOptions(parent=self)
        eks_name = cluster.cluster.name

        def addon(addon_name: str, after: list[pulumi.Resource], **kwargs) -> aws.eks.Addon:
            # Pinned to the version EKS names the default for the cluster's Kubernetes minor,
            # read from EKS itself (DescribeAddonVersions), so the pin always exists and a
            # cluster upgrade moves it with the cluster.
            version = aws.eks.get_addon_version_output(
                addon_name=addon_name,
                kubernetes_version=cluster.cluster.version,
                most_recent=False,
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).version
            return aws.eks.Addon(
                f"{name}-{addon_name}",
                cluster_name=eks_name,
                addon_name=addon_name,
                addon_version=version,
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after),
                **kwargs,
            )

        # Networking first: nodes cannot become Ready without the CNI. The CNI enforces
        # NetworkPolicy only with its network policy agent switched on (the add-on's
        # configuration key `enableNetworkPolicy`, a string: docs.aws.amazon.com/eks/latest/
        # userguide/cni-network-policy-configure.html; read 2026-12-01).
        network_addons = [
            addon("vpc-cni", [], configuration_values=json.dumps({"enableNetworkPolicy": "true"})),
            addon("kube-proxy", []),
            addon("eks-pod-identity-agent", []),
        ]
        ebs_role = service_role(
            f"{name}-ebs-csi",
            POD_IDENTITY,
            tags,
            self,
            attach={f"{name}-ebs-csi": _MANAGED + "service-role/AmazonEBSCSIDriverPolicy"},
        ).role
        self.addons = network_addons + [
            addon("coredns", [system.nodes]),
            addon(
                "aws-ebs-csi-driver",
                [system.nodes],
                pod_identity_associations=[{"role_arn": ebs_role.arn, "service_account": "ebs-csi-controller-sa"}],
            ),
        ]
        # The resource metrics API that every CPU-based scaler reads (HPA, KEDA's cpu trigger).
        # EKS offers it as a community add-on named metrics-server (docs.aws.amazon.com/eks/
        # latest/userguide/metrics-server.html and community-addons.html; read 2026-12-01). Its
        # pods tolerate no GPU taint, so they land on the system pool.
        self.metrics_server = addon("metrics-server", [system.nodes])
        k8s_child = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=self.addons)
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata={"name": "gp3", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=k8s_child,
        )

        autoscaler_role = service_role(
            f"{name}-autoscaler", POD_IDENTITY, tags, self, inline=policy_document(_autoscaler_policy(eks_name), self)
        ).role
        aws.eks.PodIdentityAssociation(
            f"{name}-autoscaler",
            cluster_name=eks_name,
            namespace="kube-system",
            service_account="cluster-autoscaler",
            role_arn=autoscaler_role.arn,
            tags=tags,
            opts=child,
        )
        self.autoscaler = CLUSTER_AUTOSCALER.release(
            f"{name}-cluster-autoscaler",
            "cluster-autoscaler",
            namespace="kube-system",
            values={
                "cloudProvider": "aws",
                "awsRegion": site.region,
                "autoDiscovery": {"clusterName": eks_name},
                "rbac": {"serviceAccount": {"create": True, "name": "cluster-autoscaler"}},
                # Scale-from-zero reads labels and taints of empty managed groups from the EKS API.
                "extraArgs": {
                    "balance-similar-node-groups": "true",
                    "expander": "least-waste",
                    "skip-nodes-with-system-pods": "false",
                    "scale-down-unneeded-time": "10m",
                },
                "nodeSelector": {POOL_LABEL: "system"},
            },
            opts=k8s_child,
        )

        # The Service annotations in lb_annotations are this controller's: the in-tree cloud
        # provider leaves a Service annotated aws-load-balancer-type `external` alone, and the
        # controller provisions its NLB.
        controller = AWS_LOAD_BALANCER_CONTROLLER
        lb_policy = aws.iam.Policy(
            f"{name}-lb-controller",
            description=f"AWS Load Balancer Controller {controller.app_version}: NLBs for this cluster's Services",
            policy=policy_document(_lb_controller_policy(eks_name), self),
            tags=tags,
            opts=child,
        )
        lb_role = service_role(
            f"{name}-lb-controller", POD_IDENTITY, tags, self, attach={f"{name}-lb-controller": lb_policy.arn}
        )
        lb_identity = aws.eks.PodIdentityAssociation(
            f"{name}-lb-controller",
            cluster_name=eks_name,
            namespace="kube-system",
            service_account=LB_CONTROLLER_SERVICE_ACCOUNT,
            role_arn=lb_role.role.arn,
            tags=tags,
            opts=child,
        )
        self.load_balancer_controller = controller.release(
            f"{name}-aws-load-balancer-controller",
            "aws-load-balancer-controller",
            namespace="kube-system",
            values={
                "clusterName": eks_name,
                # Hop limit 1 keeps pods off the instance metadata service, so the controller is
                # told its region and VPC instead of looking them up there.
                "region": site.region,
                "vpcId": network.vpc.id,
                "serviceAccount": {"create": True, "name": LB_CONTROLLER_SERVICE_ACCOUNT},
                "nodeSelector": {POOL_LABEL: "system"},
                # Shield and WAF attach to ALBs for Ingresses; the stack makes none, and the
                # policy below grants neither.
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
            },
            # Its webhooks must answer before any LoadBalancer Service is created; the Release
            # waits for the Deployment to be ready.
            opts=pulumi.ResourceOptions(
                parent=self, provider=provider, depends_on=[*self.addons, *lb_role.grants, lb_identity]
            ),
        )
        self.register_outputs({})


def _lb_controller_policy(cluster_name: pulumi.Input[str]) -> list[dict[str, Any]]:
    """What the AWS Load Balancer Controller needs to run NLBs for Services: the statements of its
    own policy (kubernetes-sigs/aws-load-balancer-controller v3.5.0, docs/install/iam_policy.json,
    read 2026-12-01) without the ALB-only integrations (Cognito, ACM, WAF, Shield), and with every
    write limited to resources tagged elbv2.k8s.aws/cluster=<this cluster> instead of any cluster."""
    own = {"StringEquals": {"aws:ResourceTag/elbv2.k8s.aws/cluster": cluster_name}}
    tagging_new = {"StringEquals": {"aws:RequestTag/elbv2.k8s.aws/cluster": cluster_name}}
    elb = "arn:aws:elasticloadbalancing:*:*:"
    balancers = [f"{elb}targetgroup/*/*", f"{elb}loadbalancer/net/*/*", f"{elb}loadbalancer/app/*/*"]
    statements: list[tuple[str, list[str], str | list[str], dict[str, Any] | None]] = [
        (
            "Allow",
            ["iam:CreateServiceLinkedRole"],
            "*",
            {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}},
        ),
        (
            "Allow",
            [
                "ec2:DescribeAccountAttributes",
                "ec2:DescribeAddresses",
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeInternetGateways",
                "ec2:DescribeVpcs",
                "ec2:DescribeVpcPeeringConnections",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeInstances",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeTags",
                "ec2:GetCoipPoolUsage",
                "ec2:DescribeCoipPools",
                "ec2:GetSecurityGroupsForVpc",
                "ec2:DescribeIpamPools",
                "ec2:DescribeRouteTables",
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeListenerCertificates",
                "elasticloadbalancing:DescribeSSLPolicies",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeTags",
                "elasticloadbalancing:DescribeTrustStores",
                "elasticloadbalancing:DescribeListenerAttributes",
                "elasticloadbalancing:DescribeCapacityReservation",
            ],
            "*",
            None,
        ),
        # Node security groups get the NLB's ingress rules; the controller's own groups are tagged.
        ("Allow", ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"], "*", None),
        ("Allow", ["ec2:CreateSecurityGroup"], "*", None),
        (
            "Allow",
            ["ec2:CreateTags"],
            "arn:aws:ec2:*:*:security-group/*",
            {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup", **tagging_new["StringEquals"]}},
        ),
        ("Allow", ["ec2:CreateTags", "ec2:DeleteTags"], "arn:aws:ec2:*:*:security-group/*", own),
        (
            "Allow",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            "*",
            own,
        ),
        (
            "Allow",
            ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
            "*",
            tagging_new,
        ),
        ("Allow", ["elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener"], "*", None),
        ("Allow", ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"], balancers, own),
        (
            "Allow",
            ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            [f"{elb}listener/net/*/*/*", f"{elb}listener/app/*/*/*"],
            None,
        ),
        (
            "Allow",
            [
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                "elasticloadbalancing:SetIpAddressType",
                "elasticloadbalancing:SetSecurityGroups",
                "elasticloadbalancing:SetSubnets",
                "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:ModifyListenerAttributes",
                "elasticloadbalancing:ModifyCapacityReservation",
                "elasticloadbalancing:ModifyIpPools",
            ],
            "*",
            own,
        ),
        (
            "Allow",
            ["elasticloadbalancing:AddTags"],
            balancers,
            {
                "StringEquals": {
                    "elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"],
                    **tagging_new["StringEquals"],
                }
            },
        ),
        (
            "Allow",
            ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
            f"{elb}targetgroup/*/*",
            None,
        ),
        ("Allow", ["elasticloadbalancing:ModifyListener"], "*", None),
    ]
    assert all(effect == "Allow" for effect, *_ in statements)
    return [allow(actions, [res] if isinstance(res, str) else res, cond) for _, actions, res, cond in statements]


def _autoscaler_policy(cluster_name: pulumi.Output[str]) -> list[dict[str, Any]]:
    """Reads everywhere; scaling only on groups tagged as this cluster's (the autoscaler's
    auto-discovery tag)."""
    return [
        allow(
            [
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations",
                "autoscaling:DescribeScalingActivities",
                "autoscaling:DescribeTags",
                "ec2:DescribeImages",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:GetInstanceTypesFromInstanceRequirements",
                "eks:DescribeNodegroup",
            ]
        ),
        {
            **allow(["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]),
            "conditions": [
                {
                    "test": "StringEquals",
                    "variable": cluster_name.apply(lambda n: f"aws:ResourceTag/k8s.io/cluster-autoscaler/{n}"),
                    "values": ["owned"],
                }
            ],
        },
    ]


PROVIDER_KEY = "aws"
NEEDS_DEVICE_PLUGIN = True
STORAGE = StorageClasses(rwo="gp3", rwx=None)
GPU_DRIVER_HOST_DIR = None  # the EKS GPU AMI's container runtime injects the driver


def provider(name: str, site: Site, tags: dict[str, str], opts: pulumi.ResourceOptions) -> aws.Provider:
    return aws.Provider(name, region=site.region, default_tags={"tags": tags}, opts=opts)


def gpu_taints(pool: GpuPool) -> tuple[Taint, ...]:
    return (Taint(GPU_TAINT_KEY, "true", "NoSchedule"),)


def build_site(args: SiteArgs, opts: pulumi.ResourceOptions) -> SiteParts:
    site, tags = args.site, args.tags
    network = Network(f"{site.name}-net", NetworkArgs(site, tags), opts)
    cluster = Cluster(f"{site.name}-cluster", ClusterArgs(site, tags, network), opts)
    system, *gpu_groups = (
        NodeGroup(f"{site.name}-{pool.name}", NodeGroupArgs(site, tags, cluster, network, pool, disk_gb), opts)
        for pool, disk_gb in args.node_groups(with_system=True)
    )
    redis = Redis(f"{site.name}-redis", RedisArgs(site, tags, cluster, network), opts)
    registry = Registry(f"{site.name}-registry", RegistryArgs(site, tags, cluster, args.docker_hub), opts)
    return SiteParts(network, cluster, system, tuple(gpu_groups), redis, registry)


def lb_annotations(tags: dict[str, str]) -> dict[str, str]:
    # The AWS Load Balancer Controller's annotations (kubernetes-sigs/aws-load-balancer-controller
    # v3.5.0 docs/guide/service/annotations.md and nlb.md; read 2026-12-01): type `external` hands
    # the Service to the controller, `ip` targets send traffic straight to pod IPs on the VPC CNI,
    # the scheme defaults to internal, and cross-zone is a load-balancer attribute (the
    # cross-zone-load-balancing-enabled annotation is deprecated).
    return {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
        "service.beta.kubernetes.io/aws-load-balancer-attributes": "load_balancing.cross_zone.enabled=true",
        "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags": ",".join(
            f"{k}={v}" for k, v in tags.items()
        ),
    }


def build_addons(
    args: SiteArgs, parts: SiteParts, kubernetes: k8s.Provider, opts: pulumi.ResourceOptions
) -> tuple[pulumi.Resource, ...]:
    assert isinstance(parts.network, Network) and isinstance(parts.cluster, Cluster)
    assert isinstance(parts.system, NodeGroup)
    addons = ClusterAddons(
        f"{args.site.name}-addons",
        ClusterAddonsArgs(args.site, args.tags, parts.network, parts.cluster, parts.system, kubernetes),
        opts,
    )
    return (addons.storage_class, addons.load_balancer_controller)


def build_budget(cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions) -> aws.budgets.Budget:
    """A monthly cost budget over this stack's tagged spend, alerting on actual and forecast."""
    stack = pulumi.get_stack()
    tags = resource_tags(cfg, None)
    budget_provider = provider("budget-aws", site, tags, opts)
    notifications = [
        {
            "comparison_operator": "GREATER_THAN",
            "threshold": pct,
            "threshold_type": "PERCENTAGE",
            "notification_type": kind,
            "subscriber_email_addresses": cfg.budget.emails,
        }
        for kind, thresholds in (
            ("ACTUAL", cfg.budget.actual_thresholds_pct),
            ("FORECASTED", cfg.budget.forecast_thresholds_pct),
        )
        for pct in thresholds
    ]
    return aws.budgets.Budget(
        "budget-aws",
        name=f"llm-platform-{stack}",
        budget_type="COST",
        limit_amount=f"{amount:.2f}",
        limit_unit=cfg.budget.currency,
        time_unit="MONTHLY",
        # Counts only this stack's spend: the `stack` tag must be an active cost allocation tag.
        cost_filters=[{"name": "TagKeyValue", "values": [f"user:stack${stack}"]}],
        notifications=notifications,
        tags=tags,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=budget_provider)),
    )
