"""The `vllm serve` command line for a model, from its config keys."""

from __future__ import annotations

from infra.config import ModelSpec

PORT = 8000
CACHE_DIR = "/models"
# Formats a checkpoint declares in its own quantization_config. Left to vLLM, it picks the
# fastest kernel the GPU runs (awq -> awq_marlin, gptq -> gptq_marlin on compute capability
# 8.0+); naming the format on the command line forces the slow kernel instead
# (vllm-project/vllm v0.33.0, vllm/model_executor/layers/quantization/awq_marlin.py
# AWQMarlinConfig.override_quantization_method: converts only when the user asked for
# nothing, "marlin" or "awq_marlin").
CHECKPOINT_FORMATS = frozenset({"awq", "gptq", "compressed-tensors"})


def serve_args(model: ModelSpec) -> list[str]:
    args = [
        model.hf_repo,
        "--served-model-name", model.name,
        "--revision", model.revision,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--dtype", model.dtype,
        "--tensor-parallel-size", str(model.tensor_parallel_size),
        "--max-model-len", str(model.max_model_len),
        "--gpu-memory-utilization", str(model.gpu_memory_utilization),
        "--download-dir", f"{CACHE_DIR}/hub",
        # Prefix caching is what the gateway's prefix-affinity routing feeds.
        "--enable-prefix-caching",
    ]
    # Methods applied while loading (fp8, bitsandbytes) must be asked for.
    if model.quantization and model.quantization not in CHECKPOINT_FORMATS:
        args += ["--quantization", model.quantization]
    return args + list(model.extra_args)


def flags(args: list[str]) -> list[str]:
    """The flag names in an argument list (`--x=1` and `--x 1` both give `--x`)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]
