"""What a first `pulumi up` of an Azure site needs, read from the recorded graph: nodes that
can reach their own API server, a Kubernetes provider that waits for its Azure RBAC grant,
Azure Managed Redis instead of the retiring Azure Cache for Redis, and images that come from
the site's own registry (Docker Hub through its artifact cache, ours pushed with the
deployer's Entra identity)."""

from __future__ import annotations

import copy
import io
import ipaddress
import json
import urllib.parse

import pulumi
import pytest

from infra import config as stack_config
from infra.plan import policy_run
from infra.plan.graph import SECRET, Graph, Resource, duration_seconds
from infra.plan.mocks import mock_public_ip
from infra.plan.run import read_stack_file, record
from infra.platform import azure, build_platform
from infra.secrets import from_pulumi as read_secrets
from policy.rules import POLICIES
from tests.infra.invariants import closure, image_build, vllm_upstream
from tests.stacks import REPO, SHIPPED, record_raw
from tests.stacks import stack_config as raw_stack_config

AZURE_STACKS = [
    s for s in SHIPPED if any(site["cloud"] == "azure" for site in raw_stack_config(s)["llm-platform:sites"])
]
CLUSTER = "azure-native:containerservice:ManagedCluster"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
SLEEP = "time:index/sleep:Sleep"
REDIS = "azure-native:redisenterprise:RedisEnterprise"
REDIS_DB = "azure-native:redisenterprise:Database"
# Azure Managed Redis SKU families (RedisEnterprise SkuName in pulumi_azure_native 3.29.0);
# Enterprise_* and EnterpriseFlash_* are the retiring Azure Cache for Redis Enterprise tiers.
MANAGED_REDIS_SKUS = ("Balanced_", "MemoryOptimized_", "ComputeOptimized_", "FlashOptimized_")
# Built-in role ids, the same in every tenant (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def _deps(graph: Graph, r: Resource) -> set[str]:
    return set(r.dependencies) | set(r.options.get("dependsOn", []))


def _in_site(graph: Graph, typ: str, site: str) -> list[Resource]:
    return [r for r in graph.of_type(typ) if graph.site_of(r) == site]


def _azure_sites(graph: Graph) -> list[str]:
    return [r.name for r in graph if r.type == "llm-platform:azure:Site"]


def _role_id(r: Resource) -> str:
    return r.inputs["roleDefinitionId"].rsplit("/", 1)[-1]


# -- 5: nodes reach the API server -------------------------------------------------------


def nat_addresses_not_authorized(graph: Graph) -> list[str]:
    """Public AKS API servers that refuse their own nodes: every node subnet's NAT gateway
    address must be inside the authorized ranges (AKS adds only its load balancer's)."""
    ids = graph.by_id()
    out = []
    for cluster in graph.of_type(CLUSTER):
        access = cluster.inputs.get("apiServerAccessProfile") or {}
        if access.get("enablePrivateCluster"):
            continue
        ranges = [ipaddress.ip_network(c, strict=False) for c in access.get("authorizedIPRanges") or []]
        if not ranges:
            continue  # open to all: another rule's business
        site = graph.site_of(cluster)
        pools = list(cluster.inputs.get("agentPoolProfiles") or []) + [
            p.inputs for p in _in_site(graph, "azure-native:containerservice:AgentPool", site)
        ]
        for subnet_id in {p["vnetSubnetID"] for p in pools}:
            nat_id = (ids[subnet_id].inputs.get("natGateway") or {}).get("id")
            for ip_ref in ids[nat_id].inputs.get("publicIpAddresses") or [] if nat_id else []:
                address = ipaddress.ip_address(mock_public_ip(ids[ip_ref["id"]].name))
                if not any(address in r for r in ranges):
                    out.append(
                        f"{cluster.name}: node egress {address} (NAT {ids[nat_id].name}) is not an authorized range"
                    )
    return out


@pytest.mark.parametrize("stack", AZURE_STACKS)
def test_nodes_egress_address_may_call_the_api_server(graphs, stack):
    graph = graphs[stack]
    assert graph.of_type(CLUSTER)
    assert nat_addresses_not_authorized(graph) == []


def test_the_egress_check_can_fail(graphs):
    graph = copy.deepcopy(graphs[AZURE_STACKS[0]])
    cluster = graph.of_type(CLUSTER)[0]
    cluster.inputs["apiServerAccessProfile"]["authorizedIPRanges"] = ["203.0.113.0/24"]
    assert nat_addresses_not_authorized(graph)


