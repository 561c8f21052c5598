"""Gateway overhead: the same streaming load sent directly to a simulator, through nginx, and
through the gateway, in one run, interleaved in rounds so drift hits all three alike.

    make bench                                  # defaults: 64 streams, 32 tokens each
    .venv/bin/python bench/gateway.py --concurrency 64 --requests 1280 --rounds 3

Time to first token (TTFT) is measured from sending the request to the first body byte of the
stream; total latency to the end of the stream. The gateway runs with its rate limits switched
on (one Redis check per request) and routing, metrics and info-level JSON logging as in
production.

Load: a closed loop of N streams. Each stream starts at its own offset within one request's
duration, as independent clients would, rather than all N at the same instant: N requests
arriving together would measure how fast a proxy drains a synthetic burst that then repeats in
lockstep forever, since every simulated request takes exactly as long as every other
(--no-spread measures that case).

Placement (--pin, the default on two or more CPUs): the load generator and the simulator share
CPU 0; the proxy under test (nginx, or the gateway and its Redis) has CPU 1, as a gateway pod
has its own requested CPU beside the model servers in a cluster. Without it the proxy competes
with the simulator and the load generator for the same two cores, and its overhead includes
slowing them down; --no-pin measures that too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.devstack import Proc, make_key, start_gateway, start_redis, start_simulator
from bench.common import cpu_seconds, find_nginx, pct, pin, start_nginx


@dataclass
class Samples:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0
    done: int = 0
    proxy_cpu: float = 0.0  # CPU seconds the proxy (and Redis, for the gateway) spent in measured runs


async def one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, out: Samples | None) -> None:
    start = time.perf_counter()
    first = None
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            async for chunk in resp.content.iter_any():
                if first is None and chunk:
                    first = time.perf_counter()
            end = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - counted, and the first few shown: a bench must say why it failed
        if out is not None:
            out.errors += 1
            if out.errors <= 3:
                print(f"  error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    if out is not None and first is not None:
        out.ttft.append(first - start)
        out.total.append(end - start)
        out.done += 1


async def load(
    url: str, key: str | None, concurrency: int, requests: int, max_tokens: int, spread_s: float, out: Samples
) -> None:
    body = (
        f'{{"model": "sim-model", "stream": true, "max_tokens": {max_tokens:d}, '
        '"messages": [{"role": "user", "content": "Tell me about the bench."}]}'
    ).encode()
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Warm-up: open the pooled connections on every hop, unmeasured.
        await asyncio.gather(*(one(session, url, body, headers, None) for _ in range(concurrency)))
        remaining = requests

        async def worker(i: int) -> None:
            nonlocal remaining
            await asyncio.sleep(spread_s * i / concurrency)
            while remaining > 0:
                remaining -= 1
                await one(session, url, body, headers, out)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        out.wall += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1280, help="measured requests per target, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="simulated time to first token")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="simulated time per further token")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="load generator and simulator on CPU 0, the proxy under test on CPU 1",
    )
    parser.add_argument(
        "--spread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the streams spread over one request's duration (--no-spread: all at once)",
    )
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[Proc] = []
    try:
        redis = start_redis(work)
        procs.append(redis)
        # Prefill cost off: every target sees the same fixed TTFT, so differences are the proxies'.
        sim = start_simulator(
            work, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, prefill_ms_per_token=0, max_num_seqs=100000
        )
        procs.append(sim)
        targets = {"direct": (sim.url, None)}
        cpu_of: dict[str, list[int]] = {"direct": []}

        nginx = find_nginx()
        if nginx:
            proc = start_nginx(nginx, work, [sim.url], workers=args.nginx_workers)
            procs.append(proc)
            targets["nginx"] = (proc.url, None)
            cpu_of["nginx"] = [proc.pid]
        else:
            print("nginx not found (make bench installs it); skipping that row", file=sys.stderr)

        key, digest = make_key()
        keys = work / "keys"
        keys.write_text(f"bench {digest} rpm=1000000000 tpm=1000000000000\n")
        gw = start_gateway(
            work,
            workers=args.gateway_workers,
            env={
                "GATEWAY_UPSTREAMS": sim.url,
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_API_KEYS_FILE": str(keys),
                "GATEWAY_LOG_LEVEL": "info",
            },
        )
        procs.append(gw)
        targets["gateway"] = (gw.url, key)
        cpu_of["gateway"] = [gw.pid, redis.pid]

        if args.pin:
            # Children (uvicorn workers) exist once the gateway answers, which start_gateway waits for.
            pin([os.getpid(), sim.pid], 0)
            pin([redis.pid, gw.pid] + cpu_of.get("nginx", []), 1)
        spread_s = (args.ttft_ms + args.itl_ms * (args.max_tokens - 1)) / 1000 if args.spread else 0.0

        results = {name: Samples() for name in targets}
        per_round = max(1, args.requests // args.rounds)
        print(
            f"{os.cpu_count()} CPUs; {args.concurrency} concurrent streams; {args.max_tokens} tokens each; "
            f"simulated TTFT {args.ttft_ms:g} ms, {args.itl_ms:g} ms/token; "
            f"{per_round * args.rounds} requests per target in {args.rounds} rounds; "
            f"gateway workers {args.gateway_workers}, nginx workers {args.nginx_workers}; "
            f"streams start spread over {spread_s * 1000:g} ms; "
            + ("load generator and simulator on CPU 0, proxy (and Redis) on CPU 1" if args.pin else "no CPU pinning"),
            flush=True,
        )
        for r in range(args.rounds):
            for name, (url, key_) in targets.items():
                before = sum(cpu_seconds(pid) for pid in cpu_of[name])
                asyncio.run(
                    load(
                        url + "/v1/chat/completions",
                        key_,
                        args.concurrency,
                        per_round,
                        args.max_tokens,
                        spread_s,
                        results[name],
                    )
                )
                # Includes the unmeasured warm-up requests, so per-request CPU is a slight overestimate.
                results[name].proxy_cpu += sum(cpu_seconds(pid) for pid in cpu_of[name]) - before
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

        base = results["direct"]
        header = (
            f"| {'target':<8} | {'req/s':>7} | {'TTFT p50':>9} | {'TTFT p99':>9} | {'total p50':>9} | "
            f"{'total p99':>9} | {'+TTFT p50':>9} | {'+TTFT p99':>9} | {'proxy CPU/req':>13} | errors |"
        )
        print()
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for name, s in results.items():
            ms = lambda v: f"{v * 1000:.2f} ms"  # noqa: E731
            extra50 = "" if name == "direct" else f"{(pct(s.ttft, 50) - pct(base.ttft, 50)) * 1000:+.2f} ms"
            extra99 = "" if name == "direct" else f"{(pct(s.ttft, 99) - pct(base.ttft, 99)) * 1000:+.2f} ms"
            measured = s.done + args.concurrency * args.rounds
            cpu = "" if name == "direct" else f"{s.proxy_cpu / measured * 1000:.2f} ms"
            print(
                f"| {name:<8} | {s.done / s.wall if s.wall else 0:>7.1f} | {ms(pct(s.ttft, 50)):>9} | "
                f"{ms(pct(s.ttft, 99)):>9} | {ms(pct(s.total, 50)):>9} | {ms(pct(s.total, 99)):>9} | "
                f"{extra50:>9} | {extra99:>9} | {cpu:>13} | {s.errors:>6} |"
            )
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
