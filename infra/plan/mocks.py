"""The recording monitor and the mock provider answers that let the program run offline.

`RecordingMonitor` is the SDK's own MockMonitor plus a record of every registration: its
type, name, parent, provider, dependencies and inputs, with secret values masked at the
moment they arrive so nothing downstream can leak them. `PlanMocks` answers as the real
providers would in shape (ids, ARNs, endpoints, load-balancer status), so every Output in
the program resolves and every reader of the graph sees realistic values.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pulumi.runtime import mocks as sdk_mocks
from pulumi.runtime import rpc

from infra.plan.graph import SECRET, Graph, Resource

ACCOUNT_ID = "123456789012"
PROJECT_ID = "llm-platform-project"
PROJECT_NUMBER = "412345678901"
SUBSCRIPTION_ID = "00000000-0000-4000-8000-000000000001"
TENANT_ID = "00000000-0000-4000-8000-0000000000aa"
DEPLOYER_OBJECT_ID = "00000000-0000-4000-8000-0000000000de"
# What a kubeconfig's exec plugin says about the cloud behind a Kubernetes provider.
_EXEC_CLOUDS = {"aws": "aws", "gke-gcloud-auth-plugin": "gcp", "kubelogin": "azure"}


def _short(seed: str, n: int = 8) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def mask_secrets(value: Any) -> tuple[Any, bool]:
    """Replace every RPC-wrapped secret with SECRET; report whether any was found.

    Numbers cross the wire as protobuf doubles; whole ones come back as ints, as written."""
    if rpc.is_rpc_secret(value):
        return SECRET, True
    if isinstance(value, float) and value.is_integer():
        return int(value), False
    if isinstance(value, dict):
        found = False
        out = {}
        for k, v in value.items():
            out[k], f = mask_secrets(v)
            found |= f
        return out, found
    if isinstance(value, list):
        pairs = [mask_secrets(v) for v in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    return value, False


def _plain(value: Any) -> Any:
    """Inputs with secrets unwrapped: what a provider would see."""
    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class PlanMocks(sdk_mocks.Mocks):
    def __init__(self) -> None:
        self.provider_regions: dict[str, str] = {}
        self.provider_projects: dict[str, str] = {}
        self.provider_clouds: dict[str, str] = {}  # Kubernetes provider id -> the cloud of its cluster

    @staticmethod
    def _ref_id(provider_ref: str | None) -> str:
        return (provider_ref or "").rsplit("::", 1)[-1]

    def _region(self, provider_ref: str | None, default: str = "us-east-1") -> str:
        if not provider_ref:
            return default
        return self.provider_regions.get(provider_ref.rsplit("::", 1)[-1], default)

    def new_resource(self, args: sdk_mocks.MockResourceArgs) -> tuple[str, dict]:
        inputs = _plain(args.inputs)
        typ, name = args.typ, args.name
        rid = f"{name}-{_short(typ + name)}"
        state = dict(inputs)
        if typ.startswith("pulumi:providers:"):
            rid = f"provider-{_short(name)}"
            self.provider_regions[rid] = inputs.get("region") or inputs.get("location") or "us-east-1"
            self.provider_projects[rid] = inputs.get("project") or PROJECT_ID
            if typ == "pulumi:providers:kubernetes":
                self.provider_clouds[rid] = _kubeconfig_cloud(inputs.get("kubeconfig"))
            return rid, state
        region = self._region(args.provider)
        if typ == "docker-build:index:Image":
            # A pushed image is known by its first tag and the digest the registry gave it.
            digest = "sha256:" + hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
            tags = inputs.get("tags") or []
            state.update(digest=digest, ref=f"{tags[0].rsplit(':', 1)[0]}@{digest}" if tags else digest)
            return f"image-{_short(name)}", state
        if typ.startswith("gcp:"):
            return _gcp_resource(
                typ, name, inputs, state, region, self.provider_projects.get(self._ref_id(args.provider), PROJECT_ID)
            )
        if typ.startswith("azure-native:"):
            return _azure_resource(typ, name, inputs, state, region)
        arn = f"arn:aws:{typ.split(':')[1].split('/')[0]}:{region}:{ACCOUNT_ID}:{name}"
        if typ.startswith("aws:"):
            state.setdefault("arn", arn)
            state.setdefault("tagsAll", inputs.get("tags", {}))
        if typ == "aws:eks/cluster:Cluster":
            state["endpoint"] = f"https://{_short(name, 32).upper()}.gr7.{region}.eks.amazonaws.com"
            state["certificateAuthority"] = {"data": base64.b64encode(b"mock-ca-" + name.encode()).decode()}
            state["vpcConfig"] = {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{_short(name, 17)}"}
            state["identities"] = [
                {"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/{_short(name, 32)}"}]}
            ]
        elif typ == "aws:iam/role:Role":
            state["name"] = inputs.get("name") or f"{name}-{_short(name, 7)}"
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{state['name']}"
            rid = state["name"]
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
            rid = f"lt-{_short(name, 17)}"
        elif typ == "aws:eks/nodeGroup:NodeGroup":
            state["nodeGroupName"] = inputs.get("nodeGroupName") or f"{name}-{_short(name, 7)}"
            # EKS names the group's Auto Scaling group eks-<node group>-<uuid>.
            asg = f"eks-{state['nodeGroupName']}-{_short(name + '-asg', 8)}-{_short(name + '-asg2', 4)}"
            state["resources"] = [{"autoscalingGroups": [{"name": asg}]}]
        elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            state["primaryEndpointAddress"] = f"master.{name}.{_short(name, 6)}.{region}.cache.amazonaws.com"
            state["readerEndpointAddress"] = f"replica.{name}.{_short(name, 6)}.{region}.cache.amazonaws.com"
        elif typ == "aws:elasticache/subnetGroup:SubnetGroup":
            state["name"] = inputs.get("name") or f"{name}-{_short(name, 7)}"
        elif typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/{inputs.get('name', name)}"
            state["registryId"] = ACCOUNT_ID
        elif typ == "aws:secretsmanager/secret:Secret":
            # Secrets Manager appends a six-character suffix to the secret's name in its ARN.
            secret_name = inputs.get("name") or f"{name}-{_short(name, 7)}"
            state["arn"] = f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{secret_name}-{_short(name, 6)}"
            rid = state["arn"]
        elif typ == "aws:iam/policy:Policy":
            state["name"] = inputs.get("name") or f"{name}-{_short(name, 7)}"
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:policy/{state['name']}"
            rid = state["arn"]
        elif typ.startswith("aws:ec2/"):
            prefix = {"vpc": "vpc", "subnet": "subnet", "securityGroup": "sg", "natGateway": "nat", "eip": "eipalloc"}
            kind = typ.split("/")[1].split(":")[0]
            rid = f"{prefix.get(kind, kind)}-{_short(name, 17)}"
        elif typ == "random:index/randomPassword:RandomPassword":
            length = int(inputs.get("length", 32))
            state["result"] = rpc.wrap_rpc_secret((hashlib.sha256(name.encode()).hexdigest() * 4)[:length])
        elif typ == "random:index/randomString:RandomString":
            state["result"] = _short(name, int(inputs.get("length", 8)))
        elif typ == "kubernetes:core/v1:Service":
            if (inputs.get("spec") or {}).get("type") == "LoadBalancer":
                # AWS load balancers answer with a hostname; GCP and Azure with an address.
                if self.provider_clouds.get(self._ref_id(args.provider), "aws") == "aws":
                    ingress = {"hostname": f"{_short(name, 32)}.elb.{region}.amazonaws.com"}
                else:
                    ingress = {
                        "ip": _ip(
                            "34" if self.provider_clouds.get(self._ref_id(args.provider)) == "gcp" else "20", name
                        )
                    }
                state["status"] = {"loadBalancer": {"ingress": [ingress]}}
        return rid, state

    def call(self, args: sdk_mocks.MockCallArgs) -> tuple[dict, list | None]:
        region = args.args.get("region") or self._region(args.provider)
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{region}{z}" for z in "abc"]
            return {
                "id": region,
                "names": names,
                "zoneIds": [f"use1-az{i}" for i in range(1, 4)],
                "groupNames": names,
            }, []
        if args.token == "aws:iam/getPolicyDocument:getPolicyDocument":
            rendered = policy_document_json(args.args)
            return {"id": _short(rendered, 10), "json": rendered, "minifiedJson": _minified(rendered)}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/plan", "userId": "PLAN"}, []
        if args.token == "aws:kms/getKey:getKey":
            # DescribeKey on a predefined alias (alias/aws/ebs) answers with the AWS managed key.
            h = _short("kms-" + region + args.args.get("keyId", ""), 32)
            key_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            arn = f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{key_id}"
            manager = "AWS" if args.args.get("keyId", "").startswith("alias/aws/") else "CUSTOMER"
            return {"id": key_id, "arn": arn, "keyManager": manager, "enabled": True, "keyState": "Enabled"}, []
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            # Offline there is no EKS to name its default version: a placeholder of the right shape.
            minor = args.args.get("kubernetesVersion", "")
            version = f"v0.0.0-offline.{minor}"
            return {
                "id": args.args.get("addonName", ""),
                "addonName": args.args.get("addonName", ""),
                "kubernetesVersion": minor,
                "version": version,
                "mostRecent": False,
            }, []
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            password = mock_ecr_password(region)
            return {
                "id": region,
                "userName": "AWS",
                "password": password,
                "authorizationToken": base64.b64encode(f"AWS:{password}".encode()).decode(),
                "proxyEndpoint": f"https://{args.args.get('registryId') or ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com",
                "expiresAt": "2026-12-01T12:00:00Z",
            }, []
        if args.token == "gcp:organizations/getProject:getProject":
            project = args.args.get("projectId") or self.provider_projects.get(self._ref_id(args.provider), PROJECT_ID)
            return {"projectId": project, "number": PROJECT_NUMBER, "name": project, "id": f"projects/{project}"}, []
        if args.token == "gcp:container/getEngineVersions:getEngineVersions":
            return gke_server_config(args.args.get("versionPrefix") or "", args.args.get("location") or region), []
        if args.token == "gcp:organizations/getClientConfig:getClientConfig":
            project = self.provider_projects.get(self._ref_id(args.provider), PROJECT_ID)
            return {
                "accessToken": MOCK_GCP_ACCESS_TOKEN,
                "project": project,
                "region": region,
                "zone": "",
                "defaultLabels": {},
                "id": f"projects/{project}/regions/{region}/zones/",
            }, []
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": "00000000-0000-4000-8000-0000000000c1",
                "objectId": DEPLOYER_OBJECT_ID,
                "subscriptionId": SUBSCRIPTION_ID,
                "tenantId": TENANT_ID,
            }, []
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            cluster = args.args["resourceName"]
            server = f"https://{cluster}-{_short(cluster, 8)}.hcp.{region}.azmk8s.io:443"
            kubeconfig = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _mock_ca(cluster)}}
                ],
                "users": [{"name": f"clusterUser_{cluster}", "user": {"exec": {"command": "kubelogin"}}}],
            }
            value = base64.b64encode(json.dumps(kubeconfig).encode()).decode()
            return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}, []
        if args.token == "azure-native:redisenterprise:listDatabaseKeys":
            seed = args.args["clusterName"]
            return {"primaryKey": _mock_key(seed + "-primary"), "secondaryKey": _mock_key(seed + "-secondary")}, []
        if args.token == "azure-native:authorization:getClientToken":
            return {"token": MOCK_AZURE_ACCESS_TOKEN}, []
        raise NotImplementedError(
            f"the offline plan has no answer for invoke {args.token}; add one in infra/plan/mocks.py"
        )


def policy_document_json(args: dict[str, Any]) -> str:
    """The JSON the AWS provider's getPolicyDocument answers with, rendered by the same rules
    (hashicorp/terraform-provider-aws internal/service/iam/policy_document_data_source.go and
    policy_model.go, main at 084fd7b; read 2026-12-02): Version defaults to 2012-10-17 and
    Effect to Allow; actions, resources and principal identifiers are sets, written as a string
    when there is one and otherwise sorted in reverse; condition values keep their order and a
    single one is written as a string; maps (Principal, Condition) have sorted keys, as Go
    writes them; two-space indents from json.MarshalIndent, with Go's escaping of <, > and &."""

    def strings(values: list[str]) -> str | list[str]:
        unique = sorted(set(values), reverse=True)
        return unique[0] if len(unique) == 1 else unique

    def principals(items: list[dict[str, Any]]) -> str | dict[str, Any]:
        if len(items) == 1 and items[0]["type"] == "*" and items[0]["identifiers"] == ["*"]:
            return "*"
        out: dict[str, Any] = {}
        for item in items:
            ids = strings(item["identifiers"])
            if item["type"] in out:  # the same type twice: its identifiers become one list
                held = out[item["type"]]
                out[item["type"]] = [
                    *([held] if isinstance(held, str) else held),
                    *([ids] if isinstance(ids, str) else ids),
                ]
            else:
                out[item["type"]] = ids
        return dict(sorted(out.items()))

    def conditions(items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, dict[str, list[str]]] = {}
        for c in items:
            out.setdefault(c["test"], {}).setdefault(c["variable"], []).extend(c.get("values") or [])
        return {
            test: {var: vals[0] if len(vals) == 1 else vals for var, vals in sorted(pairs.items())}
            for test, pairs in sorted(out.items())
        }

    doc: dict[str, Any] = {"Version": args.get("version") or "2012-10-17"}
    if args.get("policyId"):
        doc["Id"] = args["policyId"]
    statements = []
    for st in args.get("statements") or []:
        out: dict[str, Any] = {}
        if st.get("sid"):
            out["Sid"] = st["sid"]
        out["Effect"] = st.get("effect") or "Allow"
        for key, field in (
            ("actions", "Action"),
            ("notActions", "NotAction"),
            ("resources", "Resource"),
            ("notResources", "NotResource"),
        ):
            if st.get(key):
                out[field] = strings(st[key])
        for key, field in (("principals", "Principal"), ("notPrincipals", "NotPrincipal")):
            if st.get(key):
                out[field] = principals(st[key])
        if st.get("conditions"):
            out["Condition"] = conditions(st["conditions"])
        statements.append(out)
    if statements:
        doc["Statement"] = statements
    return _go_escape(json.dumps(doc, indent=2, ensure_ascii=False))


