"""vLLM's Prometheus metrics, under vLLM's own names, in a registry owned by one app.

prometheus_client appends `_total` to counter names, so `vllm:prompt_tokens` is exposed as
`vllm:prompt_tokens_total`, exactly as vLLM's v1 engine exposes it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class VllmMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # vLLM V1 labels every series with the model and the engine index (vllm/v1/metrics/loggers.py).
        labels = ["model_name", "engine"]
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch.", labels, registry=r).labels(
            model, "0"
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be scheduled.", labels, registry=r
        ).labels(model, "0")
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV cache usage, 1 means 100 percent.", labels, registry=r
        ).labels(model, "0")
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", labels, registry=r
        ).labels(model, "0")
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", labels, registry=r
        ).labels(model, "0")
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r).labels(
            model, "0"
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed.", labels, registry=r
        ).labels(model, "0")
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions.", labels, registry=r).labels(model, "0")
        success = Counter("vllm:request_success", "Finished requests.", labels + ["finished_reason"], registry=r)
        self.success = {reason: success.labels(model, "0", reason) for reason in ("stop", "length", "abort")}
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels, buckets=_TTFT_BUCKETS, registry=r
        ).labels(model, "0")
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", labels, buckets=_ITL_BUCKETS, registry=r
        ).labels(model, "0")
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End to end request latency.", labels, buckets=_E2E_BUCKETS, registry=r
        ).labels(model, "0")