# -- 16: the Kubernetes provider waits for its Azure RBAC grant ---------------------------


def providers_not_waiting_for_rbac(graph: Graph) -> list[str]:
    """Kubernetes providers of AKS sites that may call the API before the deployer's AKS RBAC
    Cluster Admin grant has propagated (up to five minutes, per the AKS docs)."""
    index = graph.by_urn()
    out = []
    for site in _azure_sites(graph):
        grants = [r.urn for r in _in_site(graph, ROLE_ASSIGNMENT, site) if _role_id(r) == AKS_RBAC_CLUSTER_ADMIN]
        if not grants:
            out.append(f"{site}: no AKS RBAC Cluster Admin grant for the deployer")
            continue
        for provider in _in_site(graph, "pulumi:providers:kubernetes", site):
            waits = [
                index[u]
                for u in _deps(graph, provider)
                if u in index
                and index[u].type == SLEEP
                and set(grants) & _deps(graph, index[u])
                and duration_seconds(index[u].inputs.get("createDuration", "")) >= 5 * 60
            ]
            if not waits:
                out.append(f"{provider.name}: does not wait five minutes after the deployer's AKS RBAC grant")
    return out


@pytest.mark.parametrize("stack", AZURE_STACKS)
def test_kubernetes_provider_waits_for_the_rbac_grant(graphs, stack):
    assert providers_not_waiting_for_rbac(graphs[stack]) == []


def test_the_rbac_wait_check_can_fail(graphs):
    graph = copy.deepcopy(graphs[AZURE_STACKS[0]])
    for sleep in graph.of_type(SLEEP):
        sleep.inputs["createDuration"] = "30s"
    assert providers_not_waiting_for_rbac(graph)


# -- 17: Azure Managed Redis ---------------------------------------------------------------


def not_managed_redis(graph: Graph) -> list[str]:
    """Azure sites whose Redis is not Azure Managed Redis as the gateway needs it."""
    out = [f"{r.name}: Azure Cache for Redis is retiring" for r in graph if r.type.startswith("azure-native:redis:")]
    for site in _azure_sites(graph):
        caches = _in_site(graph, REDIS, site)
        if len(caches) != 1:
            out.append(f"{site}: {len(caches)} Azure Managed Redis caches")
            continue
        cache = caches[0]
        spec = next(s for s in stack_config.parse(_raw_of(graph)).sites if s.name == site)
        sku = cache.inputs["sku"]["name"]
        if not sku.startswith(MANAGED_REDIS_SKUS):
            out.append(f"{cache.name}: SKU {sku} is not an Azure Managed Redis SKU")
        if (cache.inputs.get("highAvailability", "Enabled") == "Enabled") != (spec.redis.replicas > 0):
            out.append(f"{cache.name}: highAvailability does not follow redis.replicas={spec.redis.replicas}")
        dbs = [d for d in _in_site(graph, REDIS_DB, site) if d.inputs["clusterName"] == cache.id.rsplit("/", 1)[-1]]
        want = {
            "databaseName": "default",
            "port": 10000,
            "clientProtocol": "Encrypted",
            "accessKeysAuthentication": "Enabled",
        }
        for db in dbs:
            for key, value in want.items():
                if db.inputs.get(key) != value:
                    out.append(f"{db.name}: {key} is {db.inputs.get(key)!r}, not {value!r}")
            # A plain redis-py client with a two-key Lua script needs one endpoint (no OSS cluster API).
            if db.inputs.get("clusteringPolicy") not in ("EnterpriseCluster", "NoCluster"):
                out.append(
                    f"{db.name}: clusteringPolicy {db.inputs.get('clusteringPolicy')!r} needs a cluster-aware client"
                )
        if len(dbs) != 1:
            out.append(f"{cache.name}: {len(dbs)} databases")
        endpoints = [
            e
            for e in _in_site(graph, "azure-native:network:PrivateEndpoint", site)
            for c in e.inputs.get("privateLinkServiceConnections") or []
            if c.get("privateLinkServiceId") == cache.id and c.get("groupIds") == ["redisEnterprise"]
        ]
        zones = [
            z
            for z in _in_site(graph, "azure-native:privatedns:PrivateZone", site)
            if z.inputs.get("privateZoneName") == "privatelink.redis.azure.net"
        ]
        groups = [
            g
            for g in _in_site(graph, "azure-native:network:PrivateDnsZoneGroup", site)
            if any(c["privateDnsZoneId"] in {z.id for z in zones} for c in g.inputs.get("privateDnsZoneConfigs") or [])
        ]
        if not (endpoints and zones and groups):
            out.append(f"{cache.name}: no redisEnterprise private endpoint with the privatelink.redis.azure.net zone")
    return out