def _minified(rendered: str) -> str:
    return _go_escape(json.dumps(json.loads(rendered), separators=(",", ":"), ensure_ascii=False))


def _go_escape(text: str) -> str:
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def mock_ecr_password(region: str) -> str:
    """The registry password the mock ECR answers with; tests check it never reaches the plan."""
    return "ecr-password-" + _short(region, 24)


# The Entra access token the mock Azure credentials answer with; tests check it never reaches the plan.
MOCK_AZURE_ACCESS_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.mock-azure-access-token."


def mock_redis_key(seed: str) -> str:
    """The access key the mock Azure Managed Redis database answers with (seeded by the cache's
    name); tests check it never reaches the plan."""
    return _mock_key(seed + "-primary")


def _mock_key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def _mock_ca(seed: str) -> str:
    return base64.b64encode(
        b"-----BEGIN CERTIFICATE-----\nmock-ca-" + seed.encode() + b"\n-----END CERTIFICATE-----\n"
    ).decode()


def _ip(first: str, seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return f"{first}.{digest[0]}.{digest[1]}.{digest[2] % 254 + 1}"


def _kubeconfig_cloud(kubeconfig: Any) -> str:
    try:
        users = json.loads(kubeconfig)["users"]
        command = users[0]["user"]["exec"]["command"]
    except (TypeError, ValueError, KeyError, IndexError):
        return "aws"
    return _EXEC_CLOUDS.get(command, "aws")


def mock_auth_string(name: str) -> str:
    """The AUTH string the mock Memorystore answers with; tests check it never reaches the plan."""
    return "memorystore-auth-" + _short(name, 24)


# The OAuth access token the mock gcloud credentials answer with; tests check it never reaches the plan.
MOCK_GCP_ACCESS_TOKEN = "ya29.mock-gcp-access-token"


def gke_server_config(prefix: str, location: str) -> dict:
    """GKE's versions as the engine-versions data source answers for `prefix` ("1.34."): offline,
    every channel offers the minor asked for, at a patch shaped like GKE's. Which minors a
    channel really offers is known only live; `pulumi preview` asks GKE itself."""
    minor = prefix.rstrip(".") or "1.34"
    version = f"{minor}.5-gke.1200000"
    channels = ("RAPID", "REGULAR", "STABLE", "EXTENDED")
    return {
        "location": location,
        "versionPrefix": prefix,
        "project": PROJECT_ID,
        "id": f"{location}-{prefix}",
        "defaultClusterVersion": version,
        "latestMasterVersion": version,
        "latestNodeVersion": version,
        "validMasterVersions": [version],
        "validNodeVersions": [version],
        "releaseChannelDefaultVersion": dict.fromkeys(channels, version),
        "releaseChannelLatestVersion": dict.fromkeys(channels, version),
        "releaseChannelUpgradeTargetVersion": dict.fromkeys(channels, version),
    }


def _gcp_resource(typ: str, name: str, inputs: dict, state: dict, region: str, project: str) -> tuple[str, dict]:
    """GCP answers: ids are resource paths, names are what was asked for (or autonamed)."""
    kind = typ.split(":")[-1]
    given = inputs.get("name") or inputs.get("accountId") or inputs.get("repositoryId")
    resource_name = given or f"{name}-{_short(name, 7)}"
    state.setdefault("name", resource_name)
    state.setdefault("project", project)
    rid = f"projects/{project}/regions/{region}/{kind[0].lower() + kind[1:]}s/{resource_name}"
    if typ == "gcp:compute/network:Network":
        rid = f"projects/{project}/global/networks/{resource_name}"
    elif typ == "gcp:compute/subnetwork:Subnetwork":
        rid = f"projects/{project}/regions/{region}/subnetworks/{resource_name}"
    elif typ == "gcp:compute/globalAddress:GlobalAddress":
        rid = f"projects/{project}/global/addresses/{resource_name}"
        state["address"] = "10.200.0.0"
    elif typ == "gcp:container/cluster:Cluster":
        rid = f"projects/{project}/locations/{inputs.get('location', region)}/clusters/{resource_name}"
        state["endpoint"] = _ip("34", name)
        state["masterAuth"] = {**(inputs.get("masterAuth") or {}), "clusterCaCertificate": _mock_ca(name)}
        state["selfLink"] = f"https://container.googleapis.com/v1/{rid}"
    elif typ == "gcp:container/nodePool:NodePool":
        rid = f"{inputs.get('cluster', '')}/nodePools/{resource_name}"
    elif typ == "gcp:serviceaccount/account:Account":
        email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
        rid = f"projects/{project}/serviceAccounts/{email}"
        state.update(email=email, member=f"serviceAccount:{email}", uniqueId=str(int(_short(name, 12), 16)))
    elif typ == "gcp:kms/keyRing:KeyRing":
        rid = f"projects/{project}/locations/{inputs.get('location', region)}/keyRings/{resource_name}"
    elif typ == "gcp:kms/cryptoKey:CryptoKey":
        rid = f"{inputs['keyRing']}/cryptoKeys/{resource_name}"
    elif typ == "gcp:redis/instance:Instance":
        rid = f"projects/{project}/locations/{region}/instances/{resource_name}"
        state["host"] = f"10.200.{int(_short(name, 2), 16) % 16}.3"
        state["port"] = 6378
        state["authString"] = rpc.wrap_rpc_secret(mock_auth_string(name))
        state["serverCaCerts"] = [{"cert": base64.b64decode(_mock_ca(name)).decode(), "serialNumber": "0"}]
        state["currentLocationId"] = f"{region}-a"
    elif typ == "gcp:secretmanager/secret:Secret":
        rid = f"projects/{project}/secrets/{inputs['secretId']}"
        state["name"] = rid
    elif typ == "gcp:secretmanager/secretVersion:SecretVersion":
        rid = f"{inputs['secret']}/versions/1"
        state.update(name=rid, version="1")
        if "secretData" in inputs:
            state["secretData"] = rpc.wrap_rpc_secret(inputs["secretData"])
    elif typ == "gcp:projects/serviceIdentity:ServiceIdentity":
        service = inputs["service"]
        email = f"service-{PROJECT_NUMBER}@gcp-sa-{service.split('.')[0]}.iam.gserviceaccount.com"
        rid = f"projects/{project}/services/{service}"
        state.update(email=email, member=f"serviceAccount:{email}")
    elif typ == "gcp:artifactregistry/repository:Repository":
        rid = f"projects/{project}/locations/{inputs.get('location', region)}/repositories/{resource_name}"
        state["name"] = resource_name
        state["registryUri"] = f"{inputs.get('location', region)}-docker.pkg.dev/{project}/{resource_name}"
    elif typ == "gcp:billing/budget:Budget":
        rid = f"billingAccounts/{inputs['billingAccount']}/budgets/{_short(name, 36)}"
    elif typ == "gcp:monitoring/notificationChannel:NotificationChannel":
        rid = f"projects/{project}/notificationChannels/{int(_short(name, 12), 16)}"
    return rid, state


_AZURE_PROVIDERS = {
    "resources:ResourceGroup": None,
    "network:VirtualNetwork": "Microsoft.Network/virtualNetworks",
    "network:Subnet": None,
    "network:NatGateway": "Microsoft.Network/natGateways",
    "network:PublicIPAddress": "Microsoft.Network/publicIPAddresses",
    "network:PrivateEndpoint": "Microsoft.Network/privateEndpoints",
    "network:PrivateDnsZoneGroup": None,
    "privatedns:PrivateZone": "Microsoft.Network/privateDnsZones",
    "privatedns:VirtualNetworkLink": None,
    "containerservice:ManagedCluster": "Microsoft.ContainerService/managedClusters",
    "containerservice:AgentPool": None,
    "redisenterprise:RedisEnterprise": "Microsoft.Cache/redisEnterprise",
    "redisenterprise:Database": None,
    "keyvault:Vault": "Microsoft.KeyVault/vaults",
    "keyvault:Secret": None,
    "containerregistry:CredentialSet": None,
    "containerregistry:CacheRule": None,
    "containerregistry:Registry": "Microsoft.ContainerRegistry/registries",
    "managedidentity:UserAssignedIdentity": "Microsoft.ManagedIdentity/userAssignedIdentities",
    "consumption:Budget": None,
    "authorization:RoleAssignment": None,
}
# The input holding each type's own name (azure-native names it after the type).
_AZURE_NAME_INPUTS = (
    "resourceGroupName",
    "virtualNetworkName",
    "natGatewayName",
    "publicIpAddressName",
    "privateEndpointName",
    "privateZoneName",
    "resourceName",
    "registryName",
    "clusterName",
    "vaultName",
    "name",
)


def azure_autoname(name: str) -> str:
    """The name the mock gives an Azure resource created without one (Pulumi appends a suffix)."""
    return f"{name}{_short(name, 6)}"


def _azure_id(seed: str) -> str:
    h = _short(seed, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def mock_public_ip(name: str) -> str:
    """The address the mock gives an Azure public IP resource named `name`."""
    return _ip("20", name)


def _azure_resource(typ: str, name: str, inputs: dict, state: dict, region: str) -> tuple[str, dict]:
    """Azure answers: ids are ARM paths under the mock subscription."""
    kind = typ.split(":", 1)[1]
    rg = inputs.get("resourceGroupName", "rg")
    sub = f"/subscriptions/{SUBSCRIPTION_ID}"
    own = next((inputs[k] for k in _AZURE_NAME_INPUTS if k != "resourceGroupName" and inputs.get(k)), None)
    resource_name = own or azure_autoname(name)
    arm = _AZURE_PROVIDERS.get(kind)
    if kind == "resources:ResourceGroup":
        resource_name = inputs.get("resourceGroupName") or f"{name}{_short(name, 6)}"
        rid = f"{sub}/resourceGroups/{resource_name}"
    elif kind == "network:Subnet":
        resource_name = inputs.get("subnetName") or resource_name
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/"
            f"{inputs['virtualNetworkName']}/subnets/{resource_name}"
        )
    elif kind == "containerservice:AgentPool":
        resource_name = inputs["agentPoolName"]
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/"
            f"{inputs['resourceName']}/agentPools/{resource_name}"
        )
    elif kind == "privatedns:VirtualNetworkLink":
        resource_name = inputs.get("virtualNetworkLinkName") or resource_name
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.Network/privateDnsZones/"
            f"{inputs['privateZoneName']}/virtualNetworkLinks/{resource_name}"
        )
    elif kind == "network:PrivateDnsZoneGroup":
        resource_name = inputs.get("privateDnsZoneGroupName") or resource_name
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.Network/privateEndpoints/"
            f"{inputs['privateEndpointName']}/privateDnsZoneGroups/{resource_name}"
        )
    elif kind == "redisenterprise:Database":
        resource_name = inputs.get("databaseName") or "default"
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.Cache/redisEnterprise/"
            f"{inputs['clusterName']}/databases/{resource_name}"
        )
    elif kind == "keyvault:Secret":
        resource_name = inputs.get("secretName") or resource_name
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/"
            f"{inputs['vaultName']}/secrets/{resource_name}"
        )
    elif kind in ("containerregistry:CredentialSet", "containerregistry:CacheRule"):
        child = "credentialSets" if kind.endswith("CredentialSet") else "cacheRules"
        resource_name = inputs.get("credentialSetName") or inputs.get("cacheRuleName") or azure_autoname(name)
        rid = (
            f"{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/"
            f"{inputs['registryName']}/{child}/{resource_name}"
        )
    elif kind in ("consumption:Budget", "authorization:RoleAssignment"):
        resource_name = inputs.get("budgetName") or inputs.get("roleAssignmentName") or _azure_id(name)
        sub_path = (
            "Microsoft.Consumption/budgets"
            if kind == "consumption:Budget"
            else "Microsoft.Authorization/roleAssignments"
        )
        rid = f"{inputs.get('scope', sub)}/providers/{sub_path}/{resource_name}"
    else:
        rid = f"{sub}/resourceGroups/{rg}/providers/{arm or 'Microsoft.Resources/' + kind}/{resource_name}"
    state["name"] = resource_name
    state["azureApiVersion"] = "mock"
    identity = inputs.get("identity") or {}
    if isinstance(identity.get("userAssignedIdentities"), list):
        # Asked for as a list of ids, answered as a map of id to the identity's ids.
        state["identity"] = {
            **identity,
            "userAssignedIdentities": {
                i: {"principalId": _azure_id(i + "-principal"), "clientId": _azure_id(i + "-client")}
                for i in identity["userAssignedIdentities"]
            },
        }
    if "SystemAssigned" in str(identity.get("type", "")):
        state["identity"] = {
            **state.get("identity", identity),
            "principalId": _azure_id(rid + "-principal"),
            "tenantId": TENANT_ID,
        }
    if kind == "containerservice:ManagedCluster":
        prefix = inputs.get("dnsPrefix", resource_name)
        state["fqdn"] = f"{prefix}-{_short(name, 8)}.hcp.{region}.azmk8s.io"
        state["privateFQDN"] = f"{prefix}-{_short(name, 8)}.privatelink.{region}.azmk8s.io"
        state["nodeResourceGroup"] = inputs.get("nodeResourceGroup") or f"MC_{rg}_{resource_name}_{region}"
        state["identityProfile"] = {
            "kubeletidentity": {
                "objectId": _azure_id(name + "-kubelet-object"),
                "clientId": _azure_id(name + "-kubelet-client"),
                "resourceId": (
                    f"{sub}/resourceGroups/{state['nodeResourceGroup']}/providers/Microsoft.ManagedIdentity/"
                    f"userAssignedIdentities/{resource_name}-agentpool"
                ),
            }
        }
        state["oidcIssuerProfile"] = {
            **(inputs.get("oidcIssuerProfile") or {}),
            "issuerURL": f"https://{region}.oic.prod-aks.azure.com/{TENANT_ID}/{_azure_id(name)}/",
        }
    elif kind == "managedidentity:UserAssignedIdentity":
        state.update(
            principalId=_azure_id(name + "-principal"), clientId=_azure_id(name + "-client"), tenantId=TENANT_ID
        )
    elif kind == "redisenterprise:RedisEnterprise":
        state.update(hostName=f"{resource_name}.{region}.redis.azure.net", kind="v2", redisVersion="7.4")
    elif kind == "redisenterprise:Database":
        state.update(name=f"{inputs['clusterName']}/{resource_name}", port=inputs.get("port", 10000))
    elif kind == "keyvault:Vault":
        state["properties"] = {**inputs.get("properties", {}), "vaultUri": f"https://{resource_name}.vault.azure.net/"}
    elif kind == "keyvault:Secret":
        # ARM never returns a secret's value.
        props = {k: v for k, v in (inputs.get("properties") or {}).items() if k != "value"}
        uri = f"https://{inputs['vaultName']}.vault.azure.net/secrets/{resource_name}"
        state["properties"] = {**props, "secretUri": uri, "secretUriWithVersion": f"{uri}/{_short(name, 32)}"}
    elif kind == "containerregistry:Registry":
        state["loginServer"] = f"{resource_name}.azurecr.io"
    elif kind == "network:PublicIPAddress":
        state["ipAddress"] = mock_public_ip(name)
    return rid, state


