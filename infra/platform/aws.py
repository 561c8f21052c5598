"""An AWS site: VPC, EKS, managed node groups, ElastiCache, ECR, budget -> Platform."""

from __future__ import annotations

import ipaddress
import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.config import Site, StackConfig
from infra.platform import (
    GPU_TAINT_KEY,
    ImageRegistry,
    NodePool,
    Platform,
    POOL_LABEL,
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
from infra.charts import CLUSTER_AUTOSCALER

ZONES = 3
REDIS_NODE_TYPES = {"small": "cache.t4g.small", "medium": "cache.m7g.large", "large": "cache.r7g.xlarge"}
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
_MANAGED = "arn:aws:iam::aws:policy/"


def _assume_role(service: str, actions: tuple[str, ...] = ("sts:AssumeRole",)) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": list(actions)}],
        }
    )


class Network(pulumi.ComponentResource):
    """A VPC over three zones: public subnets for load balancers and NAT, private
    subnets for nodes and Redis, and NAT per zone or a single shared one."""

    def __init__(self, name: str, site: Site, tags: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Network", name, None, opts)
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
    """EKS with envelope-encrypted secrets, all control-plane logs, and an API endpoint
    that is private unless the config lists CIDRs allowed to reach it."""

    def __init__(self, name: str, site: Site, network: Network, tags: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.cluster_name = f"{pulumi.get_stack()}-{site.name}"
        self.key = aws.kms.Key(
            f"{name}-secrets",
            description=f"EKS secrets and volumes for {self.cluster_name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=child,
        )
        role = aws.iam.Role(f"{name}-cluster", assume_role_policy=_assume_role("eks.amazonaws.com"), tags=tags, opts=child)
        attach = aws.iam.RolePolicyAttachment(
            f"{name}-cluster", role=role.name, policy_arn=_MANAGED + "AmazonEKSClusterPolicy", opts=child
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
            role_arn=role.arn,
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
            opts=pulumi.ResourceOptions(parent=self, depends_on=[attach, logs]),
        )
        self.node_role = aws.iam.Role(
            f"{name}-node", assume_role_policy=_assume_role("ec2.amazonaws.com"), tags=tags, opts=child
        )
        self.node_policies = [
            aws.iam.RolePolicyAttachment(f"{name}-node-{p}", role=self.node_role.name, policy_arn=_MANAGED + p, opts=child)
            for p in (
                "AmazonEKSWorkerNodePolicy",
                "AmazonEKS_CNI_Policy",
                "AmazonEC2ContainerRegistryReadOnly",
                "AmazonSSMManagedInstanceCore",
            )
        ]
        self.register_outputs({"name": self.cluster.name, "endpoint": self.cluster.endpoint})

    def kubeconfig(self, region: str) -> pulumi.Output[str]:
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
    (pods cannot borrow the node's role) and encrypts the root volume."""

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        network: Network,
        pool: NodePool,
        disk_gb: int,
        gpu: bool,
        tags: dict[str, str],
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:aws:NodeGroup", name, None, opts)
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
                        "kms_key_id": cluster.key.arn,
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
        self.node_group = aws.eks.NodeGroup(
            f"{name}-ng",
            cluster_name=cluster.cluster.name,
            node_role_arn=cluster.node_role.arn,
            subnet_ids=[s.id for s in network.private_subnets],
            ami_type="AL2023_x86_64_NVIDIA" if gpu else "AL2023_x86_64_STANDARD",
            capacity_type="SPOT" if pool.spot else "ON_DEMAND",
            instance_types=[pool.instance_type],
            scaling_config={"min_size": pool.min_nodes, "max_size": pool.max_nodes, "desired_size": pool.min_nodes},
            labels=dict(pool.labels),
            taints=[
                {"key": t.key, "value": t.value, "effect": _EKS_EFFECT[t.effect]} for t in pool.taints
            ],
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            update_config={"max_unavailable": 1},
            tags=tags,
            # The cluster autoscaler owns the desired size once the group exists.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=cluster.node_policies, ignore_changes=["scalingConfig.desiredSize"]
            ),
        )
        self.register_outputs({"name": self.node_group.node_group_name})


_EKS_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}


class Redis(pulumi.ComponentResource):
    """ElastiCache Redis in the private subnets: TLS in transit, encrypted at rest, an
    AUTH token kept as a Pulumi secret, reachable only from the cluster's security group."""

    def __init__(
        self, name: str, site: Site, network: Network, cluster: Cluster, tags: dict[str, str], opts: pulumi.ResourceOptions
    ):
        super().__init__("llm-platform:aws:Redis", name, None, opts)
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
            f"{name}-sg", description=f"{name}: Redis from the EKS cluster only", vpc_id=network.vpc.id, tags=tags, opts=child
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
        self.register_outputs({"host": self.group.primary_endpoint_address})


class Registry(pulumi.ComponentResource):
    """ECR repositories for the images this project builds, immutable and scanned."""

    IMAGES = ("gateway",)

    def __init__(self, name: str, key: aws.kms.Key, tags: dict[str, str], opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:aws:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = f"llm-platform-{pulumi.get_stack()}"
        self.repositories = {}
        for image in self.IMAGES:
            repo = aws.ecr.Repository(
                f"{name}-{image}",
                name=f"{prefix}/{image}",
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}],
                tags=tags,
                opts=child,
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{image}",
                repository=repo.name,
                policy=json.dumps(
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
                ),
                opts=child,
            )
            self.repositories[image] = repo
        gateway_url = self.repositories["gateway"].repository_url
        self.prefix = gateway_url.apply(lambda url: url.rsplit("/", 1)[0])
        self.register_outputs({"prefix": self.prefix})


