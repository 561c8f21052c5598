"""The gateway attacked as a hostile or unlucky client would: each test here failed before its fix.

One gateway with short limits (so the tests are quick) in front of two replicas of its own, which
the hung-replica test stops with SIGSTOP.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from gateway_testkit import eventually, gateway_env, metric_sum, read_events, scrape

from app.devstack import start_gateway, start_simulator

MAX_HEADER = 8192
NON_ASCII_KEY = "sk-clé-ключ-鍵-0123456789"


@pytest.fixture(scope="module")
def sims(log_dir, procs):
    # 20 ms a token: streams long enough to stop a replica in the middle of one.
    return [procs(start_simulator(log_dir, ttft_ms=20, itl_ms=20)) for _ in range(2)]


@pytest.fixture(scope="module")
def hard_keys(keys, log_dir) -> Path:
    """The session's keys plus one that is not ASCII."""
    path = log_dir / "api-keys-hardening"
    digest = hashlib.sha256(NON_ASCII_KEY.encode()).hexdigest()
    path.write_text(keys.path.read_text() + f"unicode {digest}\n")
    return path


@pytest.fixture(scope="module")
def gw(log_dir, procs, keys, hard_keys, redis_server, sims):
    env = gateway_env(
        keys,
        redis_server.url,
        [s.url for s in sims],
        api_keys_file=hard_keys,
        max_header_bytes=MAX_HEADER,
        header_timeout_s=1,
        body_timeout_s=1,
        send_timeout_s=2,
        health_interval_s=0.5,
        health_timeout_s=0.5,
        hung_probes=2,
        read_timeout_s=60,
        breaker_cooldown_s=1,
    )
    return procs(start_gateway(log_dir, env))


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _addr(proc) -> tuple[str, int]:
    host, port = proc.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw(proc, data: bytes, timeout: float = 10) -> bytes:
    """Sends bytes on a fresh connection and reads until the server closes it."""
    with socket.create_connection(_addr(proc), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, orjson.loads(body)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- 1: oversized headers ------------------------------------------------------------------------


def test_oversized_header_is_431_in_openai_shape(gw):
    raw = _raw(gw, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEADER * 3) + b"\r\n\r\n")
    status, headers, body = _status_and_body(raw)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "request_header_too_large"
    assert str(MAX_HEADER) in body["error"]["message"]


