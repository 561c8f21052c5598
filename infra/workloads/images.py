"""Where each site's pods get their images: images/gateway and images/vllm, built here and
pushed to the site's own registry; images/vllm starts FROM the pinned upstream vLLM image,
pulled through the site's Docker Hub cache.

All of it stays inside the site's cloud, so a first `pulumi up` needs no registry that the
same run has not created yet, and nothing meets Docker Hub's anonymous pull limit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pulumi
import pulumi_docker_build as docker_build

from infra.platform import ImageRegistry

# Relative to the project directory, where `pulumi up` runs the program: state stays the same
# whichever checkout deploys.
CONTEXT = "."
GATEWAY_DOCKERFILE = "images/gateway/Dockerfile"
VLLM_DOCKERFILE = "images/vllm/Dockerfile"
_REPO = Path(__file__).resolve().parents[2]
# Every node pool is x86_64 (the catalog's GPU instances and the system pools).
PLATFORM = "linux/amd64"


def docker_hub_path(image: str) -> str | None:
    """`vllm/vllm-openai:v1` -> `vllm/vllm-openai:v1`, `nginx:1` -> `library/nginx:1`, and None
    for an image that names another registry (`ghcr.io/x/y:1`), which is pulled as written."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"library/{image}"
    if first == "docker.io":
        return docker_hub_path(rest)
    if "." in first or ":" in first or first == "localhost":
        return None
    return image


def pulled_through(image: str, registry: ImageRegistry) -> pulumi.Output[str]:
    """The reference a node pulls `image` by: through the site's cache for Docker Hub images."""
    path = docker_hub_path(image)
    if path is None:
        return pulumi.Output.from_input(image)
    return registry.docker_hub.apply(lambda prefix: f"{prefix}/{path}")


class BuiltImage(pulumi.ComponentResource):
    """A Dockerfile of images/ built for the nodes' platform and pushed to the site's registry
    as <own>/<repository>:<tag>; `ref` is that tag with its digest, so a Deployment runs exactly
    what was built."""

    def __init__(
        self,
        name: str,
        registry: ImageRegistry,
        repository: str,
        dockerfile: str,
        tag: pulumi.Input[str],
        opts: pulumi.ResourceOptions,
        build_args: dict[str, pulumi.Input[str]] | None = None,
    ):
        super().__init__("llm-platform:workloads:BuiltImage", name, None, opts)
        login = registry.login
        image = docker_build.Image(
            f"{name}-build",
            context={"location": CONTEXT},
            dockerfile={"location": dockerfile},
            build_args=build_args,
            platforms=[PLATFORM],
            tags=[pulumi.Output.concat(registry.own, f"/{repository}:", tag)],
            push=True,
            # A preview must not need Docker or push anything.
            build_on_preview=False,
            # One sign-in serves both the push and a base pulled through the site's Docker Hub
            # cache: each cloud's cache lives in the same registry host as its own repositories.
            # Each cloud's push token is short-lived and new on every run; the provider leaves a
            # changed password out of its diff, so a new token alone rebuilds and re-pushes
            # nothing (pulumi/pulumi-docker-build v0.0.22, provider/internal/image.go Diff).
            registries=[{"address": login.address, "username": login.username, "password": login.password}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(registry.ready)),
        )
        self.ref = image.ref
        self.register_outputs({"ref": self.ref})


def gateway_image(name: str, registry: ImageRegistry, tag: str, opts: pulumi.ResourceOptions) -> BuiltImage:
    # Stacks deployed before images/vllm knew this component as GatewayImage.
    renamed = pulumi.ResourceOptions.merge(
        opts, pulumi.ResourceOptions(aliases=[pulumi.Alias(type_="llm-platform:workloads:GatewayImage")])
    )
    return BuiltImage(name, registry, "gateway", GATEWAY_DOCKERFILE, tag, renamed)


def vllm_image(name: str, registry: ImageRegistry, upstream: str, opts: pulumi.ResourceOptions) -> BuiltImage:
    """images/vllm on top of `upstream` (images.vllm), pulled through the site's cache.

    Tagged <upstream tag>-<hash of the Dockerfile and the base>: the repositories keep tags
    immutable (ECR's IMMUTABLE), so a changed Dockerfile or base must push a new tag, and an
    unchanged one the same tag, which rebuilds nothing."""
    base = pulled_through(upstream, registry)
    recipe = (_REPO / VLLM_DOCKERFILE).read_bytes()
    tag = f"{upstream.rsplit(':', 1)[1]}-{hashlib.sha256(recipe + upstream.encode()).hexdigest()[:12]}"
    return BuiltImage(name, registry, "vllm", VLLM_DOCKERFILE, tag, opts, build_args={"VLLM_IMAGE": base})
