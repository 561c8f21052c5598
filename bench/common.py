"""What the benches share: percentiles, CPU accounting and pinning, nginx in front of simulators."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.devstack import Proc, free_port

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream simulator {{ {balance}{servers} keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://simulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) of a process and its children, from /proc."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def pin(pids: list[int], cpu: int) -> None:
    """Moves processes, and their children (uvicorn workers), onto one CPU."""
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            os.sched_setaffinity(int(child), {cpu})


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def start_nginx(nginx: str, work: Path, upstreams: list[str], balance: str = "", workers: int = 1) -> Proc:
    """nginx proxying to the upstream base URLs (round robin, or `balance`, e.g. "least_conn"),
    with its files in a directory of its own under `work`."""
    port = free_port()
    home = work / f"nginx-{port}"
    home.mkdir()
    servers = " ".join(f"server {u.removeprefix('http://')};" for u in upstreams)
    conf = home / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers, dir=home, port=port, servers=servers, balance=f"{balance}; " if balance else ""
        )
    )
    proc = Proc(f"nginx-{port}", [nginx, "-c", str(conf), "-p", str(home)], work, url=f"http://127.0.0.1:{port}")
    try:
        proc.wait_http("/health")
    except BaseException:
        proc.stop()
        raise
    return proc
