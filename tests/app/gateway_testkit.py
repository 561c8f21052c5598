"""Helpers shared by the gateway tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.devstack import scrape as scrape  # the tests' one Prometheus reader, shared with bench/

# Simulator timing for functional tests: quick, but slow enough to observe streams and queues.
FAST = {"ttft_ms": 20, "itl_ms": 5}
# The name a third real vLLM engine serves the tiny model under (tests/app/conftest.py).
NEXT_MODEL = "tiny-next"


class Switchboard:
    """A TCP forwarder on its own port to a target that can change, as a Service address does
    when a rollout replaces the pods behind it. Switching drops the connections already made,
    so the next request meets the new target. `sent` keeps every byte sent to the target, for
    tests that check what a client asked it."""

    def __init__(self, target: str):
        self.target = target
        self.sent = bytearray()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, target: str) -> None:
        with self._lock:
            self.target = target
            conns, self._conns = self._conns, set()
        for c in conns:
            # shutdown, not only close: it sends the FIN and wakes the pump blocked in recv.
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self) -> None:
        self._server.close()
        self.switch(self.target)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            host, port = self.target.removeprefix("http://").rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            with self._lock:
                self._conns |= {client, upstream}
            for a, b, sent in ((client, upstream, self.sent), (upstream, client, None)):
                threading.Thread(target=self._pump, args=(a, b, sent), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@dataclass(frozen=True)
class Keys:
    path: Path
    alice: str  # default limits, every model
    rpm5: str  # rpm=5
    tpm: str  # tpm=60: one small request drains it
    other_models: str  # models=other-model
    by_id: dict[str, str]


def gateway_env(keys: Keys, redis_url: str, upstreams: list[str], **extra: object) -> dict[str, str]:
    env = {
        "GATEWAY_UPSTREAMS": ",".join(upstreams),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_API_KEYS_FILE": str(keys.path),
        "GATEWAY_HEALTH_INTERVAL_S": "0.5",
    }
    env.update({f"GATEWAY_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def read_events(response, count: int):
    """Reads a stream until `count` SSE events arrived, and returns the open chunk iterator.

    The caller must keep it (`chunks = read_events(r, 3)`): a generator dropped after `break`
    closes the stream at once, before the caller's checks while it is still open.
    """
    got = 0
    chunks = response.iter_raw()
    for chunk in chunks:
        got += chunk.count(b"data:")
        if got >= count:
            break
    return chunks


def eventually(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    if last is not None:
        raise last
    raise AssertionError(f"condition not met within {timeout}s")


@functools.cache
def platform_vllm_names() -> dict[str, set[str]]:
    """vllm:* names read by the alert rules and dashboards, the KEDA triggers and the gateway."""
    from app.gateway.upstreams import _SCRAPED
    from infra.plan.run import record_stack  # the recorded graph of each shipped stack
    from tests.monitoring.test_rules import all_exprs, metric_names
    from tests.stacks import REPO, SHIPPED

    used: dict[str, set[str]] = {}
    for expr in all_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("rules and dashboards")
    for stack in SHIPPED:
        for r in record_stack(stack, REPO).of_type("kubernetes:keda.sh/v1alpha1:ScaledObject"):
            for trigger in r.inputs["spec"]["triggers"]:
                for name in re.findall(r"vllm:[\w:]+", trigger.get("metadata", {}).get("query", "")):
                    used.setdefault(name, set()).add(f"KEDA ({stack})")
    for name in _SCRAPED:
        used.setdefault(name.decode(), set()).add("gateway")
    return {n: where for n, where in used.items() if n.startswith("vllm:")}


def run_in_new_loop(coro) -> None:
    """Runs a coroutine on a loop of its own: asyncio.run would leave the main thread without
    one, which the Pulumi SDK's synchronous helpers in later tests need."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()
