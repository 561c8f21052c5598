"""AWS: is each GPU instance type offered in the site's region (and which zones), and do the
account's vCPU-based EC2 quotas cover every pool at its maximum size?

EC2 GPU quotas are counted in vCPUs per instance family and per purchase option, so a
site's pools that draw on the same quota are summed: two g6e pools of 8 and 4 nodes need
(8 + 4) x 4 vCPU of "Running On-Demand G and VT instances" if both are on-demand. Running
instances elsewhere in the account count against the same quota.

Clients come from a factory `(service, region) -> boto3 client`, so tests can hand in
real clients backed by moto or by botocore's Stubber.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from infra.catalog import catalog, instance
from infra.config import Site
from infra.preflight.report import PoolResult, PreflightError, Quota, SiteResult

ClientFactory = Callable[[str, str], Any]


@dataclass(frozen=True)
class QuotaSpec:
    code: str
    name: str


# Instance family prefix -> (on-demand quota, spot quota), all in vCPUs.
QUOTAS: dict[str, tuple[QuotaSpec, QuotaSpec]] = {
    "g": (
        QuotaSpec("L-DB2E81BA", "Running On-Demand G and VT instances"),
        QuotaSpec("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ),
    "p": (
        QuotaSpec("L-417A185B", "Running On-Demand P instances"),
        QuotaSpec("L-7212CCBC", "All P Spot Instance Requests"),
    ),
}
QUOTAS["vt"] = QUOTAS["g"]

PERMISSIONS = (
    "ec2:DescribeInstanceTypeOfferings, servicequotas:GetServiceQuota, servicequotas:GetAWSDefaultServiceQuota"
)
_AUTH_CODES = {
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "SignatureDoesNotMatch",
}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


def quota_for(instance_type: str, spot: bool) -> QuotaSpec | None:
    match = re.match(r"[a-z]+", instance_type)
    pair = QUOTAS.get(match.group() if match else "")
    return None if pair is None else pair[1 if spot else 0]


def console_url(region: str, code: str) -> str:
    return f"https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}"


def default_clients() -> ClientFactory:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=20)
    cache: dict[tuple[str, str], Any] = {}

    def client(service: str, region: str) -> Any:
        if (service, region) not in cache:
            cache[(service, region)] = session.client(service, region_name=region, config=config)
        return cache[(service, region)]

    return client


@contextmanager
def _translated(region: str) -> Iterator[None]:
    """Credential, permission and network failures become one line; nothing else is caught."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise PreflightError(
            "aws: no credentials found; set AWS_PROFILE (aws sso login) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except EndpointConnectionError as exc:
        raise PreflightError(f"aws: cannot reach {exc.kwargs.get('endpoint_url', 'the API')} from here") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        operation = exc.operation_name
        if code in _AUTH_CODES:
            raise PreflightError(f"aws: credentials rejected ({code}): {message}") from None
        if code in _DENIED_CODES:
            raise PreflightError(
                f"aws: not allowed to call {operation} in {region} ({code}); preflight needs {PERMISSIONS}"
            ) from None
        raise PreflightError(f"aws: {operation} in {region} failed ({code}): {message}") from None
    except BotoCoreError as exc:
        raise PreflightError(f"aws: {exc}") from None


def offered_zones(ec2: Any, types: list[str]) -> dict[str, list[str]]:
    """{instance type: sorted zones of the client's region that offer it} for `types`."""
    zones: dict[str, set[str]] = defaultdict(set)
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    pages = paginator.paginate(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": sorted(set(types))}],
    )
    for page in pages:
        for offering in page["InstanceTypeOfferings"]:
            zones[offering["InstanceType"]].add(offering["Location"])
    return {name: sorted(zones[name]) for name in types if zones.get(name)}


def quota_value(sq: Any, code: str) -> tuple[float, str | None]:
    """(applied value, name) of an EC2 quota; the AWS default where none was ever applied."""
    from botocore.exceptions import ClientError

    try:
        quota = sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
        quota = sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
    return float(quota["Value"]), quota.get("QuotaName")


def _alternatives(ec2: Any, missing: str) -> list[str]:
    """Catalog types with the same GPU that this region does offer."""
    gpu = instance("aws", missing).gpu.model
    same_gpu = [n for n, spec in catalog("aws").instances.items() if spec.gpu.model == gpu and n != missing]
    return sorted(offered_zones(ec2, same_gpu)) if same_gpu else []


def check_site(site: Site, clients: ClientFactory | None = None) -> SiteResult:
    clients = clients or default_clients()
    region = site.region
    with _translated(region):
        account = clients("sts", region).get_caller_identity()["Account"]
        ec2 = clients("ec2", region)
        zones = offered_zones(ec2, [p.instance_type for p in site.gpu_pools])

        # Sum vCPUs at max nodes per quota across the site's pools.
        needed: dict[QuotaSpec, float] = defaultdict(float)
        users: dict[QuotaSpec, list[str]] = defaultdict(list)
        for pool in site.gpu_pools:
            spec = quota_for(pool.instance_type, pool.spot)
            if spec is not None:
                needed[spec] += pool.nodes.max * instance("aws", pool.instance_type).vcpu
                users[spec].append(pool.name)
        quotas: dict[QuotaSpec, Quota] = {}
        if needed:
            sq = clients("service-quotas", region)
            for spec, vcpus in needed.items():
                value, name = quota_value(sq, spec.code)
                quotas[spec] = Quota(
                    cloud="aws",
                    region=region,
                    code=spec.code,
                    name=name or spec.name,
                    unit="vCPU",
                    current=value,
                    needed=vcpus,
                    pools=tuple(users[spec]),
                    console_url=console_url(region, spec.code),
                )

        pools = []
        for pool in site.gpu_pools:
            spec = quota_for(pool.instance_type, pool.spot)
            pool_zones = zones.get(pool.instance_type, [])
            problems: list[str] = []
            notes: list[str] = []
            if not pool_zones:
                others = _alternatives(ec2, pool.instance_type)
                hint = f"; same GPU offered here as: {', '.join(others)}" if others else "; pick another region"
                problems.append(f"{pool.instance_type} is not offered in any zone of {region}{hint}")
            elif len(pool_zones) == 1:
                notes.append(f"offered in one zone only ({pool_zones[0]}); the pool cannot spread across zones")
            if spec is None:
                notes.append(f"no known vCPU quota for the {pool.instance_type} family; check Service Quotas by hand")
            pools.append(
                PoolResult(
                    name=pool.name,
                    instance_type=pool.instance_type,
                    spot=pool.spot,
                    max_nodes=pool.nodes.max,
                    zones=tuple(pool_zones),
                    offered=bool(pool_zones),
                    problems=tuple(problems),
                    quotas=(quotas[spec],) if spec in quotas else (),
                    notes=tuple(notes),
                )
            )
    return SiteResult(name=site.name, cloud="aws", region=region, pools=tuple(pools), account=account)
