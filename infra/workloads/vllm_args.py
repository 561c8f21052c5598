"""The `vllm serve` command line for a model, from its config keys."""

from __future__ import annotations

import json

from infra.config import ModelSpec

PORT = 8000
CACHE_DIR = "/models"
# vLLM's KV cache events, which the gateway routes by (app/gateway/kv_events.py): the zmq PUB
# socket and the replay socket it catches up from. Wildcard endpoints, because vLLM binds only
# those and connects out to any other address (vllm/distributed/kv_events.py,
# ZmqEventPublisher._is_bind_endpoint; vLLM v0.32.0).
KV_EVENTS_PORT = 5557
KV_REPLAY_PORT = 5558
KV_EVENTS_TOPIC = "kv"
KV_EVENTS_CONFIG = json.dumps(
    {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{KV_EVENTS_PORT}",
        "replay_endpoint": f"tcp://*:{KV_REPLAY_PORT}",
        "topic": KV_EVENTS_TOPIC,
    },
    separators=(",", ":"),
)
# Formats a checkpoint declares in its own quantization_config: vLLM reads them from there
# and picks the kernel for the GPU (Marlin on compute capability 7.5+). In vLLM 0.33.0 naming
# them changes nothing (vllm/model_executor/layers/quantization/auto_awq.py and auto_gptq.py
# override_quantization_method map awq, awq_marlin, gptq, gptq_marlin to one config each);
# earlier releases (those with awq_marlin.py's AWQMarlinConfig) took `--quantization awq`
# as "use the unoptimized AWQ kernel", so the command leaves the choice to the checkpoint.
CHECKPOINT_FORMATS = frozenset({"awq", "gptq", "compressed-tensors"})


def serve_args(model: ModelSpec) -> list[str]:
    args = [
        model.hf_repo,
        "--served-model-name",
        model.name,
        "--revision",
        model.revision,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
        "--dtype",
        model.dtype,
        "--tensor-parallel-size",
        str(model.tensor_parallel_size),
        "--max-model-len",
        str(model.max_model_len),
        "--gpu-memory-utilization",
        str(model.gpu_memory_utilization),
        "--download-dir",
        f"{CACHE_DIR}/hub",
        # Prefix caching is what the gateway's routing feeds; the events tell it what each replica holds.
        "--enable-prefix-caching",
        "--kv-events-config",
        KV_EVENTS_CONFIG,
    ]
    # Methods applied while loading (fp8, bitsandbytes) must be asked for.
    if model.quantization and model.quantization not in CHECKPOINT_FORMATS:
        args += ["--quantization", model.quantization]
    return args + list(model.extra_args)