def _raw_of(graph: Graph) -> dict:
    return {k.split(":", 1)[1]: v for k, v in raw_stack_config(graph.stack).items() if k.startswith("llm-platform:")}


@pytest.mark.parametrize("stack", AZURE_STACKS)
def test_redis_is_azure_managed_redis(graphs, stack):
    assert not_managed_redis(graphs[stack]) == []


@pytest.mark.parametrize(
    "field,value",
    [("clusteringPolicy", "OSSCluster"), ("port", 6380), ("accessKeysAuthentication", "Disabled")],
)
def test_the_managed_redis_check_can_fail(graphs, field, value):
    graph = copy.deepcopy(graphs[AZURE_STACKS[0]])
    graph.of_type(REDIS_DB)[0].inputs[field] = value
    assert any(field in p for p in not_managed_redis(graph))


def test_policy_refuses_plaintext_managed_redis(graphs):
    policy = next(p for p in POLICIES if p.name == "redis-tls-auth-private")
    graph = copy.deepcopy(graphs[AZURE_STACKS[0]])
    strict = {"all": "mandatory"}
    assert policy_run.run(graph, [policy], strict) == []
    graph.of_type(REDIS_DB)[0].inputs["clientProtocol"] = "Plaintext"
    assert [v.policy for v in policy_run.run(graph, [policy], strict)] == ["redis-tls-auth-private"]


def test_managed_redis_is_priced_per_node(graphs):
    from infra.catalog import list_prices as prices
    from infra.cost import Item, estimate

    graph = graphs[AZURE_STACKS[0]]
    est = estimate(Item(r.type, r.name, r.inputs, graph.site_of(r), r.parent) for r in graph if r.custom)
    cache = graph.of_type(REDIS)[0]
    nodes = 2 if cache.inputs.get("highAvailability") == "Enabled" else 1
    line = next(x for x in est.lines if x.site == graph.site_of(cache) and x.component == "redis")
    hourly = prices()["azure"]["managed_redis"][cache.inputs["sku"]["name"]]
    assert line.monthly["max"] == pytest.approx(hourly * prices()["hours_per_month"] * nodes)


# -- 8: images from the site's own registry ---------------------------------------------