def resource_options(request) -> dict[str, Any]:
    """The options a registration carried, as the engine receives them (camelCase), with
    only those that were set: what policies and tests check beside the inputs."""
    options: dict[str, Any] = {}
    if request.dependencies:
        options["dependsOn"] = sorted(request.dependencies)
    timeouts = {k: getattr(request.customTimeouts, k) for k in ("create", "update", "delete")}
    if any(timeouts.values()):
        options["customTimeouts"] = {k: v for k, v in timeouts.items() if v}
    if request.ignoreChanges:
        options["ignoreChanges"] = list(request.ignoreChanges)
    if request.protect:
        options["protect"] = True
    if request.deleteBeforeReplaceDefined:
        options["deleteBeforeReplace"] = bool(request.deleteBeforeReplace)
    if request.replaceOnChanges:
        options["replaceOnChanges"] = list(request.replaceOnChanges)
    aliases = list(request.aliasURNs) + [a.urn or a.spec.name for a in request.aliases if a.urn or a.spec.name]
    if aliases:
        options["aliases"] = aliases
    if request.retainOnDelete:
        options["retainOnDelete"] = True
    return options


class RecordingMonitor(sdk_mocks.MockMonitor):
    def __init__(self, mocks: PlanMocks, graph: Graph):
        super().__init__(mocks)
        self.graph = graph

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs, has_secret = mask_secrets(rpc.deserialize_properties(request.object))
            self.graph.add(
                Resource(
                    urn=urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent or None,
                    provider=request.provider.rsplit("::", 1)[0] if request.provider else None,
                    custom=bool(request.custom),
                    dependencies=tuple(request.dependencies),
                    inputs=inputs,
                    has_secret=has_secret,
                    id=response.id,
                    options=resource_options(request),
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            outputs, _ = mask_secrets(rpc.deserialize_properties(request.outputs))
            self.graph.outputs.update(outputs)
        return super().RegisterResourceOutputs(request)
