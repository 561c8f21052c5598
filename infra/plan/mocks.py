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
from typing import Any

from pulumi.runtime import mocks as sdk_mocks
from pulumi.runtime import rpc

from infra.plan.graph import SECRET, Graph, Resource

ACCOUNT_ID = "123456789012"
PROJECT_ID = "llm-platform-project"


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
            return rid, state
        region = self._region(args.provider)
        arn = f"arn:aws:{typ.split(':')[1].split('/')[0]}:{region}:{ACCOUNT_ID}:{name}"
        if typ.startswith("aws:"):
            state.setdefault("arn", arn)
            state.setdefault("tagsAll", inputs.get("tags", {}))
        if typ == "aws:eks/cluster:Cluster":
            state["endpoint"] = f"https://{_short(name, 32).upper()}.gr7.{region}.eks.amazonaws.com"
            state["certificateAuthority"] = {"data": base64.b64encode(b"mock-ca-" + name.encode()).decode()}
            state["vpcConfig"] = {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{_short(name, 17)}"}
            state["identities"] = [{"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/{_short(name, 32)}"}]}]
        elif typ == "aws:iam/role:Role":
            state["name"] = inputs.get("name") or f"{name}-{_short(name, 7)}"
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{state['name']}"
            rid = state["name"]
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
            rid = f"lt-{_short(name, 17)}"
        elif typ == "aws:eks/nodeGroup:NodeGroup":
            state["nodeGroupName"] = inputs.get("nodeGroupName") or f"{name}-{_short(name, 7)}"
        elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            state["primaryEndpointAddress"] = f"master.{name}.{_short(name, 6)}.{region}.cache.amazonaws.com"
            state["readerEndpointAddress"] = f"replica.{name}.{_short(name, 6)}.{region}.cache.amazonaws.com"
        elif typ == "aws:elasticache/subnetGroup:SubnetGroup":
            state["name"] = inputs.get("name") or f"{name}-{_short(name, 7)}"
        elif typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/{inputs.get('name', name)}"
        elif typ.startswith("aws:ec2/"):
            prefix = {"vpc": "vpc", "subnet": "subnet", "securityGroup": "sg", "natGateway": "nat", "eip": "eipalloc"}
            kind = typ.split("/")[1].split(":")[0]
            rid = f"{prefix.get(kind, kind)}-{_short(name, 17)}"
        elif typ == "random:index/randomPassword:RandomPassword":
            length = int(inputs.get("length", 32))
            state["result"] = rpc.wrap_rpc_secret((hashlib.sha256(name.encode()).hexdigest() * 4)[:length])
        elif typ == "kubernetes:core/v1:Service":
            if (inputs.get("spec") or {}).get("type") == "LoadBalancer":
                host = f"{_short(name, 32)}.elb.{region}.amazonaws.com"
                state["status"] = {"loadBalancer": {"ingress": [{"hostname": host}]}}
        return rid, state

    def call(self, args: sdk_mocks.MockCallArgs) -> tuple[dict, list | None]:
        region = args.args.get("region") or self._region(args.provider)
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{region}{z}" for z in "abc"]
            return {"id": region, "names": names, "zoneIds": [f"use1-az{i}" for i in range(1, 4)], "groupNames": names}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/plan", "userId": "PLAN"}, []
        raise NotImplementedError(f"the offline plan has no answer for invoke {args.token}; add one in infra/plan/mocks.py")


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
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            outputs, _ = mask_secrets(rpc.deserialize_properties(request.outputs))
            self.graph.outputs.update(outputs)
        return super().RegisterResourceOutputs(request)
