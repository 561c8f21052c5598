"""A first `pulumi up` of a GCP site works, read from the recorded graphs: the DCGM exporter
finds GKE's driver, the security posture is one GKE Standard still accepts, the default
pool's inputs can never replace the cluster, images come from Artifact Registry in the
site's region, the cluster asks its release channel for the configured minor, and every
API the site calls is on the list the README tells users to enable.

Facts about GKE, Artifact Registry and the DCGM chart are stated here with their sources,
not read back from infra/, so a wrong belief in the program cannot pass its own test."""

from __future__ import annotations

import copy
import dataclasses

import pytest

import infra.plan.mocks as mocks
from infra.config import ConfigError
from infra.plan import report
from infra.plan.graph import Graph, Resource
from infra.plan.scheduling import gpu_pools, tolerated
from infra.platform import gcp as gcp_platform
from tests.infra.invariants import site_clouds
from tests.stacks import SHIPPED, record_raw, stack_config

# GKE's driver installer puts the NVIDIA driver here on the host; Google's DCGM manifest
# mounts it at /usr/local/nvidia with LD_LIBRARY_PATH=/usr/local/nvidia/lib64, privileged
# (GoogleCloudPlatform/prometheus-engine@2ffde4e:examples/nvidia-dcgm/exporter.yaml, read 2026-12-01).
GKE_DRIVER_DIR = "/home/kubernetes/bin/nvidia"
# The chart's own extraVolumeMounts entry, which a values list replaces
# (NVIDIA/dcgm-exporter@4.5.3-4.8.2:deployment/values.yaml, read 2026-12-01).
CHART_METRICS_MOUNT = "exporter-metrics-volume"
# Deprecated and refused on GKE Standard; ENTERPRISE needs GKE Enterprise
# (https://cloud.google.com/kubernetes-engine/docs/deprecations/vulnerability-scanning-gkee, read 2026-12-01).
UNSUPPORTED_VULNERABILITY_MODES = ("VULNERABILITY_BASIC", "VULNERABILITY_ENTERPRISE")
# Cluster inputs that describe only the default pool (GKE v1 API Cluster.nodeConfig /
# initialNodeCount / nodePools; terraform-google-kubernetes-engine v44.2.0 cluster.tf ignores them).
DEFAULT_POOL_INPUTS = ("nodeConfig", "initialNodeCount", "nodePools")
# The API each GCP resource module calls.
MODULE_APIS = {
    "compute": "compute.googleapis.com",
    "container": "container.googleapis.com",
    "kms": "cloudkms.googleapis.com",
    "serviceaccount": "iam.googleapis.com",
    "projects/iAMMember": "cloudresourcemanager.googleapis.com",
    "projects/serviceIdentity": "serviceusage.googleapis.com",
    "servicenetworking": "servicenetworking.googleapis.com",
    "redis": "redis.googleapis.com",
    "artifactregistry": "artifactregistry.googleapis.com",
    "secretmanager": "secretmanager.googleapis.com",
    "monitoring": "monitoring.googleapis.com",
    "billing": "billingbudgets.googleapis.com",
}
POD_KINDS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")
TOKEN = "dckr_pat_SENTINEL0docker0hub0token"

GCP_STACKS = [s for s in SHIPPED if any(site["cloud"] == "gcp" for site in stack_config(s)["llm-platform:sites"])]


def gcp_only(stack: str, docker_hub: bool) -> dict:
    """The stack's GCP sites alone, with or without Docker Hub credentials."""
    raw = copy.deepcopy(stack_config(stack))
    raw["llm-platform:sites"] = [s for s in raw["llm-platform:sites"] if s["cloud"] == "gcp"]
    budget = raw["llm-platform:budget"]
    budget["byCloud"] = {k: v for k, v in (budget.get("byCloud") or {}).items() if k == "gcp"}
    raw.pop("llm-platform:dockerHubToken", None)
    if docker_hub:
        raw["llm-platform:images"] = {**raw["llm-platform:images"], "dockerHubUser": "llmplatformci"}
    else:
        raw["llm-platform:images"] = {k: v for k, v in raw["llm-platform:images"].items() if k != "dockerHubUser"}
    return raw


