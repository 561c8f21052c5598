"""Prefix-heavy multi-turn chat: the gateway's routing by KV cache events against nginx round
robin and nginx least_conn, each on a fresh simulated fleet, in one run.

    make bench-prefix                                # defaults below, a few minutes
    .venv/bin/python bench/prefix.py --conversations 96 --targets gateway,round-robin
    .venv/bin/python bench/prefix.py --gateway-env GATEWAY_KV_LOAD_FACTOR=1.25

Fleet, started again for every target so each begins with empty caches: 4 simulator replicas,
each with a prefix cache of 40,000 tokens (2,500 blocks of 16) and its KV cache events on.
Timing, roughly a 70B-class model on a tensor-parallel GPU group: 30 ms to the first token of a
fully cached prompt, plus 0.2 ms per uncached prompt token (about 5,000 prefill tokens/s, so a
2,000-token prompt from scratch costs 430 ms), then 20 ms per output token; at most 8 requests
decode at once per replica, the rest wait. A replica's prefills take turns, as they share its
GPU (vLLM's scheduler fills each step's token budget in arrival order); --no-prefill-queue
makes each cost its time as if alone, which hides what queueing behind a cold prefill costs.

Workload: 64 tenants, each with its own system prompt of 2,000 words (seeded, distinct from
the first words on); a conversation is 6 turns of one tenant, each turn the whole history so
far (system prompt, every earlier question and answer, as a chat client sends it) plus a new
question of 15 to 40 words, streamed with max_tokens 32, with a think time of 300 ms on average
(150 to 450 ms, uniform) between turns. A closed loop keeps 24 conversations in flight, their
starts spread over one second; the tenant of each conversation is drawn uniformly by a seeded
RNG (--zipf S for a skewed draw), so every target gets the same conversations in the same order.

TTFT is measured from sending a request to its first content token. The fleet's prefix cache
hit rate is the sum over the replicas of vllm:prefix_cache_hits_total over the sum of
vllm:prefix_cache_queries_total, read after the run; evictions are counted from the replicas'
KV events (BlockRemoved). The bound printed below the table replays the requests sent through
one prefix cache without a size limit, each served alone: what no router can beat.

Placement (--pin, the default on two or more CPUs): the load generator and the simulators share
CPU 0; the proxy under test (nginx, or the gateway and its Redis) has CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import zmq
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.devstack import KV_EVENTS_TOPIC, Proc, make_key, scrape, start_gateway, start_redis, start_simulator
from app.gateway.kv_events import Removed, Stored, parse_batch
from app.simulator.prefix_cache import PrefixCache
from app.simulator.protocol import ChatMessage
from app.simulator.tokens import render_chat, token_ids, tokenize
from bench.common import find_nginx, pct, pin, start_nginx

MODEL = "sim-model"
TARGETS = ("gateway", "round-robin", "least-conn")
_SYLLABLES = "ka lo mi ren tas vo pel dri un sa ber tok lim osh ju fen ra wil cor nat".split()


# -- the workload ------------------------------------------------------------------------------------


def system_prompt(tenant: int, words: int, seed: int) -> str:
    rng = random.Random(f"{seed}-tenant-{tenant}")
    head = f"You are the assistant of tenant {tenant:02d}. Follow these rules:".split()
    body = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(words - len(head)))
    return " ".join([*head, *body])


@dataclass(frozen=True)
class Conversation:
    tenant: int
    questions: tuple[str, ...]
    think_s: tuple[float, ...]  # before each turn after the first


def conversations(args: argparse.Namespace) -> list[Conversation]:
    rng = random.Random(args.seed)
    weights = [1 / (t + 1) ** args.zipf for t in range(args.tenants)] if args.zipf else None
    out = []
    for c in range(args.conversations):
        tenant = rng.choices(range(args.tenants), weights)[0]
        qrng = random.Random(f"{args.seed}-conversation-{c}")
        questions = tuple(
            f"Question {turn + 1}: "
            + " ".join("".join(qrng.choice(_SYLLABLES) for _ in range(2)) for _ in range(qrng.randint(15, 40)))
            for turn in range(args.turns)
        )
        # Think times vary around their mean: with every pause alike, a closed loop of 24 clients
        # falls into lockstep, and round robin over 4 replicas (24 a multiple of 4) then sends
        # every turn of a conversation to the same replica, which no real set of users does.
        mean = args.think_ms / 1000
        think = tuple(qrng.uniform(mean * (1 - args.think_jitter), mean * (1 + args.think_jitter)) for _ in questions)
        out.append(Conversation(tenant, questions, think))
    return out


# -- the load ----------------------------------------------------------------------------------------


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0
    bodies: list[bytes] = field(default_factory=list)  # every request sent, in order
    stored_blocks: Counter[str] = field(default_factory=Counter)  # per replica, from its KV events
    removed_blocks: Counter[str] = field(default_factory=Counter)


async def turn(session: aiohttp.ClientSession, url: str, headers: dict, body: bytes, out: Result) -> str | None:
    """One streamed chat request: its answer's text, its TTFT recorded; None if it failed."""
    start = time.perf_counter()
    first = None
    answer: list[str] = []
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = orjson.loads(line[6:])
                text = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
                if text:
                    if first is None:
                        first = time.perf_counter()
                    answer.append(text)
    except Exception as exc:  # noqa: BLE001 - counted, and the first few shown: a bench must say why it failed
        out.errors += 1
        if out.errors <= 3:
            print(f"  error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if first is None:
        out.errors += 1
        return None
    out.ttft.append(first - start)
    return "".join(answer)


async def run_load(url: str, key: str | None, work: list[Conversation], prompts: list[str], args, out: Result) -> None:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    queue: Iterator[Conversation] = iter(work)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            await asyncio.sleep(i / args.concurrency)  # starts spread over a second, not in lockstep
            for conv in queue:
                messages = [{"role": "system", "content": prompts[conv.tenant]}]
                for n, question in enumerate(conv.questions):
                    if n:
                        await asyncio.sleep(conv.think_s[n])
                    messages.append({"role": "user", "content": question})
                    body = orjson.dumps(
                        {"model": MODEL, "stream": True, "max_tokens": args.max_tokens, "messages": messages}
                    )
                    out.bodies.append(body)
                    answer = await turn(session, url + "/v1/chat/completions", headers, body, out)
                    if answer is None:
                        break  # a client gives up a conversation whose turn failed
                    messages.append({"role": "assistant", "content": answer})

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
        out.wall = time.perf_counter() - started


async def count_events(sims: list[Proc], out: Result, stop: asyncio.Event) -> None:
    """Blocks each replica stores and evicts, from its KV events (a SUB socket per replica)."""
    ctx = zmq.asyncio.Context.instance()
    subs = []
    for sim in sims:
        assert sim.kv_events is not None
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, KV_EVENTS_TOPIC.encode())
        sub.connect(sim.kv_events[0])
        subs.append((sim.url, sub))

    async def read(url: str, sub: zmq.asyncio.Socket) -> None:
        while True:
            _topic, _seq, payload = await sub.recv_multipart()
            for event in parse_batch(payload)[1]:
                if isinstance(event, Stored):
                    out.stored_blocks[url] += len(event.block_hashes)
                elif isinstance(event, Removed):
                    out.removed_blocks[url] += len(event.block_hashes)

    tasks = [asyncio.ensure_future(read(url, sub)) for url, sub in subs]
    await stop.wait()
    await asyncio.sleep(0.2)  # the last batches
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _, sub in subs:
        sub.close(linger=0)


