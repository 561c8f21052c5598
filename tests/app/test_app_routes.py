"""The completion routes are ordinary Starlette routes: middleware added to the app sees them,
other methods get 405 in OpenAI's shape, and the OpenAPI document still describes them."""

from __future__ import annotations

from starlette.testclient import TestClient

from app.gateway.main import create_app
from app.gateway.settings import GatewaySettings


async def _stub(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"stub": true}'})


def _app(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    app = create_app(GatewaySettings(upstreams=("http://127.0.0.1:1",), api_keys_file=keys))
    app.completions = _stub  # what the lifespan builds; no lifespan runs without `with TestClient`
    return app


def test_middleware_sees_the_completion_routes(tmp_path):
    app = _app(tmp_path)
    seen: list[str] = []

    @app.middleware("http")
    async def record(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    client = TestClient(app)
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = client.post(path, content=b"{}")
        assert r.status_code == 200 and r.json() == {"stub": True}
    assert seen == ["/v1/chat/completions", "/v1/completions"]


def test_other_methods_get_405_in_openai_shape(tmp_path):
    r = TestClient(_app(tmp_path)).get("/v1/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_openapi_describes_the_completion_routes(tmp_path):
    doc = _app(tmp_path).openapi()
    for path, schema in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith("/" + schema)
        assert {"400", "401", "429", "503"} <= doc["paths"][path]["post"]["responses"].keys()


def test_a_failed_start_closes_what_it_opened(tmp_path, caplog):
    """A bad key file stops start-up after the Redis client and the HTTP session exist: both
    are closed on the way out, so aiohttp reports no unclosed session."""
    import gc

    import pytest

    keys = tmp_path / "keys"
    keys.write_text("not-a-valid-line\n")
    app = create_app(GatewaySettings(upstreams=("http://127.0.0.1:1",), api_keys_file=keys))
    with pytest.raises(Exception, match="keys"):
        with TestClient(app):
            pass
    gc.collect()
    assert "Unclosed client session" not in caplog.text