@pytest.fixture(scope="module")
def anonymous():
    """A GCP-only stack that pulls Docker Hub anonymously."""
    return record_raw(GCP_STACKS[0], gcp_only(GCP_STACKS[0], docker_hub=False))


@pytest.fixture(scope="module")
def signed_in():
    """A GCP-only stack whose remote repository signs in to Docker Hub."""
    return record_raw(GCP_STACKS[0], gcp_only(GCP_STACKS[0], docker_hub=True), {"dockerHubToken": TOKEN})


def gcp_sites(graph: Graph) -> list[str]:
    return [site for site, cloud in site_clouds(graph).items() if cloud == "gcp"]


def on(graph: Graph, site: str, *types: str) -> list[Resource]:
    return [r for r in graph.of_type(*types) if graph.site_of(r) == site]


def site_config(graph: Graph, site: str) -> dict:
    return next(s for s in stack_config(graph.stack)["llm-platform:sites"] if s["name"] == site)


def dcgm_release(graph: Graph, site: str) -> Resource | None:
    releases = [r for r in on(graph, site, "kubernetes:helm.sh/v3:Release") if r.inputs.get("chart") == "dcgm-exporter"]
    return releases[0] if releases else None


def dcgm_problems(graph: Graph) -> list[str]:
    """The DCGM exporter on a GKE site that cannot load GKE's driver or see its GPUs, or that
    lands on no GPU pool; on other clouds, any GKE-only mount."""
    problems = []
    clouds = site_clouds(graph)
    for site, cloud in clouds.items():
        release = dcgm_release(graph, site)
        if release is None:
            continue
        values = release.inputs["values"]
        if cloud != "gcp":
            if values.get("extraHostVolumes") or (values.get("securityContext") or {}).get("privileged"):
                problems.append(
                    f"{site}: the exporter mounts host driver paths on {cloud}, where the runtime injects them"
                )
            continue
        volumes = {v["name"] for v in values.get("extraHostVolumes") or [] if v.get("hostPath") == GKE_DRIVER_DIR}
        mounts = {m["mountPath"] for m in values.get("extraVolumeMounts") or [] if m.get("name") in volumes}
        if not mounts:
            problems.append(f"{site}: {GKE_DRIVER_DIR} is not mounted into the exporter")
        env = {e["name"]: e.get("value", "") for e in values.get("extraEnv") or []}
        lib_dirs = env.get("LD_LIBRARY_PATH", "").split(":")
        if not any(f"{m.rstrip('/')}/lib64" in lib_dirs for m in mounts):
            problems.append(f"{site}: LD_LIBRARY_PATH does not reach the mounted driver's lib64 (libnvidia-ml.so)")
        context = values.get("securityContext") or {}
        if not context.get("privileged"):
            problems.append(f"{site}: not privileged, so /dev/nvidia* stays hidden from a pod that requests no GPU")
        # The chart's default is false, which the API server refuses beside privileged: true.
        if context.get("privileged") and context.get("allowPrivilegeEscalation") is not True:
            problems.append(f"{site}: privileged with the chart's allowPrivilegeEscalation: false is rejected")
        if CHART_METRICS_MOUNT not in {m.get("name") for m in values.get("extraVolumeMounts") or []}:
            problems.append(f"{site}: the chart's own metrics mount was dropped with the list")
        spec = {"tolerations": values.get("tolerations") or []}
        for pool in (p for p in gpu_pools(graph) if p.site == site):
            selector = values.get("nodeSelector") or {}
            if any(pool.labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{site}: nodeSelector {selector} misses GPU pool {pool.name}")
            for taint in pool.taints:
                if taint[2] in ("NoSchedule", "NoExecute") and not tolerated(spec, taint):
                    problems.append(f"{site}: GPU pool {pool.name}'s taint {taint} is not tolerated")
    return problems


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_dcgm_exporter_reads_the_gke_driver_and_reaches_every_gpu_pool(graphs, stack):
    graph = graphs[stack]
    assert any(dcgm_release(graph, s) for s in gcp_sites(graph)), "no DCGM exporter on a GCP site"
    assert dcgm_problems(graph) == []


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_gke_security_posture_is_one_standard_clusters_accept(graphs, stack):
    clusters = graphs[stack].of_type("gcp:container/cluster:Cluster")
    assert clusters
    for cluster in clusters:
        posture = cluster.inputs.get("securityPostureConfig") or {}
        assert posture.get("vulnerabilityMode") not in UNSUPPORTED_VULNERABILITY_MODES, cluster.name


def default_pool_replacements(graph: Graph) -> list[str]:
    """Default-pool inputs of a cluster whose default pool is removed that a later change could
    turn into a cluster replacement."""
    problems = []
    for cluster in graph.of_type("gcp:container/cluster:Cluster"):
        if not cluster.inputs.get("removeDefaultNodePool"):
            continue
        ignored = set(getattr(cluster, "options", {}).get("ignoreChanges") or [])
        for key in DEFAULT_POOL_INPUTS:
            if key in cluster.inputs and key not in ignored:
                problems.append(f"{cluster.name}: {key} describes the removed default pool but is not in ignoreChanges")
    return problems


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_default_pool_inputs_never_replace_the_cluster(graphs, stack):
    assert graphs[stack].of_type("gcp:container/cluster:Cluster")
    assert default_pool_replacements(graphs[stack]) == []


def _repo_prefix(repo: Resource) -> str:
    """<location>-docker.pkg.dev/<project>/<repository>/, from the repository's id
    (projects/<project>/locations/<location>/repositories/<repository>)."""
    _, project, _, location, _, name = repo.id.split("/")
    return f"{location}-docker.pkg.dev/{project}/{name}/"


def image_problems(graph: Graph) -> list[str]:
    """GCP sites whose pods pull from outside the site's Artifact Registry, whose Docker Hub
    images have no remote repository in the region, or whose nodes may not read a repository."""
    problems = []
    for site in gcp_sites(graph):
        region = site_config(graph, site)["region"]
        repos = on(graph, site, "gcp:artifactregistry/repository:Repository")
        remote = [
            r
            for r in repos
            if r.inputs.get("mode") == "REMOTE_REPOSITORY"
            and r.inputs.get("format") == "DOCKER"
            and (r.inputs.get("remoteRepositoryConfig") or {}).get("dockerRepository", {}).get("publicRepository")
            == "DOCKER_HUB"
        ]
        if not remote:
            problems.append(f"{site}: no Artifact Registry remote repository for Docker Hub")
        for repo in repos:
            if repo.inputs["location"] != region:
                problems.append(f"{site}: repository {repo.name} is in {repo.inputs['location']}, not {region}")
        node_accounts = {
            p.inputs["nodeConfig"]["serviceAccount"] for p in on(graph, site, "gcp:container/nodePool:NodePool")
        }
        readers = {
            (m.inputs["repository"], m.inputs["member"].removeprefix("serviceAccount:"))
            for m in on(graph, site, "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
            if m.inputs["role"] in ("roles/artifactregistry.reader", "roles/artifactregistry.writer")
        }
        for repo in repos:
            for account in node_accounts:
                if (repo.inputs["repositoryId"], account) not in readers:
                    problems.append(f"{site}: nodes ({account}) may not read {repo.inputs['repositoryId']}")
        prefixes = tuple(_repo_prefix(r) for r in repos)
        for workload in on(graph, site, *POD_KINDS):
            spec = workload.inputs["spec"]["template"]["spec"]
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                if not container["image"].startswith(prefixes):
                    problems.append(
                        f"{site}: {workload.name} pulls {container['image']} from outside the site's registry"
                    )
        own = [r for r in repos if r.inputs.get("mode") in (None, "STANDARD_REPOSITORY")]
        for image in on(graph, site, "docker-build:index:Image"):
            if not all(t.startswith(tuple(_repo_prefix(r) for r in own)) for t in image.inputs.get("tags") or []):
                problems.append(f"{site}: {image.name} is pushed outside the site's own repository")
    return problems


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_gcp_images_come_from_artifact_registry_in_the_region(graphs, stack):
    graph = graphs[stack]
    for site in gcp_sites(graph):
        assert on(graph, site, *POD_KINDS) and on(graph, site, "docker-build:index:Image"), f"{site}: nothing to check"
    assert image_problems(graph) == []


def test_anonymous_docker_hub_needs_no_credentials(anonymous):
    assert image_problems(anonymous) == []
    for repo in anonymous.of_type("gcp:artifactregistry/repository:Repository"):
        assert "upstreamCredentials" not in (repo.inputs.get("remoteRepositoryConfig") or {})
    assert not anonymous.of_type("gcp:secretmanager/secret:Secret")


def test_docker_hub_token_is_read_by_artifact_registry_from_secret_manager(signed_in, tmp_path):
    graph = signed_in
    assert image_problems(graph) == []
    versions = {r.id: r for r in graph.of_type("gcp:secretmanager/secretVersion:SecretVersion")}
    grants = graph.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
    repos = graph.of_type("gcp:artifactregistry/repository:Repository")
    remote = [r for r in repos if r.inputs.get("mode") == "REMOTE_REPOSITORY"]
    assert remote
    for repo in remote:
        creds = repo.inputs["remoteRepositoryConfig"]["upstreamCredentials"]["usernamePasswordCredentials"]
        assert creds["username"] == "llmplatformci"
        # A version path (projects/*/secrets/*/versions/*), the only form the API takes.
        version = versions[creds["passwordSecretVersion"]]
        assert version.inputs["secretData"] == "[secret]"
        secret = version.inputs["secret"]
        assert creds["passwordSecretVersion"].startswith(f"{secret}/versions/")
        # Artifact Registry's service agent reads the secret, before the repository first uses it.
        agent = "@gcp-sa-artifactregistry.iam.gserviceaccount.com"
        granted = [g for g in grants if g.inputs["secretId"] == secret and g.inputs["member"].endswith(agent)]
        assert granted and all(g.inputs["role"] == "roles/secretmanager.secretAccessor" for g in granted)
        assert {g.urn for g in granted} <= set(repo.dependencies)
    written = report.write(graph, tmp_path)
    texts = [written["plan"].read_text()] + [p.read_text() for p in written["manifests"].rglob("*.yaml")]
    for text in texts:
        assert TOKEN not in text and mocks.MOCK_GCP_ACCESS_TOKEN not in text


def test_half_set_docker_hub_credentials_name_the_missing_key():
    raw = gcp_only(GCP_STACKS[0], docker_hub=False)
    with pytest.raises(ConfigError, match="images.dockerHubUser"):
        record_raw(GCP_STACKS[0], raw, {"dockerHubToken": TOKEN})


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_cluster_asks_its_channel_for_the_configured_minor(graphs, stack):
    graph = graphs[stack]
    for site in gcp_sites(graph):
        minor = site_config(graph, site)["kubernetesVersion"]
        (cluster,) = on(graph, site, "gcp:container/cluster:Cluster")
        # A minor, not a patch: the channel picks and upgrades the patch, so the input never drifts.
        assert cluster.inputs["minMasterVersion"] == minor
        assert cluster.inputs["releaseChannel"]["channel"] in ("RAPID", "REGULAR", "STABLE")
        for pool in on(graph, site, "gcp:container/nodePool:NodePool"):
            # Pools follow the control plane; a pinned version would fight the channel.
            assert "version" not in pool.inputs, pool.name


def test_a_minor_the_channel_does_not_offer_fails_before_anything_is_created(monkeypatch):
    offline = mocks.gke_server_config

    def regular_without_it(prefix: str, location: str) -> dict:
        answer = offline(prefix, location)
        answer["releaseChannelLatestVersion"] = {
            k: v for k, v in answer["releaseChannelLatestVersion"].items() if k != "REGULAR"
        }
        answer["releaseChannelDefaultVersion"]["REGULAR"] = "1.30.9-gke.100"
        return answer

    monkeypatch.setattr(mocks, "gke_server_config", regular_without_it)
    raw = gcp_only(GCP_STACKS[0], docker_hub=False)
    with pytest.raises(ConfigError, match=r"sites\[0\]\.kubernetesVersion: GKE's REGULAR channel has no"):
        record_raw(GCP_STACKS[0], raw)


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_every_api_a_gcp_site_calls_is_listed_for_enabling(graphs, stack):
    graph = graphs[stack]
    used = set()
    for r in graph:
        if not r.custom or not r.type.startswith("gcp:"):
            continue
        module = r.type.split(":")[1]
        api = MODULE_APIS.get(module) or MODULE_APIS.get(module.split("/")[0])
        assert api, f"{r.type}: which API does it call? add it to MODULE_APIS and GKE_APIS"
        used.add(api)
    assert used - set(gcp_platform.GKE_APIS) == set()


def test_checks_catch_the_old_behaviour(graphs):
    """Each check above fails on what the program used to register."""
    graph = graphs[GCP_STACKS[0]]
    site = gcp_sites(graph)[0]
    old = Graph(graph.stack, [copy.deepcopy(r) for r in graph.resources], dict(graph.outputs))
    release = dcgm_release(old, site)
    values = release.inputs["values"]
    for key in ("extraHostVolumes", "extraVolumeMounts", "extraEnv", "securityContext"):
        values.pop(key, None)
    assert any(GKE_DRIVER_DIR in p for p in dcgm_problems(old))
    values["securityContext"] = {"privileged": True}
    assert any("allowPrivilegeEscalation" in p for p in dcgm_problems(old))
    (cluster,) = on(old, site, "gcp:container/cluster:Cluster")
    unguarded = {k: v for k, v in cluster.options.items() if k != "ignoreChanges"}
    old.resources[old.resources.index(cluster)] = dataclasses.replace(cluster, options=unguarded)
    assert any("nodeConfig" in p for p in default_pool_replacements(old))
    for r in on(old, site, "gcp:artifactregistry/repository:Repository"):
        if r.inputs.get("mode") == "REMOTE_REPOSITORY":
            old.resources.remove(r)
    assert any("remote repository" in p for p in image_problems(old))
    deployment = next(r for r in on(old, site, "kubernetes:apps/v1:Deployment"))
    deployment.inputs["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.33.0"
    assert any("from outside" in p for p in image_problems(old))


def gke_gpu_problems(graph: Graph) -> list[str]:
    """GKE installs the NVIDIA driver only where a pool asks for it, and then runs its own
    device plugin; a GKE site that installs NVIDIA's chart as well runs two plugins on one GPU,
    and one that asks for no driver has GPUs no pod can use."""
    out = []
    gke_sites = {r.name for r in graph if r.type == "llm-platform:gcp:Site"}
    for pool in graph.of_type("gcp:container/nodePool:NodePool"):
        for accel in pool.inputs["nodeConfig"].get("guestAccelerators") or []:
            version = (accel.get("gpuDriverInstallationConfig") or {}).get("gpuDriverVersion")
            if version not in ("LATEST", "DEFAULT"):
                out.append(f"{pool.name}: GKE installs no driver ({version!r})")
    for r in graph.of_type("kubernetes:helm.sh/v3:Release"):
        if r.inputs.get("chart") == "nvidia-device-plugin" and graph.site_of(r) in gke_sites:
            out.append(f"{r.name}: a second device plugin on GKE")
    return out


@pytest.mark.parametrize("stack", GCP_STACKS)
def test_gpu_nodes_get_a_driver_and_a_device_plugin_from_one_place(graphs, stack):
    assert gke_gpu_problems(graphs[stack]) == []


def test_a_gke_gpu_pool_without_a_driver_is_named(graphs):
    graph = copy.deepcopy(graphs[GCP_STACKS[0]])
    pool = next(
        p for p in graph.of_type("gcp:container/nodePool:NodePool") if p.inputs["nodeConfig"].get("guestAccelerators")
    )
    pool.inputs["nodeConfig"]["guestAccelerators"][0].pop("gpuDriverInstallationConfig")
    assert gke_gpu_problems(graph) == [f"{pool.name}: GKE installs no driver (None)"]