async def measure(url: str, key: str | None, sims: list[Proc], work, prompts, args, out: Result) -> None:
    stop = asyncio.Event()
    counting = asyncio.ensure_future(count_events(sims, out, stop))
    await asyncio.sleep(0.3)  # the SUB sockets join before anything is published
    try:
        await run_load(url, key, work, prompts, args, out)
    finally:
        stop.set()
        await counting


def ideal(bodies: list[bytes], args) -> tuple[float, float]:
    """The best any router could do with these requests: one prefix cache holding everything
    (no capacity limit, no replica to miss) and every request served alone, with the
    simulator's own tokens and cache rules: (hit rate, mean TTFT)."""
    cache = PrefixCache(capacity_blocks=1 << 40, block_size=args.block_size)
    requests = [orjson.loads(b)["messages"] for b in bodies]
    # The simulator answers every request with the same words; a later turn's history shows them.
    answer = next((token_ids(tokenize(m["content"])) for ms in requests for m in ms if m["role"] == "assistant"), [])
    hits = queries = 0
    ttft = 0.0
    for raw in requests:
        messages = [ChatMessage(**m) for m in raw]
        ids = token_ids(render_chat(messages, add_generation_prompt=True, continue_final_message=False))
        hashes = cache.extend_chain(ids, [])
        hit = cache.hits(hashes, len(ids))
        # The prompt, then the answer's blocks as they fill (all but its last token's KV is computed).
        computed = ids + answer[:-1]
        cache.store(computed, cache.extend_chain(computed, hashes))
        hits += hit
        queries += len(ids)
        ttft += args.ttft_ms + args.prefill_ms_per_token * (len(ids) - hit)
    return hits / queries, ttft / len(bodies) / 1000


