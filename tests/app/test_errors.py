"""Bad input gets an OpenAI-shaped 4xx naming the field; bad configuration stops start-up in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from app.devstack import ROOT


@pytest.fixture(scope="module")
def post(gateway, keys):
    def send(content: bytes, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
        hdrs = {"authorization": f"Bearer {keys.alice}", "content-type": "application/json", **headers}
        return httpx.post(gateway.url + path, content=content, headers=hdrs, timeout=30)

    return send


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json(post):
    err = _error(post(b'{"model": "sim-model", "messages": ['), 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "sim-model", "messages": "hello"}', "messages"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "sim-model", "messages": [{"content": "x"}]}', "messages.0.role"),
        (b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}', "max_tokens"),
        (b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
        (b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "stream": [1]}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ],
)
def test_wrong_types_name_the_field(post, body, param):
    err = _error(post(body), 400)
    assert err["param"] == param
    assert param in err["message"]


def test_body_that_is_not_an_object(post):
    err = _error(post(b"[1, 2]"), 400)
    assert "JSON object" in err["message"]


def test_huge_body_with_length_is_refused_before_reading(post):
    err = _error(post(b'{"x": "' + b"a" * (9 * 1024 * 1024) + b'"}'), 413)
    assert err["code"] == "request_too_large"


def test_huge_chunked_body_is_refused(gateway, keys):
    def chunks():
        yield b'{"model": "sim-model", "prompt": "'
        for _ in range(9):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    r = httpx.post(
        gateway.url + "/v1/completions",
        content=chunks(),
        timeout=30,
        headers={"authorization": f"Bearer {keys.alice}", "content-type": "application/json"},
    )
    _error(r, 413)


def test_unknown_model_is_404(post):
    err = _error(post(b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}'), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_upstream_4xx_passes_through(post):
    body = b'{"model": "sim-model", "prompt": "x", "max_tokens": 100000000}'
    err = _error(post(body, "/v1/completions"), 400)
    assert "context length" in err["message"]


def test_unknown_route_and_wrong_method(gateway):
    assert _error(httpx.get(gateway.url + "/v1/nothing"), 404)["code"] == "unknown_url"
    assert _error(httpx.get(gateway.url + "/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "app.gateway", "--port", "1"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_REDIS_FAIL_MODE": "sideways"}, "GATEWAY_REDIS_FAIL_MODE"),
        ({"GATEWAY_UPSTREAMS": "ftp://x"}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_DEFAULT_RPM": "-1"}, "GATEWAY_DEFAULT_RPM"),
        ({"GATEWAY_API_KEYS_FILE": "/nonexistent/keys"}, "GATEWAY_API_KEYS_FILE"),
        ({"GATEWAY_UPSTREAM_DNS": "no-port-here"}, "GATEWAY_UPSTREAM_DNS"),
        ({"GATEWAY_REDIS_URL": "http://user:hunter2@redis"}, "GATEWAY_REDIS_URL"),
    ],
)
def test_bad_configuration_stops_startup_naming_the_variable(keys, env, variable):
    base = {"GATEWAY_UPSTREAMS": "http://127.0.0.1:9", "GATEWAY_API_KEYS_FILE": str(keys.path)}
    result = _start({**base, **env})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_missing_upstreams_and_keys_are_reported(keys):
    result = _start({"GATEWAY_API_KEYS_FILE": str(keys.path)})
    assert result.returncode != 0 and "GATEWAY_UPSTREAMS" in result.stderr
    result = _start({"GATEWAY_UPSTREAMS": "http://127.0.0.1:9"})
    assert result.returncode != 0 and "GATEWAY_API_KEYS_FILE" in result.stderr


def test_bad_key_file_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nalice not-a-digest\n")
    result = _start({"GATEWAY_UPSTREAMS": "http://127.0.0.1:9", "GATEWAY_API_KEYS_FILE": str(path)})
    assert result.returncode != 0
    assert f"{path}:2" in result.stderr and "Traceback" not in result.stderr
