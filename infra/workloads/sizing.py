"""How big a vLLM pod is: requests from the node it lands on, probes from the model's size.

Requests are a share of the node's allocatable CPU and memory (one share per replica that
fits on a node by GPUs), so a pod always fits the node its GPUs come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.config import ModelSpec
from infra.platform import NodePool

# Seconds to download and load one billion parameters at fp16 (about 2 GB) from the hub and
# into GPU memory, on top of a fixed start-up; generous, since a startup probe that gives
# up too early restarts a pod that was about to become ready.
LOAD_SECONDS_PER_BILLION = 45
LOAD_SECONDS_FIXED = 300
STARTUP_PERIOD_SECONDS = 10
MAX_STARTUP_SECONDS = 3600
# What `pulumi up` must also wait for before a new replica can start loading: a GPU node from
# zero (instance launch, driver and device plugin; GPU capacity is often slow to come) and
# the vLLM image pull (vllm/vllm-openai is about 10 GB compressed, pulled once per node).
NODE_FROM_ZERO_SECONDS = 900
IMAGE_PULL_SECONDS = 900


@dataclass(frozen=True)
class PodSize:
    gpus: int
    cpu_millis: int
    memory_mib: int
    shm_mib: int
    cache_gib: int
    startup_failure_threshold: int

    @property
    def startup_seconds(self) -> int:
        """How long the startup probe lets the model load before the kubelet restarts it."""
        return self.startup_failure_threshold * STARTUP_PERIOD_SECONDS


def await_seconds(size: PodSize, replicas: int) -> tuple[int, int]:
    """(create, update) timeouts for `pulumi up` waiting on a vLLM Deployment to be ready.

    Creating starts every replica at once; a rolling update (maxSurge 1, maxUnavailable 0)
    replaces up to `replicas` of them one after another, each loading the model again."""
    first = NODE_FROM_ZERO_SECONDS + IMAGE_PULL_SECONDS + size.startup_seconds
    return first, first + max(replicas - 1, 0) * size.startup_seconds


def weights_gib(model: ModelSpec) -> float:
    bytes_per_param = {"awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5, "fp8": 1.0, "compressed-tensors": 1.0}
    return model.params_billion * 1e9 * bytes_per_param.get(model.quantization or "", 2.0) / 2**30


def kv_bytes_per_token(model: ModelSpec) -> int:
    """KV cache per token. Without the architecture, 16 KiB per billion parameters at
    fp16 is close for GQA models (Llama-3.1-8B: 128 KiB) and errs high for the rest."""
    return model.kv_bytes_per_token or int(16 * 1024 * model.params_billion)


def pod_size(model: ModelSpec, pool: NodePool) -> PodSize:
    replicas_per_node = max(pool.gpus_per_node // model.tensor_parallel_size, 1)
    # 5% slack per share absorbs rounding and a sidecar or two.
    cpu = int(pool.allocatable_cpu_millis * 0.95 / replicas_per_node)
    memory = int(pool.allocatable_memory_mib * 0.95 / replicas_per_node)
    startup_seconds = min(LOAD_SECONDS_FIXED + LOAD_SECONDS_PER_BILLION * model.params_billion, MAX_STARTUP_SECONDS)
    return PodSize(
        gpus=model.tensor_parallel_size,
        cpu_millis=cpu,
        memory_mib=memory,
        # NCCL between tensor-parallel workers and PyTorch's dataloaders use /dev/shm,
        # which counts against the pod's memory.
        shm_mib=min(16 * 1024, memory // 4),
        # Weights, plus room for a second revision during an upgrade and compile caches.
        cache_gib=int(math.ceil(weights_gib(model) * 2)) + 20,
        startup_failure_threshold=int(math.ceil(startup_seconds / STARTUP_PERIOD_SECONDS)),
    )
