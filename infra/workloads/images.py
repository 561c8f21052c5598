"""Where each site's pods get their images: the gateway built here and pushed to the site's
own registry, upstream images (vLLM) pulled through the site's Docker Hub cache.

Both stay inside the site's cloud, so a first `pulumi up` needs no registry that the same
run has not created yet, and GPU nodes never meet Docker Hub's anonymous pull limit.
"""

from __future__ import annotations

import pulumi
import pulumi_docker_build as docker_build

from infra.platform import ImageRegistry

# Relative to the project directory, where `pulumi up` runs the program: state stays the same
# whichever checkout deploys.
CONTEXT = "."
GATEWAY_DOCKERFILE = "images/gateway/Dockerfile"
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


class GatewayImage(pulumi.ComponentResource):
    """images/gateway built for the nodes' platform and pushed to the site's registry; `ref`
    is the pushed tag with its digest, so the Deployment runs exactly what was built."""

    def __init__(self, name: str, registry: ImageRegistry, tag: str, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:workloads:GatewayImage", name, None, opts)
        login = registry.login
        image = docker_build.Image(
            f"{name}-build",
            context={"location": CONTEXT},
            dockerfile={"location": GATEWAY_DOCKERFILE},
            platforms=[PLATFORM],
            tags=[registry.own.apply(lambda prefix: f"{prefix}/gateway:{tag}")],
            push=True,
            # A preview must not need Docker or push anything.
            build_on_preview=False,
            # Each cloud's push token is short-lived and new on every run; the provider leaves a
            # changed password out of its diff, so a new token alone rebuilds and re-pushes
            # nothing (pulumi/pulumi-docker-build v0.0.22, provider/internal/image.go Diff).
            registries=[{"address": login.address, "username": login.username, "password": login.password}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(registry.ready)),
        )
        self.ref = image.ref
        self.register_outputs({"ref": self.ref})