class ClusterAddons(pulumi.ComponentResource):
    """Managed EKS add-ons, the EBS CSI driver's identity, the default storage class, and
    the cluster autoscaler (EKS, unlike GKE and AKS, has none built in)."""

    def __init__(
        self,
        name: str,
        site: Site,
        cluster: Cluster,
        system: NodeGroup,
        provider: k8s.Provider,
        tags: dict[str, str],
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:aws:ClusterAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        eks_name = cluster.cluster.name
        pod_trust = _assume_role("pods.eks.amazonaws.com", ("sts:AssumeRole", "sts:TagSession"))

        def addon(addon_name: str, after: list[pulumi.Resource], **kwargs) -> aws.eks.Addon:
            return aws.eks.Addon(
                f"{name}-{addon_name}",
                cluster_name=eks_name,
                addon_name=addon_name,
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after),
                **kwargs,
            )

        # Networking first: nodes cannot become Ready without the CNI.
        network_addons = [addon(a, []) for a in ("vpc-cni", "kube-proxy", "eks-pod-identity-agent")]
        ebs_role = aws.iam.Role(f"{name}-ebs-csi", assume_role_policy=pod_trust, tags=tags, opts=child)
        aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi",
            role=ebs_role.name,
            policy_arn=_MANAGED + "service-role/AmazonEBSCSIDriverPolicy",
            opts=child,
        )
        self.addons = network_addons + [
            addon("coredns", [system.node_group]),
            addon(
                "aws-ebs-csi-driver",
                [system.node_group],
                pod_identity_associations=[{"role_arn": ebs_role.arn, "service_account": "ebs-csi-controller-sa"}],
            ),
        ]
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

        autoscaler_role = aws.iam.Role(f"{name}-autoscaler", assume_role_policy=pod_trust, tags=tags, opts=child)
        aws.iam.RolePolicy(
            f"{name}-autoscaler",
            role=autoscaler_role.id,
            policy=eks_name.apply(_autoscaler_policy),
            opts=child,
        )
        aws.eks.PodIdentityAssociation(
            f"{name}-autoscaler",
            cluster_name=eks_name,
            namespace="kube-system",
            service_account="cluster-autoscaler",
            role_arn=autoscaler_role.arn,
            tags=tags,
            opts=child,
        )
        self.autoscaler = k8s.helm.v3.Release(
            f"{name}-cluster-autoscaler",
            name="cluster-autoscaler",
            chart=CLUSTER_AUTOSCALER.chart,
            version=CLUSTER_AUTOSCALER.version,
            repository_opts={"repo": CLUSTER_AUTOSCALER.repo},
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
        self.register_outputs({})


def _autoscaler_policy(cluster_name: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
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
                    ],
                    "Resource": ["*"],
                },
                {
                    "Effect": "Allow",
                    "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
                    "Resource": ["*"],
                    "Condition": {
                        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
                    },
                },
            ],
        }
    )


