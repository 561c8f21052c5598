"""JWT/OIDC bearer tokens: a JWKS served here, tokens minted here, and the gateway process
accepting exactly the valid ones."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_testkit import FAST, gateway_env, metric_sum, scrape
from pydantic import ValidationError

from app.devstack import start_gateway, start_simulator
from app.gateway.settings import GatewaySettings, describe_error

ISSUER = "https://login.example.test/realm"
AUDIENCE = "llm-gateway"


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private, kid: str) -> dict:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class _Jwks(BaseHTTPRequestHandler):
    document: dict = {"keys": []}
    fetches = 0

    def do_GET(self) -> None:  # the name http.server calls
        type(self).fetches += 1
        body = json.dumps(type(self).document).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def keys():
    return {"k1": _rsa(), "k2": _rsa(), "stranger": _rsa()}


@pytest.fixture(scope="module")
def jwks(keys):
    _Jwks.document = {"keys": [_jwk(keys["k1"], "k1")]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()


@pytest.fixture(scope="module")
def gw(log_dir, procs, redis_server, jwks):
    sim = procs(start_simulator(log_dir, **FAST))
    issuers = [
        {
            "issuer": ISSUER,
            "jwks_url": jwks,
            "audience": AUDIENCE,
            "algorithms": ["RS256"],
            "models_claim": "llm_models",
            "tier_claim": "tier",
            "leeway_s": 0,
        }
    ]

    class NoKeys:  # JWT only: no key file
        path = ""

    env = gateway_env(NoKeys, redis_server.url, [sim.url], jwt_issuers=json.dumps(issuers))
    env.pop("GATEWAY_API_KEYS_FILE")
    return procs(start_gateway(log_dir, env))


def _token(private, kid="k1", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, private, algorithm="RS256", headers={"kid": kid}
    )


def _call(gw, token: str, model: str = "sim-model") -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )


def test_a_valid_token_is_a_caller(gw, keys):
    r = _call(gw, _token(keys["k1"]))
    assert r.status_code == 200, r.text
    assert metric_sum(scrape(gw.metrics_url), "gateway_requests_total", key_id="jwt:user-42", status="200") >= 1
    assert "user-42" in gw.log() and _token(keys["k1"]).split(".")[2] not in gw.log()


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "wrong_key",
        "alg_none",
        "hmac_with_public_key",
        "no_exp",
    ],
)
def test_bad_tokens_are_401(gw, keys, case):
    k1 = keys["k1"]
    now = int(time.time())
    token = {
        "expired": lambda: _token(k1, exp=now - 60),
        "not_yet_valid": lambda: _token(k1, nbf=now + 600),
        "wrong_audience": lambda: _token(k1, aud="someone-else"),
        "wrong_issuer": lambda: _token(k1, iss="https://evil.example.test"),
        "wrong_key": lambda: _token(keys["stranger"]),  # kid k1, signed by another key
        "alg_none": lambda: jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 300},
            None,
            algorithm="none",
            headers={"kid": "k1"},
        ),
        # The classic confusion: the public key used as an HMAC secret.
        "hmac_with_public_key": lambda: _forged_hs256(k1, now),
        "no_exp": lambda: _token(k1, exp=None),
    }[case]()
    r = _call(gw, token)
    assert r.status_code == 401, (case, r.text)
    assert r.json()["error"]["code"] == "invalid_api_key"


def _forged_hs256(private, now: int) -> str:
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 300}).encode())
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def test_a_models_claim_limits_the_caller(gw, keys):
    assert _call(gw, _token(keys["k1"], llm_models=["sim-model"])).status_code == 200
    r = _call(gw, _token(keys["k1"], llm_models=["other-model"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


def test_a_rotated_key_is_fetched_when_a_token_names_it(gw, keys):
    assert _call(gw, _token(keys["k2"], kid="k2")).status_code == 401  # not published yet
    time.sleep(10.5)  # the refetch pause after that miss
    _Jwks.document = {"keys": [_jwk(keys["k1"], "k1"), _jwk(keys["k2"], "k2")]}
    before = _Jwks.fetches
    assert _call(gw, _token(keys["k2"], kid="k2")).status_code == 200
    assert _Jwks.fetches == before + 1
    # Known keys need no fetch.
    assert _call(gw, _token(keys["k1"])).status_code == 200
    assert _Jwks.fetches == before + 1


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_an_issuer_pinned_to_a_symmetric_or_no_algorithm_is_refused_at_start(alg):
    issuers = json.dumps([{"issuer": "x", "jwks_url": "http://j.test/k", "audience": "a", "algorithms": [alg]}])
    with pytest.raises(ValidationError) as err:
        GatewaySettings(upstreams="http://r:1", jwt_issuers=issuers)
    assert describe_error(err.value).startswith(f"GATEWAY_JWT_ISSUERS[0].algorithms: '{alg}' is not allowed")


def test_an_issuer_with_an_asymmetric_algorithm_is_accepted():
    issuers = json.dumps([{"issuer": "x", "jwks_url": "http://j.test/k", "audience": "a", "algorithms": ["ES256"]}])
    assert GatewaySettings(upstreams="http://r:1", jwt_issuers=issuers).jwt_issuers[0].algorithms == ("ES256",)
