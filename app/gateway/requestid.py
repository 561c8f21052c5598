"""Request ids: the caller's X-Request-Id when it is sane, otherwise a fresh one."""

from __future__ import annotations

import re
import uuid

from starlette.requests import Request

_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def pick(given: str | None) -> str:
    return given if given and _SANE.fullmatch(given) else uuid.uuid4().hex


def request_id(request: Request) -> str:
    state = request.scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = pick(request.headers.get("x-request-id"))
    return str(rid)