# -- metrics -----------------------------------------------------------------------------------------


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


def route_decisions(samples: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in samples.items():
        if k.startswith("gateway_route_decisions_total{"):
            reason = k.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0) + v
    return out


# -- one target on its own fleet ---------------------------------------------------------------------


@dataclass
class Row:
    name: str
    result: Result
    hits: float
    queries: float
    per_replica: dict[str, tuple[float, float, float]]  # url: (requests, hits, queries)
    decisions: dict[str, float] | None = None


def start_replica(work: Path, args) -> Proc:
    for attempt in range(3):
        sim = _start_replica(work, args)
        try:
            sim.wait_http("/health")
            return sim
        except RuntimeError:
            # A port free_port picked can be taken before the replica binds it: pick others.
            sim.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_replica(work: Path, args) -> Proc:
    return start_simulator(
        work,
        wait=False,
        kv_events=True,
        ttft_ms=args.ttft_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        itl_ms=args.itl_ms,
        max_num_seqs=args.max_num_seqs,
        prefill_queue=args.prefill_queue,
        max_model_len=32768,
        prefix_cache_blocks=args.cache_tokens // args.block_size,
        block_size=args.block_size,
    )


def start_fleet(work: Path, args) -> list[Proc]:
    sims: list[Proc] = []
    try:
        for _ in range(args.replicas):
            sims.append(start_replica(work, args))
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims


def run_target(name: str, work: Path, args, plan: list[Conversation], prompts: list[str]) -> Row:
    procs: list[Proc] = []
    try:
        sims = start_fleet(work, args)
        procs += sims
        key = None
        proxy: list[Proc] = []
        if name == "gateway":
            redis = start_redis(work)
            procs.append(redis)
            key, digest = make_key()
            keys = work / f"keys-{redis.pid}"
            keys.write_text(f"bench {digest} rpm=1000000000 tpm=1000000000000\n")
            env = {
                "GATEWAY_UPSTREAMS": ",".join(s.url for s in sims),
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_API_KEYS_FILE": str(keys),
                "GATEWAY_LOG_LEVEL": "info",
                "GATEWAY_KV_EVENT_ENDPOINTS": ",".join(
                    f"{s.url} {s.kv_events[0]} {s.kv_events[1]}" for s in sims if s.kv_events
                ),
                "GATEWAY_KV_EVENTS_TOPIC": KV_EVENTS_TOPIC,
                # The fleet's prefill rate, for the gateway's TTFT prediction where it has one.
                "GATEWAY_PREFILL_TOKENS_PER_S": str(1000 / args.prefill_ms_per_token),
                **dict(kv.split("=", 1) for kv in args.gateway_env),
            }
            gw = start_gateway(work, env)
            procs.append(gw)
            proxy = [gw, redis]
            url = gw.url
        else:
            nginx = find_nginx()
            if nginx is None:
                raise SystemExit("nginx not found (make bench-prefix installs it)")
            balance = "least_conn" if name == "least-conn" else ""
            ngx = start_nginx(nginx, work, [s.url for s in sims], balance=balance)
            procs.append(ngx)
            proxy = [ngx]
            url = ngx.url
        if args.pin:
            pin([os.getpid()] + [s.pid for s in sims], 0)
            pin([p.pid for p in proxy], 1)

        result = Result()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(measure(url, key, sims, plan, prompts, args, result))
        finally:
            loop.close()
        per_replica = {}
        for sim in sims:
            s = scrape(sim.url)
            per_replica[sim.url] = tuple(
                total(s, name)
                for name in (
                    "vllm:request_success_total",
                    "vllm:prefix_cache_hits_total",
                    "vllm:prefix_cache_queries_total",
                )
            )
        decisions = route_decisions(scrape(proxy[0].metrics_url)) if name == "gateway" else None
        return Row(
            name,
            result,
            sum(h for _, h, _ in per_replica.values()),
            sum(q for _, _, q in per_replica.values()),
            per_replica,
            decisions,
        )
    finally:
        for p in reversed(procs):
            p.stop()


