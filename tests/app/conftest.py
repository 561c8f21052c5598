"""Real processes for the gateway tests: redis-server, simulator replicas and gateways on free ports."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway_testkit import FAST, NEXT_MODEL, Keys, gateway_env  # noqa: E402

from app.devstack import Proc, make_key, start_gateway, start_redis, start_simulator, start_vllm  # noqa: E402


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("processes")


@pytest.fixture(scope="session")
def keys(log_dir: Path) -> Keys:
    made = {name: make_key() for name in ("alice", "rpm5", "rpm1", "rpm60", "tpm", "other_models", "spare")}
    options = {
        "rpm5": "rpm=5",
        "rpm1": "rpm=1",
        "rpm60": "rpm=60",
        "tpm": "tpm=60",
        "other_models": "models=other-model",
    }
    lines = ["# test keys"] + [
        f"{name} {digest} {options.get(name, '')}".rstrip() for name, (_, digest) in made.items()
    ]
    path = log_dir / "api-keys"
    path.write_text("\n".join(lines) + "\n")
    plain = {name: key for name, (key, _) in made.items()}
    return Keys(path, plain["alice"], plain["rpm5"], plain["tpm"], plain["other_models"], plain)


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[Proc]:
    proc = start_redis(log_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def procs(log_dir: Path) -> Iterator[Callable[..., Proc]]:
    """Starts processes that are all stopped at the end of the session, whatever happens."""
    started: list[Proc] = []

    def track(proc: Proc) -> Proc:
        started.append(proc)
        return proc

    yield track
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="session")
def replicas(log_dir: Path, procs) -> list[Proc]:
    return [procs(start_simulator(log_dir, **FAST)) for _ in range(2)]


@pytest.fixture(scope="session")
def gateway(log_dir: Path, procs, keys: Keys, redis_server: Proc, replicas: list[Proc]) -> Proc:
    return procs(start_gateway(log_dir, gateway_env(keys, redis_server.url, [r.url for r in replicas])))


@pytest.fixture(scope="session")
def gateway_b(log_dir: Path, procs, keys: Keys, redis_server: Proc, replicas: list[Proc]) -> Proc:
    """A second gateway replica on the same Redis and replicas."""
    return procs(start_gateway(log_dir, gateway_env(keys, redis_server.url, [r.url for r in replicas])))


@pytest.fixture(scope="session")
def vllm_fleet(log_dir: Path, procs) -> list[Proc]:
    """Three real vLLM engines of the tiny local model, started side by side (most of a minute
    each): two replicas of it, publishing their KV cache events, and one serving it under the
    name NEXT_MODEL."""
    started = [procs(start_vllm(log_dir, wait=False, kv_events=True)) for _ in range(2)]
    started.append(procs(start_vllm(log_dir, wait=False, served_name=NEXT_MODEL)))
    for proc in started:
        proc.wait_http("/health", timeout=300)
    return started


@pytest.fixture(scope="session")
def engines(vllm_fleet: list[Proc]) -> list[Proc]:
    """Two real vLLM replicas of the tiny local model."""
    return vllm_fleet[:2]


@pytest.fixture(scope="session")
def next_engine(vllm_fleet: list[Proc]) -> Proc:
    """A real vLLM engine serving the tiny model as NEXT_MODEL, as a replica looks once a
    rollout has replaced it."""
    return vllm_fleet[2]
