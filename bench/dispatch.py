"""What routing the completion paths through Starlette costs, against answering them before it.

The gateway mounts /v1/chat/completions and /v1/completions as ordinary Starlette routes, so
middleware and exception handlers see them. Before, `GatewayApp.__call__` answered them ahead
of FastAPI's router. This bench runs both dispatches in-process, on the real app from
`create_app`, with the same stub endpoint behind each: it reads the body and answers 200.
So the difference is the dispatch alone: the middleware stack, the router's match, and the
Route's method check. No network, no upstream. Blocks alternate between the two, and the
table gives microseconds per request.

    .venv/bin/python bench/dispatch.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.gateway.completions import ROUTES
from app.gateway.main import create_app
from app.gateway.settings import GatewaySettings

BODY = b'{"model":"m","prompt":"hi","max_tokens":1}'


async def stub(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def scope() -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def receive() -> dict:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(message: dict) -> None:
    if message["type"] == "http.response.start":
        assert message["status"] == 200, message


async def run(app, n: int, bypass: bool) -> float:
    started = time.perf_counter()
    for _ in range(n):
        s = scope()
        if bypass and s["method"] == "POST" and s["path"] in ROUTES:
            await stub(s, receive, send)
        else:
            await app(s, receive, send)
    return (time.perf_counter() - started) / n * 1e6


async def main(requests: int, rounds: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".keys") as keys:
        app = create_app(GatewaySettings(upstreams=("http://127.0.0.1:1",), api_keys_file=Path(keys.name)))
        app.completions = stub
        await run(app, 500, False)  # builds the middleware stack, warms caches
        results: dict[str, list[float]] = {"starlette route (kept)": [], "bypass before routing": []}
        for _ in range(rounds):
            results["starlette route (kept)"].append(await run(app, requests, False))
            results["bypass before routing"].append(await run(app, requests, True))
    base = statistics.median(results["bypass before routing"])
    print(f"{requests} requests x {rounds} rounds per dispatch, python {sys.version.split()[0]}, pid {os.getpid()}")
    print("| dispatch | µs/request (median of rounds) | min | max | added |")
    print("|---|---|---|---|---|")
    for name, samples in results.items():
        median = statistics.median(samples)
        added = "" if name.startswith("bypass") else f"+{median - base:.1f} µs"
        print(f"| {name} | {median:.1f} | {min(samples):.1f} | {max(samples):.1f} | {added} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
