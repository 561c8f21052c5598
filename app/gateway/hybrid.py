"""Hybrid routing: which self-hosted model or chain of hosted providers serves a request.

Rules (GATEWAY_ROUTES) are read in order and the first whose `match` fits the request decides.
A rule matches on what is known before anything is sent: the key's tier (key file `tier=`), the
model or alias the client asked for, the estimated prompt tokens, the request's TTFT budget (the
`x-ttft-budget-ms` header, else the key's `ttft_budget_ms=`) and its task (`x-task` header).
Every condition a rule gives must hold; a rule with no conditions matches everything.

A rule sends the request to a self-hosted `model` (the request's `model` is rewritten: this is
how an alias works), to a chain of hosted `providers`, or to both: the model first, the chain
when no replica can take it or the predicted TTFT is over budget. Without a rule (or a rule
without providers), the chain is the fallback chain (GATEWAY_FALLBACK_CHAIN).

A chain is tried in order: a provider answering 429 or 5xx, or not reachable, passes the request
to the next, as long as nothing was sent to the client. Each hop names a provider and,
optionally, the model to ask it for (`openai:gpt-4o-mini`); without one the request's model goes
as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
_HOP = re.compile(r"^(?P<provider>[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?)(:(?P<model>\S+))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(_Strict):
    """A hosted OpenAI-compatible API; its key comes from GATEWAY_PROVIDER_KEYS under its name."""

    name: str = Field(pattern=_NAME)
    base_url: str = Field(description="the base URL including /v1, as OpenAI's")

    @field_validator("base_url")
    @classmethod
    def _v1(cls, url: str) -> str:
        url = url.rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?/v1", url):
            raise ValueError(f"{url!r} is not an http(s) base URL ending in /v1, like https://api.openai.com/v1")
        return url


@dataclass(frozen=True, slots=True)
class Hop:
    provider: str
    model: str | None = None  # None: the request's own model

    @classmethod
    def parse(cls, text: str) -> Hop:
        m = _HOP.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not `<provider>` or `<provider>:<model>`")
        return cls(m["provider"], m["model"])

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" if self.model else self.provider


def parse_chain(value: object) -> tuple[Hop, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Hop) for v in value):
        raise ValueError("expected a list of `<provider>[:<model>]`")
    return tuple(v if isinstance(v, Hop) else Hop.parse(v) for v in value)


class Match(_Strict):
    tiers: tuple[str, ...] | None = Field(None, min_length=1, description="key tiers (key file tier=)")
    models: tuple[str, ...] | None = Field(None, min_length=1, description="models or aliases asked for")
    tasks: tuple[str, ...] | None = Field(None, min_length=1, description="values of the x-task header")
    min_prompt_tokens: int | None = Field(None, ge=0)
    max_prompt_tokens: int | None = Field(None, ge=0)
    max_ttft_budget_ms: float | None = Field(None, gt=0, description="requests whose TTFT budget is at most this")

    @model_validator(mode="after")
    def _ordered(self) -> Match:
        lo, hi = self.min_prompt_tokens, self.max_prompt_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_prompt_tokens ({lo}) is above max_prompt_tokens ({hi})")
        return self


class Rule(_Strict):
    name: str = Field(pattern=_NAME)
    match: Match = Match()
    model: str | None = Field(None, min_length=1, description="the self-hosted model that serves it")
    providers: tuple[Hop, ...] = Field((), description="hosted chain: after the model, or instead of it")

    @field_validator("providers", mode="before")
    @classmethod
    def _chain(cls, value: object) -> tuple[Hop, ...]:
        return parse_chain(value)

    @model_validator(mode="after")
    def _goes_somewhere(self) -> Rule:
        if self.model is None and not self.providers:
            raise ValueError(f"rule {self.name!r} sets neither model nor providers")
        return self


@dataclass(frozen=True, slots=True)
class RouteInput:
    """What the rules can see of a request."""

    tier: str | None
    model: str
    prompt_tokens: int
    ttft_budget_ms: float | None
    task: str | None


def matches(m: Match, r: RouteInput) -> bool:
    # A request without a budget is not a tight one: a budget condition needs a budget.
    budget_fits = m.max_ttft_budget_ms is None or (
        r.ttft_budget_ms is not None and r.ttft_budget_ms <= m.max_ttft_budget_ms
    )
    return (
        (m.tiers is None or r.tier in m.tiers)
        and (m.models is None or r.model in m.models)
        and (m.tasks is None or r.task in m.tasks)
        and (m.min_prompt_tokens is None or r.prompt_tokens >= m.min_prompt_tokens)
        and (m.max_prompt_tokens is None or r.prompt_tokens <= m.max_prompt_tokens)
        and budget_fits
    )


def first_match(rules: tuple[Rule, ...], r: RouteInput) -> Rule | None:
    return next((rule for rule in rules if matches(rule.match, r)), None)


def check_references(
    rules: tuple[Rule, ...], providers: tuple[Provider, ...], fallback: tuple[Hop, ...], models: tuple[str, ...]
) -> None:
    """Raises ValueError naming the first rule or hop that refers to something not configured.

    `models` are the models served here, where known (GATEWAY_MODELS); empty, any name goes."""
    names = {p.name for p in providers}
    known = ", ".join(sorted(names)) or "none configured"
    for i, hop in enumerate(fallback):
        if hop.provider not in names:
            raise ValueError(f"GATEWAY_FALLBACK_CHAIN[{i}]: unknown provider {hop.provider!r} (providers: {known})")
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        where = f"GATEWAY_ROUTES[{i}] ({rule.name})"
        if rule.name in seen:
            raise ValueError(f"{where}: a rule of that name comes earlier; names must be unique")
        seen.add(rule.name)
        for j, hop in enumerate(rule.providers):
            if hop.provider not in names:
                raise ValueError(f"{where}.providers[{j}]: unknown provider {hop.provider!r} (providers: {known})")
        if rule.model is not None and models and rule.model not in models:
            raise ValueError(f"{where}.model: {rule.model!r} is not served here (models: {', '.join(models)})")


def with_model(body: bytes, model: str) -> bytes:
    """The request body asking for another model: an alias's target, or a hop's provider model."""
    obj = orjson.loads(body)
    obj["model"] = model
    return orjson.dumps(obj)