def images_not_from_the_site_registry(graph: Graph) -> list[str]:
    """Azure sites whose vLLM pods pull from outside the site's ACR, or whose ACR cannot
    serve Docker Hub through an authenticated cache before the pods pull."""
    index = graph.by_urn()
    out = []
    for site in _azure_sites(graph):
        registries = _in_site(graph, "azure-native:containerregistry:Registry", site)
        assert len(registries) == 1
        registry = registries[0]
        login_server = f"{registry.inputs['registryName']}.azurecr.io"
        if registry.inputs["sku"]["name"] not in ("Basic", "Standard", "Premium"):
            out.append(f"{registry.name}: artifact cache needs Basic, Standard or Premium")
        rules = [
            r
            for r in _in_site(graph, "azure-native:containerregistry:CacheRule", site)
            if r.inputs.get("sourceRepository") == "docker.io/*" and r.inputs.get("targetRepository") == "dockerhub/*"
        ]
        if not rules:
            out.append(f"{site}: no Docker Hub cache rule docker.io/* -> dockerhub/*")
        for rule in rules:
            creds = graph.by_id().get(rule.inputs.get("credentialSetResourceId", ""))
            if creds is None or creds.inputs.get("loginServer") != "docker.io":
                out.append(f"{rule.name}: Docker Hub needs a credential set (ACR pulls Docker Hub only signed in)")
                continue
            uris = {
                uri
                for c in creds.inputs["authCredentials"]
                for uri in (c["usernameSecretIdentifier"], c["passwordSecretIdentifier"])
            }
            secrets = [
                s
                for s in _in_site(graph, "azure-native:keyvault:Secret", site)
                if any(u.endswith(f"/secrets/{s.inputs['secretName']}") for u in uris)
            ]
            if len(secrets) != 2 or not any(s.inputs["properties"] == SECRET for s in secrets):
                out.append(f"{creds.name}: credentials are not two Key Vault secrets with the token kept secret")
            vaults = {s.inputs["vaultName"] for s in secrets}
            readers = [
                g
                for g in _in_site(graph, ROLE_ASSIGNMENT, site)
                if _role_id(g) == KEY_VAULT_SECRETS_USER and g.inputs["scope"].rsplit("/", 1)[-1] in vaults
            ]
            if not readers:
                out.append(f"{creds.name}: its identity may not read the Key Vault secrets")
        vllm = [
            d
            for d in _in_site(graph, "kubernetes:apps/v1:Deployment", site)
            if d.inputs["metadata"]["name"].startswith("vllm-")
        ]
        if not vllm:
            out.append(f"{site}: no vLLM Deployment")
        for deploy in vllm:
            for c in deploy.inputs["spec"]["template"]["spec"]["containers"]:
                if not c["image"].startswith(f"{login_server}/"):
                    out.append(f"{deploy.name}: pulls {c['image']}, not from {login_server}")
                # images/vllm is built FROM the upstream image, pulled through the cache.
                base = vllm_upstream(graph, deploy, c)
                if not base.startswith(f"{login_server}/dockerhub/vllm/vllm-openai:"):
                    out.append(f"{deploy.name}: its vLLM base {base} is not pulled through {login_server}/dockerhub")
                build = image_build(graph, deploy, c["image"])
                waits_for = {index[u].type for u in closure(graph, build or deploy) if u in index}
                if "azure-native:containerregistry:CacheRule" not in waits_for or SLEEP not in waits_for:
                    out.append(
                        f"{deploy.name}: its image may be built before the cache rule and the grants are in place"
                    )
    return out


@pytest.mark.parametrize("stack", AZURE_STACKS)
def test_vllm_is_pulled_through_the_site_registry(graphs, stack):
    assert images_not_from_the_site_registry(graphs[stack]) == []


def test_the_registry_check_can_fail(graphs):
    graph = copy.deepcopy(graphs[AZURE_STACKS[0]])
    build = next(
        b
        for b in graph.of_type("docker-build:index:Image")
        if graph.site_of(b) in _azure_sites(graph) and "VLLM_IMAGE" in (b.inputs.get("buildArgs") or {})
    )
    build.inputs["buildArgs"]["VLLM_IMAGE"] = "docker.io/vllm/vllm-openai:v1"
    assert all("is not pulled through" in p for p in images_not_from_the_site_registry(graph) or ["none"])


@pytest.mark.parametrize("stack", AZURE_STACKS)
def test_deployer_may_push_once_the_grant_propagated(graphs, stack):
    graph = graphs[stack]
    index = graph.by_urn()
    for site in _azure_sites(graph):
        registry = _in_site(graph, "azure-native:containerregistry:Registry", site)[0]
        pushes = [
            g
            for g in _in_site(graph, ROLE_ASSIGNMENT, site)
            if _role_id(g) == ACR_PUSH and g.inputs["scope"] == registry.id
        ]
        assert pushes, f"{site}: the deployer has no AcrPush on {registry.name}"
        builds = [b for b in graph.of_type("docker-build:index:Image") if graph.site_of(b) == site]
        assert builds
        for build in builds:
            waits = [index[u] for u in closure(graph, build) if u in index and index[u].type == SLEEP]
            assert any(pushes[0].urn in _deps(graph, w) for w in waits), (
                f"{build.name}: pushes before AcrPush propagated"
            )


def _platform_outputs(raw_overrides=None) -> dict:
    """The Azure site's Platform as the workloads receive it, built alone under the mocks."""
    config, secret_keys = read_stack_file(AZURE_STACKS[0], REPO)

    def program():
        cfg = stack_config.from_pulumi()
        site = next(s for s in cfg.sites if s.cloud == "azure")
        platform = build_platform(cfg, site, read_secrets())
        login = platform.images.login
        pulumi.export("address", login.address)
        pulumi.export("username", login.username)
        pulumi.export("password", login.password)
        pulumi.export("own", platform.images.own)
        pulumi.export("dockerHub", platform.images.docker_hub)
        pulumi.export("redis", {"host": platform.redis.host, "port": platform.redis.port, "tls": platform.redis.tls})
        pulumi.export("redisKey", platform.redis.auth_token)

    return record(AZURE_STACKS[0], config, secret_keys, program=program).outputs


