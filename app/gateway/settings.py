"""Gateway configuration, read once from GATEWAY_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .hybrid import Hop, Provider, Rule, check_references, parse_chain
from .jwt_auth import Issuer
from .pii import compile_patterns

ENV_PREFIX = "GATEWAY_"
# Values of these variables are never echoed back in error messages.
SECRET_FIELDS = frozenset({"fallback_api_key", "provider_keys", "upstream_api_key", "redis_url"})
# The provider that GATEWAY_FALLBACK_BASE_URL and GATEWAY_FALLBACK_API_KEY make, alone in the chain.
LEGACY_FALLBACK = "fallback"


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"expected comma-separated values, not {value!r}")


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) base URL like http://10.0.0.5:8000")
    return url.rstrip("/")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Where requests go.
    upstreams: Annotated[tuple[str, ...], NoDecode] = Field((), description="comma-separated vLLM base URLs")
    upstream_dns: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated host:port of headless Services, re-resolved every dns_refresh_s"
    )
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated models served here: while none of their replicas is up, 503, not 404"
    )
    scale_from_zero_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated models that may have no replica: their requests wait for one"
    )
    hold_timeout_s: float = Field(
        30.0, ge=0, description="how long a request for a scale-from-zero model waits for a replica"
    )
    upstream_api_key: SecretStr | None = Field(None, description="sent to replicas started with vLLM's --api-key")
    # vLLM's KV cache events (--kv-events-config with the zmq publisher), for routing by what each
    # replica holds: every replica's PUB and replay sockets on these ports of its address, or
    # given one by one for fixed upstreams ("<replica url> <pub endpoint> [<replay endpoint>]").
    kv_events_port: int | None = Field(None, ge=1, le=65535, description="each replica's KV event PUB port")
    kv_replay_port: int | None = Field(None, ge=1, le=65535, description="each replica's KV event replay port")
    kv_events_topic: str = Field("", description="the topic vLLM publishes KV events under")
    kv_event_endpoints: Annotated[tuple[tuple[str, str, str | None], ...], NoDecode] = Field(
        (), description="comma-separated `<replica url> <pub endpoint> [<replay endpoint>]`"
    )
    dns_refresh_s: float = Field(10.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0, description="how often each replica's /health and /metrics are read")
    health_timeout_s: float = Field(1.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0, description="longest silence from a replica mid-request")
    upstream_keepalive_s: float = Field(
        4.0, gt=0, description="idle pooled connections close before vLLM's own 5 s keep-alive does"
    )
    max_upstream_connections: int = Field(4096, ge=1)
    max_attempts: int = Field(3, ge=1, le=10, description="replicas tried before the first byte")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open a replica's circuit")
    breaker_cooldown_s: float = Field(5.0, gt=0, description="open time before a trial request; doubles on repeat")
    hung_probes: int = Field(
        2,
        ge=1,
        description="health probes timing out in a row that mark a replica hung: its requests end, its circuit opens",
    )
    affinity_prefix_chars: int = Field(
        256, ge=0, description="prompt characters hashed for prefix affinity; 0 disables it"
    )
    affinity_load_factor: float = Field(
        1.25, ge=1.0, description="bounded-load factor c: a replica takes at most c x the mean load"
    )
    kv_load_factor: float = Field(
        3.0,
        ge=1.0,
        description="the same for replicas chosen by what their KV cache holds, whose queues the prediction weighs",
    )

    # Predicted time to first token, for choosing among replicas that hold a prefix and for
    # spilling to hosted providers: the prompt tokens a replica still has to prefill, this
    # request's uncached ones included, at this rate.
    prefill_tokens_per_s: float = Field(
        10_000.0, gt=0, description="prompt tokens a replica prefills per second (the model on its GPU)"
    )

    # Hosted providers and hybrid routing (hybrid.py).
    providers: Annotated[tuple[Provider, ...], NoDecode] = Field((), description='JSON list of {"name", "base_url"}')
    provider_keys: SecretStr | None = Field(None, description='JSON object {"<provider>": "<api key>"}')
    fallback_chain: Annotated[tuple[Hop, ...], NoDecode] = Field(
        (), description="comma-separated `<provider>[:<model>]`, tried in order when no replica can take a request"
    )
    routes: Annotated[tuple[Rule, ...], NoDecode] = Field(
        (), description="JSON list of rules; the first that matches decides"
    )
    # One hosted fallback, the shorthand for a provider named `fallback` alone in the chain.
    fallback_base_url: str | None = Field(None, description="OpenAI-compatible base URL including /v1")
    fallback_api_key: SecretStr | None = None

    # Keys and limits.
    api_keys_file: Path | None = Field(
        None, description="lines of '<key-id> <sha256 hex of key> [rpm=N] [tpm=N] [models=a,b]'"
    )
    api_keys_redis_hash: str | None = Field(
        None, description="Redis hash: field sha256 hex, value '<key-id> [options]'"
    )
    jwt_issuers: Annotated[tuple[Issuer, ...], NoDecode] = Field(
        (), description='JSON list of {"issuer", "jwks_url", "audience", "algorithms", "caller_claim", ...}'
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(
        0.25, gt=0, description="per Redis command and connect; also how long a check waits for a pooled connection"
    )
    redis_max_connections: int = Field(
        100, ge=1, description="Redis connections per worker; more checks in flight wait for one instead of failing"
    )
    redis_fail_mode: Literal["open", "closed"] = "open"
    default_rpm: int = Field(600, ge=0, description="requests per minute per key; 0 means unlimited")
    default_tpm: int = Field(200_000, ge=0, description="tokens per minute per key; 0 means unlimited")

    # Edge: what one client connection may cost (server.py enforces all but the body size).
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024, description="request line and headers; more is answered 431"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="for a request's line and headers to arrive, from the connection or its first byte"
    )
    body_timeout_s: float = Field(30.0, gt=0, description="for a request's body to arrive after its headers")
    send_timeout_s: float = Field(
        30.0, gt=0, description="a client that reads nothing of its answer for this long is cut off"
    )
    metrics_port: int = Field(
        9090, ge=1, le=65535, description="/metrics and /openapi.json are served here, not on the client port"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pii_patterns: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='JSON object {"<name>": "<regular expression>"}: national id formats the log redactor also removes',
    )

    # Process.
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: object) -> object:
        return tuple(_base_url(u) for u in _split(value))

    @field_validator("models", "scale_from_zero_models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        return tuple(_split(value))

    @field_validator("upstream_dns", mode="before")
    @classmethod
    def _parse_dns(cls, value: object) -> object:
        entries = _split(value)
        for entry in entries:
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{entry!r} is not host:port")
        return tuple(entries)

    @field_validator("kv_event_endpoints", mode="before")
    @classmethod
    def _parse_kv_endpoints(cls, value: object) -> object:
        out = []
        for entry in _split(value):
            parts = entry.split()
            if len(parts) not in (2, 3) or not all(p.startswith("tcp://") for p in parts[1:]):
                raise ValueError(f"{entry!r} is not `<replica url> tcp://host:port [tcp://host:port]`")
            out.append((_base_url(parts[0]), parts[1], parts[2] if len(parts) == 3 else None))
        return tuple(out)

    @field_validator("fallback_base_url", mode="before")
    @classmethod
    def _parse_fallback(cls, value: object) -> object:
        return _base_url(value) if isinstance(value, str) and value else None

    @field_validator("providers", "routes", "jwt_issuers", mode="before")
    @classmethod
    def _parse_json_list(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else []
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from None
            if not isinstance(value, list):
                raise ValueError("expected a JSON list")
        return value

    @field_validator("fallback_chain", mode="before")
    @classmethod
    def _parse_chain(cls, value: object) -> object:
        return parse_chain(value)

    @field_validator("pii_patterns", mode="before")
    @classmethod
    def _patterns(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError('expected a JSON object {"<name>": "<regular expression>"}')
        compile_patterns(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _parse_redis(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> GatewaySettings:
        if not (self.upstreams or self.upstream_dns or self.fallback_base_url or self.providers):
            raise ValueError("set GATEWAY_UPSTREAMS or GATEWAY_UPSTREAM_DNS (or hosted GATEWAY_PROVIDERS)")
        if self.api_keys_file is None and not self.api_keys_redis_hash and not self.jwt_issuers:
            raise ValueError("set GATEWAY_API_KEYS_FILE, GATEWAY_API_KEYS_REDIS_HASH or GATEWAY_JWT_ISSUERS")
        if len({i.issuer for i in self.jwt_issuers}) != len(self.jwt_issuers):
            raise ValueError("GATEWAY_JWT_ISSUERS: two entries have the same issuer")
        if self.metrics_port == self.port:
            raise ValueError(f"GATEWAY_METRICS_PORT must differ from GATEWAY_PORT ({self.port})")
        if self.kv_replay_port is not None and self.kv_events_port is None:
            raise ValueError("GATEWAY_KV_REPLAY_PORT needs GATEWAY_KV_EVENTS_PORT")
        if self.fallback_base_url and self.fallback_api_key is None:
            raise ValueError("GATEWAY_FALLBACK_API_KEY is required with GATEWAY_FALLBACK_BASE_URL")
        providers = self.hosted_providers()
        keys = self.provider_key_table()
        for name in providers:
            if name not in keys:
                raise ValueError(f"GATEWAY_PROVIDER_KEYS has no key for provider {name!r}")
        for name in keys:
            if name not in providers:
                raise ValueError(f"GATEWAY_PROVIDER_KEYS: {name!r} is not a provider in GATEWAY_PROVIDERS")
        models = (*self.models, *self.scale_from_zero_models)
        check_references(self.routes, tuple(providers.values()), self.default_chain(), models)
        return self

    def hosted_providers(self) -> dict[str, Provider]:
        out = {p.name: p for p in self.providers}
        if len(out) != len(self.providers):
            raise ValueError("GATEWAY_PROVIDERS: two providers have the same name")
        if self.fallback_base_url:
            if LEGACY_FALLBACK in out:
                raise ValueError(f"GATEWAY_FALLBACK_BASE_URL makes a provider named {LEGACY_FALLBACK!r}: rename yours")
            out[LEGACY_FALLBACK] = Provider(name=LEGACY_FALLBACK, base_url=self.fallback_base_url.rstrip("/"))
        return out

    def provider_key_table(self) -> dict[str, SecretStr]:
        """Each provider's API key; GATEWAY_PROVIDER_KEYS' text is never part of an error."""
        out: dict[str, SecretStr] = {}
        if self.provider_keys is not None:
            try:
                raw = orjson.loads(self.provider_keys.get_secret_value())
            except orjson.JSONDecodeError:
                raise ValueError('GATEWAY_PROVIDER_KEYS: not JSON; expected {"<provider>": "<api key>"}') from None
            if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
                raise ValueError('GATEWAY_PROVIDER_KEYS: expected a JSON object {"<provider>": "<api key>"}')
            out = {name: SecretStr(key) for name, key in raw.items()}
        if self.fallback_api_key is not None and self.fallback_base_url:
            out[LEGACY_FALLBACK] = self.fallback_api_key
        return out

    def default_chain(self) -> tuple[Hop, ...]:
        if self.fallback_chain:
            return self.fallback_chain
        return (Hop(LEGACY_FALLBACK),) if self.fallback_base_url else ()


def describe_error(exc: ValidationError) -> str:
    """One line naming the variable, for a start-up failure; never echoes a secret."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    msg = err["msg"].removeprefix("Value error, ")
    if not field:
        return msg
    # A nested value's path as a reader writes it: GATEWAY_ROUTES[1].match.tiers
    where = ENV_PREFIX + field.upper()
    where += "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
    if field not in SECRET_FIELDS and isinstance(err.get("input"), str | int | float):
        return f"{where}={err['input']!r}: {msg}"
    return f"{where}: {msg}"
