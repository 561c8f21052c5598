"""Preflight against moto's EC2 (real boto3 clients, moto's offering data) with Service
Quotas answered by botocore's Stubber (moto's service-quotas knows only VPC quotas)."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

from infra import cli
from infra.preflight import aws, azure, gcp, run

REPO = Path(__file__).resolve().parents[2]
ODEMAND_G, SPOT_G = "L-DB2E81BA", "L-3819A6DF"
ODEMAND_P, SPOT_P = "L-417A185B", "L-7212CCBC"


def write_stack(root: Path, name: str, sites: list[dict]) -> str:
    """A stack file like dev's with these sites; every model runs on a pool named `gpu`."""
    doc = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    config = doc["config"]
    model = config["llm-platform:models"][0]
    config["llm-platform:models"] = [{**model, "gpuPool": "gpu", "dtype": "float16"}]
    base = config["llm-platform:sites"][0]
    config["llm-platform:sites"] = [
        {**deepcopy(base), **site, "models": [model["name"]], "name": site.get("name", f"site-{i}")}
        for i, site in enumerate(sites)
    ]
    config.pop("llm-platform:budget", None)
    config["llm-platform:budget"] = {"monthlyAmount": 100000, "emails": ["ops@example.com"]}
    (root / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return name


def pool(name: str, instance_type: str, max_nodes: int, spot: bool = False) -> dict:
    return {"name": name, "instanceType": instance_type, "spot": spot, "nodes": {"min": 0, "max": max_nodes}}


def aws_site(region: str, *pools: dict, name: str = "aws-a") -> dict:
    return {"name": name, "cloud": "aws", "region": region, "gpuPools": list(pools)}


@pytest.fixture
def aws_env(monkeypatch):
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        yield


class Quotas:
    """Real service-quotas clients whose answers are stubbed, one value per quota code."""

    def __init__(self, values: dict[str, float], defaults_only: bool = False, error: str | None = None):
        self.values, self.defaults_only, self.error = values, defaults_only, error
        self.asked: list[str] = []
        self.stubbers: list[Stubber] = []

    def client(self, region: str):
        client = boto3.client("service-quotas", region_name=region)
        stubber = Stubber(client)
        if self.error:
            stubber.add_client_error("get_service_quota", service_error_code=self.error, service_message="denied")
        for code, value in self.values.items():
            params = {"ServiceCode": "ec2", "QuotaCode": code}
            body = {"Quota": {"ServiceCode": "ec2", "QuotaCode": code, "Value": value}}
            if self.defaults_only:
                stubber.add_client_error("get_service_quota", "NoSuchResourceException", expected_params=params)
                stubber.add_response("get_aws_default_service_quota", body, params)
            else:
                stubber.add_response("get_service_quota", body, params)
        stubber.activate()
        self.stubbers.append(stubber)
        return client

    def factory(self):
        def clients(service: str, region: str):
            if service == "service-quotas":
                return self.client(region)
            return boto3.client(service, region_name=region)

        return clients


def preflight(tmp_path: Path, sites: list[dict], quotas: Quotas | None = None, **checkers) -> tuple[int, str, str]:
    stack = write_stack(tmp_path, "t", sites)
    out, err = io.StringIO(), io.StringIO()
    if quotas is not None:
        checkers.setdefault("aws", lambda site: aws.check_site(site, quotas.factory()))
    code = run(stack, root=tmp_path, checkers=checkers, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# --- AWS offerings and quotas -------------------------------------------------------------


def test_offered_with_enough_quota_is_ok_and_lists_zones(tmp_path, aws_env):
    quotas = Quotas({SPOT_G: 64.0})
    code, out, err = preflight(tmp_path, [aws_site("us-east-1", pool("gpu", "g6.xlarge", 2, spot=True))], quotas)
    assert (code, err) == (0, "")
    line = next(line for line in out.splitlines() if line.strip().startswith("gpu "))
    assert "g6.xlarge spot x2  ok" in line
    # moto's offering data for us-east-1: g6.xlarge is in five of its zones.
    assert "zones us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f" in line
    assert f"{SPOT_G} needs 8 of 64 vCPU" in line
    assert "account 123456789012" in out
    assert out.splitlines()[-1] == "ok: 1 pool(s) ok, 0 need action"
    for stubber in quotas.stubbers:
        stubber.assert_no_pending_responses()


def test_quota_too_low_says_what_to_request_and_where(tmp_path, aws_env):
    # Two on-demand pools share one quota: (8 + 4) x 4 vCPU = 48 needed.
    quotas = Quotas({ODEMAND_G: 40.0})
    site = aws_site("us-east-1", pool("gpu", "g6e.xlarge", 8), pool("burst", "g6e.xlarge", 4))
    code, out, err = preflight(tmp_path, [site], quotas)
    assert (code, err) == (1, "")
    assert out.count("REQUEST") == 2
    assert (
        f"request quota 'Running On-Demand G and VT instances' ({ODEMAND_G}) in us-east-1: "
        "current 40 vCPU, needed 48 vCPU for gpu, burst at max nodes"
    ) in out
    assert f"at https://us-east-1.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{ODEMAND_G}" in out
    assert out.splitlines()[-1] == "action needed: 0 pool(s) ok, 2 need action"


def test_spot_and_on_demand_and_p_family_use_their_own_quotas(tmp_path, aws_env):
    site = aws_site(
        "us-west-2",
        pool("gpu", "g6e.xlarge", 2),
        pool("spot", "g6e.xlarge", 3, spot=True),
        pool("h100", "p5.48xlarge", 1),
        pool("h100-spot", "p5.48xlarge", 2, spot=True),
    )
    quotas = Quotas({ODEMAND_G: 8.0, SPOT_G: 8.0, ODEMAND_P: 192.0, SPOT_P: 0.0})
    code, out, _ = preflight(tmp_path, [site], quotas)
    assert code == 1
    assert f"{ODEMAND_G} needs 8 of 8 vCPU" in out  # exactly enough is enough
    assert (
        f"request quota 'All G and VT Spot Instance Requests' ({SPOT_G}) in us-west-2: current 8 vCPU, needed 12 vCPU"
        in out
    )
    assert f"{ODEMAND_P} needs 192 of 192 vCPU" in out
    assert (
        f"request quota 'All P Spot Instance Requests' ({SPOT_P}) in us-west-2: current 0 vCPU, needed 384 vCPU" in out
    )
    assert "2 pool(s) ok, 2 need action" in out


def test_default_quota_is_used_when_none_was_applied(tmp_path, aws_env):
    quotas = Quotas({SPOT_G: 0.0}, defaults_only=True)
    code, out, _ = preflight(tmp_path, [aws_site("us-east-1", pool("gpu", "g6.xlarge", 1, spot=True))], quotas)
    assert code == 1
    assert "current 0 vCPU, needed 4 vCPU" in out
    for stubber in quotas.stubbers:
        stubber.assert_no_pending_responses()


def test_type_not_offered_in_region(tmp_path, aws_env):
    # moto's data: eu-west-3 offers g6 and g5 but no g6e (L40S) size.
    quotas = Quotas({ODEMAND_G: 1000.0})
    code, out, _ = preflight(tmp_path, [aws_site("eu-west-3", pool("gpu", "g6e.xlarge", 2))], quotas)
    assert code == 1
    assert "g6e.xlarge on-demand x2  NOT OFFERED" in out
    assert "- g6e.xlarge is not offered in any zone of eu-west-3; pick another region" in out


def test_type_not_offered_suggests_same_gpu_sizes_that_are(tmp_path, aws_env, monkeypatch):
    # Ask about a type moto does not know at all; the catalog's other A10G sizes are offered.
    real = aws.offered_zones
    monkeypatch.setattr(
        aws, "offered_zones", lambda ec2, types: {k: v for k, v in real(ec2, types).items() if k != "g5.xlarge"}
    )
    code, out, _ = preflight(tmp_path, [aws_site("us-east-1", pool("gpu", "g5.xlarge", 1))], Quotas({ODEMAND_G: 100.0}))
    assert code == 1
    assert "g5.xlarge is not offered in any zone of us-east-1; same GPU offered here as: g5.12xlarge" in out


def test_single_zone_offering_is_a_note_not_a_failure(tmp_path, aws_env):
    # moto's data: sa-east-1 offers p5.48xlarge in one zone.
    code, out, _ = preflight(
        tmp_path, [aws_site("sa-east-1", pool("gpu", "p5.48xlarge", 1))], Quotas({ODEMAND_P: 192.0})
    )
    assert code == 0
    assert "note: offered in one zone only (sa-east-1" in out


def test_every_site_is_checked_in_its_own_region(tmp_path, aws_env):
    sites = [
        aws_site("us-east-1", pool("gpu", "g6.xlarge", 1), name="east"),
        aws_site("eu-west-3", pool("gpu", "g6e.xlarge", 1), name="paris"),
    ]
    code, out, _ = preflight(tmp_path, sites, Quotas({ODEMAND_G: 100.0}))
    assert code == 1
    assert "east (aws us-east-1, account 123456789012)" in out
    assert "paris (aws eu-west-3, account 123456789012)" in out
    assert "1 pool(s) ok, 1 need action" in out


# --- failures that stop the check ---------------------------------------------------------


def no_credentials(monkeypatch, tmp_path):
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_no_credentials_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    no_credentials(monkeypatch, tmp_path)
    write_stack(tmp_path, "t", [aws_site("us-east-1", pool("gpu", "g6.xlarge", 1))])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["preflight", "t"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: aws-a: aws: no credentials found; "
        "set AWS_PROFILE (aws sso login) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY\n"
    )


def test_rejected_credentials_are_one_line(tmp_path, aws_env):
    def clients(service, region):
        client = boto3.client(service, region_name=region)
        if service == "sts":
            stubber = Stubber(client)
            stubber.add_client_error(
                "get_caller_identity", "InvalidClientTokenId", "The security token included in the request is invalid."
            )
            stubber.activate()
        return client

    code, out, err = preflight(
        tmp_path, [aws_site("us-east-1", pool("gpu", "g6.xlarge", 1))], aws=lambda site: aws.check_site(site, clients)
    )
    assert (code, out) == (2, "")
    assert err == (
        "error: aws-a: aws: credentials rejected (InvalidClientTokenId): "
        "The security token included in the request is invalid.\n"
    )


def test_missing_permission_names_what_preflight_needs(tmp_path, aws_env):
    quotas = Quotas({}, error="AccessDeniedException")
    code, out, err = preflight(tmp_path, [aws_site("us-east-1", pool("gpu", "g6.xlarge", 1))], quotas)
    assert (code, out) == (2, "")
    assert err.startswith("error: aws-a: aws: not allowed to call GetServiceQuota in us-east-1 (AccessDeniedException)")
    assert "servicequotas:GetServiceQuota" in err and err.count("\n") == 1


def test_bad_stack_is_a_config_error(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert run("nope", root=tmp_path, out=out, err=err) == 2
    assert err.getvalue().startswith("config error: no stack file Pulumi.nope.yaml")


def test_quota_codes_by_family():
    assert aws.quota_for("g6e.xlarge", spot=False).code == ODEMAND_G
    assert aws.quota_for("g5.48xlarge", spot=True).code == SPOT_G
    assert aws.quota_for("p4de.24xlarge", spot=False).code == ODEMAND_P
    assert aws.quota_for("p5.48xlarge", spot=True).code == SPOT_P
    assert aws.quota_for("inf2.xlarge", spot=False) is None


# --- GCP and Azure --------------------------------------------------------------------------


GCP_SITE = {
    "name": "gcp-a",
    "cloud": "gcp",
    "region": "us-central1",
    "systemPool": {"instanceType": "e2-standard-4"},
    "gcp": {"project": "proj-1x", "billingAccount": "000000-AAAAAA-111111"},
    "gpuPools": [pool("gpu", "g2-standard-8", 3), pool("spot", "g2-standard-8", 2, spot=True)],
}
AZURE_SITE = {
    "name": "az-a",
    "cloud": "azure",
    "region": "eastus",
    "systemPool": {"instanceType": "Standard_D4s_v5"},
    "gpuPools": [pool("gpu", "Standard_NC24ads_A100_v4", 2), pool("spot", "Standard_NC24ads_A100_v4", 2, spot=True)],
}


def test_gcp_and_azure_without_their_sdks_are_skipped_with_what_to_install(tmp_path, aws_env, monkeypatch):
    monkeypatch.setattr(gcp, "default_clients", lambda project=None: (_ for _ in ()).throw(ImportError(gcp.SKIP)))
    monkeypatch.setattr(
        azure, "default_client", lambda subscription=None: (_ for _ in ()).throw(ImportError(azure.SKIP))
    )
    sites = [aws_site("us-east-1", pool("gpu", "g6.xlarge", 1)), GCP_SITE, AZURE_SITE]
    code, out, _ = preflight(tmp_path, sites, Quotas({ODEMAND_G: 100.0}))
    assert code == 0
    assert "gcp-a (gcp us-central1): skipped: install google-cloud-compute to check GCP offerings and quotas" in out
    assert (
        "az-a (azure eastus): skipped: "
        "install azure-mgmt-compute and azure-identity to check Azure offerings and quotas" in out
    )
    assert out.splitlines()[-1] == "ok: 1 pool(s) ok, 0 need action, 2 site(s) skipped"


def test_sdks_absent_here_means_skipped_by_default():
    for module in ("google.cloud.compute_v1", "azure.mgmt.compute"):
        try:
            __import__(module)
        except ImportError:
            continue
        pytest.skip(f"{module} is installed here")
    site = SimpleNamespace(name="s", region="r", gcp=None, azure=None)
    assert gcp.check_site(site).skipped == gcp.SKIP
    assert azure.check_site(site).skipped == azure.SKIP


def ns(**kw):
    return SimpleNamespace(**kw)


def gcp_clients(l4_limit: float = 8.0, spot_limit: float = 1.0, all_regions: float = 4.0) -> gcp.Clients:
    zone = ns(accelerator_types=[ns(name="nvidia-l4"), ns(name="nvidia-tesla-t4")])
    accelerators = ns(
        aggregated_list=lambda request: [
            ("zones/us-central1-a", zone),
            ("zones/us-central1-c", zone),
            ("zones/europe-west4-a", zone),
            ("zones/us-central1-f", ns(accelerator_types=None)),
        ]
    )
    regions = ns(
        get=lambda project, region: ns(
            quotas=[
                ns(metric="NVIDIA_L4_GPUS", limit=l4_limit, usage=0.0),
                ns(metric="PREEMPTIBLE_NVIDIA_L4_GPUS", limit=spot_limit, usage=0.0),
            ]
        )
    )
    projects = ns(get=lambda project: ns(quotas=[ns(metric="GPUS_ALL_REGIONS", limit=all_regions, usage=0.0)]))
    return gcp.Clients("proj-1", regions, projects, accelerators)


def test_gcp_zones_and_gpu_quotas(tmp_path):
    clients = gcp_clients()
    code, out, _ = preflight(tmp_path, [GCP_SITE], gcp=lambda site: gcp.check_site(site, clients))
    assert code == 1
    assert "gcp-a (gcp us-central1, account proj-1)" in out
    assert "zones us-central1-a, us-central1-c; quota NVIDIA_L4_GPUS needs 3 of 8 GPU" in out
    assert (
        "request quota 'PREEMPTIBLE_NVIDIA_L4_GPUS' (PREEMPTIBLE_NVIDIA_L4_GPUS) in us-central1: "
        "current 1 GPU, needed 2 GPU for spot" in out
    )
    assert (
        "request quota 'GPUS_ALL_REGIONS' (GPUS_ALL_REGIONS) in global: current 4 GPU, needed 5 GPU for gpu, spot"
        in out
    )
    assert "https://console.cloud.google.com/iam-admin/quotas?project=proj-1&metric=GPUS_ALL_REGIONS" in out


def test_gcp_configured_zones_must_offer_the_gpu(tmp_path):
    site = {**GCP_SITE, "gcp": {**GCP_SITE["gcp"], "gpuZones": ["us-central1-a", "us-central1-b"]}}
    clients = gcp_clients(spot_limit=10.0, all_regions=10.0)
    code, out, _ = preflight(tmp_path, [site], gcp=lambda s: gcp.check_site(s, clients))
    assert code == 1
    assert "- gcp.gpuZones us-central1-b lack nvidia-l4; use zones from us-central1-a, us-central1-c" in out
    clean = {**GCP_SITE, "gcp": {**GCP_SITE["gcp"], "gpuZones": ["us-central1-c"]}}
    code, out, _ = preflight(tmp_path, [clean], gcp=lambda s: gcp.check_site(s, clients))
    assert code == 0, out


def test_gcp_errors_become_one_line(tmp_path):
    def boom(**_):
        raise RuntimeError("403 Compute Engine API has not been used in project proj-1\nmore detail")

    clients = gcp.Clients("proj-1", ns(get=boom), ns(get=boom), ns(aggregated_list=boom))
    code, out, err = preflight(tmp_path, [GCP_SITE], gcp=lambda site: gcp.check_site(site, clients))
    assert (code, out) == (2, "")
    assert err == "error: gcp-a: gcp: RuntimeError: 403 Compute Engine API has not been used in project proj-1\n"


def test_azure_sku_zones_and_vcpu_quotas(tmp_path):
    sku = ns(
        name="Standard_NC24ads_A100_v4",
        resource_type="virtualMachines",
        family="StandardNCADSA100v4Family",
        restrictions=[],
        location_info=[ns(location="eastus", zones=["2", "1", "3"])],
    )
    usage = lambda value, shown, limit: ns(name=ns(value=value, localized_value=shown), current_value=0, limit=limit)  # noqa: E731
    client = ns(
        resource_skus=ns(list=lambda filter: [sku, ns(name="Standard_D4s_v5", resource_type="virtualMachines")]),
        usage=ns(
            list=lambda location: [
                usage("cores", "Total Regional vCPUs", 100),
                usage("StandardNCADSA100v4Family", "Standard NCADS_A100_v4 Family vCPUs", 24),
                usage("lowPriorityCores", "Total Regional Spot vCPUs", 48),
            ]
        ),
    )
    code, out, _ = preflight(tmp_path, [AZURE_SITE], azure=lambda site: azure.check_site(site, client, "sub-1"))
    assert code == 1
    assert "zones eastus-1, eastus-2, eastus-3" in out
    assert (
        "request quota 'Standard NCADS_A100_v4 Family vCPUs' (StandardNCADSA100v4Family) in eastus: "
        "current 24 vCPU, needed 48 vCPU for gpu"
    ) in out
    assert "lowPriorityCores needs 48 of 48 vCPU" in out


def test_azure_sku_not_available_to_subscription(tmp_path):
    restricted = ns(
        name="Standard_NC24ads_A100_v4",
        resource_type="virtualMachines",
        family="F",
        restrictions=[ns(type="Location", reason_code="NotAvailableForSubscription")],
        location_info=[],
    )
    client = ns(resource_skus=ns(list=lambda filter: [restricted]), usage=ns(list=lambda location: []))
    code, out, _ = preflight(tmp_path, [AZURE_SITE], azure=lambda site: azure.check_site(site, client, "sub-1"))
    assert code == 1
    assert "Standard_NC24ads_A100_v4 is not available to this subscription in eastus" in out