def test_the_limit_is_per_request_head_not_per_connection(gw):
    """Pipelined requests whose heads together pass the limit, each well within it, are all served."""
    one = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * (MAX_HEADER // 2) + b"\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    raw = _raw(gw, one * 10 + last)
    assert raw.count(b"HTTP/1.1 200 OK") == 11, raw[:300]


def test_header_floods_cost_neither_cpu_nor_memory_and_others_are_served(gw, keys):
    """Two 64 MiB headers at once, without a key: before, 3.6 s of CPU each and hundreds of MiB."""
    pid = gw.pid
    cpu_before, rss_before = _cpu_seconds(pid), _rss_mib(pid)

    def flood() -> None:
        try:
            with socket.create_connection(_addr(gw), timeout=30) as s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: ")
                block = b"a" * (1 << 20)
                for _ in range(64):
                    s.sendall(block)
        except OSError:
            pass  # the gateway closed the connection at the limit, which is the point

    floods = [threading.Thread(target=flood) for _ in range(2)]
    for t in floods:
        t.start()
    answered = httpx.get(gw.url + "/v1/models", headers=_auth(keys.alice), timeout=10)
    for t in floods:
        t.join(60)
    assert answered.status_code == 200
    assert _cpu_seconds(pid) - cpu_before < 1.0
    assert _rss_mib(pid) - rss_before < 32


# -- 6: client timeouts --------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(gw):
    started = time.monotonic()
    with socket.create_connection(_addr(gw), timeout=10) as s:
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert time.monotonic() - started < 5  # header_timeout_s is 1
    assert _status_and_body(out)[0] == 408


def test_trickled_headers_slowloris_get_408(gw):
    started = time.monotonic()
    with socket.create_connection(_addr(gw), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        out = b""
        try:
            for _ in range(40):  # a byte every 0.2 s: 8 s if nothing cuts it off
                s.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass
        while chunk := s.recv(65536):
            out += chunk
    status, _, body = _status_and_body(out)
    assert status == 408 and body["error"]["code"] == "header_timeout"
    assert time.monotonic() - started < 5


def test_trickled_body_gets_408(gw, keys):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + keys.alice.encode() + b"\r\ncontent-length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    raw = _raw(gw, head + b'{"model": "sim-model", ')
    status, _, body = _status_and_body(raw)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    assert time.monotonic() - started < 5


def test_a_stream_nobody_reads_is_cut_off_and_frees_its_replica(log_dir, procs, keys, redis_server):
    """A client that opens a stream and never reads it: before, it held the replica's slot for as
    long as it kept the connection open."""
    # 100,000 tokens of about 220 bytes each, 5,000 a second: 20 s of stream, far more than the
    # ~3 MiB the kernel's socket buffers take before the gateway's writes have to wait.
    fast = procs(start_simulator(log_dir, ttft_ms=5, itl_ms=0.2, max_model_len=200_000))
    env = gateway_env(keys, redis_server.url, [fast.url], send_timeout_s=2)
    gateway = procs(start_gateway(log_dir, env))
    body = orjson.dumps(
        {
            "model": "sim-model",
            "stream": True,
            "max_tokens": 100_000,
            "messages": [{"role": "user", "content": "flood"}],
        }
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer "
        + keys.alice.encode()
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
    try:
        s.connect(_addr(gateway))
        s.sendall(request)
        eventually(lambda: metric_sum(scrape(fast.url), "vllm:num_requests_running") == 1, timeout=5)
        started = time.monotonic()
        # Nothing is read. The gateway cuts the client off and vLLM aborts the request.
        eventually(
            lambda: metric_sum(scrape(fast.url), "vllm:request_success_total", finished_reason="abort") == 1, timeout=15
        )
        assert time.monotonic() - started < 15
        assert metric_sum(scrape(fast.url), "vllm:num_requests_running") == 0
    finally:
        s.close()


def test_invalid_http_is_400_in_openai_shape(gw):
    status, headers, body = _status_and_body(_raw(gw, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "invalid_http_request"


# -- 5: what the public port serves --------------------------------------------------------------


def test_metrics_and_openapi_are_not_on_the_client_port(gw, keys):
    for path in ("/metrics", "/openapi.json", "/docs"):
        resp = httpx.get(gw.url + path, timeout=5)
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "unknown_url"
        assert "key_id" not in resp.text
    assert httpx.get(gw.metrics_url + "/metrics", timeout=5).status_code == 200
    spec = httpx.get(gw.metrics_url + "/openapi.json", timeout=5).json()
    assert "/v1/chat/completions" in spec["paths"]


# -- 10: header and validation oddities -----------------------------------------------------------


def test_two_authorization_headers_are_400_everywhere(gw, keys):
    two = [("authorization", f"Bearer {keys.alice}"), ("authorization", "Bearer sk-wrong")]
    chat = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=two,
        timeout=10,
        json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    models = httpx.get(gw.url + "/v1/models", headers=two, timeout=10)
    for resp in (chat, models):
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_trailing_slash_is_a_404_without_a_redirect_echoing_host(gw, keys):
    resp = httpx.get(gw.url + "/v1/models/", headers={**_auth(keys.alice), "host": "evil.example"}, timeout=5)
    assert resp.status_code == 404
    assert "location" not in resp.headers


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", True), ("stream", "yes"), ("max_tokens", 3.0), ("temperature", "0.5"), ("top_p", "1")],
)
def test_loosely_typed_fields_are_400_naming_them(gw, keys, field, value):
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], field: value}
    resp = httpx.post(gw.url + "/v1/chat/completions", headers=_auth(keys.alice), json=body, timeout=10)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == field


def test_a_non_ascii_key_matches(gw):
    resp = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {NON_ASCII_KEY}".encode()}, timeout=5)
    assert resp.status_code == 200, resp.text


# -- 9: refusals at the edge are logged ----------------------------------------------------------


def test_refusals_at_the_edge_leave_a_log_line_without_the_key(gw, keys):
    chat = gw.url + "/v1/chat/completions"
    msg = {"messages": [{"role": "user", "content": "hi"}]}
    wrong = "sk-brute-force-attempt-0001"
    sent = [
        httpx.post(chat, headers=_auth(wrong), json={"model": "sim-model", **msg}),  # 401
        httpx.get(gw.url + "/v1/models", headers=_auth(wrong)),  # 401
        httpx.post(chat, headers=_auth(keys.other_models), json={"model": "sim-model", **msg}),  # 403
        httpx.post(chat, headers=_auth(keys.alice), json={"model": "probe-model", **msg}),  # 404
        httpx.post(chat, headers=_auth(keys.alice), content=b"{not json"),  # 400
        httpx.post(chat, headers=_auth(keys.alice), content=b" " * (9 << 20)),  # 413
    ]
    statuses = [r.status_code for r in sent]
    assert statuses == [401, 401, 403, 404, 400, 413]
    ids = {r.headers["x-request-id"] for r in sent}

    def logged() -> list[dict]:
        lines = [orjson.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("msg") == "refused" and line.get("request_id") in ids]

    refused = eventually(lambda: len(logged()) == len(sent) and logged(), timeout=5)
    assert sorted(line["status"] for line in refused) == sorted(statuses)
    assert {line["key_id"] for line in refused if line["status"] in (403, 404)} == {"other_models", "alice"}
    assert all(line["client"] == "127.0.0.1" for line in refused)
    assert wrong not in gw.log() and keys.alice not in gw.log()


# -- 4: tokens of abandoned requests are charged ---------------------------------------------------


def _tokens(gw, key_id: str) -> tuple[float, float]:
    samples = scrape(gw.metrics_url)
    return (
        metric_sum(samples, "gateway_prompt_tokens_total", key_id=key_id),
        metric_sum(samples, "gateway_completion_tokens_total", key_id=key_id),
    )


def _abandon(gw, key: str, body: dict, path: str, after_s: float) -> None:
    try:
        httpx.post(gw.url + path, headers=_auth(key), json=body, timeout=after_s)
    except httpx.TimeoutException:
        return
    raise AssertionError("the request finished before the client gave up")


def test_a_non_streaming_request_abandoned_early_is_charged(gw, keys):
    key = keys.by_id["spare"]
    # One answered request teaches the gateway the model's decode rate (20 ms a token here).
    done = httpx.post(
        gw.url + "/v1/completions",
        headers=_auth(key),
        timeout=30,
        json={"model": "sim-model", "prompt": "warm", "max_tokens": 40},
    )
    assert done.status_code == 200
    before = _tokens(gw, "spare")
    prompt = "word " * 3200  # 16,000 characters: about 4,000 tokens
    _abandon(gw, key, {"model": "sim-model", "prompt": prompt, "max_tokens": 1000}, "/v1/completions", 1.5)
    after = eventually(lambda: (t := _tokens(gw, "spare"))[0] > before[0] and t, timeout=5)
    prompt_charged, output_charged = after[0] - before[0], after[1] - before[1]
    assert prompt_charged == len(prompt) // 4
    # About 1.5 s of decoding at the learned rate (~50 tokens a second), never above max_tokens.
    assert 10 <= output_charged <= 1000


def test_an_abandoned_stream_with_content_parts_is_charged_its_prompt(gw, keys):
    key = keys.by_id["spare"]
    before = _tokens(gw, "spare")
    text = "part " * 800
    body = {
        "model": "sim-model",
        "stream": True,
        "max_tokens": 500,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", gw.url + "/v1/chat/completions", headers=_auth(key), json=body) as r:
            assert r.status_code == 200
            chunks = read_events(r, 3)  # noqa: F841  (held open until the block ends)
    after = eventually(lambda: (t := _tokens(gw, "spare"))[0] > before[0] and t, timeout=5)
    assert after[0] - before[0] == len(text) // 4
    assert after[1] - before[1] >= 2


# -- 7: a hung replica ----------------------------------------------------------------------------


def _running_on(sims) -> list[float]:
    return [metric_sum(scrape(s.url), "vllm:num_requests_running") for s in sims]


def _stop_the_busy_one(sims):
    counts = eventually(lambda: (c := _running_on(sims)) and sum(c) == 1 and c, timeout=5)
    busy = sims[counts.index(1)]
    os.killpg(busy.pid, signal.SIGSTOP)
    return busy


def test_a_hung_replica_ends_its_stream_and_retries_what_has_no_answer_yet(gw, keys, sims):
    eventually(lambda: sum(_running_on(sims)) == 0, timeout=15)
    stopped = None
    try:
        # A stream already flowing from the replica that hangs: it ends with an error event soon.
        body = {
            "model": "sim-model",
            "stream": True,
            "max_tokens": 300,
            "messages": [{"role": "user", "content": "hang"}],
        }
        with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client:
            with client.stream("POST", gw.url + "/v1/chat/completions", headers=_auth(keys.alice), json=body) as r:
                chunks = r.iter_raw()
                first = next(chunks)
                assert b"data:" in first
                stopped = _stop_the_busy_one(sims)
                started = time.monotonic()
                rest = b"".join(chunks)
                took = time.monotonic() - started
        assert b'"code":"upstream_hung"' in rest
        assert took < 10, f"the stream waited {took:.1f}s on a hung replica (read timeout 60 s)"
        os.killpg(stopped.pid, signal.SIGCONT)
        eventually(lambda: httpx.get(stopped.url + "/health", timeout=1).status_code == 200, timeout=10)
        stopped = None
        time.sleep(1.5)  # the gateway's next probes, and the circuit's cooldown (breaker_cooldown_s=1)

        # A non-streaming request waiting on the replica that hangs: retried on the other, answered.
        eventually(lambda: sum(_running_on(sims)) == 0, timeout=15)
        result: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: result.append(
                httpx.post(
                    gw.url + "/v1/completions",
                    headers=_auth(keys.alice),
                    timeout=40,
                    json={"model": "sim-model", "prompt": "hang", "max_tokens": 150},
                )
            )
        )
        call.start()
        stopped = _stop_the_busy_one(sims)
        call.join(40)
        assert result and result[0].status_code == 200, result
        assert result[0].json()["usage"]["completion_tokens"] == 150
        samples = scrape(gw.metrics_url)
        assert metric_sum(samples, "gateway_upstream_requests_total", outcome="hung") == 2  # one of each
        assert metric_sum(samples, "gateway_circuit_opened_total", upstream=stopped.url) >= 1
    finally:
        if stopped is not None:
            os.killpg(stopped.pid, signal.SIGCONT)
