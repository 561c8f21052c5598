"""Every Kubernetes label and annotation key the program writes, and the names built from
them, in one leaf module (it imports nothing): node labels the platforms set, pod labels and
selectors the workloads set, annotations the readers of the graph read, so they all agree."""

from __future__ import annotations

# Node labels on every pool (infra/platform): which pool, site and GPU a node belongs to.
POOL_LABEL = "llm-platform.io/pool"
SITE_LABEL = "llm-platform.io/site"
GPU_LABEL = "llm-platform.io/gpu"

COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MODEL = "llm-platform.io/model"


def labels(component: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": instance,
        PART_OF: "llm-platform",
        "app.kubernetes.io/managed-by": "pulumi",
        COMPONENT: component,
    }


def vllm_name(model: str) -> str:
    """The name of a model's vLLM Deployment, Services and PodDisruptionBudget."""
    return f"vllm-{model}"


def vllm_selector(model: str) -> dict[str, str]:
    return {COMPONENT: "vllm", MODEL: model}


GATEWAY_SELECTOR = {COMPONENT: "gateway"}

# Annotations on each vLLM Deployment: facts the readers of the graph (cost estimate,
# GPU-fit policy, autoscaling) need and the pod spec does not carry.
EXPECTED_REPLICAS = "llm-platform.io/expected-replicas"
MAX_REPLICAS = "llm-platform.io/max-replicas"
PARAMS_BILLION = "llm-platform.io/params-billion"
KV_BYTES_PER_TOKEN = "llm-platform.io/kv-bytes-per-token"
# The checkpoint's quantization format, where vLLM reads it from the checkpoint rather than
# from a flag (see vllm_args.CHECKPOINT_FORMATS).
QUANTIZATION = "llm-platform.io/quantization"
