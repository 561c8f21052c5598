"""The `vllm serve` command line for a model, from its config keys."""

from __future__ import annotations

from infra.config import ModelSpec

PORT = 8000
CACHE_DIR = "/models"
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
        # Prefix caching is what the gateway's prefix-affinity routing feeds.
        "--enable-prefix-caching",
    ]
    # Methods applied while loading (fp8, bitsandbytes) must be asked for.
    if model.quantization and model.quantization not in CHECKPOINT_FORMATS:
        args += ["--quantization", model.quantization]
    return args + list(model.extra_args)
