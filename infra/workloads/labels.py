"""Kubernetes labels shared by the workloads, so selectors and policies agree."""

from __future__ import annotations

COMPONENT = "app.kubernetes.io/component"
MODEL = "llm-platform.io/model"


def labels(component: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "llm-platform",
        "app.kubernetes.io/managed-by": "pulumi",
        COMPONENT: component,
    }


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
