"""JWT/OIDC bearer tokens beside API keys: a token from a configured issuer is verified against
the issuer's JWKS and its claims become the caller (GATEWAY_JWT_ISSUERS).

What is checked, by PyJWT (`jwt.decode`): the signature, with the key the token's `kid` names in
the issuer's JWKS; the algorithm, which must be one the issuer is pinned to (asymmetric only:
`none` and HMAC are refused, since a JWKS is public); `iss` equal to the issuer; `aud`
containing the audience; `exp` (required) and `nbf`, with `leeway_s` of clock skew.

The JWKS is fetched on first use and kept for `jwks_ttl_s`; a token whose `kid` is not in it
fetches it again (key rotation), at most once every `_REFETCH_S`, so a stream of tokens with made-
up key ids cannot make the gateway hammer the issuer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .keyfile import ApiKey

log = logging.getLogger("gateway")

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_CALLER = re.compile(r"[^A-Za-z0-9._@-]")


class Issuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, description="the `iss` its tokens carry")
    jwks_url: str = Field(pattern=r"^https?://\S+$")
    audience: str = Field(min_length=1, description="the `aud` a token must name")
    algorithms: tuple[str, ...] = Field(("RS256",), min_length=1)
    caller_claim: str = "sub"
    models_claim: str | None = Field(None, description="a claim listing the models the caller may use")
    tier_claim: str | None = Field(None, description="a claim naming the caller's tier, for routing rules")
    leeway_s: float = Field(30.0, ge=0, le=300)
    jwks_ttl_s: float = Field(300.0, gt=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in algs if a not in ASYMMETRIC]
        if bad:
            raise ValueError(f"{bad[0]!r} is not allowed; use asymmetric algorithms: {', '.join(sorted(ASYMMETRIC))}")
        return algs


class TokenRefused(Exception):
    """Why a token is not accepted, for the log; the client only hears that it was refused."""


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.fullmatch(token) is not None


@dataclass
class _Keys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched: float = float("-inf")


class TokenVerifier:
    _REFETCH_S = 10.0

    def __init__(self, issuers: tuple[Issuer, ...], session: aiohttp.ClientSession, timeout_s: float = 2.0) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys = {i.issuer: _Keys() for i in issuers}
        self._locks = {i.issuer: asyncio.Lock() for i in issuers}

    async def verify(self, token: str) -> ApiKey:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"malformed: {exc}") from None
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise TokenRefused("unknown issuer")
        if header.get("alg") not in issuer.algorithms:
            raise TokenRefused(f"algorithm {header.get('alg')!r} is not one the issuer is pinned to")
        key = await self._key(issuer, str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(type(exc).__name__) from None
        return _caller(issuer, claims)

    async def _key(self, issuer: Issuer, kid: str) -> jwt.PyJWK:
        cached = self._keys[issuer.issuer]
        now = time.monotonic()
        stale = now - cached.fetched > issuer.jwks_ttl_s
        if stale or (kid not in cached.keys and now - cached.fetched > self._REFETCH_S):
            async with self._locks[issuer.issuer]:
                if self._keys[issuer.issuer] is cached:  # nobody fetched while this waited
                    self._keys[issuer.issuer] = cached = await self._fetch(issuer, cached)
        found = cached.keys.get(kid)
        if found is None:
            raise TokenRefused("no key of that id in the issuer's JWKS")
        return found

    async def _fetch(self, issuer: Issuer, old: _Keys) -> _Keys:
        try:
            async with self._session.get(issuer.jwks_url, timeout=self._timeout) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keys = {
                k.key_id: k
                for k in jwt.PyJWKSet.from_dict(data).keys
                if k.key_id and (k.algorithm_name in issuer.algorithms or not k.algorithm_name)
            }
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            log.warning("jwks fetch failed", extra={"issuer": issuer.issuer, "error": type(exc).__name__})
            # Keep serving with the keys already known; try again after the refetch pause.
            return _Keys(old.keys, time.monotonic() - issuer.jwks_ttl_s + self._REFETCH_S)
        return _Keys(keys, time.monotonic())


def _caller(issuer: Issuer, claims: dict[str, Any]) -> ApiKey:
    subject = claims.get(issuer.caller_claim)
    if not isinstance(subject, str) or not subject:
        raise TokenRefused(f"no {issuer.caller_claim!r} claim")
    models = claims.get(issuer.models_claim) if issuer.models_claim else None
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise TokenRefused(f"claim {issuer.models_claim!r} is not a list of model names")
    tier = claims.get(issuer.tier_claim) if issuer.tier_claim else None
    # The caller id keys limits and labels metrics: kept to a safe alphabet and length.
    caller = "jwt:" + _CALLER.sub("_", subject)[:56]
    return ApiKey(
        caller,
        digest="",
        models=frozenset(models) if models is not None else None,
        tier=tier if isinstance(tier, str) else None,
    )
