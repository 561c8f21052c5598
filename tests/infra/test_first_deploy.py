"""A first `pulumi up` works unattended, on every cloud: each resource waits for what it
needs, waits long enough, pulls its images from inside its own cloud, and runs vLLM as a
user its image knows. Read from the recorded graphs of every shipped stack."""

from __future__ import annotations

import json
import re

import pulumi
import pytest

from infra.catalog import vllm_image_user
from infra.plan import report
from infra.plan.graph import Graph, Resource
from infra.plan.policy_run import policy_resources
from infra.plan.run import record
from infra.workloads.vllm_args import serve_args
from tests.infra.invariants import GPU_POOL_TYPES, closure, image_build
from tests.stacks import SHIPPED, stack_config

NAMESPACED = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:core/v1:Service",
    "kubernetes:core/v1:Secret",
    "kubernetes:core/v1:ConfigMap",
    "kubernetes:policy/v1:PodDisruptionBudget",
    "kubernetes:networking.k8s.io/v1:NetworkPolicy",
    "kubernetes:core/v1:PersistentVolumeClaim",
)
# Registries inside each cloud, by host.
SITE_REGISTRY = {
    "aws": re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/"),
    "gcp": re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev/"),
    "azure": re.compile(r"^[a-z0-9]+\.azurecr\.io/"),
}


def _site_cloud(graph: Graph) -> dict[str, str]:
    return {
        r.name: r.type.split(":")[1]
        for r in graph
        if r.type.endswith(":Site") and r.type.split(":")[1] in SITE_REGISTRY
    }


def _pool_labels(r: Resource) -> dict:
    return (
        r.inputs.get("labels") or (r.inputs.get("nodeConfig") or {}).get("labels") or r.inputs.get("nodeLabels") or {}
    )


def waits_missing(graph: Graph) -> list[str]:
    """Namespaced objects that do not wait for their Namespace; vLLM Deployments that do not
    wait for the node group they select and for the site's device plugin."""
    problems = []
    namespaces = {
        (graph.site_of(r), r.inputs["metadata"]["name"]): r.urn for r in graph.of_type("kubernetes:core/v1:Namespace")
    }
    plugins = {
        graph.site_of(r): r.urn
        for r in graph.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs.get("chart") == "nvidia-device-plugin"
    }
    for r in graph.of_type(*NAMESPACED):
        site, ns = graph.site_of(r), r.inputs["metadata"].get("namespace")
        waits = closure(graph, r)
        if (site, ns) in namespaces and namespaces[(site, ns)] not in waits:
            problems.append(f"{r.name} does not wait for namespace {ns}")
        if r.type != "kubernetes:apps/v1:Deployment" or not r.inputs["metadata"]["name"].startswith("vllm-"):
            continue
        selector = r.inputs["spec"]["template"]["spec"]["nodeSelector"]
        groups = [
            g.urn
            for g in graph.of_type(*GPU_POOL_TYPES.values())
            if graph.site_of(g) == site and all(_pool_labels(g).get(k) == v for k, v in selector.items())
        ]
        if not groups or not set(groups) <= waits:
            problems.append(f"{r.name} does not wait for the GPU node group it selects")
        if site in plugins and plugins[site] not in waits:
            problems.append(f"{r.name} does not wait for the NVIDIA device plugin")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_object_waits_for_what_it_needs(graphs, stack):
    assert waits_missing(graphs[stack]) == []


def test_an_object_that_does_not_wait_is_caught(graphs):
    import copy

    graph = copy.deepcopy(graphs["dev"])
    vllm = next(
        r
        for r in graph.of_type("kubernetes:apps/v1:Deployment")
        if r.name.endswith("-deploy") and "vllm" in str(r.inputs["metadata"])
    )
    graph.resources[graph.resources.index(vllm)] = Resource(**{**vllm.__dict__, "dependencies": (), "options": {}})
    assert len(waits_missing(graph)) >= 2


def pulled_from_outside(graph: Graph) -> list[str]:
    """Containers of the program's own workloads whose image is not in the site's cloud."""
    clouds = _site_cloud(graph)
    problems = []
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        cloud = clouds[graph.site_of(r)]
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            if not SITE_REGISTRY[cloud].match(c["image"]):
                problems.append(f"{r.name}/{c['name']}: {c['image']} is not in the site's {cloud} registry")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_images_come_from_the_sites_own_registry(graphs, stack):
    assert pulled_from_outside(graphs[stack]) == []


def not_built_here(graph: Graph) -> list[str]:
    """The gateway and vLLM containers that do not run, by digest, an image this run pushed
    (images/gateway, images/vllm) and waited for."""
    problems = []
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        name = r.inputs["metadata"]["name"]
        if name != "gateway" and not name.startswith("vllm-"):
            continue
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            # The digest of what was pushed, not a tag that may not exist or may move.
            if "@sha256:" not in c["image"]:
                problems.append(f"{r.name}: runs {c['image']}, not a pushed digest")
            build = image_build(graph, r, c["image"])
            wanted = "images/gateway/Dockerfile" if name == "gateway" else "images/vllm/Dockerfile"
            if build is None or build.inputs["dockerfile"]["location"] != wanted:
                problems.append(f"{r.name}: does not run {wanted} as this run built and pushed it")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_the_workloads_run_the_images_this_deploy_pushed(graphs, stack):
    assert not_built_here(graphs[stack]) == []


