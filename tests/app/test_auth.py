"""Keys: 401 and 403 in OpenAI's shape; keys and prompts never reach the logs."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from gateway_testkit import eventually


def _client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer sk-not-a-real-key", "Basic dXNlcjpwYXNz"])
def test_missing_or_wrong_key_is_401_in_openai_shape(gateway, header):
    headers = {"authorization": header} if header else {}
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert err["message"]


def test_openai_client_sees_authentication_error(gateway):
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-wrong").models.list()


def test_key_limited_to_other_models_gets_403(gateway, keys):
    with pytest.raises(openai.PermissionDeniedError) as info:
        _client(gateway, keys.other_models).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["code"] == "model_not_allowed"
    assert _client(gateway, keys.other_models).models.list().data == []


def test_logs_are_json_with_request_ids_and_no_prompts_or_keys(gateway, keys):
    secret_prompt = "zebra-violet-prompt-marker"
    out = _client(gateway, keys.alice).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": secret_prompt}], max_tokens=2
    )
    assert out.choices
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-leaky-wrong-key").models.list()

    def access_line():
        lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]
        hits = [entry for entry in lines if entry.get("logger") == "gateway.access" and entry.get("key_id") == "alice"]
        assert hits
        return hits[-1]

    entry = eventually(access_line, timeout=5)
    assert entry["request_id"] and entry["status"] == 200 and entry["completion_tokens"] == 2
    log = gateway.log()
    assert all(line.startswith("{") for line in log.splitlines() if line.strip())
    for secret in [secret_prompt, "sk-leaky-wrong-key", *keys.by_id.values()]:
        assert secret not in log


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ([], 401, "You didn't provide an API key."),
        ([("authorization", "Basic dXNlcjpwYXNz")], 401, "You didn't provide an API key."),
        ([("authorization", "Bearer sk-not-a-real-key")], 401, "Incorrect API key provided."),
        ([("authorization", b"Bearer \xff\xfe")], 401, "You didn't provide an API key."),  # not UTF-8
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], 400, "Send one Authorization header"),
    ],
)
def test_the_completion_and_fastapi_routes_refuse_a_key_alike(gateway, headers, status, message):
    chat = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
    )
    models = httpx.get(gateway.url + "/v1/models", headers=headers)
    for r in (chat, models):
        assert r.status_code == status
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["message"].startswith(message)
        assert r.headers["x-request-id"]
    assert chat.json() == models.json()
