"""Security rules: cluster access, encryption, node metadata, Redis, identities, containers."""

from __future__ import annotations

import json

from pulumi_policy import ReportViolation, ResourceValidationArgs, Severity

from infra.plan import kinds
from infra.plan.kinds import ClusterRecord, RedisRecord
from policy.rules.facts import SECRETISH_ENV, WORKLOADS, containers, is_open, pod_spec, resource_rule

# What each rule tells a cluster of each cloud; a cloud without an entry is not checked for it.
_PUBLIC_ENDPOINT = {
    "aws": "EKS API endpoint is public to the internet; set sites[].apiAllowedCidrs or leave it empty for private only",
    "gcp": "GKE control plane is reachable from anywhere; use a private endpoint or authorized networks",
    "azure": "AKS API server is public to the internet; set authorized IP ranges or a private cluster",
}
_SECRETS_PLAIN = {
    "aws": "EKS secrets are not envelope-encrypted with a KMS key (encryptionConfig.resources: [secrets])",
    "gcp": "GKE application-layer secrets encryption is off (databaseEncryption.state: ENCRYPTED)",
}
_EKS_LOGS = {"api", "audit", "authenticator"}
_GKE_LOGS = {"APISERVER", "SYSTEM_COMPONENTS"}  # either one logs the API server
# Per cloud, in the order they are reported: (the Redis record's failing check, message).
_REDIS_PROBLEMS = {
    "aws": [
        (lambda r: not r.tls, "ElastiCache without TLS in transit"),
        (lambda r: not r.auth, "ElastiCache without an AUTH token or user group"),
    ],
    "gcp": [
        (lambda r: not r.auth, "Memorystore AUTH is off"),
        (lambda r: not r.tls, "Memorystore without TLS (transitEncryptionMode: SERVER_AUTHENTICATION)"),
    ],
    "azure": [(lambda r: r.public, "Azure Managed Redis allows public network access")],
}


def _cluster(args: ResourceValidationArgs) -> ClusterRecord | None:
    if kinds.concept_of(args.resource_type) != "cluster":
        return None
    record = kinds.read(args.resource_type, args.props, args.name)
    return record if isinstance(record, ClusterRecord) else None


def _redis_of(args: ResourceValidationArgs) -> RedisRecord | None:
    if kinds.concept_of(args.resource_type) != "redis":
        return None
    record = kinds.read(args.resource_type, args.props, args.name)
    return record if isinstance(record, RedisRecord) else None