def test_platform_hands_workloads_a_push_login_and_managed_redis():
    out = _platform_outputs()
    assert out["own"].endswith(".azurecr.io")
    assert out["address"] == out["own"]
    assert out["dockerHub"] == f"{out['own']}/dockerhub"
    # ACR's refresh-token login (Azure/acr:docs/AAD-OAuth.md); offline the exchange is not made.
    assert out["username"] == "00000000-0000-0000-0000-000000000000"
    assert out["password"] == SECRET
    assert out["redis"]["port"] == 10000 and out["redis"]["tls"] is True
    assert out["redis"]["host"].endswith(".redis.azure.net")
    assert out["redisKey"] == SECRET


def test_refresh_token_exchange_follows_acr_protocol(monkeypatch):
    sent = {}

    def urlopen(request, timeout):
        sent.update(
            url=request.full_url, method=request.get_method(), body=urllib.parse.parse_qs(request.data.decode())
        )
        sent["type"] = request.get_header("Content-type")
        return io.BytesIO(json.dumps({"refresh_token": "acr-refresh"}).encode())

    monkeypatch.setattr(azure.urllib.request, "urlopen", urlopen)
    assert azure.acr_refresh_token("llmx.azurecr.io", "tenant-1", "aad-token") == "acr-refresh"
    assert sent["url"] == "https://llmx.azurecr.io/oauth2/exchange" and sent["method"] == "POST"
    assert sent["type"] == "application/x-www-form-urlencoded"
    assert sent["body"] == {
        "grant_type": ["access_token"],
        "service": ["llmx.azurecr.io"],
        "tenant": ["tenant-1"],
        "access_token": ["aad-token"],
    }


def test_refused_exchange_says_what_the_deployer_lacks(monkeypatch):
    def urlopen(request, timeout):
        raise azure.urllib.error.HTTPError(request.full_url, 401, "Unauthorized", {}, io.BytesIO(b"{}"))

    monkeypatch.setattr(azure.urllib.request, "urlopen", urlopen)
    with pytest.raises(pulumi.RunError, match="AcrPush"):
        azure.acr_refresh_token("llmx.azurecr.io", "tenant-1", "aad-token")


# -- a site with a private API server and a one-node Redis; one without Docker Hub credentials


def _lone_azure_site(**changes) -> dict:
    raw = copy.deepcopy(raw_stack_config(AZURE_STACKS[0]))
    site = next(s for s in raw["llm-platform:sites"] if s["cloud"] == "azure")
    site.pop("apiAllowedCidrs", None)
    site.update(changes)
    raw["llm-platform:sites"] = [site]
    raw["llm-platform:budget"] = {k: v for k, v in raw["llm-platform:budget"].items() if k != "byCloud"}
    return raw


@pytest.fixture(scope="module")
def lean_azure_site():
    return record_raw("lean", _lone_azure_site(redis={"size": "small", "replicas": 0}))


def test_private_api_server_lists_no_ranges(lean_azure_site):
    access = lean_azure_site.of_type(CLUSTER)[0].inputs["apiServerAccessProfile"]
    assert access["enablePrivateCluster"] is True and not access.get("authorizedIPRanges")


def test_single_node_redis_when_no_replicas(lean_azure_site):
    cache = lean_azure_site.of_type(REDIS)[0]
    assert cache.inputs["highAvailability"] == "Disabled"
    assert cache.inputs["sku"]["name"].startswith(MANAGED_REDIS_SKUS)


def test_docker_hub_credentials_are_required(lean_azure_site):
    """ACR's cache cannot pull Docker Hub anonymously, and nodes must not either: a site without
    the credentials fails before anything is created, naming the key to set."""
    assert lean_azure_site.of_type("azure-native:containerregistry:CacheRule")
    raw = _lone_azure_site()
    raw["llm-platform:images"] = {k: v for k, v in raw["llm-platform:images"].items() if k != "dockerHubUser"}
    raw.pop("llm-platform:dockerHubToken", None)
    with pytest.raises(stack_config.ConfigError, match="dockerHubUser"):
        record_raw("lean", raw)
