"""Schemathesis fuzzes the gateway's OpenAPI spec: whatever arrives, never a 5xx, always OpenAI's error shape."""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis import Case, CheckContext, Response

from app.gateway.main import create_app
from app.gateway.settings import GatewaySettings


def _spec() -> dict:
    # The spec comes from the app itself (no lifespan runs for it); requests go to a live gateway.
    settings = GatewaySettings(upstreams=("http://127.0.0.1:9",), api_keys_redis_hash="unused")
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(_spec())


@schemathesis.check
def openai_error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
        assert "type" in body["error"] and "param" in body["error"] and "code" in body["error"], body
    return None


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_api_never_errors_and_speaks_openai(case: Case, gateway, keys):
    response = case.call(base_url=gateway.url, headers={"authorization": f"Bearer {keys.by_id['spare']}"}, timeout=30)
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error, openai_error_shape])