def test_an_image_not_built_here_is_caught(graphs):
    import copy

    graph = copy.deepcopy(graphs["dev"])
    vllm = next(
        r for r in graph.of_type("kubernetes:apps/v1:Deployment") if r.inputs["metadata"]["name"].startswith("vllm-")
    )
    vllm.inputs["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.33.0"
    assert len(not_built_here(graph)) == 2


def unknown_users(graph: Graph) -> list[str]:
    """vLLM containers that run as a uid the pinned image has no passwd entry for, and with no
    USER in their environment: torch's getpass.getuser() raises and vLLM exits on import."""
    user = vllm_image_user()
    problems = []
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            if c["name"] != "vllm":
                continue
            uid = (c.get("securityContext") or {}).get("runAsUser")
            env = {e["name"] for e in c.get("env", [])}
            if uid != user.uid and "USER" not in env:
                problems.append(
                    f"{r.name}: runs as uid {uid}; {user.image}:{user.version} defines only {user.user} ({user.uid})"
                )
            if uid != user.uid:
                problems.append(f"{r.name}: uid {uid} owns nothing in the image; its user is {user.uid}")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_vllm_runs_as_the_user_its_image_defines(graphs, stack):
    assert unknown_users(graphs[stack]) == []


def test_the_image_user_fact_is_for_the_image_the_stacks_pin():
    user = vllm_image_user()
    for stack in SHIPPED:
        assert stack_config(stack)["llm-platform:images"]["vllm"] == f"{user.image}:{user.version}", (
            "re-read the image's Dockerfile and update upstream/vllm/image.yaml with the pin"
        )


def test_a_user_without_a_passwd_entry_is_caught(graphs):
    import copy

    graph = copy.deepcopy(graphs["dev"])
    vllm = next(
        r for r in graph.of_type("kubernetes:apps/v1:Deployment") if r.inputs["metadata"]["name"].startswith("vllm-")
    )
    container = vllm.inputs["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsUser"] = 10002
    container["env"] = [e for e in container["env"] if e["name"] != "USER"]
    assert len(unknown_users(graph)) == 2


def test_load_time_quantization_is_still_asked_for():
    from infra.config import ModelSpec

    spec = dict(name="m", hfRepo="o/m", paramsBillion=8, maxModelLen=4096, gpuPool="p", replicas={"min": 0, "max": 1})
    assert "--quantization" not in serve_args(ModelSpec.model_validate({**spec, "quantization": "awq"}))
    args = serve_args(ModelSpec.model_validate({**spec, "quantization": "fp8"}))
    assert args[args.index("--quantization") + 1] == "fp8"


def _program_with_every_option():
    import pulumi_random as random

    first = random.RandomString("first", length=4)
    random.RandomString(
        "second",
        length=4,
        opts=pulumi.ResourceOptions(
            depends_on=[first],
            custom_timeouts=pulumi.CustomTimeouts(create="45m", update="1h30m", delete="90s"),
            ignore_changes=["length"],
            protect=True,
            delete_before_replace=True,
            replace_on_changes=["special"],
            aliases=[pulumi.Alias(name="old-second")],
            retain_on_delete=True,
        ),
    )


def test_plan_records_each_resource_option_and_the_policy_run_sees_them(tmp_path):
    graph = record("options", {}, program=_program_with_every_option)
    written = report.write(graph, tmp_path)
    plan = {e["name"]: e for e in json.loads(written["plan"].read_text())["resources"]}
    first, second = plan["first"], plan["second"]
    assert first["options"] == {}
    options = second["options"]
    assert options["dependsOn"] == [first["urn"]]
    assert options["customTimeouts"] == {"create": "45m", "update": "1h30m", "delete": "90s"}
    assert options["ignoreChanges"] == ["length"] and options["replaceOnChanges"] == ["special"]
    assert options["protect"] is True and options["deleteBeforeReplace"] is True and options["retainOnDelete"] is True
    assert any("old-second" in a for a in options["aliases"])
    seen = policy_resources(graph)[second["urn"]].opts
    assert (
        seen.custom_timeouts.create_seconds,
        seen.custom_timeouts.update_seconds,
        seen.custom_timeouts.delete_seconds,
    ) == (2700, 5400, 90)
    assert seen.protect and seen.ignore_changes == ["length"] and seen.delete_before_replace is True


@pytest.mark.parametrize(
    ("image", "path"),
    [
        ("vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.33.0"),
        ("docker.io/vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.33.0"),
        ("busybox:1.38.0", "library/busybox:1.38.0"),
        ("docker.io/busybox:1.38.0", "library/busybox:1.38.0"),
        ("ghcr.io/org/model-server:1.2", None),
        ("registry.example.com:5000/team/vllm:1", None),
        ("localhost/vllm:dev", None),
    ],
)
def test_only_docker_hub_images_go_through_the_cache(image, path):
    from infra.workloads.images import docker_hub_path

    assert docker_hub_path(image) == path
