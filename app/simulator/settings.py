"""Simulator configuration: environment variables prefixed SIM_, overridable by CLI flags."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIM_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    model: str = Field("sim-model", min_length=1, description="served model name")
    ttft_ms: float = Field(50.0, ge=0, description="time to first token for a fully cached prompt")
    prefill_ms_per_token: float = Field(0.05, ge=0, description="extra first-token time per uncached prompt token")
    prefill_queue: bool = Field(
        False,
        description="prefills take turns at the prefill rate, as vLLM's scheduler fills each step's token "
        "budget in arrival order; off, each prefill runs as if it were alone",
    )
    itl_ms: float = Field(10.0, ge=0, description="time between output tokens")
    max_num_seqs: int = Field(256, ge=1, description="requests decoded at once; the rest wait")
    max_model_len: int = Field(8192, ge=2)
    default_max_tokens: int = Field(16, ge=1, description="output length when a request sets none")
    block_size: int = Field(16, ge=1, description="tokens per KV cache block")
    kv_cache_blocks: int = Field(8192, ge=1, description="KV cache size, for vllm:kv_cache_usage_perc")
    prefix_cache_blocks: int = Field(4096, ge=0, description="blocks kept in the prefix cache LRU")
    fail_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered with HTTP 500")
    api_key: SecretStr | None = Field(None, description="if set, requests need 'Authorization: Bearer <key>'")
    # vLLM's --kv-events-config: its zmq publisher of KV cache events (kv_events.py), off unless a port is set.
    kv_events_port: int | None = Field(
        None, ge=1, le=65535, description="publish KV cache events on a zmq PUB socket on this port"
    )
    kv_replay_port: int | None = Field(
        None, ge=1, le=65535, description="zmq ROUTER port where missed KV event batches are asked for again"
    )
    kv_events_topic: str = Field("", description="topic frame of each KV event message")

    @field_validator("kv_replay_port")
    @classmethod
    def _replay_needs_events(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("kv_events_port") is None:
            raise ValueError("the replay socket needs SIM_KV_EVENTS_PORT")
        return value
