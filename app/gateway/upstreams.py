"""The replicas behind the gateway: discovery (static URLs and DNS), health, and load readings.

A replica whose health probes time out `hung_probes` times in a row is hung (a stopped process,
a node cut off), not draining (a replica shutting down refuses connections at once, and its
requests in flight still finish): its circuit opens and the requests it holds are ended, retried
elsewhere when nothing of their answer was sent yet. Without this they would wait out the read
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from .circuit import CircuitBreaker, State
from .kv_events import KvEventFeed, shared_blocks
from .metrics import GatewayMetrics
from .routing import Decision, Router
from .settings import GatewaySettings

if TYPE_CHECKING:  # proxy imports this module
    from .proxy import ProxyResponse

log = logging.getLogger("gateway")

_SCRAPED = {
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:num_requests_running": "running",
    b"vllm:kv_cache_usage_perc": "kv_usage",
}


def parse_vllm_load(text: bytes) -> dict[str, float]:
    """Sums vLLM's load gauges over label sets (one per model or engine); kv usage takes the max."""
    out = {"waiting": 0.0, "running": 0.0, "kv_usage": 0.0}
    for line in text.splitlines():
        if not line.startswith(b"vllm:"):
            continue
        name = line.split(b"{", 1)[0].split(b" ", 1)[0]
        field = _SCRAPED.get(name)
        if field is None:
            continue
        try:
            value = float(line.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        out[field] = max(out[field], value) if field == "kv_usage" else out[field] + value
    return out


class Upstream:
    __slots__ = (
        "url",
        "breaker",
        "healthy",
        "models",
        "in_flight",
        "attempts",
        "probe_timeouts",
        "waiting",
        "running",
        "kv_usage",
        "kv",
        "pending",
        "pending_tokens",
        "prefilling",
        "_metrics",
    )

    def __init__(self, url: str, breaker: CircuitBreaker, metrics: GatewayMetrics) -> None:
        self.url = url
        self.breaker = breaker
        # Unknown until the first probe; optimistic so a gateway can serve during its first seconds.
        self.healthy = True
        self.models: frozenset[str] = frozenset()
        self.in_flight = 0
        # The requests under way on it (proxy.ProxyResponse), to end them if it hangs.
        self.attempts: set[ProxyResponse] = set()
        self.probe_timeouts = 0
        self.waiting = 0.0
        self.running = 0.0
        self.kv_usage = 0.0
        self.kv: KvEventFeed | None = None  # where the replica publishes its KV cache events
        # This gateway's attempts on it that have no first byte yet, and the prompt tokens they
        # make it prefill: its queue as far as this gateway knows it exactly.
        self.pending = 0
        self.pending_tokens = 0.0
        # Their prompts' token ids: blocks it will hold once they are prefilled, before its
        # events say so. A second conversation of a new prefix then follows the first.
        self.prefilling: list[Sequence[int]] = []
        self._metrics = metrics

    def load(self) -> float:
        return self.in_flight + self.waiting

    def cached(self, token_ids: Sequence[int]) -> int:
        if self.kv is None:
            return 0
        hits = self.kv.index.predicted_hits(token_ids)
        size = self.kv.index.block_size
        if size:
            for other in self.prefilling:
                hits = max(hits, shared_blocks(token_ids, other, size))
        return hits

    def pressure(self) -> float:
        return self.kv_usage

    def footprint(self) -> int:
        return len(self.kv.index) if self.kv else 0

    def backlog_tokens(self, prompt_tokens: int) -> float:
        """Prompt tokens it prefills before a new request's: this gateway's own pending ones, and
        for the requests queued there that others sent, as many each as this gateway's average
        (or this prompt's, with none of its own pending)."""
        others = max(0.0, self.waiting - self.pending)
        each = self.pending_tokens / self.pending if self.pending else float(prompt_tokens)
        return self.pending_tokens + others * each

    def usable(self, now: float) -> bool:
        return self.healthy and self.breaker.available(now)

    def publish(self) -> None:
        up = 1 if self.healthy and self.breaker.state is not State.OPEN else 0
        self._metrics.upstream_healthy.labels(self.url).set(up)
        self._metrics.upstream_waiting.labels(self.url).set(self.waiting)
        self._metrics.upstream_kv.labels(self.url).set(self.kv_usage)
        if self.kv:
            self._metrics.upstream_kv_blocks.labels(self.url).set(len(self.kv.index))


class UpstreamPool:
    def __init__(self, settings: GatewaySettings, session: aiohttp.ClientSession, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._by_url: dict[str, Upstream] = {}
        self._dns_urls: set[str] = set()
        self.router = Router(settings.affinity_load_factor, settings.prefill_tokens_per_s, settings.kv_load_factor)
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_timeout = aiohttp.ClientTimeout(total=settings.health_timeout_s)
        self._headers = {}
        if settings.upstream_api_key is not None:
            self._headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self._kv_endpoints = {url: (pub, replay) for url, pub, replay in settings.kv_event_endpoints}
        self._kv_tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._set_members(settings.upstreams)

    # -- membership ---------------------------------------------------------------------------

    def _set_members(self, urls: Iterable[str]) -> None:
        wanted = set(urls)
        for url in wanted - self._by_url.keys():
            breaker = CircuitBreaker(self._settings.breaker_failures, self._settings.breaker_cooldown_s)
            up = self._by_url[url] = Upstream(url, breaker, self._metrics)
            up.kv = self._kv_feed(url)
            if self._started:
                self._follow(up)
        for url in self._by_url.keys() - wanted:
            # In-flight requests keep their reference and finish normally.
            del self._by_url[url]
            task = self._kv_tasks.pop(url, None)
            if task:
                task.cancel()
        self.router.update_members(self._by_url)

    def _kv_feed(self, url: str) -> KvEventFeed | None:
        """The replica's KV event feed: its own endpoints where given, else the ports on its host."""
        s = self._settings
        if url in self._kv_endpoints:
            pub, replay = self._kv_endpoints[url]
        elif s.kv_events_port:
            host = urlsplit(url).hostname or ""
            host = f"[{host}]" if ":" in host else host
            pub = f"tcp://{host}:{s.kv_events_port}"
            replay = f"tcp://{host}:{s.kv_replay_port}" if s.kv_replay_port else None
        else:
            return None
        return KvEventFeed(pub, replay, s.kv_events_topic)

    def _follow(self, up: Upstream) -> None:
        if up.kv is not None and up.url not in self._kv_tasks:
            self._kv_tasks[up.url] = asyncio.create_task(up.kv.run())

    async def _resolve(self) -> set[str]:
        loop = asyncio.get_running_loop()
        urls: set[str] = set()
        for entry in self._settings.upstream_dns:
            host, _, port = entry.rpartition(":")
            host = host.strip("[]")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("dns lookup failed", extra={"host": host, "error": str(exc)})
                continue
            for family, _, _, _, addr in infos:
                ip = addr[0]
                urls.add(f"http://[{ip}]:{port}" if family == socket.AF_INET6 else f"http://{ip}:{port}")
        return urls

    async def refresh_dns(self) -> None:
        if not self._settings.upstream_dns:
            return
        resolved = await self._resolve()
        if resolved != self._dns_urls:
            log.info("upstreams resolved", extra={"count": len(resolved)})
            self._dns_urls = resolved
            self._set_members(set(self._settings.upstreams) | resolved)

    # -- health --------------------------------------------------------------------------------

    async def _get(self, url: str) -> tuple[int, bytes]:
        async with self._session.get(url, timeout=self._probe_timeout, headers=self._headers) as resp:
            return resp.status, await resp.read()

    async def probe(self, up: Upstream) -> None:
        timed_out = False
        try:
            status, _ = await self._get(up.url + "/health")
            healthy = status == 200
            if healthy:
                status, body = await self._get(up.url + "/v1/models")
                if status == 200:
                    up.models = frozenset(m["id"] for m in orjson.loads(body).get("data", ()) if isinstance(m, dict))
                status, body = await self._get(up.url + "/metrics")
                if status == 200:
                    load = parse_vllm_load(body)
                    up.waiting, up.running, up.kv_usage = load["waiting"], load["running"], load["kv_usage"]
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors too
            healthy = False
            timed_out = True
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError):
            healthy = False
        up.probe_timeouts = up.probe_timeouts + 1 if timed_out else 0
        if up.probe_timeouts == self._settings.hung_probes:
            self._hung(up)
        if healthy != up.healthy:
            log.info("upstream health changed", extra={"upstream": up.url, "healthy": healthy})
        up.healthy = healthy
        if not healthy:
            up.waiting = up.running = 0.0
        up.publish()

    def _hung(self, up: Upstream) -> None:
        log.warning("upstream hung", extra={"upstream": up.url, "requests": len(up.attempts)})
        if up.breaker.trip():
            self._metrics.circuit_opened.labels(up.url).inc()
        for attempt in list(up.attempts):
            attempt.replica_hung(up)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(up) for up in list(self._by_url.values())))

    async def _every(self, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await work()
            except Exception as exc:  # noqa: BLE001 - a background loop must outlive any one bad round
                log.error("background refresh failed", extra={"error": type(exc).__name__})

    async def start(self) -> None:
        self._started = True
        for up in self._by_url.values():
            self._follow(up)
        await self.refresh_dns()
        await self.probe_all()
        self._tasks = [
            asyncio.create_task(self._every(self._settings.health_interval_s, self.probe_all)),
            asyncio.create_task(self._every(self._settings.dns_refresh_s, self.refresh_dns)),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._kv_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._kv_tasks.clear()

    def kv_ready(self, model: str) -> bool:
        """Whether some replica of the model has told its cache contents: worth tokenizing for."""
        return any(up.kv is not None and len(up.kv.index) for up in self._by_url.values() if model in up.models)

    async def tokenize(self, model: str, request: dict[str, Any]) -> list[int] | None:
        """The prompt's token ids as vLLM computes them (its /tokenize, on a replica of the model:
        the model's own tokenizer and chat template), or None when no replica answers in time."""
        now = time.monotonic()
        candidates = [up for up in self._by_url.values() if model in up.models and up.usable(now)]
        if not candidates:
            return None
        # Any replica of the model tokenizes alike: the least loaded, without moving the router's tie-break.
        up = min(candidates, key=Upstream.load)
        try:
            async with self._session.post(
                up.url + "/tokenize", json=request, timeout=self._probe_timeout, headers=self._headers
            ) as resp:
                if resp.status != 200:
                    return None
                tokens = orjson.loads(await resp.read()).get("tokens")
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        return tokens if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens) else None

    # -- selection -----------------------------------------------------------------------------

    def members(self) -> list[Upstream]:
        return list(self._by_url.values())

    def models(self) -> set[str]:
        out: set[str] = set(self._settings.models) | set(self._settings.scale_from_zero_models)
        for up in self._by_url.values():
            out |= up.models
        return out

    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(1 for up in self._by_url.values() if up.usable(now))

    def serves(self, model: str) -> bool:
        """Whether the model is served here, even if no replica of it is up right now."""
        s = self._settings
        return (
            model in s.models
            or model in s.scale_from_zero_models
            or any(model in up.models for up in self._by_url.values())
        )

    def choose(
        self,
        model: str,
        prefix: str | None,
        exclude: set[str],
        token_ids: Sequence[int] | None = None,
        prompt_tokens: int | None = None,
    ) -> Decision[Upstream]:
        """The replica to try (its circuit admitted the try), or a decision with none; the caller
        counts it in gateway_route_decisions_total once it uses it."""
        now = time.monotonic()
        candidates = [
            up for up in self._by_url.values() if up.url not in exclude and model in up.models and up.usable(now)
        ]
        while candidates:
            decision = self.router.decide(candidates, prefix, token_ids, prompt_tokens)
            up = decision.replica
            if up is None:
                break
            if up.breaker.acquire(now):
                return decision
            candidates.remove(up)
        return Decision(None, "none", 0.0, 0)

    def release(self, up: Upstream) -> None:
        """Gives back a try that `choose` admitted but that was not made (the request spilled)."""
        up.breaker.release_trial()

    def record(self, up: Upstream, ok: bool) -> None:
        before = up.breaker.state
        if ok:
            up.breaker.success()
        elif up.breaker.failure():
            self._metrics.circuit_opened.labels(up.url).inc()
            log.warning("upstream circuit opened", extra={"upstream": up.url})
        if up.breaker.state is not before:
            up.publish()