def _cluster_endpoint(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cluster = _cluster(args)
    if cluster and cluster.public_endpoint and cluster.cloud in _PUBLIC_ENDPOINT:
        report(_PUBLIC_ENDPOINT[cluster.cloud])


def _secrets_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cluster = _cluster(args)
    if cluster and not cluster.secrets_encrypted and cluster.cloud in _SECRETS_PLAIN:
        report(_SECRETS_PLAIN[cluster.cloud])


def _control_plane_logging(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cluster = _cluster(args)
    if cluster is None:
        return
    if cluster.cloud == "aws":
        missing = _EKS_LOGS - set(cluster.log_types)
        if missing:
            report(f"EKS control-plane logs missing: {', '.join(sorted(missing))}")
    elif cluster.cloud == "gcp" and not _GKE_LOGS & set(cluster.log_types):
        report("GKE control-plane logging is off (loggingConfig.enableComponents)")


def _node_metadata(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    cluster = _cluster(args)
    if args.resource_type == "aws:ec2/launchTemplate:LaunchTemplate":
        meta = p.get("metadataOptions") or {}
        if meta.get("httpTokens") != "required" or meta.get("httpPutResponseHopLimit", 2) > 1:
            report(
                "node metadata must require IMDSv2 (httpTokens: required) with hop limit 1, "
                "so pods cannot use the node role"
            )
    elif args.resource_type == kinds.type_of("gcp", "pool"):
        mode = ((p.get("nodeConfig") or {}).get("workloadMetadataConfig") or {}).get("mode")
        if mode != "GKE_METADATA":
            report("GKE node pool must use the GKE metadata server (workloadMetadataConfig.mode: GKE_METADATA)")
    elif args.resource_type == "aws:ec2/subnet:Subnet":
        if p.get("mapPublicIpOnLaunch"):
            report("subnet gives instances public IPs on launch; nodes must not have public addresses")
    elif cluster and cluster.private_nodes is False:
        # Only GKE's cluster resource decides whether nodes get public IPs.
        report("GKE nodes have public IPs (privateClusterConfig.enablePrivateNodes)")


def _disks_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    redis = _redis_of(args)
    if args.resource_type == "aws:ec2/launchTemplate:LaunchTemplate":
        for block in p.get("blockDeviceMappings") or []:
            if str((block.get("ebs") or {}).get("encrypted")).lower() != "true":
                report(f"node volume {block.get('deviceName')} is not encrypted")
    elif redis and not redis.at_rest_encrypted:
        report(f"{kinds.product(redis.cloud, 'redis')} data at rest is not encrypted")


def _redis(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    t = args.resource_type
    redis = _redis_of(args)
    if redis:
        for failing, message in _REDIS_PROBLEMS[redis.cloud]:
            if failing(redis):
                report(message)
    elif t == "aws:ec2/securityGroup:SecurityGroup" or t == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        rules = p.get("ingress") or [p]
        for rule in rules:
            ports = range(int(rule.get("fromPort", 0) or 0), int(rule.get("toPort", 65535) or 65535) + 1)
            cidrs = rule.get("cidrBlocks") or [rule.get("cidrIpv4"), rule.get("cidrIpv6")]
            if 6379 in ports and is_open(cidrs):
                report("Redis port 6379 is open to the internet")
    elif t.startswith(("azure-native:redisenterprise", "azure-native:cache")) and t.endswith(":Database"):
        if p.get("clientProtocol") == "Plaintext":
            report("Azure Managed Redis database takes plaintext connections")


def _least_privilege(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    t = args.resource_type
    if t in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy"):
        doc = p.get("policy")
        doc = json.loads(doc) if isinstance(doc, str) else doc or {}
        for st in doc.get("Statement", []):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if st.get("Effect") == "Allow" and any(a == "*" or a.endswith(":*") for a in actions):
                report(f"IAM policy allows wildcard actions {actions}; list the actions needed")
    elif t == "aws:iam/rolePolicyAttachment:RolePolicyAttachment":
        if str(p.get("policyArn", "")).endswith(("/AdministratorAccess", "/PowerUserAccess")):
            report(f"role gets {p['policyArn']}; attach a narrower policy")
    elif t == kinds.type_of("gcp", "pool"):
        sa = (p.get("nodeConfig") or {}).get("serviceAccount") or "default"
        if sa == "default" or sa.endswith("-compute@developer.gserviceaccount.com"):
            report("GKE nodes use the default compute service account; give them a dedicated one")
    elif t.startswith("gcp:projects/iAM") and p.get("role") in ("roles/owner", "roles/editor"):
        report(f"{p.get('member')} gets {p.get('role')}; grant a narrower role")
    elif t in WORKLOADS:
        spec = pod_spec(p) or {}
        if spec.get("serviceAccountName") in (None, "default") and spec.get("automountServiceAccountToken", True):
            report(
                "pod mounts the namespace's default service account token; disable automount or use a dedicated account"
            )


def _containers_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS:
        return
    spec = pod_spec(args.props) or {}
    pod_ctx = spec.get("securityContext") or {}
    for c in containers(spec):
        ctx = c.get("securityContext") or {}
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            report(f"container {c['name']} may run as root (runAsNonRoot)")
        if ctx.get("allowPrivilegeEscalation", True) or ctx.get("privileged"):
            report(f"container {c['name']} allows privilege escalation")
        requests = (c.get("resources") or {}).get("requests") or {}
        if not {"cpu", "memory"} <= set(requests):
            report(f"container {c['name']} does not request CPU and memory")


def _no_secret_env(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS:
        return
    for c in containers(pod_spec(args.props) or {}):
        for env in c.get("env") or []:
            if SECRETISH_ENV.search(env.get("name", "")) and "value" in env:
                report(f"container {c['name']} sets {env['name']} as a plain value; use valueFrom.secretKeyRef")


def _images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS:
        return
    for c in containers(pod_spec(args.props) or {}):
        image = c.get("image", "")
        name = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
            report(f"container {c['name']} image {image!r} is not pinned to a version tag or digest")


POLICIES = [
    resource_rule(
        "cluster-endpoint-restricted",
        "The Kubernetes API endpoint is private or limited to listed CIDRs.",
        _cluster_endpoint,
        Severity.CRITICAL,
        "Set sites[].apiAllowedCidrs to your ranges, or [] for a private endpoint.",
    ),
    resource_rule(
        "kubernetes-secrets-encrypted",
        "Kubernetes Secrets are envelope-encrypted with a KMS key.",
        _secrets_encrypted,
        Severity.HIGH,
        "Enable secrets encryption with a customer-managed KMS key on the cluster.",
    ),
    resource_rule(
        "control-plane-logging",
        "Control-plane API, audit and authenticator logs are on.",
        _control_plane_logging,
        Severity.MEDIUM,
        "Enable the API server, audit and authenticator log types.",
    ),
    resource_rule(
        "node-metadata-protected",
        "Nodes protect their metadata and credentials and have no public IPs.",
        _node_metadata,
        Severity.HIGH,
        "Require IMDSv2 with hop limit 1 (AWS), the GKE metadata server, private nodes.",
    ),
    resource_rule(
        "disks-encrypted",
        "Node and cache disks are encrypted at rest.",
        _disks_encrypted,
        Severity.HIGH,
        "Set encrypted volumes in the launch template and at-rest encryption on Redis.",
    ),
    resource_rule(
        "redis-tls-auth-private",
        "Redis requires TLS and auth and is not reachable from the internet.",
        _redis,
        Severity.CRITICAL,
        "Enable TLS and AUTH; allow Redis only from the cluster's network.",
    ),
    resource_rule(
        "least-privilege-identities",
        "No wildcard IAM, no admin policies, no default service accounts.",
        _least_privilege,
        Severity.HIGH,
        "List the actions and resources each identity needs; use dedicated service accounts.",
    ),
    resource_rule(
        "containers-hardened",
        "Containers run as non-root, cannot escalate privileges, and request resources.",
        _containers_hardened,
        Severity.HIGH,
        "Set runAsNonRoot, allowPrivilegeEscalation: false and CPU/memory requests.",
    ),
    resource_rule(
        "no-secret-env-literal",
        "No secret is a plain environment value.",
        _no_secret_env,
        Severity.CRITICAL,
        "Put the value in a Kubernetes Secret and use valueFrom.secretKeyRef.",
    ),
    resource_rule(
        "images-pinned",
        "Container images are pinned to a version tag or digest, never latest.",
        _images_pinned,
        Severity.MEDIUM,
        "Use an explicit version tag (images.*) or an @sha256 digest.",
    ),
]
