"""GPU fit: every model's weights and one full-length sequence's KV cache fit its GPUs."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ReportViolation, Severity, StackValidationArgs, StackValidationPolicy

from infra.catalog import instance
from infra.labels import KV_BYTES_PER_TOKEN, PARAMS_BILLION, QUANTIZATION
from infra.plan.scheduling import gpu_pools, pods
from policy.rules.facts import graph_of

BYTES_PER_PARAM = {"float16": 2.0, "bfloat16": 2.0, "auto": 2.0, "float32": 4.0}
QUANT_BYTES = {"awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5, "fp8": 1.0, "compressed-tensors": 1.0}
GIB = 2**30


def _flag(args: list[str], name: str, default: str) -> str:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def check(model: dict, pool) -> list[str]:
    """Problems fitting one vLLM container (args + annotations) onto a pool's nodes."""
    args, ann = model["args"], model["annotations"]
    problems = []
    tp = int(_flag(args, "--tensor-parallel-size", "1"))
    dtype = _flag(args, "--dtype", "auto")
    quant = _flag(args, "--quantization", ann.get(QUANTIZATION, ""))
    max_len = int(_flag(args, "--max-model-len", "4096"))
    util = float(_flag(args, "--gpu-memory-utilization", "0.92"))
    gpu = instance(pool.cloud, pool.instance_type).gpu
    if tp > pool.gpus:
        problems.append(f"tensor parallel size {tp} > {pool.gpus} GPUs per node")
    if dtype == "bfloat16" and not gpu.supports_bf16:
        problems.append(
            f"bfloat16 needs compute capability 8.0+; {gpu.model} has {gpu.compute_capability} (use float16)"
        )
    params = float(ann.get(PARAMS_BILLION, 0)) * 1e9
    weights = params * (QUANT_BYTES.get(quant) or BYTES_PER_PARAM.get(dtype, 2.0))
    kv = int(ann.get(KV_BYTES_PER_TOKEN, 0)) * max_len
    need = (weights + kv) / max(tp, 1)
    have = gpu.memory_gib * GIB * util
    if need > have:
        problems.append(
            f"needs {need / GIB:.1f} GiB per GPU (weights {weights / GIB:.1f} GiB + KV cache for {max_len} tokens "
            f"{kv / GIB:.1f} GiB, / TP {tp}) but {gpu.model} gives {have / GIB:.1f} GiB at utilization {util}"
        )
    return problems


def _model_fits(args: StackValidationArgs, report: ReportViolation) -> None:
    graph = graph_of(args.resources)
    pools = gpu_pools(graph)
    deployments = {
        (graph.site_of(r), r.inputs["metadata"]["name"]): r for r in graph.of_type("kubernetes:apps/v1:Deployment")
    }
    for pod in pods(graph):
        vllm = next((c for c in pod.spec["containers"] if c["name"] == "vllm"), None)
        if not vllm:
            continue
        selector = pod.spec.get("nodeSelector") or {}
        pool = next(
            (p for p in pools if p.site == pod.site and all(p.labels.get(k) == v for k, v in selector.items())), None
        )
        if pool is None:
            report(f"{pod.site}/{pod.name}: no GPU pool matches its node selector")
            continue
        ann = deployments[(pod.site, pod.name)].inputs["metadata"].get("annotations") or {}
        for problem in check({"args": vllm["args"], "annotations": ann}, pool):
            report(f"{pod.site}/{pod.name} on {pool.name} ({pool.instance_type}): {problem}")


POLICIES = [
    StackValidationPolicy(
        name="model-fits-gpu",
        description=(
            "Each model's weights plus KV cache for max model length, over tensor parallel size, "
            "fit GPU memory x utilization; tensor parallel size <= GPUs per node; the dtype runs on the GPU."
        ),
        validate=_model_fits,
        # A model that cannot load is never advisory, in any stack.
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.CRITICAL,
        remediation_steps="Use a bigger GPU, raise tensorParallelSize, quantize, or lower maxModelLen.",
    ),
]