def build(cfg: StackConfig, site: Site, secrets: Secrets, opts: pulumi.ResourceOptions) -> Platform:
    tags = resource_tags(cfg, site)
    site_component = pulumi.ComponentResource("llm-platform:aws:Site", site.name, None, opts)
    provider = aws.Provider(
        f"{site.name}-aws",
        region=site.region,
        default_tags={"tags": tags},
        opts=pulumi.ResourceOptions(parent=site_component),
    )
    child = pulumi.ResourceOptions(parent=site_component, providers={"aws": provider})

    network = Network(f"{site.name}-net", site, tags, child)
    cluster = Cluster(f"{site.name}-cluster", site, network, tags, child)
    system_pool = system_node_pool(site)
    system = NodeGroup(f"{site.name}-system", cluster, network, system_pool, site.system_pool.disk_gb, False, tags, child)
    gpu_pools = tuple(gpu_node_pool(site, p, (Taint(GPU_TAINT_KEY, "true", "NoSchedule"),)) for p in site.gpu_pools)
    groups = [
        NodeGroup(f"{site.name}-{pool.name}", cluster, network, pool, spec.disk_gb, True, tags, child)
        for pool, spec in zip(gpu_pools, site.gpu_pools)
    ]
    kubeconfig = cluster.kubeconfig(site.region)
    k8s_provider = k8s.Provider(
        f"{site.name}-k8s",
        kubeconfig=kubeconfig,
        opts=pulumi.ResourceOptions(parent=site_component, depends_on=[system.node_group]),
    )
    addons = ClusterAddons(f"{site.name}-addons", site, cluster, system, k8s_provider, tags, child)
    redis = Redis(f"{site.name}-redis", site, network, cluster, tags, child)
    registry = Registry(f"{site.name}-registry", cluster.key, tags, child)
    site_component.register_outputs({"cluster": cluster.cluster.name})

    tag_list = ",".join(f"{k}={v}" for k, v in tags.items())
    return Platform(
        site=site,
        provider=k8s_provider,
        cluster_name=cluster.cluster.name,
        kubeconfig=kubeconfig,
        system_pool=system_pool,
        gpu_pools=gpu_pools,
        redis=RedisEndpoint(host=redis.group.primary_endpoint_address, port=6379, tls=True, auth_token=redis.token.result),
        lb_annotations={
            "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
            "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
            "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
            "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags": tag_list,
        },
        storage=StorageClasses(rwo="gp3", rwx=None),
        # Placeholder until the site's pull-through cache and push login are built.
        images=ImageRegistry(
            own=registry.prefix,
            docker_hub=pulumi.Output.from_input("docker.io"),
            login=RegistryLogin(registry.prefix, pulumi.Output.from_input(""), pulumi.Output.secret("")),
        ),
        needs_device_plugin=True,
        ready=(addons.storage_class, *(g.node_group for g in groups)),
    )


def build_budget(cfg: StackConfig, amount: float, site: Site, opts: pulumi.ResourceOptions) -> aws.budgets.Budget:
    """A monthly cost budget over this stack's tagged spend, alerting on actual and forecast."""
    stack = pulumi.get_stack()
    tags = resource_tags(cfg, None)
    provider = aws.Provider("budget-aws", region=site.region, default_tags={"tags": tags}, opts=opts)
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
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider)),
    )