# -- the report --------------------------------------------------------------------------------------


def report(rows: list[Row], args) -> None:
    base = next((r for r in rows if r.name == "round-robin"), None)
    base_mean = sum(base.result.ttft) / len(base.result.ttft) if base and base.result.ttft else None
    print()
    print(
        "| target | requests | mean TTFT | TTFT p50 | TTFT p99 | mean TTFT vs round robin "
        "| fleet hit rate | route decisions |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ttft = r.result.ttft
        mean = sum(ttft) / len(ttft) if ttft else float("nan")
        rel = f"{mean / base_mean:.2f}x" if base_mean else ""
        rate = r.hits / r.queries if r.queries else float("nan")
        decided = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.decisions.items())) if r.decisions else ""
        print(
            f"| {r.name} | {len(ttft)} | {mean * 1000:.0f} ms | {pct(ttft, 50) * 1000:.0f} ms | "
            f"{pct(ttft, 99) * 1000:.0f} ms | {rel} | {rate:.1%} | {decided} |"
        )
    if rows and rows[0].result.bodies:
        rate, mean = ideal(rows[0].result.bodies, args)
        rel = f" ({mean / base_mean:.2f}x round robin)" if base_mean else ""
        print()
        print(
            f"The bound for any router (one cache holding everything, every request served alone): "
            f"hit rate {rate:.1%}, mean TTFT {mean * 1000:.0f} ms{rel}."
        )
    print()
    print("Per replica (requests / prefix hit rate / blocks stored / blocks evicted), errors, wall time:")
    for r in rows:
        parts = []
        for url, (req, hits, queries) in r.per_replica.items():
            rate = hits / queries if queries else 0.0
            parts.append(f"{req:.0f}/{rate:.0%}/{r.result.stored_blocks[url]}/{r.result.removed_blocks[url]}")
        print(f"  {r.name}: {'  '.join(parts)}; errors {r.result.errors}; {r.result.wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=192, help="conversations per target")
    parser.add_argument("--concurrency", type=int, default=24, help="conversations in flight")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--think-ms", type=float, default=300.0, help="mean think time between turns")
    parser.add_argument(
        "--think-jitter", type=float, default=0.5, help="think times drawn uniformly within mean x (1 +- this)"
    )
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--system-words", type=int, default=2000)
    parser.add_argument("--zipf", type=float, default=0.0, help="tenant draw skew s (weight 1/rank^s); 0: uniform")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--cache-tokens", type=int, default=40_000, help="prefix cache per replica")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=30.0, help="first token of a fully cached prompt")
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.2, help="per uncached prompt token")
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument(
        "--prefill-queue",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a replica's prefills take turns (SIM_PREFILL_QUEUE), as on a GPU",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="extra gateway settings"
    )
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs (the path is printed)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="load generator and simulators on CPU 0, the proxy under test on CPU 1",
    )
    args = parser.parse_args()
    names = [t for t in args.targets.split(",") if t]
    if unknown := set(names) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    plan = conversations(args)
    prompts = [system_prompt(t, args.system_words, args.seed) for t in range(args.tenants)]
    print(
        f"{os.cpu_count()} CPUs; {args.replicas} replicas, prefix cache {args.cache_tokens} tokens each; "
        f"TTFT {args.ttft_ms:g} ms + {args.prefill_ms_per_token:g} ms per uncached token, {args.itl_ms:g} ms/token, "
        f"max_num_seqs {args.max_num_seqs}{', prefill queue' if args.prefill_queue else ''}; "
        f"{args.tenants} tenants ({len({c.tenant for c in plan})} drawn), "
        f"{args.system_words}-word system prompts; {args.conversations} conversations of {args.turns} turns, "
        f"{args.concurrency} in flight, {args.think_ms:g} ms think time (+-{args.think_jitter:.0%}), "
        f"max_tokens {args.max_tokens}" + (f"; gateway env {' '.join(args.gateway_env)}" if args.gateway_env else ""),
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    rows = []
    try:
        for name in names:
            print(f"  {name}: running", file=sys.stderr, flush=True)
            rows.append(run_target(name, work, args, plan, prompts))
        report(rows, args)
    finally:
        if args.keep:
            print(f"logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
