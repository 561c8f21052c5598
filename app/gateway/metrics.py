"""The gateway's Prometheus metrics, correct with one uvicorn worker or several.

With PROMETHEUS_MULTIPROC_DIR set (python -m app.gateway sets it for --workers > 1), every
worker writes its samples to files there and /metrics aggregates all of them, so a scrape
that lands on any worker sees the whole process group. Gauges declare how workers combine:
counts of things in progress are summed over live workers; readings of a replica's state take
the most recent write.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # A private registry per app keeps tests that build several apps in one process apart.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by model, key id, endpoint and HTTP status.",
            ["model", "key_id", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["model", "endpoint", "stream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request to the first byte of the response body.",
            ["model", "endpoint", "stream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_admission_seconds",
            "Gateway time before the request is sent upstream: key, body and routing (the limit check runs alongside).",
            buckets=_OVERHEAD,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "Prompt tokens, as reported by the upstream.", ["model", "key_id"], registry=r
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens",
            "Completion tokens, as reported by the upstream.",
            ["model", "key_id"],
            registry=r,
        )
        self.waiting = Gauge(
            "gateway_requests_waiting",
            "Admitted requests that have not yet received their first token, by model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being served, by model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "gateway_upstream_in_flight",
            "Requests open to each upstream replica.",
            ["upstream"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_healthy = Gauge(
            "gateway_upstream_healthy",
            "1 when the replica's /health answers and its circuit is not open.",
            ["upstream"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.upstream_waiting = Gauge(
            "gateway_upstream_queue_depth",
            "The replica's vllm:num_requests_waiting at the last scrape.",
            ["upstream"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.upstream_kv = Gauge(
            "gateway_upstream_kv_cache_usage",
            "The replica's vllm:kv_cache_usage_perc at the last scrape.",
            ["upstream"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Attempts sent to each upstream, by outcome.",
            ["upstream", "outcome"],
            registry=r,
        )
        self.route_decisions = Counter(
            "gateway_route_decisions",
            "Replica choices, by what decided them: kv_cache (a replica's KV events show the prompt's "
            "prefix cached), kv_balance (cached nowhere: the replica holding the fewest blocks), affinity "
            "(prefix hashing), least_loaded.",
            ["model", "reason"],
            registry=r,
        )
        self.upstream_kv_blocks = Gauge(
            "gateway_upstream_kv_blocks",
            "KV cache blocks the replica holds, as its KV events say (absent without events).",
            ["upstream"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries", "Attempts repeated on another replica before the first byte.", registry=r
        )
        self.circuit_opened = Counter(
            "gateway_circuit_opened", "Times a replica's circuit opened.", ["upstream"], registry=r
        )
        self.hosted = Counter(
            "gateway_hosted_requests",
            "Attempts sent to each hosted provider, by outcome: ok, or error (the next in the chain may take it).",
            ["provider", "outcome"],
            registry=r,
        )
        self.spills = Counter(
            "gateway_spills",
            "Requests the replicas here could serve that went to hosted providers, by why: ttft_budget (the best "
            "replica's predicted TTFT was past the request's budget), cold_start (no replica up, the model scales "
            "from zero), unavailable (no replica could take it).",
            ["model", "reason"],
            registry=r,
        )
        self.route_rules = Counter(
            "gateway_route_rules",
            "Requests by the routing rule that decided where they go (default: none matched).",
            ["rule"],
            registry=r,
        )
        self.disconnects = Counter(
            "gateway_client_disconnects",
            "Clients that went away before the response ended; upstream cancelled.",
            ["model"],
            registry=r,
        )
        self.ratelimited = Counter(
            "gateway_ratelimit_rejections",
            "Requests refused with 429, by key id and limit (rpm or tpm).",
            ["key_id", "limit"],
            registry=r,
        )
        self.redis_errors = Counter(
            "gateway_ratelimit_redis_errors",
            "Rate-limit checks that could not reach Redis, by the fail mode applied.",
            ["fail_mode"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures", "Requests refused by authentication or authorization.", ["reason"], registry=r
        )

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            # prometheus_client's multiprocess module carries no annotations.
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        if self.multiprocess:
            # Drops this worker's live gauges from the aggregate.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
