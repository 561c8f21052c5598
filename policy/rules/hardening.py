"""Cluster hardening each managed Kubernetes offers and the stack relies on: pods sign in to the
cloud as themselves, NetworkPolicy is enforced, people sign in through the cloud's identity
only, nodes boot verified with encrypted disks and no public addresses, and the cluster takes
upgrades. These are settings of one cloud's API each, so the rules read those fields directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs, Severity

from infra.plan import kinds
from policy.rules.facts import resource_rule

EKS_CLUSTER, GKE_CLUSTER, AKS_CLUSTER = (kinds.type_of(c, "cluster") for c in ("aws", "gcp", "azure"))
GKE_POOL, AKS_POOL = kinds.type_of("gcp", "pool"), kinds.type_of("azure", "pool")
EKS_ADDON = "aws:eks/addon:Addon"
# AKS network policy engines (learn.microsoft.com/azure/aks/use-network-policies; read 2026-12-02).
AKS_POLICY_ENGINES = ("cilium", "calico", "azure")
GKE_CHANNELS = ("RAPID", "REGULAR", "STABLE")


def _aks_pools(args: ResourceValidationArgs) -> Iterator[dict[str, Any]]:
    # AKS needs its system pool inline in the cluster; the rest are AgentPool resources.
    if args.resource_type == AKS_CLUSTER:
        yield from args.props.get("agentPoolProfiles") or []
    elif args.resource_type == AKS_POOL:
        yield args.props


def _workload_identity(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    if args.resource_type == GKE_CLUSTER:
        if not str((p.get("workloadIdentityConfig") or {}).get("workloadPool", "")).endswith(".svc.id.goog"):
            report("GKE Workload Identity is off (workloadIdentityConfig.workloadPool: <project>.svc.id.goog)")
    elif args.resource_type == AKS_CLUSTER:
        if not (p.get("oidcIssuerProfile") or {}).get("enabled"):
            report("AKS OIDC issuer is off (oidcIssuerProfile.enabled), which workload identity needs")
        if not ((p.get("securityProfile") or {}).get("workloadIdentity") or {}).get("enabled"):
            report("AKS workload identity is off (securityProfile.workloadIdentity.enabled)")


def _network_policy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    if args.resource_type == GKE_CLUSTER:
        # Dataplane V2 enforces NetworkPolicy itself; without it GKE needs the Calico add-on.
        calico = ((p.get("addonsConfig") or {}).get("networkPolicyConfig") or {}).get("disabled") is False
        if p.get("datapathProvider") != "ADVANCED_DATAPATH" and not calico:
            report("GKE does not enforce NetworkPolicy: use Dataplane V2 (datapathProvider: ADVANCED_DATAPATH)")
    elif args.resource_type == AKS_CLUSTER:
        engine = (p.get("networkProfile") or {}).get("networkPolicy")
        if engine not in AKS_POLICY_ENGINES:
            report(f"AKS does not enforce NetworkPolicy (networkProfile.networkPolicy: {engine!r})")
    elif args.resource_type == EKS_ADDON and p.get("addonName") == "vpc-cni":
        # The VPC CNI enforces NetworkPolicy only with its agent on (docs.aws.amazon.com/eks/latest/
        # userguide/cni-network-policy-configure.html; read 2026-12-01).
        config = json.loads(p.get("configurationValues") or "{}")
        if str(config.get("enableNetworkPolicy")).lower() != "true":
            report('the VPC CNI does not enforce NetworkPolicy (configurationValues enableNetworkPolicy: "true")')


def _central_sign_in(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    if args.resource_type == EKS_CLUSTER:
        mode = (p.get("accessConfig") or {}).get("authenticationMode")
        if mode != "API":
            report(f"EKS still reads the aws-auth ConfigMap (accessConfig.authenticationMode: {mode!r}); use API")
    elif args.resource_type == GKE_CLUSTER:
        certs = ((p.get("masterAuth") or {}).get("clientCertificateConfig") or {}).get("issueClientCertificate")
        if certs:
            report("GKE issues a client certificate, a credential outside IAM that cannot be revoked")
    elif args.resource_type == AKS_CLUSTER:
        aad = p.get("aadProfile") or {}
        if not p.get("disableLocalAccounts"):
            report("AKS keeps its local admin account (disableLocalAccounts: false)")
        if not (aad.get("managed") and aad.get("enableAzureRBAC")):
            report("AKS sign-in is not Entra ID with Azure RBAC (aadProfile.managed, aadProfile.enableAzureRBAC)")


def _nodes_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    if args.resource_type in (GKE_CLUSTER, GKE_POOL):
        if args.resource_type == GKE_CLUSTER and not p.get("enableShieldedNodes"):
            report("GKE Shielded Nodes are off (enableShieldedNodes)")
        node = p.get("nodeConfig") or {}
        shielded = node.get("shieldedInstanceConfig") or {}
        if not (shielded.get("enableSecureBoot") and shielded.get("enableIntegrityMonitoring")):
            report("GKE nodes boot without Secure Boot and integrity monitoring (nodeConfig.shieldedInstanceConfig)")
        if "/cryptoKeys/" not in str(node.get("bootDiskKmsKey") or ""):
            report("GKE node boot disks are not encrypted with the cluster's KMS key (nodeConfig.bootDiskKmsKey)")
    for pool in _aks_pools(args):
        name = pool.get("name") or args.name
        if not pool.get("enableEncryptionAtHost"):
            report(f"AKS pool {name}: temp disks and caches are not encrypted (enableEncryptionAtHost)")
        if pool.get("enableNodePublicIP"):
            report(f"AKS pool {name}: nodes have public IPs (enableNodePublicIP)")


def _auto_upgrade(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p = args.props
    if args.resource_type == GKE_CLUSTER:
        channel = (p.get("releaseChannel") or {}).get("channel")
        if channel not in GKE_CHANNELS:
            report(f"GKE is on no release channel ({channel!r}): it gets no automatic patch upgrades")
    elif args.resource_type == AKS_CLUSTER:
        channel = (p.get("autoUpgradeProfile") or {}).get("upgradeChannel")
        if channel in (None, "none"):
            report("AKS takes no automatic upgrades (autoUpgradeProfile.upgradeChannel: none)")


POLICIES = [
    resource_rule(
        "workload-identity",
        "Pods sign in to the cloud as their own identity (GKE Workload Identity, AKS workload identity).",
        _workload_identity,
        Severity.HIGH,
        "Enable the cluster's workload identity federation.",
    ),
    resource_rule(
        "network-policy-enforced",
        "The cluster's network plugin enforces the NetworkPolicies the stack ships.",
        _network_policy,
        Severity.HIGH,
        "Use GKE Dataplane V2, an AKS network policy engine, or the VPC CNI's network policy agent.",
    ),
    resource_rule(
        "central-sign-in",
        "People sign in to the cluster through the cloud's identity only: no local accounts or certificates.",
        _central_sign_in,
        Severity.HIGH,
        "EKS access entries (authenticationMode API), no GKE client certificate, AKS Entra ID with Azure RBAC.",
    ),
    resource_rule(
        "nodes-hardened",
        "Nodes boot verified, with disks encrypted by the cluster's key and no public IPs.",
        _nodes_hardened,
        Severity.MEDIUM,
        "GKE Shielded Nodes with Secure Boot and a CMEK boot disk; AKS encryption at host without node public IPs.",
    ),
    resource_rule(
        "cluster-auto-upgrade",
        "The cluster takes the cloud's automatic patch upgrades.",
        _auto_upgrade,
        Severity.MEDIUM,
        "Put GKE on a release channel and give AKS an upgrade channel other than none.",
    ),
]
